//! What more than one of the converter's test files reads.

use std::path::{Path, PathBuf};

use serde::Deserialize;

/// The `tokenizer` object of the summary and the `--dry-run` plan (docs/tokenizer.md,
/// "Tokenizer files in a port"), exactly: an added or renamed field fails the parse.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)] // each test file reads its own subset
pub struct TokenizerReport {
    pub path: PathBuf,
    pub found: String,
    pub pieces: usize,
    pub embedding_rows: u64,
    pub eod_id: Option<u64>,
    pub bos_token_id: Option<u64>,
    pub eos_token_id: Option<u64>,
    pub pad_token_id: Option<u64>,
}

/// `cpm-convert INPUT -o OUT EXTRA... --json`.
pub fn convert(input: &Path, out: &Path, extra: &[&str]) -> testkit::Run {
    let mut args: Vec<&std::ffi::OsStr> = vec![input.as_os_str(), "-o".as_ref(), out.as_os_str()];
    args.extend(extra.iter().map(std::ffi::OsStr::new));
    args.push("--json".as_ref());
    testkit::run(env!("CARGO_BIN_EXE_cpm-convert"), &args, &[])
}

/// The conversion in `out` reproduces the logits recorded in `reference` (by the library that
/// wrote the checkpoint), through the verifier's library.
pub fn verify(name: &str, out: &Path, reference: &Path) {
    let opts = cpm_verify::Options {
        threads: 1,
        ..Default::default()
    };
    let report =
        cpm_verify::verify(out, reference, &opts).unwrap_or_else(|e| panic!("{name}: {e}"));
    assert!(
        report.overall.pass,
        "{name}: logits differ from the reference: max |diff| {}",
        report.overall.max_abs_diff
    );
}
