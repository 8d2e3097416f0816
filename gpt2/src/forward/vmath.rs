//! Element-wise math of the forward pass: the activations, LayerNorm and softmax as
//! transformers computes them, with GPT-2's GELU (tanh form) and the softmax's exponentials 8
//! values per instruction with AVX2+FMA.
//!
//! `0.5 x (1 + tanh(u))` equals `x / (1 + exp(-2u))` exactly in real arithmetic, and the second
//! needs only `exp`, which vectorizes with a Cephes-style polynomial (about 1 ulp). The results
//! differ from the scalar [`activate`] by a few ulp, far inside the verifier's tolerances; the
//! scalar libm tanh took 6% of a verification pass.

use crate::model::Activation;

/// `v = gelu_tanh(v)` for every value.
pub fn gelu_tanh(v: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if simd::available() {
        // SAFETY: the CPU has AVX2 and FMA (checked).
        unsafe { simd::gelu(v) };
        return;
    }
    for x in v.iter_mut() {
        *x = activate(Activation::GeluTanh, *x);
    }
}

/// `row[i] = exp(row[i] - max)` for every value; returns their sum, accumulated in f64.
pub fn exp_shifted(row: &mut [f32], max: f32) -> f64 {
    #[cfg(target_arch = "x86_64")]
    if simd::available() {
        // SAFETY: the CPU has AVX2 and FMA (checked).
        return unsafe { simd::exp_shifted(row, max) };
    }
    let mut sum = 0f64;
    for v in row.iter_mut() {
        *v = (*v - max).exp();
        sum += f64::from(*v);
    }
    sum
}

/// The activation of one value, as transformers computes it (in f32 unless noted).
pub fn activate(act: Activation, x: f32) -> f32 {
    match act {
        // NewGELUActivation: 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))).
        Activation::GeluTanh => {
            0.5 * x * (1.0 + (0.797_884_6_f32 * (x + 0.044_715 * x * x * x)).tanh())
        }
        // nn.functional.gelu: 0.5 x (1 + erf(x / sqrt 2)); erf in f64 (std has none).
        Activation::GeluErf => {
            let xd = f64::from(x);
            (0.5 * xd * (1.0 + libm::erf(xd * std::f64::consts::FRAC_1_SQRT_2))) as f32
        }
        Activation::Relu => x.max(0.0),
        Activation::Silu => x / (1.0 + (-x).exp()),
        Activation::QuickGelu => x / (1.0 + (-1.702 * x).exp()),
    }
}

/// LayerNorm of each `width`-long row of `x`, in place: biased variance, eps inside the root.
/// Mean and variance are accumulated in f64 (two passes) so that wide rows with a large mean
/// lose nothing to cancellation.
pub fn layer_norm(x: &mut [f32], width: usize, weight: &[f32], bias: &[f32], eps: f64) {
    for row in x.chunks_exact_mut(width) {
        let mean = row.iter().map(|&v| f64::from(v)).sum::<f64>() / width as f64;
        let var = row
            .iter()
            .map(|&v| {
                let d = f64::from(v) - mean;
                d * d
            })
            .sum::<f64>()
            / width as f64;
        let inv = 1.0 / (var + eps).sqrt();
        for ((v, &w), &b) in row.iter_mut().zip(weight).zip(bias) {
            *v = ((f64::from(*v) - mean) * inv) as f32 * w + b;
        }
    }
}

/// Softmax of `row` in place, in f32 with an f64 sum, after subtracting the maximum.
pub fn softmax(row: &mut [f32]) {
    let m = row.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
    let sum = exp_shifted(row, m);
    let inv = (1.0 / sum) as f32;
    for v in row.iter_mut() {
        *v *= inv;
    }
}

#[cfg(target_arch = "x86_64")]
mod simd {
    use std::arch::x86_64::*;

    use super::{activate, Activation};

    pub fn available() -> bool {
        is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma")
    }

    /// `exp(y)` for 8 values, about 1 ulp: +inf above 88, 0 below -87 (where f32 results turn
    /// subnormal; a softmax or `1 + exp` cannot tell), NaN kept.
    ///
    /// # Safety
    /// The CPU has AVX2 and FMA (register work only, no memory is read).
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn exp8(y_in: __m256) -> __m256 {
        let y = _mm256_min_ps(
            _mm256_max_ps(y_in, _mm256_set1_ps(-87.0)),
            _mm256_set1_ps(88.0),
        );
        let n = _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(
            _mm256_mul_ps(y, _mm256_set1_ps(std::f32::consts::LOG2_E)),
        );
        // r = y - n ln2, ln2 split in two so that n * hi is exact.
        let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693_359_4), y);
        let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.121_944_4e-4), r);
        let mut p = _mm256_set1_ps(1.987_569_1e-4);
        for c in [
            1.398_2e-3,
            8.333_452e-3,
            4.166_579_6e-2,
            1.666_666_5e-1,
            0.5,
        ] {
            p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(c));
        }
        let r2 = _mm256_mul_ps(r, r);
        let p = _mm256_fmadd_ps(p, r2, _mm256_add_ps(r, _mm256_set1_ps(1.0)));
        // 2^n through the exponent bits (n is within -126..=127 after the clamp).
        let bits = _mm256_slli_epi32::<23>(_mm256_add_epi32(
            _mm256_cvtps_epi32(n),
            _mm256_set1_epi32(127),
        ));
        let e = _mm256_mul_ps(p, _mm256_castsi256_ps(bits));
        let over = _mm256_cmp_ps::<_CMP_GT_OQ>(y_in, _mm256_set1_ps(88.0));
        let under = _mm256_cmp_ps::<_CMP_LT_OQ>(y_in, _mm256_set1_ps(-87.0));
        let nan = _mm256_cmp_ps::<_CMP_UNORD_Q>(y_in, y_in);
        let e = _mm256_blendv_ps(e, _mm256_set1_ps(f32::INFINITY), over);
        let e = _mm256_blendv_ps(e, _mm256_setzero_ps(), under);
        _mm256_blendv_ps(e, y_in, nan)
    }

    /// See [`super::exp_shifted`].
    ///
    /// # Safety
    /// The CPU has AVX2 and FMA.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn exp_shifted(row: &mut [f32], max: f32) -> f64 {
        let m = _mm256_set1_ps(max);
        let (mut lo, mut hi) = (_mm256_setzero_pd(), _mm256_setzero_pd());
        let mut chunks = row.chunks_exact_mut(8);
        for c in &mut chunks {
            let e = exp8(_mm256_sub_ps(_mm256_loadu_ps(c.as_ptr()), m));
            _mm256_storeu_ps(c.as_mut_ptr(), e);
            lo = _mm256_add_pd(lo, _mm256_cvtps_pd(_mm256_castps256_ps128(e)));
            hi = _mm256_add_pd(hi, _mm256_cvtps_pd(_mm256_extractf128_ps::<1>(e)));
        }
        let mut lanes = [0f64; 4];
        _mm256_storeu_pd(lanes.as_mut_ptr(), _mm256_add_pd(lo, hi));
        let mut sum = lanes.iter().sum::<f64>();
        for v in chunks.into_remainder() {
            *v = (*v - max).exp();
            sum += f64::from(*v);
        }
        sum
    }

    /// # Safety
    /// The CPU has AVX2 and FMA.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn gelu(v: &mut [f32]) {
        let mut chunks = v.chunks_exact_mut(8);
        for c in &mut chunks {
            let x = _mm256_loadu_ps(c.as_ptr());
            let x3 = _mm256_mul_ps(_mm256_mul_ps(x, x), x);
            let u = _mm256_fmadd_ps(x3, _mm256_set1_ps(0.044_715), x);
            let u = _mm256_mul_ps(u, _mm256_set1_ps(-2.0 * 0.797_884_6));
            let d = _mm256_add_ps(_mm256_set1_ps(1.0), exp8(u));
            _mm256_storeu_ps(c.as_mut_ptr(), _mm256_div_ps(x, d));
        }
        for x in chunks.into_remainder() {
            *x = activate(Activation::GeluTanh, *x);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vector_gelu_matches_the_scalar_formula_on_odd_lengths_and_extremes() {
        // Lengths off the vector width; values from tiny to past both saturation points, the
        // infinities, and every 8-lane position for each.
        let mut xs: Vec<f32> = (-2000..=2000).map(|i| i as f32 * 0.0073).collect();
        xs.extend([
            0.0, -0.0, 1e-30, -1e-30, 1e-6, -1e-6, 30.0, -30.0, 1e4, -1e4, 88.0, -88.0,
        ]);
        xs.extend([
            f32::INFINITY,
            f32::NEG_INFINITY,
            f32::MAX,
            f32::MIN,
            -100.0,
            100.0,
        ]);
        for len in [0, 1, 7, 8, 9, 17, xs.len()] {
            for start in 0..8.min(xs.len() - len + 1) {
                let src = &xs[start..start + len];
                let mut got = src.to_vec();
                gelu_tanh(&mut got);
                for (&x, &g) in src.iter().zip(&got) {
                    let want = activate(Activation::GeluTanh, x);
                    // The scalar form's 1 + tanh(u) loses up to half an ulp of 1 where tanh is
                    // near -1: that, times |x| / 2, is as far as the two may fairly differ.
                    let ok = if want.is_nan() {
                        g.is_nan()
                    } else if want.is_finite() {
                        (g - want).abs() <= f32::EPSILON * (8.0 * want.abs() + x.abs())
                    } else {
                        g == want
                    };
                    assert!(ok, "gelu({x:e}) = {g:e}, scalar {want:e} (len {len})");
                }
            }
        }
    }
}

#[cfg(test)]
mod softmax_tests {
    use super::*;

    #[test]
    fn vector_exponentials_match_libm_and_their_sum_on_odd_lengths() {
        // Softmax inputs after the shift are <= 0: from 0 down past where exp underflows, with
        // -inf (a masked score) included; lengths off the vector width.
        let mut xs: Vec<f32> = (0..3000).map(|i| -(i as f32) * 0.037).collect();
        xs.extend([
            -87.5,
            -100.0,
            -1e30,
            f32::NEG_INFINITY,
            -0.0,
            -1e-7,
            f32::NAN,
        ]);
        for len in [0, 1, 7, 8, 9, 23, xs.len()] {
            for shift in [0, 3] {
                let src: Vec<f32> = xs.iter().skip(shift).take(len).map(|v| v + 2.5).collect();
                let mut got = src.clone();
                let sum = exp_shifted(&mut got, 2.5);
                let mut want_sum = 0f64;
                for (&x, &g) in src.iter().zip(&got) {
                    let want = (x - 2.5).exp();
                    want_sum += f64::from(want);
                    // 2 ulp, or below exp(-87), about f32's normal range (0 to a softmax).
                    let ok = (g - want).abs() <= 2.0 * f32::EPSILON * want + 1.7e-38
                        || (g.is_nan() && want.is_nan());
                    assert!(ok, "exp({}) = {g:e}, libm {want:e}", x - 2.5);
                }
                let close = (sum - want_sum).abs() <= 1e-6 * want_sum.max(1e-30);
                assert!(
                    close || (sum.is_nan() && want_sum.is_nan()),
                    "{sum} vs {want_sum}"
                );
            }
        }
    }
}

#[cfg(test)]
mod scalar_tests {
    use super::*;

    #[test]
    fn activations_match_known_values() {
        // torch: F.gelu(1.0) = 0.8413447, gelu(approximate='tanh')(1.0) = 0.8411920
        assert!((activate(Activation::GeluErf, 1.0) - 0.841_344_7).abs() < 1e-6);
        assert!((activate(Activation::GeluTanh, 1.0) - 0.841_192).abs() < 1e-6);
        assert_eq!(activate(Activation::Relu, -2.0), 0.0);
        assert!((activate(Activation::Silu, 1.0) - 0.731_058_6).abs() < 1e-6);
    }

    #[test]
    fn layer_norm_survives_a_large_mean() {
        // A naive f32 E[x^2] - E[x]^2 loses the variance of 1e4 + small values entirely.
        let mut x: Vec<f32> = (0..64).map(|i| 1e4 + (i % 2) as f32).collect();
        layer_norm(&mut x, 64, &[1.0; 64], &[0.0; 64], 0.0);
        assert!(
            (x[0] + 1.0).abs() < 1e-3 && (x[1] - 1.0).abs() < 1e-3,
            "{:?}",
            &x[..2]
        );
    }

    #[test]
    fn softmax_of_large_values_is_finite_and_sums_to_one() {
        let mut r = vec![1000.0f32, 999.0, -1e30];
        softmax(&mut r);
        assert!((r.iter().sum::<f32>() - 1.0).abs() < 1e-6);
        assert!((r[0] / r[1] - std::f32::consts::E).abs() < 1e-4);
    }
}
