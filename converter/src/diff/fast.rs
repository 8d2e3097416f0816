//! The memory compares that settle most tensor pairs without widening: equal parts of the same
//! layout, merges compared before their transpose, and a transposed compare (SSE2 8x8 blocks on
//! x86-64) of a checkpoint against its own conversion. What they cannot settle is merged and
//! handed to `figures`.

use std::borrow::Cow;
use std::ops::Range;

use crate::error::Result;
use crate::plan::Entry;

use super::figures::compare_streams;
use super::side::{merge_needs_heads, merge_with, How, Item, Side};
use super::{in_side, Values};

/// One side's tensor, read but not merged.
pub(super) struct Read<'s> {
    pub(super) side: &'s Side,
    pub(super) item: &'s Item,
    pub(super) parts: Vec<Cow<'s, [u8]>>,
}

/// Equal raw parts of the same layout are equal tensors (the common case, decided by a memory
/// compare); otherwise both are merged into the canonical layout and compared element by element.
pub(super) fn compare_parts(
    a: Read<'_>,
    b: Read<'_>,
    atol: f64,
    bufs: &mut (Vec<u8>, Vec<u8>),
) -> Result<Option<Values>> {
    let blame = |r: &Read<'_>| {
        let who = r.side.who.clone();
        move |e| in_side(&who, e)
    };
    if same_layout(a.item, b.item) && a.parts.iter().zip(&b.parts).all(|(x, y)| x[..] == y[..]) {
        // The merge would also check that replicated copies agree across ranks; keep that.
        a.side
            .check_replicated(a.item, &a.parts)
            .map_err(blame(&a))?;
        b.side
            .check_replicated(b.item, &b.parts)
            .map_err(blame(&b))?;
        return Ok(None);
    }
    if let Some(same) = same_untransposed(&a, &b, bufs)? {
        if same {
            return Ok(None);
        }
    }
    let (ea, eb) = (blame(&a), blame(&b));
    let ma = a.side.merge(a.item, a.parts, &mut bufs.0).map_err(ea)?;
    let mb = b.side.merge(b.item, b.parts, &mut bufs.1).map_err(eb)?;
    let v = compare_streams(a.item, &ma, b.item, &mb, atol);
    recycle(ma, &mut bufs.0);
    recycle(mb, &mut bufs.1);
    Ok(v)
}

/// Where a side transposes, compare its merge before the transpose: a merge without a transpose
/// mostly borrows the parts, and the transpose costs more than all the rest of a comparison.
/// Both sides transposing: the same bytes there are the same tensor. One side: its rows must be
/// the other's columns, checked tile by tile without writing a transposed copy (a checkpoint
/// against its own conversion). `None` when not applicable (no transpose, or dtypes differ).
fn same_untransposed(
    a: &Read<'_>,
    b: &Read<'_>,
    bufs: &mut (Vec<u8>, Vec<u8>),
) -> Result<Option<bool>> {
    let (How::Planned(ea), How::Planned(eb)) = (&a.item.how, &b.item.how) else {
        return Ok(None);
    };
    if !(ea.transpose || eb.transpose) || ea.source_dtype != eb.source_dtype {
        return Ok(None);
    }
    // The same entry with the transpose left out: the merged matrix, [shape[1], shape[0]].
    let untransposed = |e: &Entry| {
        let mut e = e.clone();
        if e.transpose {
            e.transpose = false;
            e.shape.reverse();
        }
        e
    };
    let (ua, ub) = (untransposed(ea), untransposed(eb));
    let names = (a.side.src.part_names(ea), b.side.src.part_names(eb));
    let ma = merge_with(&ua, a.parts.clone(), &names.0, &mut bufs.0);
    let ma = ma.map_err(|e| in_side(&a.side.who, e))?;
    let mb = merge_with(&ub, b.parts.clone(), &names.1, &mut bufs.1);
    let mb = mb.map_err(|e| in_side(&b.side.who, e))?;
    let es = ea.source_dtype.size();
    let same = if ea.transpose == eb.transpose {
        Some(crate::merge::same_bytes(&ma, &mb))
    } else {
        // The transposing side's merged rows against the other side's canonical rows.
        let (t, o) = if ea.transpose { (&ma, &mb) } else { (&mb, &ma) };
        let width = |u: &Entry| u.shape.get(1).map_or(0, |&w| w as usize * es);
        let (wt, wo) = if ea.transpose {
            (width(&ua), width(&ub))
        } else {
            (width(&ub), width(&ua))
        };
        match (rows(t, wt), rows(o, wo)) {
            (Some(tr), Some(or)) => Some(same_transposed(&tr, &or, es)),
            _ => None,
        }
    };
    recycle(ma, &mut bufs.0);
    recycle(mb, &mut bufs.1);
    Ok(same)
}

/// The rows of a 2-D tensor held in pieces of whole rows; `None` if a piece cuts a row.
fn rows<'m>(pieces: &'m [Cow<'m, [u8]>], row_bytes: usize) -> Option<Vec<&'m [u8]>> {
    if row_bytes == 0 || pieces.iter().any(|p| p.len() % row_bytes != 0) {
        return None;
    }
    Some(
        pieces
            .iter()
            .flat_map(|p| p.chunks_exact(row_bytes))
            .collect(),
    )
}

/// A tile of [`same_transposed`]: rows of `a` (elements of each row of `b`) by rows of `b`.
/// Tall and narrow: each of the few rows of `b` is read along 512 contiguous bytes, which beat
/// square tiles by a fifth on the 8-layer benchmark (64x64: 0.64 s, 256x16: 0.51 s).
const TILE_A: usize = 256;
const TILE_B: usize = 16;

/// Whether `a` (R rows of C elements of `es` bytes) is bit for bit the transpose of `b` (C rows
/// of R elements). Large tensors are split by rows over a few threads: this is the one step of a
/// comparison that is not bound by memory bandwidth.
fn same_transposed(a: &[&[u8]], b: &[&[u8]], es: usize) -> bool {
    let (r, c) = (a.len(), b.len());
    if a.iter().any(|x| x.len() != c * es) || b.iter().any(|x| x.len() != r * es) {
        return false;
    }
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get().min(4));
    if threads < 2 || r * c < (1 << 20) {
        return same_rows(a, b, es, 0..r);
    }
    let chunk = r.div_ceil(threads).div_ceil(TILE_A) * TILE_A;
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..r)
            .step_by(chunk)
            .map(|i0| s.spawn(move || same_rows(a, b, es, i0..(i0 + chunk).min(r))))
            .collect();
        // A thread that panicked proves nothing: "not the same" sends the pair down the full
        // comparison, which reports what differs.
        handles.into_iter().all(|h| h.join().unwrap_or(false))
    })
}

/// [`same_transposed`] for rows `i` of `a`, tile by tile.
fn same_rows(a: &[&[u8]], b: &[&[u8]], es: usize, i: Range<usize>) -> bool {
    for i0 in i.clone().step_by(TILE_A) {
        let i1 = (i0 + TILE_A).min(i.end);
        for j0 in (0..b.len()).step_by(TILE_B) {
            let j1 = (j0 + TILE_B).min(b.len());
            if !same_tile(a, b, es, (i0, i1), (j0, j1)) {
                return false;
            }
        }
    }
    true
}

/// One tile: rows `i` of `a` against columns `i` of rows `j` of `b`. Lengths were checked.
fn same_tile(a: &[&[u8]], b: &[&[u8]], es: usize, i: (usize, usize), j: (usize, usize)) -> bool {
    // Whole 8x8 blocks of two-byte elements with SSE2 on x86-64; the rest element by element.
    let (mut i8, mut j8) = (i.0, j.0);
    #[cfg(target_arch = "x86_64")]
    if es == 2 {
        (i8, j8) = (i.0 + (i.1 - i.0) / 8 * 8, j.0 + (j.1 - j.0) / 8 * 8);
        for ii in (i.0..i8).step_by(8) {
            for jj in (j.0..j8).step_by(8) {
                if !sse2::same_8x8_u16(a, b, ii, jj) {
                    return false;
                }
            }
        }
    }
    let same =
        |ii: usize, jj: usize| a[ii][jj * es..(jj + 1) * es] == b[jj][ii * es..(ii + 1) * es];
    (i8..i.1).all(|ii| (j.0..j.1).all(|jj| same(ii, jj)))
        && (i.0..i8).all(|ii| (j8..j.1).all(|jj| same(ii, jj)))
}

#[cfg(target_arch = "x86_64")]
mod sse2 {
    use std::arch::x86_64::*;

    /// Rows `i..i+8` of `a`, elements `j..j+8`, against rows `j..j+8` of `b`, elements `i..i+8`:
    /// the block of `a` is transposed in registers. Every row must hold those elements (checked
    /// by slicing, so a caller's mistake is a panic, never an out-of-bounds read).
    pub fn same_8x8_u16(a: &[&[u8]], b: &[&[u8]], i: usize, j: usize) -> bool {
        let load = |row: &[u8], at: usize| -> __m128i {
            let s = &row[at * 2..at * 2 + 16];
            // SAFETY: `s` is 16 readable bytes; unaligned loads are allowed; SSE2 is part of
            // every x86-64 CPU.
            unsafe { _mm_loadu_si128(s.as_ptr() as *const __m128i) }
        };
        let r: [__m128i; 8] = std::array::from_fn(|k| load(a[i + k], j));
        // Column k of the block.
        let cols = crate::transpose::sse2::transpose_8x8_u16(r);
        // SAFETY: register-only SSE2 intrinsics; SSE2 is part of every x86-64 CPU.
        unsafe {
            let mut all = _mm_set1_epi8(-1);
            for (k, col) in cols.iter().enumerate() {
                all = _mm_and_si128(all, _mm_cmpeq_epi16(*col, load(b[j + k], i)));
            }
            _mm_movemask_epi8(all) == 0xffff
        }
    }
}

/// Same dtype and the same way of merging the same part shapes: equal parts make equal tensors.
fn same_layout(ia: &Item, ib: &Item) -> bool {
    if ia.dtype != ib.dtype {
        return false;
    }
    match (&ia.how, &ib.how) {
        (How::Planned(x), How::Planned(y)) => {
            x.split == y.split
                && x.transpose == y.transpose
                && x.rank_shapes == y.rank_shapes
                && x.source_dtype == y.source_dtype
                && x.zeros == y.zeros
                && x.keep_rows == y.keep_rows
                && (x.heads == y.heads || !merge_needs_heads(x.split))
        }
        (How::Stored { tensor: x, .. }, How::Stored { tensor: y, .. }) => x.shape == y.shape,
        _ => false,
    }
}

/// Keep the larger of a merged buffer and the scratch buffer for the next merge.
fn recycle(pieces: Vec<Cow<'_, [u8]>>, buf: &mut Vec<u8>) {
    for p in pieces {
        if let Cow::Owned(v) = p {
            if v.capacity() > buf.capacity() {
                *buf = v;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `a` (r x c elements of `es` bytes, from noise) and its transpose.
    fn matrix_and_transpose(r: usize, c: usize, es: usize) -> (Vec<u8>, Vec<u8>) {
        let a: Vec<u8> = (0..r * c * es).map(|k| (k * 7919 % 251) as u8).collect();
        let mut t = vec![0u8; a.len()];
        for i in 0..r {
            for j in 0..c {
                let (from, to) = ((i * c + j) * es, (j * r + i) * es);
                t[to..to + es].copy_from_slice(&a[from..from + es]);
            }
        }
        (a, t)
    }

    fn row_slices(m: &[u8], w: usize, es: usize) -> Vec<&[u8]> {
        m.chunks_exact(w * es).collect()
    }

    #[test]
    fn transposed_comparison_finds_every_single_changed_element() {
        // Sizes around the 8x8 SIMD blocks, the 256x16 tiles and the threaded split (over
        // 2^20 elements), 2- and 4-byte elements: every element changed in turn (small sizes)
        // or a spread of them (large) is found.
        for (r, c, es) in [
            (1, 1, 2),
            (8, 8, 2),
            (9, 17, 2),
            (70, 13, 2),
            (130, 72, 2),
            (300, 20, 2),
            (9, 10, 4),
            (1100, 1000, 2),
        ] {
            let (a, t) = matrix_and_transpose(r, c, es);
            let (ra, rt) = (row_slices(&a, c, es), row_slices(&t, r, es));
            assert!(same_transposed(&ra, &rt, es), "{r}x{c}x{es}");
            let step = if r * c > 20_000 {
                99_991
            } else if r * c > 500 {
                97
            } else {
                1
            };
            for k in (0..r * c).step_by(step).chain([r * c - 1]) {
                let mut u = t.clone();
                u[k * es + es - 1] ^= 0x80;
                let ru = row_slices(&u, r, es);
                assert!(!same_transposed(&ra, &ru, es), "{r}x{c}x{es} at {k}");
            }
        }
        // Rows of the wrong length are not the transpose.
        let (a, t) = matrix_and_transpose(8, 8, 2);
        let short: Vec<&[u8]> = t.chunks_exact(16).map(|x| &x[..14]).collect();
        assert!(!same_transposed(&row_slices(&a, 8, 2), &short, 2));
    }
}
