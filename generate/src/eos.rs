//! The stop token(s): `eos_token_id` from `generation_config.json`, else `config.json`, as
//! transformers' `generate` reads them.

use std::path::Path;

use serde_json::Value;

use crate::error::{Error, Result};

/// The most bytes either JSON file may have.
const MAX_JSON_BYTES: u64 = 1 << 20;

/// The eos ids of `dir` (empty when neither file names one). An id may be a number or a list.
pub fn eos_ids(dir: &Path) -> Result<Vec<u32>> {
    for name in ["generation_config.json", "config.json"] {
        let path = dir.join(name);
        let Some(value) = read_json(&path)? else {
            continue;
        };
        match value.get("eos_token_id") {
            None | Some(Value::Null) => continue,
            Some(v) => return parse_ids(v, &path),
        }
    }
    Ok(Vec::new())
}

fn read_json(path: &Path) -> Result<Option<Value>> {
    use std::io::Read;
    let bad = |detail: String| Error::GenerationConfig {
        path: path.to_path_buf(),
        detail,
    };
    let file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(bad(e.to_string())),
    };
    if !file.metadata().map_err(|e| bad(e.to_string()))?.is_file() {
        return Err(bad("not a regular file".into()));
    }
    let mut text = Vec::new();
    file.take(MAX_JSON_BYTES + 1)
        .read_to_end(&mut text)
        .map_err(|e| bad(e.to_string()))?;
    if text.len() as u64 > MAX_JSON_BYTES {
        return Err(bad(format!("larger than {MAX_JSON_BYTES} bytes")));
    }
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
