//! End-to-end behaviour of `cpm-convert` on the committed fixtures. The expected tensors and
//! config values come from transformers' own `save_pretrained` (fixtures/make_fixtures.py),
//! never from this crate.

use std::path::{Path, PathBuf};
use std::process::Command;

use testkit::Run;

use safetensors::SafeTensors;

fn fixtures() -> PathBuf {
    testkit::fixtures().join("tiny")
}

/// Run the binary under testkit's deadline: a hang fails the test instead of stalling it.
fn cpm_convert(args: &[&std::ffi::OsStr]) -> Run {
    testkit::run(env!("CARGO_BIN_EXE_cpm-convert"), args, &[])
}

fn run(input: &Path, out: &Path, extra: &[&str]) -> Run {
    let mut args: Vec<&std::ffi::OsStr> = vec![input.as_os_str(), "-o".as_ref(), out.as_os_str()];
    args.extend(extra.iter().map(|s| std::ffi::OsStr::new(*s)));
    cpm_convert(&args)
}

fn stderr(o: &Run) -> &str {
    &o.stderr
}

/// Every tensor of `dir/model.safetensors` equals transformers' tensor bit for bit.
fn assert_matches_transformers(dir: &Path) {
    let expected = std::fs::read(fixtures().join("hf/model.safetensors")).unwrap();
    let expected = SafeTensors::deserialize(&expected).unwrap();
    let got = std::fs::read(dir.join("model.safetensors")).unwrap();
    let got = SafeTensors::deserialize(&got).expect("the safetensors crate reads our file");
    let mut want: Vec<_> = expected.names();
    let mut have: Vec<_> = got.names();
    want.sort();
    have.sort();
    assert_eq!(have, want, "tensor names differ from transformers' GPT-2");
    for name in want {
        let (a, b) = (expected.tensor(name).unwrap(), got.tensor(name).unwrap());
        assert_eq!(b.dtype(), a.dtype(), "{name}: dtype");
        assert_eq!(b.shape(), a.shape(), "{name}: shape");
        assert!(
            b.data() == a.data(),
            "{name}: bytes differ from transformers'"
        );
    }
}

fn config(dir: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(dir.join(dir.join("config.json"))).unwrap()).unwrap()
}

/// The fields transformers wrote for the same model must agree with ours.
fn assert_config(dir: &Path) {
    let ours = config(dir);
    let theirs = config(&fixtures().join("hf"));
    for key in [
        "model_type",
        "architectures",
        "activation_function",
        "layer_norm_epsilon",
        "n_embd",
        "n_layer",
        "n_head",
        "n_positions",
        "vocab_size",
        "tie_word_embeddings",
        "bos_token_id",
        "eos_token_id",
    ] {
        assert_eq!(ours[key], theirs[key], "config.json `{key}`");
    }
    assert_eq!(ours["n_ctx"], theirs["n_positions"]);
    assert_eq!(ours["torch_dtype"], "float16");
    assert!(
        ours.get("n_inner").is_none(),
        "n_inner only when the FFN is not 4x hidden"
    );
}

/// SHA256SUMS is what coreutils' `sha256sum -c` accepts.
fn assert_sums(dir: &Path) {
    let sums = std::fs::read_to_string(dir.join("SHA256SUMS")).unwrap();
    assert_eq!(sums.lines().count(), 2, "{sums}");
    let o = Command::new("sha256sum")
        .arg("-c")
        .arg("SHA256SUMS")
        .current_dir(dir)
        .output()
        .expect("sha256sum (coreutils) is installed");
    assert!(
        o.status.success(),
        "sha256sum -c failed: {}",
        String::from_utf8_lossy(&o.stdout)
    );
}

fn assert_fails(o: &Run, out: &Path, needles: &[&str]) {
    assert_eq!(o.code, Some(2), "exit code; stderr: {}", stderr(o));
    let e = stderr(o);
    for n in needles {
        assert!(e.contains(n), "message lacks {n:?}: {e}");
    }
    assert!(!e.contains("panicked"), "{e}");
    testkit::assert_nothing_left(out);
}

fn convert_ok(input: &Path, extra: &[&str]) -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let o = run(input, &out, extra);
    assert!(o.code == Some(0), "cpm-convert failed: {}", stderr(&o));
    assert_matches_transformers(&out);
    assert_config(&out);
    assert_sums(&out);
    tmp
}

#[test]
fn zip_mp2_root_with_tracker_matches_transformers() {
    convert_ok(&fixtures().join("ckpt"), &[]);
}

#[test]
fn zip_mp2_iteration_directory_matches_transformers() {
    convert_ok(&fixtures().join("ckpt/100"), &[]);
}

#[test]
fn legacy_format_flat_storage_matches_transformers() {
    // Older DeepSpeed: no args, no mp_world_size; the head count must be given.
    convert_ok(&fixtures().join("ckpt-legacy"), &["--heads", "4"]);
}

#[test]
fn mp1_release_tracker_matches_transformers() {
    convert_ok(&fixtures().join("ckpt-mp1"), &[]);
}

#[test]
fn single_pt_file_matches_transformers() {
    convert_ok(
        &fixtures().join("ckpt-mp1/release/mp_rank_00_model_states.pt"),
        &[],
    );
}

#[test]
fn output_is_byte_identical_across_runs_and_formats() {
    let a = convert_ok(&fixtures().join("ckpt"), &[]);
    let b = convert_ok(&fixtures().join("ckpt"), &[]);
    for f in ["model.safetensors", "config.json", "SHA256SUMS"] {
        let x = std::fs::read(a.path().join("out").join(f)).unwrap();
        let y = std::fs::read(b.path().join("out").join(f)).unwrap();
        assert!(x == y, "{f} differs between two runs on the same input");
    }
}

#[test]
fn metadata_names_sources_without_absolute_paths() {
    let t = convert_ok(&fixtures().join("ckpt"), &[]);
    let bytes = std::fs::read(t.path().join("out/model.safetensors")).unwrap();
    let (_, meta) = SafeTensors::read_metadata(&bytes).unwrap();
    let m = meta.metadata().as_ref().expect("__metadata__");
    assert_eq!(m.get("format").map(String::as_str), Some("pt"));
    assert_eq!(m.get("source_variant").map(String::as_str), Some("cpm-lm"));
    let files: serde_json::Value = serde_json::from_str(&m["source_files"]).unwrap();
    assert_eq!(files[0]["name"], "100/mp_rank_00_model_states.pt");
    let size = std::fs::metadata(fixtures().join("ckpt/100/mp_rank_00_model_states.pt"))
        .unwrap()
        .len();
    assert_eq!(files[0]["bytes"], size);
    assert!(
        !m.values().any(|v| v.contains(env!("CARGO_MANIFEST_DIR"))),
        "absolute path in metadata"
    );
}

#[test]
fn dtype_f32_widens_exactly() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let o = run(&fixtures().join("ckpt"), &out, &["--dtype", "f32"]);
    assert!(o.code == Some(0), "{}", stderr(&o));
    let expected = std::fs::read(fixtures().join("hf/model.safetensors")).unwrap();
    let expected = SafeTensors::deserialize(&expected).unwrap();
    let got = std::fs::read(out.join("model.safetensors")).unwrap();
    let got = SafeTensors::deserialize(&got).unwrap();
    for (name, a) in expected.tensors() {
        let b = got.tensor(&name).unwrap();
        assert_eq!(b.dtype(), safetensors::Dtype::F32);
        let wide: Vec<f32> = a
            .data()
            .chunks_exact(2)
            .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect();
        let ours: Vec<f32> = b
            .data()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        assert_eq!(ours, wide, "{name}");
    }
    assert_eq!(config(&out)["torch_dtype"], "float32");
}

#[test]
fn dry_run_prints_the_plan_and_writes_nothing() {
    let o = cpm_convert(&[fixtures().join("ckpt").as_os_str(), "--dry-run".as_ref()]);
    assert!(o.code == Some(0), "{}", stderr(&o));
    let s = &o.stdout;
    assert!(
        s.contains("transformer.layers.1.attention.query_key_value.weight"),
        "{s}"
    );
    assert!(s.contains("qkv-dim0+T"), "{s}");
    assert!(s.contains("[64, 192]"), "{s}");
    let o = cpm_convert(&[
        fixtures().join("ckpt").as_os_str(),
        "--dry-run".as_ref(),
        "--json".as_ref(),
    ]);
    let plan: serde_json::Value = serde_json::from_str(&o.stdout).expect("--json plan");
    assert_eq!(plan["heads"]["count"], 4);
    assert_eq!(plan["model_parallel"], 2);
    assert_eq!(plan["entries"].as_array().map(Vec::len), Some(28));
}

/// A checkpoint directory assembled from fixture files, for the error paths, and an OUT_DIR
/// beside it (never inside: an OUT_DIR inside the input is refused before anything else).
struct Assembled {
    _tmp: tempfile::TempDir,
    ckpt: PathBuf,
    out: PathBuf,
}

fn assemble(files: &[(&str, PathBuf)]) -> Assembled {
    let tmp = tempfile::tempdir().unwrap();
    let ckpt = tmp.path().join("ckpt");
    for (name, src) in files {
        let dst = ckpt.join(name);
        std::fs::create_dir_all(dst.parent().unwrap()).unwrap();
        std::fs::copy(src, dst).unwrap();
    }
    let out = tmp.path().join("out");
    Assembled {
        _tmp: tmp,
        ckpt,
        out,
    }
}

fn rank(dir: &str, r: usize) -> PathBuf {
    fixtures()
        .join(dir)
        .join(format!("mp_rank_{r:02}_model_states.pt"))
}

#[test]
fn missing_rank_is_an_error() {
    // mp_world_size says 2, only rank 0 is there.
    let d = assemble(&[("mp_rank_00_model_states.pt", rank("ckpt/100", 0))]);
    let out = d.out.clone();
    assert_fails(
        &run(&d.ckpt, &out, &[]),
        &out,
        &["mp_world_size = 2", "1 rank file"],
    );
    // No mp_world_size (older DeepSpeed): a gap in the rank numbers.
    let d = assemble(&[("mp_rank_01_model_states.pt", rank("ckpt-legacy", 1))]);
    let out = d.out.clone();
    assert_fails(
        &run(&d.ckpt, &out, &["--heads", "4"]),
        &out,
        &["rank 0 is missing"],
    );
}

#[test]
fn tracker_naming_a_missing_iteration_is_an_error() {
    let d = assemble(&[("100/mp_rank_00_model_states.pt", rank("ckpt/100", 0))]);
    std::fs::write(d.ckpt.join("latest_checkpointed_iteration.txt"), "200\n").unwrap();
    let out = d.out.clone();
    assert_fails(
        &run(&d.ckpt, &out, &[]),
        &out,
        &["iteration `200`", "does not exist"],
    );
}

#[test]
fn ranks_disagreeing_on_a_replicated_tensor_is_an_error() {
    let d = assemble(&[
        ("mp_rank_00_model_states.pt", rank("ckpt/100", 0)),
        (
            "mp_rank_01_model_states.pt",
            fixtures().join("broken/replicated-mismatch.pt"),
        ),
    ]);
    let out = d.out.clone();
    assert_fails(
        &run(&d.ckpt, &out, &[]),
        &out,
        &[
            "transformer.final_layernorm.bias",
            "rank 0",
            "rank 1",
            "differ",
        ],
    );
}

#[test]
fn ranks_disagreeing_on_a_shape_is_an_error() {
    let d = assemble(&[
        ("mp_rank_00_model_states.pt", rank("ckpt/100", 0)),
        (
            "mp_rank_01_model_states.pt",
            fixtures().join("broken/shape-mismatch.pt"),
        ),
    ]);
    let out = d.out.clone();
    assert_fails(
        &run(&d.ckpt, &out, &[]),
        &out,
        &[
            "transformer.layers.1.mlp.dense_h_to_4h.weight",
            "[128, 64]",
            "[129, 64]",
        ],
    );
}

#[test]
fn ranks_disagreeing_on_a_dtype_is_an_error() {
    let d = assemble(&[
        ("mp_rank_00_model_states.pt", rank("ckpt/100", 0)),
        (
            "mp_rank_01_model_states.pt",
            fixtures().join("broken/dtype-mismatch.pt"),
        ),
    ]);
    let out = d.out.clone();
    assert_fails(
        &run(&d.ckpt, &out, &[]),
        &out,
        &["transformer.final_layernorm.weight", "float16", "float32"],
    );
}

#[test]
fn unknown_head_count_asks_for_heads() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    assert_fails(
        &run(&fixtures().join("ckpt-legacy"), &out, &[]),
        &out,
        &["--heads"],
    );
}

#[test]
fn heads_flag_contradicting_the_checkpoint_is_an_error() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    assert_fails(
        &run(&fixtures().join("ckpt"), &out, &["--heads", "8"]),
        &out,
        &["--heads 8", "num_attention_heads", "4"],
    );
}

#[test]
fn non_empty_output_directory_is_refused_then_replaced_with_force() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    std::fs::create_dir(&out).unwrap();
    std::fs::write(out.join("keep.txt"), "precious").unwrap();
    let o = run(&fixtures().join("ckpt"), &out, &[]);
    assert_eq!(o.code, Some(2));
    assert!(
        stderr(&o).contains("not empty") && stderr(&o).contains("--force"),
        "{}",
        stderr(&o)
    );
    assert_eq!(
        std::fs::read_to_string(out.join("keep.txt")).unwrap(),
        "precious"
    );

    let o = run(&fixtures().join("ckpt"), &out, &["--force"]);
    assert!(o.code == Some(0), "{}", stderr(&o));
    assert!(
        !out.join("keep.txt").exists(),
        "--force replaces the directory whole"
    );
    assert_matches_transformers(&out);
    let names: Vec<_> = std::fs::read_dir(tmp.path())
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert_eq!(
        names,
        vec![std::ffi::OsString::from("out")],
        "nothing beside OUT_DIR"
    );
}

#[test]
fn empty_output_directory_is_used() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    std::fs::create_dir(&out).unwrap();
    let o = run(&fixtures().join("ckpt"), &out, &[]);
    assert!(o.code == Some(0), "{}", stderr(&o));
    assert_matches_transformers(&out);
}

#[test]
fn not_a_checkpoint_is_an_error_naming_the_file() {
    let d = tempfile::tempdir().unwrap();
    let f = d.path().join("model.pt");
    std::fs::write(&f, b"this is not a torch file").unwrap();
    let out = d.path().join("out");
    assert_fails(
        &run(&f, &out, &[]),
        &out,
        &["model.pt", "not a torch checkpoint"],
    );
    let elsewhere = tempfile::tempdir().unwrap();
    let out2 = elsewhere.path().join("out2");
    assert_fails(&run(d.path(), &out2, &[]), &out2, &["no checkpoint here"]);
}

#[test]
fn quiet_success_prints_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let o = run(&fixtures().join("ckpt"), &out, &["--quiet"]);
    assert!(o.code == Some(0));
    assert!(o.stderr.is_empty(), "{}", stderr(&o));
    assert!(o.stdout.is_empty());
    let o = run(&fixtures().join("ckpt"), &tmp.path().join("out2"), &[]);
    assert!(
        stderr(&o).contains("wrote 28 tensors"),
        "summary line: {}",
        stderr(&o)
    );
}

#[test]
fn stale_staging_directory_of_a_dead_process_is_removed() {
    let tmp = tempfile::tempdir().unwrap();
    // A pid far above pid_max on Linux: certainly not running.
    let stale = tmp.path().join(".out.cpm-convert-tmp.4194999");
    std::fs::create_dir(&stale).unwrap();
    std::fs::write(stale.join("model.safetensors"), b"partial").unwrap();
    let out = tmp.path().join("out");
    let o = run(&fixtures().join("ckpt"), &out, &[]);
    assert!(o.code == Some(0), "{}", stderr(&o));
    assert!(!stale.exists(), "stale staging directory should be removed");
    assert!(
        stderr(&o).contains("killed"),
        "the removal is reported: {}",
        stderr(&o)
    );
}
