//! Fixture loading shared by the integration tests.

use std::path::PathBuf;

use serde_json::Value;

pub fn dir() -> PathBuf {
    testkit::fixtures().join("tokenizer")
}
pub fn big_model() -> PathBuf {
    dir().join("chinese_vocab.model")
}
pub fn small_model() -> PathBuf {
    dir().join("small/chinese_small.model")
}

pub fn jsonl(path: PathBuf) -> Vec<Value> {
    std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

pub fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}
pub fn strs(v: &Value) -> Vec<String> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_str().unwrap().to_string())
        .collect()
}
