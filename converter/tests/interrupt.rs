//! A conversion killed part-way (SIGKILL, so no destructor runs) leaves OUT_DIR absent or as it
//! was, and the next run recognises the killed run's staging directory by its name and dead
//! process id, removes it with a notice, and succeeds.
//!
//! The converter's test hook `CPM_CONVERT_TEST_PAUSE_AFTER=N` makes it sleep 60 s after writing
//! N tensors into the staging directory, which gives the test a moment to kill it mid-write.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/tiny")
}

fn spawn_paused(out: &Path, extra: &[&str]) -> Child {
    Command::new(env!("CARGO_BIN_EXE_cpm-convert"))
        .arg(fixtures().join("ckpt"))
        .arg("-o")
        .arg(out)
        .args(extra)
        .env("CPM_CONVERT_TEST_PAUSE_AFTER", "3")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn cpm-convert")
}

fn staging_of(out: &Path, pid: u32) -> PathBuf {
    let name = out.file_name().unwrap().to_string_lossy();
    out.with_file_name(format!(".{name}.cpm-convert-tmp.{pid}"))
}

/// Wait until the child has started writing tensors into its staging directory, then SIGKILL it.
fn kill_mid_write(mut child: Child, out: &Path) -> PathBuf {
    let staging = staging_of(out, child.id());
    let model = staging.join("model.safetensors");
    let start = Instant::now();
    while !model.is_file() {
        if let Ok(Some(status)) = child.try_wait() {
            panic!("cpm-convert ended ({status}) before it could be interrupted");
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "no staging directory {} after 30 s",
            staging.display()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    // Give it the moment it needs to reach the pause after tensor 3 (the test hook sleeps 60 s).
    std::thread::sleep(Duration::from_millis(200));
    child.kill().expect("SIGKILL"); // std's kill() is SIGKILL on Unix
    let status = child.wait().unwrap();
    assert!(
        status.code().is_none(),
        "killed by a signal, not exited: {status}"
    );
    staging
}

fn run(out: &Path, extra: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_cpm-convert"))
        .arg(fixtures().join("ckpt"))
        .arg("-o")
        .arg(out)
        .args(extra)
        .output()
        .expect("run cpm-convert")
}

fn assert_complete(out: &Path) {
    let o = Command::new("sha256sum")
        .args(["-c", "SHA256SUMS"])
        .current_dir(out)
        .output()
        .expect("sha256sum");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stdout));
    let expected = std::fs::read(fixtures().join("hf/model.safetensors")).unwrap();
    let ours = std::fs::read(out.join("model.safetensors")).unwrap();
    let (a, b) = (
        safetensors::SafeTensors::deserialize(&expected).unwrap(),
        safetensors::SafeTensors::deserialize(&ours).unwrap(),
    );
    for (name, t) in a.tensors() {
        assert_eq!(b.tensor(&name).unwrap().data(), t.data(), "{name}");
    }
}

fn entries(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

#[test]
fn killed_conversion_leaves_no_output_and_the_next_run_cleans_up() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let staging = kill_mid_write(spawn_paused(&out, &[]), &out);

    assert!(!out.exists(), "OUT_DIR exists after the run was killed");
    assert!(
        staging.join("model.safetensors").is_file(),
        "the killed run's partial staging directory is what the next run must clean up"
    );

    let o = run(&out, &[]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(err.contains("killed"), "the removal is reported: {err}");
    assert!(
        err.contains(&*staging.file_name().unwrap().to_string_lossy()),
        "the notice names the directory: {err}"
    );
    assert!(!staging.exists(), "stale staging directory still there");
    assert_eq!(entries(tmp.path()), vec!["out".to_string()]);
    assert_complete(&out);
}

#[test]
fn killed_forced_replacement_keeps_the_old_output() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    std::fs::create_dir(&out).unwrap();
    std::fs::write(out.join("keep.txt"), "old result").unwrap();
    let staging = kill_mid_write(spawn_paused(&out, &["--force"]), &out);

    assert_eq!(
        std::fs::read_to_string(out.join("keep.txt")).unwrap(),
        "old result",
        "a killed --force run must leave the old OUT_DIR as it was"
    );
    assert_eq!(entries(&out), vec!["keep.txt".to_string()]);
    assert!(staging.exists());

    // Without --force the old content is still refused; with it, replaced whole.
    let o = run(&out, &[]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("not empty"));
    let o = run(&out, &["--force"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(!out.join("keep.txt").exists());
    assert!(!staging.exists());
    assert_eq!(entries(tmp.path()), vec!["out".to_string()]);
    assert_complete(&out);
}

#[test]
fn a_live_runs_staging_directory_is_left_alone() {
    // Our own parent (the test harness) is alive: a directory carrying its pid is not stale.
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let live = staging_of(&out, std::process::id());
    std::fs::create_dir(&live).unwrap();
    let o = run(&out, &[]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(
        live.exists(),
        "a running process's staging directory was removed"
    );
    assert!(!String::from_utf8_lossy(&o.stderr).contains("killed"));
}
