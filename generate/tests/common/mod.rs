//! Shared helpers: the recorded continuations and a runner for the binary.

use std::path::PathBuf;

use serde_json::Value;

/// One prompt of `continuations.jsonl` (recorded by transformers; see fixtures/generate/README.md).
pub struct Record {
    pub prompt: String,
    pub prompt_ids: Vec<u32>,
    pub max_new: usize,
    pub greedy: Vec<u32>,
    pub greedy_text: String,
    pub gaps: Vec<f64>,
    pub greedy_eos: Vec<u32>,
    pub eos_stopped: bool,
    pub beam_new: usize,
    pub beam4: Vec<u32>,
}

pub const MODELS: [&str; 2] = ["vocab30000", "small"];

pub fn model_dir(name: &str) -> PathBuf {
    testkit::fixtures().join("generate").join(name)
}

/// The tokenizer each fixture model was recorded with.
pub fn tokenizer(name: &str) -> PathBuf {
    let t = testkit::fixtures().join("tokenizer");
    match name {
        "small" => t.join("small").join("chinese_small.model"),
        _ => t.join("chinese_vocab.model"),
    }
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

pub fn records(name: &str) -> Vec<Record> {
    let text = std::fs::read_to_string(model_dir(name).join("continuations.jsonl")).unwrap();
    text.lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap();
            Record {
                prompt: v["prompt"].as_str().unwrap().to_string(),
                prompt_ids: ids(&v["prompt_ids"]),
                max_new: v["max_new_tokens"].as_u64().unwrap() as usize,
                greedy: ids(&v["greedy_ids"]),
                greedy_text: v["greedy_text"].as_str().unwrap().to_string(),
                gaps: v["top2_gap"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|x| x.as_f64().unwrap())
                    .collect(),
                greedy_eos: ids(&v["greedy_ids_eos"]),
                eos_stopped: v["greedy_eos_stopped"].as_bool().unwrap(),
                beam_new: v["beam_new_tokens"].as_u64().unwrap() as usize,
                beam4: ids(&v["beam4_ids"]),
            }
        })
        .collect()
}

pub fn join(ids: &[u32]) -> String {
    ids.iter().map(u32::to_string).collect::<Vec<_>>().join(" ")
}

/// Runs cpm-generate; asserts it did not panic.
pub fn run(args: &[String]) -> testkit::Run {
    let r = testkit::run(env!("CARGO_BIN_EXE_cpm-generate"), args, &[]);
    assert!(!r.stderr.contains("panicked"), "{args:?}: {}", r.stderr);
    r
}

/// `--ids` output of a run on prompt ids with extra flags; asserts exit 0.
pub fn new_ids(model: &str, prompt: &[u32], extra: &[&str]) -> Vec<u32> {
    let mut args = vec![
        model_dir(model).display().to_string(),
        "--prompt-ids".into(),
        join(prompt),
        "--ids".into(),
        "--threads".into(),
        "2".into(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    let r = run(&args);
    assert_eq!(r.code, Some(0), "{args:?}: {}", r.stderr);
    r.stdout
        .split_whitespace()
        .map(|t| t.parse().unwrap())
        .collect()
}
