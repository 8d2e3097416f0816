//! Hostile and broken inputs to `cpm-verify` (issue #4): safetensors files, config.json and the
//! .npy fixtures. Every case must end with exit code 2 (1 is a logits mismatch) and a message
//! naming the file and what is wrong, without a panic, a hang (each run has a deadline) or an
//! allocation the file does not justify.
//!
//! Inputs are the real fixtures (fixtures/tiny/hf written by transformers, fixtures/tiny/reference
//! by numpy), cut, patched or rewritten here byte by byte.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const DEADLINE: Duration = Duration::from_secs(60);

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/tiny")
}

/// Runs cpm-verify with output in files and a deadline; returns (exit code, stderr).
fn verify(model: &Path, fixture: &Path) -> (Option<i32>, String) {
    let logs = tempfile::tempdir().unwrap();
    let err_path = logs.path().join("stderr");
    let mut child = Command::new(env!("CARGO_BIN_EXE_cpm-verify"))
        .arg(model)
        .arg(fixture)
        .args(["--threads", "1"])
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(logs.path().join("stdout")).unwrap())
        .stderr(std::fs::File::create(&err_path).unwrap())
        .spawn()
        .expect("spawn cpm-verify");
    let start = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if start.elapsed() > DEADLINE {
            let _ = child.kill();
            let _ = child.wait();
            panic!("cpm-verify still running after {DEADLINE:?} (hang)");
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    (
        status.code(),
        std::fs::read_to_string(&err_path).unwrap_or_default(),
    )
}

fn assert_error(model: &Path, fixture: &Path, file: &str, needles: &[&str]) -> String {
    let (code, e) = verify(model, fixture);
    assert_eq!(code, Some(2), "exit code; stderr: {e}");
    assert!(!e.contains("panicked"), "{e}");
    assert!(e.contains(file), "message does not name {file}: {e}");
    for n in needles {
        assert!(e.contains(n), "message lacks {n:?}: {e}");
    }
    // Shown with `cargo test --test hostile -- --nocapture`: the catalogue of messages.
    println!("REFUSED {}", e.trim());
    e
}

/// A writable copy of a fixture directory.
fn copy_dir(src: &Path) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(src).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), dir.path().join(entry.file_name())).unwrap();
    }
    dir
}

fn reference() -> PathBuf {
    fixtures().join("reference")
}

// ---------------------------------------------------------------------------------------------
// safetensors

fn real_model() -> Vec<u8> {
    std::fs::read(fixtures().join("hf/model.safetensors")).unwrap()
}

/// A model directory whose model.safetensors holds `bytes`.
fn model_with(bytes: &[u8]) -> tempfile::TempDir {
    let d = copy_dir(&fixtures().join("hf"));
    std::fs::write(d.path().join("model.safetensors"), bytes).unwrap();
    d
}

fn assert_model_refused(bytes: &[u8], needles: &[&str]) -> String {
    let d = model_with(bytes);
    assert_error(d.path(), &reference(), "model.safetensors", needles)
}

/// The header as JSON and the data buffer.
fn split(st: &[u8]) -> (serde_json::Map<String, serde_json::Value>, Vec<u8>) {
    let n = u64::from_le_bytes(st[..8].try_into().unwrap()) as usize;
    let header = serde_json::from_slice(&st[8..8 + n]).unwrap();
    (header, st[8 + n..].to_vec())
}

/// A safetensors file from a header and a data buffer, padded as the writer pads.
fn join(header: &serde_json::Map<String, serde_json::Value>, data: &[u8]) -> Vec<u8> {
    let mut h = serde_json::to_vec(header).unwrap();
    while h.len() % 8 != 0 {
        h.push(b' ');
    }
    let mut out = (h.len() as u64).to_le_bytes().to_vec();
    out.extend(h);
    out.extend_from_slice(data);
    out
}

#[test]
fn the_unchanged_fixture_passes() {
    // The control for every case below.
    let (code, e) = verify(&fixtures().join("hf"), &reference());
    assert_eq!(code, Some(0), "{e}");
}

#[test]
fn safetensors_header_length_beyond_the_file_is_refused() {
    let real = real_model();
    for claimed in [real.len() as u64, 1 << 60, u64::MAX, 100_000_001] {
        let mut b = real.clone();
        b[..8].copy_from_slice(&claimed.to_le_bytes());
        assert_model_refused(&b, &["not a valid safetensors file"]);
    }
    // Shorter than the 8-byte length itself, and an empty header.
    assert_model_refused(&real[..5], &["not a valid safetensors file"]);
    assert_model_refused(&0u64.to_le_bytes(), &["not a valid safetensors file"]);
}

#[test]
fn safetensors_overlapping_or_out_of_range_offsets_are_refused() {
    let (header, data) = split(&real_model());
    let names: Vec<String> = header
        .keys()
        .filter(|k| *k != "__metadata__")
        .cloned()
        .collect();
    let offsets =
        |h: &serde_json::Map<String, serde_json::Value>, n: &str| h[n]["data_offsets"].clone();

    // Two tensors of the same size sharing one range.
    let (a, b) = ("transformer.h.0.ln_1.weight", "transformer.h.0.ln_1.bias");
    let mut h = header.clone();
    let oa = offsets(&h, a);
    h.get_mut(b).unwrap()["data_offsets"] = oa;
    assert_model_refused(&join(&h, &data), &["not a valid safetensors file"]);

    // A tensor ending past the buffer.
    let mut h = header.clone();
    let last = names
        .iter()
        .max_by_key(|n| h[n.as_str()]["data_offsets"][1].as_u64().unwrap())
        .unwrap()
        .clone();
    let begin = h[&last]["data_offsets"][0].as_u64().unwrap();
    let end = h[&last]["data_offsets"][1].as_u64().unwrap();
    h.get_mut(&last).unwrap()["data_offsets"] = serde_json::json!([begin + 2, end + 2]);
    assert_model_refused(&join(&h, &data), &["not a valid safetensors file"]);

    // Offsets near u64::MAX (overflow when adding the header length).
    let mut h = header.clone();
    h.get_mut(&last).unwrap()["data_offsets"] = serde_json::json!([u64::MAX - 1, u64::MAX]);
    assert_model_refused(&join(&h, &data), &["not a valid safetensors file"]);

    // Begin after end.
    let mut h = header.clone();
    h.get_mut(&last).unwrap()["data_offsets"] = serde_json::json!([end, begin]);
    assert_model_refused(&join(&h, &data), &["not a valid safetensors file"]);

    // A shape whose byte size overflows, and one that disagrees with its offsets.
    let mut h = header.clone();
    h.get_mut(&last).unwrap()["shape"] = serde_json::json!([1u64 << 40, 1u64 << 40]);
    assert_model_refused(&join(&h, &data), &["not a valid safetensors file"]);
    let mut h = header.clone();
    h.get_mut(&last).unwrap()["shape"] = serde_json::json!([3, 5]);
    assert_model_refused(&join(&h, &data), &["not a valid safetensors file"]);

    // An unknown dtype name.
    let mut h = header.clone();
    h.get_mut(&last).unwrap()["dtype"] = serde_json::json!("F128");
    assert_model_refused(&join(&h, &data), &["not a valid safetensors file"]);
}

#[test]
fn safetensors_non_utf8_names_and_non_json_headers_are_refused() {
    let real = real_model();
    let n = u64::from_le_bytes(real[..8].try_into().unwrap()) as usize;
    // An invalid UTF-8 byte inside the first tensor name.
    let mut b = real.clone();
    let at = 8 + real[8..8 + n]
        .windows(12)
        .position(|w| w == b"transformer.")
        .unwrap();
    b[at] = 0xff;
    assert_model_refused(&b, &["not a valid safetensors file"]);
    // Not JSON; JSON nested 100,000 deep; JSON of the wrong shape.
    for header in [
        b"this is not json".to_vec(),
        [vec![b'['; 100_000], vec![b']'; 100_000]].concat(),
        b"[1, 2, 3]".to_vec(),
        b"{\"x\": {\"dtype\": \"F16\", \"shape\": [-1], \"data_offsets\": [0, 2]}}".to_vec(),
    ] {
        let mut h = header.clone();
        while h.len() % 8 != 0 {
            h.push(b' ');
        }
        let mut b = (h.len() as u64).to_le_bytes().to_vec();
        b.extend(h);
        assert_model_refused(&b, &["not a valid safetensors file"]);
    }
}

#[test]
fn safetensors_truncated_empty_or_random_is_refused() {
    let real = real_model();
    let len = real.len();
    let mut cuts: Vec<usize> = (1..40).map(|i| i * len / 40).collect();
    cuts.extend([0, 1, 7, 8, 9, 100, len - 1]);
    for cut in cuts {
        assert_model_refused(&real[..cut], &[]);
    }
    let mut x = 0x2545_f491_4f6c_dd1du64;
    for n in [1usize, 16, 4096, 1 << 20] {
        let noise: Vec<u8> = (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        assert_model_refused(&noise, &[]);
    }
}

// ---------------------------------------------------------------------------------------------
// config.json

fn assert_config_refused(config: &[u8], needles: &[&str]) -> String {
    let d = copy_dir(&fixtures().join("hf"));
    std::fs::write(d.path().join("config.json"), config).unwrap();
    assert_error(d.path(), &reference(), "config.json", needles)
}

fn config_with(key: &str, value: serde_json::Value) -> Vec<u8> {
    let text = std::fs::read(fixtures().join("hf/config.json")).unwrap();
    let mut c: serde_json::Value = serde_json::from_slice(&text).unwrap();
    c[key] = value;
    serde_json::to_vec(&c).unwrap()
}

#[test]
fn hostile_config_json_is_refused() {
    assert_config_refused(b"", &[]);
    assert_config_refused(b"\xff\xfe{}", &[]);
    assert_config_refused(b"{\"n_embd\": 64,", &[]);
    assert_config_refused(&[vec![b'['; 100_000], vec![b']'; 100_000]].concat(), &[]);
    // Sizes that would make the verifier allocate or loop far beyond the files.
    for (key, value) in [
        ("n_layer", serde_json::json!(1_000_000_000_000u64)),
        ("n_layer", serde_json::json!(u64::MAX)),
        ("n_embd", serde_json::json!(1u64 << 62)),
        ("n_inner", serde_json::json!(u64::MAX)),
        ("vocab_size", serde_json::json!(u64::MAX)),
        ("n_positions", serde_json::json!(1u64 << 62)),
        ("n_head", serde_json::json!(0)),
        ("n_layer", serde_json::json!(-1)),
        ("n_embd", serde_json::json!(64.5)),
        ("layer_norm_epsilon", serde_json::json!("NaN")),
    ] {
        assert_config_refused(&config_with(key, value), &[]);
    }
}

// ---------------------------------------------------------------------------------------------
// .npy fixtures

fn npy(descr: &str, shape: &str, data: &[u8]) -> Vec<u8> {
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

fn assert_npy_refused(file: &str, bytes: &[u8], needles: &[&str]) -> String {
    let d = copy_dir(&reference());
    std::fs::write(d.path().join(file), bytes).unwrap();
    assert_error(&fixtures().join("hf"), d.path(), file, needles)
}

#[test]
fn npy_headers_that_lie_about_the_shape_are_refused() {
    let ids = std::fs::read(reference().join("input_ids.npy")).unwrap();
    let data = &ids[128..];
    // A shape far larger than the data (the file holds 2 x 16 int64).
    assert_npy_refused(
        "input_ids.npy",
        &npy("<i8", "(2, 1000000)", data),
        &["needs", "bytes of data but the file is only"],
    );
    // A shape whose byte size overflows.
    assert_npy_refused(
        "input_ids.npy",
        &npy("<i8", "(4294967296, 4294967296)", data),
        &[],
    );
    // Negative and non-integer dimensions, too many dimensions.
    assert_npy_refused("input_ids.npy", &npy("<i8", "(-2, 16)", data), &[]);
    assert_npy_refused("input_ids.npy", &npy("<i8", "(2.5, 16)", data), &[]);
    assert_npy_refused("input_ids.npy", &npy("<i8", "(2, 16, 1)", data), &[]);
    // A shape smaller than the data: not the recorded fixture, refused against the logits.
    let e = assert_npy_refused("input_ids.npy", &npy("<i8", "(1, 16)", data), &[]);
    assert!(
        e.contains("input_ids.npy") || e.contains("logits.npy"),
        "{e}"
    );
    // Logits whose shape claims a larger vocabulary than the data holds.
    let logits = std::fs::read(reference().join("logits.npy")).unwrap();
    assert_npy_refused(
        "logits.npy",
        &npy("<f4", "(2, 16, 100000000)", &logits[128..]),
        &["needs", "bytes of data but the file is only"],
    );
}

#[test]
fn npy_with_bad_headers_is_refused() {
    let ids = std::fs::read(reference().join("input_ids.npy")).unwrap();
    let data = &ids[128..];
    // A version-2 header claiming a 4 GiB header dict.
    let mut b = b"\x93NUMPY\x02\x00\xff\xff\xff\xff".to_vec();
    b.extend_from_slice(data);
    assert_npy_refused("input_ids.npy", &b, &[]);
    // Unknown dtype, object dtype, Fortran order, garbage dict, wrong magic.
    assert_npy_refused("input_ids.npy", &npy("<c16", "(2, 16)", data), &[]);
    assert_npy_refused("input_ids.npy", &npy("|O", "(2, 16)", data), &[]);
    let mut fortran = npy("<i8", "(2, 16)", data);
    let at = fortran.windows(5).position(|w| w == b"False").unwrap();
    fortran[at..at + 5].copy_from_slice(b"True ");
    assert_npy_refused("input_ids.npy", &fortran, &["Fortran"]);
    assert_npy_refused("input_ids.npy", &npy("<i8", "__import__('os')", data), &[]);
    let mut wrong = ids.clone();
    wrong[1] = b'X';
    assert_npy_refused("input_ids.npy", &wrong, &[]);
}

#[test]
fn npy_headers_that_would_make_the_parser_backtrack_are_refused() {
    // Found by the `npy` fuzz target: npyz's Python-literal parser backtracks exponentially on
    // nested brackets; this 213-byte header ran for minutes before the nesting check.
    let found = std::fs::read(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/regressions/npy/timeout-nested-header"),
    )
    .unwrap();
    assert_npy_refused(
        "logits.npy",
        &found[1..],
        &["nests brackets more than 8 deep"],
    );
    let deep = format!("{}{}", "[".repeat(60), "]".repeat(60));
    assert_npy_refused(
        "input_ids.npy",
        &npy("<i8", &deep, &[]),
        &["nests brackets"],
    );
    // Longer than numpy itself reads.
    let long = format!("(2, 16){}", " ".repeat(20_000));
    let b = npy("<i8", &long, &[0u8; 256]);
    let mut v2 = b"\x93NUMPY\x02\x00".to_vec();
    v2.extend((b.len() as u32 - 10).to_le_bytes());
    v2.extend_from_slice(&b[10..]);
    assert_npy_refused(
        "input_ids.npy",
        &v2,
        &["numpy writes and reads at most 10000"],
    );
}

#[test]
fn npy_truncated_empty_or_random_is_refused() {
    for file in ["input_ids.npy", "logits.npy"] {
        let real = std::fs::read(reference().join(file)).unwrap();
        let len = real.len();
        let mut cuts: Vec<usize> = (1..20).map(|i| i * len / 20).collect();
        cuts.extend([0, 1, 6, 8, 9, 10, 64, 127, 128, len - 1]);
        for cut in cuts {
            assert_npy_refused(file, &real[..cut], &[]);
        }
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let noise: Vec<u8> = (0..4096)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        assert_npy_refused(file, &noise, &[]);
    }
}

// ---------------------------------------------------------------------------------------------
// Fuzz regressions: every saved input (fuzz/regressions/<target>/) and seed (fuzz/seeds/<target>/)
// replayed through exactly the code the fuzz targets run.

#[path = "../../fuzz/fuzz_targets/verify_common.rs"]
mod verify_common;

fn replay(target: &str, f: fn(&[u8], &Path)) {
    let fuzz = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz");
    let dir = tempfile::tempdir().unwrap();
    let mut n = 0;
    for sub in ["regressions", "seeds"] {
        let Ok(entries) = std::fs::read_dir(fuzz.join(sub).join(target)) else {
            continue;
        };
        for e in entries.flatten() {
            eprintln!("replaying {}", e.path().display());
            f(&std::fs::read(e.path()).unwrap(), dir.path());
            n += 1;
        }
    }
    assert!(n > 0, "no inputs for {target}");
}

#[test]
fn npy_fuzz_inputs_replay_cleanly() {
    replay("npy", verify_common::npy);
}

#[test]
fn safetensors_fuzz_inputs_replay_cleanly() {
    replay("safetensors", verify_common::safetensors);
}
