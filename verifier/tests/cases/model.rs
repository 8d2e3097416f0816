//! Broken model directories: safetensors files cut, patched or random; config.json hostile.

use serde_json::{json, Map, Value};

use super::*;

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
        let b = testkit::noise(0x2545_f491_4f6c_dd1d, n);
        cases.push(safetensors_case(format!("{n} random bytes"), &b, &[]));
    }
    cases
}

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
