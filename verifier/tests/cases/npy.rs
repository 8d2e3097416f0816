//! Broken .npy fixtures: headers that lie, bad or backtracking headers, cut or random files.

use std::path::Path;

use super::*;

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
            &testkit::noise(1, 4096),
            &[],
        ));
    }
    cases
}
