//! From the ranks' tensor lists and a mapping to a plan: every output tensor with its sources on
//! each tensor-parallel rank, how they merge, its final shape and dtype. All checks that need no
//! tensor data happen here, so `--dry-run` finds every structural problem.
//!
//! The steps: `matching` groups every weight by pipeline stage and name, matches it to a rule
//! and renumbers the layers of each stage globally; `entry` turns each group into an output
//! tensor with checked shapes; `model` reads the model's sizes and head count off them.

mod entry;
mod matching;
mod model;

use cpm_torch::{Dtype, TensorRef};
use serde::Serialize;

use crate::checkpoint::weights::Rank;
use crate::error::{Error, Result};
use crate::mapping::{Dim, Mapping, Split};

pub use model::{Activation, Heads};

/// The output element type the user asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutDtype {
    /// Each tensor as stored in the checkpoint.
    Keep,
    /// IEEE half precision.
    F16,
    /// bfloat16.
    BF16,
    /// Single precision.
    F32,
}

impl OutDtype {
    /// The dtype a tensor stored as `source` is written as.
    pub fn resolve(self, source: Dtype) -> Dtype {
        match self {
            OutDtype::Keep => source,
            OutDtype::F16 => Dtype::F16,
            OutDtype::BF16 => Dtype::BF16,
            OutDtype::F32 => Dtype::F32,
        }
    }
}

/// What the user may tell the plan that the checkpoint does not.
#[derive(Debug, Clone, Default)]
pub struct Hints {
    /// `--heads`.
    pub heads: Option<u64>,
    /// `--vocab-size`: keep only the first N vocabulary rows (padding cut).
    pub vocab_size: Option<u64>,
    /// `--activation`: the activation function, whatever the checkpoint's flags imply.
    pub activation: Option<String>,
}

/// One tensor-parallel rank's part of an output tensor: the index of its file in the source's
/// ranks, and the tensor in that file.
#[derive(Debug, Clone)]
pub struct Part {
    /// Index into [`Source::ranks`](crate::Source::ranks).
    pub rank: usize,
    /// The stored tensor (no data read yet).
    pub tensor: std::rc::Rc<TensorRef>,
}

/// One output tensor.
#[derive(Debug, Clone, Serialize)]
pub struct Entry {
    /// The Hugging Face name it is written under.
    pub target: String,
    /// The source name (as stored, before prefixes were stripped), or the rule's first spelling
    /// for a synthesized tensor.
    pub source: String,
    /// How the ranks' parts join (the mapping rule's `split`).
    pub split: Split,
    /// The merged tensor is transposed (Conv1D vs Linear orientation).
    pub transpose: bool,
    /// The dtype stored in the checkpoint.
    #[serde(serialize_with = "ser_dtype")]
    pub source_dtype: Dtype,
    /// The dtype written.
    #[serde(serialize_with = "ser_dtype")]
    pub dtype: Dtype,
    /// The source tensor's shape on each rank (empty for a synthesized tensor).
    pub rank_shapes: Vec<Vec<u64>>,
    /// Output shape (after any transpose and vocabulary cut).
    pub shape: Vec<u64>,
    /// No source: the model has no such parameter, and zeros give the same function.
    pub zeros: bool,
    /// Rows kept of the merged (untransposed) tensor, when the vocabulary padding is cut.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub keep_rows: Option<u64>,
    /// Attention heads, which the per-head query/key/value layouts need to merge.
    #[serde(skip)]
    pub heads: u64,
    /// Its parts, one per tensor-parallel rank that holds one (none for a synthesized tensor).
    #[serde(skip)]
    pub sources: Vec<Part>,
    /// The rule's expected shape in model sizes.
    #[serde(skip)]
    pub dims: Vec<Dim>,
}

fn ser_dtype<S: serde::Serializer>(d: &Dtype, s: S) -> std::result::Result<S::Ok, S::Error> {
    s.serialize_str(d.safetensors_name())
}

impl Entry {
    /// Elements written.
    pub fn numel(&self) -> u64 {
        self.shape.iter().product()
    }

    /// Bytes written.
    pub(crate) fn nbytes(&self) -> u64 {
        self.numel() * self.dtype.size() as u64
    }
}

/// A tensor that must equal an output tensor bit for bit and is not written (Megatron's
/// `word_embeddings_for_head`, a second copy of the tied embedding on the last stage).
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    /// The tensor as it would be written, shapes checked like any output.
    pub entry: Entry,
    /// The target it must equal.
    pub of: String,
}

/// The whole conversion, before any tensor data is read.
#[derive(Debug, Clone, Serialize)]
pub struct Plan {
    /// The family's name (its mapping's `[variant] name`).
    pub variant: String,
    /// Tensor-parallel ranks.
    pub model_parallel: usize,
    /// Pipeline stages the layers are spread over.
    pub pipeline_stages: usize,
    /// Transformer blocks.
    pub layers: u64,
    /// Hidden size (`n_embd`).
    pub hidden: u64,
    /// Rows of the written embedding (after any cut).
    pub vocab: u64,
    /// Learned position embeddings (`n_positions`).
    pub positions: u64,
    /// The MLP's width (`n_inner`).
    pub inner: u64,
    /// Attention heads, and where the count came from.
    pub heads: Heads,
    /// The MLP's activation, and why.
    pub activation: Activation,
    /// Every tensor written, in output order.
    pub entries: Vec<Entry>,
    /// Tensors compared with an output tensor instead of written.
    pub checks: Vec<Check>,
    /// Source tensors dropped because they are copies of the embedding (a tied head).
    pub tied_copies: Vec<String>,
    /// Problems that do not stop the conversion (padding kept, assumptions made); reported as
    /// warnings, so not serialized twice.
    #[serde(skip)]
    pub notes: Vec<String>,
}

impl Plan {
    /// Bytes of tensor data written (headers not counted).
    pub fn total_bytes(&self) -> u64 {
        self.entries.iter().map(Entry::nbytes).sum()
    }

    /// The output tensor named `target`.
    pub fn entry(&self, target: &str) -> Option<&Entry> {
        self.entries.iter().find(|e| e.target == target)
    }
}

/// Build the plan.
pub(crate) fn build(
    ranks: &[Rank],
    mapping: &Mapping,
    config: Option<&serde_json::Value>,
    hints: Hints,
    out: OutDtype,
) -> Result<Plan> {
    let Structure {
        grid,
        layers,
        mut planned,
        sizes,
    } = structure(ranks, mapping, out, true).map_err(Misfit::into_error)?;
    let hidden = sizes.get("hidden")?;
    let rec = model::Recorded {
        root: &ranks[0].file.root,
        file: &ranks[0].display,
        config,
    };
    let heads = model::head_count(&rec, mapping, hints.heads, hidden, layers)?;
    model::check_heads(&heads, hidden, grid.tp)?;
    let mut notes = Vec::new();
    let rows = sizes.get("vocab")?;
    let want = hints
        .vocab_size
        .or_else(|| implied_vocab(&rec, mapping, rows, &mut notes));
    // One word about padding is enough: an ignored hint already said the rows are kept.
    let padding_noted = !notes.is_empty();
    let vocab = entry::cut_vocab(&mut planned, rows, want, padding_noted, &mut notes)?;
    for e in planned
        .entries
        .iter_mut()
        .chain(planned.checks.iter_mut().map(|c| &mut c.entry))
    {
        e.heads = heads.count;
    }
    let activation = match hints.activation {
        // The user said: nothing is assumed, so there is nothing to warn about.
        Some(name) => Activation {
            name,
            source: "--activation".into(),
        },
        None => {
            let found = model::activation(&rec, mapping);
            if found.source.contains("records none of the flags") {
                notes.push(format!(
                    "activation_function `{}` assumed: {} (override with --activation)",
                    found.name, found.source
                ));
            }
            found
        }
    };
    Ok(Plan {
        variant: mapping.variant.name.clone(),
        model_parallel: grid.tp,
        pipeline_stages: grid.pp,
        layers,
        hidden,
        vocab,
        positions: sizes.get("positions")?,
        inner: sizes.get("inner")?,
        heads,
        activation,
        entries: planned.entries,
        checks: planned.checks,
        tied_copies: planned.tied_copies,
        notes,
    })
}

/// What the files' structure says under one mapping, before the head count and the vocabulary
/// cut: the grid, the layer count, the planned tensors and the model's sizes.
struct Structure {
    grid: matching::Grid,
    layers: u64,
    planned: entry::Planned,
    sizes: model::Sizes,
}

/// The structural steps shared by [`build`] and [`fits`]: names are matched first (a failure
/// there means another family), then completeness, world size and shapes (a failure there is
/// this family's incomplete or inconsistent checkpoint).
fn structure(
    ranks: &[Rank],
    mapping: &Mapping,
    out: OutDtype,
    read_copies: bool,
) -> std::result::Result<Structure, Misfit> {
    let grid = matching::Grid::of(ranks).map_err(Misfit::Names)?;
    let mut all = matching::match_rules(ranks, &grid, mapping).map_err(Misfit::Names)?;
    if all.matched.is_empty() {
        // Nothing but ignored entries: not this family's weights.
        return Err(Misfit::Names(crate::checkpoint::weights::no_weights(
            &ranks[0].file,
            mapping,
        )));
    }
    let mut model = || -> Result<(u64, entry::Planned, model::Sizes)> {
        model::check_world_size(ranks, mapping, grid.tp)?;
        let qkv = model::qkv_split(ranks, mapping)?;
        let layers = matching::check_complete(ranks, mapping, &mut all)?;
        let mut planned = entry::plan_all(ranks, mapping, &all.matched, read_copies, qkv, out)?;
        let sizes = model::sizes(&mut planned.entries, &ranks[0].display, mapping)?;
        Ok((layers, planned, sizes))
    };
    let (layers, planned, sizes) = model().map_err(Misfit::Model)?;
    Ok(Structure {
        grid,
        layers,
        planned,
        sizes,
    })
}

/// A vocabulary size the checkpoint implies, used when it is at most the rows present (an
/// implied size is never an error: with more rows than the checkpoint holds it is ignored).
fn implied_vocab(
    rec: &model::Recorded,
    mapping: &Mapping,
    rows: u64,
    notes: &mut Vec<String>,
) -> Option<u64> {
    let (size, from, recorded) = model::vocab_hint(rec, mapping)?;
    if size > rows {
        notes.push(format!(
            "{from} implies a vocabulary of {size}, more than the {rows} rows present: keeping \
             {rows} (pass --vocab-size N to cut padding)"
        ));
        return None;
    }
    // A recorded size is the checkpoint's own word, as its head count is: cut without a note.
    if size < rows && !recorded {
        notes.push(format!(
            "vocabulary cut from {rows} to {size} rows ({from}); --vocab-size N overrides"
        ));
    }
    Some(size)
}

/// Why a mapping does not describe a checkpoint.
pub(crate) enum Misfit {
    /// Its names are another family's: some weight matches no rule.
    Names(Error),
    /// Every name is this family's, but the checkpoint is incomplete or inconsistent (a missing
    /// rank or layer, a shape that is not the model's): this error is the one to report.
    Model(Error),
}

impl Misfit {
    fn into_error(self) -> Error {
        match self {
            Misfit::Names(e) | Misfit::Model(e) => e,
        }
    }
}

/// Whether `mapping` describes these files: every weight matches a rule or is ignored, every
/// tensor the mapping needs is there, the recorded world size holds, and the shapes form one
/// model in the mapping's layout (nanoGPT and Hugging Face share names but not orientation).
/// No head count is needed and no tensor data is read (a tied head is compared with the
/// embedding by [`build`], once).
pub(crate) fn fits(ranks: &[Rank], mapping: &Mapping) -> std::result::Result<(), Misfit> {
    structure(ranks, mapping, OutDtype::Keep, false).map(|_| ())
}
