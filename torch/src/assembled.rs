//! Tensors whose bytes lie outside the file that names them, in pieces.
//!
//! [`Assembled`] is the one plug-in a [`TorchFile`](crate::TorchFile) has for them: a
//! Distributed Checkpoint folder ([`crate::dcp::Dcp`]) implements it, and so can a caller (the
//! converter's DeepSpeed ZeRO optimizer partitions).
//!
//! [`Tiled`] is the geometry every such format reduces to: a global shape and dtype, and
//! rectangular [`Chunk`]s of it, each stored somewhere the caller knows (a chunk of a 1-D view,
//! `shape = [numel]`, `offsets = [start]`, `sizes = [len]`, is a run of a flattened tensor).
//! [`Tiled::check`] proves, before a byte is read, that the chunks tile the global tensor
//! exactly (each inside it, none overlapping, together covering it), so [`Tiled::fill`] can
//! write any element range of the row-major global tensor from the chunks it touches alone.
//! Where a chunk's bytes are is the caller's business: [`Chunk::source`] indexes its own table.

use std::borrow::Cow;
use std::ops::Range;

use crate::error::Result;
use crate::pages::Pages;
use crate::tensor::{Dtype, TensorRef};

/// Tensors a [`TorchFile`](crate::TorchFile) stands for whose bytes lie elsewhere, in pieces.
/// Keyed by the storage key of the tensor references the file's object tree holds.
pub trait Assembled {
    /// Whether `key` names one of these tensors.
    fn holds(&self, key: &str) -> bool;
    /// Check that every piece of `t` lies inside its file.
    fn check(&self, name: &str, t: &TensorRef) -> Result<()>;
    /// `t`'s elements in row-major order: borrowed from a map when one piece holds them whole
    /// (release its pages with [`Assembled::pages`] once done), else gathered from the pieces
    /// (whose pages are released once copied).
    fn read(&self, name: &str, t: &TensorRef) -> Result<Cow<'_, [u8]>>;
    /// `t`'s elements in row-major order as pieces to be taken one after the other: each
    /// piece's bytes lent from a map where they lie whole (a DCP chunk of whole rows), so a
    /// caller that can work on pieces need not join them. By default the one [`Assembled::read`].
    fn read_pieces(&self, name: &str, t: &TensorRef) -> Result<Vec<Cow<'_, [u8]>>> {
        self.read(name, t).map(|b| vec![b])
    }
    /// The mapped byte ranges a read of `t` lends, for the caller to release once done with
    /// them (ranges a read copied may be among them: releasing those again is harmless).
    fn pages(&self, name: &str, t: &TensorRef) -> Vec<(Pages<'_>, Range<u64>)>;
    /// For reports that know the concrete kind.
    fn as_any(&self) -> &dyn std::any::Any;
}

/// Most dimensions a tensor may have (as the pickle reader allows).
pub const MAX_NDIM: usize = 64;

/// One rectangular piece of a global tensor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chunk {
    /// Where the piece starts in each dimension of the global tensor.
    pub offsets: Vec<u64>,
    /// Its extent in each dimension; its elements are stored row-major and contiguous.
    pub sizes: Vec<u64>,
    /// Which of the caller's byte sources holds the piece.
    pub source: usize,
}

impl Chunk {
    fn numel(&self) -> u64 {
        self.sizes.iter().product()
    }
}

/// A global tensor and the chunks it is stored as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tiled {
    /// Element type.
    pub dtype: Dtype,
    /// Global shape.
    pub shape: Vec<u64>,
    /// The pieces, which [`Tiled::check`] proves tile the tensor.
    pub chunks: Vec<Chunk>,
}

impl Tiled {
    /// Elements in the global tensor (checked by [`Tiled::check`] not to overflow).
    pub fn numel(&self) -> u64 {
        self.shape.iter().product()
    }

    /// Bytes of the global tensor, row-major.
    pub fn nbytes(&self) -> Option<u64> {
        self.shape
            .iter()
            .try_fold(self.dtype.size() as u64, |a, &d| a.checked_mul(d))
    }

    /// The chunks tile the tensor: each has the tensor's rank and lies inside it, no two
    /// overlap, and their element counts add up to the tensor's. Overflow-checked throughout.
    pub fn check(&self) -> Result<(), String> {
        let nd = self.shape.len();
        if nd > MAX_NDIM {
            return Err(format!("has {nd} dimensions (at most {MAX_NDIM})"));
        }
        let total = self
            .nbytes()
            .ok_or_else(|| format!("shape {:?} overflows", self.shape))?
            / self.dtype.size() as u64;
        let mut covered = 0u64;
        for c in &self.chunks {
            if c.offsets.len() != nd || c.sizes.len() != nd {
                return Err(format!(
                    "chunk at offsets {:?} (sizes {:?}) does not have the tensor's {nd} dimensions",
                    c.offsets, c.sizes
                ));
            }
            for d in 0..nd {
                let end = c.offsets[d].checked_add(c.sizes[d]);
                if end.map_or(true, |e| e > self.shape[d]) {
                    return Err(format!(
                        "chunk at offsets {:?} sizes {:?} exceeds the global shape {:?}",
                        c.offsets, c.sizes, self.shape
                    ));
                }
            }
            // Inside the tensor, so its element count is at most the tensor's.
            covered = covered.saturating_add(c.numel());
        }
        self.check_disjoint()?;
        if covered != total {
            return Err(format!(
                "chunks cover {covered} of the {total} elements of shape {:?}: the chunks leave \
                 holes",
                self.shape
            ));
        }
        Ok(())
    }

    /// No two chunks overlap: a sweep along dimension 0 compares only chunks whose first
    /// dimension ranges meet (a tensor-parallel grid compares a handful each).
    fn check_disjoint(&self) -> Result<(), String> {
        if self.shape.is_empty() {
            return match self.chunks.len() {
                0 | 1 => Ok(()),
                _ => Err("a scalar has several chunks: the chunks overlap".into()),
            };
        }
        let mut order: Vec<&Chunk> = self.chunks.iter().filter(|c| c.numel() > 0).collect();
        order.sort_by_key(|c| c.offsets[0]);
        let mut active: Vec<&Chunk> = Vec::new();
        for c in order {
            active.retain(|a| a.offsets[0] + a.sizes[0] > c.offsets[0]);
            if let Some(a) = active.iter().find(|a| overlap(a, c)) {
                return Err(format!(
                    "chunks at offsets {:?} (sizes {:?}) and {:?} (sizes {:?}) overlap",
                    a.offsets, a.sizes, c.offsets, c.sizes
                ));
            }
            active.push(c);
        }
        Ok(())
    }

    /// Write elements `range` of the row-major global tensor into `out` (`range.len()` elements
    /// of the dtype), from the chunks that hold them. `bytes(i)` gives chunk `i`'s row-major
    /// contiguous bytes; it is called only for chunks the range touches. Assumes
    /// [`Tiled::check`] passed.
    pub fn fill<'a, E>(
        &self,
        range: Range<u64>,
        out: &mut [u8],
        mut bytes: impl FnMut(usize) -> Result<std::borrow::Cow<'a, [u8]>, E>,
    ) -> Result<(), E> {
        let es = self.dtype.size() as u64;
        let strides = row_major_strides(&self.shape);
        for (i, c) in self.chunks.iter().enumerate() {
            let Some((first, last)) = extent(c, &strides) else {
                continue;
            };
            if last < range.start || first >= range.end {
                continue;
            }
            let data = bytes(i)?;
            for_each_row(c, &strides, |row, g| {
                let len = c.sizes.last().copied().unwrap_or(1);
                let (lo, hi) = (g.max(range.start), (g + len).min(range.end));
                if lo < hi {
                    let src = (row * len + (lo - g)) * es;
                    let dst = (lo - range.start) * es;
                    let n = ((hi - lo) * es) as usize;
                    out[dst as usize..dst as usize + n]
                        .copy_from_slice(&data[src as usize..src as usize + n]);
                }
            });
        }
        Ok(())
    }
}

fn overlap(a: &Chunk, b: &Chunk) -> bool {
    (0..a.offsets.len()).all(|d| {
        a.offsets[d] < b.offsets[d] + b.sizes[d] && b.offsets[d] < a.offsets[d] + a.sizes[d]
    })
}

fn row_major_strides(shape: &[u64]) -> Vec<u64> {
    let mut s = vec![1u64; shape.len()];
    for d in (0..shape.len().saturating_sub(1)).rev() {
        s[d] = s[d + 1] * shape[d + 1];
    }
    s
}

/// The first and last global element index a non-empty chunk touches.
fn extent(c: &Chunk, strides: &[u64]) -> Option<(u64, u64)> {
    if c.numel() == 0 {
        return None;
    }
    let first = c.offsets.iter().zip(strides).map(|(o, s)| o * s).sum();
    let last = (0..c.offsets.len())
        .map(|d| (c.offsets[d] + c.sizes[d] - 1) * strides[d])
        .sum();
    Some((first, last))
}

/// Call `f(row number in the chunk, global index of the row's first element)` for every run
/// along the last dimension (a scalar is one run of one element).
fn for_each_row(c: &Chunk, strides: &[u64], mut f: impl FnMut(u64, u64)) {
    let nd = c.sizes.len();
    if nd == 0 {
        return f(0, 0);
    }
    let rows: u64 = c.sizes[..nd - 1].iter().product();
    let mut idx = vec![0u64; nd - 1];
    for row in 0..rows {
        let g = (0..nd - 1)
            .map(|d| (c.offsets[d] + idx[d]) * strides[d])
            .sum::<u64>()
            + c.offsets[nd - 1];
        f(row, g);
        for d in (0..nd - 1).rev() {
            idx[d] += 1;
            if idx[d] < c.sizes[d] {
                break;
            }
            idx[d] = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunk(offsets: &[u64], sizes: &[u64], source: usize) -> Chunk {
        Chunk {
            offsets: offsets.to_vec(),
            sizes: sizes.to_vec(),
            source,
        }
    }

    fn tensor(shape: &[u64], chunks: Vec<Chunk>) -> Tiled {
        Tiled {
            dtype: Dtype::U8,
            shape: shape.to_vec(),
            chunks,
        }
    }

    #[test]
    fn column_split_assembles_in_row_major_order() {
        // [2, 4] split into two [2, 2] column blocks: bytes 0..8 are the global values.
        let t = tensor(
            &[2, 4],
            vec![chunk(&[0, 2], &[2, 2], 1), chunk(&[0, 0], &[2, 2], 0)],
        );
        t.check().unwrap();
        let data = [vec![0u8, 1, 4, 5], vec![2u8, 3, 6, 7]];
        let mut out = vec![9u8; 5];
        t.fill(2..7, &mut out, |i| {
            Ok::<_, ()>(std::borrow::Cow::Borrowed(&data[t.chunks[i].source][..]))
        })
        .unwrap();
        assert_eq!(out, [2, 3, 4, 5, 6]);
    }

    #[test]
    fn holes_overlaps_and_overruns_are_refused() {
        let hole = tensor(&[4], vec![chunk(&[0], &[3], 0)]);
        assert!(hole.check().unwrap_err().contains("holes"));
        let over = tensor(&[4], vec![chunk(&[0], &[3], 0), chunk(&[2], &[2], 1)]);
        assert!(over.check().unwrap_err().contains("overlap"));
        let past = tensor(&[4], vec![chunk(&[2], &[u64::MAX], 0)]);
        assert!(past.check().unwrap_err().contains("exceeds"));
        let rank = tensor(&[4, 1], vec![chunk(&[0], &[4], 0)]);
        assert!(rank.check().unwrap_err().contains("dimensions"));
    }
}
