//! The stop token(s): `eos_token_id` from `generation_config.json`, else `config.json`, as
//! transformers' `generate` reads them.

use std::path::Path;

use serde_json::Value;

use crate::error::{Error, Result};

/// The most bytes either JSON file may have.
const MAX_JSON_BYTES: u64 = 1 << 20;

/// The eos ids of `dir` (empty when neither file names one). An id may be a number or a list.
pub fn eos_ids(dir: &Path) -> Result<Vec<u32>> {
    Ok(find(dir)?.map(|(ids, _)| ids).unwrap_or_default())
}

/// [`eos_ids`], each checked to be below `vocab_size`: an id the model can never produce would
/// silently never stop generation; the error names the file.
pub fn eos_ids_within(dir: &Path, vocab_size: usize) -> Result<Vec<u32>> {
    let Some((ids, path)) = find(dir)? else {
        return Ok(Vec::new());
    };
    if let Some(&id) = ids.iter().find(|&&i| i as usize >= vocab_size) {
        return Err(Error::GenerationConfig {
            path,
            detail: format!(
                "eos_token_id {id} is outside the model's vocabulary of {vocab_size} (ids \
                 0..={})",
                vocab_size.saturating_sub(1)
            ),
        });
    }
    Ok(ids)
}

/// The eos ids and the file that names them.
fn find(dir: &Path) -> Result<Option<(Vec<u32>, std::path::PathBuf)>> {
    for name in ["generation_config.json", "config.json"] {
        let path = dir.join(name);
        let Some(value) = read_json(&path)? else {
            continue;
        };
        match value.get("eos_token_id") {
            None | Some(Value::Null) => continue,
            Some(v) => return Ok(Some((parse_ids(v, &path)?, path))),
        }
    }
    Ok(None)
}

fn read_json(path: &Path) -> Result<Option<Value>> {
    let bad = |detail: String| Error::GenerationConfig {
        path: path.to_path_buf(),
        detail,
    };
    // Absent is fine; anything there (a FIFO, a dangling link) must be a readable regular file.
    if !cpm_files::exists(path).map_err(Error::File)? {
        return Ok(None);
    }
    let text = cpm_files::read_capped(path, MAX_JSON_BYTES).map_err(Error::File)?;
    serde_json::from_slice(&text)
        .map(Some)
        .map_err(|e| bad(format!("not valid JSON: {e}")))
}

fn parse_ids(v: &Value, path: &Path) -> Result<Vec<u32>> {
    let one = |x: &Value| {
        x.as_u64()
            .and_then(|n| u32::try_from(n).ok())
            .ok_or_else(|| Error::GenerationConfig {
                path: path.to_path_buf(),
                detail: format!("eos_token_id {x} is not a token id"),
            })
    };
    match v {
        Value::Array(items) => items.iter().take(64).map(one).collect(),
        other => Ok(vec![one(other)?]),
    }
}
