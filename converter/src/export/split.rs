//! Splitting one whole tensor (in the target family's orientation, query/key/value rows in the
//! merged order: all q, all k, all v) into its tensor-parallel ranks' parts: the inverse of
//! `merge`. The query/key/value layouts are not restated here: `merge::blocks` says where each
//! rank's rows land in the merged matrix, and a split gives each rank those rows back.

use std::borrow::Cow;

use crate::error::{Error, Result};
use crate::mapping::Split;
use crate::merge;
use crate::plan::Entry;

/// A tensor's bytes as a list of pieces in order (borrowed from the input, or owned).
pub type Pieces<'a> = Vec<Cow<'a, [u8]>>;

/// The parts of `whole` (rows x cols elements of `es` bytes, as pieces) for `p` ranks, split as
/// `e.split` says (`e.heads` heads for the per-head layouts).
pub fn split<'b>(
    e: &Entry,
    whole: &'b [Cow<'_, [u8]>],
    (rows, cols): (usize, usize),
    es: usize,
    p: usize,
) -> Result<Vec<Pieces<'b>>> {
    let row = cols * es;
    let total: usize = whole.iter().map(|w| w.len()).sum();
    if total != rows * row || p == 0 || (e.split != Split::Replicated && rows % p != 0) {
        return Err(Error::internal(format!(
            "tensor `{}`: {total} bytes cannot be split as {rows} x {cols} over {p} ranks",
            e.target
        )));
    }
    Ok(match e.split {
        Split::Replicated => (0..p).map(|_| slice(whole, 0..total)).collect(),
        Split::Dim0 => {
            let n = rows / p * row;
            (0..p).map(|r| slice(whole, r * n..(r + 1) * n)).collect()
        }
        Split::Dim1 => columns(e, whole, (rows, cols), es, p)?,
        _ => {
            let mut parts: Vec<Pieces<'b>> = vec![Vec::new(); p];
            let mut blocks = merge::blocks(e, p, rows / p, cols)?;
            blocks.sort_by_key(|b| (b.rank, b.src_row));
            for b in blocks {
                let at = b.dst_row * row;
                let part = parts.get_mut(b.rank).ok_or_else(|| {
                    Error::internal(format!("tensor `{}`: block for rank {}", e.target, b.rank))
                })?;
                part.extend(slice(whole, at..at + b.rows * row));
            }
            parts
        }
    })
}

/// Row-parallel weights: rank r gets columns r*cols/p.. of every row (copied).
fn columns<'b>(
    e: &Entry,
    whole: &[Cow<'_, [u8]>],
    (rows, cols): (usize, usize),
    es: usize,
    p: usize,
) -> Result<Vec<Pieces<'b>>> {
    if cols % p != 0 {
        return Err(Error::internal(format!(
            "tensor `{}`: {cols} columns over {p} ranks",
            e.target
        )));
    }
    let joined: Cow<'_, [u8]> = match whole {
        [one] => Cow::Borrowed(&one[..]),
        many => Cow::Owned(many.concat()),
    };
    let (w, n) = (cols * es, cols / p * es);
    Ok((0..p)
        .map(|r| {
            let mut out = Vec::with_capacity(rows * n);
            for i in 0..rows {
                out.extend_from_slice(&joined[i * w + r * n..i * w + (r + 1) * n]);
            }
            vec![Cow::Owned(out)]
        })
        .collect())
}

/// The bytes `range` of a piece list, borrowing the pieces.
pub fn slice<'b>(pieces: &'b [Cow<'_, [u8]>], range: std::ops::Range<usize>) -> Pieces<'b> {
    let mut out = Vec::new();
    let mut at = 0;
    for p in pieces {
        let (start, end) = (at, at + p.len());
        at = end;
        let (lo, hi) = (range.start.max(start), range.end.min(end));
        if lo < hi {
            out.push(Cow::Borrowed(&p[lo - start..hi - start]));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use cpm_torch::Dtype;

    fn entry(split: Split, heads: u64) -> Entry {
        Entry {
            target: "t".into(),
            source: "s".into(),
            split,
            transpose: false,
            source_dtype: Dtype::U8,
            dtype: Dtype::U8,
            rank_shapes: Vec::new(),
            shape: Vec::new(),
            zeros: false,
            keep_rows: None,
            heads,
            sources: Vec::new(),
            dims: Vec::new(),
        }
    }

    fn joined(p: &Pieces<'_>) -> Vec<u8> {
        p.concat()
    }

    /// Splitting then merging gives the tensor back, for every split kind (the merge being the
    /// tested reader's): 4 heads of dim 2 over 2 ranks, 3 columns.
    #[test]
    fn split_is_the_inverse_of_merge_for_every_layout() {
        let (rows, cols) = (24usize, 3usize);
        let whole: Vec<u8> = (0..(rows * cols) as u8).collect();
        let pieces = vec![Cow::Borrowed(&whole[..10]), Cow::Borrowed(&whole[10..])];
        for split in [
            Split::Dim0,
            Split::Dim1,
            Split::QkvDim0,
            Split::QkvHeads3Dim,
            Split::QkvHeadsDim3,
        ] {
            let cols = if split == Split::Dim1 { 6 } else { cols };
            let rows = rows * 3 / cols;
            let e = entry(split, 4);
            let parts = split_all(&e, &pieces, rows, cols);
            let mut me = e.clone();
            let (pr, pc) = if split == Split::Dim1 {
                (rows, cols / 2)
            } else {
                (rows / 2, cols)
            };
            me.rank_shapes = vec![vec![pr as u64, pc as u64]; 2];
            let owned: Vec<Vec<u8>> = parts.iter().map(joined).collect();
            let back = merge::merge(
                &me,
                owned.iter().map(|o| Cow::Borrowed(&o[..])).collect(),
                &["a".into(), "b".into()],
                &mut |n| vec![0; n],
            )
            .unwrap();
            assert_eq!(back.concat(), whole, "{split:?}");
        }
    }

    fn split_all<'b>(
        e: &Entry,
        pieces: &'b [Cow<'_, [u8]>],
        rows: usize,
        cols: usize,
    ) -> Vec<Pieces<'b>> {
        split(e, pieces, (rows, cols), 1, 2).unwrap()
    }

    /// CPM's qkv-dim0 by hand: rank 0 holds [q of heads 0-1; k 0-1; v 0-1].
    #[test]
    fn qkv_dim0_gives_each_rank_its_heads_q_k_v_in_turn() {
        let whole: Vec<u8> = (0..12).collect(); // q 0..4, k 4..8, v 8..12, 4 heads of 1
        let pieces = vec![Cow::Borrowed(&whole[..])];
        let parts = split(&entry(Split::QkvDim0, 4), &pieces, (12, 1), 1, 2).unwrap();
        assert_eq!(joined(&parts[0]), vec![0, 1, 4, 5, 8, 9]);
        assert_eq!(joined(&parts[1]), vec![2, 3, 6, 7, 10, 11]);
        let parts = split(&entry(Split::QkvHeads3Dim, 4), &pieces, (12, 1), 1, 2).unwrap();
        assert_eq!(joined(&parts[0]), vec![0, 4, 8, 1, 5, 9]);
    }
}
