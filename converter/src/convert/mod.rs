//! cpm-convert: port GPT-2-family training checkpoints (CPM-LM, Megatron-LM, Megatron-core,
//! nanoGPT, Hugging Face) to a Hugging Face GPT-2 directory (`model.safetensors`, `config.json`,
//! `SHA256SUMS`) without Python.
//!
//! The data flow, one step per module:
//!
//! ```text
//! layout::discover       input path  -> every file (tracker, iteration, rank grid, HF shards)
//! zero                   or a DeepSpeed ZeRO root/tag: each tp rank's fp32 masters as tensors
//!                                       assembled from runs of the optimizer partitions
//! source::open           files       -> torch object trees (torch:: reads zip, legacy and
//!                                       safetensors files through a memory map, executing
//!                                       nothing; a Distributed Checkpoint folder as one file
//!                                       of global tensors assembled from chunks), the family
//!                                       chosen, each file's weights
//! plan::build            weights + mapping (mappings/*.toml) -> every output tensor, checked
//! merge::tensor          one tensor's parts -> Hugging Face layout (concat, qkv interleave,
//!                                       transpose), NaN/Inf check, cast
//! write                  streaming safetensors + config.json + SHA256SUMS, staged and
//!                                       renamed into place
//! export                 or (`--to cpm|megatron`): each merged tensor split again by the
//!                                       target family's mapping into rank files written by
//!                                       our own torch.save (pickle + zip), + SHA256SUMS
//! tokenizer_files        with a tokenizer: spiece.model, tokenizer.json, tokenizer_config.json,
//!                                       the Python tokenizer, generation_config.json, and
//!                                       config.json's bos/eos ids from its `<eod>`
//! ```
//!
//! Tensors stream through one at a time; the heap holds at most a few merged tensors (recycled
//! transpose buffers) and the writer's and hasher's bounded queues: docs/architecture.md, "Memory".

pub mod checkpoint;
pub mod cli;
pub mod diff;
pub mod elements;
pub mod error;
pub mod export;
pub mod files;
pub mod gpt2_config;
pub mod inspect;
pub mod layout;
pub mod mapping;
pub mod merge;
pub mod plan;
pub mod shards;
pub mod source;
pub mod table;
pub mod tokenizer_files;
pub mod torch;
pub mod transpose;
pub mod write;
pub mod zero;

use std::path::{Path, PathBuf};
use std::time::Instant;

pub use error::{Error, Result};
pub use mapping::Mapping;
pub use plan::{Hints, OutDtype, Plan};
pub use source::{open, Family, Source};

/// What to convert and how.
#[derive(Debug, Clone)]
pub struct Options {
    pub input: PathBuf,
    pub output: PathBuf,
    pub dtype: OutDtype,
    pub heads: Option<u64>,
    /// Keep only the first N vocabulary rows (cut the padding).
    pub vocab_size: Option<u64>,
    /// config.json's activation_function, overriding what the checkpoint implies.
    pub activation: Option<String>,
    pub force: bool,
    pub strict: bool,
    /// Which family's mapping reads the input.
    pub family: Family,
    /// The tokenizer the port ships: given, looked for beside the input, or none.
    pub tokenizer: tokenizer_files::Choice,
    /// The output layout and its model-parallel grid (`--to`, `--tp`, `--pp`).
    pub export: export::Export,
    /// `--max-shard-size`: Hugging Face output split into shards of at most this many bytes.
    pub max_shard_size: Option<u64>,
}

/// Hooks for a user interface; all optional.
pub trait Progress {
    /// Called once with the bytes the model file will receive.
    fn begin(&self, _total_bytes: u64) {}
    /// Called after each tensor is written.
    fn advance(&self, _bytes: u64) {}
    /// A problem that does not stop the conversion.
    fn warn(&self, msg: &str);
    /// Something the user should know that is not a problem (a tokenizer found by itself).
    fn note(&self, _msg: &str) {}
    /// Whether the user asked to stop (SIGINT/SIGTERM): checked before each tensor and before
    /// the result is moved into place, so a stop removes the staging directory.
    fn cancelled(&self) -> bool {
        false
    }
    /// Called once, just before the staging directory is created. Until then nothing exists
    /// to clean up (a UI may let a stop signal end the process at once, even in a blocked
    /// read); from then on a stop must come through [`Progress::cancelled`].
    fn writing(&self) {}
}

/// What a finished conversion did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Summary {
    pub output: PathBuf,
    /// The input's family (its mapping's name) and how it was chosen.
    pub variant: String,
    pub family_from: String,
    pub activation: plan::Activation,
    pub model_parallel: usize,
    pub tensors: usize,
    /// The tensors' data alone.
    pub tensor_bytes: u64,
    /// model.safetensors' size: the tensors plus the header.
    pub model_file_bytes: u64,
    /// model.safetensors, config.json, the tokenizer files if any, SHA256SUMS.
    pub files: Vec<write::OutputFile>,
    /// The tokenizer the port got, if any.
    pub tokenizer: Option<tokenizer_files::Report>,
    pub seconds: f64,
    /// Problems that did not stop the conversion, as they were reported to [`Progress::warn`].
    pub warnings: Vec<String>,
}

/// Plan the conversion of an opened checkpoint.
pub fn plan(src: &Source, hints: plan::Hints, dtype: OutDtype) -> Result<Plan> {
    plan::build(&src.ranks, &src.mapping, src.config.as_ref(), hints, dtype)
}

/// Convert end to end: read -> plan -> merge -> write.
pub fn convert(opts: &Options, progress: &dyn Progress) -> Result<Summary> {
    let started = Instant::now();
    let rank_format = opts.export.target.format();
    // Model-parallel layouts carry no tokenizer.
    let located = match rank_format {
        None => tokenizer_files::locate(&opts.input, &opts.tokenizer),
        Some(_) => None,
    };
    // Refuse an OUT_DIR that is, holds or lies inside an input, then a non-empty one, before
    // doing any work.
    let mut extra: Vec<&Path> = located.iter().map(|l| l.path.as_path()).collect();
    if let Family::File(p) = &opts.family {
        extra.push(p);
    }
    write::check_outside_inputs(&opts.output, &opts.input, &extra)?;
    write::check_target(&opts.output, opts.force)?;
    let src = open(&opts.input, &opts.family)?;
    if let Some(n) = zero::note(&src.ranks) {
        progress.note(&n);
    }
    let hints = Hints {
        heads: opts.heads,
        vocab_size: opts.vocab_size,
        activation: opts.activation.clone(),
    };
    let mut plan = plan(&src, hints, opts.dtype)?;
    if let Some(fmt) = rank_format {
        // Refuse a grid the model cannot be split on before anything is created.
        export::place(&plan, &opts.export, fmt)?;
        plan.notes.extend(export::notes(&plan, &opts.export));
    }
    let mut log = Log::new(progress);
    for n in &plan.notes {
        log.warn(n.clone());
    }
    // Read and check the tokenizer before anything is created: a bad one leaves no trace.
    let tokenizer = read_tokenizer(located, &opts.input, &src, &plan, progress, &mut |w| {
        log.warn(w)
    })?;
    progress.writing();
    let staging = write::Staging::new(&opts.output, opts.force)?;
    for p in &staging.removed_stale {
        log.warn(format!(
            "removed {}, left behind by a conversion that was killed",
            p.display()
        ));
    }
    let files = write_all(
        &src,
        &plan,
        opts,
        tokenizer.as_ref(),
        staging.path(),
        &mut log,
    )?;
    if log.progress.cancelled() {
        return Err(Error::Interrupted);
    }
    staging.commit()?;
    Ok(Summary {
        output: opts.output.clone(),
        variant: plan.variant.clone(),
        family_from: src.family_from.clone(),
        activation: plan.activation.clone(),
        model_parallel: plan.model_parallel,
        tensors: plan.entries.len(),
        tensor_bytes: plan.total_bytes(),
        model_file_bytes: files
            .iter()
            .filter(|f| f.name.ends_with(".safetensors") || f.name.ends_with(".pt"))
            .map(|f| f.bytes)
            .sum(),
        files,
        tokenizer: tokenizer.map(|t| t.report(plan.vocab)),
        seconds: started.elapsed().as_secs_f64(),
        warnings: log.warnings,
    })
}

/// The located tokenizer, read and checked against the plan's vocabulary (a note when it was
/// found rather than given, warnings to `warn`). `--dry-run` runs this too.
pub fn read_tokenizer(
    located: Option<tokenizer_files::Located>,
    input: &Path,
    src: &Source,
    plan: &Plan,
    progress: &dyn Progress,
    warn: &mut dyn FnMut(String),
) -> Result<Option<tokenizer_files::Tokenizer>> {
    let Some(located) = located else {
        return Ok(None);
    };
    if located.found == "auto" {
        progress.note(&format!(
            "using the tokenizer {} found beside the input (--tokenizer PATH names another, \
             --no-tokenizer writes none)",
            located.path.display()
        ));
    }
    let fallback = gpt2_config::mapping_token_ids(plan, &src.mapping);
    tokenizer_files::load(located, (plan.vocab, input), fallback, warn).map(Some)
}

/// Every file of OUT_DIR into `dir`: the model, config.json (its special ids from the tokenizer,
/// else from the mapping), the tokenizer's files, SHA256SUMS last.
fn write_all(
    src: &Source,
    plan: &Plan,
    opts: &Options,
    tokenizer: Option<&tokenizer_files::Tokenizer>,
    dir: &Path,
    log: &mut Log,
) -> Result<Vec<write::OutputFile>> {
    let ids = match tokenizer {
        Some(t) => t.ids,
        None => gpt2_config::mapping_token_ids(plan, &src.mapping),
    };
    let mut files = match opts.export.target.format() {
        Some(fmt) => {
            let job = export::Job {
                src,
                plan,
                opts: &opts.export,
                fmt,
                iteration: export::Iteration::of_input(&opts.input),
                strict: opts.strict,
            };
            let (progress, warnings) = (log.progress, &mut log.warnings);
            let mut warn = |w: String| {
                progress.warn(&w);
                warnings.push(w);
            };
            export::write(&job, dir, progress, &mut warn)?
        }
        None => {
            let mut files = write_models(src, plan, opts, dir, log)?;
            files.push(write_config(src, plan, ids, dir, log)?);
            files
        }
    };
    if let Some(t) = tokenizer {
        files.extend(t.write(dir, plan.positions)?);
    }
    let sums = write::sha256sums(
        files
            .iter()
            .map(|f| (f.name.clone(), f.sha256.clone()))
            .collect(),
    );
    files.push(write_small(dir, "SHA256SUMS", sums.as_bytes())?);
    Ok(files)
}

/// `model.safetensors`, or with `--max-shard-size` the shards transformers would write and their
/// index (the copies a checkpoint keeps are checked once, after the last shard).
fn write_models(
    src: &Source,
    plan: &Plan,
    opts: &Options,
    dir: &Path,
    log: &mut Log,
) -> Result<Vec<write::OutputFile>> {
    let shards = match opts.max_shard_size {
        Some(max) => shards::split(&plan.entries, max),
        None => Vec::new(),
    };
    if shards.len() < 2 {
        return Ok(vec![write_model(
            src,
            plan,
            opts,
            dir,
            "model.safetensors",
            log,
        )?]);
    }
    log.progress.begin(plan.total_bytes());
    let mut files = Vec::with_capacity(shards.len() + 1);
    for (k, entries) in shards.iter().enumerate() {
        let mut part = plan.clone();
        part.entries = entries.clone();
        part.checks.clear();
        let name = shards::file_name(k, shards.len());
        files.push(write_model(src, &part, opts, dir, &name, log)?);
    }
    src.check_copies(plan)?;
    let index = shards::index(plan, &shards)?;
    files.push(write_small(
        dir,
        "model.safetensors.index.json",
        index.as_bytes(),
    )?);
    Ok(files)
}

/// Stream every merged tensor of `plan` into `dir/name`, one tensor at a time.
fn write_model(
    src: &Source,
    plan: &Plan,
    opts: &Options,
    dir: &Path,
    name: &str,
    log: &mut Log,
) -> Result<write::OutputFile> {
    let header = write::safetensors_header(plan, &write::model_metadata(&src.ranks, plan))?;
    if opts.max_shard_size.is_none() {
        log.progress.begin(plan.total_bytes());
    }
    let path = dir.join(name);
    let (sha256, bytes) = write::stream_model(&path, |sink| {
        sink.put(header.into())?;
        for e in &plan.entries {
            if log.progress.cancelled() {
                return Err(Error::Interrupted);
            }
            let spans = src.spans(e)?;
            let parts = src.read(e, &spans)?;
            let names = src.part_names(e);
            let merged = merge::tensor(e, parts, &names, opts.strict, &mut |n| sink.buffer(n))?;
            if merged.non_finite > 0 {
                log.warn(non_finite_warning(e, merged.non_finite));
            }
            for piece in merged.pieces {
                sink.put(piece)?;
            }
            // Drop our view of the source pages once the writer and the hasher are past them.
            let pages: Vec<_> = e
                .sources
                .iter()
                .map(|p| src.ranks[p.rank].file.pages())
                .collect();
            sink.after_written(Box::new(move || {
                pages.iter().zip(&spans).for_each(|(p, s)| p.release(s))
            }))?;
            log.progress.advance(e.nbytes());
        }
        src.check_copies(plan)
    })?;
    Ok(write::OutputFile {
        name: name.into(),
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
fn write_config(
    src: &Source,
    plan: &Plan,
    ids: gpt2_config::TokenIds,
    dir: &Path,
    log: &mut Log,
) -> Result<write::OutputFile> {
    let dtype = gpt2_config::model_dtype(plan);
    if let Some(mixed) = gpt2_config::mixed_dtypes(plan) {
        log.warn(format!(
            "the written tensors mix dtypes ({mixed}); config.json says `{}`, the dtype of most \
             weights",
            dtype.torch_name()
        ));
    }
    let config = gpt2_config::config(plan, &src.mapping, dtype, ids);
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
