//! The `--json` contract (issue 9.2): stdout holds exactly one JSON object — the summary of what
//! was written, the plan with `--dry-run`, or `{"error", "warnings"}` with exit 2 (usage errors
//! included) — and stderr holds only warnings, which the object lists too. `--help` and
//! `--version` stay text. The objects are parsed into structs that deny unknown fields, so a
//! field added or renamed without updating this contract fails here.

use crate::common;

use std::path::{Path, PathBuf};

use serde::Deserialize;
use sha2::{Digest, Sha256};

use common::TokenizerReport;

const EXE: &str = env!("CARGO_BIN_EXE_cpm-convert");

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Summary {
    output: PathBuf,
    files: Vec<File>,
    /// Null without a tokenizer (none given, none found, or --no-tokenizer).
    tokenizer: Option<TokenizerReport>,
    tensors: usize,
    tensor_bytes: u64,
    model_file_bytes: u64,
    seconds: f64,
    variant: String,
    family_from: String,
    activation: Activation,
    model_parallel: usize,
    warnings: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Activation {
    name: String,
    source: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    name: String,
    bytes: u64,
    sha256: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DryRun {
    variant: String,
    model_parallel: usize,
    pipeline_stages: usize,
    layers: u64,
    hidden: u64,
    vocab: u64,
    positions: u64,
    inner: u64,
    heads: Heads,
    activation: Activation,
    entries: Vec<serde_json::Value>,
    checks: Vec<serde_json::Value>,
    tied_copies: Vec<String>,
    tensor_bytes: u64,
    model_file_bytes: u64,
    tokenizer: Option<TokenizerReport>,
    warnings: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Heads {
    count: u64,
    source: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ErrorObject {
    error: String,
    warnings: Vec<String>,
}

fn ckpt() -> PathBuf {
    testkit::fixtures().join("tiny/ckpt")
}

fn run(args: &[&std::ffi::OsStr]) -> testkit::Run {
    testkit::run(EXE, args, &[])
}

/// `serde_json::from_str` rejects anything after the one value but whitespace.
fn parse<T: serde::de::DeserializeOwned>(r: &testkit::Run) -> T {
    serde_json::from_str(&r.stdout).unwrap_or_else(|e| panic!("{e}: stdout {:?}", r.stdout))
}

fn convert_json(out: &Path) -> (testkit::Run, Summary) {
    let r = run(&[
        ckpt().as_ref(),
        "-o".as_ref(),
        out.as_ref(),
        "--json".as_ref(),
    ]);
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    let s = parse(&r);
    (r, s)
}

#[test]
fn summary_lists_each_written_file_with_its_size_and_hash() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let (r, s) = convert_json(&out);
    assert!(r.stderr.is_empty(), "stderr in JSON mode: {}", r.stderr);
    assert_eq!(s.output, out);
    let names: Vec<&str> = s.files.iter().map(|f| f.name.as_str()).collect();
    assert_eq!(names, ["model.safetensors", "config.json", "SHA256SUMS"]);
    for f in &s.files {
        let bytes = std::fs::read(out.join(&f.name)).unwrap();
        assert_eq!(f.bytes, bytes.len() as u64, "{}", f.name);
        let sha: String = Sha256::digest(&bytes)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(f.sha256, sha, "{}", f.name);
    }
    let model = std::fs::read(out.join("model.safetensors")).unwrap();
    let header = u64::from_le_bytes(model[..8].try_into().unwrap());
    assert_eq!(s.model_file_bytes, model.len() as u64, "header included");
    assert_eq!(s.tensor_bytes, model.len() as u64 - 8 - header);
    assert_eq!(s.tensors, 28);
    assert_eq!((s.variant.as_str(), s.model_parallel), ("cpm-lm", 2));
    // The family was recognised from the files' structure; CPM-LM's activation is the tanh GELU.
    assert_eq!(s.family_from, "detected");
    assert_eq!(s.activation.name, "gelu_new");
    assert!(!s.activation.source.is_empty());
    assert!(s.seconds >= 0.0 && s.warnings.is_empty());
    assert!(
        s.tokenizer.is_none(),
        "no tokenizer beside fixtures/tiny/ckpt"
    );
}

/// With `--tokenizer`, the object says which file, how it was chosen, its size against the
/// embedding and the ids written (fixtures/tokenizer/README.md: the small model's `<eod>` is 9,
/// `<pad>` 4; the tiny embedding has 1000 rows).
#[test]
fn summary_reports_the_tokenizer() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let model = testkit::fixtures().join("tokenizer/small/chinese_small.model");
    let r = run(&[
        ckpt().as_ref(),
        "-o".as_ref(),
        out.as_ref(),
        "--tokenizer".as_ref(),
        model.as_ref(),
        "--json".as_ref(),
    ]);
    assert_eq!(r.code, Some(0), "{}", r.stdout);
    let s: Summary = parse(&r);
    let t = s.tokenizer.expect("reported");
    assert_eq!((t.path, t.found.as_str()), (model, "given"));
    assert_eq!((t.pieces, t.embedding_rows), (873, 1000));
    assert_eq!(
        (t.eod_id, t.bos_token_id, t.eos_token_id, t.pad_token_id),
        (Some(9), Some(9), Some(9), Some(4))
    );
    assert_eq!(s.files.len(), 8);
    // The padding warning, on stderr and in the object.
    assert_eq!(s.warnings.len(), 1, "{:?}", s.warnings);
    assert_eq!(
        r.stderr,
        format!("cpm-convert: warning: {}\n", s.warnings[0])
    );
}

#[test]
fn dry_run_sizes_are_the_sizes_a_conversion_writes() {
    let r = run(&[ckpt().as_ref(), "--dry-run".as_ref(), "--json".as_ref()]);
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    assert!(r.stderr.is_empty(), "{}", r.stderr);
    let plan: DryRun = parse(&r);
    assert_eq!(plan.entries.len(), 28);
    assert_eq!((plan.heads.count, plan.model_parallel), (4, 2));
    assert_eq!(plan.variant, "cpm-lm");
    assert_eq!(plan.pipeline_stages, 1);
    assert_eq!(plan.activation.name, "gelu_new");
    // CPM-LM keeps no copies of the embedding.
    assert!(plan.checks.is_empty() && plan.tied_copies.is_empty());
    assert!(plan.heads.source.contains("num_attention_heads"));
    assert_eq!(
        (
            plan.layers,
            plan.hidden,
            plan.vocab,
            plan.positions,
            plan.inner
        ),
        (2, 64, 1000, 64, 256)
    );
    assert!(plan.warnings.is_empty() && plan.tokenizer.is_none());

    let tmp = tempfile::tempdir().unwrap();
    let (_, s) = convert_json(&tmp.path().join("out"));
    assert_eq!(plan.tensor_bytes, s.tensor_bytes);
    assert_eq!(plan.model_file_bytes, s.model_file_bytes);

    let text = run(&[ckpt().as_ref(), "--dry-run".as_ref()]).stdout;
    assert!(
        text.contains(&format!(
            "{} bytes of tensor data; model.safetensors will be {} bytes",
            s.tensor_bytes, s.model_file_bytes
        )),
        "{text}"
    );
}

#[test]
fn usage_errors_with_json_are_json_errors() {
    for args in [
        &["--bogus", "--json"][..],
        &["--json"],
        &["x", "--json", "--dtype", "f64"],
        &["x", "--json"],
    ] {
        let r = testkit::run(EXE, args, &[]);
        assert_eq!(r.code, Some(2), "{args:?}");
        assert!(r.stderr.is_empty(), "{args:?}: stderr {}", r.stderr);
        let e: ErrorObject = parse(&r);
        assert!(
            !e.error.is_empty() && !e.error.starts_with("error:"),
            "{e:?}"
        );
        assert!(!e.error.contains("Usage:"), "only the message: {e:?}");
    }
    // After `--`, `--json` is an input path, not the flag.
    let r = testkit::run(EXE, &["--bogus", "--", "--json"], &[]);
    assert_eq!(r.code, Some(2));
    assert!(r.stdout.is_empty() && r.stderr.contains("--bogus"), "{r:?}");
}

#[test]
fn help_and_version_stay_text() {
    let r = testkit::run(EXE, &["--help", "--json"], &[]);
    assert_eq!(r.code, Some(0));
    assert!(r.stdout.contains("Usage:") && r.stdout.contains("Exit codes"));
    let r = testkit::run(EXE, &["--json", "--version"], &[]);
    assert_eq!(r.code, Some(0));
    assert_eq!(
        r.stdout,
        format!("cpm-convert {}\n", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn conversion_errors_with_json_go_to_stdout_only() {
    let tmp = tempfile::tempdir().unwrap();
    let missing = tmp.path().join("missing");
    let out = tmp.path().join("out");
    let r = run(&[
        missing.as_ref(),
        "-o".as_ref(),
        out.as_ref(),
        "--json".as_ref(),
    ]);
    assert_eq!(r.code, Some(2));
    assert!(r.stderr.is_empty(), "{}", r.stderr);
    let e: ErrorObject = parse(&r);
    assert!(e.error.contains(missing.to_str().unwrap()), "{e:?}");
    assert!(e.warnings.is_empty());
    assert!(!out.exists());
}

#[test]
fn an_os_error_is_printed_once() {
    // The OS reason was printed twice ("…: No such file or directory: No such file or directory")
    // when the I/O error was both in the message and the error's source.
    let tmp = tempfile::tempdir().unwrap();
    let missing = tmp.path().join("missing");
    let out = tmp.path().join("out");
    let r = run(&[missing.as_ref(), "-o".as_ref(), out.as_ref()]);
    assert_eq!(r.code, Some(2));
    assert_eq!(
        r.stderr.matches("No such file or directory").count(),
        1,
        "{}",
        r.stderr
    );
    assert!(r.stderr.contains(missing.to_str().unwrap()), "{}", r.stderr);
}

#[test]
fn warnings_are_on_stderr_and_in_the_object() {
    let tmp = tempfile::tempdir().unwrap();
    // A staging directory of a dead process: its removal is a warning.
    let stale = tmp.path().join(".out.cpm-convert-tmp.4194999");
    std::fs::create_dir(&stale).unwrap();
    let (r, s) = convert_json(&tmp.path().join("out"));
    assert_eq!(s.warnings.len(), 1, "{s:?}");
    assert!(s.warnings[0].contains("killed"), "{s:?}");
    assert_eq!(
        r.stderr,
        format!("cpm-convert: warning: {}\n", s.warnings[0])
    );
}
