//! Megatron-LM's legacy GPT layout at `checkpoint_version` 3.0:
//! `latest_checkpointed_iteration.txt` and `iter_NNNNNNN/mp_rank_TT[_PPP]/model_optim_rng.pt`,
//! each `{model: {language_model: {embedding, encoder}, word_embeddings_for_head}, iteration,
//! checkpoint_version}`. The split rules are megatron-gpt2.toml's, the query/key/value layout
//! the one its `[variant.qkv]` table gives version 3.0.

use super::pickler::Py;
use super::{Grid, Iteration, RankFormat, Slot};

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

    fn top(&self, weights: Py, _grid: Grid, it: &Iteration) -> Py {
        Py::Dict(vec![
            ("model".into(), weights),
            ("iteration".into(), Py::Int(it.number.unwrap_or(0) as i64)),
            ("checkpoint_version".into(), Py::Float(CHECKPOINT_VERSION)),
        ])
    }
}
