//! What `cpm-verify` and `cpm-generate` (which runs on this crate's forward pass) share on the
//! command line: the usage-error contract and the JSON error object.

use std::io::Write as _;
use std::process::ExitCode;

/// `--help` and `--version` print plain text (exit 0); other usage errors are exit 2 like every
/// error, and a `--json` caller gets them as the one JSON object on stdout.
pub fn usage_error(e: clap::Error) -> ExitCode {
    let json = std::env::args_os().skip(1).any(|a| a == "--json");
    if e.use_stderr() && json {
        let text = e.to_string();
        let text = text.trim();
        return json_error(text.strip_prefix("error: ").unwrap_or(text));
    }
    // Prints help/version on stdout, errors on stderr, and exits (0 or 2).
    e.exit()
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
