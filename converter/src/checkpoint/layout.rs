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
use std::path::Path;

use super::dcp_folder as dcp;
use super::found::{check_regular, file_name, no_checkpoint, present, require_regular, single};
use super::hugging_face::{config_beside, hugging_face};
use super::rank_grid::rank_grid;
use crate::error::{Error, Result};
use crate::files::open_regular;

// Where callers have always found them.
pub use super::found::{
    Layout, ShardPath, MAX_INDEX_BYTES, MAX_RANKS, MAX_SHARDS, MAX_TRACKER_BYTES, TRACKER,
};

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

/// nanoGPT's `out_dir`: `ckpt.pt` alone.
fn nanogpt(dir: &Path) -> Result<Layout> {
    let ckpt = dir.join("ckpt.pt");
    if !present(&ckpt)? {
        return Err(no_checkpoint(dir));
    }
    require_regular(&ckpt, "nanoGPT's ckpt.pt must be a torch checkpoint")?;
    Ok(single(ckpt, "ckpt.pt".into(), None))
}

fn truncate(s: &str, n: usize) -> String {
    s.chars().take(n).collect()
}
