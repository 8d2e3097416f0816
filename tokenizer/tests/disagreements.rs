//! The lines where jieba-rs 0.11 on its own cuts differently from Python jieba 0.42.1
//! (fixtures/tokenizer/disagreements.jsonl, Python's segments recorded by the fixture script):
//! raw jieba-rs differs, ours equals Python. A line marked as a control line may agree.
//! Measured: raw jieba-rs 0.11.0 differs on 18 lines, all with the HMM on; with the HMM off it
//! agrees on every line (the extra Han ranges are not in the dictionary, so they come out one
//! character at a time either way), and U+9FFF / U+F900 / U+2F800 single characters agree too.

use crate::common;

use common::*;
use cpm_tokenizer::jieba::Segmenter;

#[test]
fn ours_equals_python_where_raw_jieba_rs_differs() {
    let raw = jieba_rs::Jieba::new();
    let ours = Segmenter::shared();
    let rows = jsonl(dir().join("disagreements.jsonl"));
    let mut raw_differs = Vec::new();
    for r in &rows {
        let text = r["text"].as_str().unwrap();
        for (field, hmm) in [("python_segments", true), ("python_segments_no_hmm", false)] {
            let python = strs(&r[field]);
            assert_eq!(ours.cut(text, hmm), python, "{text:?} hmm={hmm}");
            let theirs: Vec<&str> = raw.cut(text, hmm).into_iter().map(|t| t.word).collect();
            if theirs != python {
                raw_differs.push(format!("{text:?} hmm={hmm}"));
            }
        }
    }
    // The cases the README's Fact 3 names must really differ in raw jieba-rs, or this test
    // would not be protecting anything.
    for must in [
        "版本号是WES-5.4.5吗 hmm=true",
        "变量名foo_bar很常见 hmm=true",
        "㐀㐁㐂 hmm=true",
        "鿖鿗鿘新字 hmm=true",
    ] {
        let (text, hmm) = must.rsplit_once(' ').unwrap();
        assert!(
            raw_differs.contains(&format!("{text:?} {hmm}")),
            "raw jieba-rs no longer differs on {must}; list: {raw_differs:#?}"
        );
    }
    assert!(
        raw_differs.len() >= 18,
        "only {} cases differ: {raw_differs:#?}",
        raw_differs.len()
    );
}
