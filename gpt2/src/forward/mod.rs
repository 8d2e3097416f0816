//! The GPT-2 forward pass (transformers' `GPT2LMHeadModel` in eval mode), on the CPU or CUDA.
//! Both devices compute in f32 whatever the stored dtype and read one layer's weights at a time.

mod attention;
pub mod cache;
pub mod cpu;
#[cfg(feature = "cuda")]
pub mod cuda;
pub mod half;
mod matmul;
mod panel;
mod vmath;
mod widen;

use std::fmt;
use std::str::FromStr;

pub use cache::KvCache;
pub use cpu::{Logits, Pass};
pub use vmath::{activate, layer_norm, softmax};

use crate::error::{checked_product, Error, Result};
use crate::model::Model;
use crate::Options;

/// Where the forward pass runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Device {
    /// The CPU, with the `gemm` crate.
    Cpu,
    /// A CUDA device by ordinal (cuBLAS + NVRTC; needs the `cuda` feature).
    Cuda(usize),
}

impl FromStr for Device {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "cpu" => Ok(Device::Cpu),
            "cuda" => Ok(Device::Cuda(0)),
            _ => s
                .strip_prefix("cuda:")
                .and_then(|n| n.parse().ok())
                .map(Device::Cuda)
                .ok_or_else(|| format!("unknown device \"{s}\", expected cpu, cuda or cuda:N")),
        }
    }
}

impl fmt::Display for Device {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Device::Cpu => write!(f, "cpu"),
            Device::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

/// Computes logits `[batch, seq, vocab]` (row-major) for `ids` `[batch, seq]`, which the caller
/// has checked against the model (ids within the vocabulary, seq within n_positions).
pub fn run(
    model: &Model,
    ids: &[u32],
    batch: usize,
    seq: usize,
    opts: &Options,
) -> Result<Vec<f32>> {
    let c = &model.config;
    let tokens = checked_product(&[batch, seq], "batch * seq")?;
    if ids.len() != tokens || seq > c.n_positions || ids.iter().any(|&i| i as usize >= c.vocab_size)
    {
        return Err(Error::Internal(format!(
            "forward pass given {} ids for [{batch}, {seq}] that were not checked against the model",
            ids.len()
        )));
    }
    check_activations(model, tokens)?;
    let threads = opts.threads.clamp(1, MAX_THREADS);
    match opts.device {
        Device::Cpu => {
            let pass = Pass {
                rows: batch,
                new: seq,
                past: 0,
                direct: false,
            };
            cpu::forward(model, ids, pass, None, Logits::All, threads)
        }
        #[cfg(feature = "cuda")]
        Device::Cuda(ordinal) => cuda::forward(model, ids, batch, seq, ordinal),
        #[cfg(not(feature = "cuda"))]
        Device::Cuda(_) => Err(Error::Device(
            "built without CUDA support; rebuild with `cargo build --release \
             --features cuda` or use --device cpu"
                .into(),
        )),
    }
}

/// One pass on the CPU over `new = ids.len() / cache.rows()` tokens per row at positions
/// `cache.len()..cache.len() + new`: appends each layer's keys and values to `cache`, attends
/// over cache + new, and returns the logits `which` asks for. The same code as [`run`], which is
/// this pass with no cache.
pub fn run_cached(
    model: &Model,
    ids: &[u32],
    cache: &mut KvCache,
    which: Logits,
    threads: usize,
) -> Result<Vec<f32>> {
    let c = &model.config;
    let rows = cache.rows();
    let new = ids.len() / rows;
    if new == 0
        || new * rows != ids.len()
        || cache.len() + new > cache.capacity()
        || cache.h != c.n_embd
        || cache.k.len() != c.n_layer
        || ids.iter().any(|&i| i as usize >= c.vocab_size)
    {
        return Err(Error::Internal(format!(
            "cached pass given {} ids for {rows} rows after {} of {} positions, unchecked",
            ids.len(),
            cache.len(),
            cache.capacity()
        )));
    }
    check_activations(model, ids.len())?;
    let pass = Pass {
        rows,
        new,
        past: cache.len(),
        direct: ids.len() <= half::DIRECT_MAX_TOKENS,
    };
    cpu::forward(
        model,
        ids,
        pass,
        Some(cache),
        which,
        threads.clamp(1, MAX_THREADS),
    )
}

/// The most bytes of activations (the residual stream, q/k/v, the attention context and the MLP's
/// inner layer, for every token at once) the forward pass may hold. CPM-LM-Large (n_embd 2560,
/// n_inner 10240) at batch 4 x 1024 positions needs 0.4 GB; the cap refuses inputs whose sizes
/// multiply to more (many tokens times a wide model) before an allocation can fail.
pub const MAX_ACTIVATION_BYTES: usize = 4 << 30;
/// More threads than this only add memory (one score row each in attention).
pub const MAX_THREADS: usize = 1024;

/// The thread count when none is asked for: `RAYON_NUM_THREADS` when set to a number above 0
/// (rayon's own rule), else every core (at most [`MAX_THREADS`]). Read without starting rayon's
/// global pool: every pass runs on a pool of its own.
pub fn default_threads() -> usize {
    let env = std::env::var("RAYON_NUM_THREADS")
        .ok()
        .and_then(|v| v.parse().ok());
    match env {
        Some(n) if n > 0 => n,
        _ => std::thread::available_parallelism().map_or(1, |n| n.get().min(MAX_THREADS)),
    }
}

/// `--threads N` if given, else [`default_threads`]; a count outside 1..=[`MAX_THREADS`] is
/// clamped with a warning.
pub fn resolve_threads(asked: Option<usize>, warnings: &mut Vec<String>) -> usize {
    let n = asked.unwrap_or_else(default_threads);
    let used = n.clamp(1, MAX_THREADS);
    if used != n {
        warnings.push(format!(
            "--threads {n} is outside 1..={MAX_THREADS}; using {used}"
        ));
    }
    used
}

/// Refuses a token count whose activations would exceed [`MAX_ACTIVATION_BYTES`]. The logits
/// (tokens x vocab) are not counted: the fixture's own logits file is at least half their size.
fn check_activations(model: &Model, tokens: usize) -> Result<()> {
    let c = &model.config;
    // Live at once at worst: x, the LayerNorm copy, q/k/v and the context (6h), or x, the copy
    // and the MLP's inner layer (2h + inner).
    let h = c.n_embd;
    let width = h
        .saturating_mul(6)
        .max(h.saturating_mul(2).saturating_add(c.n_inner));
    let bytes = checked_product(&[tokens, width, 4], "activation buffers")?;
    if bytes > MAX_ACTIVATION_BYTES {
        return Err(Error::limit(
            &model.dir,
            format!(
                "{tokens} tokens at n_embd {} and n_inner {} need {bytes} bytes of activations; \
                 cpm-verify holds at most {MAX_ACTIVATION_BYTES}: verify fewer tokens at a time",
                c.n_embd, c.n_inner
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_names_parse_and_print_back() {
        assert_eq!("cpu".parse::<Device>(), Ok(Device::Cpu));
        assert_eq!("cuda".parse::<Device>(), Ok(Device::Cuda(0)));
        assert_eq!("cuda:3".parse::<Device>(), Ok(Device::Cuda(3)));
        assert!("gpu".parse::<Device>().is_err());
        assert_eq!(Device::Cuda(1).to_string(), "cuda:1");
    }
}
