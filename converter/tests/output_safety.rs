//! OUT_DIR may never be, contain or lie inside an input (issue 8.1): with `--force`, such an
//! OUT_DIR was moved aside and deleted, taking the checkpoint with it. Every case runs on a
//! writable copy of the fixture checkpoint and checks that the refusal names both paths, exits 2,
//! and leaves every input byte where it was.

use std::path::{Path, PathBuf};
use std::process::Command;

const EXE: &str = env!("CARGO_BIN_EXE_cpm-convert");

/// A writable copy of `fixtures/tiny/ckpt` (tracker + `100/mp_rank_0{0,1}_model_states.pt`) at
/// `<tmp>/ckpt`.
fn checkpoint() -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let ckpt = tmp.path().join("ckpt");
    testkit::copy_tree(&testkit::fixtures().join("tiny/ckpt"), &ckpt);
    (tmp, ckpt)
}

fn convert_in(cwd: &Path, args: &[&str]) -> testkit::Run {
    let mut cmd = Command::new(EXE);
    cmd.args(args).current_dir(cwd);
    testkit::run_command(cmd)
}

/// Run in `cwd`, expect the refusal naming `out` and `input`, and the whole tree under `keep`
/// unchanged, with no staging directory made anywhere in it.
fn assert_refused(cwd: &Path, args: &[&str], out: &str, input: &str, keep: &Path) {
    let before = testkit::snapshot(keep);
    assert!(!before.is_empty());
    let r = convert_in(cwd, args);
    assert_eq!(r.code, Some(2), "{args:?}: {}", r.stderr);
    assert!(r.stderr.contains("refusing to write to"), "{}", r.stderr);
    assert!(
        r.stderr.contains(&format!("to {out} ")),
        "names OUT_DIR {out}: {}",
        r.stderr
    );
    assert!(
        r.stderr.contains(&format!("the input {input} ")),
        "names the input {input}: {}",
        r.stderr
    );
    assert_eq!(
        testkit::snapshot(keep),
        before,
        "{args:?} changed the input"
    );
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn out_dir_above_the_iteration_directory_is_refused() {
    let (tmp, ckpt) = checkpoint();
    let it = ckpt.join("100");
    for force in [&["--force"][..], &[]] {
        let mut args = vec![s(&it), "-o", s(&ckpt)];
        args.extend(force);
        assert_refused(tmp.path(), &args, s(&ckpt), s(&it), tmp.path());
    }
}

#[test]
fn out_dir_equal_to_the_input_is_refused() {
    let (tmp, ckpt) = checkpoint();
    let args = [s(&ckpt), "-o", s(&ckpt), "--force"];
    assert_refused(tmp.path(), &args, s(&ckpt), s(&ckpt), tmp.path());
}

#[test]
fn out_dir_dot_inside_the_checkpoint_is_refused() {
    let (tmp, ckpt) = checkpoint();
    // The reported case: run from inside the checkpoint.
    assert_refused(&ckpt, &[".", "-o", ".", "--force"], ".", ".", tmp.path());
    // From inside the iteration directory, with the root as input: `.` lies inside INPUT.
    let it = ckpt.join("100");
    assert_refused(
        &it,
        &[s(&ckpt), "-o", ".", "--force"],
        ".",
        s(&ckpt),
        tmp.path(),
    );
}

#[test]
fn out_dir_spelled_with_dot_dot_is_refused() {
    let (tmp, ckpt) = checkpoint();
    let it = ckpt.join("100");
    let out = format!("{}/..", s(&it));
    let args = [s(&it), "-o", &out, "--force"];
    assert_refused(tmp.path(), &args, &out, s(&it), tmp.path());
}

#[test]
fn out_dir_through_a_symlink_is_refused() {
    let (tmp, ckpt) = checkpoint();
    let alias = tmp.path().join("alias");
    std::os::unix::fs::symlink(&ckpt, &alias).unwrap();
    let it = ckpt.join("100");
    // OUT_DIR is a symlink to the checkpoint root.
    let args = [s(&it), "-o", s(&alias), "--force"];
    assert_refused(tmp.path(), &args, s(&alias), s(&it), tmp.path());
    // The input is spelled through the symlink, OUT_DIR is the real root.
    let via = alias.join("100");
    let args = [s(&via), "-o", s(&ckpt), "--force"];
    assert_refused(tmp.path(), &args, s(&ckpt), s(&via), tmp.path());
}

#[test]
fn out_dir_holding_a_symlinked_iteration_directory_is_refused() {
    // The tracker's iteration directory is a symlink to a folder elsewhere: replacing that
    // folder would delete the rank files although it is nowhere under INPUT.
    let tmp = tempfile::tempdir().unwrap();
    let ckpt = tmp.path().join("ckpt");
    let data = tmp.path().join("data");
    testkit::copy_tree(
        &testkit::fixtures().join("tiny/ckpt/100"),
        &data.join("ranks"),
    );
    std::fs::create_dir(&ckpt).unwrap();
    std::fs::write(ckpt.join("latest_checkpointed_iteration.txt"), "100\n").unwrap();
    std::os::unix::fs::symlink(data.join("ranks"), ckpt.join("100")).unwrap();
    let args = [s(&ckpt), "-o", s(&data), "--force"];
    let it = ckpt.join("100");
    assert_refused(tmp.path(), &args, s(&data), s(&it), tmp.path());
}

#[test]
fn out_dir_inside_the_input_is_refused_even_when_missing() {
    let (tmp, ckpt) = checkpoint();
    let out = ckpt.join("100/hf");
    let args = [s(&ckpt), "-o", s(&out)];
    assert_refused(tmp.path(), &args, s(&out), s(&ckpt), tmp.path());
    assert!(!out.exists());
}

#[test]
fn out_dir_holding_the_mapping_file_is_refused() {
    let (tmp, ckpt) = checkpoint();
    let maps = tmp.path().join("maps");
    std::fs::create_dir(&maps).unwrap();
    let map = maps.join("cpm-lm.toml");
    std::fs::copy(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../mappings/cpm-lm.toml"),
        &map,
    )
    .unwrap();
    let args = [s(&ckpt), "-o", s(&maps), "--force", "--mapping", s(&map)];
    assert_refused(tmp.path(), &args, s(&maps), s(&map), tmp.path());
}

#[test]
fn out_dir_beside_the_input_is_written() {
    // The check must not refuse the ordinary case: a sibling whose name starts like the input's.
    let (tmp, ckpt) = checkpoint();
    let out = tmp.path().join("ckpt-hf");
    let before = testkit::snapshot(&ckpt);
    let r = convert_in(tmp.path(), &["ckpt", "-o", "ckpt-hf", "--quiet"]);
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    assert!(out.join("model.safetensors").is_file());
    assert_eq!(testkit::snapshot(&ckpt), before);
}
