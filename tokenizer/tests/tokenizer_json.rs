//! The Hugging Face tokenizer.json for the unigram part: it loads back with
//! `tokenizers::Tokenizer::from_str` and encodes what the original hands sentencepiece (the
//! jieba-joined string) to the ids Python recorded.

use crate::common;

use std::str::FromStr;

use common::*;
use cpm_tokenizer::CpmTokenizer;

fn check(model: std::path::PathBuf, expected: std::path::PathBuf) {
    let tok = CpmTokenizer::open(&model).unwrap();
    let json = tok.model().to_tokenizer_json().unwrap();
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v["model"]["type"], "Unigram");
    assert_eq!(
        v["model"]["vocab"].as_array().unwrap().len(),
        tok.model().len()
    );
    // The model's own charsmap, not an NFKD/accent-stripping stand-in.
    let norm = v["normalizer"].to_string();
    assert!(
        norm.contains("Precompiled") && !norm.contains("NFKD") && !norm.contains("StripAccents"),
        "{norm:.300}"
    );
    let hf = tokenizers::Tokenizer::from_str(&json).unwrap();
    let mut bad = Vec::new();
    for r in jsonl(expected) {
        let text = r["text"].as_str().unwrap();
        let input = tok.sp_input(text, true);
        let got = hf.encode(input.as_str(), false).unwrap().get_ids().to_vec();
        if got != ids(&r["ids"]) {
            bad.push(format!("{text:?}: hf {got:?} want {:?}", r["ids"]));
        }
    }
    assert!(
        bad.is_empty(),
        "{} lines differ:\n{}",
        bad.len(),
        bad.join("\n")
    );
}

#[test]
fn tokenizer_json_reloads_and_encodes_the_corpus_like_sentencepiece_released_model() {
    check(big_model(), dir().join("expected.jsonl"));
}

#[test]
fn tokenizer_json_reloads_and_encodes_the_corpus_like_sentencepiece_small_model() {
    check(small_model(), dir().join("small/expected.jsonl"));
}
