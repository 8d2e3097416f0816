//! The forward pass on a CUDA device (work in progress).

use crate::error::{Error, Result};
use crate::model::Model;

/// Computes logits `[batch, seq, vocab]` on CUDA device `ordinal`.
pub fn forward(
    _model: &Model,
    _ids: &[u32],
    _batch: usize,
    _seq: usize,
    _ordinal: usize,
) -> Result<Vec<f32>> {
    Err(Error::Device(
        "the CUDA forward pass is not implemented yet".into(),
    ))
}
