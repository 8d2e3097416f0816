//! Hostile `.model` files, shared by `hostile.rs` (clear errors, no panic) and `alloc_bound.rs`
//! (bounded heap). Most are the real small model with protobuf fields appended: a decoder merges
//! an appended field into the message (a repeated field gains an element, a scalar or bytes
//! field is replaced), so each case breaks exactly one rule of an otherwise real model.
#![allow(dead_code)] // shared by the tests and alloc binaries; each uses a part

use std::path::PathBuf;

pub fn small_model_bytes() -> Vec<u8> {
    std::fs::read(testkit::fixtures().join("tokenizer/small/chinese_small.model")).unwrap()
}

pub fn varint(mut v: u64, out: &mut Vec<u8>) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// A length-delimited field.
pub fn field(tag: u64, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    varint(tag << 3 | 2, &mut out);
    varint(body.len() as u64, &mut out);
    out.extend_from_slice(body);
    out
}

/// A varint field.
pub fn vfield(tag: u64, v: u64) -> Vec<u8> {
    let mut out = Vec::new();
    varint(tag << 3, &mut out);
    varint(v, &mut out);
    out
}

/// A `SentencePiece` message: piece bytes, optional score, optional type.
pub fn piece(text: &[u8], score: Option<f32>, kind: Option<u64>) -> Vec<u8> {
    let mut body = field(1, text);
    if let Some(s) = score {
        body.push(2 << 3 | 5);
        body.extend_from_slice(&s.to_le_bytes());
    }
    if let Some(k) = kind {
        body.extend(vfield(3, k));
    }
    field(1, &body)
}

pub struct Case {
    pub name: String,
    pub bytes: Vec<u8>,
    /// A fragment the error message must contain.
    pub expect: &'static str,
}

fn appended(name: &str, extra: Vec<u8>, expect: &'static str) -> Case {
    let mut bytes = small_model_bytes();
    bytes.extend(extra);
    Case {
        name: name.into(),
        bytes,
        expect,
    }
}

/// A charsmap blob: the size header, `units`, the strings.
pub fn charsmap(trie_bytes: u32, units: &[u32], strings: &[u8]) -> Vec<u8> {
    let mut b = trie_bytes.to_le_bytes().to_vec();
    units
        .iter()
        .for_each(|u| b.extend_from_slice(&u.to_le_bytes()));
    b.extend_from_slice(strings);
    b
}

pub fn normalizer_with(blob: &[u8]) -> Vec<u8> {
    field(3, &field(2, blob))
}

/// A charsmap with one rule, the one-byte `key` → `rep`.
pub fn one_rule(key: u8, rep: &[u8]) -> Vec<u8> {
    // Root: children at 256 ^ c; the key's unit leads (XOR) to the value unit at 512.
    let mut units = vec![0u32; 768];
    units[0] = 256 << 10;
    let pos = 256 ^ key as usize;
    units[pos] = key as u32 | 1 << 8 | ((pos ^ 512) as u32) << 10;
    units[512] = 1 << 31; // string offset 0
    let mut strings = rep.to_vec();
    strings.push(0);
    charsmap(units.len() as u32 * 4, &units, &strings)
}

/// A charsmap with a rule for every two-byte key `[a, b]`, `a` in `firsts`, `b` in 1..=255;
/// rule `i` (in key order) points at string offset `at(i)` of `strings`.
pub fn many_rules(firsts: &[u8], strings: &[u8], at: impl Fn(usize) -> u32) -> Vec<u8> {
    let vbase = 1024 + 256 * firsts.len();
    let leaves = firsts.len() * 255;
    let mut units = vec![0u32; (vbase + leaves) | 0xFF];
    units.push(0);
    units[0] = 256 << 10;
    for (i, &a) in firsts.iter().enumerate() {
        let p1 = 256 ^ a as usize;
        let block = 1024 + 256 * i;
        units[p1] = a as u32 | ((p1 ^ block) as u32) << 10;
        for b in 1..=255u32 {
            let leaf = i * 255 + b as usize - 1;
            let (p2, v) = (block ^ b as usize, vbase + leaf);
            units[p2] = b | 1 << 8 | ((p2 ^ v) as u32) << 10;
            units[v] = 1 << 31 | at(leaf);
        }
    }
    charsmap(units.len() as u32 * 4, &units, strings)
}

/// A model with one long matchable piece: `a` then `len - 1` times `b` (`kind`: 1 NORMAL, 4
/// USER_DEFINED).
pub fn long_piece_model(len: usize, kind: u64) -> Vec<u8> {
    let text = format!("a{}", "b".repeat(len - 1));
    let mut bytes = small_model_bytes();
    bytes.extend(piece(text.as_bytes(), Some(-1.0), Some(kind)));
    bytes
}

pub fn cases() -> Vec<Case> {
    let real = small_model_bytes();
    let mut out = vec![
        Case {
            name: "empty file (0 pieces)".into(),
            bytes: vec![],
            expect: "no UNKNOWN piece among 0 pieces",
        },
        Case {
            name: "garbage".into(),
            bytes: testkit::noise(7, 4096),
            expect: "not a sentencepiece model",
        },
        Case {
            name: "huge declared length".into(),
            bytes: vec![0x0A, 0xFF, 0xFF, 0xFF, 0xFF, 0x0F, b'a'],
            expect: "declares",
        },
        Case {
            name: "huge varint".into(),
            bytes: vec![0x0A; 3].into_iter().chain([0xFF; 12]).collect(),
            expect: "not a sentencepiece model",
        },
        Case {
            name: "only an unk-less piece".into(),
            bytes: piece(b"a", Some(-1.0), None),
            expect: "no UNKNOWN piece",
        },
        appended(
            "duplicate piece",
            piece("▂".as_bytes(), Some(-1.0), None),
            "defined twice",
        ),
        appended(
            "NaN score",
            piece(b"zz-nan", Some(f32::NAN), None),
            "score NaN",
        ),
        appended(
            "infinite score",
            piece(b"zz-inf", Some(f32::NEG_INFINITY), None),
            "score -inf",
        ),
        appended(
            "second unk",
            piece(b"<unk2>", Some(0.0), Some(2)),
            "second UNKNOWN",
        ),
        appended("empty piece", piece(b"", Some(-1.0), None), "is empty"),
        appended(
            "non-UTF-8 piece",
            piece(&[0xFF, 0xFE], Some(-1.0), None),
            "not a sentencepiece model",
        ),
        appended(
            "unknown piece type",
            piece(b"zz-type", Some(-1.0), Some(9)),
            "unknown type",
        ),
        appended(
            "byte piece",
            piece(b"<0x41>", Some(0.0), Some(6)),
            "BYTE piece",
        ),
        appended("model type BPE", field(2, &vfield(3, 2)), "model_type BPE"),
        appended(
            "model type 7",
            field(2, &vfield(3, 7)),
            "unknown model_type 7",
        ),
        appended("byte fallback", field(2, &vfield(35, 1)), "byte_fallback"),
        appended(
            "whitespace as suffix",
            field(2, &vfield(24, 1)),
            "treat_whitespace_as_suffix",
        ),
        appended(
            "normalizer name",
            field(3, &field(1, b"my_rules")),
            "normalizer \"my_rules\"",
        ),
        appended(
            "denormalizer rules",
            field(5, &field(2, b"\x04\0\0\0abcd")),
            "denormalizer_spec",
        ),
        appended(
            "charsmap shorter than its header",
            normalizer_with(b"\x01\x02"),
            "no size header",
        ),
        appended(
            "charsmap trie size past the end",
            normalizer_with(&charsmap(4096, &[0, 0], b"")),
            "declares a 4096-byte trie",
        ),
        appended(
            "charsmap trie size not a multiple of 4",
            normalizer_with(&charsmap(6, &[0, 0], b"")),
            "declares a 6-byte trie",
        ),
        // Root offset 1024 (bits 10..) points past a 2-unit array.
        appended(
            "charsmap root out of range",
            normalizer_with(&charsmap(8, &[1 << 20, 0], b"")),
            "outside its",
        ),
        appended(
            "charsmap garbage",
            normalizer_with(&testkit::noise(3, 2048)),
            "precompiled_charsmap",
        ),
    ];
    // A one-block trie whose key "a" has a leaf whose value points past the strings.
    let mut units = vec![0u32; 512];
    units[0] = 256 << 10; // root: offset 256, children at 256 ^ c
    let a = 256 ^ b'a' as usize;
    units[a] = b'a' as u32 | 1 << 8 | ((a ^ 300) as u32) << 10; // label, has-leaf, offset to 300
    units[300] = (1 << 31) | 999; // value unit: string offset 999
    out.push(appended(
        "charsmap value past the strings",
        normalizer_with(&charsmap(2048, &units, b"x\0")),
        "outside its 2-byte string table",
    ));
    units[300] = 1 << 31; // value 0: "x" without NUL
    out.push(appended(
        "charsmap string without NUL",
        normalizer_with(&charsmap(2048, &units, b"x")),
        "no NUL",
    ));
    // A replacement megabytes long would be copied at every match of its key.
    out.push(appended(
        "charsmap rule c -> 6 MB",
        normalizer_with(&one_rule(b'c', &vec![b'x'; 6 << 20])),
        "rule \"c\" (1 bytes) has a 6291456-byte replacement, more than the limit of 16",
    ));
    out.push(appended(
        "charsmap rule c -> 17 bytes (over 16 per key byte)",
        normalizer_with(&one_rule(b'c', &[b'x'; 17])),
        "has a 17-byte replacement",
    ));
    // 65,025 rules onto one 1 MB string: measured once, not once per rule.
    let big: Vec<u8> = [vec![b'y'; 1 << 20], vec![0]].concat();
    let firsts: Vec<u8> = (1..=255).collect();
    out.push(appended(
        "charsmap 65,025 rules onto one 1 MB string",
        normalizer_with(&many_rules(&firsts, &big, |_| 0)),
        "-byte replacement, more than the limit of 32",
    ));
    out.push(appended(
        "charsmap 65,025 rules onto 65,025 offsets of one 1 MB string",
        normalizer_with(&many_rules(&firsts, &big, |i| i as u32)),
        "-byte replacement, more than the limit of 32",
    ));
    // Too many pieces: counted before decoding.
    let many: Vec<u8> = [0x0Au8, 0x00].repeat(cpm_tokenizer::spm::MAX_PIECES + 1);
    out.push(Case {
        name: "too many pieces".into(),
        bytes: many,
        expect: "more than the limit",
    });
    for cut in [
        1,
        2,
        3,
        10,
        100,
        1000,
        5000,
        real.len() / 3,
        real.len() / 2,
        real.len() - 7,
        real.len() - 1,
    ] {
        out.push(Case {
            name: format!("truncated at {cut}"),
            bytes: real[..cut].to_vec(),
            expect: "",
        });
    }
    out
}

/// Deterministic single-byte corruptions of the real model: each must load or fail cleanly.
pub fn mutations(n: usize) -> Vec<(String, Vec<u8>)> {
    let real = small_model_bytes();
    let noise = testkit::noise(11, n * 3);
    (0..n)
        .map(|i| {
            let at = (u32::from_le_bytes([noise[3 * i], noise[3 * i + 1], noise[3 * i + 2], 0])
                as usize)
                % real.len();
            let mut b = real.clone();
            b[at] ^= 1 << (i % 8);
            (format!("bit {} of byte {at} flipped", i % 8), b)
        })
        .collect()
}

/// Models that load (at the limits or crafted to cost time), each with a line that stresses it.
pub fn crafted_lines() -> Vec<(String, Vec<u8>, String)> {
    let mut rule = small_model_bytes();
    rule.extend(normalizer_with(&one_rule(b'c', &[b'x'; 16])));
    let walk = "a".repeat(20_000);
    let fx = testkit::fixtures().join("tokenizer");
    let released = std::fs::read(fx.join("chinese_vocab.model")).unwrap();
    let corpus = std::fs::read_to_string(fx.join("corpus.jsonl")).unwrap();
    let corpus: String = corpus
        .lines()
        .map(|l| serde_json::from_str::<String>(l).unwrap())
        .collect();
    let prose = corpus
        .replace(['\n', '\r'], " ")
        .repeat((4 << 20) / corpus.len());
    vec![
        (
            "rule c -> 16 bytes, 1 MiB of c,".into(),
            rule,
            "c,".repeat(1 << 19),
        ),
        (
            "NORMAL piece of 100,000 characters".into(),
            long_piece_model(100_000, 1),
            walk.clone(),
        ),
        (
            "USER_DEFINED piece of 100,000 characters".into(),
            long_piece_model(100_000, 4),
            walk,
        ),
        (
            "small model, 4 MB of 'ab! '".into(),
            small_model_bytes(),
            "ab! ".repeat(1 << 20),
        ),
        (
            "released model, one 4 MB line of the corpus".into(),
            released,
            prose,
        ),
    ]
}

pub fn write_temp(bytes: &[u8]) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("case.model");
    std::fs::write(&path, bytes).unwrap();
    (dir, path)
}
