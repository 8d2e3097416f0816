//! The KV-cached pass (generation's path through the one forward implementation) against the
//! logits transformers recorded for the tiny fixtures: prefill part of each sequence, then one
//! token at a time, and the logits at every position must match the reference as the uncached
//! verification does. Also protects `KvCache::reorder` (beam search) and the `Last` selection.

use std::path::{Path, PathBuf};

use cpm_gpt2::forward::{run_cached, KvCache, Logits};
use cpm_gpt2::model::Model;
use cpm_verify::fixture::Fixture;

fn tiny() -> PathBuf {
    testkit::fixtures().join("tiny")
}

/// The worst |ours - ref| - tol over one position's logits.
fn excess(ours: &[f32], reference: &[f32], tol: f32) -> f32 {
    ours.iter()
        .zip(reference)
        .map(|(a, b)| (a - b).abs() - tol * (1.0 + b.abs()))
        .fold(f32::MIN, f32::max)
}

/// Runs each batch row as `prefill` tokens then single steps, rows in the order `perm` (a
/// cache reorder after the prefill), and checks every position's logits.
fn check_stepwise(model_dir: &Path, fixture_dir: &Path, prefill: usize, threads: usize) {
    let model = Model::open(model_dir).unwrap();
    let fx = Fixture::open_for(fixture_dir, &model.config).unwrap();
    let (b, s, v) = (fx.batch, fx.seq, fx.vocab);
    let prefill = prefill.min(s - 1);
    let row = |r: usize, from: usize, to: usize| fx.input_ids[r * s + from..r * s + to].to_vec();
    let want = |r: usize, p: usize| &fx.logits[(r * s + p) * v..(r * s + p + 1) * v];
    let mut cache = KvCache::new(&model, b, s).unwrap();
    let ids: Vec<u32> = (0..b).flat_map(|r| row(r, 0, prefill)).collect();
    let all = run_cached(&model, &ids, &mut cache, Logits::All, threads).unwrap();
    for r in 0..b {
        for p in 0..prefill {
            let got = &all[(r * prefill + p) * v..][..v];
            assert!(excess(got, want(r, p), 2e-4) <= 0.0, "row {r} pos {p}");
        }
    }
    // Reverse the rows: row r now continues the old row b - 1 - r.
    let perm: Vec<usize> = (0..b).rev().collect();
    cache.reorder(&perm).unwrap();
    for p in prefill..s {
        let ids: Vec<u32> = perm.iter().flat_map(|&r| row(r, p, p + 1)).collect();
        let last = run_cached(&model, &ids, &mut cache, Logits::Last, threads).unwrap();
        for (i, &r) in perm.iter().enumerate() {
            let e = excess(&last[i * v..(i + 1) * v], want(r, p), 2e-4);
            assert!(e <= 0.0, "row {r} pos {p}: {e}");
        }
    }
    assert_eq!(cache.len(), s);
}

#[test]
fn cached_steps_match_transformers_on_the_fp16_tiny_model() {
    let t = tiny();
    for (prefill, threads) in [(1, 1), (5, 2), (100, 3)] {
        check_stepwise(&t.join("hf"), &t.join("reference"), prefill, threads);
    }
}

#[test]
fn cached_steps_match_transformers_on_the_variants() {
    // bf16 weights with ReLU, and an untied head with exact GELU.
    for name in ["relu-bf16", "gelu-untied"] {
        let d = tiny().join("variants").join(name);
        check_stepwise(&d, &d.join("reference"), 3, 2);
    }
}

#[test]
fn a_cache_grows_into_beams_and_refuses_overflow() {
    let model = Model::open(&tiny().join("hf")).unwrap();
    let mut cache = KvCache::new(&model, 1, 4).unwrap();
    run_cached(&model, &[1, 2, 3], &mut cache, Logits::Last, 1).unwrap();
    cache.reorder(&[0, 0, 0]).unwrap();
    assert_eq!(cache.rows(), 3);
    let l = run_cached(&model, &[4, 5, 6], &mut cache, Logits::Last, 1).unwrap();
    assert_eq!(l.len(), 3 * model.config.vocab_size);
    // Full: a fifth position does not fit, and more than n_positions cannot be allocated.
    assert!(run_cached(&model, &[1, 1, 1], &mut cache, Logits::Last, 1).is_err());
    assert!(KvCache::new(&model, 1, model.config.n_positions + 1).is_err());
    assert!(cache.reorder(&[3]).is_err());
}
