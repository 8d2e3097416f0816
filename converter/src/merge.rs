//! Merging one tensor's model-parallel parts into the Hugging Face layout: concatenation on a
//! dimension, the query/key/value interleave, replicated-copy checks, the transpose
//! (transpose.rs), and dtype casts (elements.rs). Works on raw little-endian bytes; knows no
//! tensor names.

use std::borrow::Cow;

use cpm_torch::Dtype;

use crate::elements::{cast, count_non_finite};
use crate::error::{Error, Result};
use crate::mapping::Split;
use crate::plan::Entry;
use crate::transpose::{transpose, Dst};

/// One tensor, merged and ready to write: its pieces in file order, in the output dtype.
pub struct Merged<'a> {
    pub pieces: Vec<Cow<'a, [u8]>>,
    /// NaN/Inf values found in the source (kept as they are; `--strict` refuses them).
    pub non_finite: u64,
    /// The pieces were not counted (`non_finite` is 0): the caller counts them as it passes
    /// over them anyway (see [`tensor_pieces`]).
    pub uncounted: bool,
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
    finish(e, pieces, counted, strict)
}

/// [`tensor`] for a one-part tensor read as pieces to be taken in order (a DCP tensor's
/// chunks): when its merge keeps the part's rows as they are (no transpose, no reordering),
/// the pieces go on as they are, uncopied; otherwise they are joined and merged as one part.
/// With `count_later`, pieces that go on as they are, in the source dtype and not `strict`, are
/// left uncounted ([`Merged::uncounted`]): a caller that reads them anyway counts them then.
pub fn tensor_pieces<'a>(
    e: &Entry,
    mut pieces: Vec<Cow<'a, [u8]>>,
    names: &[String],
    (strict, count_later): (bool, bool),
    alloc: &mut dyn FnMut(usize) -> Vec<u8>,
) -> Result<Merged<'a>> {
    let (rows, cols) = part_shape(e)?;
    let row = cols * e.source_dtype.size();
    let identity = !e.zeros
        && !e.transpose
        && blocks(e, 1, rows, cols)?
            .iter()
            .all(|b| (b.rank, b.src_row, b.rows, b.dst_row, b.dst_col) == (0, 0, rows, 0, 0));
    if !identity {
        let part = match pieces.len() {
            1 => pieces.swap_remove(0),
            _ => Cow::Owned(pieces.concat()),
        };
        return tensor(e, vec![part], names, strict, alloc);
    }
    let bytes: usize = pieces.iter().map(|p| p.len()).sum();
    if bytes != rows * row {
        return Err(Error::merge(format!(
            "tensor `{}` ({}): {bytes} bytes, expected {}",
            e.source,
            names.first().map_or("", |n| n.as_str()),
            rows * row
        )));
    }
    let pieces = match e.keep_rows {
        Some(n) => cut(pieces, n as usize * row),
        None => pieces,
    };
    if count_later && !strict && e.dtype == e.source_dtype {
        return Ok(Merged {
            pieces,
            non_finite: 0,
            uncounted: true,
        });
    }
    finish(e, pieces, None, strict)
}

/// Count NaN/Inf (unless the merge `counted` them), refuse them when `strict`, cast to the
/// output dtype.
fn finish<'a>(
    e: &Entry,
    pieces: Vec<Cow<'a, [u8]>>,
    counted: Option<u64>,
    strict: bool,
) -> Result<Merged<'a>> {
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
        return Ok(Merged {
            pieces,
            non_finite,
            uncounted: false,
        });
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
    Ok(Merged {
        pieces,
        non_finite,
        uncounted: false,
    })
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
    let (rows, cols) = part_shape(e)?;
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

/// One part's rows and columns (1-D is one column), as the plan admitted them.
fn part_shape(e: &Entry) -> Result<(usize, usize)> {
    match e.rank_shapes[0].as_slice() {
        [n] => Ok((*n as usize, 1)),
        [r, c] => Ok((*r as usize, *c as usize)),
        other => Err(Error::internal(format!(
            "tensor `{}`: the plan admitted shape {other:?}",
            e.source
        ))),
    }
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

#[cfg(test)]
mod tests {
    use half::{bf16, f16};

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
}
