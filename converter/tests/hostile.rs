//! Hostile and broken inputs (issue #4): every one must end with exit code 2 and a message that
//! names the file and what is wrong; none may panic, hang, run code or allocate beyond what the
//! file justifies. Every case runs the real binary under a deadline (`testkit::run`).
//!
//! The cases themselves are built in `cases/` and shared with `alloc_bound.rs`, which runs the
//! readers in-process on each of them and bounds their peak heap.

use crate::cases;

use std::path::Path;
use std::process::Command;

use cases::{Case, Expect};

/// The longest message any refusal may print: names from a hostile file are shortened, so a
/// 1 MiB storage key cannot make a megabyte of stderr.
const MAX_MESSAGE: usize = 2048;

/// Write the case's files into `input/` of a fresh directory; returns it and the path to run on.
fn write_case(case: &Case) -> (tempfile::TempDir, std::path::PathBuf) {
    let parent = tempfile::tempdir().unwrap();
    let dir = parent.path().join("input");
    for (name, bytes) in &case.files {
        let f = dir.join(name);
        std::fs::create_dir_all(f.parent().unwrap()).unwrap();
        std::fs::write(&f, bytes).unwrap();
    }
    let input = if case.dir_input {
        dir.clone()
    } else {
        dir.join(&case.files[0].0)
    };
    (parent, input)
}

/// Write the case's files into a fresh directory and run cpm-convert on them.
fn run_case(case: &Case) -> (testkit::Run, tempfile::TempDir, std::path::PathBuf) {
    let (parent, input) = write_case(case);
    let out = parent.path().join("out");
    let mut args = vec![
        input.into_os_string(),
        "-o".into(),
        out.clone().into_os_string(),
    ];
    args.extend(case.args.iter().map(Into::into));
    let run = testkit::run(env!("CARGO_BIN_EXE_cpm-convert"), &args, &[]);
    (run, parent, out)
}

/// Run the binary on `case` and check what it must do.
fn check(case: &Case) {
    let (r, parent, out) = run_case(case);
    let (name, e) = (&case.name, &r.stderr);
    assert!(!e.contains("panicked"), "{name}: {e}");
    match &case.expect {
        Expect::Converts => {
            assert_eq!(r.code, Some(0), "{name}: conversion failed: {e}");
            assert!(out.join("model.safetensors").is_file(), "{name}");
        }
        Expect::Ends => {
            assert!(matches!(r.code, Some(0) | Some(2)), "{name}: {e}");
            if r.code == Some(2) {
                testkit::assert_nothing_left(&out);
            }
        }
        Expect::Refused { file, all, any } => {
            assert_refused(name, r.code, e, file);
            for n in all {
                assert!(e.contains(n.as_str()), "{name}: message lacks {n:?}: {e}");
            }
            assert!(
                any.is_empty() || any.iter().any(|n| e.contains(n.as_str())),
                "{name}: message has none of {any:?}: {e}"
            );
            assert!(e.len() <= MAX_MESSAGE, "{name}: a {}-byte message", e.len());
            testkit::assert_nothing_left(&out);
            // Shown with `cargo test --test hostile -- --nocapture`: the catalogue of messages.
            println!("REFUSED {}", e.trim());
        }
    }
    drop(parent);
}

fn check_all(cases: Vec<Case>) {
    assert!(!cases.is_empty());
    for c in &cases {
        check(c);
    }
}

#[test]
fn builder_checkpoint_converts() {
    check_all(cases::builder());
}

#[test]
fn code_execution_payloads_are_inert_objects() {
    let d = tempfile::tempdir().unwrap();
    let marker = d.path().join("PWNED");
    for c in cases::code_execution(&marker) {
        check(&c);
        assert!(!marker.exists(), "{} ran", c.name);
    }
}

#[test]
fn nesting_is_bounded_and_dropped_without_recursion() {
    check_all(cases::nesting());
}

#[test]
fn memo_reuse_that_copies_is_bounded() {
    check_all(cases::memo_copies());
}

#[test]
fn memoized_long_strings_are_shared_or_refused() {
    check_all(cases::memo_long_strings());
}

#[test]
fn floods_of_values_are_refused() {
    check_all(cases::value_floods());
}

#[test]
fn length_fields_claiming_2_pow_60_bytes_are_refused_before_allocation() {
    check_all(cases::length_fields());
}

#[test]
fn tensors_that_do_not_fit_their_storage_are_refused() {
    check_all(cases::tensors_that_do_not_fit());
}

#[test]
fn shapes_and_dtypes_the_mapping_cannot_merge_are_refused() {
    check_all(cases::unmergeable_shapes());
}

#[test]
fn malformed_zip_archives_are_refused() {
    check_all(cases::zip_compressed());
    check_all(cases::zip_duplicates());
    check_all(cases::zip_disagreeing_headers());
    check_all(cases::zip_foreign_layouts());
    check_all(cases::zip_entry_counts());
}

#[test]
fn legacy_element_counts_that_lie_are_refused() {
    check_all(cases::legacy_counts());
}

#[test]
fn truncated_files_are_refused_at_every_cut() {
    check_all(cases::truncations());
}

#[test]
fn empty_and_random_files_are_refused() {
    check_all(cases::empty_and_random());
}

#[test]
fn extra_or_skipped_ranks_are_refused() {
    check_all(cases::rank_layouts());
}

#[test]
fn bad_tracker_files_are_refused() {
    check_all(cases::tracker_files());
}

#[test]
fn safetensors_builder_converts() {
    check_all(cases::safetensors_builder());
}

#[test]
fn malformed_safetensors_headers_are_refused() {
    check_all(cases::safetensors_headers());
}

#[test]
fn safetensors_shapes_and_header_sizes_are_bounded() {
    check_all(cases::safetensors_sizes());
}

#[test]
fn hostile_shard_indexes_are_refused() {
    check_all(cases::hf_indexes());
}

#[test]
fn hostile_distributed_checkpoints_are_refused() {
    check_all(cases::dcp::dcp_folders());
}

#[test]
fn truncated_files_are_refused_by_the_reader_at_every_seventh_byte() {
    // ...and the reader in-process at every 7th byte (some 55,000 parses).
    use cpm_torch::parse_bytes;
    for base in [cases::real_zip(), cases::real_legacy()] {
        for cut in (0..base.len()).step_by(7) {
            match parse_bytes(&base[..cut], Path::new("cut.pt")) {
                Ok(_) => panic!("a file cut at byte {cut} of {} parsed", base.len()),
                Err(e) => assert!(e.to_string().contains("cut.pt"), "{e}"),
            }
        }
    }
}

#[test]
fn a_fifo_posing_as_a_rank_file_is_refused_not_waited_on() {
    let d = tempfile::tempdir().unwrap();
    let f = d.path().join("mp_rank_00_model_states.pt");
    let ok = Command::new("mkfifo")
        .arg(&f)
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        eprintln!("mkfifo unavailable; skipped");
        return;
    }
    let out = d.path().join("out");
    let r = testkit::run(
        env!("CARGO_BIN_EXE_cpm-convert"),
        &[d.path().as_os_str(), "-o".as_ref(), out.as_os_str()],
        &[],
    );
    assert_eq!(r.code, Some(2), "{}", r.stderr);
    assert!(
        r.stderr.contains("mp_rank_00_model_states.pt"),
        "{}",
        r.stderr
    );
    assert!(r.stderr.contains("not a regular file"), "{}", r.stderr);
    testkit::assert_nothing_left(&out);
}

/// The most `cpm-inspect --tree` may print for any case: its tree is cut to
/// `inspect::MAX_NODES` values of at most a few hundred bytes each, whatever the file holds.
const MAX_TREE_OUTPUT: usize = 4 << 20;

/// cpm-inspect on one case, as text and as JSON: exit 0 (the structure was readable) or 2 with
/// a message, never a panic or a signal, within testkit's deadline, and bounded output.
fn check_inspect(case: &Case) {
    let (parent, input) = write_case(case);
    let name = &case.name;
    for json in [false, true] {
        let mut args = vec![input.clone().into_os_string(), "--tree".into()];
        args.extend(case.args.iter().map(Into::into));
        if json {
            args.extend(["--json".into(), "--mapped".into()]);
        }
        let r = testkit::run(env!("CARGO_BIN_EXE_cpm-inspect"), &args, &[]);
        let e = &r.stderr;
        assert!(!e.contains("panicked"), "{name}: {e}");
        assert!(
            matches!(r.code, Some(0) | Some(2)),
            "{name}: {:?}: {e}",
            r.code
        );
        assert!(
            r.stdout.len() <= MAX_TREE_OUTPUT,
            "{name}: {} bytes",
            r.stdout.len()
        );
        assert!(e.len() <= MAX_MESSAGE, "{name}: a {}-byte message", e.len());
        if json {
            let v: serde_json::Value = serde_json::from_str(&r.stdout)
                .unwrap_or_else(|err| panic!("{name}: {err}: {:?}", r.stdout));
            let failed = v
                .get("error")
                .is_some_and(|m| !m.as_str().unwrap_or("").is_empty());
            assert_eq!(failed, r.code == Some(2), "{name}: {v}");
        } else if r.code == Some(2) {
            assert!(e.starts_with("cpm-inspect: error: "), "{name}: {e}");
            assert!(r.stdout.is_empty(), "{name}: {}", r.stdout);
        }
    }
    drop(parent);
}

/// Issue 10.3: cpm-inspect reads what cpm-convert reads, so it meets every hostile case too.
#[test]
fn cpm_inspect_ends_cleanly_on_every_case() {
    let d = tempfile::tempdir().unwrap();
    let marker = d.path().join("PWNED");
    let cases = cases::all(&marker);
    assert!(cases.len() > 300, "{} cases", cases.len());
    for c in &cases {
        check_inspect(c);
        assert!(!marker.exists(), "{} ran", c.name);
    }
}

/// cpm-diff reads the same inputs (issue 10.4): every case, as A, against a valid checkpoint as
/// B. Mapped, with values, against the builder's checkpoint (same shapes, so the values of every
/// tensor the case leaves readable are compared): a case cpm-convert refuses is exit 2 with the
/// same kind of message, one it converts is exit 0 (equal to B) or 1. Raw, with values, against
/// the tiny fixture: the stored tensors are all read without a plan's checks, so only a clean end
/// (0, 1 or 2, a bounded message) is required. Never a panic, never past the deadline.
#[test]
fn cpm_diff_ends_cleanly_on_every_case() {
    const DIFF: &str = env!("CARGO_BIN_EXE_cpm-diff");
    let d = tempfile::tempdir().unwrap();
    let marker = d.path().join("PWNED");
    let valid = d.path().join("valid.pt");
    std::fs::write(&valid, cases::Ckpt::new().bytes()).unwrap();
    let fixture = cases::fixtures().join("ckpt");
    let all = cases::all(&marker);
    assert!(all.len() > 100, "{} cases", all.len());
    for case in &all {
        let (_parent, a) = write_case(case);
        let name = &case.name;
        let r = testkit::run(
            DIFF,
            &[a.as_os_str(), valid.as_os_str(), "--values".as_ref()],
            &[],
        );
        let e = &r.stderr;
        assert!(!e.contains("panicked"), "{name}: {e}");
        assert!(e.len() <= MAX_MESSAGE, "{name}: a {}-byte message", e.len());
        match &case.expect {
            Expect::Refused { file, .. } => {
                assert_refused(name, r.code, e, file);
            }
            // The builder's own checkpoint is B: equal. Any other that converts may differ.
            Expect::Converts if name == "builder" => assert_eq!(r.code, Some(0), "{e}"),
            Expect::Converts => assert!(matches!(r.code, Some(0 | 1)), "{name}: {e}"),
            Expect::Ends => assert!(matches!(r.code, Some(0..=2)), "{name}: {e}"),
        }
        let args = [
            a.as_os_str(),
            fixture.as_os_str(),
            "--raw".as_ref(),
            "--values".as_ref(),
        ];
        let r = testkit::run(DIFF, &args, &[]);
        assert!(matches!(r.code, Some(0..=2)), "{name} (raw): {r:?}");
        assert!(!r.stderr.contains("panicked"), "{name} (raw): {}", r.stderr);
        assert!(
            r.stderr.len() <= MAX_MESSAGE,
            "{name} (raw): {} bytes",
            r.stderr.len()
        );
    }
    assert!(!marker.exists(), "a code-execution payload ran");
}

/// Exit 2 with a message naming the file (an empty `file`: the input directory it is in).
fn assert_refused(name: &str, code: Option<i32>, e: &str, file: &str) {
    assert_eq!(code, Some(2), "{name}: exit code: {e}");
    let named = if file.is_empty() { "input" } else { file };
    assert!(
        e.contains(named),
        "{name}: message does not name {named:?}: {e}"
    );
}

/// A FIFO and `/dev/zero` as every file argument of cpm-convert, cpm-inspect and cpm-diff: exit
/// 2 at once with a message naming the file (a FIFO `--tokenizer` used to hang cpm-convert,
/// deaf to its first SIGINT; `/dev/zero` as `--tokenizer` read until memory ran out).
#[test]
fn special_files_as_any_file_argument_are_refused_at_once() {
    let d = tempfile::tempdir().unwrap();
    let ckpt = cases::fixtures().join("ckpt");
    let out = d.path().join("out");
    let (convert, inspect, diff) = (
        env!("CARGO_BIN_EXE_cpm-convert"),
        env!("CARGO_BIN_EXE_cpm-inspect"),
        env!("CARGO_BIN_EXE_cpm-diff"),
    );
    for special in testkit::special_files(d.path()) {
        let (s, c, o) = (special.as_os_str(), ckpt.as_os_str(), out.as_os_str());
        let runs: [(&str, &str, Vec<&std::ffi::OsStr>); 9] = [
            ("cpm-convert INPUT", convert, vec![s, "-o".as_ref(), o]),
            (
                "cpm-convert --tokenizer",
                convert,
                vec![c, "-o".as_ref(), o, "--tokenizer".as_ref(), s],
            ),
            (
                "cpm-convert --dry-run --tokenizer",
                convert,
                vec![c, "--dry-run".as_ref(), "--tokenizer".as_ref(), s],
            ),
            (
                "cpm-convert --mapping",
                convert,
                vec![c, "-o".as_ref(), o, "--mapping".as_ref(), s],
            ),
            ("cpm-inspect INPUT", inspect, vec![s]),
            (
                "cpm-inspect --mapping",
                inspect,
                vec![c, "--mapping".as_ref(), s],
            ),
            ("cpm-diff A", diff, vec![s, c]),
            ("cpm-diff B", diff, vec![c, s]),
            (
                "cpm-diff --mapping",
                diff,
                vec![c, c, "--mapping".as_ref(), s],
            ),
        ];
        for (what, exe, args) in runs {
            let r = testkit::run_refusing(exe, &args);
            testkit::assert_not_regular(&r, &special, &format!("{what} {}", special.display()));
            testkit::assert_nothing_left(&out);
        }
    }
}

/// Files read whole are read under a cap, checked before reading: a sparse file over it is
/// refused at once with a message naming the file and the cap.
#[test]
fn files_over_their_cap_are_refused_naming_the_cap() {
    let d = tempfile::tempdir().unwrap();
    let ckpt = cases::fixtures().join("ckpt");
    let out = d.path().join("out");
    let sparse = |name: &str, len: u64| {
        let p = d.path().join(name);
        std::fs::File::create(&p).unwrap().set_len(len).unwrap();
        p
    };
    let model = sparse("big.model", cpm_tokenizer::spm::MAX_FILE_BYTES + 1);
    let mapping = sparse("big.toml", 4 << 30);
    for (flag, file, cap) in [
        ("--tokenizer", &model, "67108864"),
        ("--mapping", &mapping, "1048576"),
    ] {
        let args = [
            ckpt.as_os_str(),
            "-o".as_ref(),
            out.as_os_str(),
            flag.as_ref(),
            file.as_os_str(),
        ];
        let r = testkit::run_refusing(env!("CARGO_BIN_EXE_cpm-convert"), &args);
        assert_eq!(r.code, Some(2), "{flag}: {r:?}");
        assert!(
            r.stderr.contains(&*file.to_string_lossy()) && r.stderr.contains(cap),
            "{flag}: the message names neither the file nor the cap {cap}: {}",
            r.stderr
        );
        testkit::assert_nothing_left(&out);
    }
}

#[test]
fn deepspeed_zero_checkpoints_that_lie_are_refused() {
    check_all(cases::zero::zero_checkpoints());
}
