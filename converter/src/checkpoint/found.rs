//! What finding a checkpoint's files yields ([`Layout`], one [`ShardPath`] per file), the caps
//! on what a folder may hold, and the checks every kind of folder shares: the lower floor of
//! [`super::layout`] and its per-folder-kind modules.

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// Megatron's and DeepSpeed's tracker file, naming the latest iteration's folder.
pub const TRACKER: &str = "latest_checkpointed_iteration.txt";
/// More rank files than any released model uses; bounds a directory listing from a hostile input.
pub const MAX_RANKS: usize = 512;
/// The tracker holds one short line.
pub const MAX_TRACKER_BYTES: u64 = 256;
/// A sharded index: about 100 bytes per tensor, so 16 MiB is ~160,000 tensors.
pub const MAX_INDEX_BYTES: u64 = 16 << 20;
/// The most shard files an index may name; real models use a few hundred at most.
pub const MAX_SHARDS: usize = 16_384;

/// Every file of one checkpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    /// Sorted by (pp, tp, path). A rank grid has exactly one shard per (tp, pp); a Hugging Face
    /// sharded save splits one state dict (tp 0, pp 0) across several files.
    pub shards: Vec<ShardPath>,
    /// Tensor-parallel ranks (1 unless the input is a rank grid).
    pub tp: usize,
    /// Pipeline stages (1 unless the input is a Megatron `mp_rank_TT_PPP` grid).
    pub pp: usize,
    /// The iteration the tracker or the folder's name gives: digits or `release`.
    pub iteration: Option<String>,
    /// `config.json` beside a Hugging Face model's files.
    pub config: Option<PathBuf>,
}

/// One file of a checkpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardPath {
    /// Where to open it.
    pub path: PathBuf,
    /// The path relative to the input (never absolute: it is recorded in the output's metadata).
    pub display: String,
    /// Tensor-parallel rank (0 for a Hugging Face shard).
    pub tp: usize,
    /// Pipeline stage (0 unless a Megatron `mp_rank_TT_PPP` file).
    pub pp: usize,
}

/// One shard at tp 0, pp 0.
pub(super) fn single(path: PathBuf, display: String, config: Option<PathBuf>) -> Layout {
    Layout {
        shards: vec![ShardPath {
            path,
            display,
            tp: 0,
            pp: 0,
        }],
        tp: 1,
        pp: 1,
        iteration: None,
        config,
    }
}

pub(super) fn no_checkpoint(dir: &Path) -> Error {
    Error::layout(
        dir,
        format!(
            "no checkpoint here: expected {TRACKER}, or files named mp_rank_00_model_states.pt, \
             mp_rank_01_model_states.pt, … (or folders mp_rank_00/model_optim_rng.pt, \
             mp_rank_00_000/model_optim_rng.pt, …), or model.safetensors, \
             model.safetensors.index.json, pytorch_model.bin, pytorch_model.bin.index.json or \
             ckpt.pt, or pass a single checkpoint file"
        ),
    )
}

/// Whether anything exists at `path` (a dangling symlink, a FIFO or a device included), so a
/// file that is there but unusable is an error rather than taken as absent.
pub(super) fn present(path: &Path) -> Result<bool> {
    crate::files::exists(path)
}

/// Refuse anything but a regular file (after following symlinks): opening a FIFO or a device
/// would block or read forever.
pub(super) fn require_regular(path: &Path, why: &str) -> Result<()> {
    let meta = std::fs::metadata(path).map_err(|e| Error::io(path, "cannot read", e))?;
    check_regular(path, &meta, why)
}

pub(super) fn check_regular(path: &Path, meta: &std::fs::Metadata, why: &str) -> Result<()> {
    if meta.is_file() {
        return Ok(());
    }
    let kind = crate::files::kind_of(meta);
    Err(Error::layout(
        path,
        format!("is {kind}, not a regular file; {why}"),
    ))
}

/// What a JSON value is, for messages (the value itself may be megabytes).
pub(super) fn json_kind(v: &serde_json::Value) -> &'static str {
    match v {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}

pub(super) fn file_name(p: &Path) -> String {
    p.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| p.to_string_lossy().into_owned())
}
