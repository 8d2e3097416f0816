//! A GPT-2 reference forward pass that proves a port right or wrong.
//!
//! The data flow, in the order [`verify`] runs it:
//! [`model::Model::open`] memory-maps a Hugging Face GPT-2 directory and checks every tensor
//! against `config.json`; [`fixture::Fixture::open`] reads the recorded `input_ids.npy` and
//! `logits.npy` and checks them against the model; [`forward`] computes our logits in f32 on the
//! CPU (or CUDA); [`compare::compare`] measures the difference and decides pass or mismatch.
#![deny(missing_docs)]

pub mod compare;
pub mod error;
pub mod files;
pub mod fixture;

pub use compare::{Report, RunInfo, Tolerance};
pub use cpm_gpt2::Device;
pub use error::{Error, Result};

use cpm_gpt2::{forward, model};

use std::path::Path;
use std::time::Instant;

/// How to run one verification.
#[derive(Debug, Clone)]
pub struct Options {
    /// Where the forward pass runs.
    pub device: Device,
    /// CPU threads for the whole forward pass: products, widening, attention (1 = serial).
    /// The default is [`forward::default_threads`]: `RAYON_NUM_THREADS` when set, else every core.
    pub threads: usize,
    /// Absolute tolerance from the command line; overrides `fixture.json`.
    pub atol: Option<f64>,
    /// Relative tolerance from the command line; overrides `fixture.json`.
    pub rtol: Option<f64>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            device: Device::Cpu,
            threads: forward::default_threads(),
            atol: None,
            rtol: None,
        }
    }
}

/// When the model cannot be opened because the two directories were given the wrong way round
/// (a fixture first, a model second), that is the error to report, not the missing config.json.
fn swapped(model_dir: &Path, fixture_dir: &Path, err: Error) -> Error {
    let fixture_first =
        model_dir.join("logits.npy").is_file() && !model_dir.join("config.json").exists();
    if fixture_first && fixture_dir.join("config.json").is_file() {
        return Error::Swapped {
            model_dir: model_dir.into(),
            fixture_dir: fixture_dir.into(),
        };
    }
    err
}

/// Runs the model in `model_dir` on the fixture in `fixture_dir` and compares the logits.
///
/// A returned [`Report`] whose `overall.pass` is false is a mismatch (the port is wrong); an
/// `Err` means the files could not be checked at all.
pub fn verify(model_dir: &Path, fixture_dir: &Path, opts: &Options) -> Result<Report> {
    let model =
        model::Model::open(model_dir).map_err(|e| swapped(model_dir, fixture_dir, e.into()))?;
    let fixture = fixture::Fixture::open_for(fixture_dir, &model.config)?;
    let tol = Tolerance::resolve(opts.atol, opts.rtol, &fixture)?;
    let mut warnings = Vec::new();
    let threads = forward::resolve_threads(Some(opts.threads), &mut warnings);
    let start = Instant::now();
    // Every parallel loop of the pass runs on this pool, so `threads` bounds all of them.
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .map_err(|e| Error::Device(format!("cannot start {threads} CPU threads: {e}")))?;
    let ours = pool.install(|| {
        let run = cpm_gpt2::Options {
            device: opts.device,
            threads,
        };
        forward::run(&model, &fixture.input_ids, fixture.batch, fixture.seq, &run)
    })?;
    let run = RunInfo {
        forward_seconds: start.elapsed().as_secs_f64(),
        device: opts.device.to_string(),
        threads,
    };
    let cmp = compare::compare(&ours, &fixture.logits, fixture.shape(), tol)?;
    Ok(Report {
        overall: cmp.overall,
        batch: fixture.batch,
        seq: fixture.seq,
        vocab: fixture.vocab,
        atol: tol.atol,
        rtol: tol.rtol,
        run,
        description: fixture.meta.description.clone(),
        warnings,
        rows: cmp.rows,
    })
}
