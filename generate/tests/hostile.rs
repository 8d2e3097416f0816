//! Files cpm-generate opens that are not regular or are too large: each refused at once (exit
//! 2, the file named), before any compute; and signals during loading end it with nothing
//! written. Before, a FIFO as `--tokenizer`, `--prompt-file` or `generation_config.json` hung
//! it, and `/dev/zero` as `--tokenizer` was read until memory ran out.

use crate::common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;

const EXE: &str = env!("CARGO_BIN_EXE_cpm-generate");

/// A copy of the small fixture model with `name` a symlink to `target`.
fn model_with(name: &str, target: &Path) -> tempfile::TempDir {
    let copy = testkit::copy_dir(&model_dir("small"));
    let p = copy.path().join(name);
    let _ = std::fs::remove_file(&p);
    std::os::unix::fs::symlink(target, &p).unwrap();
    copy
}

#[test]
fn special_files_as_any_file_cpm_generate_reads_are_refused_at_once() {
    let d = tempfile::tempdir().unwrap();
    let small = model_dir("small");
    let tok = tokenizer("small");
    for special in testkit::special_files(d.path()) {
        let s = special.display().to_string();
        let args = |extra: &[&str]| -> Vec<String> {
            let mut a = vec![small.display().to_string(), "--ids".into()];
            a.extend(extra.iter().map(|x| x.to_string()));
            a
        };
        let runs = [
            ("--tokenizer", args(&["--prompt", "x", "--tokenizer", &s])),
            (
                "--prompt-file",
                args(&[
                    "--prompt-file",
                    &s,
                    "--tokenizer",
                    &tok.display().to_string(),
                ]),
            ),
        ];
        for (what, a) in runs {
            let r = testkit::run_refusing(EXE, &a);
            testkit::assert_not_regular(&r, &special, &format!("{what} {s}"));
        }
        // The files read from MODEL_DIR: the default tokenizer and the eos files.
        for name in ["spiece.model", "generation_config.json", "config.json"] {
            let m = model_with(name, &special);
            let a = [
                m.path().display().to_string(),
                "--prompt".into(),
                "x".into(),
            ];
            let r = testkit::run_refusing(EXE, &a);
            testkit::assert_not_regular(&r, &m.path().join(name), &format!("{name} -> {s}"));
        }
    }
}

#[test]
fn files_over_their_cap_are_refused_naming_the_cap() {
    let d = tempfile::tempdir().unwrap();
    let sparse = |name: &str, len: u64| {
        let p = d.path().join(name);
        std::fs::File::create(&p).unwrap().set_len(len).unwrap();
        p
    };
    let prompt = sparse("prompt.txt", (16 << 20) + 1);
    let model = sparse("big.model", cpm_tokenizer::spm::MAX_FILE_BYTES + 1);
    let generation = sparse("generation_config.json", (1 << 20) + 1);
    let small = model_dir("small").display().to_string();
    let tok = tokenizer("small").display().to_string();
    let (p, m) = (prompt.display().to_string(), model.display().to_string());
    let with_generation = model_with("generation_config.json", &generation);
    let wg = with_generation.path().display().to_string();
    for (file, cap, a) in [
        (
            &prompt,
            "16777216",
            vec![small.as_str(), "--prompt-file", &p, "--tokenizer", &tok],
        ),
        (
            &model,
            "67108864",
            vec![small.as_str(), "--prompt", "x", "--tokenizer", &m],
        ),
        (
            &generation,
            "1048576",
            vec![wg.as_str(), "--prompt-ids", "1"],
        ),
    ] {
        let mut a = a;
        a.push("--ids");
        let r = testkit::run_refusing(EXE, &a);
        let name = file.file_name().unwrap().to_string_lossy();
        assert_eq!(r.code, Some(2), "{name}: {r:?}");
        assert!(
            r.stderr.contains(&*name) && r.stderr.contains(cap),
            "{name}: the message names neither the file nor the cap {cap}: {}",
            r.stderr
        );
    }
}

/// SIGINT/SIGTERM while cpm-generate waits for its prompt on stdin (loading): it ends at once,
/// by the signal's default action (a shell reports 130/143), having printed nothing. No handler
/// may defer the signal.
#[test]
fn a_signal_while_loading_ends_it_at_once_with_nothing_printed() {
    for sig in [libc::SIGINT, libc::SIGTERM] {
        let logs = tempfile::tempdir().unwrap();
        let mut child = Command::new(EXE)
            .arg(model_dir("small"))
            .args(["--tokenizer".as_ref(), tokenizer("small").as_os_str()])
            .stdin(Stdio::piped())
            .stdout(std::fs::File::create(logs.path().join("stdout")).unwrap())
            .stderr(std::fs::File::create(logs.path().join("stderr")).unwrap())
            .spawn()
            .unwrap();
        // The model is read before the prompt; give it time to reach the read of stdin.
        std::thread::sleep(Duration::from_millis(500));
        assert!(
            child.try_wait().unwrap().is_none(),
            "ended before the signal"
        );
        let status = testkit::signal_and_wait(&mut child, sig);
        assert!(testkit::ended_by(status, sig), "signal {sig}: {status}");
        let out = std::fs::read_to_string(logs.path().join("stdout")).unwrap();
        assert!(out.is_empty(), "printed {out:?}");
        drop(child.stdin.take());
    }
}
