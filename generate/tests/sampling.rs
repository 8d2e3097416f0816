//! Sampling's probabilities against transformers' numbers: with top-k 2 only the two most likely
//! first tokens remain, so after temperature T the first one must be drawn with probability
//! sigmoid(gap / T), where gap is transformers' recorded top-2 logit gap at that step.

use crate::common;

use common::*;
use cpm_generate::{generate, Sampling, Settings, Strategy};
use cpm_gpt2::model::Model;
use cpm_gpt2::Device;

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

/// Extreme temperatures, top-k and top-p over logits with huge ranges, ties, -inf and +inf: the
/// distribution a draw uses is never NaN (finite, >= 0, summing to 1), and the drawn token
/// always has probability. Before, `--temperature 1e-45` divided logits to inf, the softmax was
/// NaN, and the draw fell back to the lowest id with a positive logit.
#[test]
fn no_temperature_top_k_or_top_p_lets_a_nan_reach_the_draw() {
    use cpm_generate::sample::Sampler;
    let ninf = f32::NEG_INFINITY;
    let mut ramp: Vec<f32> = (0..1000).map(|i| (i as f32 - 500.0) * 7.0e34).collect();
    ramp[17] = ninf;
    let logits: Vec<Vec<f32>> = vec![
        vec![1.0, 2.0, 3.0],
        vec![-3.0e38, 0.0, 3.0e38, ninf],
        vec![f32::MAX, f32::MAX, -f32::MAX],
        vec![1e-45, -1e-45, 0.0, 5.0],
        vec![ninf, 2.0, ninf],
        vec![ninf, f32::INFINITY, 1.0, f32::INFINITY],
        vec![1.0, f32::NAN, 0.5],
        ramp,
    ];
    let temps = [
        1e-45f32,
        1e-38,
        1e-20,
        1e-6,
        0.5,
        1.0,
        2.0,
        1e6,
        1e20,
        1e30,
        f32::MAX,
    ];
    for l in &logits {
        for &temperature in &temps {
            for top_k in [None, Some(1), Some(2), Some(l.len())] {
                for top_p in [None, Some(1e-30f32), Some(0.5), Some(1.0)] {
                    let cfg = Sampling {
                        temperature,
                        top_k,
                        top_p,
                        seed: 3,
                    };
                    let what = format!("{l:?} {cfg:?}");
                    let mut s = Sampler::new(cfg);
                    let d = s.distribution(l);
                    assert!(
                        d.iter().all(|p| p.is_finite() && *p >= 0.0),
                        "{what}: {d:?}"
                    );
                    let sum: f64 = d.iter().sum();
                    assert!((sum - 1.0).abs() < 1e-9, "{what}: sums to {sum}");
                    for _ in 0..20 {
                        let i = s.next(l) as usize;
                        assert!(d[i] > 0.0, "{what}: drew {i} of probability 0: {d:?}");
                    }
                }
            }
        }
    }
}

/// The smallest positive temperature is greedy in effect, on the real model too: the same ids
/// as --greedy (before: garbage, exit 0).
#[test]
fn the_smallest_temperature_draws_what_greedy_chooses() {
    use cpm_generate::sample::Sampler;
    let cfg = |temperature| Sampling {
        temperature,
        top_k: None,
        top_p: None,
        seed: 1,
    };
    assert_eq!(Sampler::new(cfg(1e-45)).next(&[1.0, 2.0, 3.0, -1.0]), 2);
    assert_eq!(Sampler::new(cfg(1e-45)).next(&[-5.0, -2.0, -3.0]), 1);
    let m = "small";
    let r = &records(m)[0];
    let greedy = new_ids(m, &r.prompt_ids, &["--max-new-tokens", "8"]);
    for t in ["1e-45", "1e-30"] {
        let cold = new_ids(
            m,
            &r.prompt_ids,
            &["--max-new-tokens", "8", "--temperature", t, "--seed", "5"],
        );
        assert_eq!(cold, greedy, "--temperature {t}");
    }
}
