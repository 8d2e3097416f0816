//! CPM-Generate's layout (DeepSpeed's model states, Megatron version-0 names):
//! `latest_checkpointed_iteration.txt` and `ITERATION/mp_rank_XX_model_states.pt`, each a dict
//! with `module` (the rank's weights, flat) and the fields DeepSpeed's loader reads
//! unconditionally. The split rules are cpm-lm.toml's.

use super::pickler::Py;
use super::{Grid, Iteration, RankFormat, Slot};

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

    fn top(&self, weights: Py, grid: Grid, it: &Iteration) -> Py {
        let steps = it.number.unwrap_or(0) as i64;
        Py::Dict(vec![
            ("module".into(), weights),
            ("mp_world_size".into(), Py::Int(grid.tp as i64)),
            ("iteration".into(), Py::Int(steps)),
            ("global_steps".into(), Py::Int(steps)),
            ("skipped_steps".into(), Py::Int(0)),
            ("csr_tensor_module_names".into(), Py::EmptySet),
        ])
    }
}
