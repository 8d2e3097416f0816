//! torch Distributed Checkpoint folders: a folder holding `.metadata` (the DCP folder itself,
//! or megatron-core's `iter_NNNNNNN/`), or accelerate's output folder holding one
//! `pytorch_model_fsdp_N/` DCP folder (its `optimizer_N/` beside it is not read). The whole
//! checkpoint is one "rank" holding global tensors.

use std::path::Path;

use cpm_torch::dcp::METADATA;

use super::found::{present, require_regular, single, Layout, MAX_RANKS};
use super::hugging_face::config_beside;
use crate::error::{Error, Result};

/// accelerate's FSDP model folders: `pytorch_model_fsdp_{model index}`.
const ACCELERATE_PREFIX: &str = "pytorch_model_fsdp_";

/// `dir` as a DCP folder (`.metadata` in it), named `prefix` in messages; `None` otherwise.
pub(super) fn folder(dir: &Path, prefix: &str) -> Result<Option<Layout>> {
    let meta = dir.join(METADATA);
    if !present(&meta)? {
        return Ok(None);
    }
    require_regular(&meta, "a DCP folder's .metadata must be a file")?;
    Ok(Some(single(meta, format!("{prefix}{METADATA}"), None)))
}

/// accelerate's output folder: exactly one `pytorch_model_fsdp_N/` holding `.metadata`, with
/// the model's `config.json` beside it (in `dir`), if the user saved one there.
pub(super) fn accelerate(dir: &Path) -> Result<Option<Layout>> {
    let entries = std::fs::read_dir(dir).map_err(|e| Error::io(dir, "cannot list", e))?;
    let mut found = Vec::new();
    for e in entries.take(MAX_RANKS * 8) {
        let e = e.map_err(|e| Error::io(dir, "cannot list", e))?;
        let name = e.file_name().to_string_lossy().into_owned();
        let index = name.strip_prefix(ACCELERATE_PREFIX);
        let numbered =
            index.is_some_and(|i| !i.is_empty() && i.bytes().all(|b| b.is_ascii_digit()));
        if numbered && present(&dir.join(&name).join(METADATA))? {
            found.push(name);
        }
    }
    found.sort();
    match found.as_slice() {
        [] => Ok(None),
        [one] => {
            let mut l = folder(&dir.join(one), &format!("{one}/"))?
                .ok_or_else(|| Error::internal("DCP folder vanished"))?;
            l.config = config_beside(dir)?;
            Ok(Some(l))
        }
        [a, b, ..] => Err(Error::layout(
            dir,
            format!(
                "holds several model checkpoints ({a}/, {b}/{}): pass the one to convert",
                if found.len() > 2 { ", …" } else { "" }
            ),
        )),
    }
}
