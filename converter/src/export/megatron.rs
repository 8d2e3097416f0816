//! Megatron-LM's legacy GPT layout at `checkpoint_version` 3.0:
//! `latest_checkpointed_iteration.txt` and `iter_NNNNNNN/mp_rank_TT[_PPP]/model_optim_rng.pt`,
//! each `{args, checkpoint_version, iteration, model: {language_model: {embedding, encoder},
//! word_embeddings_for_head}}`. The split rules are megatron-gpt2.toml's, the query/key/value
//! layout the one its `[variant.qkv]` table gives version 3.0.
//!
//! `args` is the `argparse.Namespace` Megatron-LM's `save_checkpoint` stores, holding what its
//! loader reads, checked in NVIDIA/Megatron-LM core_v0.5.0 (0acc240e, the last release whose
//! legacy GPT model writes this layout) megatron/checkpointing.py and again at main d98e8a64
//! megatron/training/checkpointing.py: `check_checkpoint_args` reads num_layers, hidden_size,
//! num_attention_heads, max_position_embeddings, make_vocab_size_divisible_by,
//! padded_vocab_size, tokenizer_type, tensor_ and pipeline_model_parallel_size without a
//! default (an AttributeError if absent), `load_args_from_checkpoint` (--use-checkpoint-args)
//! the model's shape fields below; `ParallelMLP` picks its GELU from openai_gelu, onnx_safe and
//! bias_gelu_fusion (default on: the tanh kernel), so exact erf needs it off.

use super::pickler::Py;
use super::{Described, Grid, Iteration, RankFormat, Slot};
use crate::error::{Error, Result};

pub struct Megatron;

/// The version written: the last of the legacy model (Megatron-LM 2.x to core_r0.x).
pub const CHECKPOINT_VERSION: f64 = 3.0;

/// Below this prefix names stay flat, as the encoder's `state_dict` keeps them
/// (`layers.0.input_layernorm.weight`); above it, and everywhere else, every dot is a dict.
const FLAT_UNDER: &str = "language_model.encoder.";

impl RankFormat for Megatron {
    fn name(&self) -> &'static str {
        "megatron"
    }

    fn mapping_name(&self) -> &'static str {
        "megatron-gpt2"
    }

    fn qkv_version(&self) -> Option<f64> {
        Some(CHECKPOINT_VERSION)
    }

    fn max_stages(&self) -> usize {
        usize::MAX
    }

    fn folder(&self, it: &Iteration) -> String {
        match it.number {
            Some(n) => format!("iter_{n:07}"),
            None => "release".into(),
        }
    }

    fn file(&self, slot: Slot, grid: Grid) -> String {
        if grid.pp > 1 {
            format!("mp_rank_{:02}_{:03}/model_optim_rng.pt", slot.tp, slot.pp)
        } else {
            format!("mp_rank_{:02}/model_optim_rng.pt", slot.tp)
        }
    }

    fn nest(&self, name: &str) -> Vec<String> {
        match name.strip_prefix(FLAT_UNDER) {
            Some(rest) => vec!["language_model".into(), "encoder".into(), rest.into()],
            None => name.split('.').map(str::to_string).collect(),
        }
    }

    fn args(&self, m: &Described, grid: Grid) -> Result<Py> {
        let openai_gelu = match m.activation.as_str() {
            "gelu_new" => true,
            "gelu" => false,
            other => {
                return Err(Error::usage(format!(
                    "activation `{other}`: Megatron-LM's GPT runs the tanh GELU (`gelu_new`, \
                     Megatron's openai_gelu) or the exact one (`gelu`) only; --activation chooses one"
                )))
            }
        };
        let int = |n: u64| Py::Int(i64::try_from(n).unwrap_or(i64::MAX));
        let text = |s: &str| Py::Str(s.into());
        let fields = [
            ("num_layers", int(m.layers)),
            ("hidden_size", int(m.hidden)),
            ("ffn_hidden_size", int(m.inner)),
            ("num_attention_heads", int(m.heads)),
            ("kv_channels", int(m.hidden / m.heads.max(1))),
            ("group_query_attention", Py::Bool(false)),
            ("num_query_groups", Py::None),
            ("max_position_embeddings", int(m.positions)),
            ("seq_length", int(m.positions)),
            ("position_embedding_type", text("learned_absolute")),
            ("add_position_embedding", Py::Bool(true)),
            ("use_rotary_position_embeddings", Py::Bool(false)),
            ("add_bias_linear", Py::Bool(true)),
            ("add_qkv_bias", Py::Bool(false)),
            ("normalization", text("LayerNorm")),
            ("apply_layernorm_1p", Py::Bool(false)),
            ("openai_gelu", Py::Bool(openai_gelu)),
            ("onnx_safe", Py::None),
            ("bias_gelu_fusion", Py::Bool(false)),
            ("swiglu", Py::Bool(false)),
            ("squared_relu", Py::Bool(false)),
            ("untie_embeddings_and_output_weights", Py::Bool(m.untied)),
            // --vocab-size: the rows that are vocabulary; the rest is padding.
            ("vocab_size", int(m.vocab)),
            ("padded_vocab_size", int(m.padded_vocab)),
            ("make_vocab_size_divisible_by", int(m.pad_multiple)),
            // No Megatron tokenizer is known to match (CPM's is sentencepiece + jieba).
            ("tokenizer_type", Py::None),
            ("tensor_model_parallel_size", int(grid.tp as u64)),
            ("pipeline_model_parallel_size", int(grid.pp as u64)),
            ("virtual_pipeline_model_parallel_size", Py::None),
            ("data_parallel_random_init", Py::Bool(false)),
            ("ckpt_format", text("torch")),
        ];
        Ok(Py::Namespace(
            fields.into_iter().map(|(k, v)| (k.into(), v)).collect(),
        ))
    }

    fn top(&self, weights: Py, args: Py, _grid: Grid, it: &Iteration) -> Py {
        // Megatron-LM's save_checkpoint order: args, checkpoint_version, iteration, model.
        Py::Dict(vec![
            ("args".into(), args),
            ("checkpoint_version".into(), Py::Float(CHECKPOINT_VERSION)),
            ("iteration".into(), Py::Int(it.number.unwrap_or(0) as i64)),
            ("model".into(), weights),
        ])
    }
}
