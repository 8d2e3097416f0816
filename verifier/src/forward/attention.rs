//! Causal self-attention on the CPU, one query row at a time: the scores of one query (at most
//! `seq` floats per thread) are all that is held, so memory is O(seq · width), not O(seq²).

use super::softmax;
use crate::model::Config;

/// Token rows per task. Later positions attend to more keys, so tasks are dealt round-robin to
/// the threads rather than split into contiguous halves.
const ROWS_PER_TASK: usize = 16;

/// The shape and scaling of one layer's attention.
pub struct Attention {
    /// `n_embd`.
    pub h: usize,
    /// `n_head`.
    pub heads: usize,
    /// `n_embd / n_head`.
    pub hd: usize,
    /// Positions per batch row.
    pub seq: usize,
    /// transformers divides by a tensor holding sqrt(head_dim) when `scale_attn_weights`...
    divisor: f32,
    /// ...and then by (layer index + 1) when `scale_attn_by_inverse_layer_idx`.
    layer_div: Option<f32>,
}

impl Attention {
    /// Layer `l` of the model configured by `c`, on rows of `seq` positions.
    pub fn new(c: &Config, l: usize, seq: usize) -> Self {
        let hd = c.head_dim();
        Attention {
            h: c.n_embd,
            heads: c.n_head,
            hd,
            seq,
            divisor: if c.scale_attn_weights {
                (hd as f64).sqrt() as f32
            } else {
                1.0
            },
            layer_div: c.scale_attn_by_inverse_layer_idx.then_some((l + 1) as f32),
        }
    }
}

/// The attention context `[n, h]` for `qkv` rows `[n, 3h]` (`[q | k | v]`, each `heads * hd`
/// wide), each batch row of `seq` positions attending causally within itself.
pub fn attention(qkv: &[f32], a: &Attention, threads: usize) -> Vec<f32> {
    let n = qkv.len() / (3 * a.h);
    let mut ctx = vec![0f32; n * a.h];
    let tasks: Vec<(usize, &mut [f32])> = ctx
        .chunks_mut(ROWS_PER_TASK * a.h)
        .enumerate()
        .map(|(i, c)| (i * ROWS_PER_TASK, c))
        .collect();
    let lanes = threads.clamp(1, tasks.len().max(1));
    if lanes == 1 {
        let mut scores = vec![0f32; a.seq];
        for (first, out) in tasks {
            attend_rows(qkv, a, first, out, &mut scores);
        }
        return ctx;
    }
    let mut dealt: Vec<Vec<(usize, &mut [f32])>> = (0..lanes).map(|_| Vec::new()).collect();
    for (i, task) in tasks.into_iter().enumerate() {
        dealt[i % lanes].push(task);
    }
    std::thread::scope(|s| {
        for lane in dealt {
            s.spawn(move || {
                let mut scores = vec![0f32; a.seq];
                for (first, out) in lane {
                    attend_rows(qkv, a, first, out, &mut scores);
                }
            });
        }
    });
    ctx
}

/// Fills `out` (whole context rows, starting at token `first`) for every head.
fn attend_rows(qkv: &[f32], a: &Attention, first: usize, out: &mut [f32], scores: &mut [f32]) {
    let (h, hd, w3) = (a.h, a.hd, 3 * a.h);
    for (k, ctx_row) in out.chunks_exact_mut(h).enumerate() {
        let token = first + k;
        let i = token % a.seq;
        let row0 = token - i; // the first token of this batch row
        for head in 0..a.heads {
            let q = &qkv[token * w3 + head * hd..][..hd];
            // Causal: position i sees 0..=i. transformers fills the rest with the dtype's
            // minimum, whose exp is exactly 0, so leaving them out is the same softmax.
            let seen = &mut scores[..=i];
            for (j, s) in seen.iter_mut().enumerate() {
                let key = &qkv[(row0 + j) * w3 + h + head * hd..][..hd];
                *s = dot(q, key) / a.divisor;
                if let Some(d) = a.layer_div {
                    *s /= d;
                }
            }
            softmax(seen);
            let acc = &mut ctx_row[head * hd..(head + 1) * hd];
            acc.fill(0.0);
            for (j, &p) in seen.iter().enumerate() {
                let v = &qkv[(row0 + j) * w3 + 2 * h + head * hd..][..hd];
                for (o, &x) in acc.iter_mut().zip(v) {
                    *o += p * x;
                }
            }
        }
    }
}

/// Dot product with eight independent partial sums, which the compiler keeps in one vector
/// register (a single running sum would serialise every addition).
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in ca.zip(cb) {
        for k in 0..8 {
            acc[k] += x[k] * y[k];
        }
    }
    acc.iter().sum::<f32>() + tail
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The O(seq²) definition: full score matrix, mask, softmax, weighted sum.
    fn reference(qkv: &[f32], a: &Attention) -> Vec<f32> {
        let (h, hd, w3, seq) = (a.h, a.hd, 3 * a.h, a.seq);
        let n = qkv.len() / w3;
        let mut ctx = vec![0f32; n * h];
        for t in 0..n {
            let (i, row0) = (t % seq, t - t % seq);
            for head in 0..a.heads {
                let mut s: Vec<f32> = (0..=i)
                    .map(|j| {
                        (0..hd)
                            .map(|d| {
                                qkv[t * w3 + head * hd + d]
                                    * qkv[(row0 + j) * w3 + h + head * hd + d]
                            })
                            .sum::<f32>()
                            / a.divisor
                    })
                    .collect();
                softmax(&mut s);
                for d in 0..hd {
                    ctx[t * h + head * hd + d] = (0..=i)
                        .map(|j| s[j] * qkv[(row0 + j) * w3 + 2 * h + head * hd + d])
                        .sum();
                }
            }
        }
        ctx
    }

    #[test]
    fn row_at_a_time_matches_the_full_matrix_on_every_thread_count() {
        let a = Attention {
            h: 12,
            heads: 3,
            hd: 4,
            seq: 37,
            divisor: 2.0,
            layer_div: None,
        };
        let n = 2 * a.seq;
        let qkv: Vec<f32> = (0..n * 3 * a.h)
            .map(|i| ((i * 7919 % 113) as f32 - 56.0) / 40.0)
            .collect();
        let want = reference(&qkv, &a);
        for threads in [1, 2, 5] {
            let got = attention(&qkv, &a, threads);
            let worst = got
                .iter()
                .zip(&want)
                .map(|(x, y)| (x - y).abs())
                .fold(0f32, f32::max);
            assert!(worst < 1e-5, "{threads} threads: max diff {worst}");
        }
    }

    #[test]
    fn dot_handles_lengths_off_the_vector_width() {
        let a: Vec<f32> = (0..13).map(|i| i as f32).collect();
        assert_eq!(dot(&a, &a), (0..13).map(|i| (i * i) as f32).sum::<f32>());
    }
}
