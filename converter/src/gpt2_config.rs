//! `config.json` for transformers' GPT2Config, from the plan's sizes and the mapping's defaults.

use serde_json::{json, Map, Value};

use crate::mapping::Mapping;
use crate::plan::Plan;

/// The config as a JSON object; keys come out sorted, so the file is byte-stable.
pub fn config(plan: &Plan, mapping: &Mapping, torch_dtype: &str) -> Value {
    let special = mapping
        .config
        .vocabularies
        .iter()
        .find(|v| v.size == plan.vocab);
    // Never point at an id outside the vocabulary, whatever the mapping says.
    let inside = |id: Option<u64>| id.filter(|&i| i < plan.vocab);
    let bos = special.and_then(|v| inside(v.bos_token_id));
    let eos = special.and_then(|v| inside(v.eos_token_id));
    let mut c = Map::new();
    for (k, v) in [
        ("model_type", json!("gpt2")),
        ("architectures", json!(["GPT2LMHeadModel"])),
        (
            "activation_function",
            json!(mapping.config.activation_function),
        ),
        (
            "layer_norm_epsilon",
            json!(mapping.config.layer_norm_epsilon),
        ),
        ("n_embd", json!(plan.hidden)),
        ("n_layer", json!(plan.layers)),
        ("n_head", json!(plan.heads.count)),
        ("n_positions", json!(plan.positions)),
        ("n_ctx", json!(plan.positions)),
        ("vocab_size", json!(plan.vocab)),
        ("tie_word_embeddings", json!(true)),
        ("torch_dtype", json!(torch_dtype)),
        ("bos_token_id", json!(bos)),
        ("eos_token_id", json!(eos)),
        ("scale_attn_weights", json!(true)),
        ("use_cache", json!(true)),
    ] {
        c.insert(k.to_string(), v);
    }
    if plan.inner != 4 * plan.hidden {
        c.insert("n_inner".into(), json!(plan.inner));
    }
    Value::Object(c)
}
