//! What the converter's fuzz targets run on one input, shared with the regression tests
//! (converter/tests/fuzz_regressions.rs includes this file), so a saved crash input replays
//! exactly the code that found it.
#![allow(dead_code)]

use std::path::Path;

use cpm_torch::{pickle, Value};

/// The pickle machine on arbitrary bytes, then what the converter does with a parsed tree:
/// look fields up, describe, walk one level, drop.
pub fn pickle(data: &[u8]) {
    if let Ok(p) = pickle::parse(data, Path::new("fuzz.pkl"), 0) {
        let v = p.value;
        let _ = v.describe();
        let _ = v.get("args").and_then(|a| a.get("num_attention_heads"));
        let _ = v.get("mp_world_size").and_then(|x| x.as_int());
        if let Some(items) = v.dict_items() {
            for (k, x) in items.iter().take(256) {
                let _ = (k.describe(), x.describe(), x.dict_items().map(|i| i.len()));
            }
        }
        std::hint::black_box(p.storages.len());
    }
}

/// A DCP folder's `.metadata` from bytes: parsed, each tensor's chunks checked to tile it.
pub fn dcp_metadata(data: &[u8]) {
    if let Ok(m) = cpm_torch::dcp::metadata::parse(data, Path::new("fuzz/.metadata")) {
        std::hint::black_box(m.tensor_count());
    }
}

/// A whole torch file from bytes, as `TorchFile::open` parses it, then every tensor the
/// converter would look at (top level and one dict down) read through the bounds checks.
pub fn torch_file(bytes: &[u8]) {
    let path = Path::new("fuzz.pt");
    let Ok(c) = cpm_torch::parse_bytes(bytes, path) else {
        return;
    };
    let _ = c
        .root
        .get("args")
        .and_then(|a| a.get("num_attention_heads"));
    let mut tensors = Vec::new();
    if let Some(items) = c.root.dict_items() {
        for (_, v) in items.iter().take(64) {
            match v {
                Value::Tensor(t) => tensors.push(t.clone()),
                other => {
                    if let Some(inner) = other.dict_items() {
                        for (_, x) in inner.iter().take(64) {
                            if let Value::Tensor(t) = x {
                                tensors.push(t.clone());
                            }
                        }
                    }
                }
            }
        }
    }
    for t in tensors {
        if let Ok(b) = cpm_torch::read_tensor(bytes, &c.storages, path, "t", &t) {
            std::hint::black_box(b.len());
        }
    }
}

pub const ZIP_MAGIC: &[u8] = b"PK\x03\x04";
pub const LEGACY_MAGIC: &[u8] = cpm_torch::LEGACY_PREFIX;

/// `data`, starting with `magic` (prepended unless already there), so every input reaches the
/// reader under test.
pub fn with_magic(magic: &[u8], data: &[u8]) -> Vec<u8> {
    if data.starts_with(magic) {
        data.to_vec()
    } else {
        [magic, data].concat()
    }
}
