//! Sizes that multiply (issue 8.4): small files whose dimensions would make the forward pass
//! allocate far more than the files hold.

use std::path::Path;

use serde_json::json;

use super::*;

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
        &super::npy::npy("<i8", &format!("({batch}, {seq})"), &ids),
    );
    let logits = vec![0u8; batch * seq * vocab * 4];
    write(
        &dir.join("logits.npy"),
        &super::npy::npy("<f4", &format!("({batch}, {seq}, {vocab})"), &logits),
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
