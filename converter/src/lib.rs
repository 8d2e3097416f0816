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
//! merge::merge           one tensor's parts -> Hugging Face layout (concat, qkv interleave,
//!                                       transpose, cast)
//! write                  streaming safetensors + config.json + SHA256SUMS, staged and
//!                                       renamed into place
//! ```
//!
//! Only one merged tensor is in memory at a time.

pub mod checkpoint;
pub mod error;
pub mod gpt2_config;
pub mod mapping;
pub mod merge;
pub mod plan;
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
    /// True once the user asked to stop (SIGINT/SIGTERM in the binary): the conversion then
    /// ends with [`Error::Interrupted`] at the next tensor and removes its staging directory.
    fn cancelled(&self) -> bool {
        false
    }
}

/// What a finished conversion wrote (the plan is `--dry-run`'s business, not the summary's).
#[derive(Debug, Clone, serde::Serialize)]
pub struct Summary {
    pub output: PathBuf,
    /// model.safetensors, config.json and SHA256SUMS: name, size, SHA-256.
    pub files: Vec<write::OutputFile>,
    pub tensors: usize,
    /// The tensors' data alone.
    pub tensor_bytes: u64,
    /// model.safetensors' size: header and data.
    pub model_file_bytes: u64,
    pub seconds: f64,
    pub warnings: usize,
    pub variant: String,
    pub model_parallel: usize,
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
    for p in &staging.removed_stale {
        progress.warn(&format!(
            "removed {}, left behind by a conversion that was killed",
            p.display()
        ));
    }
    let (model_sha256, model_bytes, warnings) =
        write_model(&src, &plan, opts, staging.path(), progress)?;

    let dtype_name = plan
        .entries
        .first()
        .map(|e| e.dtype.torch_name())
        .unwrap_or("float16");
    let config = gpt2_config::config(&plan, &src.mapping, dtype_name);
    let mut config_text = serde_json::to_string_pretty(&config).map_err(|e| {
        Error::output(
            staging.path().join("config.json"),
            format!("cannot encode: {e}"),
        )
    })?;
    config_text.push('\n');
    let config_sha =
        write::small_file(&staging.path().join("config.json"), config_text.as_bytes())?;
    let sums = write::sha256sums(vec![
        ("model.safetensors".into(), model_sha256.clone()),
        ("config.json".into(), config_sha.clone()),
    ]);
    let sums_sha = write::small_file(&staging.path().join("SHA256SUMS"), sums.as_bytes())?;
    if progress.cancelled() {
        return Err(Error::Interrupted);
    }
    staging.commit()?;

    let file = |name: &str, bytes: u64, sha256: String| write::OutputFile {
        name: name.into(),
        bytes,
        sha256,
    };
    Ok(Summary {
        output: opts.output.clone(),
        files: vec![
            file("model.safetensors", model_bytes, model_sha256),
            file("config.json", config_text.len() as u64, config_sha),
            file("SHA256SUMS", sums.len() as u64, sums_sha),
        ],
        tensors: plan.entries.len(),
        tensor_bytes: plan.total_bytes(),
        model_file_bytes: model_bytes,
        seconds: started.elapsed().as_secs_f64(),
        warnings,
        variant: plan.variant.clone(),
        model_parallel: plan.model_parallel,
    })
}

/// Stream every merged tensor into `dir/model.safetensors`.
fn write_model(
    src: &Source,
    plan: &Plan,
    opts: &Options,
    dir: &Path,
    progress: &dyn Progress,
) -> Result<(String, u64, usize)> {
    let names: Vec<String> = src.ranks.iter().map(|r| r.display.clone()).collect();
    let metadata = write::model_metadata(&src.ranks, plan);
    let path = dir.join("model.safetensors");
    let header = write::safetensors_header(plan, &metadata)?;
    progress.begin(plan.total_bytes());
    let mut warnings = 0;
    let mut done = std::collections::VecDeque::new();
    let (hash, bytes) = write::stream_model(&path, |sink| {
        sink.put(header.into())?;
        for e in &plan.entries {
            if progress.cancelled() {
                return Err(Error::Interrupted);
            }
            let spans = src
                .ranks
                .iter()
                .zip(&e.sources)
                .map(|(r, t)| r.file.span(&e.source, t))
                .collect::<Result<Vec<_>>>()?;
            for (r, span) in src.ranks.iter().zip(&spans) {
                r.file.prefetch(span);
            }
            let parts = src
                .ranks
                .iter()
                .zip(&e.sources)
                .map(|(r, t)| r.file.read(&e.source, t))
                .collect::<Result<Vec<_>>>()?;
            let pieces = merge::merge(e, parts, &names, &mut |n| sink.buffer(n))?;
            let bad: u64 = pieces
                .iter()
                .map(|p| merge::count_non_finite(p, e.source_dtype))
                .sum();
            if bad > 0 {
                let msg = format!(
                    "tensor `{}` (-> `{}`) holds {bad} NaN/Inf value(s) of {}",
                    e.source,
                    e.target,
                    e.numel()
                );
                if opts.strict {
                    return Err(Error::values(&e.source, format!("{msg} (--strict)")));
                }
                progress.warn(&msg);
                warnings += 1;
            }
            for piece in pieces {
                if e.dtype == e.source_dtype {
                    sink.put(piece)?;
                } else {
                    let cast = merge::cast(&piece, e.source_dtype, e.dtype).map_err(|(v, n)| {
                        Error::values(
                            &e.source,
                            format!(
                                "(-> `{}`): {n} finite value(s) overflow {} (first: {v}); keep \
                             the source dtype or choose a wider one",
                                e.target,
                                e.dtype.torch_name()
                            ),
                        )
                    })?;
                    sink.put(cast.into())?;
                }
            }
            // Drop our view of the source pages a few tensors later, once the writer and the
            // hasher (at most QUEUE chunks behind) are done with them.
            done.extend(spans.into_iter().enumerate());
            while done.len() > 3 * src.ranks.len() {
                if let Some((r, span)) = done.pop_front() {
                    src.ranks[r].file.release(&span);
                }
            }
            progress.advance(e.nbytes());
        }
        Ok(())
    })?;
    Ok((hash, bytes, warnings))
}
