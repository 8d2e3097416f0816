//! GPT-2 as transformers' `GPT2LMHeadModel` computes it, from a Hugging Face directory.
//!
//! [`model::Model::open`] memory-maps `config.json` and the safetensors weights and checks every
//! tensor against the config; [`forward::run`] computes logits in f32 on the CPU (or CUDA), one
//! layer's weights at a time; [`forward::run_cached`] does the same over a [`forward::KvCache`]
//! for generation. The forward pass is layered: SIMD widening and element-wise math at the
//! bottom, then matrix products, attention, a layer, the model.
//!
//! Verification (`cpm-verify`) and generation (`cpm-generate`) both run on this crate.
#![deny(missing_docs)]

pub mod config;
pub mod error;
pub mod files;
pub mod forward;
pub mod model;

pub use error::{Error, Result};
pub use forward::Device;
pub use model::Model;

/// Where and how wide a forward pass runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Options {
    /// Where the forward pass runs.
    pub device: Device,
    /// CPU threads for the whole pass: products, widening, attention (1 = serial). The default
    /// is [`forward::default_threads`]: `RAYON_NUM_THREADS` when set, else every core.
    pub threads: usize,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            device: Device::Cpu,
            threads: forward::default_threads(),
        }
    }
}
