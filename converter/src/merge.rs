//! Merging one tensor's model-parallel parts into the Hugging Face layout: concatenation on a
//! dimension, the query/key/value interleave, replicated-copy checks, the transpose (transpose.rs), and
//! dtype casts. Works on raw little-endian bytes; knows no tensor names.

use std::borrow::Cow;

use half::slice::{HalfBitsSliceExt, HalfFloatSliceExt};
use half::{bf16, f16};

use crate::error::{Error, Result};
use crate::mapping::Split;
use crate::plan::Entry;
use crate::torch::Dtype;
use crate::transpose::{transpose, Dst};

/// One tensor, merged and ready to write: its pieces in file order, in the output dtype.
pub struct Merged<'a> {
    pub pieces: Vec<Cow<'a, [u8]>>,
    /// NaN/Inf values found in the source (kept as they are; `--strict` refuses them).
    pub non_finite: u64,
}

/// Merge `e`'s parts (one per rank, row-major bytes in the source dtype), check them for NaN/Inf
/// (an error when `strict`), and cast to the output dtype (a finite value that overflows it is
/// an error). `alloc` supplies buffers whose contents do not matter (see [`merge`]).
pub fn tensor<'a>(
    e: &Entry,
    parts: Vec<Cow<'a, [u8]>>,
    names: &[String],
    strict: bool,
    alloc: &mut dyn FnMut(usize) -> Vec<u8>,
) -> Result<Merged<'a>> {
    let (pieces, counted) = merge_counting(e, parts, names, alloc)?;
    // A transpose counts on the way; other merges are counted here.
    let non_finite = counted.unwrap_or_else(|| {
        pieces
            .iter()
            .map(|p| count_non_finite(p, e.source_dtype))
            .sum()
    });
    if non_finite > 0 && strict {
        return Err(Error::values(
            &e.source,
            format!(
                "holds {non_finite} NaN/Inf value(s) of {} (--strict)",
                e.numel()
            ),
        ));
    }
    if e.dtype == e.source_dtype {
        return Ok(Merged { pieces, non_finite });
    }
    let pieces = pieces
        .iter()
        .map(|p| {
            cast(p, e.source_dtype, e.dtype)
                .map(Cow::Owned)
                .map_err(|o| {
                    Error::values(
                        &e.source,
                        format!(
                        "(-> `{}`): {} finite value(s) overflow {} (first: {}); keep the source \
                         dtype or choose a wider one",
                        e.target,
                        o.count,
                        e.dtype.torch_name(),
                        o.first
                    ),
                    )
                })
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(Merged { pieces, non_finite })
}

/// Whether two piece lists hold the same bytes, compared without joining them.
pub fn same_bytes(a: &[Cow<'_, [u8]>], b: &[Cow<'_, [u8]>]) -> bool {
    let total = |v: &[Cow<'_, [u8]>]| v.iter().map(|p| p.len()).sum::<usize>();
    if total(a) != total(b) {
        return false;
    }
    let (mut ai, mut bi) = (a.iter().map(|p| &p[..]), b.iter().map(|p| &p[..]));
    let (mut x, mut y): (&[u8], &[u8]) = (&[], &[]);
    loop {
        if x.is_empty() {
            match ai.next() {
                Some(n) => x = n,
                None => return y.is_empty() && bi.all(<[u8]>::is_empty),
            }
            continue;
        }
        if y.is_empty() {
            match bi.next() {
                Some(n) => y = n,
                None => return false,
            }
            continue;
        }
        let n = x.len().min(y.len());
        if x[..n] != y[..n] {
            return false;
        }
        (x, y) = (&x[n..], &y[n..]);
    }
}

/// One rectangular piece of the merged matrix: rows `src_rows` of rank `rank`'s part land at
/// (`dst_row`, `dst_col`) of the merged (untransposed) matrix.
/// Also read backwards: `export::split` gives rank `rank` these rows of the merged matrix.
pub(crate) struct Block {
    pub(crate) rank: usize,
    pub(crate) src_row: usize,
    pub(crate) rows: usize,
    pub(crate) dst_row: usize,
    pub(crate) dst_col: usize,
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
    merge_counting(e, parts, names, alloc).map(|(pieces, _)| pieces)
}

/// A merged tensor's bytes, in file order.
type Pieces<'a> = Vec<Cow<'a, [u8]>>;

/// [`merge`], and the pieces' NaN/Inf count when the merge took it on the way (transposes).
fn merge_counting<'a>(
    e: &Entry,
    parts: Vec<Cow<'a, [u8]>>,
    names: &[String],
    alloc: &mut dyn FnMut(usize) -> Vec<u8>,
) -> Result<(Pieces<'a>, Option<u64>)> {
    let es = e.source_dtype.size();
    if e.zeros {
        let mut out = alloc(e.numel() as usize * es);
        out.fill(0);
        return Ok((vec![Cow::Owned(out)], Some(0)));
    }
    let (rows, cols) = check_parts(e, &parts, names)?;
    if e.split == Split::Replicated {
        check_replicated(e, &parts, names)?;
    }
    let p = parts.len();
    let mut blocks = blocks(e, p, rows, cols)?;
    // The untransposed fast path below emits the blocks in order: make it destination order.
    blocks.sort_by_key(|b| (b.dst_row, b.dst_col));
    let (m_rows, m_cols) = match e.split {
        Split::Replicated => (rows, cols),
        Split::Dim1 => (rows, cols * p),
        _ => (rows * p, cols),
    };
    // Whole-row blocks in destination order: the pieces are slices of the parts.
    if !e.transpose && blocks.iter().all(|b| b.dst_col == 0) {
        let row = cols * es;
        let pieces = blocks
            .iter()
            .map(|b| {
                let rows = b.src_row * row..(b.src_row + b.rows) * row;
                match &parts[b.rank] {
                    Cow::Borrowed(s) => Cow::Borrowed(&s[rows]),
                    Cow::Owned(v) => Cow::Owned(v[rows].to_vec()),
                }
            })
            .collect();
        let pieces = match e.keep_rows {
            Some(n) => cut(pieces, n as usize * row),
            None => pieces,
        };
        return Ok((pieces, None));
    }
    if e.keep_rows.is_some() {
        return Err(Error::internal(format!(
            "tensor `{}`: rows cut from a transposed or column-merged tensor",
            e.source
        )));
    }
    let mut out = alloc(m_rows * m_cols * es);
    let counted = place_blocks(e, &parts, &blocks, &mut out, cols, (m_rows, m_cols))?;
    Ok((vec![Cow::Owned(out)], counted))
}

/// Place every block of the parts into `out`, the merged matrix (transposed when `e` says so),
/// and return the NaN/Inf count when the transposes took it.
fn place_blocks(
    e: &Entry,
    parts: &[Cow<'_, [u8]>],
    blocks: &[Block],
    out: &mut [u8],
    cols: usize,
    (m_rows, m_cols): (usize, usize),
) -> Result<Option<u64>> {
    let es = e.source_dtype.size();
    let mask = exponent_mask(e.source_dtype);
    let mut non_finite = 0;
    for b in blocks {
        let src = &parts[b.rank][b.src_row * cols * es..(b.src_row + b.rows) * cols * es];
        let g = Geometry {
            rows: b.rows,
            cols,
            dst_row: b.dst_row,
            dst_col: b.dst_col,
            m_cols,
        };
        if !e.transpose {
            place_rows(out, src, &g, es);
            continue;
        }
        let at = Dst {
            offset: g.dst_col * m_rows + g.dst_row,
            stride: m_rows,
        };
        // Plans admit only float dtypes (2, 4 or 8 bytes) and the shapes were checked above.
        non_finite += transpose(src, b.rows, cols, out, at, es, mask).map_err(|_| {
            Error::internal(format!(
                "tensor `{}`: a {}-byte {} x {cols} block does not fit the merged {m_rows} x \
                 {m_cols} matrix",
                e.source, es, b.rows
            ))
        })?;
    }
    Ok((e.transpose && mask != 0).then_some(non_finite))
}

/// The exponent bits of a float dtype (all set: NaN or Inf); 0 for other dtypes.
fn exponent_mask(dtype: Dtype) -> u64 {
    match dtype {
        Dtype::F16 => 0x7c00,
        Dtype::BF16 => 0x7f80,
        Dtype::F32 => 0x7f80_0000,
        Dtype::F64 => 0x7ff0_0000_0000_0000,
        _ => 0,
    }
}

/// Every part holds exactly one rank's share (the plan checked the shapes; this checks the
/// bytes read). Returns the part's rows and columns (1-D is one column).
fn check_parts(e: &Entry, parts: &[Cow<'_, [u8]>], names: &[String]) -> Result<(usize, usize)> {
    let (rows, cols) = match e.rank_shapes[0].as_slice() {
        [n] => (*n as usize, 1),
        [r, c] => (*r as usize, *c as usize),
        other => {
            return Err(Error::internal(format!(
                "tensor `{}`: the plan admitted shape {other:?}",
                e.source
            )))
        }
    };
    let part_bytes = rows * cols * e.source_dtype.size();
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
    Ok((rows, cols))
}

/// A replicated tensor is taken once, so every rank must hold the same bits.
fn check_replicated(e: &Entry, parts: &[Cow<'_, [u8]>], names: &[String]) -> Result<()> {
    let es = e.source_dtype.size();
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
    Ok(())
}

/// The first `keep` bytes of a piece list.
fn cut(pieces: Vec<Cow<'_, [u8]>>, mut keep: usize) -> Vec<Cow<'_, [u8]>> {
    let mut out = Vec::with_capacity(pieces.len());
    for p in pieces {
        if keep == 0 {
            break;
        }
        let n = p.len().min(keep);
        keep -= n;
        out.push(match p {
            Cow::Borrowed(s) => Cow::Borrowed(&s[..n]),
            Cow::Owned(mut v) => {
                v.truncate(n);
                Cow::Owned(v)
            }
        });
    }
    out
}

/// Where each rank's rows land in the merged (untransposed) matrix. GPT-2 wants the fused
/// query/key/value rows as all heads' q, then all k, then all v; each layout below says where
/// rank r's rows for head i (of its `np`), part j (q, k, v) and dimension d (of `hn`) lie.
pub(crate) fn blocks(e: &Entry, p: usize, rows: usize, cols: usize) -> Result<Vec<Block>> {
    let block = |rank, src_row, rows, dst_row, dst_col| Block {
        rank,
        src_row,
        rows,
        dst_row,
        dst_col,
    };
    let all = |f: &dyn Fn(usize) -> Block| (0..p).map(f).collect::<Vec<_>>();
    Ok(match e.split {
        Split::Replicated => vec![block(0, 0, rows, 0, 0)],
        Split::Dim0 => all(&|r| block(r, 0, rows, r * rows, 0)),
        Split::Dim1 => all(&|r| block(r, 0, rows, 0, r * cols)),
        // [3, np, hn]: each third of a rank is one run of its heads' q (k, v) rows.
        Split::QkvDim0 => {
            let third = rows / 3;
            (0..3)
                .flat_map(|j| (0..p).map(move |r| (j, r)))
                .map(|(j, r)| block(r, j * third, third, (j * p + r) * third, 0))
                .collect()
        }
        Split::QkvHeads3Dim | Split::QkvHeadsDim3 => {
            let (np, hn) = per_rank_heads(e, p, rows)?;
            let heads = np * p;
            let mut out = Vec::with_capacity(3 * rows);
            for (r, i, j) in
                (0..p).flat_map(|r| (0..np).flat_map(move |i| (0..3).map(move |j| (r, i, j))))
            {
                let dst = (j * heads + r * np + i) * hn;
                if e.split == Split::QkvHeads3Dim {
                    // [np, 3, hn]: head i's q, k, v rows are runs of hn.
                    out.push(block(r, (i * 3 + j) * hn, hn, dst, 0));
                } else {
                    // [np, hn, 3]: q, k, v interleave row by row.
                    out.extend((0..hn).map(|d| block(r, (i * hn + d) * 3 + j, 1, dst + d, 0)));
                }
            }
            out
        }
        Split::Qkv => {
            return Err(Error::internal(format!(
                "tensor `{}`: the qkv layout was not resolved by the plan",
                e.source
            )))
        }
    })
}

/// Heads per rank and the head dimension of a per-head query/key/value layout.
fn per_rank_heads(e: &Entry, p: usize, rows: usize) -> Result<(usize, usize)> {
    let heads = e.heads as usize;
    if heads == 0 || heads % p != 0 || rows % (3 * (heads / p)) != 0 {
        return Err(Error::merge(format!(
            "tensor `{}`: {rows} rows per rank do not hold q, k and v of {heads} heads over {p} \
             ranks",
            e.source
        )));
    }
    let np = heads / p;
    Ok((np, rows / (3 * np)))
}

struct Geometry {
    rows: usize,
    cols: usize,
    dst_row: usize,
    dst_col: usize,
    m_cols: usize,
}

fn place_rows(out: &mut [u8], src: &[u8], g: &Geometry, es: usize) {
    let w = g.cols * es;
    for i in 0..g.rows {
        let d = ((g.dst_row + i) * g.m_cols + g.dst_col) * es;
        out[d..d + w].copy_from_slice(&src[i * w..(i + 1) * w]);
    }
}

/// How many elements are NaN or infinite (exponent bits all ones).
pub fn count_non_finite(bytes: &[u8], dtype: Dtype) -> u64 {
    match dtype {
        Dtype::F16 => count_exponent_all_ones::<u16>(bytes, 0x7c00),
        Dtype::BF16 => count_exponent_all_ones::<u16>(bytes, 0x7f80),
        Dtype::F32 => count_exponent_all_ones::<u32>(bytes, 0x7f80_0000),
        Dtype::F64 => bytes
            .chunks_exact(8)
            .filter(|c| {
                let w = u64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]);
                !f64::from_bits(w).is_finite()
            })
            .count() as u64,
        // Integer and boolean elements are always finite (plans admit only floats anyway).
        _ => 0,
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

/// Finite values that became infinite in a cast: how many, and the first one.
#[derive(Debug, PartialEq)]
pub struct Overflow {
    pub count: u64,
    pub first: f64,
}

/// Elements converted per step: small enough to stay in L1, large enough for the SIMD
/// conversions (`half`'s slice functions use F16C where the CPU has it).
const CAST_STEP: usize = 1024;

/// Convert `bytes` from one float dtype to F16, BF16 or F32. NaN and Inf pass through; a finite
/// value that becomes infinite is an error. Everything goes through f32 slices: exact for F16,
/// BF16 and F32 sources. An F64 source is rounded to f32 first, so an f64 lying within 2^-29
/// relative of an f16/bf16 rounding tie may round the other way (F64 weights are rare, and
/// `half`'s own f64 -> f16 conversion is not exact there either).
pub fn cast(bytes: &[u8], from: Dtype, to: Dtype) -> std::result::Result<Vec<u8>, Overflow> {
    let n = bytes.len() / from.size();
    let mut out = Vec::with_capacity(n * to.size());
    let mut wide = [0f32; CAST_STEP];
    for chunk in bytes.chunks(CAST_STEP * from.size()) {
        let m = chunk.len() / from.size();
        widen(chunk, from, &mut wide[..m]);
        narrow(&wide[..m], to, &mut out);
    }
    let overflow = count_non_finite(&out, to).saturating_sub(count_non_finite(bytes, from));
    if overflow == 0 {
        return Ok(out);
    }
    let first = (0..n)
        .map(|i| (element(bytes, from, i), element(&out, to, i)))
        .find(|(x, y)| x.is_finite() && !y.is_finite())
        .map_or(f64::NAN, |(x, _)| x);
    Err(Overflow {
        count: overflow,
        first,
    })
}

/// Little-endian elements of `dtype` to f32: exact for F16, BF16 and F32, rounded to nearest
/// from F64 and wide integers. Any length; F16/BF16 go through `half`'s SIMD slice conversion.
pub fn widen(bytes: &[u8], dtype: Dtype, out: &mut [f32]) {
    let mut bits = [0u16; CAST_STEP];
    match dtype {
        Dtype::F16 | Dtype::BF16 => {
            for (o, b) in out.chunks_mut(CAST_STEP).zip(bytes.chunks(2 * CAST_STEP)) {
                let bits = &mut bits[..o.len()];
                for (x, c) in bits.iter_mut().zip(b.chunks_exact(2)) {
                    *x = u16::from_le_bytes([c[0], c[1]]);
                }
                if dtype == Dtype::F16 {
                    bits.reinterpret_cast::<f16>().convert_to_f32_slice(o);
                } else {
                    bits.reinterpret_cast::<bf16>().convert_to_f32_slice(o);
                }
            }
        }
        Dtype::F32 => {
            for (o, c) in out.iter_mut().zip(bytes.chunks_exact(4)) {
                *o = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
            }
        }
        _ => {
            for (i, o) in out.iter_mut().enumerate() {
                *o = element(bytes, dtype, i) as f32;
            }
        }
    }
}

/// Append `values` to `out` as little-endian elements of `dtype` (F16, BF16 or F32).
fn narrow(values: &[f32], dtype: Dtype, out: &mut Vec<u8>) {
    let mut bits = [0u16; CAST_STEP];
    let bits = &mut bits[..values.len()];
    match dtype {
        Dtype::F16 => bits
            .reinterpret_cast_mut::<f16>()
            .convert_from_f32_slice(values),
        Dtype::BF16 => bits
            .reinterpret_cast_mut::<bf16>()
            .convert_from_f32_slice(values),
        _ => {
            for v in values {
                out.extend_from_slice(&v.to_le_bytes());
            }
            return;
        }
    }
    for b in bits.iter() {
        out.extend_from_slice(&b.to_le_bytes());
    }
}

/// Element `i` of a little-endian buffer, as f64 (exact for floats; integers up to 2^53).
pub fn element(bytes: &[u8], dtype: Dtype, i: usize) -> f64 {
    let es = dtype.size();
    let Some(c) = bytes.get(i * es..(i + 1) * es) else {
        return f64::NAN;
    };
    let mut w = [0u8; 8];
    w[..es.min(8)].copy_from_slice(&c[..es.min(8)]);
    match dtype {
        Dtype::F64 => f64::from_le_bytes(w),
        Dtype::F32 => f32::from_le_bytes([w[0], w[1], w[2], w[3]]) as f64,
        Dtype::F16 => f16::from_le_bytes([w[0], w[1]]).to_f64(),
        Dtype::BF16 => bf16::from_le_bytes([w[0], w[1]]).to_f64(),
        Dtype::I64 => i64::from_le_bytes(w) as f64,
        Dtype::I32 => i32::from_le_bytes([w[0], w[1], w[2], w[3]]) as f64,
        Dtype::I16 => i16::from_le_bytes([w[0], w[1]]) as f64,
        Dtype::I8 => w[0] as i8 as f64,
        Dtype::U8 | Dtype::Bool => w[0] as f64,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A dim-1 split, transposed entry of `rows` x `cols` per rank over `ranks` ranks.
    fn dim1_transposed(dtype: Dtype, ranks: usize, rows: u64, cols: u64) -> Entry {
        let m_cols = cols * ranks as u64;
        Entry {
            target: "h.0.mlp.c_proj.weight".into(),
            source: "mlp.dense_4h_to_h.weight".into(),
            split: Split::Dim1,
            transpose: true,
            source_dtype: dtype,
            dtype,
            rank_shapes: vec![vec![rows, cols]; ranks],
            shape: vec![m_cols, rows],
            zeros: false,
            keep_rows: None,
            heads: 1,
            sources: Vec::new(),
            dims: Vec::new(),
        }
    }

    /// Through `tensor`, a column-merged, transposed tensor of every float dtype comes out as
    /// the plain definition (out[j][i] = concat(parts)[i][j]), and its NaN/Inf count (taken
    /// inside the transpose) is the number of elements `half`/std call non-finite; `--strict`
    /// refuses it. Odd shapes, so the kernels' ragged edges are crossed.
    #[test]
    fn transposed_merge_counts_non_finite_like_is_finite_and_places_every_element() {
        for (dtype, es) in [(Dtype::F16, 2), (Dtype::BF16, 2), (Dtype::F32, 4)] {
            let (ranks, rows, cols) = (2usize, 19usize, 13usize);
            let e = dim1_transposed(dtype, ranks, rows as u64, cols as u64);
            // Element k of rank r: distinct bits, every 7th with the exponent all ones.
            let value = |r: usize, k: usize| -> u32 {
                let v = (r * 1000 + k) as u32;
                match (es, k % 7 == 3) {
                    (2, true) => v | exponent_mask(dtype) as u32,
                    (2, false) => v & 0x3fff,
                    (_, true) => v | 0x7f80_0000,
                    _ => v,
                }
            };
            let parts: Vec<Vec<u8>> = (0..ranks)
                .map(|r| {
                    (0..rows * cols)
                        .flat_map(|k| value(r, k).to_le_bytes()[..es].to_vec())
                        .collect()
                })
                .collect();
            let cow = || parts.iter().map(|p| Cow::Borrowed(&p[..])).collect();
            let names = vec!["r0".to_string(), "r1".to_string()];
            let merged = tensor(&e, cow(), &names, false, &mut |n| vec![0xAB; n]).unwrap();
            let out: Vec<u8> = merged.pieces.concat();
            let m_cols = cols * ranks;
            for j in 0..m_cols {
                for i in 0..rows {
                    let (r, c) = (j / cols, j % cols);
                    let want = &value(r, i * cols + c).to_le_bytes()[..es];
                    let at = (j * rows + i) * es;
                    assert_eq!(&out[at..at + es], want, "{dtype:?} out[{j}][{i}]");
                }
            }
            let bad = out
                .chunks_exact(es)
                .filter(|c| match dtype {
                    Dtype::F16 => !f16::from_le_bytes([c[0], c[1]]).is_finite(),
                    Dtype::BF16 => !bf16::from_le_bytes([c[0], c[1]]).is_finite(),
                    _ => !f32::from_le_bytes([c[0], c[1], c[2], c[3]]).is_finite(),
                })
                .count() as u64;
            assert!(bad > 0);
            assert_eq!(merged.non_finite, bad, "{dtype:?}");
            assert!(tensor(&e, cow(), &names, true, &mut |n| vec![0; n]).is_err());
        }
    }

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
        let o = cast(&over, Dtype::F32, Dtype::F16).unwrap_err();
        assert_eq!((o.first, o.count), (65520.0, 1));
    }

    #[test]
    fn slice_casts_round_like_the_scalar_conversions() {
        // Every f16 and bf16 bit pattern widened, and f32 values near every f16/bf16 rounding
        // boundary narrowed, agree with `half`'s scalar round-to-nearest-even conversions.
        let mut xs: Vec<f32> = (0..=u16::MAX)
            .flat_map(|v| {
                let h = f16::from_bits(v).to_f32();
                let b = bf16::from_bits(v).to_f32();
                [
                    h,
                    b,
                    f32::from_bits(h.to_bits() + 1),
                    f32::from_bits(b.to_bits() + 0x8000),
                ]
            })
            .filter(|x| x.is_finite() && x.abs() < 65504.0)
            .collect();
        xs.extend([0.1, -3.3e-8, 1.0e-40, f32::NAN, f32::INFINITY, -0.0]);
        let bytes: Vec<u8> = xs.iter().flat_map(|x| x.to_le_bytes()).collect();
        let h = cast(&bytes, Dtype::F32, Dtype::F16).expect("below f16 max");
        let b = cast(&bytes, Dtype::F32, Dtype::BF16).expect("bf16 has f32's range");
        for (i, x) in xs.iter().enumerate() {
            let got_h = u16::from_le_bytes([h[2 * i], h[2 * i + 1]]);
            let got_b = u16::from_le_bytes([b[2 * i], b[2 * i + 1]]);
            if x.is_nan() {
                assert!(f16::from_bits(got_h).is_nan() && bf16::from_bits(got_b).is_nan());
                continue;
            }
            assert_eq!(got_h, f16::from_f32(*x).to_bits(), "f16 of {x:e}");
            assert_eq!(got_b, bf16::from_f32(*x).to_bits(), "bf16 of {x:e}");
        }
        let back = cast(&h, Dtype::F16, Dtype::F32).expect("widening cannot overflow");
        for (i, c) in back.chunks_exact(4).enumerate() {
            let want = f16::from_le_bytes([h[2 * i], h[2 * i + 1]]).to_f32();
            let got = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
            assert!(
                got == want || (got.is_nan() && want.is_nan()),
                "{got} vs {want}"
            );
        }
    }

    #[test]
    fn overflow_names_the_first_overflowing_value_and_counts_all() {
        let xs = [1.0f32, 7.0e4, f32::INFINITY, -1.0e5, 2.0];
        let b: Vec<u8> = xs.iter().flat_map(|x| x.to_le_bytes()).collect();
        let o = cast(&b, Dtype::F32, Dtype::F16).unwrap_err();
        assert_eq!((o.count, o.first), (2, 7.0e4));
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
