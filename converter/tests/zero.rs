//! DeepSpeed ZeRO checkpoints (`fixtures/training/zero*`, written by DeepSpeed 0.19.8 itself,
//! logits by transformers or megatron-core on the weights DeepSpeed's `zero_to_fp32` recovers):
//! each converts from its root with the family detected, writes the fp32 masters, and
//! reproduces those logits (`cpm-verify`'s library). The model config comes from config.json
//! beside the root, or from `--heads` alone.

use crate::cases;

use std::path::{Path, PathBuf};

use crate::common::{convert, verify};

const EXE: &str = env!("CARGO_BIN_EXE_cpm-convert");

/// (fixture, family expected, activation expected)
const CASES: &[(&str, &str, &str)] = &[
    ("zero1-bf16-w2", "hf-gpt2", "gelu_new"),
    ("zero2-fp16-w2", "hf-gpt2", "gelu_new"),
    ("zero2-fp32-w5", "hf-gpt2", "gelu_new"),
    ("zero3-bf16-w3", "hf-gpt2", "gelu_new"),
    ("zero1-tp2-dp2-mcore", "megatron-core-gpt", "gelu"),
];

fn training(name: &str) -> PathBuf {
    testkit::fixtures().join("training").join(name)
}

#[test]
fn every_zero_case_converts_with_heads_and_reproduces_its_logits() {
    let tmp = tempfile::tempdir().unwrap();
    for (name, family, activation) in CASES {
        let fixture = training(name);
        let out = tmp.path().join(name);
        let run = convert(&fixture.join("checkpoint"), &out, &["--heads", "4"]);
        assert_eq!(run.code, Some(0), "{name}: {run:?}");
        let text = testkit::run(
            EXE,
            &[
                fixture.join("checkpoint").as_os_str(),
                "-o".as_ref(),
                tmp.path().join("text").as_os_str(),
                "--force".as_ref(),
                "--heads".as_ref(),
                "4".as_ref(),
            ],
            &[],
        );
        assert!(
            text.stderr.contains("fp32 master weights"),
            "{name}: {}",
            text.stderr
        );
        let summary: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
        assert_eq!(summary["variant"], *family, "{name}: family detected");
        assert_eq!(summary["family_from"], "detected", "{name}");
        let config: serde_json::Value =
            serde_json::from_slice(&std::fs::read(out.join("config.json")).unwrap()).unwrap();
        assert_eq!(config["activation_function"], *activation, "{name}");
        // The fp32 masters, never the module copy in the training dtype.
        assert_eq!(config["torch_dtype"], "float32", "{name}");
        verify(name, &out, &fixture.join("reference"));
    }
}

#[test]
fn config_beside_the_root_or_a_tag_folder_as_input() {
    let tmp = tempfile::tempdir().unwrap();
    for (name, _, _) in CASES {
        let fixture = training(name);
        let root = tmp.path().join(name).join("ckpt");
        testkit::copy_tree(&fixture.join("checkpoint"), &root);
        std::fs::copy(
            fixture.join("reference/config.json"),
            root.join("config.json"),
        )
        .unwrap();
        let out = tmp.path().join(name).join("out");
        let run = convert(&root, &out, &[]);
        assert_eq!(run.code, Some(0), "{name}: {run:?}");
        verify(name, &out, &fixture.join("reference"));
        // The tag folder itself, heads given.
        let out = tmp.path().join(name).join("out-tag");
        let run = convert(&root.join("global_step2"), &out, &["--heads", "4"]);
        assert_eq!(run.code, Some(0), "{name}: {run:?}");
        verify(name, &out, &fixture.join("reference"));
    }
}

fn inspect(input: &Path) -> serde_json::Value {
    let run = testkit::run(
        env!("CARGO_BIN_EXE_cpm-inspect"),
        &[
            input.as_os_str(),
            "--heads".as_ref(),
            "4".as_ref(),
            "--json".as_ref(),
        ],
        &[],
    );
    assert_eq!(run.code, Some(0), "{run:?}");
    serde_json::from_str(&run.stdout).unwrap()
}

/// The partition sizes the fixtures' README records (read from the files with Python).
#[test]
fn inspect_shows_ranks_partitions_padding_and_what_is_read() {
    let z = inspect(&training("zero2-fp32-w5").join("checkpoint"));
    let g = &z["zero"][0]["groups"][0];
    assert_eq!(z["zero"][0]["stage"], "1/2");
    assert_eq!(g["elements"], 30624);
    let lens: Vec<u64> = g["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["elements"].as_u64().unwrap())
        .collect();
    assert_eq!(lens, [6126, 6126, 6126, 6126, 6120]);
    // Where Python's zipfile finds each rank's fp32 partition (data/3) by its bytes.
    let starts: Vec<u64> = g["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["start"].as_u64().unwrap())
        .collect();
    assert_eq!(starts, [51840, 51968, 51968, 51968, 51904]);
    let z = inspect(&training("zero3-bf16-w3").join("checkpoint"));
    let g = &z["zero"][0]["groups"][0];
    assert_eq!(z["zero"][0]["stage"], "3");
    assert_eq!(g["padding"], 30, "30 624 elements stored as 3 × 10 218");
    let read: u64 = g["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            assert_eq!(p["elements"], 10218);
            p["read"].as_u64().unwrap()
        })
        .sum();
    assert_eq!(read, 30624 * 4, "the padding is never read");
    let z = inspect(&training("zero1-tp2-dp2-mcore").join("checkpoint"));
    assert_eq!(z["zero"].as_array().unwrap().len(), 2, "two tp ranks");
    for r in z["zero"].as_array().unwrap() {
        assert_eq!(r["groups"][0]["elements"], 16064);
        assert_eq!(r["groups"][0]["partitions"].as_array().unwrap().len(), 2);
    }
}

#[test]
fn cpm_diff_finds_a_checkpoint_and_its_conversion_equal() {
    let tmp = tempfile::tempdir().unwrap();
    for (name, _, _) in CASES {
        let ckpt = training(name).join("checkpoint");
        let out = tmp.path().join(name);
        assert_eq!(
            convert(&ckpt, &out, &["--heads", "4"]).code,
            Some(0),
            "{name}"
        );
        let run = testkit::run(
            env!("CARGO_BIN_EXE_cpm-diff"),
            &[
                ckpt.as_os_str(),
                out.as_os_str(),
                "--values".as_ref(),
                "--heads".as_ref(),
                "4".as_ref(),
            ],
            &[],
        );
        assert_eq!(run.code, Some(0), "{name}: {run:?}");
        assert!(
            run.stdout.contains("28 identical"),
            "{name}: {}",
            run.stdout
        );
    }
}

/// Older DeepSpeed kept the alignment padding in the last rank's slice; 0.19.8 cuts it. Both
/// convert to the same logits.
#[test]
fn a_last_slice_that_keeps_its_padding_converts_the_same() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("ckpt");
    for (name, bytes) in cases::zero::padded_last_slice() {
        let f = root.join(name);
        std::fs::create_dir_all(f.parent().unwrap()).unwrap();
        std::fs::write(f, bytes).unwrap();
    }
    let out = tmp.path().join("out");
    let run = convert(&root, &out, &["--heads", "4"]);
    assert_eq!(run.code, Some(0), "{run:?}");
    verify("padded", &out, &training("zero2-fp32-w5").join("reference"));
    let z = inspect(&root);
    assert_eq!(z["zero"][0]["groups"][0]["padding"], 6);
}

/// A Megatron tracker beside DeepSpeed's `latest` (Megatron-DeepSpeed writes both): a tag that
/// holds no ZeRO files, or a `latest` that is no tag, leaves the root to the tracker.
#[test]
fn the_tracker_wins_when_latest_names_no_zero_checkpoint() {
    let tmp = tempfile::tempdir().unwrap();
    for (k, latest) in ["100", "../x", "global_step9"].iter().enumerate() {
        let root = tmp.path().join(format!("ckpt{k}"));
        testkit::copy_tree(&testkit::fixtures().join("tiny/ckpt"), &root);
        std::fs::write(root.join("latest"), latest).unwrap();
        let out = tmp.path().join(format!("out{k}"));
        let run = convert(&root, &out, &[]);
        assert_eq!(run.code, Some(0), "latest {latest}: {run:?}");
    }
}

/// Only the fp32 partitions are read: with the Adam moments and the module copy overwritten by
/// NaN bytes the conversion still reproduces the logits.
#[test]
fn neither_the_adam_moments_nor_the_module_copy_are_read() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("ckpt");
    for (name, bytes) in cases::zero::poisoned_moments_and_module() {
        let f = root.join(name);
        std::fs::create_dir_all(f.parent().unwrap()).unwrap();
        std::fs::write(f, bytes).unwrap();
    }
    let out = tmp.path().join("out");
    let run = convert(&root, &out, &["--heads", "4", "--strict"]);
    assert_eq!(run.code, Some(0), "{run:?}");
    verify(
        "poisoned",
        &out,
        &training("zero2-fp32-w5").join("reference"),
    );
}
