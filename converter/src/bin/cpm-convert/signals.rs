//! Signals turned into a stop request (SIGINT, SIGTERM), a message (SIGBUS) or an error
//! (SIGXFSZ). Everything a handler does is async-signal-safe: an atomic store, `write(2)`,
//! `_exit(2)`.
//!
//! Plain `libc` rather than `signal-hook`: signal-hook refuses SIGBUS (it forbids handlers for
//! synchronous fault signals), and the flag handlers it would give us are these ten lines.

use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};

static STOP: AtomicI32 = AtomicI32::new(0);
/// Whether a stop is deferred to the conversion (which then removes its staging directory):
/// set just before the staging directory is created. Before that nothing exists to clean up,
/// and loading may be blocked in a read, so the first signal ends the process at once.
static DEFER: AtomicBool = AtomicBool::new(false);
static JSON: AtomicBool = AtomicBool::new(false);
static BAR: AtomicBool = AtomicBool::new(false);

/// The signal that asked us to stop, if one did.
pub fn stop_signal() -> Option<i32> {
    match STOP.load(Ordering::SeqCst) {
        0 => None,
        s => Some(s),
    }
}

/// From now on a first SIGINT/SIGTERM is a stop request the conversion acts on (removing its
/// staging directory) rather than an immediate exit.
pub fn defer() {
    DEFER.store(true, Ordering::SeqCst);
}

/// `stop`: handle SIGINT/SIGTERM (for a conversion): an immediate exit 130/143 while loading,
/// a stop request the conversion acts on (cleaning up) once [`defer`] was called.
/// `bar`: a progress bar is drawn on stderr, so a message starts on a new line.
pub fn install(json: bool, stop: bool, bar: bool) {
    JSON.store(json, Ordering::SeqCst);
    BAR.store(bar, Ordering::SeqCst);
    // SAFETY: installing dispositions at startup, before any other thread exists; the
    // handlers only touch atomics and call async-signal-safe functions.
    unsafe {
        // A write past `ulimit -f` then fails with EFBIG, reported (and the staging
        // directory removed) like any other write error, instead of killing the process.
        libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
        if stop {
            set(libc::SIGINT, on_stop, true);
            set(libc::SIGTERM, on_stop, true);
        }
        set(libc::SIGBUS, on_bus, false);
    }
}

/// # Safety
/// `handler` must be async-signal-safe.
unsafe fn set(sig: libc::c_int, handler: extern "C" fn(libc::c_int), keep_ignored: bool) {
    let mut old: libc::sigaction = std::mem::zeroed();
    libc::sigaction(sig, std::ptr::null(), &mut old);
    // A signal ignored by whoever started us (nohup, `cmd &` in a script) stays ignored.
    if keep_ignored && old.sa_sigaction == libc::SIG_IGN {
        return;
    }
    let mut sa: libc::sigaction = std::mem::zeroed();
    sa.sa_sigaction = handler as libc::sighandler_t;
    sa.sa_flags = libc::SA_RESTART | libc::SA_ONSTACK;
    libc::sigemptyset(&mut sa.sa_mask);
    libc::sigaction(sig, &sa, std::ptr::null_mut());
}

/// While loading (before [`defer`]): exit now, nothing having been written. Then, a first
/// SIGINT/SIGTERM asks the conversion to stop at the next tensor (it then removes its staging
/// directory); a second one stops now, leaving the staging directory for the next run to remove.
extern "C" fn on_stop(sig: libc::c_int) {
    if !DEFER.load(Ordering::SeqCst) {
        say(LOADING_TEXT, LOADING_JSON);
        // SAFETY: _exit is async-signal-safe.
        unsafe { libc::_exit(128 + sig) }
    }
    if STOP.swap(sig, Ordering::SeqCst) != 0 {
        say(AGAIN_TEXT, AGAIN_JSON);
        // SAFETY: _exit is async-signal-safe.
        unsafe { libc::_exit(128 + sig) }
    }
}

/// A memory-mapped input page that no longer exists: the file shrank under us.
extern "C" fn on_bus(_: libc::c_int) {
    say(BUS_TEXT, BUS_JSON);
    // SAFETY: _exit is async-signal-safe; returning would fault again.
    unsafe { libc::_exit(128 + libc::SIGBUS) }
}

// A handler cannot format: each message is written out twice, checked equal by a test. While
// loading, the warnings printed so far are on stderr; the JSON object cannot list them.
pub(crate) const LOADING_TEXT: &[u8] = b"cpm-convert: interrupted: nothing written\n";
pub(crate) const LOADING_JSON: &[u8] =
    b"{\"error\": \"interrupted: nothing written\", \"warnings\": []}\n";
pub(crate) const AGAIN_TEXT: &[u8] = b"cpm-convert: interrupted again: stopped at once; the \
    next run removes the staging directory\n";
pub(crate) const AGAIN_JSON: &[u8] = b"{\"error\": \"interrupted again: stopped at once; the \
    next run removes the staging directory\", \"warnings\": []}\n";
pub(crate) const BUS_TEXT: &[u8] = b"cpm-convert: error: bus error reading a memory-mapped \
    input, most likely because an input file changed or was truncated during the conversion; \
    OUT_DIR was not touched (the next run removes the staging directory)\n";
pub(crate) const BUS_JSON: &[u8] = b"{\"error\": \"bus error reading a memory-mapped input, \
    most likely because an input file changed or was truncated during the conversion; OUT_DIR \
    was not touched (the next run removes the staging directory)\", \"warnings\": []}\n";

/// The message on stderr, or with `--json` the JSON error object on stdout.
fn say(text: &[u8], json: &[u8]) {
    let (fd, msg) = if JSON.load(Ordering::SeqCst) {
        (1, json)
    } else {
        (2, text)
    };
    // SAFETY: write(2) of static buffers is async-signal-safe.
    unsafe {
        if fd == 2 && BAR.load(Ordering::SeqCst) {
            libc::write(fd, b"\n".as_ptr().cast(), 1);
        }
        libc::write(fd, msg.as_ptr().cast(), msg.len());
    }
}

#[cfg(test)]
mod tests {
    /// The signal handlers' fixed messages: the JSON one is valid JSON saying what the text says.
    #[test]
    fn signal_messages_agree_and_the_json_ones_parse() {
        use super::{AGAIN_JSON, AGAIN_TEXT, BUS_JSON, BUS_TEXT};
        use super::{LOADING_JSON, LOADING_TEXT};
        for (text, json, prefix) in [
            (AGAIN_TEXT, AGAIN_JSON, "cpm-convert: "),
            (LOADING_TEXT, LOADING_JSON, "cpm-convert: "),
            (BUS_TEXT, BUS_JSON, "cpm-convert: error: "),
        ] {
            let text = std::str::from_utf8(text).unwrap();
            let v: serde_json::Value = serde_json::from_slice(json).unwrap();
            assert_eq!(v["warnings"], serde_json::json!([]));
            assert_eq!(
                text.strip_prefix(prefix).unwrap(),
                format!("{}\n", v["error"].as_str().unwrap())
            );
            assert_eq!(text.lines().count(), 1);
        }
    }
}
