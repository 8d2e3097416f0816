//! Causal self-attention on the CPU, a tile of query rows at a time: the scores of one tile
//! (`ROWS_PER_TASK x keys` floats per thread) are all that is held, so memory is O(seq · width),
//! not O(seq²). The products go through `gemm` like the rest of the forward pass.
//!
//! Keys and values are read through strides from a [`Kv`]: either the pass's own `qkv` rows (a
//! pass without a cache: verification) or a layer of the KV cache, which holds the earlier
//! positions followed by this pass's (generation).

use gemm::Parallelism;

use super::matmul::{matmul, View};
use super::vmath::softmax;
use crate::model::Config;

/// Query rows per task (a tile of one batch row). Later positions attend to more keys, so tasks
/// are dealt round-robin to the threads rather than split into contiguous halves.
const ROWS_PER_TASK: usize = 16;

/// The shape and scaling of one layer's attention.
#[derive(Clone, Copy)]
pub struct Attention {
    /// `n_embd`.
    pub h: usize,
    /// `n_head`.
    pub heads: usize,
    /// `n_embd / n_head`.
    pub hd: usize,
    /// New positions (queries) per batch row in this pass.
    pub seq: usize,
    /// Positions before this pass's (in the cache); query `i` of a row is at `past + i`.
    pub past: usize,
    /// transformers divides by a tensor holding sqrt(head_dim) when `scale_attn_weights`...
    divisor: f32,
    /// ...and then by (layer index + 1) when `scale_attn_by_inverse_layer_idx`.
    layer_div: Option<f32>,
}

impl Attention {
    /// Layer `l` of the model configured by `c`, on rows of `seq` new positions after `past`.
    pub fn new(c: &Config, l: usize, seq: usize, past: usize) -> Self {
        let hd = c.head_dim();
        Attention {
            h: c.n_embd,
            heads: c.n_head,
            hd,
            seq,
            past,
            divisor: if c.scale_attn_weights {
                (hd as f64).sqrt() as f32
            } else {
                1.0
            },
            layer_div: c.scale_attn_by_inverse_layer_idx.then_some((l + 1) as f32),
        }
    }
}

/// Where the keys and values of every batch row are: element `d` of head `hd_i`'s key at
/// position `p` of batch row `b` is `k[b * row_stride + p * rs + k_off + hd_i * hd + d]`.
#[derive(Clone, Copy)]
pub struct Kv<'a> {
    k: &'a [f32],
    v: &'a [f32],
    k_off: usize,
    v_off: usize,
    rs: usize,
    row_stride: usize,
}

impl<'a> Kv<'a> {
    /// Keys and values inside the pass's `qkv` rows `[q | k | v]` (no earlier positions).
    pub fn in_qkv(qkv: &'a [f32], a: &Attention) -> Self {
        Kv {
            k: qkv,
            v: qkv,
            k_off: a.h,
            v_off: 2 * a.h,
            rs: 3 * a.h,
            row_stride: a.seq * 3 * a.h,
        }
    }

    /// Keys and values in one layer of a cache laid out `[rows, capacity, h]`.
    pub fn in_cache(k: &'a [f32], v: &'a [f32], capacity: usize, h: usize) -> Self {
        Kv {
            k,
            v,
            k_off: 0,
            v_off: 0,
            rs: h,
            row_stride: capacity * h,
        }
    }
}

/// Below this many multiply-adds (tokens x positions seen x width) attention runs on the
/// calling thread: handing a few microseconds of work to other threads costs more than it saves.
const PARALLEL_MIN_WORK: usize = 1 << 20;

/// The attention context `[n, h]` for `qkv` rows `[n, 3h]` (`[q | k | v]`, each `heads * hd`
/// wide), each batch row's `seq` queries attending causally to the `past + seq` keys in `kv`.
pub fn attention(qkv: &[f32], kv: Kv<'_>, a: &Attention, threads: usize) -> Vec<f32> {
    use rayon::prelude::*;
    let n = qkv.len() / (3 * a.h);
    let mut ctx = vec![0f32; n * a.h];
    // (batch row, its first query in the tile, the tile's context rows)
    let tasks: Vec<(usize, usize, &mut [f32])> = ctx
        .chunks_mut(a.seq.max(1) * a.h)
        .enumerate()
        .flat_map(|(b, row)| {
            row.chunks_mut(ROWS_PER_TASK * a.h)
                .enumerate()
                .map(move |(t, c)| (b, t * ROWS_PER_TASK, c))
        })
        .collect();
    let work = n.saturating_mul(a.past + a.seq / 2 + 1).saturating_mul(a.h);
    let lanes = if work < PARALLEL_MIN_WORK {
        1
    } else {
        threads.clamp(1, tasks.len().max(1))
    };
    let mut dealt: Vec<Vec<_>> = (0..lanes).map(|_| Vec::new()).collect();
    for (i, task) in tasks.into_iter().enumerate() {
        dealt[i % lanes].push(task);
    }
    let run_lane = |lane: Vec<(usize, usize, &mut [f32])>| {
        let mut scores = vec![0f32; ROWS_PER_TASK * (a.past + a.seq)];
        for (b, first, out) in lane {
            attend_tile(qkv, kv, a, (b, first), out, &mut scores);
        }
    };
    if lanes == 1 {
        dealt.into_iter().for_each(run_lane);
    } else {
        dealt.into_par_iter().for_each(run_lane);
    }
    ctx
}

/// Fills `out`, the context rows of batch row `b`'s queries from `first` on (positions
/// `past + first..`), for every head: scores = q · kᵀ over the keys the tile's last query sees,
/// a causal softmax per row, then `out = p · v`.
fn attend_tile(
    qkv: &[f32],
    kv: Kv<'_>,
    a: &Attention,
    (b, first): (usize, usize),
    out: &mut [f32],
    scores: &mut [f32],
) {
    let (h, hd, w3) = (a.h, a.hd, 3 * a.h);
    let rows = out.len() / h;
    let pos = a.past + first; // the tile's first query position
    let keys = pos + rows; // positions 0..keys of this batch row are seen by some query here
    let scores = &mut scores[..rows * keys];
    for head in 0..a.heads {
        let q = View {
            data: qkv,
            offset: (b * a.seq + first) * w3 + head * hd,
            rs: w3,
            cs: 1,
        };
        let base = b * kv.row_stride + head * hd;
        let kt = View {
            data: kv.k,
            offset: base + kv.k_off,
            rs: 1,
            cs: kv.rs,
        };
        let v = View {
            data: kv.v,
            offset: base + kv.v_off,
            rs: kv.rs,
            cs: 1,
        };
        let none = Parallelism::None;
        matmul(scores, 0, keys, q, kt, (rows, keys, hd), false, none);
        for (r, row) in scores.chunks_exact_mut(keys).enumerate() {
            // Causal: position pos + r sees 0..=pos + r. transformers fills the rest with the
            // dtype's minimum, whose exp is exactly 0, so dropping them is the same softmax.
            let (seen, hidden) = row.split_at_mut(pos + r + 1);
            for s in seen.iter_mut() {
                *s /= a.divisor;
                if let Some(d) = a.layer_div {
                    *s /= d;
                }
            }
            softmax(seen);
            hidden.fill(0.0);
        }
        let p = View::rows(scores, keys);
        matmul(out, head * hd, h, p, v, (rows, hd, keys), false, none);
    }
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
        // Large enough to run in parallel (above PARALLEL_MIN_WORK).
        let a = Attention {
            h: 96,
            heads: 3,
            hd: 32,
            seq: 257,
            past: 0,
            divisor: 2.0,
            layer_div: None,
        };
        let n = 2 * a.seq;
        let qkv: Vec<f32> = (0..n * 3 * a.h)
            .map(|i| ((i * 7919 % 113) as f32 - 56.0) / 40.0)
            .collect();
        let want = reference(&qkv, &a);
        for threads in [1, 2, 5] {
            let got = attention(&qkv, Kv::in_qkv(&qkv, &a), &a, threads);
            let worst = got
                .iter()
                .zip(&want)
                .map(|(x, y)| (x - y).abs())
                .fold(0f32, f32::max);
            assert!(worst < 1e-5, "{threads} threads: max diff {worst}");
        }
    }

    #[test]
    fn queries_after_a_cache_match_the_full_matrix() {
        // The generation path: the last `new` positions of each batch row attend over a cache
        // holding all positions (with spare capacity), and must equal the uncached result.
        let full = Attention {
            h: 64,
            heads: 4,
            hd: 16,
            seq: 37,
            past: 0,
            divisor: 4.0,
            layer_div: Some(2.0),
        };
        let (rows, cap, w3, h) = (3, 41, 3 * 64, 64);
        let qkv: Vec<f32> = (0..rows * full.seq * w3)
            .map(|i| ((i * 7919 % 101) as f32 - 50.0) / 30.0)
            .collect();
        let want = attention(&qkv, Kv::in_qkv(&qkv, &full), &full, 1);
        for new in [1, 5, 37] {
            let past = full.seq - new;
            let mut k = vec![f32::NAN; rows * cap * h];
            let mut v = vec![f32::NAN; rows * cap * h];
            let mut tail = Vec::new();
            for b in 0..rows {
                for p in 0..full.seq {
                    let src = &qkv[(b * full.seq + p) * w3..][..w3];
                    k[(b * cap + p) * h..][..h].copy_from_slice(&src[h..2 * h]);
                    v[(b * cap + p) * h..][..h].copy_from_slice(&src[2 * h..]);
                    if p >= past {
                        tail.extend_from_slice(src);
                    }
                }
            }
            let a = Attention {
                seq: new,
                past,
                ..full
            };
            let got = attention(&tail, Kv::in_cache(&k, &v, cap, h), &a, 2);
            for b in 0..rows {
                let g = &got[b * new * h..][..new * h];
                let w = &want[(b * full.seq + past) * h..][..new * h];
                let worst = g
                    .iter()
                    .zip(w)
                    .map(|(x, y)| (x - y).abs())
                    .fold(0f32, f32::max);
                assert!(worst < 1e-5, "new {new}, row {b}: max diff {worst}");
            }
        }
    }
}
