//! What the command-line tools share: the usage-error contract and the JSON error object
//! (`cpm-verify` and `cpm-generate` so far).
#![deny(missing_docs)]

use std::io::Write as _;
use std::process::ExitCode;

/// `--help` and `--version` print plain text (exit 0); other usage errors are exit 2 like every
/// error, and a `--json` caller gets them as the one JSON object on stdout. As text they start
/// `TOOL: error:`, like every other error of the workspace's tools.
pub fn usage_error(tool: &str, e: clap::Error) -> ExitCode {
    // `--json` among the options, not after `--` (where it would be a path).
    let json = std::env::args_os()
        .skip(1)
        .take_while(|a| a != "--")
        .any(|a| a == "--json");
    if e.use_stderr() && json {
        // clap's first paragraph is the message; the rest is usage and a hint to try --help,
        // which a program reading the object has no use for (as in cpm-convert's tools).
        let text = e.to_string();
        let first = text.split("\n\n").next().unwrap_or(&text).trim();
        return json_error(first.strip_prefix("error: ").unwrap_or(first));
    }
    if !e.use_stderr() {
        // Help and version, on stdout, exit 0.
        e.exit()
    }
    // clap's text starts with `error:`; its usage and hint follow.
    let _ = write!(std::io::stderr().lock(), "{tool}: {}", e.render());
    ExitCode::from(2)
}

/// The `--json` error object `{"error": msg}` on stdout, exit 2.
pub fn json_error(msg: &str) -> ExitCode {
    emit(&serde_json::json!({ "error": msg }).to_string());
    ExitCode::from(2)
}

/// Prints one block of output; a closed pipe (`| head`) is not an error worth a panic.
pub fn emit(text: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{}", text.trim_end()).and_then(|()| out.flush());
}
