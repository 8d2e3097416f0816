//! cpm-convert: port CPM-LM's model-parallel Megatron/DeepSpeed checkpoints to a Hugging Face
//! GPT-2 directory (`model.safetensors`, `config.json`, `SHA256SUMS`) without Python.
//!
//! The data flow, one step per module:
//!
//! ```text
//! checkpoint::discover   input path  -> rank files (tracker, iteration, mp_rank_XX)
//! checkpoint::Rank::open rank file   -> torch object tree + weights (torch:: reads zip and
//!                                       legacy files through a memory map, executing nothing)
//! plan::build            ranks + mapping (mappings/*.toml) -> every output tensor, checked
//! merge::tensor          one tensor's parts -> Hugging Face layout (concat, qkv interleave,
//!                                       transpose), NaN/Inf check, cast
//! write                  streaming safetensors + config.json + SHA256SUMS, staged and
//!                                       renamed into place
//! ```
//!
//! Tensors stream through one at a time; the heap holds at most a few merged tensors (recycled
//! transpose buffers) and the writer's and hasher's bounded queues: README, "Memory".

pub mod checkpoint;
pub mod cli;
pub mod error;
pub mod gpt2_config;
pub mod inspect;
pub mod mapping;
pub mod merge;
pub mod plan;
pub mod table;
pub mod torch;
pub mod write;

use std::path::{Path, PathBuf};
use std::time::Instant;

pub use error::{Error, Result};
pub use mapping::Mapping;
pub use plan::{OutDtype, Plan};

use checkpoint::Rank;

/// What to convert and how.
#[derive(Debug, Clone)]
pub struct Options {
    pub input: PathBuf,
    pub output: PathBuf,
    pub dtype: OutDtype,
    pub heads: Option<u64>,
    pub force: bool,
    pub strict: bool,
    /// A mapping file; `None` uses the built-in CPM-LM mapping.
    pub mapping: Option<PathBuf>,
}

/// Hooks for a user interface; all optional.
pub trait Progress {
    /// Called once with the bytes the model file will receive.
    fn begin(&self, _total_bytes: u64) {}
    /// Called after each tensor is written.
    fn advance(&self, _bytes: u64) {}
    /// A problem that does not stop the conversion.
    fn warn(&self, msg: &str);
    /// Whether the user asked to stop (SIGINT/SIGTERM): checked before each tensor and before
    /// the result is moved into place, so a stop removes the staging directory.
    fn cancelled(&self) -> bool {
        false
    }
}

/// What a finished conversion did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Summary {
    pub output: PathBuf,
    pub variant: String,
    pub model_parallel: usize,
    pub tensors: usize,
    /// The tensors' data alone.
    pub tensor_bytes: u64,
    /// model.safetensors' size: the tensors plus the header.
    pub model_file_bytes: u64,
    /// model.safetensors, config.json, SHA256SUMS.
    pub files: Vec<write::OutputFile>,
    pub seconds: f64,
    /// Problems that did not stop the conversion, as they were reported to [`Progress::warn`].
    pub warnings: Vec<String>,
}

/// An opened checkpoint: its mapping and ranks, structure parsed, no tensor data read.
pub struct Source {
    pub mapping: Mapping,
    pub ranks: Vec<Rank>,
}

/// Find and open the checkpoint at `input`.
pub fn open(input: &Path, mapping: Option<&Path>) -> Result<Source> {
    let mapping = match mapping {
        Some(p) => Mapping::load(p)?,
        None => Mapping::cpm_lm()?,
    };
    let layout = checkpoint::discover(input)?;
    let ranks = layout
        .ranks
        .iter()
        .zip(layout.display)
        .map(|(path, shown)| Rank::open(path, shown, &mapping))
        .collect::<Result<Vec<_>>>()?;
    Ok(Source { mapping, ranks })
}

/// Plan the conversion of an opened checkpoint.
pub fn plan(src: &Source, heads: Option<u64>, dtype: OutDtype) -> Result<Plan> {
    plan::build(&src.ranks, &src.mapping, heads, dtype)
}

/// Convert end to end: read -> plan -> merge -> write.
pub fn convert(opts: &Options, progress: &dyn Progress) -> Result<Summary> {
    let started = Instant::now();
    // Refuse an OUT_DIR that is, holds or lies inside an input, then a non-empty one, before
    // doing any work.
    write::check_outside_inputs(&opts.output, &opts.input, opts.mapping.as_deref())?;
    write::check_target(&opts.output, opts.force)?;
    let src = open(&opts.input, opts.mapping.as_deref())?;
    let plan = plan(&src, opts.heads, opts.dtype)?;
    let staging = write::Staging::new(&opts.output, opts.force)?;
    let mut log = Log::new(progress);
    for p in &staging.removed_stale {
        log.warn(format!(
            "removed {}, left behind by a conversion that was killed",
            p.display()
        ));
    }
    let model = write_model(&src, &plan, opts, staging.path(), &mut log)?;
    let config = write_config(&src, &plan, staging.path(), &mut log)?;
    let sums = write::sha256sums(
        [&model, &config]
            .iter()
            .map(|f| (f.name.clone(), f.sha256.clone()))
            .collect(),
    );
    let sums = write_small(staging.path(), "SHA256SUMS", sums.as_bytes())?;
    if log.progress.cancelled() {
        return Err(Error::Interrupted);
    }
    staging.commit()?;
    Ok(Summary {
        output: opts.output.clone(),
        variant: plan.variant.clone(),
        model_parallel: plan.model_parallel,
        tensors: plan.entries.len(),
        tensor_bytes: plan.total_bytes(),
        model_file_bytes: model.bytes,
        files: vec![model, config, sums],
        seconds: started.elapsed().as_secs_f64(),
        warnings: log.warnings,
    })
}

/// Stream every merged tensor into `dir/model.safetensors`, one tensor at a time.
fn write_model(
    src: &Source,
    plan: &Plan,
    opts: &Options,
    dir: &Path,
    log: &mut Log,
) -> Result<write::OutputFile> {
    let header = write::safetensors_header(plan, &write::model_metadata(&src.ranks, plan))?;
    let names = src.rank_names();
    log.progress.begin(plan.total_bytes());
    let path = dir.join("model.safetensors");
    let (sha256, bytes) = write::stream_model(&path, |sink| {
        sink.put(header.into())?;
        for e in &plan.entries {
            if log.progress.cancelled() {
                return Err(Error::Interrupted);
            }
            let spans = src.spans(e)?;
            let parts = src.read(e, &spans)?;
            let merged = merge::tensor(e, parts, &names, opts.strict, &mut |n| sink.buffer(n))?;
            if merged.non_finite > 0 {
                log.warn(non_finite_warning(e, merged.non_finite));
            }
            for piece in merged.pieces {
                sink.put(piece)?;
            }
            // Drop our view of the source pages once the writer and the hasher are past them.
            let pages: Vec<_> = src.ranks.iter().map(|r| r.file.pages()).collect();
            sink.after_written(Box::new(move || {
                pages.iter().zip(&spans).for_each(|(p, s)| p.release(s))
            }))?;
            log.progress.advance(e.nbytes());
        }
        Ok(())
    })?;
    Ok(write::OutputFile {
        name: "model.safetensors".into(),
        bytes,
        sha256,
    })
}

fn non_finite_warning(e: &plan::Entry, n: u64) -> String {
    format!(
        "tensor `{}` (-> `{}`) holds {n} NaN/Inf value(s) of {}",
        e.source,
        e.target,
        e.numel()
    )
}

/// `config.json`, its dtype taken from the tensors actually written.
fn write_config(src: &Source, plan: &Plan, dir: &Path, log: &mut Log) -> Result<write::OutputFile> {
    let dtype = gpt2_config::model_dtype(plan);
    if let Some(mixed) = gpt2_config::mixed_dtypes(plan) {
        log.warn(format!(
            "the written tensors mix dtypes ({mixed}); config.json says `{}`, the dtype of most \
             weights",
            dtype.torch_name()
        ));
    }
    let config = gpt2_config::config(plan, &src.mapping, dtype);
    let mut text = serde_json::to_string_pretty(&config)
        .map_err(|e| Error::output(dir.join("config.json"), format!("cannot encode: {e}")))?;
    text.push('\n');
    write_small(dir, "config.json", text.as_bytes())
}

fn write_small(dir: &Path, name: &str, bytes: &[u8]) -> Result<write::OutputFile> {
    Ok(write::OutputFile {
        name: name.into(),
        bytes: bytes.len() as u64,
        sha256: write::small_file(&dir.join(name), bytes)?,
    })
}

impl Source {
    /// The rank files' names, for messages.
    pub fn rank_names(&self) -> Vec<String> {
        self.ranks.iter().map(|r| r.display.clone()).collect()
    }

    /// Each rank's byte span of `e`'s source tensor, checked against its storage.
    pub fn spans(&self, e: &plan::Entry) -> Result<Vec<std::ops::Range<u64>>> {
        self.ranks
            .iter()
            .zip(&e.sources)
            .map(|(r, t)| r.file.span(&e.source, t))
            .collect()
    }

    /// Each rank's part of `e` (pages populated first: one system call instead of a fault per
    /// 64 KiB).
    pub fn read(
        &self,
        e: &plan::Entry,
        spans: &[std::ops::Range<u64>],
    ) -> Result<Vec<std::borrow::Cow<'_, [u8]>>> {
        for (r, span) in self.ranks.iter().zip(spans) {
            r.file.prefetch(span);
        }
        self.ranks
            .iter()
            .zip(&e.sources)
            .zip(spans)
            .map(|((r, t), span)| r.file.read_at(&e.source, t, span))
            .collect()
    }
}

/// Warnings, reported as they happen and kept for the summary.
struct Log<'p> {
    progress: &'p dyn Progress,
    warnings: Vec<String>,
}

impl<'p> Log<'p> {
    fn new(progress: &'p dyn Progress) -> Self {
        Log {
            progress,
            warnings: Vec::new(),
        }
    }

    fn warn(&mut self, msg: String) {
        self.progress.warn(&msg);
        self.warnings.push(msg);
    }
}
