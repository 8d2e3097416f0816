//! Tensors that do not fit their storage, or that the mapping cannot merge.

use super::*;

/// `name` replaced by `t`, refused with every needle (and `--heads 1`).
pub fn tensor_case(what: &str, name: &str, t: T, needles: &[&str]) -> Case {
    Case::refused(what, Ckpt::with_tensor(name, t).bytes(), needles).args(&["--heads", "1"])
}

/// Refused while planning, with a message naming the tensor.
pub fn tensor_refused(what: &str, name: &str, t: T, needles: &[&str]) -> Case {
    let mut all = vec![name];
    all.extend_from_slice(needles);
    tensor_case(what, name, t, &all)
}

/// Refused while unpickling, with a message naming the pickle's byte offset.
pub fn rebuild_refused(what: &str, t: T, needles: &[&str]) -> Case {
    let mut all = vec!["pickle at byte"];
    all.extend_from_slice(needles);
    tensor_case(what, "word_embeddings.weight", t, &all)
}

/// The embedding, as a valid view of storage `0`, changed by `f`.
pub fn embedding(f: impl FnOnce(&mut T)) -> T {
    let mut t = T::half("0", Ckpt::numel(), 0, &[V, H]);
    f(&mut t);
    t
}

pub fn tensors_that_do_not_fit() -> Vec<Case> {
    let n = Ckpt::numel();
    let mut short = Ckpt::new();
    short.storage_bytes = Some(100);
    vec![
        tensor_refused(
            "a view past the end of its storage",
            "transformer.final_layernorm.bias",
            T::half("0", n, n - 2, &[H]),
            &["needs bytes", "which holds"],
        ),
        Case::refused(
            "a storage entry shorter than its persistent id",
            short.bytes(),
            &["storage `0` should hold", "its entry has 100 bytes"],
        ),
        rebuild_refused(
            "a negative offset",
            embedding(|t| t.offset = -1),
            &["negative storage offset -1"],
        ),
        rebuild_refused(
            "a negative size",
            embedding(|t| t.size = vec![-V, H]),
            &["size has a negative entry -8"],
        ),
        rebuild_refused(
            "a negative stride",
            embedding(|t| t.stride = vec![H, -1]),
            &["stride has a negative entry -1"],
        ),
        tensor_refused(
            "a size whose product overflows",
            "word_embeddings.weight",
            embedding(|t| {
                t.size = vec![1 << 62, 8];
                t.stride = vec![8, 1];
            }),
            &["overflows"],
        ),
        tensor_refused(
            "a stride that overflows",
            "word_embeddings.weight",
            embedding(|t| t.stride = vec![1 << 62, 1]),
            &["overflows"],
        ),
        tensor_refused(
            "an offset that overflows",
            "word_embeddings.weight",
            embedding(|t| t.offset = i64::MAX),
            &["overflows"],
        ),
        // Stride 0 (torch's expand): 2^40 elements described by one.
        tensor_refused(
            "an expanded tensor",
            "word_embeddings.weight",
            embedding(|t| {
                t.size = vec![1 << 40, H];
                t.stride = vec![0, 1];
            }),
            &["overlapping (expanded)"],
        ),
        rebuild_refused(
            "100 dimensions",
            embedding(|t| {
                t.size = vec![1; 100];
                t.stride = vec![1; 100];
            }),
            &["100 dimensions"],
        ),
        rebuild_refused(
            "an unknown storage type",
            embedding(|t| t.class = "EvilStorage"),
            &["unknown storage type `EvilStorage`"],
        ),
        tensor_case(
            "a storage the archive lacks",
            "word_embeddings.weight",
            embedding(|t| t.key = "9"),
            &["storage `9`", "no entry data/9"],
        ),
        // The plan must not size anything by a layer number (issue 8: layers.100000000): the
        // layers must run 0..L, and the first missing one is named.
        Case {
            expect: Expect::Refused {
                file: FILE.into(),
                all: vec![
                    "transformer.layers.0.input_layernorm.weight".into(),
                    "layer 0 has no tensors".into(),
                    "layers up to 100000000".into(),
                ],
                any: Vec::new(),
            },
            ..Case::converts("a tensor of layer 100000000", {
                let mut extra = Pk::default();
                extra.str("module").raw(b"}").mark();
                let mut off = 0;
                for (name, shape) in cpm_tensors() {
                    extra
                        .str(&name.replace("layers.0.", "layers.100000000."))
                        .tensor(&T::half("0", n, off, &shape));
                    off += shape.iter().product::<i64>();
                }
                extra.raw(b"u");
                let mut c = Ckpt::with_extra(&extra.0);
                c.replace_module = true;
                c.bytes()
            })
            .args(&["--heads", "1"])
        },
    ]
}

pub fn unmergeable_shapes() -> Vec<Case> {
    let n = Ckpt::numel();
    let l = "transformer.layers.0.";
    // (tensor, shape, storage class, the refusal it must produce). `None`: tolerated (one
    // float32 tensor among float16 ones is kept as float32 under `--dtype keep`); it must still
    // end cleanly.
    let cases: Vec<(String, Vec<i64>, &'static str, Option<&str>)> = vec![
        (
            "word_embeddings.weight".into(),
            vec![2, V, H / 2],
            "HalfStorage",
            Some("expected 1 or 2 dimensions"),
        ),
        (
            format!("{l}attention.dense.weight"),
            vec![H * H],
            "HalfStorage",
            Some("needs 2 dimensions"),
        ),
        (
            format!("{l}attention.query_key_value.weight"),
            vec![3 * H * H],
            "HalfStorage",
            Some("needs 2 dimensions"),
        ),
        (
            format!("{l}attention.query_key_value.weight"),
            vec![H, 3 * H],
            "HalfStorage",
            Some("expected a multiple of 3"),
        ),
        (
            format!("{l}attention.query_key_value.bias"),
            vec![H],
            "HalfStorage",
            Some("expected a multiple of 3"),
        ),
        (
            "word_embeddings.weight".into(),
            vec![V, H],
            "LongStorage",
            Some("is int64, expected a floating-point weight"),
        ),
        (
            "word_embeddings.weight".into(),
            vec![V, H],
            "BoolStorage",
            Some("is bool, expected a floating-point weight"),
        ),
        (
            "word_embeddings.weight".into(),
            vec![V * H],
            "HalfStorage",
            Some("expected [vocab, hidden]"),
        ),
        (
            "word_embeddings.weight".into(),
            vec![0, H],
            "HalfStorage",
            Some("expected [vocab, hidden]"),
        ),
        (
            format!("{l}input_layernorm.weight"),
            vec![2, 2],
            "HalfStorage",
            Some("expected [hidden]"),
        ),
        (
            format!("{l}mlp.dense_h_to_4h.weight"),
            vec![H, 4 * H],
            "HalfStorage",
            Some("expected [hidden,"),
        ),
        (
            "transformer.final_layernorm.bias".into(),
            vec![H],
            "FloatStorage",
            None,
        ),
    ];
    let mut out = Vec::new();
    for (name, shape, class, refusal) in cases {
        let mut t = T::half("0", n, 0, &shape);
        t.class = class;
        let c = if class == "HalfStorage" {
            Ckpt::with_tensor(&name, t)
        } else {
            // Its own storage of the right size, so the file itself is consistent.
            t.key = "1";
            t.numel = shape.iter().product();
            let mut c = Ckpt::with_tensor(&name, t);
            c.extra_storage = Some(vec![0u8; shape.iter().product::<i64>() as usize * 8]);
            c
        };
        let what = format!("{name} as {class} {shape:?}");
        let case = match refusal {
            Some(needle) => Case::refused(what, c.bytes(), &[&name, needle]),
            None => Case {
                expect: Expect::Ends,
                ..Case::converts(what, c.bytes())
            },
        };
        out.push(case.args(&["--heads", "1"]));
    }
    out
}
