//! safetensors files (read through the torch reader's API) and Hugging Face shard indexes.

use super::*;

/// The file name safetensors cases use; the reader decides by content, not by name.
pub const ST_FILE: &str = "hostile.safetensors";

/// `len` as the 8-byte little-endian header length, then `header`, then `data`.
pub fn st_file(len: u64, header: &[u8], data: &[u8]) -> Vec<u8> {
    let mut b = len.to_le_bytes().to_vec();
    b.extend_from_slice(header);
    b.extend_from_slice(data);
    b
}

/// A well-formed file: `header` with its true length, then `data`.
pub fn st(header: &str, data: &[u8]) -> Vec<u8> {
    st_file(header.len() as u64, header.as_bytes(), data)
}

/// One header entry.
pub fn st_entry(name: &str, dtype: &str, shape: &[u64], start: u64, end: u64) -> String {
    format!(
        "{}:{{\"dtype\":\"{dtype}\",\"shape\":{shape:?},\"data_offsets\":[{start},{end}]}}",
        serde_json::Value::from(name)
    )
}

/// The builder's tensors (every one the CPM-LM mapping needs) as one float16 safetensors file,
/// in the builder's order.
pub fn st_ckpt() -> Vec<u8> {
    let mut entries = Vec::new();
    let mut off = 0u64;
    for (name, shape) in cpm_tensors() {
        let shape: Vec<u64> = shape.iter().map(|&d| d as u64).collect();
        let n = shape.iter().product::<u64>() * 2;
        entries.push(st_entry(&name, "F16", &shape, off, off + n));
        off += n;
    }
    let data: Vec<u8> = (0..off / 2)
        .flat_map(|i| (0x3c00u16 + (i % 1024) as u16).to_le_bytes())
        .collect();
    st(&format!("{{{}}}", entries.join(",")), &data)
}

pub fn st_refused(name: impl Into<String>, bytes: Vec<u8>, needles: &[&str]) -> Case {
    let mut c = Case::refused(name, bytes, needles).args(&["--heads", "1"]);
    c.files[0].0 = ST_FILE.into();
    if let Expect::Refused { file, .. } = &mut c.expect {
        *file = ST_FILE.into();
    }
    c
}

/// The control: the builder's tensors as safetensors convert, so each refusal below is caused by
/// its one change.
pub fn safetensors_builder() -> Vec<Case> {
    let mut c = st_refused("safetensors builder", st_ckpt(), &[]);
    c.expect = Expect::Converts;
    vec![c]
}

pub fn safetensors_headers() -> Vec<Case> {
    let one = |e: &str| format!("{{{e}}}");
    let f32x2 = st_entry("a", "F32", &[2], 0, 8);
    let bad = "invalid safetensors header";
    vec![
        st_refused(
            "safetensors: header cut short",
            st_file(100, &one(&f32x2).as_bytes()[..20], b""),
            &["safetensors header claims 100 bytes but the file has only 28"],
        ),
        st_refused(
            "safetensors: header length 2^60",
            st_file(1 << 60, b"{}", b""),
            &[
                "safetensors header claims 1152921504606846976 bytes",
                "at most 16777216",
            ],
        ),
        st_refused(
            "safetensors: header length u64::MAX",
            st_file(u64::MAX, b"{}", b""),
            &["claims 18446744073709551615 bytes"],
        ),
        st_refused(
            "safetensors: header one byte over the cap",
            st_file((16 << 20) + 1, b"{}", b""),
            &["claims 16777217 bytes"],
        ),
        // Not `{` at byte 8: not recognised as safetensors at all.
        st_refused(
            "safetensors: JSON array",
            st("[1, 2]", b""),
            &["not a torch checkpoint"],
        ),
        st_refused(
            "safetensors: entry not an object",
            st(r#"{"a": 5}"#, b""),
            &[bad],
        ),
        st_refused(
            "safetensors: JSON cut",
            st(r#"{"a": {"dtype": "F32""#, b""),
            &[bad],
        ),
        st_refused(
            "safetensors: not UTF-8",
            st_file(4, b"{\xff\xfe}", b""),
            &[bad],
        ),
        st_refused(
            "safetensors: JSON nested 100,000 deep",
            // In a field the reader skips, where nothing typed stops the descent early.
            st(&format!("{{\"a\":{{\"x\":{}", "[".repeat(100_000)), b""),
            &[bad],
        ),
        st_refused(
            "safetensors: overlapping offsets",
            st(
                &format!("{{{f32x2},{}}}", st_entry("b", "F32", &[2], 4, 12)),
                &[0; 12],
            ),
            &[bad, "offset"],
        ),
        st_refused(
            "safetensors: offsets past the end of the file",
            st(&one(&st_entry("a", "F32", &[250], 0, 1000)), &[0; 8]),
            &[bad],
        ),
        st_refused(
            "safetensors: data after the last tensor",
            st(&one(&f32x2), &[0; 12]),
            &[bad, "not fully covered"],
        ),
        st_refused(
            "safetensors: offsets that disagree with the shape",
            st(&one(&st_entry("a", "F32", &[3], 0, 8)), &[0; 8]),
            &[bad],
        ),
        st_refused(
            "safetensors: an unknown dtype",
            st(&one(&st_entry("a", "X99", &[2], 0, 8)), &[0; 8]),
            &[bad, "X99"],
        ),
        st_refused(
            "safetensors: a dtype the converter does not read",
            st(&one(&st_entry("a", "U32", &[2], 0, 8)), &[0; 8]),
            &["tensor `a`", "has dtype U32"],
        ),
        st_refused(
            "safetensors: the same name twice",
            st(&format!("{{{f32x2},{f32x2}}}"), &[0; 16]),
            &[bad],
        ),
        st_refused(
            "safetensors: a 1 MiB name in an invalid entry",
            st(
                &one(&st_entry(&"k".repeat(1 << 20), "F32", &[2], 4, 12)),
                &[0; 12],
            ),
            &[bad],
        ),
    ]
}

/// Shapes and sizes that would cost memory or overflow.
pub fn safetensors_sizes() -> Vec<Case> {
    let one = |e: &str| format!("{{{e}}}");
    let dims = |n: usize| vec![1u64; n];
    let mut cases = vec![
        st_refused(
            "safetensors: shape overflowing 2^64 elements",
            st(
                &one(&st_entry("a", "F32", &[1 << 32, 1 << 32, 1 << 32], 0, 8)),
                &[0; 8],
            ),
            &["invalid safetensors header", "overflow"],
        ),
        st_refused(
            "safetensors: 65 dimensions",
            st(&one(&st_entry("a", "F32", &dims(65), 0, 4)), &[0; 4]),
            &["more than 64 dimensions"],
        ),
        st_refused(
            "safetensors: a million dimensions",
            st(&one(&st_entry("a", "F32", &dims(1_000_000), 0, 4)), &[0; 4]),
            &["more than 64 dimensions"],
        ),
        // Valid, and empty: the mapping has nothing to take from it.
        st_refused(
            "safetensors: a zero dimension beside two of 2^62",
            st(
                &one(&st_entry("a", "F32", &[0, 1 << 62, 1 << 62], 0, 0)),
                b"",
            ),
            &["tensor `a`"],
        ),
    ];
    // The most tensors a header may hold, each as costly as it can be (the most dimensions, or
    // the longest names the header's cap allows): the parsed header must stay within the heap
    // bound. One more tensor is refused before anything is stored.
    let many = |n: usize, name_len: usize, ndim: usize| {
        let pad = "n".repeat(name_len);
        let e: Vec<String> = (0..n)
            .map(|i| st_entry(&format!("{pad}{i}"), "F32", &vec![0; ndim], 0, 0))
            .collect();
        st(&format!("{{{}}}", e.join(",")), b"")
    };
    let n = 16_384;
    cases.push(st_refused(
        "safetensors: 16,384 empty tensors",
        many(n, 0, 1),
        &["tensor `"],
    ));
    cases.push(st_refused(
        "safetensors: 16,384 empty tensors of 64 dimensions",
        many(n, 0, 64),
        &["tensor `"],
    ));
    cases.push(st_refused(
        "safetensors: 16,384 empty tensors with names filling 16 MiB",
        many(n, 950, 1),
        &["tensor `"],
    ));
    cases.push(st_refused(
        "safetensors: 16,385 tensors",
        many(n + 1, 0, 1),
        &["more than 16384 tensors"],
    ));
    cases
}

/// Hugging Face folders whose shard index is hostile.
pub fn hf_indexes() -> Vec<Case> {
    let index = "model.safetensors.index.json";
    let with_map = |map: &str| format!(r#"{{"metadata": {{}}, "weight_map": {map}}}"#).into_bytes();
    let many: Vec<String> = (0..100_000)
        .map(|i| format!(r#""t{i}": "s{i}.safetensors""#))
        .collect();
    vec![
        Case::dir_refused(
            "index naming ../x",
            vec![(index.into(), with_map(r#"{"w": "../x.safetensors"}"#))],
            index,
            &["not a plain file name"],
        ),
        Case::dir_refused(
            "index naming an absolute path",
            vec![(index.into(), with_map(r#"{"w": "/etc/passwd"}"#))],
            index,
            &["not a plain file name"],
        ),
        Case::dir_refused(
            "index naming 100,000 shards",
            vec![(index.into(), with_map(&format!("{{{}}}", many.join(","))))],
            index,
            &["names more than 16384 shard files"],
        ),
        Case::dir_refused(
            "index naming a missing shard",
            vec![(index.into(), with_map(r#"{"w": "absent.safetensors"}"#))],
            "absent.safetensors",
            &["does not exist"],
        ),
        Case::dir_refused(
            "index that is not JSON",
            vec![(index.into(), b"{\"weight_map\": [".to_vec())],
            index,
            &["is not a shard index"],
        ),
        Case::dir_refused(
            "index nested 100,000 deep",
            vec![(index.into(), with_map(&"[".repeat(100_000)))],
            index,
            &["is not a shard index"],
        ),
    ]
}
