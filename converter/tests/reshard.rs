//! `cpm-convert --to cpm|megatron --tp N --pp M` (issue 13). The truth is PyTorch's:
//! fixtures/make_reshard_fixtures.py loaded every rank file these commands write with
//! `torch.load(weights_only=True)` (`argparse.Namespace` allowed, as Megatron's args need),
//! checked their `args` against what Megatron-LM's and DeepSpeed's loaders read, and ran a
//! rank-by-rank forward over them that reproduced transformers' logits; it recorded each file's
//! SHA-256 in fixtures/reshard/findings.json, and these tests require the same bytes.
//! Converting each result back to Hugging Face, with no flags, must give the direct conversion
//! exactly.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

fn tiny(name: &str) -> PathBuf {
    testkit::fixtures().join("tiny").join(name)
}

fn convert(args: &[&OsStr]) -> testkit::Run {
    let r = testkit::run(env!("CARGO_BIN_EXE_cpm-convert"), args, &[]);
    assert!(!r.stderr.contains("panicked"), "{}", r.stderr);
    r
}

fn convert_ok(input: &Path, out: &Path, extra: &[&str]) {
    let mut args: Vec<&OsStr> = vec![input.as_os_str(), "-o".as_ref(), out.as_os_str()];
    args.extend(extra.iter().map(OsStr::new));
    args.push("-q".as_ref());
    let r = convert(&args);
    assert_eq!(r.code, Some(0), "{args:?}: {}", r.stderr);
}

struct Case {
    name: String,
    to: String,
    tp: u64,
    pp: u64,
    files: BTreeMap<String, String>,
}

fn findings() -> Vec<Case> {
    let path = testkit::fixtures().join("reshard/findings.json");
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
    let cases = v["cases"].as_object().unwrap();
    cases
        .iter()
        .map(|(name, c)| {
            assert_eq!(c["weights_only_load"], true, "{name}");
            assert_eq!(c["logits_match"], true, "{name}");
            Case {
                name: name.clone(),
                to: c["to"].as_str().unwrap().into(),
                tp: c["tp"].as_u64().unwrap(),
                pp: c["pp"].as_u64().unwrap(),
                files: c["files"]
                    .as_object()
                    .unwrap()
                    .iter()
                    .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_string()))
                    .collect(),
            }
        })
        .collect()
}

impl Case {
    fn args(&self) -> Vec<String> {
        let tp = self.tp.to_string();
        let pp = self.pp.to_string();
        ["--to", &self.to, "--tp", &tp, "--pp", &pp]
            .iter()
            .map(|s| s.to_string())
            .collect()
    }

    fn write(&self, out: &Path) {
        let args = self.args();
        let a: Vec<&str> = args.iter().map(String::as_str).collect();
        convert_ok(&tiny("ckpt"), out, &a);
    }
}

/// Every file of `dir` (relative path -> SHA-256), as the fixture script lists them.
fn tree(dir: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                let rel = p.strip_prefix(dir).unwrap().to_string_lossy().into_owned();
                let hash = Sha256::digest(std::fs::read(&p).unwrap());
                out.insert(rel, hash.iter().map(|b| format!("{b:02x}")).collect());
            }
        }
    }
    out
}

/// The tensors of a model.safetensors in file order, without `__metadata__`, and its data.
fn tensors(dir: &Path) -> (Vec<(String, serde_json::Value)>, Vec<u8>) {
    let bytes = std::fs::read(dir.join("model.safetensors")).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    let mut list: Vec<(String, serde_json::Value)> = header
        .as_object()
        .unwrap()
        .iter()
        .filter(|(k, _)| *k != "__metadata__")
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    // File order is data order: sort by offset.
    list.sort_by_key(|(_, v)| v["data_offsets"][0].as_u64().unwrap());
    (list, bytes[8 + n..].to_vec())
}

/// The bytes PyTorch loaded (weights_only) and ran to transformers' logits are the bytes we
/// write: for every case, every file, SHA256SUMS included.
#[test]
fn every_written_rank_file_is_the_one_pytorch_loaded_and_ran() {
    let cases = findings();
    assert_eq!(cases.len(), 7);
    for c in &cases {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join(&c.name);
        c.write(&out);
        assert_eq!(
            tree(&out),
            c.files,
            "{}: files differ from the verified ones",
            c.name
        );
    }
}

/// Re-sharding and converting back, with no flags, gives exactly the direct Hugging Face
/// conversion: config.json byte for byte (heads, vocabulary and activation read from the
/// export's own `args`), and model.safetensors' names, order, dtypes, shapes and data (only
/// `__metadata__`, which names the source files, differs).
#[test]
fn converting_each_reshard_back_to_hf_gives_the_direct_conversion() {
    let dir = tempfile::tempdir().unwrap();
    let direct = dir.path().join("direct");
    convert_ok(&tiny("ckpt"), &direct, &["--no-tokenizer"]);
    let want = port(&direct);
    for c in findings() {
        let rs = dir.path().join(&c.name);
        c.write(&rs);
        let back = dir.path().join(format!("{}-hf", c.name));
        convert_ok(&rs, &back, &["--no-tokenizer"]);
        same_port(&port(&back), &want, &c.name);
    }
}

/// A Hugging Face port as the round-trip tests compare it: config.json's bytes, the tensor
/// list and the tensor data.
struct Port {
    config: String,
    tensors: (Vec<(String, serde_json::Value)>, Vec<u8>),
}

fn port(dir: &Path) -> Port {
    Port {
        config: std::fs::read_to_string(dir.join("config.json")).unwrap(),
        tensors: tensors(dir),
    }
}

fn same_port(got: &Port, want: &Port, what: &str) {
    assert_eq!(got.config, want.config, "{what}: config.json");
    assert_eq!(got.tensors.0, want.tensors.0, "{what}: tensor list");
    assert!(
        got.tensors.1 == want.tensors.1,
        "{what}: tensor data differ"
    );
}

/// Our own output re-sharded again (cpm tp 4 -> megatron tp 2 pp 2 -> cpm tp 1) ends where a
/// direct re-shard does, byte for byte (the reader reads what the writer wrote, and the writer
/// depends only on the tensors).
#[test]
fn resharding_our_own_output_again_gives_the_same_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b, c, d) = (
        dir.path().join("a"),
        dir.path().join("b"),
        dir.path().join("c"),
        dir.path().join("d"),
    );
    convert_ok(&tiny("ckpt"), &a, &["--to", "cpm", "--tp", "4"]);
    convert_ok(&a, &b, &["--to", "megatron", "--tp", "2", "--pp", "2"]);
    convert_ok(&b, &c, &["--to", "cpm"]);
    convert_ok(&tiny("ckpt"), &d, &["--to", "cpm"]);
    assert_eq!(tree(&c), tree(&d));
}

/// cpm-diff finds no difference between the input and any re-sharded copy, each side's heads
/// and vocabulary read from its own `args`.
#[test]
fn cpm_diff_sees_no_difference_after_resharding() {
    for c in findings() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("o");
        c.write(&out);
        let ckpt = tiny("ckpt");
        let args: Vec<&OsStr> = vec![ckpt.as_os_str(), out.as_os_str(), "--values".as_ref()];
        let r = testkit::run(env!("CARGO_BIN_EXE_cpm-diff"), &args, &[]);
        assert_eq!(r.code, Some(0), "{}: {}{}", c.name, r.stdout, r.stderr);
        assert!(r.stdout.trim_end().ends_with(": equal"), "{}", r.stdout);
    }
}

/// A grid the model cannot be split on is refused with exit 2 before anything is written,
/// naming the size that does not divide.
#[test]
fn sizes_that_do_not_divide_are_refused_before_writing() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("o");
    for (args, says) in [
        (
            &["--to", "cpm", "--tp", "3"][..],
            "4 attention heads do not divide by 3",
        ),
        (
            &["--to", "megatron", "--tp", "8"][..],
            "heads do not divide by 8",
        ),
        (
            &["--to", "megatron", "--pp", "3"][..],
            "more pipeline stages than the model's 2",
        ),
        (&["--to", "cpm", "--pp", "2"][..], "only --to megatron"),
        (&["--tp", "2"][..], "need --to cpm or --to megatron"),
        (
            &["--to", "cpm", "--tokenizer", "x.model"][..],
            "--tokenizer applies to --to hf",
        ),
    ] {
        let ckpt = tiny("ckpt");
        let mut all: Vec<&OsStr> = vec![ckpt.as_os_str(), "-o".as_ref(), out.as_os_str()];
        all.extend(args.iter().map(OsStr::new));
        let r = convert(&all);
        assert_eq!(r.code, Some(2), "{args:?}: {}", r.stderr);
        assert!(r.stderr.contains(says), "{args:?}: {}", r.stderr);
        assert!(!out.exists(), "{args:?} left {}", out.display());
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }
}

/// `--dry-run` makes the same size checks as a real export (and says what it would write), so a
/// grid that cannot work is found before a long run is started.
#[test]
fn dry_run_checks_the_export_grid() {
    let ckpt = tiny("ckpt");
    let bad = ["--to", "cpm", "--tp", "3", "--dry-run"].map(OsStr::new);
    let mut all: Vec<&OsStr> = vec![ckpt.as_os_str()];
    all.extend(bad);
    let r = convert(&all);
    assert_eq!(r.code, Some(2), "{}", r.stderr);
    assert!(
        r.stderr.contains("4 attention heads do not divide by 3"),
        "{}",
        r.stderr
    );
    let good = ["--to", "megatron", "--tp", "2", "--pp", "2", "--dry-run"].map(OsStr::new);
    let mut all: Vec<&OsStr> = vec![ckpt.as_os_str()];
    all.extend(good);
    let r = convert(&all);
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    assert!(
        r.stdout.contains("split into 4 rank file(s)"),
        "{}",
        r.stdout
    );
}

/// Megatron's vocabulary is padded with zero rows to a multiple of --pad-vocab-multiple x tp,
/// as its make_vocab_size_divisible_by does; read back, the recorded `args.vocab_size` cuts
/// the padding, and `--vocab-size` may keep it.
#[test]
fn megatron_pads_the_vocabulary_to_the_multiple_times_tp() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("o");
    convert_ok(
        &tiny("ckpt"),
        &out,
        &["--to", "megatron", "--tp", "2", "--pad-vocab-multiple", "7"],
    );
    let vocab = |extra: &[&str]| {
        let mut args: Vec<&OsStr> = vec![out.as_os_str(), "--dry-run".as_ref(), "--json".as_ref()];
        args.extend(extra.iter().map(OsStr::new));
        let r = convert(&args);
        assert_eq!(r.code, Some(0), "{}", r.stderr);
        let plan: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
        plan["vocab"].as_u64().unwrap()
    };
    assert_eq!(vocab(&[]), 1000);
    // 1000 rows padded to a multiple of 14: 1008, 504 per rank.
    assert_eq!(vocab(&["--vocab-size", "1008"]), 1008);
}

/// `--max-shard-size`: shards named and grouped as huggingface_hub's splitter does (tensors in
/// file order, a new shard when the next would pass the limit, a larger tensor alone), an index
/// with transformers' fields, and the same model as one file (cpm-diff reads the sharded
/// directory through its index).
#[test]
fn max_shard_size_writes_shards_and_an_index_of_the_same_model() {
    let dir = tempfile::tempdir().unwrap();
    let (one, sharded) = (dir.path().join("one"), dir.path().join("sharded"));
    convert_ok(&tiny("ckpt"), &one, &["--no-tokenizer"]);
    convert_ok(
        &tiny("ckpt"),
        &sharded,
        &["--no-tokenizer", "--max-shard-size", "100KB"],
    );
    let index: serde_json::Value = serde_json::from_slice(
        &std::fs::read(sharded.join("model.safetensors.index.json")).unwrap(),
    )
    .unwrap();
    // transformers' save_pretrained of the same model (fixtures/tiny/hf) reports these totals.
    assert_eq!(index["metadata"]["total_size"], 336384);
    assert_eq!(index["metadata"]["total_parameters"], 168192);
    let map = index["weight_map"].as_object().unwrap();
    assert_eq!(map.len(), 28);
    // The 128,000-byte embedding is larger than the limit: a shard of its own, the first.
    assert_eq!(
        map["transformer.wte.weight"],
        "model-00001-of-00004.safetensors"
    );
    for k in 1..=4 {
        let f = sharded.join(format!("model-{k:05}-of-00004.safetensors"));
        let n = std::fs::metadata(&f).unwrap().len();
        assert!(k == 1 || n < 100_000 + 4096, "{}: {n} bytes", f.display());
    }
    assert!(!sharded.join("model.safetensors").exists());
    let r = testkit::run(
        env!("CARGO_BIN_EXE_cpm-diff"),
        &[one.as_os_str(), sharded.as_os_str(), "--values".as_ref()],
        &[],
    );
    assert_eq!(r.code, Some(0), "{}{}", r.stdout, r.stderr);
    // The limit applies to hf output only.
    let r = convert(&[
        tiny("ckpt").as_os_str(),
        "-o".as_ref(),
        dir.path().join("x").as_os_str(),
        "--to".as_ref(),
        "cpm".as_ref(),
        "--max-shard-size".as_ref(),
        "1GB".as_ref(),
    ]);
    assert_eq!(r.code, Some(2), "{}", r.stderr);
}

/// Every family fixture (and how to open it).
const FAMILIES: [(&str, &str); 12] = [
    ("megatron-v0", ""),
    ("megatron-v1", ""),
    ("megatron-v2", ""),
    ("megatron-v3-tp2-pp2", ""),
    ("megatron-v3-erf", ""),
    ("mcore-tp2-local", ""),
    ("mcore-tp2-te", ""),
    ("nanogpt-nobias", "ckpt.pt"),
    ("nanogpt-compiled", "ckpt.pt"),
    ("hf-bin-sharded", ""),
    ("hf-safetensors-untied", ""),
    ("hf-legacy-bin", ""),
];

/// Every family the converter reads, and CPM-LM's tiny checkpoint, exports to Megatron at
/// tp 2, pp 2 and tp 2 x pp 2 and to CPM at tp 2 (its layout has no pipeline stages), and
/// converts back with no flags to the direct conversion: config.json byte for byte (heads,
/// vocabulary and activation from the export's `args`), the same tensors. What CPM-Generate
/// cannot run is refused with exit 2 and nothing written: an exact-erf GELU (it runs the tanh
/// one only) and an untied head (megatron-core's `output_layer`, an HF `lm_head`).
#[test]
fn every_family_exports_and_converts_back_with_no_flags_to_the_direct_conversion() {
    let families = testkit::fixtures().join("families");
    let dir = tempfile::tempdir().unwrap();
    let mut inputs: Vec<(String, PathBuf)> = FAMILIES
        .iter()
        .map(|(n, f)| (n.to_string(), families.join(n).join(f)))
        .collect();
    inputs.push(("tiny-ckpt".into(), tiny("ckpt")));
    // What PyTorch found loading the same exports (make_reshard_fixtures.py).
    let path = testkit::fixtures().join("reshard/findings.json");
    let findings: serde_json::Value =
        serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
    for (name, input) in inputs {
        let direct = dir.path().join(format!("{name}-hf"));
        convert_ok(&input, &direct, &["--no-tokenizer"]);
        let want = port(&direct);
        let config: serde_json::Value = serde_json::from_str(&want.config).unwrap();
        let erf = config["activation_function"] == "gelu";
        let untied = want.tensors.0.iter().any(|(k, _)| k == "lm_head.weight");
        for (to, tp, pp) in [
            ("megatron", "2", "1"),
            ("megatron", "1", "2"),
            ("megatron", "2", "2"),
            ("cpm", "2", "1"),
        ] {
            let what = format!("{name} --to {to} --tp {tp} --pp {pp}");
            let torch = &findings["families"][&what];
            assert!(
                name == "tiny-ckpt" || torch.is_object(),
                "{what}: not in findings.json"
            );
            let out = dir.path().join(format!("{name}-{to}-{tp}-{pp}"));
            let mut args: Vec<&OsStr> = vec![input.as_os_str(), "-o".as_ref(), out.as_os_str()];
            args.extend(["--to", to, "--tp", tp, "--pp", pp, "-q"].map(OsStr::new));
            let r = convert(&args);
            if to == "cpm" && (erf || untied) {
                let says = if erf {
                    "activation `gelu`"
                } else {
                    "lm_head.weight"
                };
                assert_eq!(r.code, Some(2), "{what}: {}", r.stderr);
                assert!(r.stderr.contains(says), "{what}: {}", r.stderr);
                assert!(!out.exists(), "{what}: output left behind");
                assert!(torch.is_null() || torch["refused"].is_string(), "{what}");
                continue;
            }
            assert_eq!(r.code, Some(0), "{what}: {}", r.stderr);
            if !torch.is_null() {
                assert_eq!(torch["weights_only_load"], true, "{what}");
                assert_eq!(torch["logits_match"], true, "{what}");
            }
            let back = dir.path().join(format!("{name}-{to}-{tp}-{pp}-hf"));
            convert_ok(&out, &back, &["--no-tokenizer"]);
            same_port(&port(&back), &want, &what);
        }
    }
}

/// An activation the target's code has no flag for is refused before writing; `--activation`
/// is the way to export a model as another (and the export then records that one).
#[test]
fn an_activation_the_target_cannot_run_is_refused_unless_chosen() {
    let dir = tempfile::tempdir().unwrap();
    let erf = testkit::fixtures().join("families/megatron-v3-erf");
    let out = dir.path().join("o");
    for (input, args, says) in [
        (
            tiny("ckpt"),
            &["--to", "megatron", "--activation", "relu"][..],
            "activation `relu`",
        ),
        (erf.clone(), &["--to", "cpm"][..], "only the tanh GELU"),
    ] {
        let mut all: Vec<&OsStr> = vec![input.as_os_str(), "-o".as_ref(), out.as_os_str()];
        all.extend(args.iter().map(OsStr::new));
        let r = convert(&all);
        assert_eq!(r.code, Some(2), "{args:?}: {}", r.stderr);
        assert!(r.stderr.contains(says), "{args:?}: {}", r.stderr);
        assert!(!out.exists(), "{args:?} left {}", out.display());
    }
    convert_ok(&erf, &out, &["--to", "cpm", "--activation", "gelu_new"]);
    let back = dir.path().join("back");
    convert_ok(&out, &back, &["--no-tokenizer"]);
    let config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(back.join("config.json")).unwrap()).unwrap();
    assert_eq!(config["activation_function"], "gelu_new");
}

/// Our writer's output is an input like any other, so the reader's hostile-input rules hold for
/// it too: one of our rank files cut short at many points, or with its zip directory or pickle
/// damaged, is refused with exit 2 (no panic, nothing written).
#[test]
fn damaged_copies_of_our_rank_files_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good");
    convert_ok(&tiny("ckpt"), &good, &["--to", "cpm", "--tp", "2"]);
    let rank1 = good.join("100/mp_rank_01_model_states.pt");
    let bytes = std::fs::read(&rank1).unwrap();
    let mut damaged: Vec<(String, Vec<u8>)> = (1..16)
        .map(|k| {
            (
                format!("cut at {k}/16"),
                bytes[..bytes.len() * k / 16].to_vec(),
            )
        })
        .collect();
    let mut garbled_end = bytes.clone();
    let n = garbled_end.len();
    garbled_end[n - 200..n - 30].fill(0xa5);
    damaged.push(("central directory garbled".into(), garbled_end));
    let mut garbled_pickle = bytes.clone();
    garbled_pickle[64..200].fill(b'(');
    damaged.push(("data.pkl garbled".into(), garbled_pickle));
    for (what, data) in damaged {
        let input = dir.path().join("in");
        let _ = std::fs::remove_dir_all(&input);
        std::fs::create_dir_all(input.join("100")).unwrap();
        std::fs::copy(
            good.join("latest_checkpointed_iteration.txt"),
            input.join("latest_checkpointed_iteration.txt"),
        )
        .unwrap();
        std::fs::copy(
            good.join("100/mp_rank_00_model_states.pt"),
            input.join("100/mp_rank_00_model_states.pt"),
        )
        .unwrap();
        std::fs::write(input.join("100/mp_rank_01_model_states.pt"), data).unwrap();
        let out = dir.path().join("out");
        let r = convert(&[
            input.as_os_str(),
            "-o".as_ref(),
            out.as_os_str(),
            "--heads".as_ref(),
            "4".as_ref(),
        ]);
        assert_eq!(r.code, Some(2), "{what}: {}", r.stderr);
        assert!(r.stderr.contains("error:"), "{what}: {}", r.stderr);
        assert!(!out.exists(), "{what}: output left behind");
    }
}
