//! Merging one tensor's model-parallel parts into the Hugging Face layout: concatenation on a
//! dimension, the query/key/value interleave, replicated-copy checks, a blocked transpose, and
//! dtype casts. Works on raw little-endian bytes; knows no tensor names.

use std::borrow::Cow;

use half::{bf16, f16};

use crate::error::{Error, Result};
use crate::mapping::Split;
use crate::plan::Entry;
use crate::torch::Dtype;

/// One rectangular piece of the merged matrix: rows `src_rows` of rank `rank`'s part land at
/// (`dst_row`, `dst_col`) of the merged (untransposed) matrix.
struct Block {
    rank: usize,
    src_row: usize,
    rows: usize,
    dst_row: usize,
    dst_col: usize,
}

/// Merge the parts (row-major bytes in the source dtype, one per rank) of `e` into its output
/// layout, still in the source dtype, as a sequence of byte pieces to be written in order.
/// Untransposed merges are pure reordering of whole rows, so their pieces borrow the input
/// (no copy); transposes produce one owned buffer, taken from `alloc` (which may recycle one:
/// its contents do not matter, every byte is overwritten). `names` are the ranks' files, for
/// messages.
pub fn merge<'a>(
    e: &Entry,
    parts: Vec<Cow<'a, [u8]>>,
    names: &[String],
    alloc: &mut dyn FnMut(usize) -> Vec<u8>,
) -> Result<Vec<Cow<'a, [u8]>>> {
    let es = e.source_dtype.size();
    let (rows, cols) = match e.rank_shapes[0].as_slice() {
        [n] => (*n as usize, 1),
        [r, c] => (*r as usize, *c as usize),
        other => {
            return Err(Error::merge(format!(
                "tensor `{}`: unexpected shape {other:?}",
                e.source
            )))
        }
    };
    let part_bytes = rows * cols * es;
    for (r, p) in parts.iter().enumerate() {
        if p.len() != part_bytes {
            return Err(Error::merge(format!(
                "tensor `{}` on rank {r} ({}): {} bytes, expected {part_bytes}",
                e.source,
                names[r],
                p.len()
            )));
        }
    }
    let p = parts.len();
    let blocks: Vec<Block> = match e.split {
        Split::Replicated => {
            for (r, part) in parts.iter().enumerate().skip(1) {
                if part[..] != parts[0][..] {
                    let at = part
                        .chunks(es)
                        .zip(parts[0].chunks(es))
                        .position(|(a, b)| a != b)
                        .unwrap_or(0);
                    return Err(Error::merge(format!(
                        "tensor `{}` is replicated, so every rank must hold the same bits, but rank 0 ({}) and \
                         rank {r} ({}) differ (first at element {at}); the checkpoint is inconsistent",
                        e.source, names[0], names[r]
                    )));
                }
            }
            vec![Block {
                rank: 0,
                src_row: 0,
                rows,
                dst_row: 0,
                dst_col: 0,
            }]
        }
        Split::Dim0 => (0..p)
            .map(|r| Block {
                rank: r,
                src_row: 0,
                rows,
                dst_row: r * rows,
                dst_col: 0,
            })
            .collect(),
        Split::Dim1 => (0..p)
            .map(|r| Block {
                rank: r,
                src_row: 0,
                rows,
                dst_row: 0,
                dst_col: r * cols,
            })
            .collect(),
        Split::QkvDim0 => {
            // Rank r holds [q_r; k_r; v_r]; GPT-2 wants [q_0..q_p; k_0..k_p; v_0..v_p].
            let third = rows / 3;
            let mut b = Vec::with_capacity(3 * p);
            for j in 0..3 {
                for r in 0..p {
                    b.push(Block {
                        rank: r,
                        src_row: j * third,
                        rows: third,
                        dst_row: (j * p + r) * third,
                        dst_col: 0,
                    });
                }
            }
            b
        }
    };
    let (m_rows, m_cols) = match e.split {
        Split::Replicated => (rows, cols),
        Split::Dim1 => (rows, cols * p),
        _ => (rows * p, cols),
    };
    // Whole-row blocks in destination order: the pieces are slices of the parts.
    if !e.transpose && blocks.iter().all(|b| b.dst_col == 0) {
        let row = cols * es;
        return Ok(blocks
            .iter()
            .map(|b| match &parts[b.rank] {
                Cow::Borrowed(s) => Cow::Borrowed(&s[b.src_row * row..(b.src_row + b.rows) * row]),
                Cow::Owned(v) => {
                    Cow::Owned(v[b.src_row * row..(b.src_row + b.rows) * row].to_vec())
                }
            })
            .collect());
    }
    let mut out = alloc(m_rows * m_cols * es);
    for b in &blocks {
        let src = &parts[b.rank][b.src_row * cols * es..(b.src_row + b.rows) * cols * es];
        let g = Geometry {
            rows: b.rows,
            cols,
            dst_row: b.dst_row,
            dst_col: b.dst_col,
            m_rows,
            m_cols,
        };
        match (e.transpose, es) {
            (false, _) => place_rows(&mut out, src, &g, es),
            (true, 2) => place_transposed::<u16>(&mut out, src, &g),
            (true, 4) => place_transposed::<u32>(&mut out, src, &g),
            (true, 8) => place_transposed::<u64>(&mut out, src, &g),
            (true, _) => place_transposed::<u8>(&mut out, src, &g),
        }
    }
    Ok(vec![Cow::Owned(out)])
}

struct Geometry {
    rows: usize,
    cols: usize,
    dst_row: usize,
    dst_col: usize,
    m_rows: usize,
    m_cols: usize,
}

fn place_rows(out: &mut [u8], src: &[u8], g: &Geometry, es: usize) {
    let w = g.cols * es;
    for i in 0..g.rows {
        let d = ((g.dst_row + i) * g.m_cols + g.dst_col) * es;
        out[d..d + w].copy_from_slice(&src[i * w..(i + 1) * w]);
    }
}

/// Plain-old-data elements we move during transposes.
trait Elem: Copy {}
impl Elem for u8 {}
impl Elem for u16 {}
impl Elem for u32 {}
impl Elem for u64 {}

/// out is the transposed merged matrix, [m_cols, m_rows]. Tiles keep both sides in cache; the
/// inner loop reads a column of the source tile and writes a contiguous run of the output.
fn place_transposed<T: Elem>(out: &mut [u8], src: &[u8], g: &Geometry) {
    const TILE: usize = 64;
    let es = std::mem::size_of::<T>();
    // Every index below stays within these bounds; checking them once lets the loops run
    // without per-element checks.
    assert!(src.len() >= g.rows * g.cols * es);
    assert!(g.dst_col + g.cols <= g.m_cols && g.dst_row + g.rows <= g.m_rows);
    assert!(out.len() >= g.m_rows * g.m_cols * es);
    let sp = src.as_ptr();
    let op = out.as_mut_ptr();
    for i0 in (0..g.rows).step_by(TILE) {
        let i1 = (i0 + TILE).min(g.rows);
        for j0 in (0..g.cols).step_by(TILE) {
            let j1 = (j0 + TILE).min(g.cols);
            for j in j0..j1 {
                let drow = (g.dst_col + j) * g.m_rows + g.dst_row;
                for i in i0..i1 {
                    // SAFETY: i < rows, j < cols, so (i * cols + j) < rows * cols <= src elements;
                    // drow + i < (dst_col + cols) * m_rows <= m_cols * m_rows <= out elements
                    // (asserted above). Unaligned accesses: the input map gives no alignment.
                    unsafe {
                        let v = std::ptr::read_unaligned(sp.add((i * g.cols + j) * es) as *const T);
                        std::ptr::write_unaligned(op.add((drow + i) * es) as *mut T, v);
                    }
                }
            }
        }
    }
}

fn decode(bytes: &[u8], dtype: Dtype) -> impl Iterator<Item = f64> + '_ {
    bytes.chunks_exact(dtype.size()).map(move |c| match dtype {
        Dtype::F16 => f16::from_bits(u16::from_le_bytes([c[0], c[1]])).to_f64(),
        Dtype::BF16 => bf16::from_bits(u16::from_le_bytes([c[0], c[1]])).to_f64(),
        Dtype::F32 => f32::from_le_bytes([c[0], c[1], c[2], c[3]]) as f64,
        Dtype::F64 => f64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]),
        // Plans only admit floating-point weights.
        _ => 0.0,
    })
}

/// How many elements are NaN or infinite (exponent bits all ones).
pub fn count_non_finite(bytes: &[u8], dtype: Dtype) -> u64 {
    match dtype {
        Dtype::F16 => count_exponent_all_ones::<u16>(bytes, 0x7c00),
        Dtype::BF16 => count_exponent_all_ones::<u16>(bytes, 0x7f80),
        Dtype::F32 => count_exponent_all_ones::<u32>(bytes, 0x7f80_0000),
        _ => decode(bytes, dtype).filter(|x| !x.is_finite()).count() as u64,
    }
}

/// Lanes of 16 or 32 bits in a u64, for the word-at-a-time scan below.
trait Lane {
    const BITS: u32;
}
impl Lane for u16 {
    const BITS: u32 = 16;
}
impl Lane for u32 {
    const BITS: u32 = 32;
}

/// Count lanes whose `exp` bits are all set, eight bytes at a time: with x = (w & E) ^ E, a lane
/// is non-finite iff it is zero, and (x + E) sets the lane's top bit iff it is not (the sum of
/// two values below the top bit cannot carry into the next lane). This runs at memory speed;
/// the naive per-element loop was a tenth of the conversion's time.
fn count_exponent_all_ones<L: Lane>(bytes: &[u8], exp: u64) -> u64 {
    let lanes = 64 / L::BITS;
    let mut e = 0u64;
    let mut top = 0u64;
    for i in 0..lanes {
        e |= exp << (i * L::BITS);
        top |= 1u64 << ((i + 1) * L::BITS - 1);
    }
    let mut finite = 0u64;
    let mut words = 0u64;
    let mut chunks = bytes.chunks_exact(8);
    for c in &mut chunks {
        let w = u64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]);
        let x = (w & e) ^ e;
        finite += ((x + e) & top).count_ones() as u64;
        words += 1;
    }
    let mut bad = words * lanes as u64 - finite;
    let lane_bytes = (L::BITS / 8) as usize;
    for c in chunks.remainder().chunks_exact(lane_bytes) {
        let mut v = 0u64;
        for (i, b) in c.iter().enumerate() {
            v |= (*b as u64) << (8 * i);
        }
        bad += (v & exp == exp) as u64;
    }
    bad
}

/// Convert `bytes` from one float dtype to another. A finite value that becomes infinite is an
/// error (returned as the first such value and the count); NaN and Inf pass through.
pub fn cast(bytes: &[u8], from: Dtype, to: Dtype) -> std::result::Result<Vec<u8>, (f64, u64)> {
    let n = bytes.len() / from.size();
    let mut out = Vec::with_capacity(n * to.size());
    let mut overflow = (0.0, 0u64);
    for x in decode(bytes, from) {
        let (finite_in, finite_out) = match to {
            Dtype::F16 => {
                let y = f16::from_f64(x);
                out.extend_from_slice(&y.to_bits().to_le_bytes());
                (x.is_finite(), y.is_finite())
            }
            Dtype::BF16 => {
                let y = bf16::from_f64(x);
                out.extend_from_slice(&y.to_bits().to_le_bytes());
                (x.is_finite(), y.is_finite())
            }
            Dtype::F32 => {
                let y = x as f32;
                out.extend_from_slice(&y.to_le_bytes());
                (x.is_finite(), y.is_finite())
            }
            _ => {
                out.extend_from_slice(&x.to_le_bytes());
                (true, true)
            }
        };
        if finite_in && !finite_out {
            if overflow.1 == 0 {
                overflow.0 = x;
            }
            overflow.1 += 1;
        }
    }
    if overflow.1 > 0 {
        return Err(overflow);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn f16_cast_overflows_at_65520_not_before() {
        let ok = 65504.0f32.to_le_bytes();
        assert!(cast(&ok, Dtype::F32, Dtype::F16).is_ok());
        let edge = 65519.0f32.to_le_bytes();
        assert!(
            cast(&edge, Dtype::F32, Dtype::F16).is_ok(),
            "65519 rounds down to 65504"
        );
        let over = 65520.0f32.to_le_bytes();
        let (v, n) = cast(&over, Dtype::F32, Dtype::F16).unwrap_err();
        assert_eq!((v, n), (65520.0, 1));
    }

    #[test]
    fn word_at_a_time_scan_agrees_with_is_finite_on_every_f16_and_bf16() {
        // All 65536 bit patterns, at every alignment of the tail.
        let all: Vec<u8> = (0..=u16::MAX).flat_map(|v| v.to_le_bytes()).collect();
        let f16_bad = (0..=u16::MAX)
            .filter(|&v| !f16::from_bits(v).is_finite())
            .count() as u64;
        let bf16_bad = (0..=u16::MAX)
            .filter(|&v| !bf16::from_bits(v).is_finite())
            .count() as u64;
        assert_eq!(count_non_finite(&all, Dtype::F16), f16_bad);
        assert_eq!(count_non_finite(&all, Dtype::BF16), bf16_bad);
        for cut in 1..4 {
            let part = &all[..all.len() - 2 * cut];
            let want = part
                .chunks_exact(2)
                .filter(|c| !f16::from_le_bytes([c[0], c[1]]).is_finite())
                .count() as u64;
            assert_eq!(count_non_finite(part, Dtype::F16), want);
        }
        let mut f32s = Vec::new();
        for x in [
            0.0f32,
            f32::NAN,
            1.5,
            f32::NEG_INFINITY,
            f32::MAX,
            -0.0,
            f32::INFINITY,
        ] {
            f32s.extend_from_slice(&x.to_le_bytes());
        }
        assert_eq!(count_non_finite(&f32s, Dtype::F32), 3);
    }

    #[test]
    fn non_finite_values_are_counted_not_refused_by_cast() {
        let mut b = Vec::new();
        for x in [1.0f32, f32::NAN, f32::INFINITY, -2.0] {
            b.extend_from_slice(&x.to_le_bytes());
        }
        assert_eq!(count_non_finite(&b, Dtype::F32), 2);
        let h = cast(&b, Dtype::F32, Dtype::F16).expect("NaN/Inf are not overflow");
        assert_eq!(count_non_finite(&h, Dtype::F16), 2);
    }
}
