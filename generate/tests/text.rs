//! Text in and out through the CPM tokenizer: a text prompt gives transformers' continuation
//! text (greedy_text, decoded by the original pipeline), streamed; --stop cuts it.

use crate::common;

use common::*;

fn text_args(m: &str, r: &Record, extra: &[&str]) -> Vec<String> {
    let n = r.max_new.to_string();
    let mut a: Vec<String> = [
        &model_dir(m).display().to_string(),
        "--tokenizer",
        &tokenizer(m).display().to_string(),
        "--prompt",
        &r.prompt,
        "--max-new-tokens",
        &n,
        "--min-new-tokens",
        &n,
        "--threads",
        "2",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    a.extend(extra.iter().map(|s| s.to_string()));
    a
}

#[test]
fn a_text_prompt_streams_transformers_greedy_text() {
    for m in MODELS {
        for r in records(m) {
            let out = run(&text_args(m, &r, &[]));
            assert_eq!(out.code, Some(0), "{}", out.stderr);
            assert_eq!(
                out.stdout,
                format!("{}\n", r.greedy_text),
                "{m} {:?}",
                r.prompt
            );
        }
    }
}

#[test]
fn stop_text_ends_generation_and_is_not_printed() {
    let m = "vocab30000";
    let r = &records(m)[0];
    // A piece of the recorded continuation after its start: generation must stop there.
    let chars: Vec<char> = r.greedy_text.chars().collect();
    let stop: String = chars[20..22].iter().collect();
    let at = r.greedy_text.find(&stop).unwrap();
    let out = run(&text_args(m, r, &["--stop", &stop]));
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert_eq!(out.stdout, format!("{}\n", &r.greedy_text[..at]));
    let json = run(&text_args(m, r, &["--stop", &stop, "--json"]));
    let v: serde_json::Value = serde_json::from_str(&json.stdout).unwrap();
    assert_eq!(v["stop"], "stop_text");
    assert_eq!(v["text"].as_str().unwrap(), &r.greedy_text[..at]);
    let ids: Vec<u32> = v["ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect();
    assert!(
        ids.len() < r.greedy.len() && r.greedy.starts_with(&ids),
        "{ids:?}"
    );
}

#[test]
fn a_stop_text_that_never_appears_changes_nothing() {
    let m = "small";
    let r = &records(m)[0];
    let out = run(&text_args(m, r, &["--stop", "\u{1F600}never"]));
    assert_eq!(out.stdout, format!("{}\n", r.greedy_text));
}

#[test]
fn a_prompt_from_a_file_is_the_same_prompt_and_empty_text_is_refused() {
    let m = "small";
    let r = &records(m)[2];
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("p.txt");
    std::fs::write(&file, &r.prompt).unwrap();
    let mut a = text_args(m, r, &[]);
    let i = a.iter().position(|s| s == "--prompt").unwrap();
    a[i] = "--prompt-file".into();
    a[i + 1] = file.display().to_string();
    let out = run(&a);
    assert_eq!(out.stdout, format!("{}\n", r.greedy_text));
    // Empty text is refused.
    std::fs::write(&file, "").unwrap();
    let out = run(&a);
    assert_eq!(out.code, Some(2));
    assert!(out.stderr.contains("empty"), "{}", out.stderr);
}

#[test]
fn a_prompt_on_stdin_is_read_when_no_other_is_given() {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let m = "vocab30000";
    let r = &records(m)[4];
    let mut a = text_args(m, r, &[]);
    let i = a.iter().position(|s| s == "--prompt").unwrap();
    a.drain(i..i + 2);
    let mut child = Command::new(env!("CARGO_BIN_EXE_cpm-generate"))
        .args(&a)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(r.prompt.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(
        String::from_utf8(out.stdout).unwrap(),
        format!("{}\n", r.greedy_text)
    );
}
