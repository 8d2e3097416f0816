//! Detecting the layout: finding every file of a checkpoint, whatever family's directory layout
//! holds it (the rank grids, Hugging Face folders and DCP folders each in a module of their own).
//!
//! Accepted inputs, recognised by structure (file and folder names), never by a family name:
//!
//! * one file of any name: one shard;
//! * a root holding `latest_checkpointed_iteration.txt` (digits or `release`), which names the
//!   iteration folder: the digits as written (DeepSpeed/CPM: `80000/`), `iter_%07d` (Megatron:
//!   `iter_0000100/`) or `release/`;
//! * an iteration folder itself, holding a complete grid of rank files:
//!   `mp_rank_TT_model_states.pt` (DeepSpeed), `mp_rank_TT/model_optim_rng.pt` or
//!   `mp_rank_TT/model_rng.pt` (Megatron, one pipeline stage), `mp_rank_TT_PPP/model_optim_rng.pt`
//!   (Megatron with pipeline stages);
//! * a Hugging Face folder: `model.safetensors`, `model.safetensors.index.json`,
//!   `pytorch_model.bin` or `pytorch_model.bin.index.json` (safetensors preferred), with
//!   `config.json` beside it;
//! * a folder holding nanoGPT's `ckpt.pt`;
//! * a torch Distributed Checkpoint folder (`.metadata` and `*.distcp`), as itself, as
//!   megatron-core's iteration folder (found through the tracker too), or inside accelerate's
//!   output folder (`pytorch_model_fsdp_0/`, `config.json` beside it): one rank of global
//!   tensors.
//!
//! Nothing here is sized by a number read from a name: rank numbers are checked against the files
//! present, and every count is capped.

use std::io::Read;
use std::path::{Path, PathBuf};

use super::dcp_folder as dcp;
use super::hugging_face::{config_beside, hugging_face};
use super::rank_grid::rank_grid;
use crate::error::{Error, Result};
use crate::files::open_regular;

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
    pub path: PathBuf,
    /// The path relative to the input (never absolute: it is recorded in the output's metadata).
    pub display: String,
    pub tp: usize,
    pub pp: usize,
}

/// Find every file of the checkpoint at `input`.
pub fn discover(input: &Path) -> Result<Layout> {
    let meta = std::fs::metadata(input).map_err(|e| Error::io(input, "cannot read input", e))?;
    if !meta.is_dir() {
        check_regular(
            input,
            &meta,
            "pass a checkpoint file or the folder holding one",
        )?;
        let display = file_name(input);
        return Ok(single(input.to_path_buf(), display, None));
    }
    let tracker = input.join(TRACKER);
    if present(&tracker)? {
        return from_tracker(input, &tracker);
    }
    if let Some(l) = hugging_face(input)? {
        return Ok(l);
    }
    let name = input.file_name().map(|n| n.to_string_lossy().into_owned());
    let iteration = name.as_deref().and_then(iteration_of_folder);
    if let Some(mut l) = dcp::folder(input, "")? {
        l.iteration = iteration;
        l.config = match config_beside(input)? {
            Some(c) => Some(c),
            None => input.parent().map(config_beside).transpose()?.flatten(),
        };
        return Ok(l);
    }
    if let Some(l) = dcp::accelerate(input)? {
        return Ok(l);
    }
    match rank_grid(input, "")? {
        Some(mut l) => {
            l.iteration = iteration;
            Ok(l)
        }
        None => nanogpt(input),
    }
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

/// The iteration folder the tracker names, and its rank grid.
fn from_tracker(input: &Path, tracker: &Path) -> Result<Layout> {
    let text = read_tracker(tracker)?;
    let it = text.trim();
    let digits = !it.is_empty() && it.len() <= 20 && it.bytes().all(|b| b.is_ascii_digit());
    if !(it == "release" || digits) {
        return Err(Error::layout(
            tracker,
            format!(
                "expected an iteration number or `release`, found {:?}",
                truncate(it, 40)
            ),
        ));
    }
    // DeepSpeed names the folder by the digits as written, Megatron `iter_%07d`.
    let mut names = vec![it.to_string()];
    if let Some(n) = digits.then(|| it.parse::<u128>().ok()).flatten() {
        names.push(format!("iter_{n:07}"));
    }
    let found: Vec<&String> = names.iter().filter(|n| input.join(n).is_dir()).collect();
    let folder = match found.as_slice() {
        [one] => one.as_str(),
        [] => {
            return Err(Error::layout(
                input.join(it),
                format!(
                    "{TRACKER} names iteration `{it}`, but this directory does not exist{}",
                    names
                        .get(1)
                        .map(|m| format!(" (nor {m})"))
                        .unwrap_or_default()
                ),
            ))
        }
        [a, b, ..] => {
            return Err(Error::layout(
                input,
                format!(
                    "{TRACKER} names iteration `{it}`, and both {a}/ and {b}/ exist: which one?"
                ),
            ))
        }
    };
    let dir = input.join(folder);
    let prefix = format!("{folder}/");
    let grid = match dcp::folder(&dir, &prefix)? {
        Some(l) => Some(l),
        None => rank_grid(&dir, &prefix)?,
    };
    let mut l = grid.ok_or_else(|| no_checkpoint(&dir))?;
    l.iteration = Some(it.to_string());
    Ok(l)
}

/// `80000`, `iter_0000100` or `release` as an iteration; other folder names give none.
fn iteration_of_folder(name: &str) -> Option<String> {
    let digits = name.strip_prefix("iter_").unwrap_or(name);
    let all_digits = !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit());
    if name == "release" {
        return Some(name.to_string());
    }
    all_digits.then(|| {
        // Megatron pads to 7 digits; the tracker holds the number without the padding.
        let trimmed = digits.trim_start_matches('0');
        if trimmed.is_empty() { "0" } else { trimmed }.to_string()
    })
}

/// The tracker holds one short line; read at most a little more than that, so a huge or
/// endless file costs nothing.
fn read_tracker(tracker: &Path) -> Result<String> {
    let (f, _) = open_regular(tracker, "the tracker must be a text file")?;
    let mut buf = Vec::new();
    f.take(MAX_TRACKER_BYTES + 1)
        .read_to_end(&mut buf)
        .map_err(|e| Error::io(tracker, "cannot read", e))?;
    if buf.len() as u64 > MAX_TRACKER_BYTES {
        return Err(Error::layout(
            tracker,
            format!(
                "is longer than {MAX_TRACKER_BYTES} bytes; expected an iteration number or \
                 `release`"
            ),
        ));
    }
    String::from_utf8(buf).map_err(|_| {
        Error::layout(
            tracker,
            "is not UTF-8 text; expected an iteration number or `release`",
        )
    })
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

/// nanoGPT's `out_dir`: `ckpt.pt` alone.
fn nanogpt(dir: &Path) -> Result<Layout> {
    let ckpt = dir.join("ckpt.pt");
    if !present(&ckpt)? {
        return Err(no_checkpoint(dir));
    }
    require_regular(&ckpt, "nanoGPT's ckpt.pt must be a torch checkpoint")?;
    Ok(single(ckpt, "ckpt.pt".into(), None))
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

fn check_regular(path: &Path, meta: &std::fs::Metadata, why: &str) -> Result<()> {
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

fn truncate(s: &str, n: usize) -> String {
    s.chars().take(n).collect()
}
