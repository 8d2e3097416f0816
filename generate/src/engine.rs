//! How a generation runs the model: on the CPU, the verifier's forward pass with a KV cache
//! (each step computes only the new token of every row); elsewhere (CUDA), the verifier's
//! uncached forward pass over the whole sequence of every row at each step.

use cpm_gpt2::forward::{self, KvCache, Logits};
use cpm_gpt2::model::Model;
use cpm_gpt2::{Device, Options};

use crate::error::{Error, Result};

/// The rows (beams) being generated, the model state behind them, and the thread pool every
/// pass runs in (so that `threads` bounds rayon's work and gemm's alike).
pub struct Engine<'m> {
    state: State<'m>,
    pool: rayon::ThreadPool,
}

enum State<'m> {
    /// CPU: a KV cache sized for prompt + new tokens.
    Cached {
        model: &'m Model,
        cache: KvCache,
        threads: usize,
    },
    /// Any device: every row's full sequence, recomputed each step.
    Recompute {
        model: &'m Model,
        seqs: Vec<Vec<u32>>,
        opts: Options,
    },
}

impl<'m> Engine<'m> {
    /// An engine for one prompt that will grow to at most `positions` tokens.
    pub fn new(model: &'m Model, positions: usize, device: Device, threads: usize) -> Result<Self> {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads.max(1))
            .build()
            .map_err(|e| Error::Options(format!("cannot start {threads} threads: {e}")))?;
        let state = match device {
            Device::Cpu => State::Cached {
                model,
                cache: KvCache::new(model, 1, positions)?,
                threads,
            },
            Device::Cuda(_) => State::Recompute {
                model,
                seqs: vec![Vec::new()],
                opts: Options { device, threads },
            },
        };
        Ok(Engine { state, pool })
    }

    /// Appends `tokens` (the same count to every row, row-major) and returns the logits of each
    /// row's last position, `[rows, vocab]`.
    pub fn feed(&mut self, tokens: &[u32]) -> Result<Vec<f32>> {
        let state = &mut self.state;
        self.pool.install(|| state.feed(tokens))
    }

    /// Row `r` becomes a copy of old row `src[r]` (beam search); `src` may change the row count.
    pub fn reorder(&mut self, src: &[usize]) -> Result<()> {
        self.state.reorder(src)
    }
}

impl State<'_> {
    fn feed(&mut self, tokens: &[u32]) -> Result<Vec<f32>> {
        let logits = match self {
            State::Cached {
                model,
                cache,
                threads,
            } => forward::run_cached(model, tokens, cache, Logits::Last, *threads)?,
            State::Recompute { model, seqs, opts } => {
                let per = tokens.len() / seqs.len().max(1);
                for (s, t) in seqs.iter_mut().zip(tokens.chunks(per.max(1))) {
                    s.extend_from_slice(t);
                }
                let seq = seqs.first().map_or(0, Vec::len);
                let ids: Vec<u32> = seqs.concat();
                let all = forward::run(model, &ids, seqs.len(), seq, opts)?;
                let v = model.config.vocab_size;
                all.chunks_exact(seq * v)
                    .flat_map(|row| &row[(seq - 1) * v..])
                    .copied()
                    .collect()
            }
        };
        Ok(logits)
    }

    fn reorder(&mut self, src: &[usize]) -> Result<()> {
        match self {
            State::Cached { cache, .. } => Ok(cache.reorder(src)?),
            State::Recompute { seqs, .. } => {
                let old = std::mem::take(seqs);
                for &s in src {
                    let row = old
                        .get(s)
                        .ok_or_else(|| Error::Internal(format!("reorder to missing row {s}")))?;
                    seqs.push(row.clone());
                }
                Ok(())
            }
        }
    }
}
