//! Single lines of 10^4 to 10^7 characters against what Python jieba 0.42.1 + sentencepiece 0.2.3
//! recorded (fixtures/make_tokenizer_longlines.py). The texts are rebuilt here from corpus.jsonl by
//! the rule the script documents; the fixture holds the ids' and segments' sha256 and counts (and
//! the ids themselves up to 10^5 characters, to say where a run first differs). Comparing
//! candidates before rounding them to f32 (as older sentencepiece source reads) gives other ids
//! on the 10^5-character line, f32 without sentencepiece 0.2.3's score reset on the
//! 10^6-character one; see `src/unigram.rs`.

use crate::common;

use common::*;
use cpm_tokenizer::CpmTokenizer;
use sha2::{Digest, Sha256};

/// The script's `make_line`.
fn make_line(corpus: &[String], chars: usize, variant: &str, seed: u64) -> String {
    let (mut x, mut out, mut n) = (seed, String::new(), 0);
    while n < chars {
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let line = &corpus[((x >> 33) % corpus.len() as u64) as usize];
        let part: String = match variant {
            "prose" => line.replace(['\r', '\n'], " "),
            _ => line
                .chars()
                .filter(|c| ('\u{4E00}'..='\u{9FD5}').contains(c))
                .collect(),
        };
        n += part.chars().count();
        out.push_str(&part);
    }
    let end = out.char_indices().nth(chars).map_or(out.len(), |(i, _)| i);
    out.truncate(end);
    out
}

fn hex(d: impl AsRef<[u8]>) -> String {
    d.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

fn check(tok: &CpmTokenizer, corpus: &[String], row: &serde_json::Value) {
    let (chars, variant) = (
        row["chars"].as_u64().unwrap() as usize,
        row["variant"].as_str().unwrap(),
    );
    let text = make_line(corpus, chars, variant, row["seed"].as_u64().unwrap());
    let name = format!("{chars} characters, {variant}");
    let segs = tok.segments(&text, true);
    let mut h = Sha256::new();
    segs.iter().for_each(|s| {
        h.update(s.as_bytes());
        h.update([0]);
    });
    assert_eq!(
        segs.len() as u64,
        row["segments_count"].as_u64().unwrap(),
        "{name}: segments"
    );
    assert_eq!(
        hex(h.finalize()),
        row["segments_sha256"].as_str().unwrap(),
        "{name}: segments"
    );
    drop(segs);
    let got = tok.encode(&text).unwrap();
    if let Some(want) = row.get("ids") {
        let want = ids(want);
        let at = got.iter().zip(&want).position(|(a, b)| a != b);
        let at = at.unwrap_or(got.len().min(want.len()));
        assert!(
            got == want,
            "{name}: first difference at id {at} of {}: got {:?} want {:?}",
            want.len(),
            &got[at..(at + 8).min(got.len())],
            &want[at..(at + 8).min(want.len())]
        );
    }
    let mut h = Sha256::new();
    got.iter().for_each(|id| h.update(id.to_le_bytes()));
    assert_eq!(
        got.len() as u64,
        row["ids_count"].as_u64().unwrap(),
        "{name}: ids"
    );
    assert_eq!(
        hex(h.finalize()),
        row["ids_sha256"].as_str().unwrap(),
        "{name}: ids"
    );
}

fn run(max_chars: usize, min_chars: usize) {
    let tok = CpmTokenizer::open(&big_model()).unwrap();
    let corpus: Vec<String> = jsonl(dir().join("corpus.jsonl"))
        .into_iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    let rows = jsonl(dir().join("longlines.jsonl"));
    let mut seen = 0;
    for row in &rows {
        let chars = row["chars"].as_u64().unwrap() as usize;
        if (min_chars..=max_chars).contains(&chars) {
            check(&tok, &corpus, row);
            seen += 1;
        }
    }
    assert!(
        seen >= 2,
        "no recorded lines of {min_chars}..={max_chars} characters"
    );
}

#[test]
fn lines_up_to_a_hundred_thousand_characters_match_python() {
    run(100_000, 0);
}

#[test]
fn lines_of_a_million_characters_and_more_match_python() {
    run(10_000_000, 1_000_000);
}
