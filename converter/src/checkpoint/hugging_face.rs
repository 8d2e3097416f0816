//! Hugging Face folders read as an input: a single `model.safetensors` or `pytorch_model.bin`, or a sharded index
//! naming its shards (every name checked to be a plain file name in the folder, every count
//! capped).

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use super::found::{
    file_name, json_kind, present, require_regular, single, Layout, ShardPath, MAX_INDEX_BYTES,
    MAX_SHARDS,
};
use crate::error::{Error, Result};
use crate::files::read_capped;

/// The single files and indexes a Hugging Face folder may hold, in order of preference.
const HF_FILES: [(&str, &str); 2] = [
    ("model.safetensors", "model.safetensors.index.json"),
    ("pytorch_model.bin", "pytorch_model.bin.index.json"),
];

/// A Hugging Face model folder's files, or `None` when there are none.
pub(super) fn hugging_face(dir: &Path) -> Result<Option<Layout>> {
    for (single_name, index_name) in HF_FILES {
        let file = dir.join(single_name);
        if present(&file)? {
            require_regular(&file, "model files must be checkpoints")?;
            return Ok(Some(single(file, single_name.into(), config_beside(dir)?)));
        }
        let index = dir.join(index_name);
        if present(&index)? {
            let mut shards = index_shards(dir, &index)?;
            shards.sort_by(|a, b| a.path.cmp(&b.path));
            return Ok(Some(Layout {
                shards,
                tp: 1,
                pp: 1,
                iteration: None,
                config: config_beside(dir)?,
            }));
        }
    }
    Ok(None)
}

/// `config.json` beside the model, when present (and then a regular file).
pub(crate) fn config_beside(dir: &Path) -> Result<Option<PathBuf>> {
    let config = dir.join("config.json");
    if !present(&config)? {
        return Ok(None);
    }
    require_regular(&config, "config.json must be a JSON file")?;
    Ok(Some(config))
}

/// `{"weight_map": {tensor: file}}`; other keys (`metadata`) are ignored.
#[derive(serde::Deserialize)]
struct Index {
    weight_map: std::collections::BTreeMap<String, serde_json::Value>,
}

/// The distinct shard files an index names: plain names beside it, each a regular file.
fn index_shards(dir: &Path, index: &Path) -> Result<Vec<ShardPath>> {
    let text = read_capped(index, MAX_INDEX_BYTES)?;
    let parsed: Index = serde_json::from_slice(&text).map_err(|e| {
        Error::layout(
            index,
            format!("is not a shard index ({{\"weight_map\": {{…}}}}): {e}"),
        )
    })?;
    drop(text);
    // Names first, all of them checked and counted, then the files: a 100,000-shard index is
    // refused by its count, not by its first missing shard.
    let mut seen: HashSet<&str> = HashSet::new();
    let mut files = Vec::new();
    for (tensor, file) in &parsed.weight_map {
        let file = plain_name(index, tensor, file)?;
        if !seen.insert(file) {
            continue;
        }
        if seen.len() > MAX_SHARDS {
            return Err(Error::layout(
                index,
                format!("names more than {MAX_SHARDS} shard files"),
            ));
        }
        files.push(file);
    }
    if files.is_empty() {
        return Err(Error::layout(
            index,
            "names no shard files (empty weight_map)",
        ));
    }
    files
        .into_iter()
        .map(|f| index_shard(dir, index, f))
        .collect()
}

/// The file an index entry names, which must be a plain name: shards live beside the index, and
/// a path could leave the folder.
fn plain_name<'a>(index: &Path, tensor: &str, file: &'a serde_json::Value) -> Result<&'a str> {
    let tensor = cpm_torch::shorten(tensor);
    let name = file.as_str().ok_or_else(|| {
        Error::layout(
            index,
            format!(
                "`{tensor}` maps to {}, expected a file name",
                json_kind(file)
            ),
        )
    })?;
    let plain = !(name.is_empty()
        || name == "."
        || name == ".."
        || name.contains('/')
        || name.contains('\\')
        || name.contains('\0'));
    if !plain {
        return Err(Error::layout(
            index,
            format!(
                "`{tensor}` maps to {:?}, which is not a plain file name beside the index",
                cpm_torch::shorten(name)
            ),
        ));
    }
    Ok(name)
}

fn index_shard(dir: &Path, index: &Path, file: &str) -> Result<ShardPath> {
    let path = dir.join(file);
    if !present(&path)? {
        return Err(Error::layout(
            &path,
            format!(
                "{} names this shard, but it does not exist",
                file_name(index)
            ),
        ));
    }
    require_regular(&path, "model files must be checkpoints")?;
    Ok(ShardPath {
        path,
        display: file.to_string(),
        tp: 0,
        pp: 0,
    })
}
