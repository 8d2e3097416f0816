//! Every GPT-2 family in (issue 10): each fixture in `fixtures/families/` was written in its
//! family's real layout by `fixtures/make_family_fixtures.py`, with logits recorded by that
//! family's own forward pass (Megatron's rank-by-rank layout, megatron-core's GPTModel,
//! nanoGPT's model, transformers). Each must convert with its family detected from structure
//! alone, and the conversion must reproduce those logits (`cpm-verify`'s library), with the
//! activation the family's training flags imply. Fixtures holding the same model must convert
//! to the same tensors, byte for byte.

use std::path::{Path, PathBuf};

const EXE: &str = env!("CARGO_BIN_EXE_cpm-convert");

fn families() -> PathBuf {
    testkit::fixtures().join("families")
}

/// (fixture, the input a user passes, family expected, activation expected)
const CASES: &[(&str, &str, &str, &str)] = &[
    ("megatron-v0", "", "megatron-gpt2", "gelu_new"),
    ("megatron-v1", "", "megatron-gpt2", "gelu_new"),
    ("megatron-v2", "", "megatron-gpt2", "gelu_new"),
    ("megatron-v3-tp2-pp2", "", "megatron-gpt2", "gelu_new"),
    ("megatron-v3-erf", "", "megatron-gpt2", "gelu"),
    ("mcore-tp2-local", "", "megatron-core-gpt", "gelu"),
    ("mcore-tp2-te", "", "megatron-core-gpt", "gelu_new"),
    ("nanogpt-nobias", "ckpt.pt", "nanogpt", "gelu"),
    ("nanogpt-compiled", "ckpt.pt", "nanogpt", "gelu"),
    ("hf-bin-sharded", "", "hf-gpt2", "gelu_new"),
    ("hf-safetensors-untied", "", "hf-gpt2", "gelu_new"),
    ("hf-legacy-bin", "", "hf-gpt2", "gelu_new"),
];

fn convert(input: &Path, out: &Path, extra: &[&str]) -> testkit::Run {
    let mut args: Vec<&std::ffi::OsStr> = vec![input.as_os_str(), "-o".as_ref(), out.as_os_str()];
    args.extend(extra.iter().map(std::ffi::OsStr::new));
    args.push("--json".as_ref());
    testkit::run(EXE, &args, &[])
}

fn json(run: &testkit::Run) -> serde_json::Value {
    serde_json::from_str(&run.stdout).unwrap_or_else(|e| panic!("{e}: {run:?}"))
}

#[test]
fn every_family_converts_and_reproduces_its_own_logits() {
    let tmp = tempfile::tempdir().unwrap();
    for (name, input, family, activation) in CASES {
        let fixture = families().join(name);
        let out = tmp.path().join(name);
        let run = convert(&fixture.join(input), &out, &[]);
        assert_eq!(run.code, Some(0), "{name}: {run:?}");
        let summary = json(&run);
        assert_eq!(summary["variant"], *family, "{name}: family detected");
        assert_eq!(summary["family_from"], "detected", "{name}");
        let config: serde_json::Value =
            serde_json::from_slice(&std::fs::read(out.join("config.json")).unwrap()).unwrap();
        assert_eq!(
            config["activation_function"], *activation,
            "{name}: activation"
        );
        let opts = cpm_verify::Options {
            threads: 1,
            ..Default::default()
        };
        let report =
            cpm_verify::verify(&out, &fixture, &opts).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(
            report.overall.pass,
            "{name}: logits differ from the family's own forward: max |diff| {}",
            report.overall.max_abs_diff
        );
    }
}

/// (name, dtype, shape) of each tensor of a model.safetensors, in file order.
type TensorList = Vec<(String, String, Vec<usize>)>;

/// The tensors of a converted model.safetensors and its data section.
fn tensors(dir: &Path) -> (TensorList, Vec<u8>) {
    let bytes = std::fs::read(dir.join("model.safetensors")).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    let mut list: Vec<(u64, String, String, Vec<usize>)> = header
        .as_object()
        .unwrap()
        .iter()
        .filter(|(k, _)| *k != "__metadata__")
        .map(|(k, v)| {
            let shape = v["shape"]
                .as_array()
                .unwrap()
                .iter()
                .map(|d| d.as_u64().unwrap() as usize);
            (
                v["data_offsets"][0].as_u64().unwrap(),
                k.clone(),
                v["dtype"].as_str().unwrap().to_string(),
                shape.collect(),
            )
        })
        .collect();
    list.sort();
    let names = list.into_iter().map(|(_, n, d, s)| (n, d, s)).collect();
    (names, bytes[8 + n..].to_vec())
}

#[test]
fn one_model_saved_by_different_families_converts_to_the_same_tensors() {
    // Model T (see fixtures/families/README.md): the Megatron checkpoints pad the vocabulary to
    // 1024 rows and nanoGPT stores f32; cut and cast, they must equal the Hugging Face port.
    let tmp = tempfile::tempdir().unwrap();
    let reference = tmp.path().join("hf");
    let run = convert(&families().join("hf-bin-sharded"), &reference, &[]);
    assert_eq!(run.code, Some(0), "{run:?}");
    let (want_names, want_data) = tensors(&reference);
    for (name, input, extra) in [
        ("megatron-v0", "", &["--vocab-size", "1000"][..]),
        ("megatron-v1", "", &["--vocab-size", "1000"]),
        ("megatron-v2", "", &["--vocab-size", "1000"]),
        ("megatron-v3-tp2-pp2", "", &["--vocab-size", "1000"]),
        (
            "nanogpt-compiled",
            "ckpt.pt",
            &["--vocab-size", "1000", "--dtype", "f16"],
        ),
        ("hf-legacy-bin", "", &["--dtype", "f16"]),
    ] {
        let out = tmp.path().join(name);
        let run = convert(&families().join(name).join(input), &out, extra);
        assert_eq!(run.code, Some(0), "{name}: {run:?}");
        let (names, data) = tensors(&out);
        assert_eq!(
            names, want_names,
            "{name}: tensor names, dtypes, shapes, order"
        );
        assert!(
            data == want_data,
            "{name}: the data section differs from the Hugging Face port's"
        );
    }
}

#[test]
fn an_untied_head_is_kept_and_a_tied_copy_dropped() {
    let tmp = tempfile::tempdir().unwrap();
    for (name, untied) in [
        ("mcore-tp2-local", true),
        ("hf-safetensors-untied", true),
        ("nanogpt-compiled", false),
        ("hf-bin-sharded", false),
    ] {
        let out = tmp.path().join(name);
        let input = if name.starts_with("nanogpt") {
            families().join(name).join("ckpt.pt")
        } else {
            families().join(name)
        };
        let run = convert(&input, &out, &[]);
        assert_eq!(run.code, Some(0), "{name}: {run:?}");
        let (names, _) = tensors(&out);
        let has_head = names.iter().any(|(n, _, _)| n == "lm_head.weight");
        assert_eq!(has_head, untied, "{name}: lm_head.weight written");
        let config: serde_json::Value =
            serde_json::from_slice(&std::fs::read(out.join("config.json")).unwrap()).unwrap();
        assert_eq!(config["tie_word_embeddings"], !untied, "{name}");
    }
}

#[test]
fn a_file_of_no_known_family_says_what_it_found() {
    // CPM's rank file with its weights renamed beyond any family's rules.
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let nothing = tmp.path().join("x.safetensors");
    std::fs::write(&nothing, b"not a checkpoint").unwrap();
    let run = convert(&nothing, &out, &[]);
    assert_eq!(run.code, Some(2), "{run:?}");
    let wrong = convert(
        &families().join("megatron-v1"),
        &out,
        &["--from", "nanogpt"],
    );
    assert_eq!(wrong.code, Some(2), "{wrong:?}");
    assert!(
        wrong
            .stdout
            .contains("matches no rule of the `nanogpt` mapping"),
        "{wrong:?}"
    );
    let unknown = convert(&families().join("megatron-v1"), &out, &["--from", "gpt-j"]);
    assert!(
        unknown.stdout.contains("unknown family `gpt-j`"),
        "{unknown:?}"
    );
    assert!(!out.exists());
}

const DIFF: &str = env!("CARGO_BIN_EXE_cpm-diff");

#[test]
fn every_family_equals_its_own_conversion_value_for_value() {
    let tmp = tempfile::tempdir().unwrap();
    for (name, input, _, _) in CASES {
        let original = families().join(name).join(input);
        let out = tmp.path().join(name);
        let run = convert(&original, &out, &[]);
        assert_eq!(run.code, Some(0), "{name}: {run:?}");
        let args = [
            original.as_os_str(),
            out.as_os_str(),
            "--values".as_ref(),
            "--json".as_ref(),
        ];
        let diff = testkit::run(DIFF, &args, &[]);
        assert_eq!(
            diff.code,
            Some(0),
            "{name}: cpm-diff original conversion: {diff:?}"
        );
        assert_eq!(json(&diff)["equal"], true, "{name}");
    }
}

#[test]
fn a_port_with_an_untransposed_weight_differs_at_that_tensor() {
    // fixtures/tiny/corrupt/c-proj-not-transposed: transformers' own port with one square
    // row-parallel weight left untransposed (make_corrupt_fixtures.py): same names and shapes.
    let corrupt = testkit::fixtures().join("tiny/corrupt/c-proj-not-transposed");
    let hf = testkit::fixtures().join("tiny/hf");
    let args = [
        hf.as_os_str(),
        corrupt.as_os_str(),
        "--values".as_ref(),
        "--json".as_ref(),
    ];
    let run = testkit::run(DIFF, &args, &[]);
    assert_eq!(run.code, Some(1), "{run:?}");
    let report = json(&run);
    let differing: Vec<&str> = report["values"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["name"].as_str().unwrap())
        .collect();
    assert!(
        !differing.is_empty() && differing.iter().all(|n| n.ends_with("attn.c_proj.weight")),
        "{differing:?}"
    );
}

#[test]
fn a_last_stage_copy_of_the_embedding_that_differs_is_refused() {
    // Megatron's last pipeline stage keeps `word_embeddings_for_head`, which must equal the
    // embedding; flip one of its bytes in a copy of the tp2 x pp2 fixture.
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("ckpt");
    testkit::copy_tree(&families().join("megatron-v3-tp2-pp2"), &root);
    let rank = root.join("iter_0000100/mp_rank_01_001/model_optim_rng.pt");
    let file = cpm_torch::TorchFile::open(&rank).unwrap();
    let head = file
        .root
        .get("model")
        .and_then(|m| m.get("word_embeddings_for_head"))
        .and_then(|w| w.get("weight"));
    let Some(cpm_torch::Value::Tensor(t)) = &head else {
        panic!("the fixture's last stage has no word_embeddings_for_head");
    };
    let span = file.span("word_embeddings_for_head.weight", t).unwrap();
    drop(head);
    drop(file);
    let mut bytes = std::fs::read(&rank).unwrap();
    bytes[span.start as usize + 1] ^= 0x40;
    std::fs::write(&rank, bytes).unwrap();
    let out = tmp.path().join("out");
    let run = convert(&root, &out, &[]);
    assert_eq!(run.code, Some(2), "{run:?}");
    assert!(
        run.stdout
            .contains("must be a copy of `transformer.wte.weight`"),
        "{run:?}"
    );
    assert!(!out.exists());
}

#[test]
fn an_implied_vocabulary_cuts_the_padding_only_when_the_rows_are_there() {
    // The Megatron fixtures record tokenizer_type GPT2BPETokenizer (50257 entries) over a
    // 1000-entry vocabulary padded to 1024 rows: the hint is more than the rows, so it is ignored
    // with a warning and the rows are kept.
    let tmp = tempfile::tempdir().unwrap();
    let run = convert(
        &families().join("megatron-v1"),
        &tmp.path().join("kept"),
        &[],
    );
    assert_eq!(run.code, Some(0), "{run:?}");
    let warnings = json(&run)["warnings"].to_string();
    assert!(
        warnings.contains("implies a vocabulary of 50257, more than the 1024 rows"),
        "{warnings}"
    );
    // The same rule with a size the rows hold cuts to it (a mapping file of our own).
    let text = std::fs::read_to_string(testkit::fixtures().join("../mappings/megatron-gpt2.toml"))
        .unwrap()
        .replace("size = 50257", "size = 1000");
    let mapping = tmp.path().join("m.toml");
    std::fs::write(&mapping, text).unwrap();
    let out = tmp.path().join("cut");
    let run = convert(
        &families().join("megatron-v1"),
        &out,
        &["--mapping", mapping.to_str().unwrap()],
    );
    assert_eq!(run.code, Some(0), "{run:?}");
    assert!(json(&run)["warnings"]
        .to_string()
        .contains("vocabulary cut from 1024 to 1000"));
    let config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("config.json")).unwrap()).unwrap();
    assert_eq!(config["vocab_size"], 1000);
    // --vocab-size wins over the hint, and more rows than present is an error.
    let run = convert(
        &families().join("megatron-v1"),
        &tmp.path().join("x"),
        &["--vocab-size", "2000"],
    );
    assert_eq!(run.code, Some(2), "{run:?}");
    assert!(run.stdout.contains("--vocab-size 2000"), "{run:?}");
}
