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
#[cfg(feature = "jieba")]
pub fn strs(v: &Value) -> Vec<String> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_str().unwrap().to_string())
        .collect()
}

/// Compares one field over all lines and reports every mismatching line (not just the first).
pub fn check_all(
    name: &str,
    rows: &[serde_json::Value],
    mut f: impl FnMut(&serde_json::Value) -> Option<String>,
) {
    let bad: Vec<String> = rows.iter().filter_map(&mut f).collect();
    assert!(
        bad.is_empty(),
        "{name}: {} of {} lines differ:\n{}",
        bad.len(),
        rows.len(),
        bad.iter().take(15).cloned().collect::<Vec<_>>().join("\n")
    );
}
