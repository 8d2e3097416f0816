//! What every command-line tool of the crate does the same way: stdout that ends quietly when its
//! reader goes away (`| head`), one JSON object per `--json` run, and usage errors that follow
//! the `--json` contract (help and version stay text with exit 0).

use std::path::PathBuf;
use std::process::ExitCode;

use crate::{Family, Hints};

use serde::Serialize;

/// What every tool needs to know to read an input as a model: the flags `cpm-convert`,
/// `cpm-inspect` and `cpm-diff` share (flattened into each one's own arguments), so that advice
/// to use one of them holds in every tool that prints it. `cpm-diff` applies them to both sides.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct ModelArgs {
    /// Number of attention heads, when the checkpoint does not record it and the size is not a
    /// released one of its family (only needed where a layout needs it).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub heads: Option<u64>,

    /// The input's family instead of detecting it: cpm-lm, megatron-gpt2, megatron-core-gpt,
    /// nanogpt, hf-gpt2.
    #[arg(long, value_name = "FAMILY", conflicts_with = "mapping")]
    pub from: Option<String>,

    /// A mapping file to use instead of the built-in families (see mappings/).
    #[arg(long, value_name = "FILE")]
    pub mapping: Option<PathBuf>,

    /// Keep only the first N vocabulary rows: cuts the padding Megatron and nanoGPT add.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub vocab_size: Option<u64>,

    /// The activation function (config.json's activation_function: gelu is the exact erf GELU,
    /// gelu_new the tanh approximation), overriding what the checkpoint's flags imply; no
    /// warning that one was assumed.
    #[arg(long, value_name = "NAME")]
    pub activation: Option<String>,
}

impl ModelArgs {
    pub fn family(&self) -> Family {
        match (&self.from, &self.mapping) {
            (Some(f), _) => Family::Named(f.clone()),
            (None, Some(m)) => Family::File(m.clone()),
            (None, None) => Family::Detect,
        }
    }

    pub fn hints(&self) -> Hints {
        Hints {
            heads: self.heads,
            vocab_size: self.vocab_size,
            activation: self.activation.clone(),
        }
    }
}

/// `--json`'s result of any failure, usage errors included.
#[derive(Debug, Serialize)]
pub struct JsonError<'a> {
    pub error: &'a str,
    pub warnings: Vec<String>,
}

/// Write to stdout; a closed pipe (`| head`) ends the output quietly instead of panicking.
pub fn emit(text: &str) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(text.as_bytes()).and_then(|_| out.flush());
}

/// One JSON object and a newline on stdout.
pub fn emit_json<T: Serialize>(value: &T) {
    match serde_json::to_string_pretty(value) {
        Ok(text) => emit(&format!("{text}\n")),
        // Our own structs of strings and numbers always encode; say so if one ever does not.
        Err(e) => emit(&format!(
            "{}\n",
            serde_json::json!({ "error": format!("internal error: cannot encode the result: {e}"), "warnings": [] })
        )),
    }
}

/// Whether `--json` is among the arguments (before `--`): decides how a usage error is printed,
/// since clap could not tell us.
pub fn json_requested() -> bool {
    std::env::args_os()
        .skip(1)
        .take_while(|a| a != "--")
        .any(|a| a == "--json")
}

/// Help and version print as text with exit 0; a usage error is exit 2, and with `--json`
/// anywhere among the arguments (before `--`) it is the JSON error object on stdout. As text it
/// starts `TOOL: error:`, like every other error of the workspace's tools.
pub fn usage_error(tool: &str, e: clap::Error) -> ExitCode {
    if !e.use_stderr() {
        emit(&e.to_string());
        return ExitCode::SUCCESS;
    }
    if json_requested() {
        let text = e.to_string();
        // clap's first paragraph is the message; the rest is usage and a hint to try --help.
        let first = text.split("\n\n").next().unwrap_or(&text).trim();
        let msg = first.strip_prefix("error: ").unwrap_or(first);
        emit_json(&JsonError {
            error: msg,
            warnings: Vec::new(),
        });
    } else {
        say_usage_error(tool, &e);
    }
    ExitCode::from(2)
}

/// clap's message, usage and hint, after `TOOL: ` (clap's text starts with `error:`), on stderr.
pub fn say_usage_error(tool: &str, e: &clap::Error) {
    use std::io::Write;
    let _ = write!(std::io::stderr().lock(), "{tool}: {}", e.render());
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
            serde_json::json!({ "error": error, "warnings": [] })
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
}
