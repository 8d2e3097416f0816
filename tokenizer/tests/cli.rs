//! `cpm-tokenize` end to end (through a shell so stdin can be a file), against the ids, pieces
//! and decoded texts Python recorded.

use crate::common;

use std::path::Path;
use std::process::Command;

use common::*;

const EXE: &str = env!("CARGO_BIN_EXE_cpm-tokenize");

fn quote(p: &Path) -> String {
    format!("'{}'", p.display().to_string().replace('\'', "'\\''"))
}

/// Runs `cpm-tokenize ARGS < input` with `input` written to a temporary file.
fn run(args: &str, input: &[u8]) -> testkit::Run {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("in");
    std::fs::write(&path, input).unwrap();
    let mut cmd = Command::new("sh");
    cmd.arg("-c").arg(format!(
        "{} {args} < {}",
        quote(Path::new(EXE)),
        quote(&path)
    ));
    testkit::run_command(cmd)
}

fn model() -> String {
    quote(&big_model())
}

fn expected() -> Vec<serde_json::Value> {
    jsonl(dir().join("expected.jsonl"))
}

#[test]
fn jsonl_encode_of_the_corpus_prints_the_recorded_ids_for_any_thread_count() {
    let corpus = std::fs::read(dir().join("corpus.jsonl")).unwrap();
    let want: String = expected()
        .iter()
        .map(|r| format!("{}\n", serde_json::to_string(&ids(&r["ids"])).unwrap()))
        .collect();
    for threads in ["1", "3"] {
        let r = run(&format!("{} --jsonl --threads {threads}", model()), &corpus);
        assert_eq!(r.code, Some(0), "{}", r.stderr);
        assert_eq!(r.stdout, want, "--threads {threads}");
    }
}

#[test]
fn plain_lines_print_space_separated_ids_and_pieces() {
    let r = run(
        &model(),
        "Hugging Face大法好，谁用谁知道。\n今天天气不错\n\nhello我".as_bytes(),
    );
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    assert_eq!(r.stdout, "13789 13283 1421 8 10 1164 13608 16528 63 8 9 440 108 440 121 90 8 12\n837 259 497 788\n\n25159 16\n");
    let r = run(
        &format!("{} --pieces", model()),
        "今天天气不错\n".as_bytes(),
    );
    let row = expected()
        .into_iter()
        .find(|r| r["text"] == "今天天气不错")
        .unwrap();
    assert_eq!(
        r.stdout.trim_end().split(' ').collect::<Vec<_>>(),
        strs(&row["pieces"])
    );
}

#[test]
fn jsonl_decode_of_the_recorded_ids_prints_the_recorded_texts() {
    let rows = expected();
    let input: String = rows.iter().map(|r| format!("{}\n", r["ids"])).collect();
    let r = run(
        &format!("{} --decode --jsonl --threads 2", model()),
        input.as_bytes(),
    );
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    let got: Vec<String> = r
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let want: Vec<String> = rows
        .iter()
        .map(|r| r["decoded"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(got, want);
    let r = run(&format!("{} --decode", model()), b"837 259 497 788\n");
    assert_eq!(r.stdout, "今天天气不错\n");
}

#[test]
fn bad_lines_are_reported_by_number_with_exit_2_after_the_good_lines() {
    let cases: [(&str, &[u8], &str); 6] = [
        (
            "--jsonl",
            b"\"ok\"\nnot json\n",
            "cpm-tokenize: error: stdin line 2: not a JSON string",
        ),
        (
            "",
            b"a\n\xff\xfe\n",
            "cpm-tokenize: error: stdin line 2: not UTF-8",
        ),
        (
            "--decode",
            b"837\n30000\n",
            "cpm-tokenize: error: stdin line 2: id 30000 is outside the vocabulary",
        ),
        (
            "--decode",
            b"837 x\n",
            "cpm-tokenize: error: stdin line 1: \"x\" is not an id",
        ),
        (
            "--decode",
            b"99999999999\n",
            "cpm-tokenize: error: stdin line 1: id 99999999999 is outside the vocabulary",
        ),
        (
            "--decode --jsonl",
            b"[1,2]\n[-1]\n",
            "cpm-tokenize: error: stdin line 2: not a JSON array of ids",
        ),
    ];
    for (flags, input, want) in cases {
        let r = run(&format!("{} {flags}", model()), input);
        assert_eq!(r.code, Some(2), "{flags} {input:?}: {}", r.stderr);
        assert!(
            r.stderr.starts_with(want),
            "{flags} {input:?}: {}",
            r.stderr
        );
        let bad_line: usize = want["cpm-tokenize: error: stdin line ".len()..]
            .split(':')
            .next()
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(
            r.stdout.lines().count(),
            bad_line - 1,
            "the good lines before it are printed: {:?}",
            r.stdout
        );
    }
}

#[test]
fn a_bad_model_source_exits_2_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("x.model");
    std::fs::write(&bad, b"garbage!").unwrap();
    for src in [
        bad,
        dir.path().to_path_buf(),
        dir.path().join("missing.model"),
    ] {
        let r = run(&quote(&src), b"hi\n");
        assert_eq!(r.code, Some(2));
        assert!(
            r.stderr.starts_with("cpm-tokenize: error: ")
                && r.stderr.contains(&*src.display().to_string()),
            "{}",
            r.stderr
        );
    }
}

#[test]
fn a_closed_stdout_ends_the_run_quietly_with_exit_0() {
    let mut cmd = Command::new("bash");
    cmd.arg("-c").arg(format!(
        "yes '今天天气不错，Hugging Face' | head -n 300000 | {} {} | head -n 1 >/dev/null; echo \"${{PIPESTATUS[2]}}\"",
        quote(Path::new(EXE)),
        model()
    ));
    let r = testkit::run_command(cmd);
    assert_eq!(r.stdout.trim(), "0", "exit status of cpm-tokenize");
    assert_eq!(r.stderr, "", "no error message for a closed pipe");
}

#[test]
fn a_line_over_the_jieba_block_limit_exits_2_naming_it_after_the_lines_before() {
    let mut input = "今天天气不错\n".as_bytes().to_vec();
    input.extend(vec![b'a'; 5 << 20]);
    input.extend(b"\nok\n");
    let r = run(&model(), &input);
    assert_eq!(r.code, Some(2), "{}", r.stderr);
    assert!(
        r.stderr.starts_with(
            "cpm-tokenize: error: stdin line 2: a run of 5242880 bytes of letters, digits"
        ),
        "{}",
        r.stderr
    );
    assert_eq!(r.stdout, "837 259 497 788\n");
}

#[test]
fn a_long_line_is_written_as_it_is_encoded_with_the_same_output() {
    let rows = expected();
    let line: String = rows
        .iter()
        .map(|r| r["text"].as_str().unwrap().replace(['\n', '\r'], " "))
        .collect::<Vec<_>>()
        .concat()
        .repeat(80); // ~1.8 MB: over stream::LONG_LINE
    assert!(line.len() > cpm_tokenizer::stream::LONG_LINE);
    let tok = cpm_tokenizer::CpmTokenizer::open(&big_model()).unwrap();
    let ids = tok.encode(&line).unwrap();
    let input = format!("今天天气不错\n{line}\n今天天气不错\n");
    let r = run(&model(), input.as_bytes());
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    let words: Vec<String> = ids.iter().map(u32::to_string).collect();
    let want = format!("837 259 497 788\n{}\n837 259 497 788\n", words.join(" "));
    assert!(r.stdout == want, "long-line output differs");
    let r = run(
        &format!("{} --jsonl", model()),
        serde_json::to_string(&line).unwrap().as_bytes(),
    );
    assert_eq!(r.stdout, format!("[{}]\n", words.join(",")));
}

#[test]
fn a_long_line_of_ids_decodes_as_it_goes_with_the_same_text_and_errors() {
    // Each id's share of the decode is independent of its neighbours, so the recorded ids of
    // every corpus line, concatenated, decode to the recorded texts concatenated.
    let rows = expected();
    let unit: String = rows
        .iter()
        .flat_map(|r| r["ids"].as_array().unwrap().clone())
        .map(|v| format!("{v} "))
        .collect();
    let texts: String = rows
        .iter()
        .map(|r| r["decoded"].as_str().unwrap())
        .collect();
    let n = cpm_tokenizer::stream::LONG_LINE / unit.len() + 1;
    let line = unit.repeat(n);
    let r = run(
        &format!("{} --decode", model()),
        format!("837\n{line}\n").as_bytes(),
    );
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    assert!(
        r.stdout == format!("今天\n{}\n", texts.repeat(n)),
        "long-line decode differs"
    );
    for (bad, want) in [
        ("x 99999999999 30000", "\"x\" is not an id"),
        (
            "99999999999 30000",
            "id 99999999999 is outside the vocabulary",
        ),
        ("30000", "id 30000 is outside the vocabulary (30000 pieces)"),
    ] {
        let r = run(
            &format!("{} --decode", model()),
            format!("837\n{line}{bad}\n").as_bytes(),
        );
        assert_eq!(r.code, Some(2), "{bad}");
        assert_eq!(r.stdout, "今天\n", "{bad}: nothing of the bad line");
        assert!(
            r.stderr.contains(&format!("stdin line 2: {want}")),
            "{bad}: {}",
            r.stderr
        );
    }
}
