//! Text generation with a converted CPM-LM (any Hugging Face GPT-2 directory) on the
//! model crate's forward pass (`cpm_gpt2::forward`, the one verification runs): a prefill over the prompt fills a KV
//! cache, then each step runs only the new token of every row (beam) through the same code.
//! The decoding strategies follow transformers' `generate`: greedy, sampling (temperature,
//! top-k, top-p) and beam search ([`beam`]). [`job`] is a whole `cpm-generate` run (prompt,
//! tokenizer, eos ids, the continuation as text), [`prompt`] where a prompt comes from.
#![deny(missing_docs)]

pub mod beam;
pub mod engine;
pub mod eos;
pub mod error;
pub mod job;
pub mod prompt;
pub mod sample;

pub use error::{Error, Result};
pub use sample::Sampling;

use std::time::Instant;

use cpm_gpt2::model::Model;
use cpm_gpt2::Device;

use engine::Engine;

/// The most beams: each is a row of the KV cache and of every decode step (a beam search of
/// CPM-LM-Large over 1024 positions holds 0.66 GB of cache per beam).
pub const MAX_BEAMS: usize = 64;

/// How the next token is chosen.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Strategy {
    /// The most likely token (transformers' default for a generation_config without
    /// do_sample, and ours).
    Greedy,
    /// A seeded draw; see [`Sampling`].
    Sample(Sampling),
    /// Beam search with this many beams (1 is greedy).
    Beam(usize),
}

/// One generation's settings.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Stop after this many new tokens.
    pub max_new_tokens: usize,
    /// eos is suppressed (logit -inf) until this many new tokens.
    pub min_new_tokens: usize,
    /// How tokens are chosen.
    pub strategy: Strategy,
    /// Stop tokens (included in the output when hit).
    pub eos: Vec<u32>,
    /// Where the forward pass runs.
    pub device: Device,
    /// CPU threads (every pool: gemm's and ours).
    pub threads: usize,
}

/// Why generation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Stop {
    /// An eos token was generated.
    Eos,
    /// The caller's callback asked to stop (cpm-generate: the stop text appeared).
    StopText,
    /// `max_new_tokens` were generated.
    MaxNewTokens,
}

/// What a generation produced.
#[derive(Debug, Clone)]
pub struct Output {
    /// The new tokens (the eos included when it ended on one).
    pub ids: Vec<u32>,
    /// Seconds for the prompt pass (which yields the first new token).
    pub prefill_seconds: f64,
    /// Seconds for every later token.
    pub decode_seconds: f64,
    /// Why it stopped.
    pub stop: Stop,
}

/// Generates after `prompt`. `on_token` sees all new ids after each token (greedy and sampling;
/// beam search calls it once with the result) and returns false to stop.
pub fn generate(
    model: &Model,
    prompt: &[u32],
    s: &Settings,
    on_token: &mut dyn FnMut(&[u32]) -> Result<bool>,
) -> Result<Output> {
    check(model, prompt, s)?;
    run(model, prompt, s, on_token)
}

/// Refuses what cannot run, before any compute.
fn check(model: &Model, prompt: &[u32], s: &Settings) -> Result<()> {
    let c = &model.config;
    if prompt.is_empty() {
        return Err(Error::EmptyPrompt);
    }
    if let Some(&id) = prompt.iter().find(|&&i| i as usize >= c.vocab_size) {
        return Err(Error::BadToken {
            id,
            vocab: c.vocab_size,
        });
    }
    let total = prompt.len().saturating_add(s.max_new_tokens);
    if total > c.n_positions {
        return Err(Error::TooLong {
            prompt: prompt.len(),
            max_new: s.max_new_tokens,
            total,
            n_positions: c.n_positions,
        });
    }
    if s.max_new_tokens == 0 {
        return Err(Error::Options("--max-new-tokens must be at least 1".into()));
    }
    // transformers accepts it and suppresses eos to the end; here it is surely a mistake.
    if s.min_new_tokens > s.max_new_tokens {
        return Err(Error::Options(format!(
            "--min-new-tokens {} is above --max-new-tokens {}: at most {} new tokens are made",
            s.min_new_tokens, s.max_new_tokens, s.max_new_tokens
        )));
    }
    if let Some(&id) = s.eos.iter().find(|&&i| i as usize >= c.vocab_size) {
        return Err(Error::Options(format!(
            "eos_token_id {id} is outside the model's vocabulary of {} (ids 0..={})",
            c.vocab_size,
            c.vocab_size.saturating_sub(1)
        )));
    }
    match s.strategy {
        Strategy::Beam(n) if n == 0 || n > MAX_BEAMS => Err(Error::Options(format!(
            "--beams {n} is outside 1..={MAX_BEAMS}"
        ))),
        Strategy::Sample(p) if !(p.temperature > 0.0 && p.temperature.is_finite()) => Err(
            Error::Options(format!("--temperature {} must be > 0", p.temperature)),
        ),
        Strategy::Sample(p) if p.top_p.is_some_and(|v| !(v > 0.0 && v <= 1.0)) => {
            Err(Error::Options("--top-p must be in (0, 1]".into()))
        }
        _ => Ok(()),
    }
}

fn run(
    model: &Model,
    prompt: &[u32],
    s: &Settings,
    on_token: &mut dyn FnMut(&[u32]) -> Result<bool>,
) -> Result<Output> {
    let start = Instant::now();
    let mut engine = Engine::new(model, prompt.len() + s.max_new_tokens, s.device, s.threads)?;
    let mut logits = engine.feed(prompt)?;
    let prefill_seconds = start.elapsed().as_secs_f64();
    let decode_start = Instant::now();
    if let Strategy::Beam(n) = s.strategy {
        if n > 1 {
            let spec = beam::BeamSpec {
                beams: n,
                max_new: s.max_new_tokens,
                min_new: s.min_new_tokens,
                eos: &s.eos,
            };
            let ids = beam::search(&mut engine, &logits, &spec)?;
            let stop = match ids.last() {
                Some(t) if s.eos.contains(t) => Stop::Eos,
                _ => Stop::MaxNewTokens,
            };
            on_token(&ids)?;
            return Ok(Output {
                ids,
                prefill_seconds,
                decode_seconds: decode_start.elapsed().as_secs_f64(),
                stop,
            });
        }
    }
    let mut sampler = match s.strategy {
        Strategy::Sample(cfg) => Some(sample::Sampler::new(cfg)),
        _ => None,
    };
    let mut ids = Vec::new();
    let stop = loop {
        if ids.len() < s.min_new_tokens {
            for &e in &s.eos {
                if let Some(v) = logits.get_mut(e as usize) {
                    *v = f32::NEG_INFINITY;
                }
            }
        }
        let next = match sampler.as_mut() {
            Some(sm) => sm.next(&logits),
            None => sample::argmax(&logits),
        };
        ids.push(next);
        let go_on = on_token(&ids)?;
        if s.eos.contains(&next) {
            break Stop::Eos;
        }
        if !go_on {
            break Stop::StopText;
        }
        if ids.len() >= s.max_new_tokens {
            break Stop::MaxNewTokens;
        }
        logits = engine.feed(&[next])?;
    };
    Ok(Output {
        ids,
        prefill_seconds,
        decode_seconds: decode_start.elapsed().as_secs_f64(),
        stop,
    })
}
