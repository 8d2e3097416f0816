//! Every corpus line through both models, against what Python jieba 0.42.1 + sentencepiece
//! recorded (fixtures/make_tokenizer_fixtures.py).

use crate::common;

use common::*;
use cpm_tokenizer::CpmTokenizer;

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
