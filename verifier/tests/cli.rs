//! The `cpm-verify` binary end to end, on fixtures written by PyTorch/transformers
//! (fixtures/make_fixtures.py, fixtures/make_corrupt_fixtures.py), never by our own code.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/tiny")
}

/// Runs cpm-verify with `--json`; returns the exit code and the parsed stdout.
fn verify_json(model: &Path, fixture: &Path, extra: &[&str]) -> (i32, Value) {
    let out = Command::new(env!("CARGO_BIN_EXE_cpm-verify"))
        .arg(model)
        .arg(fixture)
        .arg("--json")
        .args(extra)
        .output()
        .expect("run cpm-verify");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let json: Value = serde_json::from_str(&stdout).unwrap_or_else(|e| {
        panic!(
            "stdout is not one JSON object ({e}):\n{stdout}\nstderr:\n{}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (out.status.code().expect("exit code"), json)
}

#[test]
fn transformers_own_port_passes_against_its_recorded_logits() {
    let (code, j) = verify_json(&fixtures().join("hf"), &fixtures().join("reference"), &[]);
    assert_eq!(code, 0, "{j:#}");
    assert_eq!(j["pass"], true);
    assert_eq!(j["tokens"], 32);
    assert_eq!(j["device"], "cpu");
    assert_eq!(j["top1_agreement"], 1.0);
    // An f32 forward of fp16 weights differs from torch only by summation order.
    assert!(j["max_abs_diff"].as_f64().unwrap() < 2e-4, "{j:#}");
    assert!(j["kl_max"].as_f64().unwrap() < 1e-8, "{j:#}");
    assert_eq!(j["atol"], 1e-3);
    assert_eq!(j["rtol"], 1e-3);
    assert!(j["forward_seconds"].as_f64().unwrap() > 0.0);
    let rows = j["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 2);
    for key in ["max_abs_diff", "mean_abs_diff", "max_rel_diff", "top1_agreement", "kl_mean", "kl_max"] {
        assert!(rows[1][key].is_number(), "row figure {key} missing: {j:#}");
        assert!(j[key].is_number(), "figure {key} missing: {j:#}");
    }
}
