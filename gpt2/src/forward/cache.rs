//! The KV cache: each layer's keys and values for every position a generation has run so far,
//! so that a decode step computes only its new token and attends over the cache.

use crate::error::{checked_product, Error, Result};
use crate::model::Model;

/// The most bytes a cache may hold (keys and values of every layer). CPM-LM-Large with 4 beams
/// over all 1024 positions needs 2.7 GB.
pub const MAX_CACHE_BYTES: usize = 16 << 30;

/// Keys and values `[rows, capacity, n_embd]` per layer; positions `0..len` of every row are
/// filled (all rows advance together: one pass appends the same number of positions to each).
#[derive(Debug)]
pub struct KvCache {
    pub(super) h: usize,
    pub(super) capacity: usize,
    pub(super) rows: usize,
    pub(super) len: usize,
    pub(super) k: Vec<Vec<f32>>,
    pub(super) v: Vec<Vec<f32>>,
}

impl KvCache {
    /// An empty cache for `rows` sequences of at most `capacity` positions each: allocate what
    /// the generation needs (prompt + new tokens), not `n_positions`.
    pub fn new(model: &Model, rows: usize, capacity: usize) -> Result<KvCache> {
        let c = &model.config;
        if capacity > c.n_positions || rows == 0 {
            return Err(Error::limit(
                &model.dir,
                format!(
                    "a KV cache of {rows} rows x {capacity} positions does not fit the model's \
                     n_positions {}",
                    c.n_positions
                ),
            ));
        }
        let per_layer = checked_product(&[rows, capacity, c.n_embd], "KV cache size")?;
        check_bytes(model, per_layer, c.n_layer)?;
        Ok(KvCache {
            h: c.n_embd,
            capacity,
            rows,
            len: 0,
            k: (0..c.n_layer).map(|_| vec![0f32; per_layer]).collect(),
            v: (0..c.n_layer).map(|_| vec![0f32; per_layer]).collect(),
        })
    }

    /// Positions filled in every row.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether no position is filled yet.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Sequences (batch rows or beams) held.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Positions each row can hold.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Makes row `r` a copy of the old row `src[r]`, for every layer (beam search keeps the best
    /// continuations). `src` may be longer or shorter than the current row count: one prompt's
    /// cache becomes `n` beams with `reorder(&[0; n])`.
    pub fn reorder(&mut self, src: &[usize]) -> Result<()> {
        if src.is_empty() || src.iter().any(|&s| s >= self.rows) {
            return Err(Error::Internal(format!(
                "KV cache reorder {src:?} for {} rows",
                self.rows
            )));
        }
        let (row, used) = (self.capacity * self.h, self.len * self.h);
        let per_layer = checked_product(&[src.len(), row], "KV cache size")?;
        if src.len() > self.rows {
            let layers = self.k.len();
            check_bytes_raw(per_layer, layers)?;
        }
        let mut tmp = vec![0f32; src.len() * used];
        for buf in self.k.iter_mut().chain(self.v.iter_mut()) {
            for (t, &s) in tmp.chunks_exact_mut(used.max(1)).zip(src) {
                t.copy_from_slice(&buf[s * row..s * row + used]);
            }
            buf.resize(per_layer, 0.0);
            for (r, t) in tmp.chunks_exact(used.max(1)).enumerate() {
                buf[r * row..r * row + used].copy_from_slice(t);
            }
        }
        self.rows = src.len();
        Ok(())
    }
}

fn check_bytes(model: &Model, per_layer: usize, layers: usize) -> Result<()> {
    check_bytes_raw(per_layer, layers).map_err(|_| {
        Error::limit(
            &model.dir,
            format!(
                "a KV cache of {per_layer} floats per layer x {layers} layers x 2 exceeds \
                 {MAX_CACHE_BYTES} bytes: ask for fewer positions or beams"
            ),
        )
    })
}

fn check_bytes_raw(per_layer: usize, layers: usize) -> Result<()> {
    let bytes = checked_product(&[per_layer, layers, 2, 4], "KV cache bytes")?;
    if bytes > MAX_CACHE_BYTES {
        return Err(Error::Overflow(format!(
            "KV cache of {bytes} bytes exceeds {MAX_CACHE_BYTES}"
        )));
    }
    Ok(())
}

impl KvCache {
    /// Writes the keys and values of a pass's `qkv` rows (`rows x new` tokens, `[q | k | v]`)
    /// into layer `l` at positions `len..len + new`; the caller checked that they fit.
    pub(super) fn store(&mut self, l: usize, qkv: &[f32], new: usize) -> Result<()> {
        let (h, row) = (self.h, self.capacity * self.h);
        let (Some(k), Some(v)) = (self.k.get_mut(l), self.v.get_mut(l)) else {
            return Err(Error::Internal(format!("KV cache has no layer {l}")));
        };
        for (t, src) in qkv.chunks_exact(3 * h).enumerate() {
            let (b, i) = (t / new.max(1), t % new.max(1));
            let at = b * row + (self.len + i) * h;
            let (Some(kd), Some(vd)) = (k.get_mut(at..at + h), v.get_mut(at..at + h)) else {
                return Err(Error::Internal("KV cache write out of bounds".into()));
            };
            kd.copy_from_slice(&src[h..2 * h]);
            vd.copy_from_slice(&src[2 * h..]);
        }
        Ok(())
    }
}
