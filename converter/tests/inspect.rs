//! `cpm-inspect` (issue 10.3) on the committed fixtures, checked against facts that do not come
//! from this crate: the tensors `fixtures/make_fixtures.py` handed to `torch.save` (VOCAB 1000,
//! POSITIONS 64, HIDDEN 64, LAYERS 2, HEADS 4, MP 2), the tensors transformers wrote in
//! `tiny/hf/model.safetensors` (read with the `safetensors` crate), and the `args` Namespace the
//! script saved. The JSON objects are parsed into structs that deny unknown fields, so a field
//! added or renamed without updating this contract fails here.

use crate::cases;

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde::Deserialize;

const EXE: &str = env!("CARGO_BIN_EXE_cpm-inspect");

// make_fixtures.py's model.
const VOCAB: u64 = 1000;
const POSITIONS: u64 = 64;
const HIDDEN: u64 = 64;
const LAYERS: u64 = 2;
const HEADS: u64 = 4;
const MP: u64 = 2;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Report {
    files: Vec<File>,
    tensors: Vec<Row>,
    family: Option<String>,
    family_from: Option<String>,
    sizes: Option<Sizes>,
    mapped: Option<Vec<Mapped>>,
    tree: Option<Vec<Tree>>,
    warnings: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    name: String,
    format: String,
    bytes: u64,
}

#[derive(Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
struct Row {
    name: String,
    dtype: String,
    shape: Vec<u64>,
    bytes: Option<u64>,
    file: String,
}

#[derive(Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
struct Sizes {
    model_parallel: u64,
    pipeline_stages: u64,
    layers: u64,
    hidden: u64,
    heads: Heads,
    vocab: u64,
    positions: u64,
    inner: u64,
    activation: Activation,
}

#[derive(Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
struct Activation {
    name: String,
    source: String,
}

#[derive(Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
struct Heads {
    count: u64,
    source: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Mapped {
    target: String,
    source: String,
    split: String,
    transpose: bool,
    source_dtype: String,
    dtype: String,
    rank_shapes: Vec<Vec<u64>>,
    shape: Vec<u64>,
    zeros: bool,
    #[serde(default)]
    keep_rows: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Tree {
    file: String,
    value: serde_json::Value,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ErrorObject {
    error: String,
    warnings: Vec<String>,
}

fn tiny(dir: &str) -> PathBuf {
    testkit::fixtures().join("tiny").join(dir)
}

fn inspect<S: AsRef<OsStr>>(args: &[S]) -> testkit::Run {
    testkit::run(EXE, args, &[])
}

/// `serde_json::from_str` rejects anything after the one value but whitespace.
fn parse<T: serde::de::DeserializeOwned>(r: &testkit::Run) -> T {
    serde_json::from_str(&r.stdout).unwrap_or_else(|e| panic!("{e}: stdout {:?}", r.stdout))
}

/// A successful `--json` run on `input` with `extra` flags.
fn report(input: &Path, extra: &[&str]) -> (testkit::Run, Report) {
    let mut args: Vec<&OsStr> = vec![input.as_os_str(), "--json".as_ref()];
    args.extend(extra.iter().map(OsStr::new));
    let r = inspect(&args);
    assert_eq!(r.code, Some(0), "{args:?}: {}", r.stderr);
    let rep = parse(&r);
    (r, rep)
}

/// One rank's tensors as `split_megatron` in make_fixtures.py puts them, in its order, with
/// their shapes on each of the MP ranks.
fn megatron_rank_tensors() -> Vec<(String, Vec<u64>)> {
    let h = HIDDEN;
    let mut v = vec![
        ("word_embeddings.weight".to_string(), vec![VOCAB / MP, h]),
        ("position_embeddings.weight".to_string(), vec![POSITIONS, h]),
    ];
    for i in 0..LAYERS {
        for (n, s) in [
            ("input_layernorm.weight", vec![h]),
            ("input_layernorm.bias", vec![h]),
            ("attention.query_key_value.weight", vec![3 * h / MP, h]),
            ("attention.query_key_value.bias", vec![3 * h / MP]),
            ("attention.dense.weight", vec![h, h / MP]),
            ("attention.dense.bias", vec![h]),
            ("post_attention_layernorm.weight", vec![h]),
            ("post_attention_layernorm.bias", vec![h]),
            ("mlp.dense_h_to_4h.weight", vec![4 * h / MP, h]),
            ("mlp.dense_h_to_4h.bias", vec![4 * h / MP]),
            ("mlp.dense_4h_to_h.weight", vec![h, 4 * h / MP]),
            ("mlp.dense_4h_to_h.bias", vec![h]),
        ] {
            v.push((format!("transformer.layers.{i}.{n}"), s));
        }
    }
    v.push(("transformer.final_layernorm.weight".into(), vec![h]));
    v.push(("transformer.final_layernorm.bias".into(), vec![h]));
    v
}

#[test]
fn stored_rows_are_the_tensors_make_fixtures_wrote() {
    let ckpt = tiny("ckpt");
    let (r, rep) = report(&ckpt, &[]);
    assert!(r.stderr.is_empty(), "{}", r.stderr);
    let names: Vec<String> = (0..MP)
        .map(|i| format!("100/mp_rank_{i:02}_model_states.pt"))
        .collect();
    assert_eq!(rep.files.len(), MP as usize);
    for (f, name) in rep.files.iter().zip(&names) {
        assert_eq!((&f.name, f.format.as_str()), (name, "zip"));
        assert_eq!(f.bytes, std::fs::metadata(ckpt.join(name)).unwrap().len());
    }
    let want: Vec<Row> = names
        .iter()
        .flat_map(|file| {
            megatron_rank_tensors()
                .into_iter()
                .map(|(name, shape)| Row {
                    bytes: Some(shape.iter().product::<u64>() * 2),
                    name,
                    dtype: "float16".into(),
                    shape,
                    file: file.clone(),
                })
        })
        .collect();
    assert_eq!(rep.tensors, want);
    assert!(rep.mapped.is_none() && rep.tree.is_none() && rep.warnings.is_empty());
}

#[test]
fn family_and_sizes_are_the_model_make_fixtures_saved() {
    let (_, rep) = report(&tiny("ckpt"), &[]);
    assert_eq!(rep.family.as_deref(), Some("cpm-lm"));
    assert_eq!(rep.family_from.as_deref(), Some("detected"));
    let s = rep.sizes.expect("sizes");
    assert_eq!(
        (s.model_parallel, s.layers, s.hidden, s.vocab, s.positions),
        (MP, LAYERS, HIDDEN, VOCAB, POSITIONS)
    );
    assert_eq!(s.inner, 4 * HIDDEN);
    assert_eq!(s.heads.count, HEADS);
    assert_eq!(
        s.heads.source,
        "args.num_attention_heads in 100/mp_rank_00_model_states.pt"
    );
}

/// The GPT-2 map names exactly transformers' tensors, with their shapes and dtypes, and each
/// target is fed by stored tensors with the shapes the rows list.
#[test]
fn mapped_targets_are_the_tensors_transformers_wrote() {
    let (_, rep) = report(&tiny("ckpt"), &["--mapped"]);
    let mapped = rep.mapped.expect("mapped");
    let hf = std::fs::read(tiny("hf/model.safetensors")).unwrap();
    let hf = safetensors::SafeTensors::deserialize(&hf).unwrap();
    let want: BTreeMap<String, (Vec<u64>, String)> = hf
        .tensors()
        .into_iter()
        .map(|(name, t)| {
            let shape = t.shape().iter().map(|&d| d as u64).collect();
            (name, (shape, format!("{:?}", t.dtype())))
        })
        .collect();
    let got: BTreeMap<String, (Vec<u64>, String)> = mapped
        .iter()
        .map(|m| (m.target.clone(), (m.shape.clone(), m.dtype.clone())))
        .collect();
    assert_eq!(got, want);
    assert_eq!(mapped.len(), want.len(), "a target listed twice");
    for m in &mapped {
        let stored: Vec<&Vec<u64>> = rep
            .tensors
            .iter()
            .filter(|r| r.name == m.source)
            .map(|r| &r.shape)
            .collect();
        assert_eq!(stored, m.rank_shapes.iter().collect::<Vec<_>>(), "{m:?}");
        assert_eq!(m.source_dtype, m.dtype, "{m:?}: --mapped never casts");
        assert!(!m.split.is_empty());
    }
    // The fused qkv weight: column-parallel in thirds, Linear [out, in] -> Conv1D [in, out].
    let qkv = mapped
        .iter()
        .find(|m| m.target == "transformer.h.0.attn.c_attn.weight")
        .unwrap();
    assert_eq!((qkv.split.as_str(), qkv.transpose), ("qkv-dim0", true));
}

/// `--mapped` prints the same table as `cpm-convert --dry-run`: one renderer, two tools.
#[test]
fn mapped_text_is_the_dry_run_table() {
    let ckpt = tiny("ckpt");
    let ours = inspect(&[ckpt.as_os_str(), "--mapped".as_ref()]);
    assert_eq!(ours.code, Some(0), "{}", ours.stderr);
    let dry = testkit::run(
        env!("CARGO_BIN_EXE_cpm-convert"),
        &[ckpt.as_os_str(), "--dry-run".as_ref()],
        &[],
    );
    assert_eq!(dry.code, Some(0), "{}", dry.stderr);
    let table = |text: &str| -> Vec<String> {
        text.lines()
            .skip_while(|l| !l.starts_with("SOURCE"))
            .take_while(|l| !l.is_empty() && !l.contains("tensors"))
            .map(str::to_string)
            .collect()
    };
    let (a, b) = (table(&ours.stdout), table(&dry.stdout));
    assert_eq!(a.len(), 1 + 28, "{}", ours.stdout);
    assert_eq!(a, b);
}

#[test]
fn text_rows_are_aligned_one_per_stored_tensor() {
    let ckpt = tiny("ckpt");
    let r = inspect(&[ckpt.as_os_str()]);
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    let lines: Vec<&str> = r
        .stdout
        .lines()
        .skip_while(|l| !l.starts_with("NAME"))
        .take_while(|l| !l.is_empty() && !l.contains("tensors in"))
        .collect();
    assert_eq!(lines.len(), 1 + 2 * 28, "{}", r.stdout);
    let col = lines[0].find("DTYPE").unwrap();
    for l in &lines[1..] {
        assert_eq!(&l[col..col + 7], "float16", "{l}");
    }
    assert!(r.stdout.contains("56 tensors in 2 file(s)"), "{}", r.stdout);
    assert!(
        r.stdout
            .contains("family cpm-lm (detected): tensor-parallel 2 x pipeline 1, 2 layers"),
        "{}",
        r.stdout
    );
}

/// `--tree` shows what the script saved beside the weights: the args Namespace, the iteration,
/// the RNG state tensors, and the weights dict only as a count.
#[test]
fn tree_shows_the_args_and_training_state() {
    let ckpt = tiny("ckpt");
    let r = inspect(&[ckpt.as_os_str(), "--tree".as_ref()]);
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    for needle in [
        "\n100/mp_rank_00_model_states.pt\n  module: {28 tensors}\n",
        "\n  iteration: 100\n",
        "\n  args: argparse.Namespace\n",
        "\n    num_attention_heads: 4\n",
        "\n    hidden_size: 64\n",
        "\n    tokenizer_path: \"bpe_3w_new/\"\n",
        "\n    decay_style: \"cosine\"\n",
        "\n  torch_rng_state: tensor uint8 [",
        "\n    model-parallel-rng: tensor uint8 [",
        "\n  optimizer: None\n",
        "\n100/mp_rank_01_model_states.pt\n",
    ] {
        assert!(r.stdout.contains(needle), "no {needle:?} in\n{}", r.stdout);
    }

    let (_, rep) = report(&ckpt, &["--tree"]);
    let tree = rep.tree.expect("tree");
    assert_eq!(tree.len(), 2);
    let v = &tree[0].value;
    assert_eq!(tree[0].file, "100/mp_rank_00_model_states.pt");
    assert_eq!(v["args"]["$type"], "object");
    assert_eq!(v["args"]["class"], "argparse.Namespace");
    assert_eq!(v["args"]["fields"]["num_attention_heads"], 4);
    assert_eq!(v["args"]["fields"]["fp16"], true);
    assert_eq!(v["iteration"], 100);
    assert_eq!(
        v["module"],
        serde_json::json!({"$type": "tensors", "count": 28})
    );
    assert_eq!(v["torch_rng_state"]["dtype"], "uint8");
    // random.getstate()'s 625-word tuple: the first items and how many were left out.
    let words = v["random_rng_state"][1].as_array().unwrap();
    assert_eq!(words.last().unwrap()["$type"], "more");
    assert_eq!(
        words.last().unwrap()["count"],
        625 - (words.len() as u64 - 1)
    );
}

/// The legacy fixture records no args and no world size: without --heads there is no plan, yet
/// every tensor is listed (exit 0) and the reason is a warning; --mapped needs the plan.
#[test]
fn without_a_plan_the_tensors_are_still_listed() {
    let legacy = tiny("ckpt-legacy");
    let (r, rep) = report(&legacy, &[]);
    assert_eq!(rep.tensors.len(), 2 * 28);
    assert!(
        rep.files.iter().all(|f| f.format == "legacy"),
        "{:?}",
        rep.files
    );
    assert!(rep.family.is_none() && rep.family_from.is_none() && rep.sizes.is_none());
    assert_eq!(rep.warnings.len(), 1, "{:?}", rep.warnings);
    assert!(rep.warnings[0].contains("--heads"), "{:?}", rep.warnings);
    assert_eq!(
        r.stderr,
        format!("cpm-inspect: warning: {}\n", rep.warnings[0])
    );

    let text = inspect(&[legacy.as_os_str()]);
    assert_eq!(text.code, Some(0));
    assert!(
        text.stdout.contains("family and sizes unknown"),
        "{}",
        text.stdout
    );

    let (_, rep) = report(&legacy, &["--heads", "4"]);
    let s = rep.sizes.expect("sizes with --heads");
    assert_eq!((s.heads.count, s.heads.source.as_str()), (HEADS, "--heads"));

    let r = inspect(&[legacy.as_os_str(), "--mapped".as_ref(), "--json".as_ref()]);
    assert_eq!(r.code, Some(2));
    let e: ErrorObject = parse(&r);
    assert!(e.error.contains("--heads"), "{e:?}");
}

/// A torch file the reader parses but finds no weights in is still shown: its files and tree,
/// with the reader's reason as a warning (exit 0). With --mapped it is the error.
#[test]
fn a_readable_file_without_weights_shows_its_tree() {
    use cases::Pk;
    let mut p = Pk::new();
    p.raw(b"}(").str("iteration").int(5);
    p.str("args")
        .global("argparse", "Namespace")
        .raw(b")\x81}(");
    p.str("num_attention_heads").int(4).raw(b"ub");
    p.raw(b"u");
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("state.pt");
    std::fs::write(&f, cases::torch_zip(&p.stop(), &[])).unwrap();

    let (r, rep) = report(&f, &["--tree"]);
    assert!(rep.tensors.is_empty() && rep.sizes.is_none());
    assert_eq!(rep.files[0].name, "state.pt");
    assert_eq!(rep.warnings.len(), 1, "{:?}", rep.warnings);
    assert!(
        rep.warnings[0].contains("no tensors found"),
        "{:?}",
        rep.warnings
    );
    assert_eq!(
        r.stderr,
        format!("cpm-inspect: warning: {}\n", rep.warnings[0])
    );
    let v = &rep.tree.unwrap()[0].value;
    assert_eq!(v["iteration"], 5);
    assert_eq!(v["args"]["fields"]["num_attention_heads"], 4);

    let text = inspect(&[f.as_os_str(), "--tree".as_ref()]);
    assert_eq!(text.code, Some(0));
    assert!(
        text.stdout.contains("no tensors listed in 1 file(s)"),
        "{}",
        text.stdout
    );
    assert!(
        text.stdout.contains("\n    num_attention_heads: 4\n"),
        "{}",
        text.stdout
    );

    let r = inspect(&[f.as_os_str(), "--mapped".as_ref(), "--json".as_ref()]);
    assert_eq!(r.code, Some(2));
    let e: ErrorObject = parse(&r);
    assert!(e.error.contains("no tensors found"), "{e:?}");
}

#[test]
fn unreadable_inputs_are_exit_2_with_one_json_object() {
    let tmp = tempfile::tempdir().unwrap();
    let missing = tmp.path().join("missing");
    let text = tmp.path().join("notes.pt");
    std::fs::write(&text, "not a checkpoint").unwrap();
    let empty_dir = tmp.path().join("empty");
    std::fs::create_dir(&empty_dir).unwrap();
    for (input, needle) in [
        (&missing, "cannot read input"),
        (&text, "not a torch checkpoint"),
        (&empty_dir, "no checkpoint here"),
    ] {
        let r = inspect(&[input.as_os_str(), "--json".as_ref()]);
        assert_eq!(r.code, Some(2), "{input:?}");
        assert!(r.stderr.is_empty(), "{}", r.stderr);
        let e: ErrorObject = parse(&r);
        assert!(
            e.error.contains(needle) && e.error.contains(input.to_str().unwrap()),
            "{e:?}"
        );
        assert!(e.warnings.is_empty());

        let r = inspect(&[input.as_os_str()]);
        assert_eq!(r.code, Some(2));
        assert!(r.stdout.is_empty(), "{}", r.stdout);
        assert!(r.stderr.starts_with("cpm-inspect: error: "), "{}", r.stderr);
        assert_eq!(r.stderr.lines().count(), 1, "{}", r.stderr);
    }
}

/// A mapping file that does not load is an error even when the checkpoint reads.
#[test]
fn a_bad_mapping_file_is_exit_2() {
    let tmp = tempfile::tempdir().unwrap();
    let bad = tmp.path().join("bad.toml");
    std::fs::write(&bad, "[variant]\nname = 1\n").unwrap();
    for mapping in [bad, tmp.path().join("missing.toml")] {
        let ckpt = tiny("ckpt");
        let r = inspect(&[
            ckpt.as_os_str(),
            "--mapping".as_ref(),
            mapping.as_os_str(),
            "--json".as_ref(),
        ]);
        assert_eq!(r.code, Some(2), "{mapping:?}: {}", r.stdout);
        let e: ErrorObject = parse(&r);
        assert!(e.error.contains(mapping.to_str().unwrap()), "{e:?}");
    }
}

#[test]
fn usage_errors_with_json_are_json_errors() {
    for args in [
        &["--bogus", "--json"][..],
        &["--json"],
        &["x", "--json", "--heads", "0"],
        &["x", "--json", "--vocab-size", "many"],
    ] {
        let r = inspect(args);
        assert_eq!(r.code, Some(2), "{args:?}");
        assert!(r.stderr.is_empty(), "{args:?}: {}", r.stderr);
        let e: ErrorObject = parse(&r);
        assert!(!e.error.is_empty() && !e.error.contains("Usage:"), "{e:?}");
    }
    let r = inspect(&["--bogus"]);
    assert_eq!(r.code, Some(2));
    assert!(r.stdout.is_empty() && r.stderr.contains("--bogus"), "{r:?}");
}

#[test]
fn help_and_version_stay_text() {
    let r = inspect(&["--help", "--json"]);
    assert_eq!(r.code, Some(0));
    for needle in ["Usage:", "Examples:", "--mapped", "--tree", "Exit codes"] {
        assert!(r.stdout.contains(needle), "{needle}: {}", r.stdout);
    }
    let r = inspect(&["--json", "--version"]);
    assert_eq!(r.code, Some(0));
    assert_eq!(
        r.stdout,
        format!("cpm-inspect {}\n", env!("CARGO_PKG_VERSION"))
    );
}

/// `--from` reads the input as the named family; `--vocab-size` shows the sizes a conversion
/// cut to N rows would have, and `--mapped` the cut shapes.
#[test]
fn from_and_vocab_size_shape_the_plan() {
    let (r, rep) = report(
        &tiny("ckpt"),
        &["--from", "cpm-lm", "--vocab-size", "999", "--mapped"],
    );
    assert_eq!(r.code, Some(0), "{r:?}");
    assert_eq!(rep.family_from.as_deref(), Some("--from cpm-lm"));
    assert_eq!(rep.sizes.unwrap().vocab, 999);
    let mapped = rep.mapped.expect("--mapped");
    let wte = mapped
        .iter()
        .find(|e| e.target == "transformer.wte.weight")
        .expect("wte");
    assert_eq!(
        (wte.shape.clone(), wte.keep_rows, wte.zeros),
        (vec![999, HIDDEN], Some(999), false)
    );
    // Another family's names: with --from the mismatch is the error (and --mapped needs a plan).
    let wrong = inspect(&[
        tiny("ckpt").as_os_str(),
        "--from".as_ref(),
        "nanogpt".as_ref(),
        "--mapped".as_ref(),
        "--json".as_ref(),
    ]);
    assert_eq!(wrong.code, Some(2), "{wrong:?}");
    assert!(
        wrong
            .stdout
            .contains("matches no rule of the `nanogpt` mapping"),
        "{wrong:?}"
    );
}

/// A reader that goes away (`| head`) ends the output quietly: no panic, no message, exit 0.
#[test]
fn a_closed_stdout_ends_quietly() {
    let mut child = Command::new(EXE)
        .arg(tiny("ckpt"))
        .arg("--tree")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    assert!(
        out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A value as large as the reader lets a file hold prints a bounded amount: a list of 400,000
/// items, a dict of 50,000 entries and lists nested 1,000 deep, in an otherwise valid checkpoint
/// (a million items exceed the reader's memory budget for a file this size).
#[test]
fn tree_output_is_bounded_by_its_caps_not_by_the_file() {
    use cases::{Ckpt, Pk};
    let mut extra = Pk::default();
    extra.str("list").raw(b"](");
    for _ in 0..400_000 {
        extra.int(7);
    }
    extra.raw(b"e").str("wide").raw(b"}(");
    for i in 0..50_000 {
        extra.str(&format!("k{i}")).int(1);
    }
    extra.raw(b"u").str("deep");
    extra.raw(&b"]".repeat(1000)).raw(&b"a".repeat(999));
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("big.pt");
    std::fs::write(&f, Ckpt::with_extra(&extra.0).bytes()).unwrap();

    let r = inspect(&[
        f.as_os_str(),
        "--tree".as_ref(),
        "--heads".as_ref(),
        "1".as_ref(),
    ]);
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    assert!(r.stdout.len() < 64 << 10, "{} bytes", r.stdout.len());
    assert!(
        r.stdout
            .contains("  list: [7, 7, 7, 7, 7, 7, 7, 7, … 400000 items]\n"),
        "{}",
        r.stdout
    );
    assert!(
        r.stdout.contains(&format!("    … {} more\n", 50_000 - 512)),
        "{}",
        r.stdout
    );
    assert!(
        r.stdout.contains("<list of 1>"),
        "the deep list is cut: {}",
        r.stdout
    );

    let (_, rep) = report(&f, &["--tree", "--heads", "1"]);
    let v = &rep.tree.unwrap()[0].value;
    assert_eq!(v["list"].as_array().unwrap().len(), 9);
    assert_eq!(
        v["list"][8],
        serde_json::json!({"$type": "more", "count": 399_992})
    );
    assert_eq!(v["wide"]["$more"], 50_000 - 512);
    assert_eq!(v["wide"]["k0"], 1);
}

/// How many of the pages of `path` in `bytes` are in the page cache (mincore on a fresh map: our
/// own map touches nothing).
fn cached_pages(path: &Path, bytes: std::ops::Range<usize>) -> usize {
    use std::os::fd::AsRawFd;
    let f = std::fs::File::open(path).unwrap();
    let len = f.metadata().unwrap().len() as usize;
    // SAFETY: plain system calls on a read-only map we create and remove here, with a vector
    // of one byte per page as mincore requires.
    unsafe {
        let page = libc::sysconf(libc::_SC_PAGESIZE) as usize;
        let map = libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ,
            libc::MAP_SHARED,
            f.as_raw_fd(),
            0,
        );
        assert_ne!(map, libc::MAP_FAILED);
        let mut resident = vec![0u8; len.div_ceil(page)];
        assert_eq!(libc::mincore(map, len, resident.as_mut_ptr()), 0);
        libc::munmap(map, len);
        resident[bytes.start / page..bytes.end / page]
            .iter()
            .filter(|b| **b & 1 == 1)
            .count()
    }
}

/// Drop `path`'s pages from the page cache (written back first, so the kernel may drop them).
fn evict(path: &Path) {
    use std::os::fd::AsRawFd;
    let f = std::fs::File::open(path).unwrap();
    f.sync_all().unwrap();
    // SAFETY: an advisory system call on an open descriptor.
    let r = unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
    assert_eq!(r, 0);
}

/// Only the structure is read: on a checkpoint holding 64 MiB of tensor data, evicted from the
/// page cache first, no page of the data's middle half is cached after cpm-inspect ran (with
/// --mapped, --tree and --json: everything it can show), while after cpm-convert, which reads
/// the data through the same memory map, nearly all are. The second run proves the measurement
/// sees reads through the map.
#[test]
fn no_tensor_data_is_read() {
    use cases::{Ckpt, T};
    const DATA: usize = 64 << 20;
    let rows = (DATA / 2 / cases::H as usize) as i64;
    let shape = [rows, cases::H];
    let mut c = Ckpt::with_tensor(
        "word_embeddings.weight",
        T::half("1", rows * cases::H, 0, &shape),
    );
    c.extra_storage = Some(vec![0u8; DATA]);
    // Under target/, on disk: tmpfs pages cannot be evicted.
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let f = dir.path().join("big.pt");
    std::fs::write(&f, c.bytes()).unwrap();
    drop(c);
    let len = std::fs::metadata(&f).unwrap().len() as usize;
    // The storage is the file's last entry; its middle half is far from every header.
    let middle = len - DATA + DATA / 4..len - DATA / 4;
    let pages = middle.len() / 4096;

    evict(&f);
    let before = cached_pages(&f, middle.clone());
    assert!(
        before < pages / 100,
        "eviction failed: {before} of {pages} pages still cached"
    );
    let (_, rep) = report(&f, &["--heads", "1", "--mapped", "--tree"]);
    assert_eq!(
        cached_pages(&f, middle.clone()),
        0,
        "cpm-inspect read tensor data"
    );
    let row = &rep.tensors[0];
    assert_eq!(
        (row.shape.clone(), row.bytes),
        (vec![rows as u64, 4], Some(DATA as u64))
    );
    assert_eq!(rep.sizes.expect("a plan").vocab, rows as u64);

    let out = dir.path().join("out");
    let r = testkit::run(
        env!("CARGO_BIN_EXE_cpm-convert"),
        &[
            f.as_os_str(),
            "-o".as_ref(),
            out.as_os_str(),
            "--heads".as_ref(),
            "1".as_ref(),
        ],
        &[],
    );
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    let after = cached_pages(&f, middle);
    assert!(
        after > pages * 9 / 10,
        "the control read the data, yet {after} of {pages} pages are cached"
    );
}
