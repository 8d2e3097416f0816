//! The command line: --json's schema, errors (exit 2, no panic) before any compute, hostile model
//! directories (the verifier's own hostile cases, run through cpm-generate).

use crate::common;

use common::*;

/// Exactly the fields --json promises; an extra or missing one fails the parse.
#[derive(serde::Deserialize, Debug)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
struct Report {
    text: Option<String>,
    ids: Vec<u32>,
    prompt_tokens: usize,
    new_tokens: usize,
    prefill_seconds: f64,
    decode_seconds: f64,
    tokens_per_second: Option<f64>,
    stop: String,
    warnings: Vec<String>,
}

fn args(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

#[test]
fn json_is_one_document_with_the_promised_fields() {
    let r = &records("vocab30000")[0];
    let dir = model_dir("vocab30000").display().to_string();
    let ids = join(&r.prompt_ids);
    let out = run(&args(&[
        &dir,
        "--prompt-ids",
        &ids,
        "--json",
        "--max-new-tokens",
        "40",
        "--threads",
        "1",
    ]));
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    let rep: Report = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(rep.ids, r.greedy_eos);
    assert_eq!(rep.new_tokens, rep.ids.len());
    assert_eq!(rep.prompt_tokens, r.prompt_ids.len());
    assert_eq!(
        rep.stop,
        if r.eos_stopped {
            "eos"
        } else {
            "max_new_tokens"
        }
    );
    assert!(rep.prefill_seconds > 0.0 && rep.decode_seconds > 0.0);
    assert!(rep.tokens_per_second.is_some_and(|t| t > 0.0));
}

#[test]
fn a_prompt_too_long_for_n_positions_is_refused_naming_both_numbers() {
    let dir = model_dir("small").display().to_string();
    let ids = join(&[10; 60]);
    let out = run(&args(&[
        &dir,
        "--prompt-ids",
        &ids,
        "--max-new-tokens",
        "10",
        "--ids",
    ]));
    assert_eq!(out.code, Some(2));
    assert!(
        out.stderr.contains("60") && out.stderr.contains("64"),
        "{}",
        out.stderr
    );
    let json = run(&args(&[
        &dir,
        "--prompt-ids",
        &ids,
        "--max-new-tokens",
        "10",
        "--json",
    ]));
    assert_eq!(json.code, Some(2));
    let v: serde_json::Value = serde_json::from_str(&json.stdout).unwrap();
    assert!(v["error"].as_str().unwrap().contains("n_positions"));
}

#[test]
fn bad_prompts_and_flags_exit_2() {
    let dir = model_dir("small").display().to_string();
    for bad in [
        vec!["--prompt-ids", ""],      // empty prompt
        vec!["--prompt-ids", "1 x"],   // not an id
        vec!["--prompt-ids", "99999"], // outside the vocabulary
        vec!["--prompt-ids", "1", "--beams", "0"],
        vec!["--prompt-ids", "1", "--beams", "100000"],
        vec!["--prompt-ids", "1", "--temperature", "0"],
        vec!["--prompt-ids", "1", "--top-p", "1.5"],
        vec!["--prompt-ids", "1", "--max-new-tokens", "0"],
        vec!["--prompt-ids", "1", "--greedy", "--beams", "2"],
        vec!["--prompt-ids", "1", "--device", "tpu"],
        vec!["--prompt", "x", "--tokenizer", "/nonexistent/spiece.model"],
    ] {
        let mut a = vec![dir.clone()];
        a.extend(bad.iter().map(|s| s.to_string()));
        a.push("--ids".into());
        let out = run(&a);
        assert_eq!(out.code, Some(2), "{bad:?}: {}", out.stderr);
        assert!(
            out.stderr.starts_with("cpm-generate: error: "),
            "{bad:?}: {}",
            out.stderr
        );
    }
}

#[test]
fn a_text_prompt_without_a_tokenizer_names_the_missing_file() {
    // The fixture models ship no spiece.model.
    let dir = model_dir("small").display().to_string();
    let out = run(&args(&[&dir, "--prompt", "你好"]));
    assert_eq!(out.code, Some(2));
    assert!(out.stderr.contains("spiece.model"), "{}", out.stderr);
}

#[path = "../../verifier/tests/cases/mod.rs"]
#[allow(unused)]
mod cases;

#[test]
fn hostile_model_directories_are_refused_without_a_panic() {
    // Every case of the verifier whose model directory is broken: cpm-generate must refuse it
    // (exit 2) or, where only the verifier's fixture was the problem, run; never panic or hang.
    let tiny_hf = cases::tiny().join("hf");
    let (mut refused, mut total) = (0, 0);
    for (group, list) in cases::all() {
        for case in list.iter().filter(|c| c.model != tiny_hf) {
            let a = vec![
                case.model.display().to_string(),
                "--prompt-ids".into(),
                "1 2 3".into(),
                "--ids".into(),
                "--max-new-tokens".into(),
                "2".into(),
                "--threads".into(),
                "1".into(),
            ];
            let out = run(&a);
            assert!(
                matches!(out.code, Some(0 | 2)),
                "{group}/{}: {:?} {}",
                case.name,
                out.code,
                out.stderr
            );
            if out.code == Some(2) {
                assert!(
                    out.stderr.starts_with("cpm-generate: error: "),
                    "{}: {}",
                    case.name,
                    out.stderr
                );
                refused += 1;
            }
            total += 1;
        }
    }
    println!("{refused} of {total} hostile model directories refused");
    assert!(
        total > 20 && refused * 10 >= total * 8,
        "{refused} of {total}"
    );
}

/// Options that cannot mean what they say are refused, naming the option and the bound: an
/// empty --stop (matched nowhere useful), --min-new-tokens above --max-new-tokens, and an
/// eos_token_id outside the vocabulary (which would never stop generation).
#[test]
fn contradictory_or_empty_options_are_refused_naming_the_bound() {
    let small = model_dir("small");
    let dir = small.display().to_string();
    // Valid apart from the option under test (the small model has 64 positions).
    let base = ["--prompt-ids", "1 2", "--ids", "--max-new-tokens", "4"];
    let tok = tokenizer("small").display().to_string();
    for (extra, needles) in [
        (
            vec!["--stop", "", "--tokenizer", &tok],
            vec!["--stop", "empty"],
        ),
        (
            vec!["--min-new-tokens", "9"],
            vec!["--min-new-tokens 9", "--max-new-tokens 4"],
        ),
    ] {
        let mut a = vec![dir.clone()];
        a.extend(base.iter().chain(&extra).map(|s| s.to_string()));
        let out = run(&a);
        assert_eq!(out.code, Some(2), "{extra:?}: {}", out.stderr);
        for n in needles {
            assert!(out.stderr.contains(n), "{extra:?}: {}", out.stderr);
        }
    }
    let vocab = {
        let c: serde_json::Value =
            serde_json::from_slice(&std::fs::read(small.join("config.json")).unwrap()).unwrap();
        c["vocab_size"].as_u64().unwrap()
    };
    let copy = testkit::copy_dir(&small);
    std::fs::write(
        copy.path().join("generation_config.json"),
        format!("{{\"eos_token_id\": {vocab}}}"),
    )
    .unwrap();
    let mut a = vec![copy.path().display().to_string()];
    a.extend(base.iter().map(|s| s.to_string()));
    let out = run(&a);
    assert_eq!(out.code, Some(2), "{}", out.stderr);
    for n in [
        "generation_config.json",
        &format!("eos_token_id {vocab}"),
        &format!("vocabulary of {vocab}"),
    ] {
        assert!(out.stderr.contains(n), "{}", out.stderr);
    }
}
