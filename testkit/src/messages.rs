//! One voice in the tools' messages: every error starts `TOOL: error: `, and every `--flag` a
//! message advises exists in the `--help` of the tool that prints it.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// The long options a tool's `--help` lists in its Options section (not its examples).
pub fn help_flags(exe: &str) -> BTreeSet<String> {
    let help = crate::run(exe, &["--help"], &[]);
    assert_eq!(help.code, Some(0), "{exe} --help: {}", help.stderr);
    let mut flags = BTreeSet::new();
    let mut in_options = false;
    for line in help.stdout.lines() {
        if line == "Options:" {
            in_options = true;
        } else if in_options && !line.is_empty() && !line.starts_with(' ') {
            break;
        } else if in_options {
            let mut item = line.trim_start();
            // `-h, --help`: the short form first.
            if item.len() > 4 && !item.starts_with("--") && item[2..].starts_with(", ") {
                item = &item[4..];
            }
            if item.starts_with("--") {
                flags.extend(named_flags(item.split_whitespace().next().unwrap_or("")));
            }
        }
    }
    assert!(
        flags.contains("--help"),
        "{exe} --help lists no options:\n{}",
        help.stdout
    );
    flags
}

/// The `--flags` a text names (`--heads`, `--vocab-size`; not a bare `--`).
pub fn named_flags(text: &str) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    let bytes = text.as_bytes();
    let mut i = 0;
    while let Some(at) = text[i..].find("--") {
        let start = i + at;
        let before_ok =
            start == 0 || !(bytes[start - 1].is_ascii_alphanumeric() || bytes[start - 1] == b'-');
        let mut end = start + 2;
        while end < bytes.len()
            && (bytes[end].is_ascii_lowercase()
                || bytes[end].is_ascii_digit()
                || bytes[end] == b'-')
        {
            end += 1;
        }
        let name = text[start..end].trim_end_matches('-');
        if before_ok && name.len() > 2 && bytes[start + 2].is_ascii_lowercase() {
            found.insert(name.to_string());
        }
        i = end.max(start + 2);
    }
    found
}

/// Every `--flag` named in the Rust sources under `dir` (a file, or a directory recursively,
/// skipping subdirectories named in `skip`; `//` comment lines left out), with the file it is
/// in: what the code can print.
pub fn source_flags(dir: &Path, skip: &[&str]) -> Vec<(PathBuf, String)> {
    let mut out = Vec::new();
    if dir.is_file() {
        scan_file(dir, &mut out);
        return out;
    }
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let mut entries: Vec<_> = std::fs::read_dir(&d)
            .unwrap_or_else(|e| panic!("{}: {e}", d.display()))
            .map(|e| e.expect("directory entry").path())
            .collect();
        entries.sort();
        for p in entries {
            let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
            if p.is_dir() {
                if !skip.contains(&name) {
                    stack.push(p);
                }
            } else if name.ends_with(".rs") {
                scan_file(&p, &mut out);
            }
        }
    }
    out
}

/// Flags of `cargo` itself, named where a message advises a rebuild (`cargo build --release
/// --features cuda`), not flags of the tool.
const CARGO_FLAGS: [&str; 2] = ["--release", "--features"];

fn scan_file(p: &Path, out: &mut Vec<(PathBuf, String)>) {
    let text = std::fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    for line in text.lines().filter(|l| !l.trim_start().starts_with("//")) {
        for f in named_flags(line) {
            if !CARGO_FLAGS.contains(&f.as_str()) {
                out.push((p.to_path_buf(), f));
            }
        }
    }
}

/// Asserts that every flag the sources name is one `exe` has.
pub fn assert_sources_name_only_flags_of(exe: &str, sources: &[(PathBuf, String)]) {
    let have = help_flags(exe);
    let missing: Vec<String> = sources
        .iter()
        .filter(|(_, f)| !have.contains(f))
        .map(|(p, f)| format!("{f} ({})", p.display()))
        .collect();
    assert!(
        missing.is_empty(),
        "{exe} can print advice naming flags it does not have: {missing:?}; it has {have:?}"
    );
}

/// Asserts that a run failed with exit 2, its stderr starting with the workspace's one error
/// prefix, and an OS error (if any) said once.
pub fn assert_error_prefix(tool: &str, run: &crate::Run) {
    assert_eq!(run.code, Some(2), "{tool}: {run:?}");
    let prefix = format!("{tool}: error: ");
    assert!(
        run.stderr.starts_with(&prefix),
        "{tool}: stderr does not start {prefix:?}: {}",
        run.stderr
    );
    assert!(
        run.stderr.matches("(os error").count() <= 1,
        "{tool}: the OS error is said more than once: {}",
        run.stderr
    );
}

/// Asserts that every flag `text` (a tool's messages) names is one `exe` has.
pub fn assert_advice_is_own(exe: &str, text: &str) {
    let have = help_flags(exe);
    let advice = named_flags(text);
    assert!(
        advice.is_subset(&have),
        "{exe} advises {:?}, which it does not have: {text}",
        advice.difference(&have).collect::<Vec<_>>()
    );
}
