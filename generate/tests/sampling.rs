//! Sampling's probabilities against transformers' numbers: with top-k 2 only the two most likely
//! first tokens remain, so after temperature T the first one must be drawn with probability
//! sigmoid(gap / T), where gap is transformers' recorded top-2 logit gap at that step.

use crate::common;

use common::*;
use cpm_generate::{generate, Sampling, Settings, Strategy};
use cpm_verify::model::Model;
use cpm_verify::Device;

#[test]
fn top_k_2_draws_the_top_token_with_the_probability_transformers_gap_implies() {
    let m = "vocab30000";
    let r = &records(m)[2];
    let model = Model::open(&model_dir(m)).unwrap();
    let t = 2.0f32;
    let n = 2000;
    let mut counts = std::collections::BTreeMap::new();
    for seed in 0..n {
        let s = Settings {
            max_new_tokens: 1,
            min_new_tokens: 1,
            strategy: Strategy::Sample(Sampling {
                temperature: t,
                top_k: Some(2),
                top_p: None,
                seed,
            }),
            eos: vec![7],
            device: Device::Cpu,
            threads: 1,
        };
        let out = generate(&model, &r.prompt_ids, &s, &mut |_| Ok(true)).unwrap();
        *counts.entry(out.ids[0]).or_insert(0u64) += 1;
    }
    assert_eq!(counts.len(), 2, "top-k 2 drew {counts:?}");
    let top = counts.get(&r.greedy[0]).copied().unwrap_or(0) as f64 / n as f64;
    let p = 1.0 / (1.0 + (-r.gaps[0] / f64::from(t)).exp());
    let sd = (p * (1.0 - p) / n as f64).sqrt();
    assert!(
        (top - p).abs() < 4.0 * sd,
        "top token drawn {top}, expected {p} +- {sd}"
    );
}
