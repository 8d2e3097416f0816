//! Cache-blocked transposes of 16-, 32- and 64-bit elements held as little-endian bytes.
//!
//! The merged matrices are 5-50 MB, so a naive element loop misses the cache on every write
//! and runs at ~2.7 GB/s. Here the matrix is cut into tall, narrow tiles (256 source rows x 8
//! columns): each destination row receives one contiguous 512-1024 byte run, and the source
//! lines a tile touches stay in L1 for the next tiles to the right. (Square 64 x 64 tiles ran at
//! half the speed: with row strides of 5-20 KiB their lines collide in a few cache sets.)
//! Inside a tile whole 8 x 8 (16-bit) or 4 x 4 (32-bit) blocks are transposed in SSE2
//! registers: 16-byte loads, unpack shuffles, 16-byte stores. The NaN/Inf count the converter
//! reports is taken on the way (elements whose exponent bits are all set), which saves a second
//! pass over the tensor. SSE2 is part of x86-64, so no runtime detection is needed;
//! elsewhere, and for the ragged edges and 64-bit elements, a plain tiled loop does the work.

/// Where the transposed elements go: source element (i, j) lands at element
/// `offset + j * stride + i` of the destination.
#[derive(Debug, Clone, Copy)]
pub struct Dst {
    pub offset: usize,
    pub stride: usize,
}

/// Why a transpose was refused: the buffers are smaller than the shapes say.
#[derive(Debug, PartialEq, Eq)]
pub struct OutOfBounds;

/// Transpose the `rows` x `cols` row-major matrix of `es`-byte elements in `src` into `dst`
/// at `at`, and count the elements whose `mask` bits are all set (a float's exponent mask
/// counts its NaN/Inf values; a mask of 0 counts nothing). `es` must be 2, 4 or 8. Checks every
/// bound once, then runs without checks.
pub fn transpose(
    src: &[u8],
    rows: usize,
    cols: usize,
    dst: &mut [u8],
    at: Dst,
    es: usize,
    mask: u64,
) -> Result<u64, OutOfBounds> {
    if rows == 0 || cols == 0 {
        return Ok(0);
    }
    let src_need = rows.checked_mul(cols).and_then(|n| n.checked_mul(es));
    let dst_need = (cols - 1)
        .checked_mul(at.stride)
        .and_then(|n| n.checked_add(at.offset))
        .and_then(|n| n.checked_add(rows))
        .and_then(|n| n.checked_mul(es));
    let fits =
        matches!((src_need, dst_need), (Some(s), Some(d)) if s <= src.len() && d <= dst.len());
    // Destination columns must not overlap, or the result would depend on the order of writes.
    if !fits || (cols > 1 && at.stride < rows) {
        return Err(OutOfBounds);
    }
    let m = Mat {
        src: src.as_ptr(),
        dst: dst.as_mut_ptr(),
        rows,
        cols,
        at,
        mask,
    };
    // SAFETY: the checks above bound every index the kernels touch: source element (i, j) with
    // i < rows, j < cols lies below rows * cols; its destination offset + j * stride + i lies
    // below offset + (cols - 1) * stride + rows. Accesses are unaligned (the input map gives
    // no alignment).
    let found = unsafe {
        match es {
            2 => m.run::<u16>(),
            4 => m.run::<u32>(),
            8 => m.run::<u64>(),
            _ => return Err(OutOfBounds),
        }
    };
    Ok(if mask == 0 { 0 } else { found })
}

/// The plain definition, element by element: what the fast path must reproduce.
#[cfg(test)]
fn transpose_plain(src: &[u8], rows: usize, cols: usize, dst: &mut [u8], at: Dst, es: usize) {
    for i in 0..rows {
        for j in 0..cols {
            let s = (i * cols + j) * es;
            let d = (at.offset + j * at.stride + i) * es;
            dst[d..d + es].copy_from_slice(&src[s..s + es]);
        }
    }
}

/// Tile height and width, in elements; measured best of 16-1024 x 8-128 on the shapes of CPM's
/// per-rank weights (8-17 GB/s for 16-bit elements where 64 x 64 gave 3-11).
const TILE_ROWS: usize = 256;
const TILE_COLS: usize = 8;

struct Mat {
    src: *const u8,
    dst: *mut u8,
    rows: usize,
    cols: usize,
    at: Dst,
    mask: u64,
}

/// The register kernel for one element size: transposes a `B` x `B` block.
trait Kernel: Copy + Into<u64> {
    /// Block side (0: no kernel, the plain loop does everything).
    const B: usize;
    /// Transposes the block and returns how many of its elements have all `m.mask` bits set.
    /// # Safety
    /// Source rows `i0..i0 + B`, columns `j0..j0 + B`, and their destinations must be in bounds.
    unsafe fn block(m: &Mat, i0: usize, j0: usize) -> u64;
}

impl Mat {
    /// # Safety
    /// The bounds checked in [`transpose`].
    unsafe fn run<T: Kernel>(&self) -> u64 {
        let b = T::B.max(1);
        let mut found = 0;
        for i0 in (0..self.rows).step_by(TILE_ROWS) {
            let i1 = (i0 + TILE_ROWS).min(self.rows);
            for j0 in (0..self.cols).step_by(TILE_COLS) {
                let j1 = (j0 + TILE_COLS).min(self.cols);
                // Whole blocks, then the ragged right and bottom strips of the tile.
                // Without a kernel (B = 0) the plain loop takes the whole tile.
                let (bi, bj) = if T::B == 0 {
                    (i0, j0)
                } else {
                    (i0 + (i1 - i0) / b * b, j0 + (j1 - j0) / b * b)
                };
                if T::B > 0 {
                    for i in (i0..bi).step_by(b) {
                        for j in (j0..bj).step_by(b) {
                            found += T::block(self, i, j);
                        }
                    }
                }
                found += self.plain::<T>(i0..bi, bj..j1);
                found += self.plain::<T>(bi..i1, j0..j1);
            }
        }
        found
    }

    /// # Safety
    /// As [`Mat::run`], for the given rows and columns.
    unsafe fn plain<T: Copy + Into<u64>>(
        &self,
        rows: std::ops::Range<usize>,
        cols: std::ops::Range<usize>,
    ) -> u64 {
        let es = std::mem::size_of::<T>();
        let mut found = 0;
        for j in cols {
            let d = self.at.offset + j * self.at.stride;
            for i in rows.clone() {
                let v =
                    std::ptr::read_unaligned(self.src.add((i * self.cols + j) * es) as *const T);
                std::ptr::write_unaligned(self.dst.add((d + i) * es) as *mut T, v);
                found += (v.into() & self.mask == self.mask) as u64;
            }
        }
        found
    }

    /// Source element (i, j) and destination element (i, j), as byte pointers.
    /// # Safety
    /// Both elements lie inside the matrices [`transpose`] checked (`i < rows`, `j < cols`).
    #[cfg(target_arch = "x86_64")]
    unsafe fn ptrs(&self, i: usize, j: usize, es: usize) -> (*const u8, *mut u8) {
        (
            self.src.add((i * self.cols + j) * es),
            self.dst.add((self.at.offset + j * self.at.stride + i) * es),
        )
    }
}

impl Kernel for u64 {
    const B: usize = 0;
    /// # Safety
    /// Never called (`B` is 0); it touches no memory.
    unsafe fn block(_: &Mat, _: usize, _: usize) -> u64 {
        0
    }
}

#[cfg(not(target_arch = "x86_64"))]
impl Kernel for u16 {
    const B: usize = 0;
    /// # Safety
    /// Never called (`B` is 0); it touches no memory.
    unsafe fn block(_: &Mat, _: usize, _: usize) -> u64 {
        0
    }
}

#[cfg(not(target_arch = "x86_64"))]
impl Kernel for u32 {
    const B: usize = 0;
    /// # Safety
    /// Never called (`B` is 0); it touches no memory.
    unsafe fn block(_: &Mat, _: usize, _: usize) -> u64 {
        0
    }
}

#[cfg(target_arch = "x86_64")]
pub(crate) mod sse2 {
    use super::{Kernel, Mat};
    use std::arch::x86_64::*;

    impl Kernel for u16 {
        const B: usize = 8;
        /// 8 rows of 8 halves: interleave 16-, then 32-, then 64-bit lanes (24 shuffles).
        ///
        /// # Safety
        /// As [`Kernel::block`]: the block and its destination are in bounds.
        unsafe fn block(m: &Mat, i0: usize, j0: usize) -> u64 {
            let row = |k: usize| _mm_loadu_si128(m.ptrs(i0 + k, j0, 2).0 as *const __m128i);
            let (a0, a1, a2, a3) = (row(0), row(1), row(2), row(3));
            let (a4, a5, a6, a7) = (row(4), row(5), row(6), row(7));
            let e = _mm_set1_epi16(m.mask as u16 as i16);
            let found = count(&[a0, a1, a2, a3, a4, a5, a6, a7], |a| {
                _mm_cmpeq_epi16(_mm_and_si128(a, e), e)
            }) / 2;
            let cols = transpose_8x8_u16([a0, a1, a2, a3, a4, a5, a6, a7]);
            for (k, c) in cols.into_iter().enumerate() {
                _mm_storeu_si128(m.ptrs(i0, j0 + k, 2).1 as *mut __m128i, c);
            }
            found
        }
    }

    /// The transpose of an 8 x 8 block of 16-bit lanes held in eight registers (row k in
    /// `r[k]`, column k out): interleave 16-, then 32-, then 64-bit lanes (24 shuffles). Also
    /// used by `cpm-diff`'s transposed comparison.
    pub(crate) fn transpose_8x8_u16(r: [__m128i; 8]) -> [__m128i; 8] {
        // SAFETY: register-only SSE2 intrinsics; SSE2 is part of every x86-64 CPU.
        unsafe {
            let (t0, t1) = (
                _mm_unpacklo_epi16(r[0], r[1]),
                _mm_unpackhi_epi16(r[0], r[1]),
            );
            let (t2, t3) = (
                _mm_unpacklo_epi16(r[2], r[3]),
                _mm_unpackhi_epi16(r[2], r[3]),
            );
            let (t4, t5) = (
                _mm_unpacklo_epi16(r[4], r[5]),
                _mm_unpackhi_epi16(r[4], r[5]),
            );
            let (t6, t7) = (
                _mm_unpacklo_epi16(r[6], r[7]),
                _mm_unpackhi_epi16(r[6], r[7]),
            );
            let (u0, u1) = (_mm_unpacklo_epi32(t0, t2), _mm_unpackhi_epi32(t0, t2));
            let (u2, u3) = (_mm_unpacklo_epi32(t1, t3), _mm_unpackhi_epi32(t1, t3));
            let (u4, u5) = (_mm_unpacklo_epi32(t4, t6), _mm_unpackhi_epi32(t4, t6));
            let (u6, u7) = (_mm_unpacklo_epi32(t5, t7), _mm_unpackhi_epi32(t5, t7));
            [
                _mm_unpacklo_epi64(u0, u4),
                _mm_unpackhi_epi64(u0, u4),
                _mm_unpacklo_epi64(u1, u5),
                _mm_unpackhi_epi64(u1, u5),
                _mm_unpacklo_epi64(u2, u6),
                _mm_unpackhi_epi64(u2, u6),
                _mm_unpacklo_epi64(u3, u7),
                _mm_unpackhi_epi64(u3, u7),
            ]
        }
    }

    impl Kernel for u32 {
        const B: usize = 4;
        /// 4 rows of 4 words: interleave 32-, then 64-bit lanes (8 shuffles).
        ///
        /// # Safety
        /// As [`Kernel::block`]: the block and its destination are in bounds.
        unsafe fn block(m: &Mat, i0: usize, j0: usize) -> u64 {
            let row = |k: usize| _mm_loadu_si128(m.ptrs(i0 + k, j0, 4).0 as *const __m128i);
            let (a0, a1, a2, a3) = (row(0), row(1), row(2), row(3));
            let e = _mm_set1_epi32(m.mask as u32 as i32);
            let found = count(&[a0, a1, a2, a3], |a| {
                _mm_cmpeq_epi32(_mm_and_si128(a, e), e)
            }) / 4;
            let (t0, t1) = (_mm_unpacklo_epi32(a0, a1), _mm_unpackhi_epi32(a0, a1));
            let (t2, t3) = (_mm_unpacklo_epi32(a2, a3), _mm_unpackhi_epi32(a2, a3));
            let cols = [
                _mm_unpacklo_epi64(t0, t2),
                _mm_unpackhi_epi64(t0, t2),
                _mm_unpacklo_epi64(t1, t3),
                _mm_unpackhi_epi64(t1, t3),
            ];
            for (k, c) in cols.into_iter().enumerate() {
                _mm_storeu_si128(m.ptrs(i0, j0 + k, 4).1 as *mut __m128i, c);
            }
            found
        }
    }

    /// Bytes of the lanes `hit` marks in `rows`. NaN/Inf are rare: one test per block decides
    /// whether to count at all.
    ///
    /// # Safety
    /// SSE2 only, which every x86_64 CPU has; reads nothing but its arguments.
    #[inline(always)]
    unsafe fn count(rows: &[__m128i], hit: impl Fn(__m128i) -> __m128i) -> u64 {
        let any = rows
            .iter()
            .fold(_mm_setzero_si128(), |acc, &a| _mm_or_si128(acc, hit(a)));
        if _mm_movemask_epi8(any) == 0 {
            return 0;
        }
        rows.iter()
            .map(|&a| _mm_movemask_epi8(hit(a)).count_ones() as u64)
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Distinct bytes everywhere, so a misplaced byte or a swapped half shows.
    fn pattern(n: usize, seed: u32) -> Vec<u8> {
        let mut x = seed.wrapping_mul(2_654_435_761).wrapping_add(1);
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                (x >> 8) as u8
            })
            .collect()
    }

    /// Exponent masks of f16, bf16, f32 and f64 by element size (f16 and bf16 share 2 bytes).
    fn masks(es: usize) -> &'static [u64] {
        match es {
            2 => &[0x7c00, 0x7f80],
            4 => &[0x7f80_0000],
            _ => &[0x7ff0_0000_0000_0000],
        }
    }

    /// The plain count: elements of `src` with every `mask` bit set.
    fn plain_count(src: &[u8], es: usize, mask: u64) -> u64 {
        src.chunks_exact(es)
            .filter(|c| {
                let mut w = [0u8; 8];
                w[..es].copy_from_slice(c);
                u64::from_le_bytes(w) & mask == mask
            })
            .count() as u64
    }

    /// `pattern` with about one element in `every` given all of `mask`'s bits (a NaN/Inf).
    fn sprinkle(mut src: Vec<u8>, es: usize, mask: u64, every: usize) -> Vec<u8> {
        let m = mask.to_le_bytes();
        for (k, c) in src.chunks_exact_mut(es).enumerate() {
            if (k * 7919) % every == 3 {
                for (b, mb) in c.iter_mut().zip(m) {
                    *b |= mb;
                }
            }
        }
        src
    }

    /// The fast transpose writes exactly what the plain loop writes, and nothing outside the
    /// destination columns (the canary bytes between them survive), and counts the NaN/Inf
    /// the plain count finds, for every element size and float exponent, on shapes that are 1
    /// row, 1 column, below, at and off the block and tile sides.
    #[test]
    fn blocked_simd_transpose_matches_the_plain_loop_on_odd_shapes() {
        let sides = [
            1, 2, 3, 4, 5, 7, 8, 9, 15, 16, 17, 63, 64, 65, 130, 257, 300,
        ];
        for es in [2, 4, 8] {
            for &rows in &sides {
                for &cols in &sides {
                    for (k, (offset, pad)) in [(0, 0), (3, 5)].into_iter().enumerate() {
                        let at = Dst {
                            offset,
                            stride: rows + pad,
                        };
                        let mask = masks(es)[k % masks(es).len()];
                        let src = pattern(rows * cols * es, (rows * 131 + cols) as u32);
                        let src = sprinkle(src, es, mask, 5 + k * 90);
                        let n = (offset + cols * at.stride + 3) * es;
                        let mut want = pattern(n, 7);
                        let mut got = want.clone();
                        transpose_plain(&src, rows, cols, &mut want, at, es);
                        let found = transpose(&src, rows, cols, &mut got, at, es, mask).unwrap();
                        let what =
                            format!("es {es}, {rows} x {cols}, offset {offset}, mask {mask:x}");
                        assert!(got == want, "{what}");
                        assert_eq!(found, plain_count(&src, es, mask), "{what}");
                    }
                }
            }
        }
    }

    /// A source read through an unaligned slice (as from a memory map at any offset) gives the
    /// same result as an aligned one.
    #[test]
    fn blocked_transpose_of_an_unaligned_source_matches_the_plain_loop() {
        let (rows, cols) = (37, 70);
        for es in [2, 4, 8] {
            let buf = pattern(rows * cols * es + 1, 3);
            let src = &buf[1..];
            let at = Dst {
                offset: 1,
                stride: rows,
            };
            let mut want = vec![0u8; (1 + rows * cols) * es + 1];
            let mut got = want.clone();
            transpose_plain(src, rows, cols, &mut want, at, es);
            transpose(src, rows, cols, &mut got[1..], at, es, masks(es)[0]).unwrap();
            assert_eq!(&got[1..], &want[..want.len() - 1], "es {es}");
        }
    }

    /// Buffers too small for the shape, overlapping destination columns and unknown element
    /// sizes are refused before anything is written.
    #[test]
    fn transpose_refuses_shapes_its_buffers_cannot_hold() {
        let src = pattern(4 * 5 * 2, 9);
        let mut dst = vec![0u8; 4 * 5 * 2];
        let at = Dst {
            offset: 0,
            stride: 4,
        };
        assert!(transpose(&src, 4, 5, &mut dst, at, 2, 0).is_ok());
        let before = dst.clone();
        assert_eq!(transpose(&src, 5, 5, &mut dst, at, 2, 0), Err(OutOfBounds));
        let shifted = Dst { offset: 1, ..at };
        assert_eq!(
            transpose(&src, 4, 5, &mut dst, shifted, 2, 0),
            Err(OutOfBounds)
        );
        let narrow = Dst { stride: 3, ..at };
        assert_eq!(
            transpose(&src, 4, 5, &mut dst, narrow, 2, 0),
            Err(OutOfBounds)
        );
        assert_eq!(transpose(&src, 2, 2, &mut dst, at, 3, 0), Err(OutOfBounds));
        assert_eq!(
            transpose(&src, usize::MAX, 2, &mut dst, at, 2, 0),
            Err(OutOfBounds)
        );
        assert_eq!(dst, before, "a refused transpose wrote");
    }
}
