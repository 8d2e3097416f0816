//! Legacy stream files; truncation, empty files, random bytes.

use super::*;

pub fn legacy_counts() -> Vec<Case> {
    let base = real_legacy();
    let at = legacy_data_start(&base);
    let mut out = Vec::new();
    for (count, needle) in [
        (
            1i64 << 60,
            "holds 1152921504606846976 elements but the object declares",
        ),
        (-5, "negative element count -5"),
        (3, "holds 3 elements but the object declares"),
    ] {
        let mut b = base.clone();
        b[at..at + 8].copy_from_slice(&count.to_le_bytes());
        out.push(
            Case::refused(format!("legacy element count {count}"), b, &[needle])
                .args(&["--heads", "4"]),
        );
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Truncation, empty files, random bytes

pub fn truncations() -> Vec<Case> {
    // ~100 cut points per format, including the last bytes, where the zip central directory
    // lives.
    let mut out = Vec::new();
    for (format, base, args) in [
        ("zip", real_zip(), vec![]),
        ("legacy", real_legacy(), vec!["--heads", "4"]),
    ] {
        let len = base.len();
        let mut cuts: Vec<usize> = (1..100).map(|i| i * len / 100).collect();
        cuts.extend([
            1,
            2,
            4,
            13,
            14,
            15,
            64,
            len - 1,
            len - 2,
            len - 22,
            len - 23,
            len - 100,
        ]);
        for cut in cuts {
            out.push(
                Case::refused(
                    format!("{format} cut at byte {cut}"),
                    base[..cut].to_vec(),
                    &[],
                )
                .args(&args),
            );
        }
    }
    out
}

pub fn empty_and_random() -> Vec<Case> {
    let mut out = vec![Case::refused(
        "an empty file",
        Vec::new(),
        &["file is empty"],
    )];
    for n in [1, 7, 100, 4096, 1 << 20] {
        out.push(Case::refused(
            format!("{n} random bytes"),
            testkit::noise(n as u64, n),
            &["not a torch checkpoint"],
        ));
        // Behind each format's signature, so the zip and pickle readers see the noise.
        for (format, magic) in [
            ("zip", &b"PK\x03\x04"[..]),
            ("legacy", cpm_torch::LEGACY_PREFIX),
        ] {
            let mut b = magic.to_vec();
            b.extend(testkit::noise(n as u64 + 1, n));
            out.push(Case::refused(
                format!("{format} magic and {n} random bytes"),
                b,
                &[],
            ));
        }
    }
    out
}
