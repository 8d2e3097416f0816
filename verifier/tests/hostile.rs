//! Hostile and broken inputs to `cpm-verify` (issues #4, #8): safetensors files, config.json,
//! shard indexes, the .npy and .json fixtures, FIFOs and devices, and sizes that multiply. Every
//! case must end as `cases.rs` says (exit 2 with a message naming the file and what is wrong, or a
//! completed comparison), without a panic or a hang (each run has a deadline). The cases live in
//! `cases/mod.rs`, shared with `alloc_bound.rs`, which checks the same inputs' peak heap.

use std::path::Path;

use crate::cases;

use cases::{Case, Expect};

/// Runs cpm-verify on a case and checks its outcome; returns stderr.
fn check(case: &Case) -> String {
    let args = [
        case.model.as_os_str(),
        case.fixture.as_os_str(),
        "--threads".as_ref(),
        "1".as_ref(),
    ];
    let run = testkit::run(env!("CARGO_BIN_EXE_cpm-verify"), &args, &[]);
    let (name, e) = (&case.name, &run.stderr);
    assert!(!e.contains("panicked"), "{name}: {e}");
    match &case.expect {
        Expect::Refused(needles) => {
            assert_eq!(run.code, Some(2), "{name}: exit code; stderr: {e}");
            for n in needles {
                assert!(e.contains(n.as_str()), "{name}: message lacks {n:?}: {e}");
            }
            // Shown with `cargo test --test hostile -- --nocapture`: the catalogue of messages.
            println!("REFUSED {name}: {}", e.trim());
        }
        Expect::Runs => {
            assert!(
                matches!(run.code, Some(0 | 1)),
                "{name}: exit {:?}, expected a comparison; stderr: {e}",
                run.code
            );
        }
    }
    run.stderr
}

fn check_all(cases: Vec<Case>) {
    assert!(!cases.is_empty());
    for case in &cases {
        check(case);
    }
}

#[test]
fn the_unchanged_fixture_passes() {
    // The control for every case below.
    let tiny = cases::tiny();
    let args = [tiny.join("hf"), cases::reference()];
    let run = testkit::run(env!("CARGO_BIN_EXE_cpm-verify"), &args, &[]);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
}

#[test]
fn safetensors_header_length_beyond_the_file_is_refused() {
    check_all(cases::model::safetensors_header_lengths());
}

#[test]
fn safetensors_overlapping_or_out_of_range_offsets_are_refused() {
    check_all(cases::model::safetensors_offsets());
}

#[test]
fn safetensors_non_utf8_names_and_non_json_headers_are_refused() {
    check_all(cases::model::safetensors_names_and_headers());
}

#[test]
fn safetensors_truncated_empty_or_random_is_refused() {
    check_all(cases::model::safetensors_truncated_or_random());
}

#[test]
fn hostile_config_json_is_refused() {
    check_all(cases::model::hostile_config_json());
}

#[test]
fn fifos_devices_and_oversized_json_are_refused_without_hanging() {
    // Before: a FIFO config.json hung forever, /dev/zero read until memory ran out, and a
    // fixture.json pointing at /dev/zero was silently ignored (the run passed).
    check_all(cases::files::special_and_oversized_files());
}

#[test]
fn shard_indexes_with_many_shards_are_handled_in_linear_time_and_capped() {
    check_all(cases::files::shard_indexes());
}

#[test]
fn npy_headers_that_lie_about_the_shape_are_refused() {
    check_all(cases::npy::npy_shape_lies());
}

#[test]
fn npy_with_bad_headers_is_refused() {
    check_all(cases::npy::npy_bad_headers());
}

#[test]
fn npy_headers_that_would_make_the_parser_backtrack_are_refused() {
    check_all(cases::npy::npy_backtracking_headers());
}

#[test]
fn npy_truncated_empty_or_random_is_refused() {
    check_all(cases::npy::npy_truncated_or_random());
}

#[test]
fn sizes_that_multiply_are_refused_or_run_in_bounded_memory() {
    check_all(cases::sizes::multiplying_sizes());
}

// ---------------------------------------------------------------------------------------------
// Fuzz regressions: every saved input (fuzz/regressions/<target>/) and seed (fuzz/seeds/<target>/)
// replayed through exactly the code the fuzz targets run.

#[path = "../../fuzz/fuzz_targets/verify_common.rs"]
mod verify_common;

fn replay(target: &str, f: fn(&[u8], &Path)) {
    let fuzz = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz");
    let dir = tempfile::tempdir().expect("tempdir");
    let mut n = 0;
    for sub in ["regressions", "seeds"] {
        let Ok(entries) = std::fs::read_dir(fuzz.join(sub).join(target)) else {
            continue;
        };
        for e in entries.flatten() {
            eprintln!("replaying {}", e.path().display());
            f(
                &std::fs::read(e.path()).expect("read a fuzz input"),
                dir.path(),
            );
            n += 1;
        }
    }
    assert!(n > 0, "no inputs for {target}");
}

#[test]
fn npy_fuzz_inputs_replay_cleanly() {
    replay("npy", verify_common::npy);
}

#[test]
fn safetensors_fuzz_inputs_replay_cleanly() {
    replay("safetensors", verify_common::safetensors);
}

/// A FIFO or `/dev/zero` given as MODEL_DIR or FIXTURE_DIR: exit 2 at once naming it (the files
/// inside those directories are covered by the cases above).
#[test]
fn special_files_as_either_directory_argument_are_refused_at_once() {
    let d = tempfile::tempdir().unwrap();
    let tiny = testkit::fixtures().join("tiny");
    let (model, fixture) = (tiny.join("hf"), tiny.join("reference"));
    for special in testkit::special_files(d.path()) {
        for args in [[&special, &fixture], [&model, &special]] {
            let r = testkit::run_refusing(env!("CARGO_BIN_EXE_cpm-verify"), &args);
            assert_eq!(r.code, Some(2), "{args:?}: {r:?}");
            assert!(
                r.stderr.contains(&*special.to_string_lossy()),
                "{args:?}: {}",
                r.stderr
            );
        }
    }
}
