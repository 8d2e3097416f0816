//! Matrix-vector products that read 16-bit weights straight from the map, for passes of a few
//! tokens (generation's decode steps): widening a layer to f32 first would read the weights
//! once and write and read twice as many bytes again, and these steps are bound by memory.
//!
//! x86_64 with AVX2+FMA+F16C (checked at run time) widens 8 values per instruction in
//! registers; elsewhere a portable loop does the same arithmetic. Loads are unaligned, so the
//! map's alignment (safetensors guarantees none) does not matter.

use rayon::prelude::*;

use super::panel::Source;
use super::widen::{prefetch_range, to_f32, widen_16};
use crate::model::{Raw, Stored};

/// Passes of at most this many tokens (all rows together) read 16-bit weights directly.
pub const DIRECT_MAX_TOKENS: usize = 8;

/// A row-major `[rows, cols]` matrix of 16-bit floats in (possibly unaligned) bytes.
#[derive(Clone, Copy)]
pub struct HalfMatrix<'a> {
    bytes: &'a [u8],
    bf16: bool,
    rows: usize,
    cols: usize,
}

impl<'a> HalfMatrix<'a> {
    /// The matrix, if `raw` is 16-bit and holds exactly `rows x cols` values.
    pub fn new(raw: Raw<'a>, rows: usize, cols: usize) -> Option<Self> {
        let bf16 = match raw.dtype {
            Stored::F16 => false,
            Stored::Bf16 => true,
            Stored::F32 => return None,
        };
        let len = rows.checked_mul(cols)?.checked_mul(2)?;
        (raw.bytes.len() == len && rows > 0 && cols > 0).then_some(HalfMatrix {
            bytes: raw.bytes,
            bf16,
            rows,
            cols,
        })
    }

    /// Rows `r..r + n` (in bounds by construction of the callers' loops).
    fn rows_bytes(&self, r: usize, n: usize) -> &'a [u8] {
        let row = 2 * self.cols;
        &self.bytes[r * row..(r + n) * row]
    }
}

/// The panel products read a 16-bit matrix by widening its blocks exactly.
impl Source for HalfMatrix<'_> {
    fn rows(&self) -> usize {
        self.rows
    }

    fn cols(&self) -> usize {
        self.cols
    }

    fn widen_into(&self, r: usize, c: usize, dst: &mut [f32]) {
        let start = 2 * (r * self.cols + c);
        let src = &self.bytes[start..start + 2 * dst.len()];
        widen_16(src, dst, self.bf16);
    }

    /// Rows of a panel lie a page or more apart, where the hardware prefetcher stops.
    fn prefetch(&self, r: usize, c: usize, len: usize) {
        if r < self.rows {
            let start = 2 * (r * self.cols + c);
            let end = (start + 2 * len).min(self.bytes.len());
            prefetch_range(&self.bytes[start..end]);
        }
    }
}

/// Conv1D `y[b] = bias + x[b] @ W` for `x` `[batch, in]` and `W` `[in, out]`. The `in` rows
/// are split into contiguous ranges across the pool's threads (each streams its rows of W once,
/// for every batch row, into its own partial `y`), and the partials are summed.
pub fn conv1d(x: &[f32], w: HalfMatrix<'_>, bias: &[f32], threads: usize) -> Vec<f32> {
    let (inp, out) = (w.rows, w.cols);
    let batch = x.len() / inp;
    // Ranges of at least 64 rows: below that a thread's partial costs more than its share.
    let parts = threads.clamp(1, inp.div_ceil(64));
    let chunk = inp.div_ceil(parts).next_multiple_of(ROWS);
    let partial = |p: usize| {
        let (r0, r1) = (p * chunk, ((p + 1) * chunk).min(inp));
        let mut y = vec![0f32; batch * out];
        let mut coeff = vec![0f32; batch * ROWS];
        let mut r = r0;
        while r < r1 {
            let n = ROWS.min(r1 - r);
            for (c, xb) in coeff.chunks_exact_mut(n).zip(x.chunks_exact(inp)) {
                c.copy_from_slice(&xb[r..r + n]);
            }
            axpy_rows(
                &mut y,
                out,
                w.rows_bytes(r, n),
                &coeff[..batch * n],
                n,
                w.bf16,
            );
            r += n;
        }
        y
    };
    let partials: Vec<Vec<f32>> = if parts == 1 {
        vec![partial(0)]
    } else {
        (0..parts).into_par_iter().map(partial).collect()
    };
    let mut y: Vec<f32> = bias.iter().copied().cycle().take(batch * out).collect();
    for p in &partials {
        for (a, b) in y.iter_mut().zip(p) {
            *a += b;
        }
    }
    y
}

/// The tied head: `logits[b, v] = x[b] · W[v]` for `W` `[vocab, h]`, vocab split into ranges
/// across threads.
pub fn head(x: &[f32], w: HalfMatrix<'_>, threads: usize) -> Vec<f32> {
    let (vocab, h) = (w.rows, w.cols);
    let batch = x.len() / h;
    let block = vocab
        .div_ceil(threads.max(1) * 4)
        .next_multiple_of(ROWS)
        .max(ROWS);
    let part = |v0: usize| {
        let v1 = (v0 + block).min(vocab);
        let mut out = vec![0f32; batch * (v1 - v0)];
        let mut v = v0;
        while v < v1 {
            let n = ROWS.min(v1 - v);
            let rows = w.rows_bytes(v, n);
            for (b, xb) in x.chunks_exact(h).enumerate() {
                let d = dot_rows(xb, rows, n, w.bf16);
                out[b * (v1 - v0) + (v - v0)..][..n].copy_from_slice(&d[..n]);
            }
            v += n;
        }
        (v0, out)
    };
    let starts: Vec<usize> = (0..vocab).step_by(block).collect();
    let parts: Vec<(usize, Vec<f32>)> = starts.into_par_iter().map(part).collect();
    let mut logits = vec![0f32; batch * vocab];
    for (v0, out) in parts {
        let len = out.len() / batch.max(1);
        for (b, o) in out.chunks_exact(len.max(1)).enumerate() {
            logits[b * vocab + v0..][..len].copy_from_slice(o);
        }
    }
    logits
}

/// Rows of W per pass over `y` (and per group of head rows).
const ROWS: usize = 8;

/// For every batch row `b`: `y[b] += Σ_r a[b][r] · W[r]` over the `n` (≤ ROWS) rows in
/// `rows`, `a` holding `n` coefficients per batch row. Each weight is widened once for all batch
/// rows (beams).
fn axpy_rows(y: &mut [f32], out: usize, rows: &[u8], a: &[f32], n: usize, bf16: bool) {
    #[cfg(target_arch = "x86_64")]
    if n == ROWS
        && out > 0
        && rows.len() == ROWS * 2 * out
        && y.len() / out * ROWS == a.len()
        && simd::available()
    {
        // SAFETY: the CPU has the features (checked above); `rows` holds ROWS rows of `out`
        // 16-bit values and `a` ROWS coefficients per `out`-long row of `y` (checked above),
        // which is all the kernel reads and writes.
        unsafe {
            if bf16 {
                simd::axpy::<true>(y, out, rows, a)
            } else {
                simd::axpy::<false>(y, out, rows, a)
            }
        };
        return;
    }
    axpy_portable(y, out, rows, a, n, bf16);
}

/// [`axpy_rows`] without SIMD.
fn axpy_portable(y: &mut [f32], out: usize, rows: &[u8], a: &[f32], n: usize, bf16: bool) {
    for (yb, ab) in y.chunks_exact_mut(out).zip(a.chunks_exact(n)) {
        for (row, &ar) in rows.chunks_exact(2 * out).zip(ab) {
            for (v, b) in yb.iter_mut().zip(row.chunks_exact(2)) {
                *v += ar * to_f32(b[0], b[1], bf16);
            }
        }
    }
}

/// `x · W[r]` for the `n` (≤ ROWS) rows in `rows`.
fn dot_rows(x: &[f32], rows: &[u8], n: usize, bf16: bool) -> [f32; ROWS] {
    #[cfg(target_arch = "x86_64")]
    if n == ROWS && rows.len() == ROWS * 2 * x.len() && simd::available() {
        // SAFETY: features checked; `rows` holds ROWS rows of `x.len()` values (checked).
        return unsafe {
            if bf16 {
                simd::dot::<true>(x, rows)
            } else {
                simd::dot::<false>(x, rows)
            }
        };
    }
    dot_portable(x, rows, n, bf16)
}

/// [`dot_rows`] without SIMD.
fn dot_portable(x: &[f32], rows: &[u8], n: usize, bf16: bool) -> [f32; ROWS] {
    let mut out = [0f32; ROWS];
    for (o, row) in out
        .iter_mut()
        .zip(rows.chunks_exact(2 * x.len().max(1)))
        .take(n)
    {
        *o = x
            .iter()
            .zip(row.chunks_exact(2))
            .map(|(&xv, b)| xv * to_f32(b[0], b[1], bf16))
            .sum();
    }
    out
}

#[cfg(target_arch = "x86_64")]
pub(super) mod simd {
    use std::arch::x86_64::*;

    use super::super::widen::simd::load8;
    use super::super::widen::to_f32;
    use super::ROWS;

    pub use super::super::widen::simd::available;

    /// For every `out`-long row `b` of `y`: `y[b] += Σ_r a[b * ROWS + r] W[r]` over ROWS rows
    /// of `out` values. Each 8-column block of the ROWS rows is widened once for all rows of
    /// `y`; the products are summed as a tree, not one chain through the accumulator.
    ///
    /// # Safety
    /// `rows.len() >= ROWS * 2 * out`, `a.len() == ROWS * (y.len() / out)`; the CPU has AVX2,
    /// FMA and F16C.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn axpy<const BF: bool>(y: &mut [f32], out: usize, rows: &[u8], a: &[f32]) {
        let batch = a.len() / ROWS;
        let stride = 2 * out;
        let (w, yp, ap) = (rows.as_ptr(), y.as_mut_ptr(), a.as_ptr());
        let mut j = 0;
        while j + 8 <= out {
            let wv: [__m256; ROWS] = std::array::from_fn(|r| load8(w.add(r * stride + 2 * j), BF));
            for b in 0..batch {
                let coef = |r: usize| _mm256_set1_ps(*ap.add(b * ROWS + r));
                let mut pair = [_mm256_setzero_ps(); ROWS / 2];
                for (k, p) in pair.iter_mut().enumerate() {
                    let (r0, r1) = (2 * k, 2 * k + 1);
                    *p = _mm256_fmadd_ps(coef(r1), wv[r1], _mm256_mul_ps(coef(r0), wv[r0]));
                }
                let mut width = ROWS / 2;
                while width > 1 {
                    width /= 2;
                    for k in 0..width {
                        pair[k] = _mm256_add_ps(pair[k], pair[k + width]);
                    }
                }
                let at = yp.add(b * out + j);
                _mm256_storeu_ps(at, _mm256_add_ps(_mm256_loadu_ps(at), pair[0]));
            }
            j += 8;
        }
        for b in 0..batch {
            for jj in j..out {
                for r in 0..ROWS {
                    let at = r * stride + 2 * jj;
                    y[b * out + jj] += a[b * ROWS + r] * to_f32(rows[at], rows[at + 1], BF);
                }
            }
        }
    }

    /// `x · W[r]` for ROWS rows of `x.len()` values.
    ///
    /// # Safety
    /// `rows.len() >= ROWS * 2 * x.len()`; the CPU has AVX2, FMA and F16C.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn dot<const BF: bool>(x: &[f32], rows: &[u8]) -> [f32; ROWS] {
        let n = x.len();
        let stride = 2 * n;
        let w = rows.as_ptr();
        let mut acc = [_mm256_setzero_ps(); ROWS];
        let mut j = 0;
        while j + 8 <= n {
            let xv = _mm256_loadu_ps(x.as_ptr().add(j));
            for (r, a) in acc.iter_mut().enumerate() {
                *a = _mm256_fmadd_ps(xv, load8(w.add(r * stride + 2 * j), BF), *a);
            }
            j += 8;
        }
        let mut out = acc.map(|a| hsum(a));
        for (r, o) in out.iter_mut().enumerate() {
            for (jj, &xv) in x.iter().enumerate().skip(j) {
                let at = r * stride + 2 * jj;
                *o += xv * to_f32(rows[at], rows[at + 1], BF);
            }
        }
        out
    }

    /// The sum of the 8 lanes of `v`.
    ///
    /// # Safety
    /// The CPU has AVX2 (register work only, no memory is read).
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn hsum(v: __m256) -> f32 {
        let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
        _mm_cvtss_f32(s)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::super::matmul::{matmul, View};
    use super::*;
    use gemm::Parallelism;

    /// Deterministic values in about [-2, 2] with a fraction of them tiny or exactly zero.
    pub(crate) fn values(n: usize, seed: u64) -> Vec<f32> {
        let mut s = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (0..n)
            .map(|_| {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                let u = (s >> 40) as f32 / (1u64 << 24) as f32;
                if s % 17 == 0 {
                    0.0
                } else {
                    4.0 * u - 2.0
                }
            })
            .collect()
    }

    /// `w` as 16-bit bytes starting `shift` bytes into the returned buffer (so unaligned when
    /// shift is odd), and the exact f32 widening of what was stored.
    pub(crate) fn store(w: &[f32], bf16: bool, shift: usize) -> (Vec<u8>, Vec<f32>) {
        let mut bytes = vec![0u8; shift];
        let mut wide = Vec::new();
        for &v in w {
            let (bits, back) = if bf16 {
                let b = ::half::bf16::from_f32(v);
                (b.to_bits(), b.to_f32())
            } else {
                let b = ::half::f16::from_f32(v);
                (b.to_bits(), b.to_f32())
            };
            bytes.extend_from_slice(&bits.to_le_bytes());
            wide.push(back);
        }
        (bytes, wide)
    }

    pub(crate) fn raw(bytes: &[u8], bf16: bool, cols: usize) -> Raw<'_> {
        Raw {
            dtype: if bf16 { Stored::Bf16 } else { Stored::F16 },
            bytes,
            cols,
        }
    }

    fn close(got: &[f32], want: &[f32], what: &str) {
        assert_eq!(got.len(), want.len(), "{what}");
        for (i, (g, w)) in got.iter().zip(want).enumerate() {
            assert!(
                (g - w).abs() <= 1e-4 * (1.0 + w.abs()),
                "{what}: [{i}] {g} vs {w}"
            );
        }
    }

    #[test]
    fn conv1d_matches_the_widened_gemm_on_odd_shapes_and_unaligned_bytes() {
        for (inp, out, batch, threads) in [
            (1, 1, 1, 1),
            (3, 5, 2, 2),
            (64, 24, 1, 3),
            (67, 131, 4, 2),
            (130, 8, 3, 5),
            (257, 33, 8, 4),
        ] {
            for (bf16, shift) in [(false, 0), (false, 1), (true, 1), (true, 2)] {
                let x = values(batch * inp, 1);
                let bias = values(out, 2);
                let (bytes, wide) = store(&values(inp * out, 3), bf16, shift);
                let m = HalfMatrix::new(raw(&bytes[shift..], bf16, out), inp, out).unwrap();
                let got = conv1d(&x, m, &bias, threads);
                let mut want: Vec<f32> = bias.iter().copied().cycle().take(batch * out).collect();
                let (lhs, rhs) = (View::rows(&x, inp), View::rows(&wide, out));
                let shape = (batch, out, inp);
                matmul(&mut want, 0, out, lhs, rhs, shape, true, Parallelism::None);
                close(
                    &got,
                    &want,
                    &format!("conv1d {inp}x{out} b{batch} bf16 {bf16} +{shift}"),
                );
            }
        }
    }

    #[test]
    fn head_matches_the_widened_gemm_on_odd_shapes_and_unaligned_bytes() {
        for (vocab, h, batch, threads) in
            [(1, 1, 1, 1), (7, 9, 2, 2), (1001, 24, 4, 3), (64, 67, 8, 2)]
        {
            for (bf16, shift) in [(false, 0), (false, 3), (true, 1)] {
                let x = values(batch * h, 4);
                let (bytes, wide) = store(&values(vocab * h, 5), bf16, shift);
                let m = HalfMatrix::new(raw(&bytes[shift..], bf16, h), vocab, h).unwrap();
                let got = head(&x, m, threads);
                let mut want = vec![0f32; batch * vocab];
                let head_t = View {
                    data: &wide,
                    offset: 0,
                    rs: 1,
                    cs: h,
                };
                let shape = (batch, vocab, h);
                matmul(
                    &mut want,
                    0,
                    vocab,
                    View::rows(&x, h),
                    head_t,
                    shape,
                    false,
                    Parallelism::None,
                );
                close(
                    &got,
                    &want,
                    &format!("head {vocab}x{h} b{batch} bf16 {bf16} +{shift}"),
                );
            }
        }
    }

    #[test]
    fn the_portable_kernels_agree_with_the_dispatched_ones() {
        // On a machine with AVX2 the dispatched kernels are the SIMD ones: this pins the
        // fallback that other CPUs run to the same results.
        for (n, bf16) in [(1, false), (13, true), (40, false), (67, true)] {
            let (bytes, _) = store(&values(ROWS * n, 6), bf16, 1);
            let rows = &bytes[1..];
            let (x, a) = (values(n, 7), values(3 * ROWS, 8));
            let (mut y1, mut y2) = (values(3 * n, 9), values(3 * n, 9));
            axpy_rows(&mut y1, n, rows, &a, ROWS, bf16);
            axpy_portable(&mut y2, n, rows, &a, ROWS, bf16);
            close(&y1, &y2, "axpy");
            let d1 = dot_rows(&x, rows, ROWS, bf16);
            close(&d1, &dot_portable(&x, rows, ROWS, bf16), "dot");
        }
    }

    #[test]
    fn a_matrix_of_the_wrong_size_or_f32_is_not_read_directly() {
        let bytes = [0u8; 12];
        assert!(HalfMatrix::new(raw(&bytes, false, 3), 2, 3).is_some());
        assert!(HalfMatrix::new(raw(&bytes, false, 3), 3, 3).is_none());
        let f32raw = Raw {
            dtype: Stored::F32,
            bytes: &bytes,
            cols: 3,
        };
        assert!(HalfMatrix::new(f32raw, 1, 3).is_none());
    }

    /// Not a check: `cargo test --release -p cpm-verify --lib half_kernel_speed -- --ignored
    /// --nocapture` prints the best-of-20 read rate of both kernels on CPM-sized matrices.
    #[test]
    #[ignore]
    fn half_kernel_speed() {
        let (h, inner, vocab) = (2560, 10240, 30000);
        for (name, rows, cols, conv) in [("c_fc", h, inner, true), ("head", vocab, h, false)] {
            let (bytes, _) = store(&values(rows * cols, 1), false, 0);
            let m = HalfMatrix::new(raw(&bytes, false, cols), rows, cols).unwrap();
            for batch in [1, 4] {
                let x = values(batch * if conv { rows } else { cols }, 2);
                let bias = vec![0f32; cols];
                let mut best = f64::MAX;
                for _ in 0..20 {
                    let t = std::time::Instant::now();
                    let y = if conv {
                        conv1d(&x, m, &bias, 1)
                    } else {
                        head(&x, m, 1)
                    };
                    best = best.min(t.elapsed().as_secs_f64());
                    assert!(y[0].is_finite());
                }
                println!(
                    "{name} batch {batch}: {:.2} ms, {:.1} GB/s",
                    best * 1e3,
                    bytes.len() as f64 / best / 1e9
                );
            }
        }
    }
}
