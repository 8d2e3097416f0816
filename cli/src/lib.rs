//! What every command-line tool of the workspace does the same way: stdout that ends quietly
//! when its reader goes away (`| head`), one JSON object per `--json` run, usage errors that
//! follow the `--json` contract (help and version stay text with exit 0), errors that start
//! `TOOL: error:` with exit 2, and a bus error on a truncated memory-mapped input reported as
//! one line instead of a silent death.
#![deny(missing_docs)]

use std::io::Write as _;
use std::process::ExitCode;

use serde::Serialize;

/// `--json`'s result of any failure, usage errors included.
#[derive(Debug, Serialize)]
pub struct JsonError<'a> {
    /// The message, as the text error would say it after `TOOL: error: `.
    pub error: &'a str,
    /// The warnings printed before the failure (`None`: a tool whose object has no such key,
    /// cpm-verify and cpm-generate).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub warnings: Option<Vec<String>>,
}

/// Exactly `text` on stdout; a closed pipe (`| head`) ends the output quietly instead of
/// panicking.
pub fn emit_raw(text: &str) {
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(text.as_bytes()).and_then(|()| out.flush());
}

/// One block of output: `text` without its trailing white space, and one newline.
pub fn emit(text: &str) {
    emit_raw(&format!("{}\n", text.trim_end()));
}

/// One JSON object, pretty-printed, and a newline on stdout.
pub fn emit_json<T: Serialize>(value: &T) {
    match serde_json::to_string_pretty(value) {
        Ok(text) => emit_raw(&format!("{text}\n")),
        // Our own structs of strings and numbers always encode; say so if one ever does not.
        Err(e) => emit_raw(&format!(
            "{}\n",
            compact(&JsonError {
                error: &format!("internal error: cannot encode the result: {e}"),
                warnings: Some(Vec::new()),
            })
        )),
    }
}

/// The `--json` error object `{"error": msg}` on one line of stdout, exit 2 (cpm-verify,
/// cpm-generate).
pub fn json_error(msg: &str) -> ExitCode {
    emit(&compact(&JsonError {
        error: msg,
        warnings: None,
    }));
    ExitCode::from(2)
}

/// The error object on one line (it always encodes: two strings).
fn compact(e: &JsonError) -> String {
    serde_json::to_string(e).unwrap_or_default()
}

/// Whether `--json` is among the arguments (before `--`, after which it would be a path):
/// decides how a usage error is printed, since clap could not tell us.
pub fn json_requested() -> bool {
    std::env::args_os()
        .skip(1)
        .take_while(|a| a != "--")
        .any(|a| a == "--json")
}

/// How a tool's usage errors look under `--json` (and how its help prints).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Contract {
    /// `{"error": "..."}` on one line; help and version printed by clap (cpm-verify,
    /// cpm-generate).
    Bare,
    /// The pretty object with `"warnings": []`; help and version through [`emit_raw`] (the
    /// converter's tools, whose error objects always carry the warnings).
    WithWarnings,
}

/// Help and version print as text with exit 0; a usage error is exit 2, and with `--json`
/// among the arguments it is `{"error": "..."}` on stdout. As text it starts `TOOL: error:`,
/// like every other error of the workspace's tools.
pub fn usage_error(tool: &str, e: clap::Error) -> ExitCode {
    usage(tool, e, Contract::Bare)
}

/// [`usage_error`] for a tool whose `--json` error object always carries `warnings` (cpm-convert,
/// cpm-inspect, cpm-diff): `{"error": "...", "warnings": []}`.
pub fn usage_error_with_warnings(tool: &str, e: clap::Error) -> ExitCode {
    usage(tool, e, Contract::WithWarnings)
}

fn usage(tool: &str, e: clap::Error, contract: Contract) -> ExitCode {
    if !e.use_stderr() {
        // Help and version, on stdout, exit 0.
        if contract == Contract::Bare {
            e.exit()
        }
        emit_raw(&e.to_string());
        return ExitCode::SUCCESS;
    }
    if json_requested() {
        // clap's first paragraph is the message; the rest is usage and a hint to try --help,
        // which a program reading the object has no use for.
        let text = e.to_string();
        let first = text.split("\n\n").next().unwrap_or(&text).trim();
        let msg = first.strip_prefix("error: ").unwrap_or(first);
        if contract == Contract::Bare {
            return json_error(msg);
        }
        emit_json(&JsonError {
            error: msg,
            warnings: Some(Vec::new()),
        });
    } else {
        // clap's text starts with `error:`; its usage and hint follow.
        let _ = write!(std::io::stderr().lock(), "{tool}: {}", e.render());
    }
    ExitCode::from(2)
}

/// A bus error (SIGBUS) while reading a memory-mapped input means a file shrank under us:
/// report it as one line (or, with `--json`, one JSON error object on stdout) and exit 135,
/// instead of dying without a word. `doing` ends the message: "… truncated while `doing`".
pub fn report_bus_errors(json: bool, tool: &str, doing: &str) {
    use std::sync::atomic::Ordering;
    // A handler cannot format: the message is built now and kept for the process's life.
    let msg: &'static [u8] = Box::leak(
        bus_message(json, tool, doing)
            .into_bytes()
            .into_boxed_slice(),
    );
    BUS_MSG.store(msg.as_ptr().cast_mut(), Ordering::SeqCst);
    BUS_LEN.store(msg.len(), Ordering::SeqCst);
    BUS_FD.store(if json { 1 } else { 2 }, Ordering::SeqCst);
    // SAFETY: installing a disposition at startup; the handler only reads atomics and calls
    // async-signal-safe functions (write, _exit).
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = on_bus as extern "C" fn(libc::c_int) as libc::sighandler_t;
        sa.sa_flags = libc::SA_ONSTACK;
        libc::sigemptyset(&mut sa.sa_mask);
        libc::sigaction(libc::SIGBUS, &sa, std::ptr::null_mut());
    }
}

fn bus_message(json: bool, tool: &str, doing: &str) -> String {
    let error = format!(
        "bus error reading a memory-mapped input, most likely because an input file changed or \
         was truncated while {doing}"
    );
    if json {
        format!(
            "{}\n",
            compact(&JsonError {
                error: &error,
                warnings: Some(Vec::new()),
            })
        )
    } else {
        format!("{tool}: error: {error}\n")
    }
}

static BUS_MSG: std::sync::atomic::AtomicPtr<u8> =
    std::sync::atomic::AtomicPtr::new(std::ptr::null_mut());
static BUS_LEN: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
static BUS_FD: std::sync::atomic::AtomicI32 = std::sync::atomic::AtomicI32::new(2);

extern "C" fn on_bus(_: libc::c_int) {
    use std::sync::atomic::Ordering;
    let (p, n, fd) = (
        BUS_MSG.load(Ordering::SeqCst),
        BUS_LEN.load(Ordering::SeqCst),
        BUS_FD.load(Ordering::SeqCst),
    );
    // SAFETY: the pointer and length come from a `&'static [u8]`; write(2) and _exit(2) are
    // async-signal-safe; returning would fault again.
    unsafe {
        if !p.is_null() {
            libc::write(fd, p.cast(), n);
        }
        libc::_exit(128 + libc::SIGBUS)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bus_error_message_is_one_line_or_one_json_object() {
        let text = bus_message(false, "cpm-diff", "comparing it");
        assert!(text.starts_with("cpm-diff: error: bus error") && text.ends_with("comparing it\n"));
        assert_eq!(text.lines().count(), 1);
        let json: serde_json::Value =
            serde_json::from_str(&bus_message(true, "x", "reading it")).unwrap();
        assert!(json["error"]
            .as_str()
            .unwrap()
            .ends_with("truncated while reading it"));
        assert_eq!(json["warnings"], serde_json::json!([]));
    }

    /// The object cpm-verify and cpm-generate document, `{"error": "..."}`, and the converter's,
    /// with its warnings: the same keys `json!` gave before they shared one type.
    #[test]
    fn the_error_object_has_warnings_only_where_a_tool_keeps_them() {
        let bare = compact(&JsonError {
            error: "a \"b\"\n",
            warnings: None,
        });
        assert_eq!(
            bare,
            serde_json::json!({ "error": "a \"b\"\n" }).to_string()
        );
        let full = compact(&JsonError {
            error: "x",
            warnings: Some(vec!["w".into()]),
        });
        assert_eq!(
            full,
            serde_json::json!({ "error": "x", "warnings": ["w"] }).to_string()
        );
    }
}
