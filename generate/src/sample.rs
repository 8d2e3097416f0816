//! Choosing the next token from logits: greedy, and sampling in transformers' order
//! (temperature, then top-k, then top-p, then a draw from the softmax).

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Sampling settings. Ours default to temperature 1.0, no top-k, no top-p; transformers'
/// sampling defaults are temperature 1.0, top-k 50, top-p 1.0; CPM-Generate's are temperature
/// 0.9, top-k 0 and top-p 0 (both off: plain sampling).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sampling {
    /// Logits are divided by this (> 0 and finite; any such value is usable, see
    /// [`Sampler::distribution`]).
    pub temperature: f32,
    /// Keep the k most likely tokens (None or 0: all).
    pub top_k: Option<usize>,
    /// Keep the smallest set of most likely tokens whose probability reaches p (None or 1: all).
    pub top_p: Option<f32>,
    /// Seeds a ChaCha8 generator (`ChaCha8Rng::seed_from_u64`): the same seed gives the same
    /// choices on every platform.
    pub seed: u64,
}

/// The index of the largest logit; the first one on ties (as torch.argmax). NaN is never chosen
/// unless every logit is NaN.
pub fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0usize;
    for (i, &v) in logits.iter().enumerate() {
        if v > logits[best] || logits[best].is_nan() && !v.is_nan() {
            best = i;
        }
    }
    best as u32
}

/// A seeded sampler.
pub struct Sampler {
    cfg: Sampling,
    rng: ChaCha8Rng,
}

impl Sampler {
    /// A sampler whose stream is fixed by `cfg.seed`.
    pub fn new(cfg: Sampling) -> Self {
        Sampler {
            cfg,
            rng: ChaCha8Rng::seed_from_u64(cfg.seed),
        }
    }

    /// The probabilities the next draw uses: temperature, then top-k, then top-p, then the
    /// softmax. Every entry is finite and >= 0; they sum to 1 (or are all 0 when no logit is
    /// above -inf, and the draw then takes the argmax).
    ///
    /// The temperature divides in f64: a finite f32 logit over any positive f32 temperature is
    /// at most ~2.4e83, far inside f64, so nothing overflows to inf and no inf - inf makes a NaN.
    /// A tiny temperature therefore behaves as its limit, greedy (the mass on the largest logit,
    /// shared among exact ties), and a huge one as a uniform draw over what top-k/top-p keep.
    /// A NaN logit (a broken model) is never drawn; +inf logits share all the mass.
    pub fn distribution(&self, logits: &[f32]) -> Vec<f64> {
        let t = f64::from(self.cfg.temperature);
        let mut scaled: Vec<f64> = logits
            .iter()
            .map(|&v| match v {
                v if v.is_nan() => f64::NEG_INFINITY,
                v if v.is_infinite() => f64::from(v),
                v => f64::from(v) / t,
            })
            .collect();
        if let Some(k) = self.cfg.top_k.filter(|&k| k > 0 && k < scaled.len()) {
            top_k(&mut scaled, k);
        }
        if let Some(p) = self.cfg.top_p.filter(|&p| p < 1.0) {
            top_p(&mut scaled, p);
        }
        softmax(&scaled)
    }

    /// Draws the next token from `logits`.
    pub fn next(&mut self, logits: &[f32]) -> u32 {
        let probs = self.distribution(logits);
        let u: f64 = self.rng.random();
        let mut acc = 0.0;
        let mut last = None;
        for (i, &p) in probs.iter().enumerate() {
            if p > 0.0 {
                acc += p;
                last = Some(i as u32);
                if u < acc {
                    return i as u32;
                }
            }
        }
        // Rounding left the sum just under u: the last token with any probability; none has
        // any (every logit -inf or NaN): the argmax, as greedy would choose.
        last.unwrap_or_else(|| argmax(logits))
    }
}

/// TopKLogitsWarper: every logit below the k-th largest becomes -inf (ties with it stay).
fn top_k(logits: &mut [f64], k: usize) {
    let mut sorted: Vec<f64> = logits.to_vec();
    sorted.sort_unstable_by(|a, b| b.total_cmp(a));
    let kth = sorted[k - 1];
    for v in logits.iter_mut() {
        if *v < kth {
            *v = f64::NEG_INFINITY;
        }
    }
}

/// TopPLogitsWarper: sort ascending, remove the tokens whose cumulative probability is at most
/// 1 - p, always keeping the most likely one.
fn top_p(logits: &mut [f64], p: f32) {
    let probs = softmax(logits);
    let mut order: Vec<usize> = (0..logits.len()).collect();
    order.sort_by(|&a, &b| logits[a].total_cmp(&logits[b]));
    let mut cum = 0f64;
    let last = order.len().saturating_sub(1);
    for (rank, &i) in order.iter().enumerate() {
        cum += probs[i];
        if cum <= 1.0 - f64::from(p) && rank < last {
            logits[i] = f64::NEG_INFINITY;
        }
    }
}

/// Softmax of logits that hold no NaN: all -inf gives all zero; +inf entries share the mass.
fn softmax(logits: &[f64]) -> Vec<f64> {
    let m = logits.iter().fold(f64::NEG_INFINITY, |m, &v| m.max(v));
    if m == f64::NEG_INFINITY {
        return vec![0.0; logits.len()];
    }
    let mut e: Vec<f64> = if m == f64::INFINITY {
        logits
            .iter()
            .map(|&v| if v == m { 1.0 } else { 0.0 })
            .collect()
    } else {
        // v - m <= 0 and finite or -inf: each term in [0, 1], the largest exactly 1.
        logits.iter().map(|&v| (v - m).exp()).collect()
    };
    let s: f64 = e.iter().sum();
    for v in e.iter_mut() {
        *v /= s;
    }
    e
}

/// log_softmax in f32 with an f64 sum, as the beam scores need.
pub fn log_softmax(logits: &[f32]) -> Vec<f32> {
    let m = logits.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
    let s: f64 = logits.iter().map(|&v| f64::from(v - m).exp()).sum();
    let ls = s.ln() as f32;
    logits.iter().map(|&v| v - m - ls).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_k_then_top_p_keep_what_transformers_keeps() {
        // probs of [2, 1, 0, -1] ~ [0.644, 0.237, 0.087, 0.032]
        let mut l = vec![2.0, 1.0, 0.0, -1.0];
        top_k(&mut l, 3);
        assert_eq!(l[3], f64::NEG_INFINITY);
        let mut l = vec![2.0, 1.0, 0.0, -1.0];
        top_p(&mut l, 0.8); // 0.644 < 0.8: the second is needed too
        assert!(l[0].is_finite() && l[1].is_finite() && l[2] == f64::NEG_INFINITY);
        let mut l = vec![2.0, 1.0, 0.0, -1.0];
        top_p(&mut l, 0.1); // the top token is always kept
        assert!(l[0].is_finite() && l[1] == f64::NEG_INFINITY);
    }

    #[test]
    fn argmax_takes_the_first_of_equal_maxima() {
        assert_eq!(argmax(&[1.0, 3.0, 3.0, f32::NAN]), 1);
    }
}
