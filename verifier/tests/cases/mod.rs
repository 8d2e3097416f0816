//! Hostile and broken inputs, built once and run twice: by `hostile.rs` through the binary
//! (exit code, message, deadline) and by `alloc_bound.rs` in process (peak heap). A case added
//! here runs in both.
//!
//! Inputs are the real fixtures (fixtures/tiny/hf written by transformers, fixtures/tiny/reference
//! by numpy), cut, patched or rewritten byte by byte, plus small models built here for the
//! size-driven cases.
#![allow(dead_code)] // each test binary uses its own subset of the helpers

use std::path::{Path, PathBuf};

use serde_json::{json, Map, Value};
use tempfile::TempDir;

/// What a case must end in.
pub enum Expect {
    /// An error (exit 2) whose message contains every needle (the file's name first).
    Refused(Vec<String>),
    /// A completed comparison (exit 0 or 1): the input is legitimate, only large.
    Runs,
}

/// One named input: a model directory, a fixture directory and the expected outcome.
pub struct Case {
    pub name: String,
    pub model: PathBuf,
    pub fixture: PathBuf,
    pub expect: Expect,
    /// Temporary directories the paths point into, removed when the case is dropped.
    _dirs: Vec<TempDir>,
}

impl Case {
    /// Bytes of every regular file (symlinks followed) the case's directories hold: what the
    /// verifier may justify allocating against. FIFOs and devices count nothing.
    pub fn input_bytes(&self) -> u64 {
        [&self.model, &self.fixture]
            .iter()
            .filter_map(|d| std::fs::read_dir(d).ok())
            .flatten()
            .flatten()
            .filter_map(|e| std::fs::metadata(e.path()).ok())
            .filter(|m| m.is_file())
            .map(|m| m.len())
            .sum()
    }
}

pub fn tiny() -> PathBuf {
    testkit::fixtures().join("tiny")
}

pub fn reference() -> PathBuf {
    tiny().join("reference")
}

fn needles(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

/// A case whose model directory is a copy of tiny/hf with `edit` applied.
fn model_case(name: String, needles_: &[&str], edit: impl FnOnce(&Path)) -> Case {
    let d = testkit::copy_dir(&tiny().join("hf"));
    edit(d.path());
    Case {
        name,
        model: d.path().to_path_buf(),
        fixture: reference(),
        expect: Expect::Refused(needles(needles_)),
        _dirs: vec![d],
    }
}

/// A case whose fixture directory is a copy of tiny/reference with `edit` applied.
fn fixture_case(name: String, needles_: &[&str], edit: impl FnOnce(&Path)) -> Case {
    let d = testkit::copy_dir(&reference());
    edit(d.path());
    Case {
        name,
        model: tiny().join("hf"),
        fixture: d.path().to_path_buf(),
        expect: Expect::Refused(needles(needles_)),
        _dirs: vec![d],
    }
}

fn write(path: &Path, bytes: &[u8]) {
    std::fs::write(path, bytes).expect("write a case file");
}

// ---------------------------------------------------------------------------------------------
// safetensors

pub fn real_model() -> Vec<u8> {
    std::fs::read(tiny().join("hf/model.safetensors")).expect("the tiny model")
}

fn safetensors_case(name: String, bytes: &[u8], extra: &[&str]) -> Case {
    let mut n = vec!["model.safetensors"];
    n.extend_from_slice(extra);
    model_case(name, &n, |d| write(&d.join("model.safetensors"), bytes))
}

/// The header as JSON and the data buffer.
fn split(st: &[u8]) -> (Map<String, Value>, Vec<u8>) {
    let n = u64::from_le_bytes(st[..8].try_into().expect("8 bytes")) as usize;
    let header = serde_json::from_slice(&st[8..8 + n]).expect("a JSON header");
    (header, st[8 + n..].to_vec())
}

/// A safetensors file from a header and a data buffer, padded as the writer pads.
fn join(header: &Map<String, Value>, data: &[u8]) -> Vec<u8> {
    let mut h = serde_json::to_vec(header).expect("encode");
    while h.len() % 8 != 0 {
        h.push(b' ');
    }
    let mut out = (h.len() as u64).to_le_bytes().to_vec();
    out.extend(h);
    out.extend_from_slice(data);
    out
}

const INVALID: &str = "not a valid safetensors file";

pub fn safetensors_header_lengths() -> Vec<Case> {
    let real = real_model();
    let mut cases = Vec::new();
    for claimed in [real.len() as u64, 1 << 60, u64::MAX, 100_000_001] {
        let mut b = real.clone();
        b[..8].copy_from_slice(&claimed.to_le_bytes());
        cases.push(safetensors_case(
            format!("header length {claimed}"),
            &b,
            &[INVALID],
        ));
    }
    // Shorter than the 8-byte length itself, and an empty header.
    cases.push(safetensors_case("5 bytes".into(), &real[..5], &[INVALID]));
    cases.push(safetensors_case(
        "empty header".into(),
        &0u64.to_le_bytes(),
        &[INVALID],
    ));
    cases
}

/// The tensor whose data ends last, and its offsets.
fn last_tensor(h: &Map<String, Value>) -> (String, u64, u64) {
    let end = |n: &str| h[n]["data_offsets"][1].as_u64().expect("offset");
    let last = h
        .keys()
        .filter(|k| *k != "__metadata__")
        .max_by_key(|n| end(n))
        .expect("a tensor")
        .clone();
    let begin = h[&last]["data_offsets"][0].as_u64().expect("offset");
    let e = end(&last);
    (last, begin, e)
}

pub fn safetensors_offsets() -> Vec<Case> {
    let (header, data) = split(&real_model());
    let (last, begin, end) = last_tensor(&header);
    let patched = |name: &str, key: &str, value: Value| {
        let mut h = header.clone();
        h.get_mut(name).expect("tensor")[key] = value;
        join(&h, &data)
    };
    let shared = header["transformer.h.0.ln_1.weight"]["data_offsets"].clone();
    let variants = [
        (
            "two tensors sharing one range",
            patched("transformer.h.0.ln_1.bias", "data_offsets", shared),
        ),
        (
            "tensor past the buffer",
            patched(&last, "data_offsets", json!([begin + 2, end + 2])),
        ),
        (
            "offsets near u64::MAX",
            patched(&last, "data_offsets", json!([u64::MAX - 1, u64::MAX])),
        ),
        (
            "begin after end",
            patched(&last, "data_offsets", json!([end, begin])),
        ),
        (
            "shape overflowing",
            patched(&last, "shape", json!([1u64 << 40, 1u64 << 40])),
        ),
        (
            "shape disagreeing with offsets",
            patched(&last, "shape", json!([3, 5])),
        ),
        ("unknown dtype", patched(&last, "dtype", json!("F128"))),
    ];
    variants
        .into_iter()
        .map(|(name, b)| safetensors_case(name.into(), &b, &[INVALID]))
        .collect()
}

pub fn safetensors_names_and_headers() -> Vec<Case> {
    let real = real_model();
    let n = u64::from_le_bytes(real[..8].try_into().expect("8 bytes")) as usize;
    // An invalid UTF-8 byte inside the first tensor name.
    let mut b = real.clone();
    let at = 8 + real[8..8 + n]
        .windows(12)
        .position(|w| w == b"transformer.")
        .expect("a prefixed name");
    b[at] = 0xff;
    let mut cases = vec![safetensors_case("non-UTF-8 name".into(), &b, &[INVALID])];
    // Not JSON; JSON nested 100,000 deep; JSON of the wrong shape.
    for (name, header) in [
        ("not JSON", b"this is not json".to_vec()),
        (
            "nested 100,000 deep",
            [vec![b'['; 100_000], vec![b']'; 100_000]].concat(),
        ),
        ("a JSON array", b"[1, 2, 3]".to_vec()),
        (
            "negative dimension",
            b"{\"x\": {\"dtype\": \"F16\", \"shape\": [-1], \"data_offsets\": [0, 2]}}".to_vec(),
        ),
    ] {
        let mut h = header;
        while h.len() % 8 != 0 {
            h.push(b' ');
        }
        let mut b = (h.len() as u64).to_le_bytes().to_vec();
        b.extend(h);
        cases.push(safetensors_case(name.into(), &b, &[INVALID]));
    }
    cases
}

/// Deterministic noise (xorshift), so a failing case can be rebuilt.
fn noise(n: usize, mut x: u64) -> Vec<u8> {
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

pub fn safetensors_truncated_or_random() -> Vec<Case> {
    let real = real_model();
    let len = real.len();
    let mut cuts: Vec<usize> = (1..40).map(|i| i * len / 40).collect();
    cuts.extend([0, 1, 7, 8, 9, 100, len - 1]);
    let mut cases: Vec<Case> = cuts
        .into_iter()
        .map(|cut| safetensors_case(format!("cut at {cut}"), &real[..cut], &[]))
        .collect();
    for n in [1usize, 16, 4096, 1 << 20] {
        let b = noise(n, 0x2545_f491_4f6c_dd1d);
        cases.push(safetensors_case(format!("{n} random bytes"), &b, &[]));
    }
    cases
}

// ---------------------------------------------------------------------------------------------
// config.json

fn config_case(name: String, config: &[u8], extra: &[&str]) -> Case {
    let mut n = vec!["config.json"];
    n.extend_from_slice(extra);
    model_case(name, &n, |d| write(&d.join("config.json"), config))
}

fn config_with(key: &str, value: Value) -> Vec<u8> {
    let text = std::fs::read(tiny().join("hf/config.json")).expect("config");
    let mut c: Value = serde_json::from_slice(&text).expect("JSON");
    c[key] = value;
    serde_json::to_vec(&c).expect("encode")
}

pub fn hostile_config_json() -> Vec<Case> {
    let mut cases = vec![
        config_case("empty".into(), b"", &[]),
        config_case("UTF-16 BOM".into(), b"\xff\xfe{}", &[]),
        config_case("cut short".into(), b"{\"n_embd\": 64,", &[]),
        config_case(
            "nested 100,000 deep".into(),
            &[vec![b'['; 100_000], vec![b']'; 100_000]].concat(),
            &[],
        ),
    ];
    // Sizes that would make the verifier allocate or loop far beyond the files.
    for (key, value) in [
        ("n_layer", json!(1_000_000_000_000u64)),
        ("n_layer", json!(u64::MAX)),
        ("n_embd", json!(1u64 << 62)),
        ("n_inner", json!(u64::MAX)),
        ("vocab_size", json!(u64::MAX)),
        ("n_positions", json!(1u64 << 62)),
        ("n_head", json!(0)),
        ("n_layer", json!(-1)),
        ("n_embd", json!(64.5)),
        ("layer_norm_epsilon", json!("NaN")),
    ] {
        let name = format!("{key} = {value}");
        cases.push(config_case(name, &config_with(key, value), &[]));
    }
    cases
}

// ---------------------------------------------------------------------------------------------
// Files that are not regular files, or too large to read whole (issue 8.6)

fn mkfifo(path: &Path) {
    let _ = std::fs::remove_file(path);
    let ok = std::process::Command::new("mkfifo")
        .arg(path)
        .status()
        .expect("run mkfifo")
        .success();
    assert!(ok, "mkfifo {}", path.display());
}

fn link_to_dev_zero(path: &Path) {
    let _ = std::fs::remove_file(path);
    std::os::unix::fs::symlink("/dev/zero", path).expect("symlink");
}

/// `{}` after `pad` bytes of spaces: valid JSON, but larger than the reader's cap.
fn padded_json(pad: usize) -> Vec<u8> {
    let mut b = vec![b' '; pad];
    b.extend_from_slice(b"{}");
    b
}

pub fn special_and_oversized_files() -> Vec<Case> {
    const FIFO: &str = "a FIFO, not a regular file";
    const DEV: &str = "a character device, not a regular file";
    const BIG: &str = "reads at most";
    vec![
        model_case(
            "config.json is a FIFO".into(),
            &["config.json", FIFO],
            |d| mkfifo(&d.join("config.json")),
        ),
        model_case(
            "config.json -> /dev/zero".into(),
            &["config.json", DEV],
            |d| link_to_dev_zero(&d.join("config.json")),
        ),
        model_case("config.json of 2 MiB".into(), &["config.json", BIG], |d| {
            write(&d.join("config.json"), &padded_json(2 << 20))
        }),
        model_case(
            "model.safetensors is a FIFO".into(),
            &["model.safetensors", FIFO],
            |d| mkfifo(&d.join("model.safetensors")),
        ),
        model_case(
            "model.safetensors -> /dev/zero".into(),
            &["model.safetensors", DEV],
            |d| link_to_dev_zero(&d.join("model.safetensors")),
        ),
        fixture_case(
            "fixture.json -> /dev/zero".into(),
            &["fixture.json", DEV],
            |d| link_to_dev_zero(&d.join("fixture.json")),
        ),
        fixture_case(
            "fixture.json is a FIFO".into(),
            &["fixture.json", FIFO],
            |d| mkfifo(&d.join("fixture.json")),
        ),
        fixture_case(
            "fixture.json of 2 MiB".into(),
            &["fixture.json", BIG],
            |d| write(&d.join("fixture.json"), &padded_json(2 << 20)),
        ),
        fixture_case(
            "fixture.json not JSON".into(),
            &["fixture.json", "not valid JSON"],
            |d| write(&d.join("fixture.json"), b"atol = 1"),
        ),
        fixture_case(
            "fixture.json a dangling symlink".into(),
            &["fixture.json"],
            |d| {
                let p = d.join("fixture.json");
                let _ = std::fs::remove_file(&p);
                std::os::unix::fs::symlink(d.join("nowhere"), &p).expect("symlink");
            },
        ),
        fixture_case(
            "input_ids.npy -> /dev/zero".into(),
            &["input_ids.npy", DEV],
            |d| link_to_dev_zero(&d.join("input_ids.npy")),
        ),
        fixture_case("logits.npy is a FIFO".into(), &["logits.npy", FIFO], |d| {
            mkfifo(&d.join("logits.npy"))
        }),
    ]
}

// ---------------------------------------------------------------------------------------------
// Shard indexes (issue 8.5)

/// A model directory holding only config.json and an index mapping `tensors` names to `shards`
/// distinct shard files (none of which exist).
fn index_case(name: String, tensors: usize, shards: usize, needles_: &[&str]) -> Case {
    model_case(name, needles_, |d| {
        std::fs::remove_file(d.join("model.safetensors")).expect("remove");
        let map: Map<String, Value> = (0..tensors)
            .map(|i| (format!("t{i}"), json!(format!("s{}", i % shards))))
            .collect();
        let index = serde_json::to_vec(&json!({ "weight_map": map })).expect("encode");
        write(&d.join("model.safetensors.index.json"), &index);
    })
}

pub fn shard_indexes() -> Vec<Case> {
    vec![
        // Quadratic before: 10,000 distinct names took seconds to deduplicate. Now the first
        // missing shard is reported at once.
        index_case(
            "index naming 10,000 shards".into(),
            10_000,
            10_000,
            &["s0", "No such file"],
        ),
        index_case(
            "index naming 100,000 shards".into(),
            100_000,
            100_000,
            &[
                "model.safetensors.index.json",
                "more than 16384 shard files",
            ],
        ),
        model_case(
            "index of 5 MiB".into(),
            &["model.safetensors.index.json", "reads at most"],
            |d| {
                std::fs::remove_file(d.join("model.safetensors")).expect("remove");
                write(
                    &d.join("model.safetensors.index.json"),
                    &padded_json(5 << 20),
                );
            },
        ),
        model_case(
            "index is a FIFO".into(),
            &["model.safetensors.index.json", "a FIFO"],
            |d| {
                std::fs::remove_file(d.join("model.safetensors")).expect("remove");
                mkfifo(&d.join("model.safetensors.index.json"));
            },
        ),
    ]
}

// ---------------------------------------------------------------------------------------------
// .npy fixtures

/// A version-1 .npy file with this header dict and raw data.
pub fn npy(descr: &str, shape: &str, data: &[u8]) -> Vec<u8> {
    let mut h = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}");
    while (10 + h.len() + 1) % 64 != 0 {
        h.push(' ');
    }
    h.push('\n');
    let mut out = b"\x93NUMPY\x01\x00".to_vec();
    out.extend((h.len() as u16).to_le_bytes());
    out.extend(h.as_bytes());
    out.extend_from_slice(data);
    out
}

fn npy_case(name: &str, file: &str, bytes: &[u8], extra: &[&str]) -> Case {
    let mut n = vec![file];
    n.extend_from_slice(extra);
    fixture_case(format!("{file}: {name}"), &n, |d| {
        write(&d.join(file), bytes)
    })
}

fn reference_bytes(file: &str) -> Vec<u8> {
    std::fs::read(reference().join(file)).expect("reference file")
}

pub fn npy_shape_lies() -> Vec<Case> {
    let ids = reference_bytes("input_ids.npy");
    let data = &ids[128..];
    let logits = reference_bytes("logits.npy");
    let needs = ["needs", "bytes of data but the file is only"];
    vec![
        // The file holds 2 x 16 int64.
        npy_case(
            "shape beyond the data",
            "input_ids.npy",
            &npy("<i8", "(2, 1000000)", data),
            &needs,
        ),
        npy_case(
            "shape overflowing",
            "input_ids.npy",
            &npy("<i8", "(4294967296, 4294967296)", data),
            &[],
        ),
        npy_case(
            "negative dimension",
            "input_ids.npy",
            &npy("<i8", "(-2, 16)", data),
            &[],
        ),
        npy_case(
            "fractional dimension",
            "input_ids.npy",
            &npy("<i8", "(2.5, 16)", data),
            &[],
        ),
        npy_case(
            "three dimensions",
            "input_ids.npy",
            &npy("<i8", "(2, 16, 1)", data),
            &[],
        ),
        // Smaller than the data: not the recorded fixture, refused against the logits.
        npy_case(
            "shape below the data",
            "input_ids.npy",
            &npy("<i8", "(1, 16)", data),
            &["logits.npy"],
        ),
        npy_case(
            "vocabulary beyond the data",
            "logits.npy",
            &npy("<f4", "(2, 16, 100000000)", &logits[128..]),
            &needs,
        ),
    ]
}

pub fn npy_bad_headers() -> Vec<Case> {
    let ids = reference_bytes("input_ids.npy");
    let data = &ids[128..];
    // A version-2 header claiming a 4 GiB header dict.
    let mut v2 = b"\x93NUMPY\x02\x00\xff\xff\xff\xff".to_vec();
    v2.extend_from_slice(data);
    let mut fortran = npy("<i8", "(2, 16)", data);
    let at = fortran
        .windows(5)
        .position(|w| w == b"False")
        .expect("False");
    fortran[at..at + 5].copy_from_slice(b"True ");
    let mut wrong = ids.clone();
    wrong[1] = b'X';
    vec![
        npy_case("4 GiB header", "input_ids.npy", &v2, &[]),
        npy_case(
            "complex dtype",
            "input_ids.npy",
            &npy("<c16", "(2, 16)", data),
            &[],
        ),
        npy_case(
            "object dtype",
            "input_ids.npy",
            &npy("|O", "(2, 16)", data),
            &[],
        ),
        npy_case("Fortran order", "input_ids.npy", &fortran, &["Fortran"]),
        npy_case(
            "code in the header",
            "input_ids.npy",
            &npy("<i8", "__import__('os')", data),
            &[],
        ),
        npy_case("wrong magic", "input_ids.npy", &wrong, &[]),
    ]
}

pub fn npy_backtracking_headers() -> Vec<Case> {
    // Found by the `npy` fuzz target: npyz's Python-literal parser backtracks exponentially on
    // nested brackets; this 213-byte header ran for minutes before the nesting check.
    let found = std::fs::read(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/regressions/npy/timeout-nested-header"),
    )
    .expect("the saved fuzz input");
    let deep = format!("{}{}", "[".repeat(60), "]".repeat(60));
    // Longer than numpy itself reads.
    let long = format!("(2, 16){}", " ".repeat(20_000));
    let b = npy("<i8", &long, &[0u8; 256]);
    let mut v2 = b"\x93NUMPY\x02\x00".to_vec();
    v2.extend((b.len() as u32 - 10).to_le_bytes());
    v2.extend_from_slice(&b[10..]);
    vec![
        npy_case(
            "fuzz-found nesting",
            "logits.npy",
            &found[1..],
            &["nests brackets more than 8 deep"],
        ),
        npy_case(
            "60 deep",
            "input_ids.npy",
            &npy("<i8", &deep, &[]),
            &["nests brackets"],
        ),
        npy_case(
            "20 kB header",
            "input_ids.npy",
            &v2,
            &["numpy writes and reads at most 10000"],
        ),
    ]
}

pub fn npy_truncated_or_random() -> Vec<Case> {
    let mut cases = Vec::new();
    for file in ["input_ids.npy", "logits.npy"] {
        let real = reference_bytes(file);
        let len = real.len();
        let mut cuts: Vec<usize> = (1..20).map(|i| i * len / 20).collect();
        cuts.extend([0, 1, 6, 8, 9, 10, 64, 127, 128, len - 1]);
        for cut in cuts {
            cases.push(npy_case(&format!("cut at {cut}"), file, &real[..cut], &[]));
        }
        cases.push(npy_case(
            "4096 random bytes",
            file,
            &noise(4096, 0x9e37_79b9_7f4a_7c15),
            &[],
        ));
    }
    cases
}

// ---------------------------------------------------------------------------------------------
// Sizes that multiply (issue 8.4): small files whose dimensions would make the forward pass
// allocate far more than the files hold.

/// A GPT-2 of one layer with these sizes and deterministic f32 weights.
fn small_model(dir: &Path, n_positions: usize, h: usize, heads: usize, inner: usize, vocab: usize) {
    let config = json!({"model_type": "gpt2", "vocab_size": vocab, "n_positions": n_positions,
        "n_embd": h, "n_layer": 1, "n_head": heads, "n_inner": inner});
    write(&dir.join("config.json"), config.to_string().as_bytes());
    let shapes: Vec<(&str, Vec<usize>)> = vec![
        ("wte.weight", vec![vocab, h]),
        ("wpe.weight", vec![n_positions, h]),
        ("ln_f.weight", vec![h]),
        ("ln_f.bias", vec![h]),
        ("h.0.ln_1.weight", vec![h]),
        ("h.0.ln_1.bias", vec![h]),
        ("h.0.attn.c_attn.weight", vec![h, 3 * h]),
        ("h.0.attn.c_attn.bias", vec![3 * h]),
        ("h.0.attn.c_proj.weight", vec![h, h]),
        ("h.0.attn.c_proj.bias", vec![h]),
        ("h.0.ln_2.weight", vec![h]),
        ("h.0.ln_2.bias", vec![h]),
        ("h.0.mlp.c_fc.weight", vec![h, inner]),
        ("h.0.mlp.c_fc.bias", vec![inner]),
        ("h.0.mlp.c_proj.weight", vec![inner, h]),
        ("h.0.mlp.c_proj.bias", vec![h]),
    ];
    let data: Vec<(String, Vec<usize>, Vec<u8>)> = shapes
        .into_iter()
        .map(|(name, shape)| {
            let n: usize = shape.iter().product();
            let bytes = (0..n)
                .flat_map(|i| (((i % 13) as f32 - 6.0) / 50.0).to_le_bytes())
                .collect();
            (name.to_string(), shape, bytes)
        })
        .collect();
    let views: Vec<(String, safetensors::tensor::TensorView)> = data
        .iter()
        .map(|(name, shape, bytes)| {
            let view =
                safetensors::tensor::TensorView::new(safetensors::Dtype::F32, shape.clone(), bytes)
                    .expect("a consistent view");
            (name.clone(), view)
        })
        .collect();
    safetensors::serialize_to_file(views, None, &dir.join("model.safetensors")).expect("serialize");
}

/// A fixture of `batch` rows of `seq` zero ids and zero f32 logits over `vocab`.
fn zero_fixture(dir: &Path, batch: usize, seq: usize, vocab: usize) {
    let ids = vec![0u8; batch * seq * 8];
    write(
        &dir.join("input_ids.npy"),
        &npy("<i8", &format!("({batch}, {seq})"), &ids),
    );
    let logits = vec![0u8; batch * seq * vocab * 4];
    write(
        &dir.join("logits.npy"),
        &npy("<f4", &format!("({batch}, {seq}, {vocab})"), &logits),
    );
}

fn sized_case(
    name: &str,
    model: (usize, usize, usize, usize, usize),
    fx: (usize, usize),
    expect: Expect,
) -> Case {
    let (m, f) = (
        tempfile::tempdir().expect("tempdir"),
        tempfile::tempdir().expect("tempdir"),
    );
    let (n_positions, h, heads, inner, vocab) = model;
    small_model(m.path(), n_positions, h, heads, inner, vocab);
    zero_fixture(f.path(), fx.0, fx.1, vocab);
    Case {
        name: name.into(),
        model: m.path().to_path_buf(),
        fixture: f.path().to_path_buf(),
        expect,
        _dirs: vec![m, f],
    }
}

pub fn multiplying_sizes() -> Vec<Case> {
    vec![
        // 2 MB of model and 1.4 MB of fixture asked for a 14.4 GB score matrix.
        sized_case(
            "60,000 positions",
            (60_000, 8, 2, 32, 2),
            (1, 60_000),
            Expect::Refused(needles(&["input_ids.npy", "at most 16384 positions"])),
        ),
        // Within the limits: attention one query row at a time keeps this in a few MB (the
        // score matrix alone was 256 MiB).
        sized_case(
            "8,192 positions",
            (8_192, 8, 2, 32, 2),
            (1, 8_192),
            Expect::Runs,
        ),
        // 2,048 tokens times a 1,048,576-wide MLP: 8.6 GB of activations from 12 MB of files.
        sized_case(
            "tokens times a wide MLP",
            (1, 1, 1, 1 << 20, 1),
            (2_048, 1),
            Expect::Refused(needles(&["activations", "at most 4294967296"])),
        ),
    ]
}

/// Every case, by group name.
pub fn all() -> Vec<(&'static str, Vec<Case>)> {
    vec![
        ("safetensors header lengths", safetensors_header_lengths()),
        ("safetensors offsets", safetensors_offsets()),
        (
            "safetensors names and headers",
            safetensors_names_and_headers(),
        ),
        (
            "safetensors truncated or random",
            safetensors_truncated_or_random(),
        ),
        ("config.json", hostile_config_json()),
        ("special and oversized files", special_and_oversized_files()),
        ("shard indexes", shard_indexes()),
        ("npy shape lies", npy_shape_lies()),
        ("npy bad headers", npy_bad_headers()),
        ("npy backtracking headers", npy_backtracking_headers()),
        ("npy truncated or random", npy_truncated_or_random()),
        ("multiplying sizes", multiplying_sizes()),
    ]
}
