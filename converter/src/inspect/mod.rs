//! `cpm-inspect`: what a checkpoint holds, as stored, from its structure alone.
//!
//! Built on the converter's own reader and plan ([`crate::open`], [`crate::plan()`]), so every
//! file layout and family the converter learns shows here without changes. Nothing reads tensor
//! data: rows come from the tensors' descriptions in the pickle, the plan checks shapes and
//! storage bounds only, and the tree shows a tensor as its dtype and shape. A 5 GB checkpoint
//! answers as fast as the fixture.
//!
//! The work is split by job: this file builds the [`Report`]; `text` renders it as
//! `cpm-inspect` prints it; `tree` builds the bounded `--tree` values ([`Node`]) and their JSON.

mod chunks;
mod text;
mod tree;

use std::path::PathBuf;

use cpm_torch::TorchFile;
use serde::Serialize;

use crate::checkpoint::weights::Rank;
use crate::error::{Error, Result};
use crate::mapping::Mapping;
use crate::plan::{Activation, Entry, Heads, Plan};
use crate::{Family, Hints, OutDtype};

pub use chunks::{ChunkRow, Chunks, DataFile, StoredTensor};
pub use text::text;
#[cfg(test)]
use text::tree_text;
pub use tree::{Node, MAX_CHARS, MAX_DEPTH, MAX_ENTRIES, MAX_ITEMS, MAX_NODES};

use tree::trees;

/// What to inspect and what to show.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// The checkpoint: a file, a directory, or a ZeRO root or tag.
    pub input: PathBuf,
    /// Which family reads the input (detected, `--from`, `--mapping`), as for a conversion.
    pub family: Family,
    /// `--heads N` and `--vocab-size N` (the sizes and `--mapped` as a conversion cut to N rows
    /// would have them).
    pub hints: Hints,
    /// The canonical GPT-2 map: needs the plan, whose failure is then the error.
    pub mapped: bool,
    /// The non-tensor entries of each file.
    pub tree: bool,
}

/// One input file.
#[derive(Debug, Clone, Serialize)]
pub struct FileInfo {
    /// As the converter names it: relative to the input (`100/mp_rank_00_model_states.pt`).
    pub name: String,
    /// `zip` or `legacy` (torch's two formats).
    pub format: &'static str,
    /// The file's size.
    pub bytes: u64,
}

/// One tensor as stored in one file.
#[derive(Debug, Clone, Serialize)]
pub struct TensorRow {
    /// Its name as stored (dotted path of nested dicts, no prefix stripped).
    pub name: String,
    /// torch's name: `float16`, `bfloat16`, `float32`, …
    pub dtype: &'static str,
    /// Its shape.
    pub shape: Vec<u64>,
    /// The tensor's data (elements x element size); `None` when that overflows (a hostile shape).
    pub bytes: Option<u64>,
    /// The [`FileInfo::name`] of the file holding it.
    pub file: String,
}

/// The model sizes the plan found, with where the head count came from.
#[derive(Debug, Clone, Serialize)]
pub struct Sizes {
    /// Tensor-parallel ranks.
    pub model_parallel: usize,
    /// Pipeline stages.
    pub pipeline_stages: usize,
    /// Transformer blocks.
    pub layers: u64,
    /// Hidden size.
    pub hidden: u64,
    /// Attention heads, and where the count came from.
    pub heads: Heads,
    /// Rows of the embedding a conversion writes (after a `--vocab-size` cut).
    pub vocab: u64,
    /// Learned position embeddings.
    pub positions: u64,
    /// The MLP's width.
    pub inner: u64,
    /// The MLP's activation, and why.
    pub activation: Activation,
}

/// The non-tensor values of one file (`--tree`).
#[derive(Debug, Clone, Serialize)]
pub struct FileTree {
    /// The [`FileInfo::name`] of the file.
    pub file: String,
    /// Its top-level object.
    pub value: Node,
}

/// Everything `cpm-inspect` shows; `--json` prints it as one object.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Every file read, in rank order.
    pub files: Vec<FileInfo>,
    /// Every tensor of every file, files in rank order, tensors in file order.
    pub tensors: Vec<TensorRow>,
    /// `None` when the plan could not be built (a warning says why).
    pub family: Option<String>,
    /// How the family was chosen: `detected`, `--from …`, `--mapping …`.
    pub family_from: Option<String>,
    /// The model's sizes; `None` when the plan could not be built.
    pub sizes: Option<Sizes>,
    /// With `--mapped`: every output tensor, as `cpm-convert --dry-run --json` lists them.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mapped: Option<Vec<Entry>>,
    /// With `--tree`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tree: Option<Vec<FileTree>>,
    /// A DeepSpeed ZeRO checkpoint's ranks, partitions and padding, and what a conversion reads.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub zero: Option<Vec<crate::zero::report::RankReport>>,
    /// A torch Distributed Checkpoint: its stored tensors' chunks and what a conversion reads.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub chunks: Option<Chunks>,
}

/// Read `opts.input`'s structure and describe it. Problems that leave something to show (no
/// plan for the tensors, no weights the reader can use in files that parse, a flag not used yet)
/// go to `warnings`; only an unreadable input (no checkpoint there, a file that does not parse, a
/// mapping file that does not load), or a failed plan under `--mapped`, is an error.
pub fn inspect(opts: &Options, warnings: &mut Vec<String>) -> Result<Report> {
    let src = match crate::open(&opts.input, &opts.family) {
        Ok(src) => src,
        Err(e) => return structure_only(opts, e, warnings),
    };
    let plan = match crate::plan(&src, opts.hints.clone(), OutDtype::Keep) {
        Ok(plan) => Some(plan),
        Err(e) if opts.mapped => return Err(e),
        Err(e) => {
            warnings.push(format!(
                "no GPT-2 plan for these tensors, so no family or sizes: {e}"
            ));
            None
        }
    };
    if let Some(p) = &plan {
        warnings.extend(p.notes.iter().cloned());
    }
    let family = plan.as_ref().map(|p| p.variant.clone());
    let chunks = chunks::chunks(&src.ranks, plan.as_ref());
    let family_from = plan.as_ref().map(|_| src.family_from.clone());
    Ok(Report {
        files: src
            .ranks
            .iter()
            .map(|r| file_info(&r.display, &r.file))
            .collect(),
        tensors: src.ranks.iter().flat_map(rows).collect(),
        family,
        family_from,
        sizes: plan.as_ref().map(sizes),
        mapped: plan.filter(|_| opts.mapped).map(|p| p.entries),
        tree: opts
            .tree
            .then(|| trees(src.ranks.iter().map(|r| (&r.display, &r.file)))),
        zero: crate::zero::report::report(&src.ranks),
        chunks,
    })
}

/// The checkpoint's files are torch files the reader parses, but it found no weights it can use
/// in them (a top level that is no dict, weights where the mapping does not look): show the
/// files and their trees, with why there are no tensors as a warning. A file that does not parse,
/// a layout that names no files, a bad mapping file or `--mapped` keep `err`, the reader's error.
fn structure_only(opts: &Options, err: Error, warnings: &mut Vec<String>) -> Result<Report> {
    // A mapping file that does not load is the user's error, whatever the checkpoint holds.
    let bad_mapping = match &opts.family {
        Family::File(m) => Mapping::load(m).is_err(),
        _ => false,
    };
    if opts.mapped || bad_mapping || matches!(err, Error::Mapping { .. }) {
        return Err(err);
    }
    let Ok(layout) = crate::open::discover(&opts.input) else {
        return Err(err);
    };
    let Ok(files) = layout
        .shards
        .iter()
        .map(|s| TorchFile::open(&s.path))
        .collect::<cpm_torch::Result<Vec<_>>>()
    else {
        return Err(err);
    };
    warnings.push(format!("no weights to list: {err}"));
    let names: Vec<&String> = layout.shards.iter().map(|s| &s.display).collect();
    let named = || names.iter().copied().zip(&files);
    Ok(Report {
        files: named().map(|(d, f)| file_info(d, f)).collect(),
        tensors: Vec::new(),
        family: None,
        family_from: None,
        sizes: None,
        mapped: None,
        tree: opts.tree.then(|| trees(named())),
        zero: None,
        chunks: None,
    })
}

fn file_info(display: &str, f: &TorchFile) -> FileInfo {
    FileInfo {
        name: display.to_string(),
        format: f.format.name(),
        bytes: f.file_len(),
    }
}

fn rows(r: &Rank) -> impl Iterator<Item = TensorRow> + '_ {
    r.weights.iter().map(|(name, t)| TensorRow {
        name: name.clone(),
        dtype: t.dtype.torch_name(),
        shape: t.shape.clone(),
        bytes: t.nbytes(),
        file: r.display.clone(),
    })
}

fn sizes(p: &Plan) -> Sizes {
    Sizes {
        model_parallel: p.model_parallel,
        pipeline_stages: p.pipeline_stages,
        layers: p.layers,
        hidden: p.hidden,
        heads: p.heads.clone(),
        vocab: p.vocab,
        positions: p.positions,
        inner: p.inner,
        activation: p.activation.clone(),
    }
}
