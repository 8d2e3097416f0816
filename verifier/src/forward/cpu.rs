//! The forward pass on the CPU: `gemm` for every matrix product, plain loops for the rest.

use gemm::Parallelism;

use super::{activate, layer_norm, softmax};
use crate::error::Result;
use crate::model::Model;

/// A row-major or strided matrix view: element (i, j) is `data[offset + i * rs + j * cs]`.
#[derive(Clone, Copy)]
struct View<'a> {
    data: &'a [f32],
    offset: usize,
    rs: usize,
    cs: usize,
}

impl<'a> View<'a> {
    fn rows(data: &'a [f32], cols: usize) -> Self {
        View {
            data,
            offset: 0,
            rs: cols,
            cs: 1,
        }
    }

    /// Panics unless every element of an `m x n` view lies inside `data`: this is what makes the
    /// raw-pointer call below sound. Sizes were validated when the model was opened, so a failure
    /// here is a bug in this file, not bad input.
    fn check(&self, m: usize, n: usize) {
        if m > 0 && n > 0 {
            let last = self.offset + (m - 1) * self.rs + (n - 1) * self.cs;
            assert!(last < self.data.len(), "matrix view out of bounds");
        }
    }
}

/// `dst[m x n] = (accumulate ? dst : 0) + lhs[m x k] * rhs[k x n]`, `dst` row-major with row
/// stride `dst_rs` starting at `dst_off`.
#[allow(clippy::too_many_arguments)]
fn matmul(
    dst: &mut [f32],
    dst_off: usize,
    dst_rs: usize,
    lhs: View<'_>,
    rhs: View<'_>,
    (m, n, k): (usize, usize, usize),
    accumulate: bool,
    par: Parallelism,
) {
    lhs.check(m, k);
    rhs.check(k, n);
    View {
        data: dst,
        offset: dst_off,
        rs: dst_rs,
        cs: 1,
    }
    .check(m, n);
    // SAFETY: the three checks above keep every access in bounds; dst is borrowed mutably and
    // cannot alias the shared lhs/rhs borrows. Strides fit isize because the buffers exist.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr().add(dst_off),
            1,
            dst_rs as isize,
            accumulate,
            lhs.data.as_ptr().add(lhs.offset),
            lhs.cs as isize,
            lhs.rs as isize,
            rhs.data.as_ptr().add(rhs.offset),
            rhs.cs as isize,
            rhs.rs as isize,
            1.0,
            1.0,
            false,
            false,
            false,
            par,
        );
    }
}

/// Conv1D: `x[rows x inp] @ w[inp x out] + b`, with `w` in GPT-2's `[in, out]` layout.
fn conv1d(
    x: &[f32],
    rows: usize,
    inp: usize,
    w: &[f32],
    b: &[f32],
    out: usize,
    par: Parallelism,
) -> Vec<f32> {
    // Start from the bias and accumulate, as torch.addmm(bias, x, w) does.
    let mut y: Vec<f32> = b.iter().copied().cycle().take(rows * out).collect();
    matmul(
        &mut y,
        0,
        out,
        View::rows(x, inp),
        View::rows(w, out),
        (rows, out, inp),
        true,
        par,
    );
    y
}

/// The tensors of one block, in the order the forward pass destructures them.
const LAYER_TENSORS: [&str; 12] = [
    "ln_1.weight",
    "ln_1.bias",
    "attn.c_attn.weight",
    "attn.c_attn.bias",
    "attn.c_proj.weight",
    "attn.c_proj.bias",
    "ln_2.weight",
    "ln_2.bias",
    "mlp.c_fc.weight",
    "mlp.c_fc.bias",
    "mlp.c_proj.weight",
    "mlp.c_proj.bias",
];

/// Computes logits `[batch, seq, vocab]`; see [`super::run`] for the preconditions.
pub fn forward(
    model: &Model,
    ids: &[u32],
    batch: usize,
    seq: usize,
    threads: usize,
) -> Result<Vec<f32>> {
    let c = &model.config;
    let (h, inner, nh, hd) = (c.n_embd, c.n_inner, c.n_head, c.head_dim());
    let n = batch * seq;
    let eps = c.layer_norm_epsilon;
    let par = if threads <= 1 {
        Parallelism::None
    } else {
        Parallelism::Rayon(threads)
    };

    // h = wte[ids] + wpe[0..T). wte stays widened: the tied head needs it again at the end.
    let mut wte_buf = Vec::new();
    let wte = model.tensor_f32_in("wte.weight", &mut wte_buf, threads)?;
    let mut x = vec![0f32; n * h];
    {
        let wpe = model.tensor_f32("wpe.weight")?;
        for (i, (row, &id)) in x.chunks_exact_mut(h).zip(ids).enumerate() {
            let (id, t) = (id as usize, i % seq);
            let (e, p) = (&wte[id * h..(id + 1) * h], &wpe[t * h..(t + 1) * h]);
            for ((v, &a), &b) in row.iter_mut().zip(e).zip(p) {
                *v = a + b;
            }
        }
    }

    let mut scores = vec![0f32; seq * seq];
    // One buffer per layer tensor, reused by every layer: no fresh pages after the first.
    let mut bufs: Vec<Vec<f32>> = vec![Vec::new(); LAYER_TENSORS.len()];
    for l in 0..c.n_layer {
        let mut w: Vec<&[f32]> = Vec::with_capacity(LAYER_TENSORS.len());
        for (buf, name) in bufs.iter_mut().zip(LAYER_TENSORS) {
            w.push(model.tensor_f32_in(&format!("h.{l}.{name}"), buf, threads)?);
        }
        let &[ln1_w, ln1_b, attn_w, attn_b, proj_w, proj_b, ln2_w, ln2_b, fc_w, fc_b, out_w, out_b] =
            w.as_slice()
        else {
            // Cannot fire: the loop above pushes exactly one slice per entry of LAYER_TENSORS
            // (12), or returns an error first; no input changes that count.
            unreachable!("one slice per entry of LAYER_TENSORS");
        };
        // Attention sub-block.
        let mut a = x.clone();
        layer_norm(&mut a, h, ln1_w, ln1_b, eps);
        let qkv = conv1d(&a, n, h, attn_w, attn_b, 3 * h, par);
        drop(a);
        // transformers divides by a tensor holding sqrt(head_dim) (and the layer number).
        let mut divisor = 1f32;
        if c.scale_attn_weights {
            divisor = (hd as f64).sqrt() as f32;
        }
        let layer_div = (l + 1) as f32;
        let mut ctx = vec![0f32; n * h];
        for b in 0..batch {
            let base = b * seq * 3 * h;
            for head in 0..nh {
                // q, k, v of this head are strided views into the [T, 3H] qkv rows.
                let q = View {
                    data: &qkv,
                    offset: base + head * hd,
                    rs: 3 * h,
                    cs: 1,
                };
                let kt = View {
                    data: &qkv,
                    offset: base + h + head * hd,
                    rs: 1,
                    cs: 3 * h,
                };
                let v = View {
                    data: &qkv,
                    offset: base + 2 * h + head * hd,
                    rs: 3 * h,
                    cs: 1,
                };
                matmul(
                    &mut scores,
                    0,
                    seq,
                    q,
                    kt,
                    (seq, seq, hd),
                    false,
                    Parallelism::None,
                );
                for (i, row) in scores.chunks_exact_mut(seq).enumerate() {
                    // Causal: position i sees 0..=i. transformers fills the rest with the dtype's
                    // minimum, whose exp is exactly 0, so dropping them is the same softmax.
                    let (seen, hidden) = row.split_at_mut(i + 1);
                    for s in seen.iter_mut() {
                        *s /= divisor;
                        if c.scale_attn_by_inverse_layer_idx {
                            *s /= layer_div;
                        }
                    }
                    softmax(seen);
                    hidden.fill(0.0);
                }
                let p = View::rows(&scores, seq);
                matmul(
                    &mut ctx,
                    b * seq * h + head * hd,
                    h,
                    p,
                    v,
                    (seq, hd, seq),
                    false,
                    Parallelism::None,
                );
            }
        }
        drop(qkv);
        let o = conv1d(&ctx, n, h, proj_w, proj_b, h, par);
        drop(ctx);
        for (xv, ov) in x.iter_mut().zip(&o) {
            *xv += ov;
        }
        drop(o);

        // MLP sub-block.
        let mut m = x.clone();
        layer_norm(&mut m, h, ln2_w, ln2_b, eps);
        let mut f = conv1d(&m, n, h, fc_w, fc_b, inner, par);
        drop(m);
        for v in f.iter_mut() {
            *v = activate(c.activation, *v);
        }
        let o = conv1d(&f, n, inner, out_w, out_b, h, par);
        drop(f);
        for (xv, ov) in x.iter_mut().zip(&o) {
            *xv += ov;
        }
    }

    layer_norm(
        &mut x,
        h,
        &model.tensor_f32("ln_f.weight")?,
        &model.tensor_f32("ln_f.bias")?,
        eps,
    );
    // logits = h @ head^T, head [vocab, H] row-major: read it transposed through its strides.
    drop(bufs);
    let mut head_buf = Vec::new();
    let head = if model.has_lm_head() {
        model.tensor_f32_in("lm_head.weight", &mut head_buf, threads)?
    } else {
        wte
    };
    let v = c.vocab_size;
    let mut logits = vec![0f32; n * v];
    let head_t = View {
        data: head,
        offset: 0,
        rs: 1,
        cs: h,
    };
    matmul(
        &mut logits,
        0,
        v,
        View::rows(&x, h),
        head_t,
        (n, v, h),
        false,
        par,
    );
    Ok(logits)
}
