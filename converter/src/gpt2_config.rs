//! `config.json` for transformers' GPT2Config, from the plan's sizes and the mapping's defaults.

use cpm_torch::Dtype;
use serde_json::{json, Map, Value};

use crate::mapping::Mapping;
use crate::plan::Plan;

/// Elements written per dtype, most first (ties broken by dtype name, so the choice is stable).
fn dtype_counts(plan: &Plan) -> Vec<(Dtype, u64)> {
    let mut counts: Vec<(Dtype, u64)> = Vec::new();
    for e in &plan.entries {
        match counts.iter_mut().find(|(d, _)| *d == e.dtype) {
            Some((_, n)) => *n += e.numel(),
            None => counts.push((e.dtype, e.numel())),
        }
    }
    counts.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.torch_name().cmp(b.0.torch_name())));
    counts
}

/// The dtype `config.json` records: the one most of the written weights have (transformers
/// loads every weight in it unless told otherwise).
pub(crate) fn model_dtype(plan: &Plan) -> Dtype {
    dtype_counts(plan).first().map_or(Dtype::F16, |c| c.0)
}

/// With more than one dtype among the written tensors, a description of the mix.
pub(crate) fn mixed_dtypes(plan: &Plan) -> Option<String> {
    let counts = dtype_counts(plan);
    (counts.len() > 1).then(|| {
        counts
            .iter()
            .map(|(d, n)| format!("{n} {} elements", d.torch_name()))
            .collect::<Vec<_>>()
            .join(", ")
    })
}

/// The special token ids `config.json` (and, with a tokenizer, `generation_config.json`) record.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct TokenIds {
    /// `bos_token_id`.
    pub bos: Option<u64>,
    /// `eos_token_id`.
    pub eos: Option<u64>,
}

/// The ids the mapping declares for a vocabulary of the plan's size (none for another size).
pub(crate) fn mapping_token_ids(plan: &Plan, mapping: &Mapping) -> TokenIds {
    let special = mapping
        .config
        .vocabularies
        .iter()
        .find(|v| v.size == plan.vocab);
    TokenIds {
        bos: special.and_then(|v| v.bos_token_id),
        eos: special.and_then(|v| v.eos_token_id),
    }
}

/// The config as a JSON object; keys come out sorted, so the file is byte-stable. `ids` come
/// from the mapping ([`mapping_token_ids`]) or from the port's tokenizer.
pub(crate) fn config(plan: &Plan, mapping: &Mapping, dtype: Dtype, ids: TokenIds) -> Value {
    // A mapping that writes the head as its own tensor unties it.
    let tied = plan.entry(&mapping.config.head_target).is_none();
    // Never point at an id outside the vocabulary, whatever the mapping says.
    let inside = |id: Option<u64>| id.filter(|&i| i < plan.vocab);
    let bos = inside(ids.bos);
    let eos = inside(ids.eos);
    let mut c = Map::new();
    for (k, v) in [
        ("model_type", json!("gpt2")),
        ("architectures", json!(["GPT2LMHeadModel"])),
        ("activation_function", json!(plan.activation.name)),
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
        ("tie_word_embeddings", json!(tied)),
        ("torch_dtype", json!(dtype.torch_name())),
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mapping::Split;
    use crate::plan::{Activation, Entry, Heads};

    fn entry(target: &str, dtype: Dtype, shape: Vec<u64>) -> Entry {
        Entry {
            target: target.into(),
            source: target.into(),
            split: Split::Replicated,
            transpose: false,
            source_dtype: dtype,
            dtype,
            rank_shapes: vec![shape.clone()],
            shape,
            zeros: false,
            keep_rows: None,
            heads: 2,
            sources: Vec::new(),
            dims: Vec::new(),
        }
    }

    fn plan(entries: Vec<Entry>) -> Plan {
        Plan {
            variant: "test".into(),
            model_parallel: 1,
            layers: 0,
            hidden: 4,
            vocab: 8,
            positions: 16,
            inner: 16,
            heads: Heads {
                count: 2,
                source: "test".into(),
            },
            activation: Activation {
                name: "gelu_new".into(),
                source: "test".into(),
            },
            pipeline_stages: 1,
            entries,
            checks: Vec::new(),
            tied_copies: Vec::new(),
            notes: Vec::new(),
        }
    }

    #[test]
    fn dtype_is_the_one_most_weights_have_not_the_first_tensors() {
        let p = plan(vec![
            entry("transformer.wpe.weight", Dtype::F32, vec![16, 4]),
            entry("transformer.wte.weight", Dtype::F16, vec![8, 4]),
            entry("transformer.h.0.mlp.c_fc.weight", Dtype::F16, vec![4, 16]),
        ]);
        assert_eq!(model_dtype(&p), Dtype::F16);
        let mixed = mixed_dtypes(&p).expect("two dtypes are a mix");
        assert!(
            mixed.contains("96 float16") && mixed.contains("64 float32"),
            "{mixed}"
        );
        let one = plan(vec![entry("a", Dtype::BF16, vec![3])]);
        assert_eq!((model_dtype(&one), mixed_dtypes(&one)), (Dtype::BF16, None));
    }

    #[test]
    fn a_written_head_unties_the_embeddings() {
        let m = Mapping::cpm_lm().expect("shipped mapping");
        let tied = plan(vec![entry(
            "transformer.wte.weight",
            Dtype::F16,
            vec![8, 4],
        )]);
        assert_eq!(
            config(&tied, &m, Dtype::F16, TokenIds::default())["tie_word_embeddings"],
            json!(true)
        );
        let untied = plan(vec![
            entry("transformer.wte.weight", Dtype::F16, vec![8, 4]),
            entry("lm_head.weight", Dtype::F16, vec![8, 4]),
        ]);
        let c = config(&untied, &m, Dtype::F16, TokenIds::default());
        assert_eq!(c["tie_word_embeddings"], json!(false));
        assert_eq!(c["torch_dtype"], json!("float16"));
    }
}
