//! Test-only pause, compiled in only with the `test-hooks` feature, which only the crate's own
//! tests enable (through a dev-dependency on itself): a release build ignores these variables.
//!
//! `CPM_CONVERT_TEST_PAUSE_AFTER=N`: after the N-th tensor, create `paused` in the directory
//! `CPM_CONVERT_TEST_PAUSE_DIR` (if set), then wait until `resume` appears there, a stop signal
//! arrives, or 60 s pass. `CPM_CONVERT_TEST_PAUSE_LOADING=1`: before the input is opened,
//! create `paused` there and wait for `resume` or 60 s, ignoring stop requests (a blocked read).

use std::cell::Cell;
use std::path::PathBuf;
use std::time::{Duration, Instant};

pub struct Pause {
    after: usize,
    dir: Option<PathBuf>,
    done: Cell<usize>,
}

impl Pause {
    pub fn from_env() -> Option<Pause> {
        let after = std::env::var("CPM_CONVERT_TEST_PAUSE_AFTER")
            .ok()?
            .parse()
            .ok()?;
        let dir = std::env::var_os("CPM_CONVERT_TEST_PAUSE_DIR").map(PathBuf::from);
        Some(Pause {
            after,
            dir,
            done: Cell::new(0),
        })
    }

    /// Stands for a read that blocks while loading (a slow disk, a network file system):
    /// creates `paused` and waits for `resume` or 60 s, deaf to stop requests as a blocked
    /// read is.
    pub fn block_while_loading() -> Option<()> {
        std::env::var_os("CPM_CONVERT_TEST_PAUSE_LOADING")?;
        let dir = PathBuf::from(std::env::var_os("CPM_CONVERT_TEST_PAUSE_DIR")?);
        let _ = std::fs::write(dir.join("paused"), b"");
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(60) && !dir.join("resume").exists() {
            std::thread::sleep(Duration::from_millis(5));
        }
        Some(())
    }

    /// Called after each tensor.
    pub fn after_tensor(&self, cancelled: &dyn Fn() -> bool) {
        self.done.set(self.done.get() + 1);
        if self.done.get() != self.after {
            return;
        }
        if let Some(d) = &self.dir {
            let _ = std::fs::write(d.join("paused"), b"");
        }
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(60) && !cancelled() {
            if self.dir.as_ref().is_some_and(|d| d.join("resume").exists()) {
                return;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}
