//! What the verifier's fuzz targets run on one input, shared with the regression tests
//! (verifier/tests/hostile.rs includes this file). The verifier's readers take paths, so the
//! input is written into `dir` first.
#![allow(dead_code)]

use std::path::Path;

use cpm_gpt2::model::Model;
use cpm_verify::fixture::Fixture;

const IDS: &[u8] = include_bytes!("../seeds/npy/ids-i64");
const LOGITS: &[u8] = include_bytes!("../seeds/npy/logits-f32");

/// The fixture reader: the first byte picks the file under test (even: input_ids.npy, odd:
/// logits.npy); the other file is a valid one, so the cross-checks run too.
pub fn npy(data: &[u8], dir: &Path) {
    let Some((&sel, rest)) = data.split_first() else {
        return;
    };
    let (ids, logits) = if sel & 1 == 0 {
        (rest, &LOGITS[1..])
    } else {
        (&IDS[1..], rest)
    };
    std::fs::write(dir.join("input_ids.npy"), ids).expect("write");
    std::fs::write(dir.join("logits.npy"), logits).expect("write");
    if let Ok(f) = Fixture::open(dir) {
        std::hint::black_box(f.logits.len());
    }
}

const CONFIG: &str = r#"{"model_type": "gpt2", "vocab_size": 8, "n_positions": 4, "n_embd": 4,
"n_layer": 1, "n_head": 1, "activation_function": "gelu_new", "layer_norm_epsilon": 1e-5}"#;

const NAMES: &[&str] = &[
    "wte.weight",
    "wpe.weight",
    "ln_f.weight",
    "ln_f.bias",
    "h.0.ln_1.weight",
    "h.0.attn.c_attn.weight",
    "h.0.attn.c_attn.bias",
    "h.0.mlp.c_fc.weight",
    "h.0.mlp.c_proj.weight",
    "lm_head.weight",
];

/// The model reader (safetensors validation, tensor lookup, widening) on an arbitrary
/// model.safetensors beside a fixed, valid config.json.
pub fn safetensors(data: &[u8], dir: &Path) {
    std::fs::write(dir.join("config.json"), CONFIG).expect("write");
    std::fs::write(dir.join("model.safetensors"), data).expect("write");
    if let Ok(m) = Model::open(dir) {
        for n in NAMES {
            if let Ok(t) = m.tensor_f32(n) {
                std::hint::black_box(t.len());
            }
        }
    }
}
