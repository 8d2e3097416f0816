//! `cpm-diff` (issue 10.4) against inputs whose truth does not come from our code: the same
//! weights saved by PyTorch in three ways must compare equal; a value patched into a copy of a
//! rank file must be reported at the index and with the difference that transformers' own port
//! (`fixtures/tiny/hf`) and a byte search give; PyTorch's broken rank files and checkpoints built
//! with a layer or vocabulary row more must be reported by name and reason. Exit codes follow
//! diff(1): 0 equal, 1 different, 2 error. The `--json` objects are parsed into structs that deny
//! unknown fields, so the schema cannot change without this file.

use crate::cases;

use std::path::{Path, PathBuf};

use half::f16;
use serde::Deserialize;

const EXE: &str = env!("CARGO_BIN_EXE_cpm-diff");

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Report {
    only_in_a: Vec<Tensor>,
    only_in_b: Vec<Tensor>,
    changed: Vec<Change>,
    values: Option<Vec<Values>>,
    summary: Summary,
    equal: bool,
    warnings: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Tensor {
    name: String,
    shape: Vec<u64>,
    dtype: String,
}

#[derive(Debug, Deserialize, PartialEq)]
#[serde(tag = "what", rename_all = "lowercase", deny_unknown_fields)]
enum Change {
    Shape {
        name: String,
        a: Vec<u64>,
        b: Vec<u64>,
    },
    Dtype {
        name: String,
        a: String,
        b: String,
    },
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Values {
    name: String,
    max_abs_diff: Option<f64>,
    differing: u64,
    elements: u64,
    fraction: f64,
    first_index: Vec<u64>,
    rel_diff: Option<f64>,
    cosine: Option<f64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Summary {
    tensors_a: usize,
    tensors_b: usize,
    common: usize,
    only_in_a: usize,
    only_in_b: usize,
    changed: usize,
    compared: Option<usize>,
    identical: Option<usize>,
    differing: Option<usize>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ErrorObject {
    error: String,
    warnings: Vec<String>,
}

fn tiny(name: &str) -> PathBuf {
    testkit::fixtures().join("tiny").join(name)
}

fn diff<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> testkit::Run {
    let r = testkit::run(EXE, args, &[]);
    assert!(!r.stderr.contains("panicked"), "{}", r.stderr);
    r
}

/// Run with `--json` and parse stdout (nothing may follow the one object).
fn report<S: AsRef<std::ffi::OsStr>>(args: &[S], code: i32) -> Report {
    let mut all: Vec<&std::ffi::OsStr> = args.iter().map(AsRef::as_ref).collect();
    all.push("--json".as_ref());
    let r = diff(&all);
    assert_eq!(r.code, Some(code), "{args:?}: {r:?}", args = all);
    serde_json::from_str(&r.stdout).unwrap_or_else(|e| panic!("{e}: {:?}", r.stdout))
}

fn error<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> ErrorObject {
    let mut all: Vec<&std::ffi::OsStr> = args.iter().map(AsRef::as_ref).collect();
    all.push("--json".as_ref());
    let r = diff(&all);
    assert_eq!(r.code, Some(2), "{r:?}");
    assert!(r.stderr.is_empty(), "stderr in JSON mode: {}", r.stderr);
    serde_json::from_str(&r.stdout).unwrap_or_else(|e| panic!("{e}: {:?}", r.stdout))
}

#[test]
fn the_same_weights_saved_three_ways_by_pytorch_compare_equal() {
    let ckpt = tiny("ckpt");
    for (other, extra) in [
        ("ckpt-legacy", &["--heads", "4"][..]),
        ("ckpt-mp1", &[][..]),
    ] {
        let mut args: Vec<&std::ffi::OsStr> = vec![ckpt.as_os_str(), "--values".as_ref()];
        args.extend(extra.iter().map(std::ffi::OsStr::new));
        let b = tiny(other);
        args.insert(1, b.as_os_str());
        let r = report(&args, 0);
        assert!(r.equal && r.warnings.is_empty(), "{other}: {r:?}");
        assert_eq!(r.summary.compared, Some(28), "{other}");
        assert_eq!(r.summary.identical, Some(28), "{other}");
        assert_eq!(r.values.as_deref().map(<[Values]>::len), Some(0));
        // Text: the summary line, nothing on stderr.
        let t = diff(&args);
        assert_eq!(t.code, Some(0));
        assert!(t.stderr.is_empty(), "{}", t.stderr);
        assert!(t.stdout.trim_end().ends_with(": equal"), "{}", t.stdout);
        assert_eq!(t.stdout.lines().count(), 1, "{}", t.stdout);
    }
}

#[test]
fn a_checkpoint_without_a_head_count_is_compared_with_a_note() {
    // ckpt-legacy records no head count; no CPM tensor needs one to merge, so the comparison goes
    // on (cpm-convert itself needs --heads for config.json) and says so.
    let r = report(&[tiny("ckpt"), tiny("ckpt-legacy"), "--values".into()], 0);
    assert_eq!(r.warnings.len(), 1, "{r:?}");
    assert!(r.warnings[0].starts_with("B (") && r.warnings[0].contains("head"));
    // A head count that contradicts a side's record is still an error naming that side.
    let e = error(&[
        tiny("ckpt"),
        tiny("ckpt-legacy"),
        "--heads".into(),
        "8".into(),
    ]);
    assert!(
        e.error.starts_with("A (") && e.error.contains("disagrees"),
        "{e:?}"
    );
}

/// `name`'s data in a safetensors file written by transformers, as f16 values, and its shape.
fn hf_tensor(name: &str) -> (Vec<f16>, Vec<usize>) {
    let bytes = std::fs::read(tiny("hf/model.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let t = st.tensor(name).unwrap();
    assert_eq!(t.dtype(), safetensors::Dtype::F16);
    let v = t
        .data()
        .chunks_exact(2)
        .map(|c| f16::from_le_bytes([c[0], c[1]]))
        .collect();
    (v, t.shape().to_vec())
}

fn f16_bytes(v: &[f16]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// A copy of tiny/ckpt's iteration directory whose element (`row`, `col`) of the canonical
/// tensor `name` is set to `value`. Megatron stores linear weights transposed, so a run of
/// canonical column `col` (rows `rows`) lies contiguously in one rank file: found by searching
/// for its bytes, which transformers' port gives. Returns the old value.
fn patch(
    dir: &Path,
    name: &str,
    rows: std::ops::Range<usize>,
    (row, col): (usize, usize),
    value: f16,
) -> f16 {
    let (w, shape) = hf_tensor(name);
    let run: Vec<f16> = rows.clone().map(|i| w[i * shape[1] + col]).collect();
    let needle = f16_bytes(&run);
    for r in 0..2 {
        let f = dir.join(format!("mp_rank_{r:02}_model_states.pt"));
        let mut bytes = std::fs::read(&f).unwrap();
        let Some(at) = cases::find(&bytes, &needle) else {
            continue;
        };
        assert!(
            cases::find(&bytes[at + 1..], &needle).is_none(),
            "the run is not unique"
        );
        let k = at + 2 * (row - rows.start);
        bytes[k..k + 2].copy_from_slice(&value.to_le_bytes());
        std::fs::write(&f, bytes).unwrap();
        return w[row * shape[1] + col];
    }
    panic!("column {col} of {name} is in no rank file");
}

/// ‖A−B‖/‖A‖ and cos(A, B) when B is A with element `k` set to `new`, from A alone.
fn expected_figures(a: &[f16], k: usize, new: f16) -> (f64, f64) {
    let a2: f64 = a.iter().map(|x| x.to_f64() * x.to_f64()).sum();
    let (old, new) = (a[k].to_f64(), new.to_f64());
    let b2 = a2 - old * old + new * new;
    let ab = a2 - old * old + old * new;
    ((old - new).abs() / a2.sqrt(), ab / (a2.sqrt() * b2.sqrt()))
}

#[test]
fn a_patched_value_is_reported_at_its_canonical_index_with_its_difference() {
    let copy = testkit::copy_dir(&tiny("ckpt/100"));
    let value = f16::from_f32(7.0);
    // Layer 0's qkv, key block, second rank's half: canonical column 100 of [64, 192] (the
    // interleave and the transpose both move it). Layer 1's attention output, row-parallel:
    // canonical row 40 lies in rank 1's half of the input rows (the concat on dim 1).
    let qkv = "transformer.h.0.attn.c_attn.weight";
    let proj = "transformer.h.1.attn.c_proj.weight";
    let old_qkv = patch(copy.path(), qkv, 0..64, (3, 100), value);
    let old_proj = patch(copy.path(), proj, 32..64, (40, 7), value);
    let r = report(
        &[
            tiny("ckpt").as_os_str(),
            copy.path().as_os_str(),
            "--values".as_ref(),
        ],
        1,
    );
    assert!(!r.equal);
    assert!(r.only_in_a.is_empty() && r.only_in_b.is_empty() && r.changed.is_empty());
    assert_eq!(
        (r.summary.identical, r.summary.differing),
        (Some(26), Some(2))
    );
    let values = r.values.unwrap();
    let names: Vec<&str> = values.iter().map(|v| v.name.as_str()).collect();
    assert_eq!(names, [qkv, proj], "in file order");
    for (v, old, index, elements, k) in [
        (&values[0], old_qkv, [3, 100], 64 * 192, 3 * 192 + 100),
        (&values[1], old_proj, [40, 7], 64 * 64, 40 * 64 + 7),
    ] {
        assert_eq!(v.first_index, index, "{v:?}");
        assert_eq!((v.differing, v.elements), (1, elements as u64));
        assert_eq!(v.fraction, 1.0 / elements as f64);
        assert_eq!(v.max_abs_diff, Some((7.0 - old.to_f64()).abs()), "{v:?}");
        let (rel, cos) = expected_figures(&hf_tensor(&v.name).0, k, value);
        let close = |x: Option<f64>, y: f64| (x.unwrap() - y).abs() <= 1e-9 * y.abs().max(1e-300);
        assert!(close(v.rel_diff, rel), "{v:?} vs {rel}");
        assert!(close(v.cosine, cos), "{v:?} vs {cos}");
    }
    // Text: each tensor named with its first index; exit 1.
    let t = diff(&[
        tiny("ckpt").as_os_str(),
        copy.path().as_os_str(),
        "--values".as_ref(),
    ]);
    assert_eq!(t.code, Some(1));
    assert!(
        t.stdout.contains(&format!("{qkv}  1 of 12288 elements")),
        "{}",
        t.stdout
    );
    assert!(t.stdout.contains("from [3, 100]"), "{}", t.stdout);
    assert!(t.stdout.trim_end().ends_with(": different"), "{}", t.stdout);
    // Without --values the maps are equal.
    let t = diff(&[tiny("ckpt").as_os_str(), copy.path().as_os_str()]);
    assert_eq!(t.code, Some(0), "{}", t.stdout);
}

#[test]
fn atol_sets_what_counts_as_equal() {
    let copy = testkit::copy_dir(&tiny("ckpt/100"));
    let qkv = "transformer.h.0.attn.c_attn.weight";
    let (w, _) = hf_tensor(qkv);
    let new = f16::from_f32(w[5 * 192 + 70].to_f32() + 0.25);
    let old = patch(copy.path(), qkv, 0..64, (5, 70), new);
    let d = (new.to_f64() - old.to_f64()).abs();
    let run = |atol: f64| {
        let atol = atol.to_string();
        diff(&[
            tiny("ckpt").as_os_str(),
            copy.path().as_os_str(),
            "--values".as_ref(),
            "--atol".as_ref(),
            atol.as_ref(),
        ])
        .code
    };
    assert_eq!(run(d), Some(0), "a difference of exactly atol is equal");
    assert_eq!(run(d * 0.999), Some(1));
    assert_eq!(run(0.0), Some(1));
}

/// tiny/ckpt with rank 1 replaced by one of PyTorch's broken files.
fn with_broken_rank1(broken: &str) -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    let r0 = "mp_rank_00_model_states.pt";
    std::fs::copy(tiny("ckpt/100").join(r0), d.path().join(r0)).unwrap();
    std::fs::copy(
        tiny("broken").join(broken),
        d.path().join("mp_rank_01_model_states.pt"),
    )
    .unwrap();
    d
}

#[test]
fn a_replicated_mismatch_is_an_error_mapped_and_a_difference_raw() {
    let d = with_broken_rank1("replicated-mismatch.pt");
    // Mapped, the checkpoint is one cpm-convert refuses: exit 2, naming the side and tensor.
    let e = error(&[
        tiny("ckpt").as_os_str(),
        d.path().as_os_str(),
        "--values".as_ref(),
    ]);
    assert!(e.error.starts_with("B ("), "{e:?}");
    assert!(e.error.contains("transformer.final_layernorm.bias") && e.error.contains("replicated"));
    // Raw, rank file by rank file: rank 1's copy differs in element 5, by what PyTorch's
    // half-precision `+ 1.0` made of transformers' value.
    let r = report(
        &[
            tiny("ckpt").as_os_str(),
            d.path().as_os_str(),
            "--values".as_ref(),
            "--raw".as_ref(),
        ],
        1,
    );
    let v = r.values.unwrap();
    assert_eq!(v.len(), 1, "{v:?}");
    assert_eq!(v[0].name, "mp_rank_01:transformer.final_layernorm.bias");
    assert_eq!(
        (v[0].first_index.as_slice(), v[0].differing),
        (&[5u64][..], 1)
    );
    let old = hf_tensor("transformer.ln_f.bias").0[5];
    let new = f16::from_f32(old.to_f32() + 1.0);
    assert_eq!(v[0].max_abs_diff, Some((new.to_f64() - old.to_f64()).abs()));
    assert_eq!(r.summary.compared, Some(56));
}

#[test]
fn a_shape_mismatch_is_an_error_mapped_and_a_change_raw() {
    let d = with_broken_rank1("shape-mismatch.pt");
    let name = "transformer.layers.1.mlp.dense_h_to_4h.weight";
    let e = error(&[tiny("ckpt").as_os_str(), d.path().as_os_str()]);
    assert!(e.error.contains(name) && e.error.contains("shape"), "{e:?}");
    let r = report(
        &[
            tiny("ckpt").as_os_str(),
            d.path().as_os_str(),
            "--raw".as_ref(),
        ],
        1,
    );
    // dense_h_to_4h holds 4 * hidden / 2 ranks = 128 rows of hidden = 64; PyTorch added one.
    assert_eq!(
        r.changed,
        [Change::Shape {
            name: format!("mp_rank_01:{name}"),
            a: vec![128, 64],
            b: vec![129, 64]
        }]
    );
    assert_eq!(r.summary.changed, 1);
}

#[test]
fn a_dtype_change_is_reported_unless_dtype_insensitive_and_the_values_still_match() {
    let d = with_broken_rank1("dtype-mismatch.pt");
    let name = "mp_rank_01:transformer.final_layernorm.weight";
    let r = report(
        &[
            tiny("ckpt").as_os_str(),
            d.path().as_os_str(),
            "--raw".as_ref(),
            "--values".as_ref(),
        ],
        1,
    );
    assert_eq!(
        r.changed,
        [Change::Dtype {
            name: name.into(),
            a: "F16".into(),
            b: "F32".into()
        }]
    );
    // float32 holds every float16 exactly: the values, widened, are equal.
    assert_eq!(r.values.as_deref().map(<[Values]>::len), Some(0));
    let r = report(
        &[
            tiny("ckpt").as_os_str(),
            d.path().as_os_str(),
            "--raw".as_ref(),
            "--values".as_ref(),
            "--dtype-insensitive".as_ref(),
        ],
        0,
    );
    assert!(r.equal && r.changed.is_empty());
}

/// A complete CPM-LM checkpoint (model-parallel size 1, no head count) with `layers` layers and
/// `vocab` rows of word embeddings, every tensor a view into one float16 storage.
fn model(layers: usize, vocab: i64) -> Vec<u8> {
    use cases::{Pk, H, P, T};
    let mut names: Vec<(String, Vec<i64>)> = vec![
        ("word_embeddings.weight".into(), vec![vocab, H]),
        ("position_embeddings.weight".into(), vec![P, H]),
    ];
    for l in 0..layers {
        for (n, s) in cases::cpm_tensors().into_iter().skip(2).take(12) {
            names.push((n.replace("layers.0.", &format!("layers.{l}.")), s));
        }
    }
    names.extend(cases::cpm_tensors().into_iter().skip(14));
    let numel: i64 = names.iter().map(|(_, s)| s.iter().product::<i64>()).sum();
    let mut p = Pk::new();
    p.raw(b"}").mark().str("module").raw(b"}").mark();
    let mut off = 0;
    for (name, shape) in &names {
        p.str(name).tensor(&T::half("0", numel, off, shape));
        off += shape.iter().product::<i64>();
    }
    p.raw(b"u").raw(b"u");
    let data: Vec<u8> = (0..numel)
        .flat_map(|i| f16::from_f32(i as f32 / 64.0).to_le_bytes())
        .collect();
    cases::torch_zip(&p.stop(), &[("0", &data)])
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    p
}

#[test]
fn a_missing_layer_is_named_tensor_by_tensor() {
    let d = tempfile::tempdir().unwrap();
    let two = write(d.path(), "two.pt", &model(2, 8));
    let one = write(d.path(), "one.pt", &model(1, 8));
    let r = report(&[&two, &one, &"--heads".into(), &"1".into()], 1);
    let names: Vec<&str> = r.only_in_a.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(names.len(), 12, "{names:?}");
    assert!(
        names.iter().all(|n| n.starts_with("transformer.h.1.")),
        "{names:?}"
    );
    assert!(names.contains(&"transformer.h.1.attn.c_attn.weight"));
    let t = &r.only_in_a[names
        .iter()
        .position(|n| *n == "transformer.h.1.attn.c_attn.weight")
        .unwrap()];
    assert_eq!(
        (t.shape.as_slice(), t.dtype.as_str()),
        (&[4u64, 12][..], "F16")
    );
    assert!(r.only_in_b.is_empty() && r.changed.is_empty() && r.warnings.is_empty());
    let s = &r.summary;
    assert_eq!((s.tensors_a, s.tensors_b, s.common), (28, 16, 16));
    assert_eq!((s.only_in_a, s.only_in_b, s.changed), (12, 0, 0));
    // The other way round it is "only in B"; the text says so.
    let t = diff(&[&one, &two]);
    assert_eq!(t.code, Some(1));
    assert!(
        t.stdout
            .starts_with("only in B:\n  transformer.h.1.ln_1.weight  [4]  F16\n"),
        "{}",
        t.stdout
    );
    assert!(
        t.stderr.contains("warning") && t.stderr.contains("head"),
        "{}",
        t.stderr
    );
}

#[test]
fn a_different_vocabulary_is_a_shape_change_of_the_embeddings() {
    let d = tempfile::tempdir().unwrap();
    let a = write(d.path(), "a.pt", &model(1, 8));
    let b = write(d.path(), "b.pt", &model(1, 9));
    let r = report(&[&a, &b, &"--heads".into(), &"1".into()], 1);
    assert_eq!(
        r.changed,
        [Change::Shape {
            name: "transformer.wte.weight".into(),
            a: vec![8, 4],
            b: vec![9, 4]
        }]
    );
    assert!(r.only_in_a.is_empty() && r.only_in_b.is_empty());
    let t = diff(&[&a, &b, &"--heads".into(), &"1".into()]);
    assert_eq!(t.code, Some(1));
    assert!(
        t.stdout
            .contains("transformer.wte.weight  shape [8, 4] -> [9, 4]"),
        "{}",
        t.stdout
    );
    // With --values the other tensors are compared: they sit one embedding row further into the
    // storage, so their values differ too, and the embeddings are not compared at all.
    let r = report(
        &[&a, &b, &"--heads".into(), &"1".into(), &"--values".into()],
        1,
    );
    assert_eq!(r.summary.compared, Some(15));
    assert!(r
        .values
        .unwrap()
        .iter()
        .all(|v| v.name != "transformer.wte.weight"));
}

#[test]
fn a_missing_input_is_an_error_naming_it() {
    let d = tempfile::tempdir().unwrap();
    let missing = d.path().join("missing");
    let t = diff(&[missing.as_os_str(), tiny("ckpt").as_os_str()]);
    assert_eq!(t.code, Some(2));
    assert!(t.stdout.is_empty(), "{}", t.stdout);
    assert!(
        t.stderr.starts_with("cpm-diff: error: ") && t.stderr.contains(missing.to_str().unwrap()),
        "{}",
        t.stderr
    );
    let e = error(&[tiny("ckpt").as_os_str(), missing.as_os_str()]);
    assert!(
        e.error.contains(missing.to_str().unwrap()) && e.warnings.is_empty(),
        "{e:?}"
    );
}

#[test]
fn usage_errors_with_json_are_json_errors_and_help_stays_text() {
    for args in [
        &["--json"][..],
        &["a", "--json"],
        &["a", "b", "--atol", "-1", "--json"],
        &["a", "b", "--atol", "nan", "--json"],
        &["a", "b", "--bogus", "--json"],
    ] {
        let r = diff(args);
        assert_eq!(r.code, Some(2), "{args:?}");
        assert!(r.stderr.is_empty(), "{args:?}: {}", r.stderr);
        let e: ErrorObject = serde_json::from_str(&r.stdout).unwrap();
        assert!(!e.error.is_empty() && !e.error.contains("Usage:"), "{e:?}");
    }
    // --from and --mapping both choose the family: not together.
    let r = diff(&[
        "a",
        "b",
        "--from",
        "cpm-lm",
        "--mapping",
        "m.toml",
        "--json",
    ]);
    assert_eq!(r.code, Some(2));
    let e: ErrorObject = serde_json::from_str(&r.stdout).unwrap();
    assert!(
        e.error.contains("--mapping") && e.error.contains("--from"),
        "{e:?}"
    );
    // An unknown family is an error naming it.
    let ckpt = tiny("ckpt");
    let e = error(&[
        ckpt.as_os_str(),
        ckpt.as_os_str(),
        "--from".as_ref(),
        "gpt-j".as_ref(),
    ]);
    assert!(e.error.contains("gpt-j"), "{e:?}");
    let r = diff(&["--help", "--json"]);
    assert_eq!(r.code, Some(0));
    assert!(
        r.stdout.contains("Examples:")
            && r.stdout
                .contains("Exit codes: 0 equal; 1 different; 2 error")
    );
    let r = diff(&["--version", "--json"]);
    assert_eq!(
        (r.code, r.stdout.as_str()),
        (
            Some(0),
            &*format!("cpm-diff {}\n", env!("CARGO_PKG_VERSION"))
        )
    );
}

#[test]
fn help_examples_name_fixtures_that_exist() {
    // The examples that name fixtures must keep working as written (from the repository root).
    let help = diff(&["--help"]).stdout.replace("\\\n", " ");
    let root = testkit::fixtures().join("..");
    let examples: Vec<&str> = help
        .lines()
        .filter(|l| l.trim_start().starts_with("cpm-diff fixtures/"))
        .collect();
    assert!(examples.len() >= 3, "{help}");
    for line in examples {
        let args: Vec<&str> = line.split_whitespace().skip(1).collect();
        let mut cmd = std::process::Command::new(EXE);
        cmd.args(&args).current_dir(&root);
        let r = testkit::run_command(cmd);
        assert!(matches!(r.code, Some(0) | Some(1)), "{line}: {r:?}");
    }
}

/// The contract of the canonical map: what cpm-convert writes from X is what cpm-diff maps X to,
/// values included, for every fixture layout; a conversion to another dtype differs in dtype
/// only, and its values are equal after widening.
#[test]
fn a_checkpoint_and_its_conversion_compare_equal() {
    let d = tempfile::tempdir().unwrap();
    let convert = |input: &Path, out: &Path, extra: &[&str]| {
        let mut args = vec![input.as_os_str(), "-o".as_ref(), out.as_os_str()];
        args.extend(extra.iter().map(std::ffi::OsStr::new));
        let r = testkit::run(env!("CARGO_BIN_EXE_cpm-convert"), &args, &[]);
        assert_eq!(r.code, Some(0), "{}", r.stderr);
    };
    for (i, (input, extra)) in [
        (tiny("ckpt"), &[][..]),
        (tiny("ckpt-legacy"), &["--heads", "4"][..]),
        (family("megatron-v3-tp2-pp2"), &["--vocab-size", "1000"][..]),
    ]
    .iter()
    .enumerate()
    {
        let out = d.path().join(format!("out{i}"));
        convert(input, &out, extra);
        let mut args = vec![input.as_os_str(), out.as_os_str(), "--values".as_ref()];
        args.extend(extra.iter().map(std::ffi::OsStr::new));
        let r = report(&args, 0);
        assert_eq!(r.summary.identical, Some(28), "{input:?}");
    }
    // One value changed in the conversion (row 3 of c_attn lies contiguously in the Hugging
    // Face layout: found by its bytes) is found at its index, through the comparison that reads
    // one side transposed and the other not.
    let qkv = "transformer.h.0.attn.c_attn.weight";
    let (w, _) = hf_tensor(qkv);
    let model = d.path().join("out0/model.safetensors");
    let mut bytes = std::fs::read(&model).unwrap();
    let at = cases::find(&bytes, &f16_bytes(&w[3 * 192..4 * 192])).expect("row 3 of c_attn");
    bytes[at + 2 * 100..at + 2 * 101].copy_from_slice(&f16::from_f32(7.0).to_le_bytes());
    std::fs::write(&model, bytes).unwrap();
    let args = [tiny("ckpt"), d.path().join("out0"), "--values".into()];
    let v = report(&args, 1).values.unwrap();
    assert_eq!((v.len(), v[0].name.as_str()), (1, qkv));
    assert_eq!(
        (v[0].first_index.as_slice(), v[0].differing),
        (&[3u64, 100][..], 1)
    );
    let (ckpt, out) = (tiny("ckpt"), d.path().join("f32"));
    convert(&ckpt, &out, &["--dtype", "f32"]);
    let r = report(&[ckpt.as_os_str(), out.as_os_str(), "--values".as_ref()], 1);
    assert_eq!(r.changed.len(), 28, "{r:?}");
    assert!(r
        .changed
        .iter()
        .all(|c| matches!(c, Change::Dtype { b, .. } if b == "F32")));
    assert_eq!(r.values.as_deref().map(<[Values]>::len), Some(0));
    let args = [
        ckpt.as_os_str(),
        out.as_os_str(),
        "--values".as_ref(),
        "--dtype-insensitive".as_ref(),
    ];
    assert!(report(&args, 0).equal);
}

fn family(path: &str) -> PathBuf {
    testkit::fixtures().join("families").join(path)
}

/// fixtures/families/README.md, "Which fixtures hold the same model": model T saved by
/// Megatron-LM (three qkv layouts), nanoGPT and transformers, in fp16 and fp32, with 1000 or 1024
/// vocabulary rows. PyTorch wrote them all from one set of weights.
#[test]
fn the_same_model_saved_by_different_families_compares_equal() {
    let a = family("hf-bin-sharded");
    for b in [
        "megatron-v0",
        "megatron-v1",
        "megatron-v2",
        "megatron-v3-tp2-pp2",
        "megatron-v3-erf",
        "nanogpt-compiled/ckpt.pt",
        "hf-legacy-bin",
    ] {
        let b = family(b);
        let args = [
            a.as_os_str(),
            b.as_os_str(),
            "--values".as_ref(),
            "--vocab-size".as_ref(),
            "1000".as_ref(),
            "--dtype-insensitive".as_ref(),
        ];
        let r = report(&args, 0);
        let s = &r.summary;
        assert_eq!((s.compared, s.identical), (Some(28), Some(28)), "{b:?}");
    }
    // Model U (untied head): megatron-core's output layer is transformers' lm_head.
    let (a, b) = (family("mcore-tp2-te"), family("hf-safetensors-untied"));
    let args = [
        a.as_os_str(),
        b.as_os_str(),
        "--values".as_ref(),
        "--vocab-size".as_ref(),
        "1000".as_ref(),
        "--dtype-insensitive".as_ref(),
    ];
    assert_eq!(report(&args, 0).summary.identical, Some(29));
    let a = family("megatron-v0");
    // Without the options: Megatron pads the vocabulary to 1024 rows, transformers keeps 1000;
    // Megatron stores fp16, this transformers file fp32.
    let b = family("hf-legacy-bin");
    let r = report(&[a.as_os_str(), b.as_os_str()], 1);
    let wte = Change::Shape {
        name: "transformer.wte.weight".into(),
        a: vec![1024, 64],
        b: vec![1000, 64],
    };
    assert!(r.changed.contains(&wte), "{:?}", r.changed);
    let dtypes = r
        .changed
        .iter()
        .filter(|c| matches!(c, Change::Dtype { a, b, .. } if a == "F16" && b == "F32"));
    assert_eq!(dtypes.count(), 28);
}

#[test]
fn missing_biases_and_an_untied_head_are_reported_against_the_same_model() {
    let a = family("megatron-v0");
    let opts = ["--values", "--vocab-size", "1000", "--dtype-insensitive"];
    // nanoGPT without biases: a port writes zeros there, so exactly the 13 biases differ, each
    // in every element, by |A - 0| / |A| = 1, with no cosine against a zero vector.
    let b = family("nanogpt-nobias/ckpt.pt");
    let mut args = vec![a.as_os_str(), b.as_os_str()];
    args.extend(opts.iter().map(std::ffi::OsStr::new));
    let r = report(&args, 1);
    let v = r.values.unwrap();
    assert_eq!(v.len(), 13, "{v:?}");
    for x in &v {
        assert!(x.name.ends_with(".bias"), "{x:?}");
        assert_eq!(
            (x.differing, x.first_index.as_slice()),
            (x.elements, &[0u64][..])
        );
        assert_eq!((x.rel_diff, x.cosine), (Some(1.0), None), "{x:?}");
    }
    // megatron-core with an untied output layer: the head is the one tensor only in B.
    let b = family("mcore-tp2-local");
    let mut args = vec![a.as_os_str(), b.as_os_str()];
    args.extend(opts.iter().map(std::ffi::OsStr::new));
    let r = report(&args, 1);
    let only: Vec<&str> = r.only_in_b.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(only, ["lm_head.weight"]);
    assert_eq!(r.summary.identical, Some(28));
}

#[test]
fn vocab_size_cuts_both_sides_before_comparing() {
    let d = tempfile::tempdir().unwrap();
    let a = write(d.path(), "a.pt", &model(1, 8));
    let b = write(d.path(), "b.pt", &model(1, 9));
    let r = report(
        &[
            &a,
            &b,
            &"--heads".into(),
            &"1".into(),
            &"--vocab-size".into(),
            &"8".into(),
        ],
        0,
    );
    assert!(r.changed.is_empty() && r.equal, "{r:?}");
}
