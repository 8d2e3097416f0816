//! The conversion, end to end: [`prepare`] (open the input, plan it, place a model-parallel
//! export, read the tokenizer; everything `--dry-run` shows) then write (`output`).

use std::path::{Path, PathBuf};
use std::time::Instant;

use crate::error::{Error, Result};
use crate::export::{self, RankFormat};
use crate::open::{open, Family, Source};
use crate::plan::{self, Hints, OutDtype, Plan};
use crate::progress::Progress;
use crate::{gpt2_config, tokenizer_files, write, zero};

mod output;

/// What to read and how to plan it: what a conversion and a dry run share.
#[derive(Debug, Clone)]
pub struct Request {
    /// The checkpoint: a file, a directory, or a ZeRO root or tag.
    pub input: PathBuf,
    /// Which family's mapping reads the input.
    pub family: Family,
    /// The output element type (`--dtype`).
    pub dtype: OutDtype,
    /// Heads, the vocabulary rows to keep (cut the padding), and config.json's
    /// activation_function overriding what the checkpoint implies.
    pub hints: Hints,
    /// The tokenizer the port ships: given, looked for beside the input, or none.
    pub tokenizer: tokenizer_files::Choice,
    /// The output layout and its model-parallel grid (`--to`, `--tp`, `--pp`).
    pub export: export::Export,
}

/// OUT_DIR, and whether a non-empty one may be replaced (`--force`).
#[derive(Debug, Clone)]
pub struct OutDir {
    /// The directory to create (or replace).
    pub path: PathBuf,
    /// A non-empty OUT_DIR may be replaced.
    pub force: bool,
}

/// What to convert and how.
#[derive(Debug, Clone)]
pub struct Options {
    /// What to read and how to plan it.
    pub request: Request,
    /// Where to write.
    pub out: OutDir,
    /// NaN/Inf in the weights is an error rather than a warning.
    pub strict: bool,
    /// `--max-shard-size`: Hugging Face output split into shards of at most this many bytes.
    pub max_shard_size: Option<u64>,
}

/// What a finished conversion did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Summary {
    /// OUT_DIR.
    pub output: PathBuf,
    /// The input's family (its mapping's name).
    pub variant: String,
    /// How the family was chosen (`detected`, `--from …`, `--mapping …`).
    pub family_from: String,
    /// The activation written to config.json, and why.
    pub activation: plan::Activation,
    /// The input's tensor-parallel ranks.
    pub model_parallel: usize,
    /// Tensors written.
    pub tensors: usize,
    /// The tensors' data alone.
    pub tensor_bytes: u64,
    /// model.safetensors' size: the tensors plus the header.
    pub model_file_bytes: u64,
    /// model.safetensors, config.json, the tokenizer files if any, SHA256SUMS.
    pub files: Vec<write::OutputFile>,
    /// The tokenizer the port got, if any.
    pub tokenizer: Option<tokenizer_files::Report>,
    /// Wall-clock time of the whole conversion.
    pub seconds: f64,
    /// Problems that did not stop the conversion, as they were reported to [`Progress::warn`].
    pub warnings: Vec<String>,
}

/// A checked conversion, nothing written yet: what `--dry-run` prints and a conversion writes.
pub struct Prepared {
    /// The opened checkpoint.
    pub(crate) src: Source,
    /// The plan as built (its `notes` are the plan's own; the warnings went to `warn`).
    pub plan: Plan,
    /// The rank-file format of a model-parallel export, its grid checked to fit the model;
    /// `None` for Hugging Face output.
    pub format: Option<&'static dyn RankFormat>,
    /// The tokenizer the port ships, read and checked against the plan's vocabulary.
    pub tokenizer: Option<tokenizer_files::Tokenizer>,
}

impl Prepared {
    /// model.safetensors' size as one file: the tensors plus the header the writer produces.
    pub fn model_file_bytes(&self) -> Result<u64> {
        let metadata = write::model_metadata(&self.src.ranks, &self.plan);
        let header = write::safetensors_header(&self.plan, &metadata)?;
        Ok(self.plan.total_bytes() + header.len() as u64)
    }
}

/// Plan the conversion of an opened checkpoint.
pub fn plan(src: &Source, hints: plan::Hints, dtype: OutDtype) -> Result<Plan> {
    plan::build(&src.ranks, &src.mapping, src.config.as_ref(), hints, dtype)
}

/// Everything short of writing, in the order a conversion needs it: with `out`, OUT_DIR is
/// refused first if it is, holds or lies inside an input, or is not empty (without `--force`);
/// then the input is opened and planned, a model-parallel grid checked, and the tokenizer read
/// and checked (a bad one leaves no trace). Warnings (the plan's notes, the export's, the
/// tokenizer's) go to `warn` as they arise; notes to `progress`.
pub fn prepare(
    req: &Request,
    out: Option<&OutDir>,
    progress: &dyn Progress,
    warn: &mut dyn FnMut(String),
) -> Result<Prepared> {
    let format = req.export.target.format();
    // Model-parallel layouts carry no tokenizer.
    let located = match format {
        None => tokenizer_files::locate(&req.input, &req.tokenizer),
        Some(_) => None,
    };
    if let Some(out) = out {
        let mut extra: Vec<&Path> = located.iter().map(|l| l.path.as_path()).collect();
        if let Family::File(p) = &req.family {
            extra.push(p);
        }
        write::check_outside_inputs(&out.path, &req.input, &extra)?;
        write::check_target(&out.path, out.force)?;
    }
    let src = open(&req.input, &req.family)?;
    // What a conversion of ZeRO ranks writes: said by a conversion (with `out`), not a dry run.
    if let Some(n) = zero::note(&src.ranks).filter(|_| out.is_some()) {
        progress.note(&n);
    }
    let plan = plan(&src, req.hints.clone(), req.dtype)?;
    let mut warnings = plan.notes.clone();
    if let Some(fmt) = format {
        // Refuse a grid the model cannot be split on before anything is created.
        export::place(&plan, &req.export, fmt)?;
        warnings.extend(export::notes(&plan, &req.export));
    }
    warnings.into_iter().for_each(&mut *warn);
    let tokenizer = read_tokenizer(located, &req.input, &src, &plan, progress, warn)?;
    Ok(Prepared {
        src,
        plan,
        format,
        tokenizer,
    })
}

/// Convert end to end: [`prepare`], then write into a staging directory renamed into place.
pub fn convert(opts: &Options, progress: &dyn Progress) -> Result<Summary> {
    let started = Instant::now();
    let mut log = Log::new(progress);
    let prepared = prepare(&opts.request, Some(&opts.out), progress, &mut |w| {
        log.warn(w)
    })?;
    progress.writing();
    let staging = write::Staging::new(&opts.out.path, opts.out.force)?;
    for p in &staging.removed_stale {
        log.warn(format!(
            "removed {}, left behind by a conversion that was killed",
            p.display()
        ));
    }
    let files = output::write_all(&prepared, opts, staging.path(), &mut log)?;
    if log.progress.cancelled() {
        return Err(Error::Interrupted);
    }
    staging.commit()?;
    let Prepared {
        src,
        plan,
        tokenizer,
        ..
    } = prepared;
    Ok(Summary {
        output: opts.out.path.clone(),
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
/// found rather than given, warnings to `warn`).
fn read_tokenizer(
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
