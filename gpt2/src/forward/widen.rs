//! 16-bit floats widened to f32 from (possibly unaligned) little-endian bytes, 8 per
//! instruction with AVX2+F16C: the panels of [`super::panel`] are widened this way. The bottom
//! of the forward pass's layers (widening -> products -> attention -> layer -> model): it
//! imports none of them.

/// 16-bit floats (`src`, `2 * dst.len()` bytes) widened exactly into `dst`: 8 per
/// instruction with AVX2+F16C (half's own slice conversion calls a function per 8 values, which
/// took a quarter of a verification pass), else one at a time.
pub(super) fn widen_16(src: &[u8], dst: &mut [f32], bf16: bool) {
    #[cfg(target_arch = "x86_64")]
    if src.len() == 2 * dst.len() && simd::available() {
        // SAFETY: features checked; `src` holds exactly `dst.len()` values (checked).
        unsafe {
            if bf16 {
                simd::widen::<true>(src, dst)
            } else {
                simd::widen::<false>(src, dst)
            }
        };
        return;
    }
    widen_portable(src, dst, bf16);
}

/// [`widen_16`] without SIMD.
fn widen_portable(src: &[u8], dst: &mut [f32], bf16: bool) {
    for (d, b) in dst.iter_mut().zip(src.chunks_exact(2)) {
        *d = to_f32(b[0], b[1], bf16);
    }
}

/// One little-endian 16-bit float (bf16 or IEEE half) widened.
pub(super) fn to_f32(lo: u8, hi: u8, bf16: bool) -> f32 {
    let bits = u16::from_le_bytes([lo, hi]);
    if bf16 {
        ::half::bf16::from_bits(bits).to_f32()
    } else {
        ::half::f16::from_bits(bits).to_f32()
    }
}

/// Asks the CPU to start loading every cache line of `data` (no-op off x86_64).
pub(super) fn prefetch_range<T>(data: &[T]) {
    #[cfg(target_arch = "x86_64")]
    {
        let (start, bytes) = (data.as_ptr().cast::<u8>(), std::mem::size_of_val(data));
        for at in (0..bytes).step_by(64) {
            use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
            // SAFETY: a prefetch never faults, and `at` is inside the slice anyway.
            unsafe { _mm_prefetch::<_MM_HINT_T0>(start.add(at).cast()) };
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = data;
}

#[cfg(target_arch = "x86_64")]
pub(super) mod simd {
    use std::arch::x86_64::*;

    use super::to_f32;

    /// AVX2, FMA and F16C: what every 16-bit kernel here and in [`super::super::half`] needs.
    pub fn available() -> bool {
        is_x86_feature_detected!("avx2")
            && is_x86_feature_detected!("fma")
            && is_x86_feature_detected!("f16c")
    }

    /// 8 values at `p` widened to f32.
    ///
    /// # Safety
    /// 16 bytes at `p` are readable; the CPU has AVX2 and F16C.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn load8(p: *const u8, bf16: bool) -> __m256 {
        let v = _mm_loadu_si128(p.cast());
        if bf16 {
            _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(v), 16))
        } else {
            _mm256_cvtph_ps(v)
        }
    }

    /// `dst[i]` = value `i` of `src`, widened.
    ///
    /// # Safety
    /// `src.len() == 2 * dst.len()`; the CPU has AVX2 and F16C.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn widen<const BF: bool>(src: &[u8], dst: &mut [f32]) {
        let n = dst.len();
        let (s, d) = (src.as_ptr(), dst.as_mut_ptr());
        let mut i = 0;
        while i + 16 <= n {
            let (a, b) = (load8(s.add(2 * i), BF), load8(s.add(2 * i + 16), BF));
            _mm256_storeu_ps(d.add(i), a);
            _mm256_storeu_ps(d.add(i + 8), b);
            i += 16;
        }
        while i + 8 <= n {
            _mm256_storeu_ps(d.add(i), load8(s.add(2 * i), BF));
            i += 8;
        }
        for j in i..n {
            *d.add(j) = to_f32(*s.add(2 * j), *s.add(2 * j + 1), BF);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn widening_matches_the_half_crate_on_odd_lengths_unaligned_and_special_values() {
        // Infinities, NaN, subnormals, signed zeros and the extremes of both formats.
        let special: [u16; 10] = [
            0x7c00, 0xfc00, 0x7e01, 0x0001, 0x83ff, 0x8000, 0x0000, 0x7bff, 0x7f80, 0xff7f,
        ];
        for bf16 in [false, true] {
            for len in [0, 1, 7, 8, 9, 15, 16, 17, 31, 33, 100] {
                for shift in [0, 1] {
                    let mut bytes = vec![0u8; shift];
                    for i in 0..len {
                        let bits = special[i % 10] ^ ((i as u16 * 0x1357) & 0x03ff);
                        bytes.extend_from_slice(&bits.to_le_bytes());
                    }
                    let src = &bytes[shift..];
                    let mut got = vec![0f32; len];
                    widen_16(src, &mut got, bf16);
                    for (i, (g, b)) in got.iter().zip(src.chunks_exact(2)).enumerate() {
                        let bits = u16::from_le_bytes([b[0], b[1]]);
                        let want = if bf16 {
                            ::half::bf16::from_bits(bits).to_f32()
                        } else {
                            ::half::f16::from_bits(bits).to_f32()
                        };
                        assert!(
                            g.to_bits() == want.to_bits() || (g.is_nan() && want.is_nan()),
                            "bf16 {bf16} len {len} +{shift} [{i}] {bits:#06x}: {g} vs {want}"
                        );
                    }
                }
            }
        }
    }
}
