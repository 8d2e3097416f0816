//! Running cpm-verify in the tests, and its documented `--json` output as typed structs: `deny_unknown_fields` refuses any key not
//! listed and serde's derive refuses a key that appears twice, so parsing into these proves the
//! object has every documented key exactly once. Shared by cli.rs and contract.rs.
#![allow(dead_code)] // parsed to prove the schema; not every field is asserted on

use std::path::Path;

use serde::Deserialize;
use serde_json::Value;

/// The element with the largest difference.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JsonWorst {
    pub row: usize,
    pub position: usize,
    pub token: usize,
    pub ours: f32,
    pub reference: f32,
}

/// Declares a struct holding the figures (as documented in verifier/README.md) plus `$extra`.
/// `deny_unknown_fields` refuses any key not listed and serde's derive refuses a key twice.
macro_rules! with_figures {
    ($name:ident { $($field:ident: $ty:ty),* $(,)? }) => {
        #[derive(Debug, Deserialize)]
        #[serde(deny_unknown_fields)]
        pub struct $name {
            pub pass: bool,
            pub max_abs_diff: f64,
            pub mean_abs_diff: f64,
            pub max_rel_diff: Option<f64>,
            pub top1_agreement: f64,
            pub kl_mean: f64,
            pub kl_max: f64,
            pub out_of_tolerance: usize,
            pub non_finite: usize,
            pub top1_mismatches: usize,
            pub top1_ties_excused: usize,
            pub tokens: usize,
            pub worst: Option<JsonWorst>,
            $(pub $field: $ty,)*
        }
    };
}

with_figures!(JsonRow { row: usize });
with_figures!(JsonReport {
    batch: usize,
    seq: usize,
    vocab: usize,
    atol: f64,
    rtol: f64,
    forward_seconds: f64,
    device: String,
    threads: usize,
    description: Option<String>,
    warnings: Vec<String>,
    rows: Vec<JsonRow>,
});

/// An error object holds `error` and nothing else.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JsonError {
    pub error: String,
}

/// Checks that stdout is exactly one JSON object of the documented form for this exit code.
pub fn check_schema(code: Option<i32>, stdout: &str) {
    match code {
        Some(2) => {
            let e: JsonError = serde_json::from_str(stdout)
                .unwrap_or_else(|e| panic!("not one error object ({e}):\n{stdout}"));
            assert!(!e.error.is_empty());
        }
        _ => {
            let r: JsonReport = serde_json::from_str(stdout).unwrap_or_else(|e| {
                panic!("not one report of the documented form ({e}):\n{stdout}")
            });
            assert_eq!(r.tokens, r.batch * r.seq);
            assert_eq!(r.rows.len(), r.batch);
        }
    }
}

pub fn cpm_verify(args: &[&std::ffi::OsStr]) -> testkit::Run {
    testkit::run(env!("CARGO_BIN_EXE_cpm-verify"), args, &[])
}

/// Runs cpm-verify with `--json`; returns the exit code and the parsed stdout, after checking it
/// against the typed schema and that stderr holds only warnings, each also in the object.
pub fn verify_json(model: &Path, fixture: &Path, extra: &[&str]) -> (i32, Value) {
    let mut args = vec![model.as_os_str(), fixture.as_os_str(), "--json".as_ref()];
    args.extend(extra.iter().map(std::ffi::OsStr::new));
    let run = cpm_verify(&args);
    check_schema(run.code, &run.stdout);
    let json: Value = serde_json::from_str(&run.stdout).unwrap_or_else(|e| {
        panic!(
            "stdout is not one JSON object ({e}):\n{}\nstderr:\n{}",
            run.stdout, run.stderr
        )
    });
    for line in run.stderr.lines() {
        let w = line.strip_prefix("cpm-verify: warning: ");
        let listed = w.is_some_and(|w| {
            json["warnings"]
                .as_array()
                .is_some_and(|a| a.contains(&w.into()))
        });
        assert!(listed, "stderr line is not a listed warning: {line}");
    }
    (run.code.expect("exit code"), json)
}

/// Runs cpm-verify without `--json`; returns the exit code, stdout and stderr.
pub fn verify_text(model: &Path, fixture: &Path, extra: &[&str]) -> (i32, String, String) {
    let mut args = vec![model.as_os_str(), fixture.as_os_str()];
    args.extend(extra.iter().map(std::ffi::OsStr::new));
    let run = cpm_verify(&args);
    (run.code.expect("exit code"), run.stdout, run.stderr)
}

pub fn write_npy<T: npyz::AutoSerialize>(
    path: &Path,
    shape: &[u64],
    data: impl IntoIterator<Item = T>,
) {
    use npyz::WriterBuilder;
    let file = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    let mut w = npyz::WriteOptions::new()
        .default_dtype()
        .shape(shape)
        .writer(file)
        .begin_nd()
        .unwrap();
    w.extend(data).unwrap();
    w.finish().unwrap();
}
