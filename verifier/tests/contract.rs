//! The CLI contract (developers' guide): with `--json`, stdout holds exactly one JSON object (the
//! report, or `{"error": ...}` with exit 2, usage errors included) and stderr only warnings, each
//! also in the object's `warnings`; `--help` and `--version` stay plain text with exit 0.

use std::path::PathBuf;

use serde_json::Value;
use testkit::copy_dir;

use crate::common;

use common::{cpm_verify, verify_json, verify_text, write_npy, JsonError};

fn fixtures() -> PathBuf {
    testkit::fixtures().join("tiny")
}

/// Runs cpm-verify with exactly these arguments.
fn run_args(args: &[&str]) -> testkit::Run {
    let args: Vec<&std::ffi::OsStr> = args.iter().map(|a| a.as_ref()).collect();
    cpm_verify(&args)
}

#[test]
fn usage_errors_under_json_are_one_json_error_object_and_nothing_on_stderr() {
    let model = fixtures().join("hf");
    let model = model.to_str().expect("UTF-8 path");
    for (args, needle) in [
        (vec!["--json", "--atol", "nope", "a", "b"], "'nope'"),
        (vec!["--json", "only-one-dir"], "FIXTURE_DIR"),
        (vec!["--json"], "MODEL_DIR"),
        (
            vec!["--json", model, "b", "--device", "tpu"],
            "unknown device",
        ),
        (vec!["--json", "--no-such-flag", "a", "b"], "--no-such-flag"),
    ] {
        let run = run_args(&args);
        assert_eq!(run.code, Some(2), "{args:?}: {run:?}");
        assert_eq!(run.stderr, "", "{args:?}: stderr must be empty");
        let e: JsonError = serde_json::from_str(&run.stdout)
            .unwrap_or_else(|e| panic!("{args:?}: not one error object ({e}): {}", run.stdout));
        assert!(e.error.contains(needle), "{args:?}: {}", e.error);
        assert!(
            !e.error.contains("Usage:") && !e.error.contains("--help"),
            "{args:?}: the message alone, not clap's usage text: {}",
            e.error
        );
        assert!(
            !e.error.contains('\u{1b}'),
            "no terminal colours in JSON: {}",
            e.error
        );
    }
}

#[test]
fn usage_error_without_json_is_exit_2_on_stderr() {
    let run = run_args(&["only-one-dir"]);
    assert_eq!(run.code, Some(2), "{run:?}");
    assert_eq!(run.stdout, "");
    assert!(run.stderr.contains("FIXTURE_DIR"), "{run:?}");
}

#[test]
fn help_and_version_stay_plain_text_with_exit_0_even_with_json() {
    for args in [
        vec!["--help"],
        vec!["--json", "--help"],
        vec!["--version"],
        vec!["-V", "--json"],
    ] {
        let run = run_args(&args);
        assert_eq!(run.code, Some(0), "{args:?}: {run:?}");
        assert!(
            serde_json::from_str::<Value>(&run.stdout).is_err(),
            "{args:?}: JSON: {}",
            run.stdout
        );
        assert!(
            run.stdout.contains("cpm-verify"),
            "{args:?}: {}",
            run.stdout
        );
    }
    let help = run_args(&["--help"]).stdout;
    assert!(
        help.contains("[--threads N]"),
        "usage line lacks --threads: {help}"
    );
}

#[test]
fn help_examples_name_paths_that_exist() {
    let help = run_args(&["--help"]).stdout;
    let root = testkit::fixtures().join("..");
    let named: Vec<&str> = help
        .lines()
        .filter(|l| l.trim_start().starts_with("cpm-verify "))
        .flat_map(|l| l.split_whitespace())
        .filter(|w| w.contains('/'))
        .collect();
    assert!(named.len() >= 4, "no example paths in {help}");
    for path in named {
        assert!(
            root.join(path).is_dir(),
            "--help names {path}, which does not exist"
        );
    }
}

#[test]
fn warnings_go_to_stderr_and_into_the_json_object() {
    let (code, j) = verify_json(
        &fixtures().join("hf"),
        &fixtures().join("reference"),
        &["--threads", "0"],
    );
    assert_eq!(code, 0, "{j:#}");
    let w = j["warnings"].as_array().expect("warnings");
    assert_eq!(w.len(), 1, "{j:#}");
    assert!(
        w[0].as_str().is_some_and(|w| w.contains("--threads 0")),
        "{j:#}"
    );
    assert_eq!(j["threads"], 1);
}

#[test]
fn all_zero_reference_reports_relative_difference_as_undefined() {
    let fx = copy_dir(&fixtures().join("reference"));
    write_npy(
        &fx.path().join("logits.npy"),
        &[2, 16, 1000],
        vec![0f32; 32_000],
    );
    let (code, j) = verify_json(&fixtures().join("hf"), fx.path(), &[]);
    assert_eq!(code, 1, "{j:#}");
    assert!(j["max_rel_diff"].is_null(), "{j:#}");
    let (code, out, _) = verify_text(&fixtures().join("hf"), fx.path(), &[]);
    assert_eq!(code, 1);
    let all = out
        .lines()
        .find(|l| l.starts_with("all "))
        .expect("overall line");
    assert!(all.contains("n/a") && !all.contains("0.000e0"), "{out}");
}
