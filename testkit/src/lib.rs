//! Test support shared by the workspace's crates (a dev-dependency only; never in a binary).
//!
//! - [`run`]: run a binary with its output in files (a chatty child never blocks on a full pipe)
//!   and a deadline (a hang fails the test instead of stalling CI).
//! - [`copy_dir`] and [`fixtures`]: writable copies of the committed fixtures.
//! - [`CountingAlloc`]: a global allocator that tracks the heap's peak, for tests that bound what
//!   an input may make a reader allocate.
//! - [`messages`]: the tools' one error prefix, and advice that names only flags they have.

use std::alloc::{GlobalAlloc, Layout, System};
use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

pub mod messages;

/// Longest any single run may take; the slowest hostile case needs well under a second.
pub const DEADLINE: Duration = Duration::from_secs(60);

/// The workspace's `fixtures/` directory. Found from the crate under test (cargo sets
/// `CARGO_MANIFEST_DIR` when it runs a test), so a build copied from another checkout of the
/// workspace still reads this checkout's fixtures; testkit's own directory is the fallback.
pub fn fixtures() -> PathBuf {
    let crate_dir = std::env::var_os("CARGO_MANIFEST_DIR")
        .map_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")), PathBuf::from);
    crate_dir.join("../fixtures")
}

/// What a finished run printed and how it ended.
#[derive(Debug)]
pub struct Run {
    /// The exit code; `None` when a signal ended the process.
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

/// Run `exe` with `args` and extra environment `env`, stdin closed, killing it (and failing the
/// test) if it outlives [`DEADLINE`].
pub fn run<S: AsRef<OsStr>>(exe: &str, args: &[S], env: &[(&str, &str)]) -> Run {
    let mut cmd = Command::new(exe);
    cmd.args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    run_command(cmd)
}

/// [`run`] for a prepared command (a working directory, a cleared environment).
pub fn run_command(cmd: Command) -> Run {
    run_command_within(cmd, DEADLINE)
}

/// [`run_command`] failing the test after `deadline` instead of [`DEADLINE`].
pub fn run_command_within(mut cmd: Command, deadline: Duration) -> Run {
    let logs = tempfile::tempdir().expect("temporary directory for the child's output");
    let (out_path, err_path) = (logs.path().join("stdout"), logs.path().join("stderr"));
    cmd.stdin(Stdio::null())
        .stdout(std::fs::File::create(&out_path).expect("stdout file"))
        .stderr(std::fs::File::create(&err_path).expect("stderr file"));
    let mut child = cmd.spawn().expect("spawn the binary under test");
    let start = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait for the child") {
            break s;
        }
        if start.elapsed() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "{cmd:?} still running after {deadline:?} (hang); stderr so far: {}",
                std::fs::read_to_string(&err_path).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    Run {
        code: status.code(),
        stdout: std::fs::read_to_string(&out_path).unwrap_or_default(),
        stderr: std::fs::read_to_string(&err_path).unwrap_or_default(),
    }
}

/// A writable copy of a flat fixture directory (files only).
pub fn copy_dir(src: &Path) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("temporary directory");
    for entry in std::fs::read_dir(src).expect("list the fixture directory") {
        let entry = entry.expect("fixture directory entry");
        if entry.path().is_file() {
            std::fs::copy(entry.path(), dir.path().join(entry.file_name())).expect("copy");
        }
    }
    dir
}

/// `n` bytes of deterministic noise (xorshift64) for random-file cases: the same `seed` gives the
/// same bytes, so a failing case can be rebuilt.
pub fn noise(seed: u64, n: usize) -> Vec<u8> {
    let mut x = 0x9e37_79b9_7f4a_7c15u64 ^ seed;
    if x == 0 {
        x = 1; // xorshift never leaves zero
    }
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// A global allocator that counts live heap bytes and their peak. Install it in a test binary
/// with `#[global_allocator] static A: testkit::CountingAlloc = testkit::CountingAlloc;` and
/// measure with [`peak_heap_during`]. Counts are process-wide: measure in one test function that
/// runs its cases one after another.
pub struct CountingAlloc;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every call is forwarded to the system allocator unchanged; we only count sizes.
unsafe impl GlobalAlloc for CountingAlloc {
    // SAFETY (each method): the caller's contract is GlobalAlloc's, passed on to `System` as is.
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = System.alloc(layout);
        if !p.is_null() {
            grow(layout.size());
        }
        p
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let p = System.alloc_zeroed(layout);
        if !p.is_null() {
            grow(layout.size());
        }
        p
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout);
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let p = System.realloc(ptr, layout, new_size);
        if !p.is_null() {
            LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
            grow(new_size);
        }
        p
    }
}

fn grow(n: usize) {
    let now = LIVE.fetch_add(n, Ordering::Relaxed) + n;
    PEAK.fetch_max(now, Ordering::Relaxed);
}

/// Run `f` and return its result with the heap's peak above what was live when it started.
/// Memory-mapped files are not heap and are not counted (they are bounded by the file itself).
///
/// The caller must hold [`alone`] (else another test's allocations would count), and a binary
/// without [`CountingAlloc`] installed panics here instead of measuring nothing.
pub fn peak_heap_during<T>(f: impl FnOnce() -> T) -> (T, usize) {
    assert!(
        ALONE_HERE.with(std::cell::Cell::get),
        "take testkit::alone() first: heap counts are process-wide"
    );
    let base = LIVE.load(Ordering::Relaxed);
    assert!(
        base > 0,
        "no heap counted: install testkit::CountingAlloc as the #[global_allocator]"
    );
    PEAK.store(base, Ordering::Relaxed);
    let out = f();
    let peak = PEAK.load(Ordering::Relaxed);
    (out, peak.saturating_sub(base))
}

static ALONE: std::sync::Mutex<()> = std::sync::Mutex::new(());
thread_local!(static ALONE_HERE: std::cell::Cell<bool> = const { std::cell::Cell::new(false) });

/// While held, no other test of this process that takes it runs: a test that measures the heap
/// takes it first, so the tests of one binary measure one at a time.
pub struct Alone {
    _turn: std::sync::MutexGuard<'static, ()>,
}

impl Drop for Alone {
    fn drop(&mut self) {
        ALONE_HERE.with(|c| c.set(false));
    }
}

/// Waits for every other measuring test to finish; see [`Alone`].
pub fn alone() -> Alone {
    let turn = ALONE
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    ALONE_HERE.with(|c| c.set(true));
    Alone { _turn: turn }
}

/// The bound every reader must keep on hostile input: 4 x the input's size + 64 MiB.
pub fn heap_bound(input_bytes: u64) -> usize {
    usize::try_from(input_bytes.saturating_mul(4)).unwrap_or(usize::MAX) + (64 << 20)
}

/// Copies the tree at `src` into `dst` (created), directories recursively.
pub fn copy_tree(src: &Path, dst: &Path) {
    std::fs::create_dir_all(dst).expect("create the copy's directory");
    for e in std::fs::read_dir(src).expect("list the source").flatten() {
        let to = dst.join(e.file_name());
        if e.path().is_dir() {
            copy_tree(&e.path(), &to);
        } else {
            std::fs::copy(e.path(), to).expect("copy");
        }
    }
}

/// Every regular file under `dir` (symlinks not followed) with its bytes, to show that a run
/// left its input as it was.
pub fn snapshot(dir: &Path) -> std::collections::BTreeMap<PathBuf, Vec<u8>> {
    let mut files = std::collections::BTreeMap::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).expect("list the directory").flatten() {
            let t = e.file_type().expect("file type");
            if t.is_dir() {
                todo.push(e.path());
            } else if t.is_file() {
                files.insert(e.path(), std::fs::read(e.path()).expect("read"));
            }
        }
    }
    files
}

/// Nothing at OUT_DIR and no `cpm-convert` staging directory beside it: a failed run left no trace.
pub fn assert_nothing_left(out: &Path) {
    assert!(
        !out.exists(),
        "{} was created by a failed run",
        out.display()
    );
    let parent = out.parent().expect("OUT_DIR has a parent");
    let leftovers: Vec<_> = std::fs::read_dir(parent)
        .expect("list OUT_DIR's parent")
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().contains("cpm-convert-"))
        .collect();
    assert!(leftovers.is_empty(), "staging left behind: {leftovers:?}");
}

/// How long a tool may take to refuse a file that is not regular (it should take milliseconds;
/// reading `/dev/zero` instead would take this long to fill the heap limit below).
pub const REFUSAL_DEADLINE: Duration = Duration::from_secs(20);

/// The heap (data segment and private mappings, `RLIMIT_DATA`) a tool may use while refusing a
/// file, so that a tool that reads `/dev/zero` fails its test instead of exhausting memory.
pub const REFUSAL_HEAP: u64 = 2 << 30;

/// A FIFO at `path`.
pub fn mkfifo(path: &Path) {
    let _ = std::fs::remove_file(path);
    let ok = Command::new("mkfifo")
        .arg(path)
        .status()
        .expect("run mkfifo")
        .success();
    assert!(ok, "mkfifo {}", path.display());
}

/// The files that are not regular that every file argument must refuse at once: a FIFO
/// (created in `dir`), which blocks an open or a read, and `/dev/zero`, which never ends.
pub fn special_files(dir: &Path) -> Vec<PathBuf> {
    let fifo = dir.join("fifo");
    mkfifo(&fifo);
    vec![fifo, PathBuf::from("/dev/zero")]
}

/// Runs `exe` with `args` as [`run`] does, but under [`REFUSAL_DEADLINE`] and [`REFUSAL_HEAP`]:
/// for runs that must refuse a file at once.
pub fn run_refusing<S: AsRef<OsStr>>(exe: &str, args: &[S]) -> Run {
    let mut cmd = Command::new(exe);
    cmd.args(args);
    limit_child(&mut cmd, ChildLimit::Heap(REFUSAL_HEAP));
    run_command_within(cmd, REFUSAL_DEADLINE)
}

/// A resource limit for a child process.
#[derive(Debug, Clone, Copy)]
pub enum ChildLimit {
    /// `RLIMIT_DATA`: the heap, in bytes.
    Heap(u64),
    /// `RLIMIT_FSIZE`: the largest file it may write, in bytes (past it, SIGXFSZ or EFBIG).
    FileSize(u64),
}

/// Makes `cmd`'s child start under `limit` (set between fork and exec).
pub fn limit_child(cmd: &mut Command, limit: ChildLimit) {
    use std::os::unix::process::CommandExt;
    let (resource, bytes) = match limit {
        ChildLimit::Heap(b) => (libc::RLIMIT_DATA, b),
        ChildLimit::FileSize(b) => (libc::RLIMIT_FSIZE, b),
    };
    let rlimit = libc::rlimit {
        rlim_cur: bytes,
        rlim_max: bytes,
    };
    // SAFETY: setrlimit is async-signal-safe and reads only the struct copied into the closure.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setrlimit(resource, &rlimit) == 0 {
                Ok(())
            } else {
                Err(std::io::Error::last_os_error())
            }
        });
    }
}

/// Limits this process's heap ([`REFUSAL_HEAP`] as `RLIMIT_DATA`): for in-process tests of
/// readers given `/dev/zero`, so that a reader that reads it whole fails instead of exhausting
/// the machine's memory.
pub fn limit_own_heap() {
    let limit = libc::rlimit {
        rlim_cur: REFUSAL_HEAP,
        rlim_max: REFUSAL_HEAP,
    };
    // SAFETY: setrlimit reads only the given struct.
    let rc = unsafe { libc::setrlimit(libc::RLIMIT_DATA, &limit) };
    assert_eq!(rc, 0, "setrlimit: {}", std::io::Error::last_os_error());
}

/// `r` refused `file` as not a regular file: exit 2, and a message (stderr, else stdout for
/// `--json`) that names the file and says "not a regular file".
pub fn assert_not_regular(r: &Run, file: &Path, what: &str) {
    let msg = format!("{}{}", r.stderr, r.stdout);
    assert_eq!(r.code, Some(2), "{what}: {r:?}");
    assert!(
        msg.contains(&*file.to_string_lossy()) && msg.contains("not a regular file"),
        "{what}: the message does not name {} as not a regular file: {msg}",
        file.display()
    );
    assert!(!msg.contains("panicked"), "{what}: {msg}");
}

/// Sends `sig` to `child` and waits for it to end, failing the test (and killing the child) if
/// it has not ended within 10 s. Returns how it ended.
pub fn signal_and_wait(child: &mut std::process::Child, sig: i32) -> std::process::ExitStatus {
    let pid = libc::pid_t::try_from(child.id()).expect("a child's pid fits pid_t");
    // SAFETY: kill(2) on our own child's pid, which it keeps until we reap it below.
    assert_eq!(unsafe { libc::kill(pid, sig) }, 0, "kill({pid}, {sig})");
    let start = std::time::Instant::now();
    loop {
        if let Some(status) = child.try_wait().expect("wait for the child") {
            return status;
        }
        if start.elapsed() > Duration::from_secs(10) {
            let _ = child.kill();
            let _ = child.wait();
            panic!("signal {sig} ignored for 10 s");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Whether `status` is an end by `sig`: killed by it, or exited `128 + sig` as a handler does.
pub fn ended_by(status: std::process::ExitStatus, sig: i32) -> bool {
    use std::os::unix::process::ExitStatusExt;
    status.signal() == Some(sig) || status.code() == Some(128 + sig)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[global_allocator]
    static A: CountingAlloc = CountingAlloc;

    #[test]
    fn peak_counts_a_large_allocation_and_ignores_freed_ones() {
        let _alone = alone();
        let (_, peak) = peak_heap_during(|| {
            let v = vec![1u8; 8 << 20];
            std::hint::black_box(&v);
        });
        assert!(peak >= 8 << 20, "peak {peak}");
        let (_, small) = peak_heap_during(|| std::hint::black_box(vec![0u8; 1000]).len());
        assert!(
            small < 8 << 20,
            "the earlier, freed allocation leaked into the peak: {small}"
        );
    }

    #[test]
    fn a_finished_child_reports_its_exit_code() {
        let run = run("true", &[] as &[&str], &[]);
        assert_eq!(run.code, Some(0));
    }
}
