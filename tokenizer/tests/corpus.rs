//! Every corpus line through both models, against what Python jieba 0.42.1 + sentencepiece
//! recorded (fixtures/make_tokenizer_fixtures.py).

use crate::common;

use common::*;
use cpm_tokenizer::CpmTokenizer;

/// Compares one field over all lines and reports every mismatching line (not just the first).
fn check_all(
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

fn check_model(model: std::path::PathBuf, expected: std::path::PathBuf) {
    let tok = CpmTokenizer::open(&model).unwrap();
    let rows = jsonl(expected);
    assert_eq!(rows.len(), 642);
    check_all("ids (HMM on)", &rows, |r| {
        let text = r["text"].as_str().unwrap();
        let got = tok.encode(text).unwrap();
        (got != ids(&r["ids"])).then(|| format!("{text:?}: got {got:?} want {:?}", r["ids"]))
    });
    check_all("ids (HMM off)", &rows, |r| {
        let text = r["text"].as_str().unwrap();
        let got = tok.encode_with(text, false);
        (got != ids(&r["ids_no_hmm"]))
            .then(|| format!("{text:?}: got {got:?} want {:?}", r["ids_no_hmm"]))
    });
    check_all("pieces", &rows, |r| {
        let text = r["text"].as_str().unwrap();
        let got = tok.encode_pieces(text).unwrap();
        (got != strs(&r["pieces"])).then(|| format!("{text:?}: got {got:?} want {:?}", r["pieces"]))
    });
    check_all("decode", &rows, |r| {
        let got = tok.decode(&ids(&r["ids"])).unwrap();
        (got != r["decoded"].as_str().unwrap())
            .then(|| format!("got {got:?} want {:?}", r["decoded"]))
    });
}

#[test]
fn released_model_reproduces_every_recorded_line() {
    check_model(big_model(), dir().join("expected.jsonl"));
}

#[test]
fn small_model_with_user_defined_pieces_reproduces_every_recorded_line() {
    check_model(small_model(), dir().join("small/expected.jsonl"));
}

#[test]
fn jieba_segments_equal_python_with_hmm_on_and_off() {
    let tok = CpmTokenizer::open(&big_model()).unwrap();
    let rows = jsonl(dir().join("expected.jsonl"));
    for (field, hmm) in [("segments", true), ("segments_no_hmm", false)] {
        check_all(field, &rows, |r| {
            let text = r["text"].as_str().unwrap();
            let got = tok.segments(text, hmm);
            (got != strs(&r[field])).then(|| format!("{text:?}: got {got:?} want {:?}", r[field]))
        });
    }
}

/// sentencepiece alone (no jieba): piece types, normalization, decode.
fn check_direct(model: std::path::PathBuf, expected: std::path::PathBuf) {
    let tok = CpmTokenizer::open(&model).unwrap();
    let m = tok.model();
    let rows = jsonl(expected);
    assert!(rows.len() >= 20);
    check_all("sp.normalize", &rows, |r| {
        let text = r["text"].as_str().unwrap();
        let got = m.normalize(text);
        (got != r["normalized"].as_str().unwrap())
            .then(|| format!("{text:?}: got {got:?} want {:?}", r["normalized"]))
    });
    check_all("sp.encode", &rows, |r| {
        let text = r["text"].as_str().unwrap();
        let got = m.encode(text);
        (got != ids(&r["ids"])).then(|| format!("{text:?}: got {got:?} want {:?}", r["ids"]))
    });
    check_all("sp.decode", &rows, |r| {
        let got = m.decode(&ids(&r["ids"])).unwrap();
        (got != r["decoded"].as_str().unwrap())
            .then(|| format!("got {got:?} want {:?}", r["decoded"]))
    });
}

#[test]
fn direct_sentencepiece_vectors_released_model() {
    check_direct(big_model(), dir().join("sp_direct.jsonl"));
}

#[test]
fn direct_sentencepiece_vectors_small_model_user_defined() {
    check_direct(small_model(), dir().join("small/sp_direct.jsonl"));
}

/// The original ids recorded next to transformers' output (fact 4) are ours too.
#[test]
fn transformers_fixture_original_ids_match() {
    let tok = CpmTokenizer::open(&big_model()).unwrap();
    let rows = jsonl(dir().join("transformers.jsonl"));
    assert!(rows.len() >= 4);
    for r in rows {
        let text = r["text"].as_str().unwrap();
        assert_eq!(
            tok.encode(text).unwrap(),
            ids(&r["original_ids"]),
            "{text:?}"
        );
        assert_ne!(
            tok.encode(text).unwrap(),
            ids(&r["CpmTokenizer.encode"]),
            "{text:?}: transformers agrees?"
        );
    }
}
