//! What the tokenizer's fuzz targets run on one input, shared with the regression test
//! (tokenizer/tests/fuzz_seeds.rs includes this file), so a saved input replays exactly the
//! code that found it.
#![allow(dead_code)]

use std::path::Path;
use std::sync::OnceLock;

use cpm_tokenizer::{stream, CpmTokenizer, SpModel};

const TEXTS: [&str; 4] = [
    "今天天气不错",
    "  Hugging Face\t①㎡ ▂▃ <eod>",
    "😀😃龍龘ccc",
    "",
];

/// A `.model` file's bytes: read and validated; if accepted, a few texts encoded, normalized
/// and decoded.
pub fn spm_model(data: &[u8]) {
    let Ok(m) = SpModel::from_bytes(data.to_vec(), Path::new("fuzz.model")) else {
        return;
    };
    for t in TEXTS {
        let ids = m.encode(t);
        let _ = m.normalize(t);
        let _ = m.decode(&ids);
    }
}

fn tokenizers() -> &'static [CpmTokenizer; 2] {
    static TOK: OnceLock<[CpmTokenizer; 2]> = OnceLock::new();
    TOK.get_or_init(|| {
        let open = |bytes: &[u8], name: &str| {
            let m = SpModel::from_bytes(bytes.to_vec(), Path::new(name)).expect("fixture model");
            CpmTokenizer::new(m).expect("jieba")
        };
        [
            open(
                include_bytes!("../../fixtures/tokenizer/chinese_vocab.model"),
                "released",
            ),
            open(
                include_bytes!("../../fixtures/tokenizer/small/chinese_small.model"),
                "small",
            ),
        ]
    })
}

/// Input lines through `cpm-tokenize`'s whole path (first byte: model, mode), then the text
/// through the library's encode, pieces and decode.
pub fn tokenize_line(data: &[u8]) {
    let Some((&sel, rest)) = data.split_first() else {
        return;
    };
    let tok = &tokenizers()[usize::from(sel & 1)];
    let opts = stream::Options {
        jsonl: sel & 2 != 0,
        decode: sel & 4 != 0,
        pieces: sel & 8 != 0 && sel & 4 == 0,
        threads: 1 + usize::from(sel >> 6),
    };
    let mut out = Vec::new();
    let _ = stream::run(tok, rest, &mut out, &opts);
    let text = String::from_utf8_lossy(rest);
    let ids = tok.encode(&text).expect("encode never fails");
    assert!(ids.iter().all(|&id| (id as usize) < tok.model().len()));
    let _ = tok.decode(&ids);
}
