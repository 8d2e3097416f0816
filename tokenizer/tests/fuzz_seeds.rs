//! The tokenizer's fuzz seeds and every saved fuzz finding (`fuzz/seeds/{spm_model,
//! tokenize_line}`, `fuzz/regressions/...`) replayed through the targets' own code
//! (`fuzz/fuzz_targets/tokenizer_common.rs`), so no nightly toolchain is needed to keep them
//! fixed. `CPM_WRITE_SEEDS=1` rewrites the seeds from the hostile cases' builders.

use crate::cases;
#[path = "../../fuzz/fuzz_targets/tokenizer_common.rs"]
mod tokenizer_common;

use std::path::PathBuf;

fn fuzz_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fuzz")
}

fn seeds() -> Vec<(&'static str, String, Vec<u8>)> {
    let small = cases::small_model_bytes();
    let with = |extra: Vec<u8>| [small.clone(), extra].concat();
    let mut out = vec![
        ("spm_model", "small-model".into(), small.clone()),
        (
            "spm_model",
            "truncated".into(),
            small[..small.len() / 2].to_vec(),
        ),
        (
            "spm_model",
            "rule-c-16-bytes".into(),
            with(cases::normalizer_with(&cases::one_rule(b'c', &[b'x'; 16]))),
        ),
        (
            "spm_model",
            "rule-c-17-bytes".into(),
            with(cases::normalizer_with(&cases::one_rule(b'c', &[b'x'; 17]))),
        ),
        (
            "spm_model",
            "long-user-piece".into(),
            cases::long_piece_model(2000, 4),
        ),
    ];
    let lines: [(&str, u8, &[u8]); 6] = [
        (
            "plain-released",
            0,
            "今天天气不错\nHugging Face大法好，谁用谁知道。\n".as_bytes(),
        ),
        (
            "plain-small-pieces",
            9,
            "第一篇文章<eod>第二篇文章\n  a\tb\r\n".as_bytes(),
        ),
        ("jsonl", 2, "\"x\\ny\"\n\"😀😃\"\nnot json\n".as_bytes()),
        ("decode", 4, b"837 259 497 788\n0 1 2 4 5 6 7\n30000\n"),
        ("decode-jsonl", 6, b"[837,259]\n[-1]\n"),
        ("bad-utf8-threads", 0x40, b"ok\n\xff\xfe\nab! ab! ab! \n"),
    ];
    for (name, sel, body) in lines {
        out.push(("tokenize_line", name.into(), [&[sel][..], body].concat()));
    }
    out
}

#[test]
fn seeds_and_regressions_replay_without_panicking() {
    if std::env::var_os("CPM_WRITE_SEEDS").is_some() {
        for (target, name, bytes) in seeds() {
            let dir = fuzz_dir().join("seeds").join(target);
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(dir.join(name), bytes).unwrap();
        }
    }
    let mut n = 0;
    for target in ["spm_model", "tokenize_line"] {
        for kind in ["seeds", "regressions"] {
            let Ok(dir) = std::fs::read_dir(fuzz_dir().join(kind).join(target)) else {
                continue;
            };
            for entry in dir {
                let bytes = std::fs::read(entry.unwrap().path()).unwrap();
                match target {
                    "spm_model" => tokenizer_common::spm_model(&bytes),
                    _ => tokenizer_common::tokenize_line(&bytes),
                }
                n += 1;
            }
        }
    }
    assert!(n >= seeds().len(), "only {n} seeds found under fuzz/");
}
