//! Writing model-parallel checkpoints (`--to cpm|megatron`, `--tp`, `--pp`): every output tensor
//! is merged as for Hugging Face, then split again by the target family's own mapping
//! (mappings/*.toml, read backwards: a rule's `split` says how its ranks hold it, `transpose`
//! its orientation, `shape` which size it pads or divides) and its parts appended to the rank
//! files being written, so memory holds about one tensor. Each format ([`RankFormat`], one module
//! each) says only what the mapping cannot: file names, the dict around the weights, nesting.
//! Files are written by our own `torch.save` (`pickler`, `ptzip`).

pub(crate) mod cpm;
pub(crate) mod megatron;
pub(crate) mod pickler;
mod place;
pub(crate) mod ptzip;
pub(crate) mod split;

use std::path::Path;

use crate::error::{Error, Result};
use crate::merge;
use crate::open::Source;
use crate::plan::Plan;
use crate::progress::Progress;
use crate::write::OutputFile;

pub(crate) use place::{notes, place, Placed};

/// The output layout (`--to`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Target {
    /// A Hugging Face GPT-2 directory (model.safetensors, config.json).
    #[default]
    Hf,
    /// CPM-Generate's DeepSpeed model states.
    Cpm,
    /// Megatron-LM's legacy GPT checkpoint, version 3.0.
    Megatron,
}

impl Target {
    /// The rank-file format, or `None` for Hugging Face's single model.
    pub fn format(self) -> Option<&'static dyn RankFormat> {
        match self {
            Target::Hf => None,
            Target::Cpm => Some(&cpm::Cpm),
            Target::Megatron => Some(&megatron::Megatron),
        }
    }
}

/// What to write: the layout and its model-parallel grid.
#[derive(Debug, Clone)]
pub struct Export {
    /// The layout (`--to`).
    pub target: Target,
    /// Tensor-parallel ranks to write (`--tp`).
    pub tp: usize,
    /// Pipeline stages to write (`--pp`).
    pub pp: usize,
    /// Megatron pads the vocabulary with zero rows to a multiple of this times `tp`.
    pub pad_vocab_multiple: u64,
}

impl Default for Export {
    fn default() -> Self {
        Export {
            target: Target::Hf,
            tp: 1,
            pp: 1,
            pad_vocab_multiple: 128,
        }
    }
}

/// The output's tensor- and pipeline-parallel sizes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Grid {
    /// Tensor-parallel ranks.
    pub tp: usize,
    /// Pipeline stages.
    pub pp: usize,
}

/// One rank file's place in the grid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Slot {
    /// Tensor-parallel rank.
    pub tp: usize,
    /// Pipeline stage.
    pub pp: usize,
}

/// The iteration the output is saved at: the input's, else `release`.
#[derive(Debug, Clone, Copy, Default)]
pub struct Iteration {
    /// The iteration; `None` saves as `release`.
    pub number: Option<u64>,
}

impl Iteration {
    /// The input's iteration (its tracker or folder name), if it has a numbered one.
    pub fn of_input(input: &Path) -> Iteration {
        let number = crate::open::discover(input)
            .ok()
            .and_then(|l| l.iteration)
            .and_then(|s| s.parse().ok());
        Iteration { number }
    }

    /// `latest_checkpointed_iteration.txt`'s text.
    fn tracker(&self) -> String {
        self.number
            .map_or_else(|| "release".to_string(), |n| n.to_string())
    }
}

/// What a model-parallel format adds to its mapping's rules.
pub trait RankFormat: Sync {
    /// `--to`'s name.
    fn name(&self) -> &'static str;
    /// The built-in mapping whose rules split the tensors (and read them back).
    fn mapping_name(&self) -> &'static str;
    /// The checkpoint version the mapping's `[variant.qkv]` table is read at, if it has one.
    fn qkv_version(&self) -> Option<f64>;
    /// Pipeline stages the format can express.
    fn max_stages(&self) -> usize;
    /// Whether the vocabulary is padded (Megatron's `make_vocab_size_divisible_by`).
    fn pads_vocab(&self) -> bool {
        self.qkv_version().is_some()
    }
    /// The iteration folder's name.
    fn folder(&self, it: &Iteration) -> String;
    /// A rank file's path inside the iteration folder.
    fn file(&self, slot: Slot, grid: Grid) -> String;
    /// A source name as the path of nested dict keys it is saved under.
    fn nest(&self, name: &str) -> Vec<String>;
    /// The training arguments saved beside the weights, which the family's own loader and
    /// this converter read the model from; an error when the family's code cannot run the
    /// model (an activation it has no flag for).
    fn args(&self, model: &Described, grid: Grid) -> Result<pickler::Py>;
    /// The file's top-level object around the weights dict and the arguments.
    fn top(
        &self,
        weights: pickler::Py,
        args: pickler::Py,
        grid: Grid,
        it: &Iteration,
    ) -> pickler::Py;
}

/// The model as the rank files' arguments state it.
#[derive(Debug, Clone, PartialEq)]
pub struct Described {
    /// Transformer blocks.
    pub layers: u64,
    /// Hidden size.
    pub hidden: u64,
    /// Attention heads.
    pub heads: u64,
    /// The MLP's width.
    pub inner: u64,
    /// Learned position embeddings.
    pub positions: u64,
    /// The vocabulary's rows.
    pub vocab: u64,
    /// The rows written: `vocab` rounded up to a multiple of `pad_multiple` × tp where the
    /// format pads, else `vocab`.
    pub padded_vocab: u64,
    /// `--pad-vocab-multiple` (Megatron's `make_vocab_size_divisible_by`).
    pub pad_multiple: u64,
    /// Hugging Face's `activation_function`.
    pub activation: String,
    /// The model has its own output matrix (not the tied embedding).
    pub untied: bool,
}

impl Described {
    /// The model `plan` describes, as written with `opts` in format `fmt`.
    pub fn of(plan: &Plan, opts: &Export, fmt: &dyn RankFormat) -> Described {
        Described {
            layers: plan.layers,
            hidden: plan.hidden,
            heads: plan.heads.count,
            inner: plan.inner,
            positions: plan.positions,
            vocab: plan.vocab,
            padded_vocab: place::padded_rows(plan.vocab, opts, fmt),
            pad_multiple: opts.pad_vocab_multiple.max(1),
            activation: plan.activation.name.clone(),
            // Hugging Face's name for an untied head, the name every mapping reads it as.
            untied: plan.entry("lm_head.weight").is_some(),
        }
    }
}

/// One export: what to write from where.
pub(crate) struct Job<'a> {
    pub src: &'a Source,
    pub plan: &'a Plan,
    pub opts: &'a Export,
    pub fmt: &'a dyn RankFormat,
    pub iteration: Iteration,
    /// NaN/Inf in a weight is an error.
    pub strict: bool,
}

/// Every rank file and the tracker into `dir`, each tensor merged, split and appended as it is
/// read. Returns the files written (SHA256SUMS is the caller's).
pub(crate) fn write(
    job: &Job<'_>,
    dir: &Path,
    progress: &dyn Progress,
    warn: &mut dyn FnMut(String),
) -> Result<Vec<OutputFile>> {
    let Job {
        src,
        plan,
        opts,
        fmt,
        strict,
        ..
    } = *job;
    let it = &job.iteration;
    let grid = Grid {
        tp: opts.tp,
        pp: opts.pp,
    };
    let placed = place(plan, opts, fmt)?;
    let args = fmt.args(&Described::of(plan, opts, fmt), grid)?;
    let folder = fmt.folder(it);
    let specs = place::files(&placed, fmt, grid, it, &args);
    let mut writers = Vec::with_capacity(specs.len());
    for s in &specs {
        let path = dir.join(&folder).join(&s.name);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(|e| Error::io(parent, "cannot create", e))?;
        }
        writers.push(ptzip::PtWriter::create(&path, &s.pickle)?);
    }
    progress.begin(plan.total_bytes());
    for p in &placed {
        if progress.cancelled() {
            return Err(Error::Interrupted);
        }
        write_one(src, p, grid, strict, &mut writers, warn)?;
        progress.advance(p.entry.nbytes());
    }
    src.check_copies(plan)?;
    let mut files = Vec::with_capacity(specs.len() + 1);
    for (w, s) in writers.into_iter().zip(&specs) {
        if w.storages() != s.storages {
            return Err(Error::internal(format!(
                "{}: {} storages written, {} pickled",
                s.name,
                w.storages(),
                s.storages
            )));
        }
        let (bytes, sha256) = w.finish()?;
        files.push(OutputFile {
            name: format!("{folder}/{}", s.name),
            bytes,
            sha256,
        });
    }
    let tracker = it.tracker();
    let path = dir.join(crate::checkpoint::found::TRACKER);
    files.push(OutputFile {
        name: crate::checkpoint::found::TRACKER.into(),
        bytes: tracker.len() as u64,
        sha256: crate::write::small_file(&path, tracker.as_bytes())?,
    });
    Ok(files)
}

/// One tensor: read, merged into the target's orientation, padded, split, appended to the rank
/// files of every stage that holds it; its source pages released.
fn write_one(
    src: &Source,
    p: &Placed,
    grid: Grid,
    strict: bool,
    writers: &mut [ptzip::PtWriter],
    warn: &mut dyn FnMut(String),
) -> Result<()> {
    let e = &p.entry;
    let spans = src.spans(e)?;
    let parts = src.read(e, &spans)?;
    let names = src.part_names(e);
    let merged = merge::tensor(&p.merge, parts, &names, strict, &mut |n| vec![0u8; n])?;
    if merged.non_finite > 0 {
        warn(format!(
            "tensor `{}` (-> `{}`) holds {} NaN/Inf value(s) of {}",
            e.source,
            e.target,
            merged.non_finite,
            e.numel()
        ));
    }
    let mut pieces = merged.pieces;
    let es = e.dtype.size();
    if p.pad_rows > 0 {
        pieces.push(std::borrow::Cow::Owned(vec![0u8; p.pad_rows * p.cols * es]));
    }
    let parts = split::split(&p.split, &pieces, (p.rows, p.cols), es, grid.tp)?;
    for (stage, _) in &p.dests {
        for (r, part) in parts.iter().enumerate() {
            let w = writers
                .get_mut(stage * grid.tp + r)
                .ok_or_else(|| Error::internal(format!("no rank file for stage {stage}")))?;
            w.storage(part)?;
        }
    }
    for (part, s) in e.sources.iter().zip(&spans) {
        src.ranks[part.rank]
            .file
            .release_for(&e.source, &part.tensor, s);
    }
    Ok(())
}
