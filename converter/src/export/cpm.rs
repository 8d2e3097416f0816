//! CPM-Generate's layout (DeepSpeed's model states, Megatron version-0 names):
//! `latest_checkpointed_iteration.txt` and `ITERATION/mp_rank_XX_model_states.pt`, each the
//! dict DeepSpeed's `_save_checkpoint` saves (checked in microsoft/DeepSpeed v0.3.0, 4b1df25a,
//! of CPM-Generate's time: `module` (the rank's weights, flat), `optimizer`, `lr_scheduler`,
//! `csr_tensor_module_names`, `skipped_steps`, `global_steps`, `global_samples`,
//! `dp_world_size`, `mp_world_size`, every one of which but `global_samples` its
//! `_load_checkpoint` reads unconditionally), then the client state, which DeepSpeed hands back
//! untouched: `iteration`, as CPM-Generate's `save_ds_checkpoint` passes it (utils.py), and
//! `args`, an `argparse.Namespace` in the names of CPM-Generate's arguments.py, which says what
//! the shapes cannot (the head count) and which this converter reads back. CPM-Generate's
//! `load_checkpoint_model` reads `module` alone. The split rules are cpm-lm.toml's.

use super::pickler::Py;
use super::{Described, Grid, Iteration, RankFormat, Slot};
use crate::error::{Error, Result};

pub struct Cpm;

impl RankFormat for Cpm {
    fn name(&self) -> &'static str {
        "cpm"
    }

    fn mapping_name(&self) -> &'static str {
        "cpm-lm"
    }

    fn qkv_version(&self) -> Option<f64> {
        None
    }

    fn max_stages(&self) -> usize {
        1
    }

    fn folder(&self, it: &Iteration) -> String {
        match it.number {
            Some(n) => n.to_string(),
            None => "release".into(),
        }
    }

    fn file(&self, slot: Slot, _grid: Grid) -> String {
        format!("mp_rank_{:02}_model_states.pt", slot.tp)
    }

    fn nest(&self, name: &str) -> Vec<String> {
        vec![name.to_string()]
    }

    fn args(&self, m: &Described, grid: Grid) -> Result<Py> {
        // CPM-Generate's GELU is the tanh one, with no flag for another (mpu/transformer.py).
        if m.activation != "gelu_new" {
            return Err(Error::usage(format!(
                "activation `{}`: CPM-Generate's GPT-2 runs only the tanh GELU (`gelu_new`); \
                 export to --to megatron, or pass --activation gelu_new to change the model",
                m.activation
            )));
        }
        let int = |n: u64| Py::Int(i64::try_from(n).unwrap_or(i64::MAX));
        let fields = [
            ("num_layers", int(m.layers)),
            ("hidden_size", int(m.hidden)),
            ("intermediate_size", int(m.inner)),
            ("num_attention_heads", int(m.heads)),
            ("max_position_embeddings", int(m.positions)),
            ("vocab_size", int(m.vocab)),
            ("model_parallel_size", int(grid.tp as u64)),
        ];
        Ok(Py::Namespace(
            fields.into_iter().map(|(k, v)| (k.into(), v)).collect(),
        ))
    }

    fn top(&self, weights: Py, args: Py, grid: Grid, it: &Iteration) -> Py {
        let steps = it.number.unwrap_or(0) as i64;
        Py::Dict(vec![
            ("module".into(), weights),
            ("optimizer".into(), Py::None),
            ("lr_scheduler".into(), Py::None),
            ("csr_tensor_module_names".into(), Py::EmptySet),
            ("skipped_steps".into(), Py::Int(0)),
            ("global_steps".into(), Py::Int(steps)),
            // Samples seen are not known (steps times a batch size the weights do not keep).
            ("global_samples".into(), Py::Int(0)),
            ("dp_world_size".into(), Py::Int(1)),
            ("mp_world_size".into(), Py::Int(grid.tp as i64)),
            ("iteration".into(), Py::Int(steps)),
            ("args".into(), args),
        ])
    }
}
