//! sentencepiece alone (no jieba, so also without the `jieba` feature): normalization, encode
//! and decode of both models against what Python sentencepiece recorded
//! (fixtures/make_tokenizer_fixtures.py).

use crate::common;

use common::*;
use cpm_tokenizer::SpModel;

/// sentencepiece alone (no jieba): piece types, normalization, decode.
fn check_direct(model: std::path::PathBuf, expected: std::path::PathBuf) {
    let m = SpModel::open(&model).unwrap();
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
