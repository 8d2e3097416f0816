//! Beam search with transformers' semantics for length_penalty 1.0 and early_stopping false
//! (`GenerationMixin._beam_search`): each step keeps the best 2N continuations of the N running
//! beams by summed log-probability; those among the top N that end in eos (or reach the length
//! limit) become finished hypotheses scored sum / new_length; the best N that do not continue.
//! It stops when no running beam can beat the worst of N finished ones, or at the length limit.

use crate::engine::Engine;
use crate::error::{Error, Result};
use crate::sample::log_softmax;

/// transformers' stand-in for "impossible" (added, not assigned, so order among them remains).
const NEG: f32 = -1.0e9;

/// A candidate continuation: source beam, token, summed log-probability.
#[derive(Clone, Copy)]
struct Cand {
    beam: usize,
    token: u32,
    score: f32,
}

/// What the search needs to know besides the model.
pub struct BeamSpec<'a> {
    /// N.
    pub beams: usize,
    /// Stop after this many new tokens.
    pub max_new: usize,
    /// Suppress eos until this many new tokens.
    pub min_new: usize,
    /// Stop tokens.
    pub eos: &'a [u32],
}

/// Runs beam search from the prompt's logits (`first`, one row; the engine holds one row) and
/// returns the best hypothesis' new tokens (eos included when it ended on one).
pub fn search(engine: &mut Engine<'_>, first: &[f32], spec: &BeamSpec<'_>) -> Result<Vec<u32>> {
    let n = spec.beams;
    let vocab = first.len();
    engine.reorder(&vec![0; n])?;
    let mut logits: Vec<f32> = first.repeat(n);
    // Only beam 0 is live at first, so the N copies do not pick the same tokens.
    let mut scores: Vec<f32> = (0..n).map(|b| if b == 0 { 0.0 } else { NEG }).collect();
    let mut seqs: Vec<Vec<u32>> = vec![Vec::new(); n];
    let mut finished: Vec<(f32, Vec<u32>)> = Vec::new();
    let mut improvable = true;
    for step in 0..spec.max_new {
        let cands = top_candidates(&logits, vocab, &scores, spec, step, 2 * n);
        let hits = |c: &Cand| spec.eos.contains(&c.token) || step + 1 >= spec.max_new;
        // Finished: only among the top N, scored per new token.
        for c in cands.iter().take(n).filter(|c| hits(c)) {
            if improvable {
                let mut s = seqs[c.beam].clone();
                s.push(c.token);
                finished.push((c.score / (step + 1) as f32, s));
            }
        }
        finished.sort_by(|a, b| b.0.total_cmp(&a.0));
        finished.truncate(n);
        // Running: the best N of the 2N after pushing finished ones down by NEG.
        let mut running: Vec<Cand> = cands
            .iter()
            .map(|c| Cand {
                score: c.score + if hits(c) { NEG } else { 0.0 },
                ..*c
            })
            .collect();
        running.sort_by(|a, b| b.score.total_cmp(&a.score));
        running.truncate(n);
        let all_hit = cands.iter().all(hits);
        let best_running = running.first().map_or(NEG, |c| c.score) / (step + 1) as f32;
        if finished.len() == n && finished.iter().all(|f| best_running <= f.0) {
            improvable = false;
        }
        if !improvable || all_hit {
            break;
        }
        let src: Vec<usize> = running.iter().map(|c| c.beam).collect();
        seqs = running
            .iter()
            .map(|c| {
                let mut s = seqs[c.beam].clone();
                s.push(c.token);
                s
            })
            .collect();
        scores = running.iter().map(|c| c.score).collect();
        engine.reorder(&src)?;
        let tokens: Vec<u32> = running.iter().map(|c| c.token).collect();
        logits = engine.feed(&tokens)?;
        if logits.len() != n * vocab {
            return Err(Error::Internal(
                "beam step returned the wrong logits size".into(),
            ));
        }
    }
    finished
        .into_iter()
        .next()
        .map(|(_, s)| s)
        .ok_or_else(|| Error::Internal("beam search finished no hypothesis".into()))
}

/// The `k` best (beam, token) continuations by running score + log-softmax, best first; ties in
/// flattened (beam-major) order, as `torch.topk` returns them on the CPU in practice.
fn top_candidates(
    logits: &[f32],
    vocab: usize,
    scores: &[f32],
    spec: &BeamSpec<'_>,
    step: usize,
    k: usize,
) -> Vec<Cand> {
    let mut best: Vec<Cand> = Vec::with_capacity(k + 1);
    for (beam, (row, &base)) in logits.chunks_exact(vocab).zip(scores).enumerate() {
        let mut lp = log_softmax(row);
        if step < spec.min_new {
            for &e in spec.eos {
                if let Some(v) = lp.get_mut(e as usize) {
                    *v = f32::NEG_INFINITY;
                }
            }
        }
        for (token, &l) in lp.iter().enumerate() {
            let score = l + base;
            if best.len() == k && best.last().is_some_and(|w| score <= w.score) {
                continue;
            }
            let at = best.partition_point(|c| c.score >= score);
            best.insert(
                at,
                Cand {
                    beam,
                    token: token as u32,
                    score,
                },
            );
            best.truncate(k);
        }
    }
    best
}
