//! `--tokenizer` (docs/tokenizer.md, "Tokenizer files in a port"): the port gets the tokenizer files, and
//! config.json / generation_config.json the id of `<eod>` looked up in the given model. The ids
//! the tests expect are facts about the committed models recorded by sentencepiece itself
//! (fixtures/tokenizer/README.md): `<eod>` is 7 and `<pad>` 5 in `chinese_vocab.model` (30000
//! pieces), `<eod>` 9 and `<pad>` 4 in `small/chinese_small.model` (873 pieces). The tiny
//! checkpoint's embedding has 1000 rows, so the small model fits (with a padding warning) and
//! the released one does not.

use crate::common;

use std::ffi::OsStr;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use common::TokenizerReport;

const EXE: &str = env!("CARGO_BIN_EXE_cpm-convert");

/// Rows of the tiny checkpoint's embedding (fixtures/make_fixtures.py: vocab_size 1000).
const ROWS: u64 = 1000;

fn ckpt() -> PathBuf {
    testkit::fixtures().join("tiny/ckpt")
}

fn small() -> PathBuf {
    testkit::fixtures().join("tokenizer/small/chinese_small.model")
}

fn released() -> PathBuf {
    testkit::fixtures().join("tokenizer/chinese_vocab.model")
}

/// The files a port with a tokenizer holds, in the order the summary lists them.
const PORT_FILES: [&str; 8] = [
    "model.safetensors",
    "config.json",
    "spiece.model",
    "tokenizer.json",
    "tokenizer_config.json",
    "tokenization_cpm_jieba.py",
    "generation_config.json",
    "SHA256SUMS",
];

/// The part of the summary these tests read (json.rs holds the whole contract).
#[derive(Debug, Deserialize)]
struct Summary {
    files: Vec<File>,
    tokenizer: Option<TokenizerReport>,
    warnings: Vec<String>,
}

#[derive(Debug, Deserialize)]
struct File {
    name: String,
}

fn convert(input: &Path, out: &Path, extra: &[&OsStr]) -> testkit::Run {
    let mut args = vec![input.as_os_str(), "-o".as_ref(), out.as_os_str()];
    args.extend_from_slice(extra);
    testkit::run(EXE, &args, &[])
}

fn convert_json(input: &Path, out: &Path, extra: &[&OsStr]) -> (testkit::Run, Summary) {
    let mut args = extra.to_vec();
    args.push("--json".as_ref());
    let r = convert(input, out, &args);
    assert_eq!(r.code, Some(0), "{}", r.stdout);
    let s = serde_json::from_str(&r.stdout).unwrap_or_else(|e| panic!("{e}: {}", r.stdout));
    (r, s)
}

fn read_json(p: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap()
}

fn sha256(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A writable copy of the tiny checkpoint at `dir`.
fn copy_ckpt(dir: &Path) {
    testkit::copy_tree(&ckpt(), dir);
}

/// The whole port for a given tokenizer: every file, the copy byte-identical, the ids of the
/// model's own `<eod>` and `<pad>`, generation_config.json holding only them, no special tokens
/// appended, the checksums covering the new files, and the tokenizer file untouched.
#[test]
fn a_given_tokenizer_writes_the_port_files_with_its_own_eod_id() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let before = std::fs::read(small()).unwrap();
    let (r, s) = convert_json(&ckpt(), &out, &["--tokenizer".as_ref(), small().as_ref()]);
    let names: Vec<&str> = s.files.iter().map(|f| f.name.as_str()).collect();
    assert_eq!(names, PORT_FILES);
    let mut on_disk: Vec<String> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    on_disk.sort();
    let mut want: Vec<String> = PORT_FILES.iter().map(|s| s.to_string()).collect();
    want.sort();
    assert_eq!(on_disk, want);

    assert_eq!(std::fs::read(out.join("spiece.model")).unwrap(), before);
    assert_eq!(std::fs::read(small()).unwrap(), before, "input modified");

    let config = read_json(&out.join("config.json"));
    assert_eq!(
        (&config["bos_token_id"], &config["eos_token_id"]),
        (&json!(9), &json!(9))
    );
    assert_eq!(
        read_json(&out.join("generation_config.json")),
        json!({"bos_token_id": 9, "eos_token_id": 9, "pad_token_id": 4})
    );
    let tc = read_json(&out.join("tokenizer_config.json"));
    assert_eq!(
        tc["auto_map"],
        json!({"AutoTokenizer": ["tokenization_cpm_jieba.CpmJiebaTokenizer", null]})
    );
    assert_eq!(tc["tokenizer_class"], json!("CpmJiebaTokenizer"));
    assert_eq!(tc["model_max_length"], config["n_positions"]);
    assert_eq!(
        (&tc["add_bos_token"], &tc["add_eos_token"]),
        (&json!(false), &json!(false))
    );
    assert_eq!(
        (&tc["unk_token"], &tc["eos_token"], &tc["pad_token"]),
        (&json!("<unk>"), &json!("<eod>"), &json!("<pad>"))
    );
    let py = std::fs::read_to_string(out.join("tokenization_cpm_jieba.py")).unwrap();
    assert!(py.contains("class CpmJiebaTokenizer(PreTrainedTokenizer)"));
    // tokenizer.json is Hugging Face's format for this model: its pieces at their ids.
    let tj = read_json(&out.join("tokenizer.json"));
    assert_eq!(tj["model"]["type"], json!("Unigram"));
    let vocab = tj["model"]["vocab"].as_array().unwrap();
    assert_eq!(vocab.len(), 873);
    assert_eq!(
        (&vocab[0][0], &vocab[9][0]),
        (&json!("<unk>"), &json!("<eod>"))
    );

    let sums = std::fs::read_to_string(out.join("SHA256SUMS")).unwrap();
    assert_eq!(sums.lines().count(), PORT_FILES.len() - 1);
    for name in &PORT_FILES[..PORT_FILES.len() - 1] {
        let line = format!(
            "{}  {name}",
            sha256(&std::fs::read(out.join(name)).unwrap())
        );
        assert!(sums.lines().any(|l| l == line), "{name} not in {sums}");
    }

    let t = s.tokenizer.expect("the summary reports the tokenizer");
    assert_eq!(t.path, small());
    assert_eq!(
        (t.found.as_str(), t.pieces, t.embedding_rows),
        ("given", 873, ROWS)
    );
    assert_eq!(
        (t.eod_id, t.bos_token_id, t.eos_token_id),
        (Some(9), Some(9), Some(9))
    );
    assert_eq!(t.pad_token_id, Some(4));
    // Fewer pieces than rows is padding: a warning naming both numbers, not an error.
    assert_eq!(s.warnings.len(), 1, "{:?}", s.warnings);
    assert!(s.warnings[0].contains("873") && s.warnings[0].contains("1000"));
    assert!(
        r.stderr.contains("warning") && !r.stderr.contains("note:"),
        "{}",
        r.stderr
    );
}

/// A Hugging Face copy of the tiny model whose embedding has 30000 rows (the tiny one's 1000 and
/// zeros), as CPM's has: the released tokenizer fits it exactly.
fn wide_hf_model(dir: &Path) {
    use safetensors::tensor::{serialize, Dtype, TensorView};
    std::fs::create_dir_all(dir).unwrap();
    let hf = testkit::fixtures().join("tiny/hf");
    let bytes = std::fs::read(hf.join("model.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let wte = st.tensor("transformer.wte.weight").unwrap();
    assert_eq!(
        (wte.dtype(), wte.shape()),
        (Dtype::F16, &[1000usize, 64][..])
    );
    let mut wide = wte.data().to_vec();
    wide.resize(30000 * 64 * 2, 0);
    let mut views: Vec<(String, TensorView)> = st
        .tensors()
        .into_iter()
        .filter(|(n, _)| n != "transformer.wte.weight")
        .collect();
    views.push((
        "transformer.wte.weight".into(),
        TensorView::new(Dtype::F16, vec![30000, 64], &wide).unwrap(),
    ));
    std::fs::write(
        dir.join("model.safetensors"),
        serialize(views, None).unwrap(),
    )
    .unwrap();
    let mut config = read_json(&hf.join("config.json"));
    config["vocab_size"] = json!(30000);
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
}

/// The released tokenizer on a 30000-row embedding: `<eod>` is its id 7, `<pad>` 5, and no
/// padding warning (pieces = rows).
#[test]
fn the_released_tokenizer_gives_eod_7_on_a_30000_row_model() {
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("wide");
    wide_hf_model(&input);
    let out = tmp.path().join("out");
    let (_, s) = convert_json(&input, &out, &["--tokenizer".as_ref(), released().as_ref()]);
    assert!(s.warnings.is_empty(), "{:?}", s.warnings);
    let t = s.tokenizer.unwrap();
    assert_eq!(
        (t.pieces, t.embedding_rows, t.eod_id),
        (30000, 30000, Some(7))
    );
    let config = read_json(&out.join("config.json"));
    assert_eq!(
        (&config["bos_token_id"], &config["eos_token_id"]),
        (&json!(7), &json!(7))
    );
    assert_eq!(
        read_json(&out.join("generation_config.json")),
        json!({"bos_token_id": 7, "eos_token_id": 7, "pad_token_id": 5})
    );
    assert_eq!(
        std::fs::read(out.join("spiece.model")).unwrap(),
        std::fs::read(released()).unwrap()
    );
    // The same model with the small tokenizer: its own <eod> (9), not the released 7.
    let out = tmp.path().join("out-small");
    let (_, s) = convert_json(&input, &out, &["--tokenizer".as_ref(), small().as_ref()]);
    assert_eq!(
        read_json(&out.join("config.json"))["eos_token_id"],
        json!(9)
    );
    assert!(s
        .warnings
        .iter()
        .any(|w| w.contains("873") && w.contains("30000")));
}

#[test]
fn more_pieces_than_embedding_rows_is_refused_before_anything_is_written() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let r = convert(
        &ckpt(),
        &out,
        &["--tokenizer".as_ref(), released().as_ref()],
    );
    assert_eq!(r.code, Some(2), "{}", r.stderr);
    let e = &r.stderr;
    assert!(e.starts_with("cpm-convert: error: "), "{e}");
    for needle in [
        "30000",
        "1000",
        released().to_str().unwrap(),
        ckpt().to_str().unwrap(),
    ] {
        assert!(e.contains(needle), "message lacks {needle:?}: {e}");
    }
    testkit::assert_nothing_left(&out);
}

/// The rows compared are the converted model's: `--vocab-size` cuts them first.
#[test]
fn the_rows_compared_are_those_after_vocab_size() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let r = convert(
        &ckpt(),
        &out,
        &[
            "--tokenizer".as_ref(),
            small().as_ref(),
            "--vocab-size".as_ref(),
            "800".as_ref(),
        ],
    );
    assert_eq!(r.code, Some(2), "{}", r.stderr);
    assert!(
        r.stderr.contains("873") && r.stderr.contains("800"),
        "{}",
        r.stderr
    );
    testkit::assert_nothing_left(&out);
}

/// A `chinese_vocab.model` or `spiece.model` in INPUT is used, with a note on stderr naming it.
#[test]
fn a_tokenizer_in_the_input_directory_is_found() {
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("ckpt");
    copy_ckpt(&input);
    std::fs::copy(small(), input.join("spiece.model")).unwrap();
    let out = tmp.path().join("out");
    let r = convert(&input, &out, &[]);
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    assert!(
        r.stderr.contains("cpm-convert: note: using the tokenizer"),
        "{}",
        r.stderr
    );
    assert!(r.stderr.contains("spiece.model"), "{}", r.stderr);
    assert_eq!(
        std::fs::read(out.join("spiece.model")).unwrap(),
        std::fs::read(small()).unwrap()
    );
    assert_eq!(
        read_json(&out.join("config.json"))["eos_token_id"],
        json!(9)
    );
    // With --json the note is the report's `found`, and stderr holds only warnings.
    let (r, s) = convert_json(&input, &tmp.path().join("out2"), &[]);
    let t = s.tokenizer.unwrap();
    assert_eq!(t.found, "auto");
    assert_eq!(t.path, input.canonicalize().unwrap().join("spiece.model"));
    assert!(!r.stderr.contains("note:"), "{}", r.stderr);
}

/// The released name in INPUT's parent (beside the checkpoint root, or beside a single file).
#[test]
fn a_tokenizer_in_the_parent_directory_is_found() {
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("models/ckpt");
    copy_ckpt(&input);
    std::fs::copy(small(), tmp.path().join("models/chinese_vocab.model")).unwrap();
    let (_, s) = convert_json(&input, &tmp.path().join("out"), &[]);
    let t = s.tokenizer.expect("found in the parent");
    assert_eq!(t.found, "auto");
    assert!(t.path.ends_with("models/chinese_vocab.model"), "{t:?}");
    assert_eq!(t.eod_id, Some(9));
    assert_eq!(s.files.len(), PORT_FILES.len());
}

/// `--no-tokenizer` ignores a tokenizer beside the input: the port is the model alone and
/// config.json keeps the mapping's ids.
#[test]
fn no_tokenizer_turns_discovery_off() {
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("ckpt");
    copy_ckpt(&input);
    std::fs::copy(small(), input.join("chinese_vocab.model")).unwrap();
    let plain = tmp.path().join("plain");
    let (_, without) = convert_json(&ckpt(), &plain, &[]);
    assert!(without.tokenizer.is_none());
    let out = tmp.path().join("out");
    let (r, s) = convert_json(&input, &out, &["--no-tokenizer".as_ref()]);
    assert!(s.tokenizer.is_none() && s.warnings.is_empty(), "{s:?}");
    let names: Vec<&str> = s.files.iter().map(|f| f.name.as_str()).collect();
    assert_eq!(names, ["model.safetensors", "config.json", "SHA256SUMS"]);
    assert!(!out.join("spiece.model").exists() && r.stderr.is_empty());
    assert_eq!(
        read_json(&out.join("config.json")),
        read_json(&plain.join("config.json"))
    );
    let both = convert(
        &input,
        &tmp.path().join("x"),
        &[
            "--no-tokenizer".as_ref(),
            "--tokenizer".as_ref(),
            small().as_ref(),
        ],
    );
    assert_eq!(both.code, Some(2), "{}", both.stderr);
}

/// A tokenizer without `<eod>` (the small model with the piece renamed `<eoe>`): a warning, and
/// config.json keeps the ids it has without a tokenizer; generation_config.json repeats them.
#[test]
fn a_tokenizer_without_eod_keeps_the_config_ids() {
    let tmp = tempfile::tempdir().unwrap();
    let bytes = std::fs::read(small()).unwrap();
    let renamed = replace_all(&bytes, b"<eod>", b"<eoe>");
    assert_ne!(renamed, bytes);
    let model = tmp.path().join("no-eod.model");
    std::fs::write(&model, renamed).unwrap();
    let plain = tmp.path().join("plain");
    convert_json(&ckpt(), &plain, &[]);
    let out = tmp.path().join("out");
    let (_, s) = convert_json(&ckpt(), &out, &["--tokenizer".as_ref(), model.as_ref()]);
    assert!(
        s.warnings.iter().any(|w| w.contains("<eod>")),
        "{:?}",
        s.warnings
    );
    let (ours, theirs) = (
        read_json(&out.join("config.json")),
        read_json(&plain.join("config.json")),
    );
    assert_eq!(ours, theirs);
    let t = s.tokenizer.unwrap();
    assert_eq!(t.eod_id, None);
    let mut want = serde_json::Map::new();
    for k in ["bos_token_id", "eos_token_id"] {
        if !theirs[k].is_null() {
            want.insert(k.into(), theirs[k].clone());
        }
    }
    want.insert("pad_token_id".into(), json!(4));
    assert_eq!(
        read_json(&out.join("generation_config.json")),
        Value::Object(want)
    );
    let tc = read_json(&out.join("tokenizer_config.json"));
    assert!(tc.get("eos_token").is_none(), "{tc}");
}

fn replace_all(hay: &[u8], from: &[u8], to: &[u8]) -> Vec<u8> {
    assert_eq!(from.len(), to.len());
    let mut out = hay.to_vec();
    let mut i = 0;
    while i + from.len() <= out.len() {
        if &out[i..i + from.len()] == from {
            out[i..i + from.len()].copy_from_slice(to);
            i += from.len();
        } else {
            i += 1;
        }
    }
    out
}

/// The tokenizer is an input: OUT_DIR may not be, hold or lie inside it (issue 8.1's rule),
/// with or without --force, and the tokenizer's directory is left as it was.
#[test]
fn out_dir_overlapping_the_tokenizer_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let tok_dir = tmp.path().join("tok");
    std::fs::create_dir(&tok_dir).unwrap();
    let model = tok_dir.join("spiece.model");
    std::fs::copy(small(), &model).unwrap();
    let before = testkit::snapshot(&tok_dir);
    for out in [tok_dir.clone(), model.clone(), model.join("sub")] {
        for force in [&["--force"][..], &[]] {
            let mut args: Vec<&OsStr> = vec!["--tokenizer".as_ref(), model.as_ref()];
            args.extend(force.iter().map(OsStr::new));
            let r = convert(&ckpt(), &out, &args);
            assert_eq!(r.code, Some(2), "{out:?}: {}", r.stderr);
            assert!(r.stderr.contains("refusing to write to"), "{}", r.stderr);
            assert!(r.stderr.contains(model.to_str().unwrap()), "{}", r.stderr);
            assert_eq!(
                testkit::snapshot(&tok_dir),
                before,
                "{out:?} changed the tokenizer"
            );
        }
    }
}

/// Broken tokenizer files: exit 2, a message naming the file, no panic, nothing written.
#[test]
fn garbage_and_truncated_tokenizers_are_refused_and_nothing_is_written() {
    let tmp = tempfile::tempdir().unwrap();
    let good = std::fs::read(small()).unwrap();
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("empty", Vec::new()),
        ("noise", testkit::noise(7, 4096)),
        ("truncated-half", good[..good.len() / 2].to_vec()),
        ("truncated-tail", good[..good.len() - 1].to_vec()),
        ("text", b"<unk>\t0\n<s>\t0\n".to_vec()),
        (
            "a-torch-file",
            std::fs::read(ckpt().join("100/mp_rank_00_model_states.pt")).unwrap(),
        ),
    ];
    for (name, bytes) in cases {
        let model = tmp.path().join(format!("{name}.model"));
        std::fs::write(&model, &bytes).unwrap();
        let out = tmp.path().join(format!("out-{name}"));
        let r = convert(&ckpt(), &out, &["--tokenizer".as_ref(), model.as_ref()]);
        assert_eq!(r.code, Some(2), "{name}: {}", r.stderr);
        assert!(!r.stderr.contains("panicked"), "{name}: {}", r.stderr);
        assert!(
            r.stderr.contains(model.to_str().unwrap()),
            "{name}: {}",
            r.stderr
        );
        assert!(
            r.stderr.len() < 2048,
            "{name}: a {}-byte message",
            r.stderr.len()
        );
        testkit::assert_nothing_left(&out);
    }
    // Found rather than given: the message says so and how to leave it out.
    let input = tmp.path().join("ckpt");
    copy_ckpt(&input);
    std::fs::write(input.join("spiece.model"), testkit::noise(3, 100)).unwrap();
    let out = tmp.path().join("out-found");
    let r = convert(&input, &out, &[]);
    assert_eq!(r.code, Some(2), "{}", r.stderr);
    assert!(r.stderr.contains("--no-tokenizer"), "{}", r.stderr);
    testkit::assert_nothing_left(&out);
    let r = convert(&input, &out, &["--no-tokenizer".as_ref()]);
    assert_eq!(r.code, Some(0), "{}", r.stderr);

    let missing = tmp.path().join("missing.model");
    let out = tmp.path().join("out-missing");
    let r = convert(&ckpt(), &out, &["--tokenizer".as_ref(), missing.as_ref()]);
    assert_eq!(r.code, Some(2), "{}", r.stderr);
    assert!(r.stderr.contains(missing.to_str().unwrap()), "{}", r.stderr);
    testkit::assert_nothing_left(&out);
}

/// `--dry-run` reads and checks the tokenizer as a conversion would: the same refusal, and the
/// report (`<eod>` 9 in the small model) in the plan.
#[test]
fn dry_run_checks_and_reports_the_tokenizer() {
    let r = testkit::run(
        EXE,
        &[
            ckpt().as_os_str(),
            "--dry-run".as_ref(),
            "--tokenizer".as_ref(),
            released().as_os_str(),
        ],
        &[],
    );
    assert_eq!(r.code, Some(2), "{}", r.stderr);
    assert!(
        r.stderr.contains("30000") && r.stderr.contains("1000"),
        "{}",
        r.stderr
    );
    let r = testkit::run(
        EXE,
        &[
            ckpt().as_os_str(),
            "--dry-run".as_ref(),
            "--json".as_ref(),
            "--tokenizer".as_ref(),
            small().as_os_str(),
        ],
        &[],
    );
    assert_eq!(r.code, Some(0), "{}", r.stdout);
    let plan: Value = serde_json::from_str(&r.stdout).unwrap();
    let t: TokenizerReport = serde_json::from_value(plan["tokenizer"].clone()).unwrap();
    assert_eq!(
        (t.pieces, t.eod_id, t.found.as_str()),
        (873, Some(9), "given")
    );
    assert_eq!(plan["warnings"].as_array().unwrap().len(), 1, "{plan}");
    let text = testkit::run(
        EXE,
        &[
            ckpt().as_os_str(),
            "--dry-run".as_ref(),
            "--tokenizer".as_ref(),
            small().as_os_str(),
        ],
        &[],
    );
    assert_eq!(text.code, Some(0), "{}", text.stderr);
    assert!(
        text.stdout.contains("873 pieces, <eod> = 9"),
        "{}",
        text.stdout
    );
}

/// `--tokenizer DIR` takes the directory's `spiece.model`, else its `chinese_vocab.model` (the
/// release's `bpe_3w_new/`).
#[test]
fn a_given_directory_holding_the_model_is_used() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("bpe_3w_new");
    std::fs::create_dir(&dir).unwrap();
    std::fs::copy(small(), dir.join("chinese_vocab.model")).unwrap();
    let out = tmp.path().join("out");
    let (_, s) = convert_json(&ckpt(), &out, &["--tokenizer".as_ref(), dir.as_ref()]);
    assert_eq!(s.tokenizer.unwrap().eod_id, Some(9));
    assert_eq!(
        std::fs::read(out.join("spiece.model")).unwrap(),
        std::fs::read(small()).unwrap()
    );
}
