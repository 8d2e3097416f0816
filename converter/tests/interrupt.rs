//! A conversion stopped part-way leaves OUT_DIR absent or as it was:
//!
//! - SIGINT/SIGTERM: the staging directory is removed, the exit code is 130/143 and the message
//!   says nothing was written (issue 8.7);
//! - SIGKILL (no code of ours runs): the next run recognises the killed run's staging directory
//!   by its name and dead process id, removes it with a notice, and succeeds;
//! - SIGBUS (an input truncated under us): one line names the likely cause, exit 135;
//! - a write past `ulimit -f`: an ordinary write error (exit 2), nothing left behind.
//!
//! The binary under test is built with the `test-hooks` feature (the crate's dev-dependency on
//! itself): `CPM_CONVERT_TEST_PAUSE_AFTER=N` with `CPM_CONVERT_TEST_PAUSE_DIR=D` makes it create
//! `D/paused` after N tensors are in the staging directory's stream and wait for `D/resume`, a
//! stop signal, or 60 s. Tests wait for `paused` instead of sleeping a guessed time.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

fn fixtures() -> PathBuf {
    testkit::fixtures().join("tiny")
}

/// A conversion paused after 3 tensors, with its output in files under `logs`.
struct Paused {
    child: Child,
    logs: tempfile::TempDir,
    staging: PathBuf,
}

/// cpm-convert INPUT -o OUT EXTRA... with a test-hook pause (`hook`: its variable and value),
/// stdout and stderr logged in the returned folder, where the hook also marks the pause.
fn spawn_with_hook(
    input: &Path,
    out: &Path,
    extra: &[&str],
    hook: (&str, String),
) -> (Child, tempfile::TempDir) {
    let logs = tempfile::tempdir().unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_cpm-convert"))
        .arg(input)
        .arg("-o")
        .arg(out)
        .args(extra)
        .env(hook.0, hook.1)
        .env("CPM_CONVERT_TEST_PAUSE_DIR", logs.path())
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(logs.path().join("stdout")).unwrap())
        .stderr(std::fs::File::create(logs.path().join("stderr")).unwrap())
        .spawn()
        .expect("spawn cpm-convert");
    (child, logs)
}

impl Paused {
    fn start(input: &Path, out: &Path, extra: &[&str]) -> Paused {
        Paused::start_after(input, out, extra, 3)
    }

    fn start_after(input: &Path, out: &Path, extra: &[&str], tensors: usize) -> Paused {
        let pause = ("CPM_CONVERT_TEST_PAUSE_AFTER", tensors.to_string());
        let (child, logs) = spawn_with_hook(input, out, extra, pause);
        let staging = staging_of(out, child.id());
        let mut p = Paused {
            child,
            logs,
            staging,
        };
        p.wait_paused();
        p
    }

    /// Wait until the hook says it paused mid-stream, with the model file open in staging.
    fn wait_paused(&mut self) {
        let start = Instant::now();
        while !self.logs.path().join("paused").exists() {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "cpm-convert ended ({status}) before it paused: {}",
                    self.stderr()
                );
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "no pause after 30 s"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        assert!(
            self.staging.join("model.safetensors").is_file(),
            "paused with no model file in {}",
            self.staging.display()
        );
    }

    fn signal(&self, sig: libc::c_int) {
        let pid = libc::pid_t::try_from(self.child.id()).unwrap();
        // SAFETY: kill(2) on our own child's pid; it touches no memory.
        assert_eq!(unsafe { libc::kill(pid, sig) }, 0, "kill({pid}, {sig})");
    }

    fn resume(&self) {
        std::fs::write(self.logs.path().join("resume"), b"").unwrap();
    }

    /// Wait for the end, failing the test after 30 s.
    fn wait(&mut self) -> ExitStatus {
        let start = Instant::now();
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s;
            }
            if start.elapsed() > Duration::from_secs(30) {
                let _ = self.child.kill();
                panic!("cpm-convert did not stop within 30 s: {}", self.stderr());
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    fn stdout(&self) -> String {
        std::fs::read_to_string(self.logs.path().join("stdout")).unwrap()
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(self.logs.path().join("stderr")).unwrap()
    }
}

fn staging_of(out: &Path, pid: u32) -> PathBuf {
    let name = out.file_name().unwrap().to_string_lossy();
    out.with_file_name(format!(".{name}.cpm-convert-tmp.{pid}"))
}

/// SIGKILL the paused run; no destructor of ours runs.
fn kill_mid_write(out: &Path, extra: &[&str]) -> PathBuf {
    let mut p = Paused::start(&fixtures().join("ckpt"), out, extra);
    p.child.kill().expect("SIGKILL"); // std's kill() is SIGKILL on Unix
    let status = p.wait();
    assert!(
        status.code().is_none(),
        "killed by a signal, not exited: {status}"
    );
    p.staging.clone()
}

fn run(out: &Path, extra: &[&str]) -> testkit::Run {
    let mut args = vec![
        fixtures().join("ckpt").into_os_string(),
        "-o".into(),
        out.into(),
    ];
    args.extend(extra.iter().map(Into::into));
    testkit::run(env!("CARGO_BIN_EXE_cpm-convert"), &args, &[])
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
    let staging = kill_mid_write(&out, &[]);

    assert!(!out.exists(), "OUT_DIR exists after the run was killed");
    assert!(
        staging.join("model.safetensors").is_file(),
        "the killed run's partial staging directory is what the next run must clean up"
    );

    let o = run(&out, &[]);
    let err = &o.stderr;
    assert!(o.code == Some(0), "{err}");
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
    let staging = kill_mid_write(&out, &["--force"]);

    assert_eq!(
        std::fs::read_to_string(out.join("keep.txt")).unwrap(),
        "old result",
        "a killed --force run must leave the old OUT_DIR as it was"
    );
    assert_eq!(entries(&out), vec!["keep.txt".to_string()]);
    assert!(staging.exists());

    // Without --force the old content is still refused; with it, replaced whole.
    let o = run(&out, &[]);
    assert_eq!(o.code, Some(2));
    assert!(o.stderr.contains("not empty"));
    let o = run(&out, &["--force"]);
    assert!(o.code == Some(0), "{}", o.stderr);
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
    assert!(o.code == Some(0), "{}", o.stderr);
    assert!(
        live.exists(),
        "a running process's staging directory was removed"
    );
    assert!(!o.stderr.contains("killed"));
}

#[test]
fn sigint_exits_130_and_leaves_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let mut p = Paused::start(&fixtures().join("ckpt"), &out, &[]);
    p.signal(libc::SIGINT);
    let status = p.wait();
    assert_eq!(status.code(), Some(130), "{status}: {}", p.stderr());
    assert_eq!(p.stderr(), "cpm-convert: interrupted: nothing written\n");
    assert!(p.stdout().is_empty());
    assert!(!out.exists(), "OUT_DIR created by an interrupted run");
    assert!(entries(tmp.path()).is_empty(), "staging left behind");
}

#[test]
fn sigterm_exits_143_and_keeps_the_old_output() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    std::fs::create_dir(&out).unwrap();
    std::fs::write(out.join("keep.txt"), "old result").unwrap();
    let mut p = Paused::start(&fixtures().join("ckpt"), &out, &["--force"]);
    p.signal(libc::SIGTERM);
    let status = p.wait();
    assert_eq!(status.code(), Some(143), "{status}: {}", p.stderr());
    assert!(
        p.stderr().contains("interrupted: nothing written"),
        "{}",
        p.stderr()
    );
    assert_eq!(entries(&out), vec!["keep.txt".to_string()]);
    assert_eq!(
        std::fs::read_to_string(out.join("keep.txt")).unwrap(),
        "old result"
    );
    assert_eq!(entries(tmp.path()), vec!["out".to_string()], "staging left");
}

#[test]
fn sigint_with_json_reports_the_interruption_as_the_json_error() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let mut p = Paused::start(&fixtures().join("ckpt"), &out, &["--json"]);
    p.signal(libc::SIGINT);
    assert_eq!(p.wait().code(), Some(130), "{}", p.stderr());
    let v: serde_json::Value = serde_json::from_str(&p.stdout()).expect("one JSON object");
    assert_eq!(v["error"], "interrupted: nothing written");
    assert!(p.stderr().is_empty(), "stderr: {}", p.stderr());
    assert!(entries(tmp.path()).is_empty());
}

#[test]
fn an_input_truncated_during_the_run_is_named_as_the_cause() {
    // A writable copy of the checkpoint whose rank files we cut to nothing while the converter
    // has them mapped: the next read of a mapped page raises SIGBUS.
    let tmp = tempfile::tempdir().unwrap();
    let ranks = testkit::copy_dir(&fixtures().join("ckpt/100"));
    let out = tmp.path().join("out");
    let mut p = Paused::start_after(ranks.path(), &out, &[], 1);
    for r in ["mp_rank_00_model_states.pt", "mp_rank_01_model_states.pt"] {
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(ranks.path().join(r))
            .unwrap();
        f.set_len(0).unwrap();
    }
    p.resume();
    let status = p.wait();
    assert_eq!(status.code(), Some(135), "{status}: {}", p.stderr());
    assert_eq!(p.stderr().lines().count(), 1, "one line: {}", p.stderr());
    assert!(
        p.stderr()
            .contains("an input file changed or was truncated during the conversion"),
        "{}",
        p.stderr()
    );
    assert!(!out.exists());
    // The handler may only _exit: the staging directory stays for the next run to remove.
    assert!(p.staging.exists());
}

#[test]
fn a_write_past_the_file_size_limit_is_an_error_and_leaves_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_cpm-convert"));
    cmd.arg(fixtures().join("ckpt")).arg("-o").arg(&out);
    // The model file is 331 KiB; the limit lets the messages through but not the model.
    testkit::limit_child(&mut cmd, testkit::ChildLimit::FileSize(64 << 10));
    let r = testkit::run_command(cmd);
    assert_eq!(r.code, Some(2), "killed by SIGXFSZ? {r:?}");
    assert!(
        r.stderr.contains("model.safetensors") && r.stderr.contains("File too large"),
        "{}",
        r.stderr
    );
    assert!(entries(tmp.path()).is_empty(), "left behind");
}

/// A run held in a read that blocks while loading (the test hook stands for a slow disk; a FIFO
/// did this before such files were refused): the first signal ends it at once, 128 + signal,
/// with nothing written and an existing OUT_DIR as it was. Before, the first SIGINT/SIGTERM was
/// only noted for the conversion phase, and the run went on waiting.
fn signal_while_loading(sig: libc::c_int, extra: &[&str]) -> (ExitStatus, String, String) {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    std::fs::create_dir(&out).unwrap();
    std::fs::write(out.join("keep.txt"), "old result").unwrap();
    let args = [&["--force"], extra].concat();
    let pause = ("CPM_CONVERT_TEST_PAUSE_LOADING", "1".to_string());
    let (mut child, logs) = spawn_with_hook(&fixtures().join("ckpt"), &out, &args, pause);
    let start = Instant::now();
    while !logs.path().join("paused").exists() {
        assert!(
            child.try_wait().unwrap().is_none(),
            "cpm-convert ended before it reached the loading pause"
        );
        assert!(start.elapsed() < Duration::from_secs(30), "no pause");
        std::thread::sleep(Duration::from_millis(5));
    }
    // The first signal must stop a run blocked while loading (within testkit's 10 s).
    let status = testkit::signal_and_wait(&mut child, sig);
    assert_eq!(entries(&out), vec!["keep.txt".to_string()]);
    assert_eq!(entries(tmp.path()), vec!["out".to_string()], "left behind");
    let read = |n: &str| std::fs::read_to_string(logs.path().join(n)).unwrap();
    (status, read("stdout"), read("stderr"))
}

#[test]
fn sigint_while_loading_exits_130_at_once_and_leaves_nothing() {
    let (status, stdout, stderr) = signal_while_loading(libc::SIGINT, &[]);
    assert_eq!(status.code(), Some(130), "{status}: {stderr}");
    assert_eq!(stderr, "cpm-convert: interrupted: nothing written\n");
    assert!(stdout.is_empty());
}

#[test]
fn sigterm_while_loading_exits_143_at_once_and_leaves_nothing() {
    let (status, stdout, stderr) = signal_while_loading(libc::SIGTERM, &["--json"]);
    assert_eq!(status.code(), Some(143), "{status}: {stderr}");
    let v: serde_json::Value = serde_json::from_str(&stdout).expect("one JSON object");
    assert_eq!(v["error"], "interrupted: nothing written");
    assert!(stderr.is_empty(), "{stderr}");
}
