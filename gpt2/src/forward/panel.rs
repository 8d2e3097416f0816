//! Wide matrix products (verification, prefill). Widening a whole 16-bit matrix to f32 first
//! writes twice its bytes to fresh memory and reads them back; here each thread widens one panel
//! (a few dozen output columns by a few thousand inputs, about 1 MiB) into a buffer that stays in
//! its cache, multiplies it there with `gemm`, and applies bias, activation or residual add to its
//! own columns before handing them back. No f32 copy of a matrix ever reaches memory, and the
//! widening runs on every thread of the pool.
//!
//! f32 matrices take the same road, copied instead of widened: handed whole to `gemm`, its
//! packing gathered each block from rows a page or more apart, and a third of a pass went there.

use gemm::Parallelism;
use rayon::prelude::*;

use super::matmul::{matmul_strided, View};
use super::vmath::{activate, gelu_tanh};
use super::widen::prefetch_range;
use crate::model::Activation;

/// A row-major weight matrix whose blocks the panel products copy out as f32.
pub trait Source: Copy + Sync {
    /// Rows of the matrix.
    fn rows(&self) -> usize;
    /// Columns of the matrix.
    fn cols(&self) -> usize;
    /// Writes `W[r, c..c + dst.len()]` into `dst` as f32 (exactly: 16-bit values widen exactly).
    fn widen_into(&self, r: usize, c: usize, dst: &mut [f32]);
    /// Starts loading `W[r, c..c + len]` into the cache; rows out of range are ignored.
    fn prefetch(&self, r: usize, c: usize, len: usize);
}

/// A row-major `[rows, cols]` f32 matrix (weights stored as f32, borrowed from the map).
#[derive(Clone, Copy)]
pub struct F32Matrix<'a> {
    data: &'a [f32],
    rows: usize,
    cols: usize,
}

impl<'a> F32Matrix<'a> {
    /// The matrix, if `data` holds exactly `rows x cols` values.
    pub fn new(data: &'a [f32], rows: usize, cols: usize) -> Option<Self> {
        (rows.checked_mul(cols)? == data.len() && rows > 0 && cols > 0).then_some(F32Matrix {
            data,
            rows,
            cols,
        })
    }
}

impl Source for F32Matrix<'_> {
    fn rows(&self) -> usize {
        self.rows
    }
    fn cols(&self) -> usize {
        self.cols
    }
    fn widen_into(&self, r: usize, c: usize, dst: &mut [f32]) {
        let start = r * self.cols + c;
        dst.copy_from_slice(&self.data[start..start + dst.len()]);
    }
    fn prefetch(&self, r: usize, c: usize, len: usize) {
        if r < self.rows {
            let start = r * self.cols + c;
            let end = (start + len).min(self.data.len());
            prefetch_range(&self.data[start..end]);
        }
    }
}

/// Most output columns per panel, a multiple of every f32 vector width `gemm` uses (8 and 16).
/// A Conv1D panel reads `2 * PANEL_COLS` contiguous bytes from each of its rows of the map:
/// 64 columns (128 bytes a row, a page apart) spent 20% more time than 256 on TLB misses.
const PANEL_COLS: usize = 256;
/// Most inputs per panel: 256 columns x 1024 x 4 bytes is 1 MiB, half this machine's L2.
const PANEL_DEPTH: usize = 1024;
/// How many rows ahead of the one being widened to prefetch.
const PREFETCH_ROWS: usize = 8;
/// Panels per thread at least, so that the threads finish together.
const PANELS_PER_THREAD: usize = 4;
/// Panels per thread computed before their outputs are copied into the result.
const PANELS_PER_WAVE: usize = 16;

/// How the weight matrix `W` is laid out for `y = x @ W'`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layout {
    /// `W` is `[k, n]` (Conv1D's `[in, out]`): `W' = W`.
    InOut,
    /// `W` is `[n, k]` (the tied head, `[vocab, h]`): `W' = Wᵀ`.
    OutIn,
}

/// What happens to the product `acc` of each output element on its way into `y`, in
/// transformers' order (addmm's bias first, then the activation or the residual add).
#[derive(Clone, Copy)]
pub enum Epilogue<'a> {
    /// `y = acc`.
    Plain,
    /// `y = bias + acc`.
    Bias(&'a [f32]),
    /// `y = act(bias + acc)`.
    BiasAct(&'a [f32], Activation),
    /// `y += bias + acc` (the residual stream).
    AddBias(&'a [f32]),
}

impl Epilogue<'_> {
    /// Applies the bias and activation to `out` (`[m, cols]`, columns `n0..` of the result).
    fn finish(&self, out: &mut [f32], n0: usize, cols: usize) {
        let (bias, act) = match *self {
            Epilogue::Plain => return,
            Epilogue::Bias(b) | Epilogue::AddBias(b) => (b, None),
            Epilogue::BiasAct(b, a) => (b, Some(a)),
        };
        let bias = &bias[n0..n0 + cols];
        for row in out.chunks_exact_mut(cols) {
            for (v, &b) in row.iter_mut().zip(bias) {
                *v += b;
            }
            if let Some(a) = act {
                activate_all(row, a);
            }
        }
    }
}

/// `v = act(v)` for every value, GPT-2's GELU vectorized.
pub fn activate_all(v: &mut [f32], act: Activation) {
    match act {
        Activation::GeluTanh => gelu_tanh(v),
        a => v.iter_mut().for_each(|x| *x = activate(a, *x)),
    }
}

/// `y[m x n] ⟵ x[m x k] @ W'` through `ep`, where `(k, n)` come from `w` and `layout`. Runs on
/// the current rayon pool when `threads > 1`. The caller sizes `x` and `y` (checked here).
pub fn product(
    x: &[f32],
    w: impl Source,
    layout: Layout,
    y: &mut [f32],
    ep: Epilogue<'_>,
    threads: usize,
) {
    let (k, n) = match layout {
        Layout::InOut => (w.rows(), w.cols()),
        Layout::OutIn => (w.cols(), w.rows()),
    };
    let m = x.len() / k.max(1);
    assert!(
        x.len() == m * k && y.len() == m * n,
        "panel product given mismatched buffers"
    );
    if m == 0 {
        return;
    }
    let width = n
        .div_ceil(threads.max(1) * PANELS_PER_THREAD)
        .next_multiple_of(16)
        .min(PANEL_COLS);
    let panels = n.div_ceil(width);
    leave_panels_unpacked();
    let task = |buf: &mut Vec<f32>, p: usize| {
        let n0 = p * width;
        let cols = width.min(n - n0);
        let mut out = vec![0f32; m * cols];
        panel(x, w, layout, (m, k, n0, cols), buf, &mut out);
        ep.finish(&mut out, n0, cols);
        (n0, out)
    };
    // Panels are computed a wave at a time and copied out, so what is held besides `y` is a
    // wave's outputs, not a second copy of the whole result (the head's logits are the largest).
    let wave = threads.max(1) * PANELS_PER_WAVE;
    let mut buf = Vec::new();
    for first in (0..panels).step_by(wave) {
        let range = first..(first + wave).min(panels);
        let parts: Vec<(usize, Vec<f32>)> = if threads <= 1 {
            range.map(|p| task(&mut buf, p)).collect()
        } else {
            range.into_par_iter().map_init(Vec::new, task).collect()
        };
        scatter(y, n, parts, matches!(ep, Epilogue::AddBias(_)));
    }
}

/// gemm copies ("packs") a left operand into column-major blocks unless it is column-major
/// already and the product is narrow (at most 8 microkernel widths, 48 tokens, by default). Our
/// panels are column-major left operands already and sit in L2, so packing them copied 1 MiB per
/// panel for nothing: 5% of an f32 pass. The threshold is process-wide; only the panel products
/// give gemm column-major left operands (every other product here passes row-major ones).
fn leave_panels_unpacked() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| gemm::set_lhs_packing_threshold_single_thread(256));
}

/// Copies (or with `add`, adds) each panel's `[m, cols]` output into columns `n0..` of `y`.
fn scatter(y: &mut [f32], n: usize, parts: Vec<(usize, Vec<f32>)>, add: bool) {
    let m = y.len() / n.max(1);
    for (n0, out) in parts {
        let cols = out.len() / m.max(1);
        for (dst, src) in y.chunks_exact_mut(n).zip(out.chunks_exact(cols.max(1))) {
            let dst = &mut dst[n0..n0 + cols];
            if add {
                dst.iter_mut().zip(src).for_each(|(d, s)| *d += s);
            } else {
                dst.copy_from_slice(src);
            }
        }
    }
}

/// `out[m x cols] = x @ W'[.., n0..n0 + cols]`, widening `W'` a depth block at a time into `buf`.
fn panel(
    x: &[f32],
    w: impl Source,
    layout: Layout,
    (m, k, n0, cols): (usize, usize, usize, usize),
    buf: &mut Vec<f32>,
    out: &mut [f32],
) {
    // Equal depth blocks, so that no block is a sliver.
    let depth = k.div_ceil(k.div_ceil(PANEL_DEPTH).max(1)).max(1);
    let mut k0 = 0;
    while k0 < k {
        let kb = depth.min(k - k0);
        buf.resize(kb * cols, 0.0);
        let rhs = match layout {
            Layout::InOut => {
                for (i, row) in buf.chunks_exact_mut(cols).enumerate() {
                    w.prefetch(k0 + i + PREFETCH_ROWS, n0, cols);
                    w.widen_into(k0 + i, n0, row);
                }
                View::rows(buf, cols)
            }
            Layout::OutIn => {
                for (j, row) in buf.chunks_exact_mut(kb).enumerate() {
                    w.prefetch(n0 + j + PREFETCH_ROWS, k0, kb);
                    w.widen_into(n0 + j, k0, row);
                }
                View {
                    data: buf,
                    offset: 0,
                    rs: 1,
                    cs: kb,
                }
            }
        };
        let lhs = View {
            data: x,
            offset: k0,
            rs: k,
            cs: 1,
        };
        // out (+)= x_block @ panel, computed as its transpose outᵀ = panelᵀ x_blockᵀ: gemm is
        // column-major at heart, and a Conv1D panelᵀ is then a column-major left operand, the
        // layout gemm packs left operands into, which it reads in place (see
        // `leave_panels_unpacked`). The head's panels (OutIn) are row-major there; gemm packs
        // them, which is the transpose they need anyway.
        let out_t = (0, 1, cols);
        let shape = (cols, m, kb);
        matmul_strided(
            out,
            out_t,
            rhs.t(),
            lhs.t(),
            shape,
            k0 > 0,
            Parallelism::None,
        );
        k0 += kb;
    }
}

#[cfg(test)]
mod tests {
    use super::super::half::tests::{raw, store, values};
    use super::super::half::HalfMatrix;
    use super::*;
    use crate::model::Activation;

    /// The plain definition, in f64: `y = x @ W'` through `ep`, from the exactly widened `w`.
    fn reference(
        x: &[f32],
        w: &[f32],
        (m, k, n): (usize, usize, usize),
        layout: Layout,
    ) -> Vec<f64> {
        let mut y = vec![0f64; m * n];
        for t in 0..m {
            for j in 0..n {
                y[t * n + j] = (0..k)
                    .map(|i| {
                        let wv = match layout {
                            Layout::InOut => w[i * n + j],
                            Layout::OutIn => w[j * k + i],
                        };
                        f64::from(x[t * k + i]) * f64::from(wv)
                    })
                    .sum();
            }
        }
        y
    }

    #[test]
    fn panel_products_match_the_plain_product_on_odd_shapes_for_f16_bf16_f32_and_every_epilogue() {
        // 1-row and 1-column matrices, sizes off every panel and vector width, and a depth over
        // PANEL_DEPTH (two depth blocks), in both layouts, f16 and bf16, aligned or not.
        let shapes = [
            (1, 1, 1),
            (1, 7, 1),
            (3, 1, 17),
            (2, 33, 130),
            (65, 19, 64),
            (3, 4099, 9),
        ];
        for (m, k, n) in shapes {
            for layout in [Layout::InOut, Layout::OutIn] {
                for (bf16, shift) in [(false, 0), (false, 1), (true, 0), (true, 3)] {
                    let x = values(m * k, 7);
                    let (bytes, wide) = store(&values(k * n, 8), bf16, shift);
                    let (r, c) = match layout {
                        Layout::InOut => (k, n),
                        Layout::OutIn => (n, k),
                    };
                    let w = HalfMatrix::new(raw(&bytes[shift..], bf16, c), r, c).unwrap();
                    let want = reference(&x, &wide, (m, k, n), layout);
                    let bias = values(n, 9);
                    let prior = values(m * n, 10);
                    let what = format!("{m}x{k}x{n} {layout:?} bf16 {bf16} +{shift}");
                    for threads in [1, 3] {
                        check_epilogues(&x, w, layout, (&want, &bias, &prior), threads, &what);
                    }
                    // The same matrix stored as f32 (the values widened exactly), copied
                    // rather than widened into the panels.
                    let w = F32Matrix::new(&wide, r, c).unwrap();
                    let what = format!("{m}x{k}x{n} {layout:?} f32");
                    for threads in [1, 3] {
                        check_epilogues(&x, w, layout, (&want, &bias, &prior), threads, &what);
                    }
                }
            }
        }
    }

    /// Runs every epilogue and compares with `want` (the plain product) finished the same way.
    fn check_epilogues(
        x: &[f32],
        w: impl Source,
        layout: Layout,
        (want, bias, prior): (&[f64], &[f32], &[f32]),
        threads: usize,
        what: &str,
    ) {
        let n = bias.len();
        let k = x.len() / (prior.len() / n);
        let act = Activation::GeluTanh;
        let cases: [(Epilogue<'_>, &str); 4] = [
            (Epilogue::Plain, "plain"),
            (Epilogue::Bias(bias), "bias"),
            (Epilogue::BiasAct(bias, act), "bias+gelu"),
            (Epilogue::AddBias(bias), "residual"),
        ];
        for (ep, name) in cases {
            let mut y = prior.to_vec();
            product(x, w, layout, &mut y, ep, threads);
            for (i, (&g, &acc)) in y.iter().zip(want).enumerate() {
                let b = f64::from(bias[i % n]);
                let e = match ep {
                    Epilogue::Plain => acc,
                    Epilogue::Bias(_) => acc + b,
                    Epilogue::BiasAct(..) => f64::from(activate(act, (acc + b) as f32)),
                    Epilogue::AddBias(_) => f64::from(prior[i]) + acc + b,
                };
                let tol = 1e-5 * (1.0 + e.abs()) * (k as f64).sqrt();
                assert!(
                    (f64::from(g) - e).abs() <= tol,
                    "{what} {name} {threads} threads [{i}]: {g} vs {e}"
                );
            }
        }
    }
}
