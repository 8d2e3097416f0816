//! The `cpm-verify` binary end to end, on fixtures written by PyTorch/transformers
//! (fixtures/make_fixtures.py, fixtures/make_corrupt_fixtures.py), never by our own code.

use std::path::{Path, PathBuf};

use serde_json::Value;
use testkit::copy_dir;

use crate::common;

use common::{verify_json, verify_text, write_npy};

fn fixtures() -> PathBuf {
    testkit::fixtures().join("tiny")
}

#[test]
fn transformers_own_port_passes_against_its_recorded_logits() {
    let (code, j) = verify_json(&fixtures().join("hf"), &fixtures().join("reference"), &[]);
    assert_eq!(code, 0, "{j:#}");
    assert_eq!(j["pass"], true);
    assert_eq!(j["tokens"], 32);
    assert_eq!(j["device"], "cpu");
    assert_eq!(j["top1_agreement"], 1.0);
    // An f32 forward of fp16 weights differs from torch only by summation order.
    assert!(j["max_abs_diff"].as_f64().unwrap() < 2e-4, "{j:#}");
    assert!(j["kl_max"].as_f64().unwrap() < 1e-8, "{j:#}");
    assert_eq!(j["atol"], 2e-4, "fixture.json's tolerance applies");
    assert_eq!(j["rtol"], 2e-4);
    assert!(j["forward_seconds"].as_f64().unwrap() > 0.0);
    let rows = j["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 2);
    for key in [
        "max_abs_diff",
        "mean_abs_diff",
        "max_rel_diff",
        "top1_agreement",
        "kl_mean",
        "kl_max",
    ] {
        assert!(rows[1][key].is_number(), "row figure {key} missing: {j:#}");
        assert!(j[key].is_number(), "figure {key} missing: {j:#}");
    }
}

fn read_npy<T: npyz::Deserialize>(path: &Path) -> Vec<T> {
    let bytes = std::fs::read(path).unwrap();
    npyz::NpyFile::new(&bytes[..]).unwrap().into_vec().unwrap()
}

fn reference_ids() -> Vec<i64> {
    read_npy(&fixtures().join("reference/input_ids.npy"))
}

fn reference_logits() -> Vec<f32> {
    read_npy(&fixtures().join("reference/logits.npy"))
}

fn error_of(j: &Value) -> &str {
    j["error"]
        .as_str()
        .unwrap_or_else(|| panic!("no error string in {j:#}"))
}

#[test]
fn human_table_reports_pass_and_exit_0() {
    let (code, out, _) = verify_text(&fixtures().join("hf"), &fixtures().join("reference"), &[]);
    assert_eq!(code, 0, "{out}");
    assert!(out.starts_with("cpm-verify: PASS"), "{out}");
    assert!(out.contains("\nall "), "no overall line: {out}");
}

// ---- Ports that went wrong: each copy was written by fixtures/make_corrupt_fixtures.py, which
// also recorded (expected.json) how far transformers itself says it moves the logits.

/// cpm-verify must call the copy a mismatch (exit 1) and measure the same movement transformers
/// measured, so the pass/fail decision rests on a faithful forward pass.
fn assert_corruption_detected(name: &str) -> Value {
    let dir = fixtures().join("corrupt").join(name);
    let (code, j) = verify_json(&dir, &fixtures().join("reference"), &[]);
    assert_eq!(code, 1, "{name} was not detected: {j:#}");
    assert_eq!(j["pass"], false);
    let expected: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("expected.json")).unwrap()).unwrap();
    let theirs = expected["max_abs_diff"].as_f64().unwrap();
    let ours = j["max_abs_diff"].as_f64().unwrap();
    assert!(
        (ours - theirs).abs() <= 1e-3 + 1e-3 * theirs,
        "{name}: transformers moves the logits by {theirs}, we measure {ours}"
    );
    j
}

#[test]
fn two_heads_query_columns_swapped_is_a_mismatch() {
    let j = assert_corruption_detected("head-swap");
    assert!(j["top1_agreement"].as_f64().unwrap() < 0.5, "{j:#}");
}

#[test]
fn qkv_ranks_concatenated_without_interleaving_is_a_mismatch() {
    let j = assert_corruption_detected("qkv-plain-concat");
    assert!(j["top1_mismatches"].as_u64().unwrap() > 0, "{j:#}");
}

#[test]
fn row_parallel_weight_not_transposed_is_a_mismatch() {
    assert_corruption_detected("c-proj-not-transposed");
}

#[test]
fn two_layers_swapped_is_a_mismatch() {
    assert_corruption_detected("layers-swapped");
}

#[test]
fn exact_gelu_instead_of_gelu_new_is_a_mismatch() {
    // The subtlest one: every argmax still agrees; only the element-wise tolerance catches it.
    let j = assert_corruption_detected("gelu-erf");
    assert!(j["out_of_tolerance"].as_u64().unwrap() > 0, "{j:#}");
}

// ---- Errors: exit 2, a JSON error under --json, naming what is wrong.

#[test]
fn missing_logits_file_is_an_error_naming_it() {
    let fx = copy_dir(&fixtures().join("reference"));
    std::fs::remove_file(fx.path().join("logits.npy")).unwrap();
    let (code, j) = verify_json(&fixtures().join("hf"), fx.path(), &[]);
    assert_eq!(code, 2, "{j:#}");
    assert!(error_of(&j).contains("logits.npy"), "{j:#}");
    assert_eq!(
        j.as_object().unwrap().len(),
        1,
        "an error object holds only `error`: {j:#}"
    );
}

#[test]
fn missing_weights_file_is_an_error_naming_it() {
    let model = copy_dir(&fixtures().join("hf"));
    std::fs::remove_file(model.path().join("model.safetensors")).unwrap();
    let (code, j) = verify_json(model.path(), &fixtures().join("reference"), &[]);
    assert_eq!(code, 2, "{j:#}");
    assert!(error_of(&j).contains("model.safetensors"), "{j:#}");
}

#[test]
fn error_without_json_goes_to_stderr() {
    let (code, out, err) = verify_text(
        &fixtures().join("nonexistent"),
        &fixtures().join("reference"),
        &[],
    );
    assert_eq!(code, 2);
    assert!(out.is_empty(), "{out}");
    assert!(err.contains("config.json"), "{err}");
}

#[test]
fn fixture_vocab_disagreeing_with_the_model_is_an_error() {
    let fx = copy_dir(&fixtures().join("reference"));
    // Drop the last logit of every position: vocab 999 against the model's 1000.
    let logits: Vec<f32> = reference_logits()
        .chunks_exact(1000)
        .flat_map(|row| row[..999].to_vec())
        .collect();
    write_npy(&fx.path().join("logits.npy"), &[2, 16, 999], logits);
    let (code, j) = verify_json(&fixtures().join("hf"), fx.path(), &[]);
    assert_eq!(code, 2, "{j:#}");
    let e = error_of(&j);
    assert!(
        e.contains("vocab 999") && e.contains("vocab_size 1000"),
        "{e}"
    );
}

#[test]
fn ids_and_logits_shapes_disagreeing_is_an_error() {
    let fx = copy_dir(&fixtures().join("reference"));
    write_npy(
        &fx.path().join("input_ids.npy"),
        &[1, 16],
        reference_ids()[..16].to_vec(),
    );
    let (code, j) = verify_json(&fixtures().join("hf"), fx.path(), &[]);
    assert_eq!(code, 2, "{j:#}");
    assert!(
        error_of(&j).contains("[2, 16, 1000]") && error_of(&j).contains("[1, 16]"),
        "{j:#}"
    );
}

#[test]
fn input_id_outside_the_vocabulary_is_an_error() {
    let fx = copy_dir(&fixtures().join("reference"));
    let mut ids = reference_ids();
    ids[5] = 1000;
    write_npy(&fx.path().join("input_ids.npy"), &[2, 16], ids);
    let (code, j) = verify_json(&fixtures().join("hf"), fx.path(), &[]);
    assert_eq!(code, 2, "{j:#}");
    let e = error_of(&j);
    assert!(
        e.contains("[0, 5]") && e.contains("1000") && e.contains("vocabulary"),
        "{e}"
    );
}

#[test]
fn negative_input_id_is_an_error() {
    let fx = copy_dir(&fixtures().join("reference"));
    let mut ids = reference_ids();
    ids[17] = -1;
    write_npy(&fx.path().join("input_ids.npy"), &[2, 16], ids);
    let (code, j) = verify_json(&fixtures().join("hf"), fx.path(), &[]);
    assert_eq!(code, 2, "{j:#}");
    assert!(error_of(&j).contains("[1, 1]"), "{j:#}");
}

#[test]
fn sequence_longer_than_n_positions_is_refused_before_the_logits_are_read() {
    let fx = copy_dir(&fixtures().join("reference"));
    write_npy(&fx.path().join("input_ids.npy"), &[1, 65], vec![3i64; 65]);
    // Logits that would be an error of their own if they were read.
    std::fs::write(fx.path().join("logits.npy"), b"not an npy file").unwrap();
    let (code, j) = verify_json(&fixtures().join("hf"), fx.path(), &[]);
    assert_eq!(code, 2, "{j:#}");
    let e = error_of(&j);
    assert!(e.contains("seq 65") && e.contains("n_positions 64"), "{e}");
}

#[test]
fn config_disagreeing_with_a_tensor_shape_names_the_tensor() {
    let model = copy_dir(&fixtures().join("hf"));
    let path = model.path().join("config.json");
    let mut cfg: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    cfg["n_inner"] = 128.into();
    std::fs::write(&path, cfg.to_string()).unwrap();
    let (code, j) = verify_json(model.path(), &fixtures().join("reference"), &[]);
    assert_eq!(code, 2, "{j:#}");
    let e = error_of(&j);
    assert!(
        e.contains("transformer.h.0.mlp.c_fc.weight")
            && e.contains("[64, 256]")
            && e.contains("[64, 128]"),
        "{e}"
    );
}

#[test]
fn unsupported_activation_is_an_error() {
    let model = copy_dir(&fixtures().join("hf"));
    let path = model.path().join("config.json");
    let mut cfg: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    cfg["activation_function"] = "mish".into();
    std::fs::write(&path, cfg.to_string()).unwrap();
    let (code, j) = verify_json(model.path(), &fixtures().join("reference"), &[]);
    assert_eq!(code, 2, "{j:#}");
    assert!(error_of(&j).contains("\"mish\" is not supported"), "{j:#}");
}

#[test]
fn cuda_device_without_a_usable_gpu_is_a_clear_error() {
    // Without the feature, or on a machine without the CUDA libraries, --device cuda must end
    // with exit 2 and a message, never a panic. (With a GPU present this test does not apply.)
    let has_gpu = Path::new("/dev/nvidia0").exists();
    if cfg!(feature = "cuda") && has_gpu {
        return;
    }
    let (code, j) = verify_json(
        &fixtures().join("hf"),
        &fixtures().join("reference"),
        &["--device", "cuda"],
    );
    assert_eq!(code, 2, "{j:#}");
    let e = error_of(&j);
    assert!(e.contains("CUDA") || e.contains("libcuda"), "{e}");
}

// ---- Fixture formats and tolerance precedence.

#[test]
fn int32_input_ids_are_accepted() {
    let fx = copy_dir(&fixtures().join("reference"));
    let ids: Vec<i32> = reference_ids().into_iter().map(|i| i as i32).collect();
    write_npy(&fx.path().join("input_ids.npy"), &[2, 16], ids);
    let (code, j) = verify_json(&fixtures().join("hf"), fx.path(), &[]);
    assert_eq!(code, 0, "{j:#}");
}

#[test]
fn float16_logits_need_a_fixture_json_tolerance_above_their_rounding() {
    let fx = copy_dir(&fixtures().join("reference"));
    let half: Vec<half::f16> = reference_logits()
        .into_iter()
        .map(half::f16::from_f32)
        .collect();
    write_npy(&fx.path().join("logits.npy"), &[2, 16, 1000], half);
    let meta = fx.path().join("fixture.json");

    std::fs::remove_file(&meta).unwrap();
    let (code, j) = verify_json(&fixtures().join("hf"), fx.path(), &[]);
    assert_eq!(code, 2, "no fixture.json: {j:#}");
    assert!(error_of(&j).contains("float16"), "{j:#}");

    // rtol 1e-4 is tighter than float16's 4.9e-4 relative rounding.
    std::fs::write(&meta, r#"{"atol": 1e-4, "rtol": 1e-4}"#).unwrap();
    let (code, j) = verify_json(&fixtures().join("hf"), fx.path(), &[]);
    assert_eq!(code, 2, "tight tolerance: {j:#}");

    std::fs::write(&meta, r#"{"atol": 1e-3, "rtol": 2e-3}"#).unwrap();
    let (code, j) = verify_json(&fixtures().join("hf"), fx.path(), &[]);
    assert_eq!(code, 0, "loose enough: {j:#}");
    assert_eq!(j["rtol"], 2e-3);
}

#[test]
fn fixture_json_tolerance_applies_and_flags_override_it() {
    let fx = copy_dir(&fixtures().join("reference"));
    std::fs::write(
        fx.path().join("fixture.json"),
        r#"{"atol": 1e-9, "rtol": 0, "description": "strict"}"#,
    )
    .unwrap();
    let (code, j) = verify_json(&fixtures().join("hf"), fx.path(), &[]);
    assert_eq!(code, 1, "summation-order noise exceeds 1e-9: {j:#}");
    assert_eq!(j["atol"], 1e-9);
    assert_eq!(j["description"], "strict");

    let (code, j) = verify_json(
        &fixtures().join("hf"),
        fx.path(),
        &["--atol", "1e-3", "--rtol", "1e-3"],
    );
    assert_eq!(code, 0, "{j:#}");
    assert_eq!(j["atol"], 1e-3);
}

#[test]
fn defaults_apply_without_fixture_json() {
    let fx = copy_dir(&fixtures().join("reference"));
    std::fs::remove_file(fx.path().join("fixture.json")).unwrap();
    let (code, j) = verify_json(&fixtures().join("hf"), fx.path(), &["--rtol", "0.5"]);
    assert_eq!(code, 0, "{j:#}");
    assert_eq!(j["atol"], 1e-3);
    assert_eq!(j["rtol"], 0.5);
}

/// Rewrites tiny/hf as two shards with an index, names without the `transformer.` prefix and an
/// explicit lm_head.weight (a copy of wte): all layouts transformers loads.
#[test]
fn sharded_unprefixed_model_with_explicit_head_passes() {
    use safetensors::tensor::TensorView;
    use safetensors::SafeTensors;
    let bytes = std::fs::read(fixtures().join("hf/model.safetensors")).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(
        fixtures().join("hf/config.json"),
        dir.path().join("config.json"),
    )
    .unwrap();
    let mut shards: [Vec<(String, TensorView)>; 2] = [Vec::new(), Vec::new()];
    let mut weight_map = serde_json::Map::new();
    for (name, view) in st.tensors() {
        let bare = name
            .strip_prefix("transformer.")
            .unwrap_or(&name)
            .to_string();
        let shard = usize::from(bare.starts_with("h.1.") || bare.starts_with("ln_f"));
        if bare == "wte.weight" {
            shards[1].push(("lm_head.weight".into(), view.clone()));
            weight_map.insert(
                "lm_head.weight".into(),
                "model-00002-of-00002.safetensors".into(),
            );
        }
        weight_map.insert(
            bare.clone(),
            format!("model-0000{}-of-00002.safetensors", shard + 1).into(),
        );
        shards[shard].push((bare, view));
    }
    for (i, tensors) in shards.into_iter().enumerate() {
        let path = dir
            .path()
            .join(format!("model-0000{}-of-00002.safetensors", i + 1));
        safetensors::serialize_to_file(tensors, None, &path).unwrap();
    }
    let index = serde_json::json!({"metadata": {}, "weight_map": weight_map});
    std::fs::write(
        dir.path().join("model.safetensors.index.json"),
        index.to_string(),
    )
    .unwrap();

    let (code, j) = verify_json(dir.path(), &fixtures().join("reference"), &[]);
    assert_eq!(code, 0, "{j:#}");
    let (_, plain) = verify_json(&fixtures().join("hf"), &fixtures().join("reference"), &[]);
    assert_eq!(
        j["max_abs_diff"], plain["max_abs_diff"],
        "same weights, same numbers"
    );
}

// ---- Against a recording of the ORIGINAL checkpoint: fixtures/tiny/reference-megatron was
// written by `fixtures/record.py --megatron fixtures/tiny/ckpt` (rank-by-rank Megatron forward,
// all 64 positions), so it shares no code path with transformers or with us.

#[test]
fn transformers_port_passes_against_the_megatron_recording() {
    let (code, j) = verify_json(
        &fixtures().join("hf"),
        &fixtures().join("reference-megatron"),
        &[],
    );
    assert_eq!(code, 0, "{j:#}");
    assert_eq!(j["tokens"], 64);
}

#[test]
fn plain_qkv_concatenation_fails_against_the_megatron_recording() {
    let (code, j) = verify_json(
        &fixtures().join("corrupt/qkv-plain-concat"),
        &fixtures().join("reference-megatron"),
        &[],
    );
    assert_eq!(code, 1, "{j:#}");
    assert!(j["max_abs_diff"].as_f64().unwrap() > 1.0, "{j:#}");
}

// ---- Config knobs CPM-LM does not use, on models and logits written by transformers
// (fixtures/make_variant_fixtures.py, which also checks that each knob, set back to GPT-2's
// default, moves those logits far outside the tolerance: passing proves the knob is honoured).

#[test]
fn relu_unscaled_attention_wide_eps_bf16_variant_passes() {
    let dir = fixtures().join("variants/relu-bf16");
    let (code, j) = verify_json(&dir, &dir.join("reference"), &[]);
    assert_eq!(code, 0, "{j:#}");
}

#[test]
fn exact_gelu_untied_head_inverse_layer_scaling_f32_variant_passes() {
    let dir = fixtures().join("variants/gelu-untied");
    let (code, j) = verify_json(&dir, &dir.join("reference"), &[]);
    assert_eq!(code, 0, "{j:#}");
}

#[test]
fn threads_default_to_rayon_num_threads_and_the_flag_overrides_it() {
    // `--threads N` sizes every pool of the pass; without it RAYON_NUM_THREADS does.
    let (model, fx) = (fixtures().join("hf"), fixtures().join("reference"));
    let json = |args: &[&str], env: &[(&str, &str)]| -> Value {
        let mut all = vec![model.as_os_str(), fx.as_os_str(), "--json".as_ref()];
        all.extend(args.iter().map(std::ffi::OsStr::new));
        let run = testkit::run(env!("CARGO_BIN_EXE_cpm-verify"), &all, env);
        assert_eq!(run.code, Some(0), "{}{}", run.stdout, run.stderr);
        serde_json::from_str(&run.stdout).unwrap()
    };
    assert_eq!(json(&[], &[("RAYON_NUM_THREADS", "3")])["threads"], 3);
    let j = json(&["--threads", "2"], &[("RAYON_NUM_THREADS", "3")]);
    assert_eq!(j["threads"], 2);
    assert_eq!(j["pass"], true);
}
