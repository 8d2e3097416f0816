//! Checkpoints in the formats training libraries write, written by those libraries themselves
//! (`fixtures/training/`, see its README): torch Distributed Checkpoint folders from accelerate
//! (FSDP2 `SHARDED_STATE_DICT`) and megatron-core (`torch_dist`, 0.16.1 and 0.19.2). Each must
//! convert with its family detected from the folder the user has, and reproduce the logits the
//! library's own forward pass recorded (`cpm-verify`'s library).

use std::path::{Path, PathBuf};

use crate::common::{convert, verify};

fn training() -> PathBuf {
    testkit::fixtures().join("training")
}

/// (fixture, input below it, flags, family expected, activation expected)
const CASES: &[(&str, &str, &[&str], &str, &str)] = &[
    // accelerate records no model config: the head count is a flag (or config.json, below).
    (
        "dcp-fsdp2-accelerate",
        "checkpoint",
        &["--heads", "4"],
        "hf-gpt2",
        "gelu_new",
    ),
    (
        "dcp-fsdp2-accelerate",
        "checkpoint/pytorch_model_fsdp_0",
        &["--heads", "4"],
        "hf-gpt2",
        "gelu_new",
    ),
    (
        "mcore-dist-016-tp2",
        "checkpoint",
        &[],
        "megatron-core-gpt",
        "gelu",
    ),
    (
        "mcore-dist-019-tp2-pp2",
        "checkpoint",
        &[],
        "megatron-core-gpt",
        "gelu",
    ),
    (
        "mcore-dist-019-tp2-pp2",
        "checkpoint/iter_0000002",
        &[],
        "megatron-core-gpt",
        "gelu",
    ),
];

fn config(out: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(out.join("config.json")).unwrap()).unwrap()
}

#[test]
fn every_dcp_checkpoint_converts_and_reproduces_its_own_logits() {
    let tmp = tempfile::tempdir().unwrap();
    for (i, (name, input, flags, family, activation)) in CASES.iter().enumerate() {
        let fixture = training().join(name);
        let out = tmp.path().join(format!("{i}-{name}"));
        let run = convert(&fixture.join(input), &out, flags);
        assert_eq!(run.code, Some(0), "{name}/{input}: {run:?}");
        let summary: serde_json::Value =
            serde_json::from_str(&run.stdout).unwrap_or_else(|e| panic!("{e}: {run:?}"));
        assert_eq!(summary["variant"], *family, "{name}: family detected");
        assert_eq!(summary["family_from"], "detected", "{name}");
        let c = config(&out);
        assert_eq!(c["activation_function"], *activation, "{name}: activation");
        let want = config(&fixture.join("reference"));
        assert_eq!(
            c["tie_word_embeddings"], want["tie_word_embeddings"],
            "{name}: tied head"
        );
        verify(name, &out, &fixture.join("reference"));
    }
}

#[test]
fn accelerate_output_takes_the_config_json_saved_beside_it() {
    // The user saves the model's config.json in accelerate's output folder (or passes --heads).
    let tmp = tempfile::tempdir().unwrap();
    let fixture = training().join("dcp-fsdp2-accelerate");
    let ckpt = tmp.path().join("ckpt");
    testkit::copy_tree(&fixture.join("checkpoint"), &ckpt);
    let no_config = convert(&ckpt, &tmp.path().join("none"), &[]);
    assert_eq!(no_config.code, Some(2), "{no_config:?}");
    assert!(no_config.stdout.contains("--heads"), "{no_config:?}");
    std::fs::copy(
        fixture.join("reference/config.json"),
        ckpt.join("config.json"),
    )
    .unwrap();
    let out = tmp.path().join("out");
    let run = convert(&ckpt, &out, &[]);
    assert_eq!(run.code, Some(0), "{run:?}");
    verify("dcp-fsdp2-accelerate", &out, &fixture.join("reference"));
}

#[test]
fn inspect_shows_the_chunks_and_what_a_conversion_reads() {
    let input = training().join("mcore-dist-019-tp2-pp2/checkpoint");
    let args: Vec<&std::ffi::OsStr> = vec![input.as_os_str(), "--json".as_ref()];
    let run = testkit::run(env!("CARGO_BIN_EXE_cpm-inspect"), &args, &[]);
    assert_eq!(run.code, Some(0), "{run:?}");
    let r: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(r["files"][0]["format"], "dcp");
    let chunks = &r["chunks"];
    let qkv = chunks["tensors"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "decoder.layers.self_attention.linear_qkv.weight")
        .unwrap();
    // tp 2 x pp 2: each stage's layer split in two along the rows (README's facts).
    assert_eq!(qkv["shape"], serde_json::json!([2, 96, 32]));
    assert_eq!(qkv["chunks"].as_array().unwrap().len(), 4);
    assert_eq!(qkv["read"], true);
    let files = chunks["data_files"].as_array().unwrap();
    let names: Vec<&str> = files.iter().map(|f| f["name"].as_str().unwrap()).collect();
    assert_eq!(
        names,
        [
            "__0_0.distcp",
            "__1_0.distcp",
            "__2_0.distcp",
            "__3_0.distcp"
        ]
    );
    for f in files {
        assert!(f["read_bytes"].as_u64() <= f["item_bytes"].as_u64(), "{f}");
    }
    // The layers show as the family's per-layer names.
    let names: Vec<&str> = r["tensors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert!(
        names.contains(&"decoder.layers.1.mlp.linear_fc2.weight"),
        "{names:?}"
    );
}

#[test]
fn diff_finds_each_checkpoint_equal_to_its_conversion() {
    let tmp = tempfile::tempdir().unwrap();
    for (name, flags) in [
        ("dcp-fsdp2-accelerate", &["--heads", "4"][..]),
        ("mcore-dist-016-tp2", &[]),
        ("mcore-dist-019-tp2-pp2", &[]),
    ] {
        let input = training().join(name).join("checkpoint");
        let out = tmp.path().join(name);
        let run = convert(&input, &out, flags);
        assert_eq!(run.code, Some(0), "{name}: {run:?}");
        let mut args: Vec<&std::ffi::OsStr> =
            vec![input.as_os_str(), out.as_os_str(), "--values".as_ref()];
        args.extend(flags.iter().map(std::ffi::OsStr::new));
        let diff = testkit::run(env!("CARGO_BIN_EXE_cpm-diff"), &args, &[]);
        assert_eq!(diff.code, Some(0), "{name}: {diff:?}");
        assert!(diff.stdout.contains("0 differ: equal"), "{name}: {diff:?}");
    }
}
