//! cpm-convert: port GPT-2-family training checkpoints (CPM-LM, Megatron-LM, Megatron-core,
//! nanoGPT, Hugging Face) to a Hugging Face GPT-2 directory (`model.safetensors`, `config.json`,
//! `SHA256SUMS`) without Python.
//!
//! The data flow, one step per module:
//!
//! ```text
//! checkpoint::layout::discover path  -> every file (tracker, iteration, rank grid, HF shards,
//!                                       DCP folder), one module per kind of folder
//! zero                   or a DeepSpeed ZeRO root/tag: each tp rank's fp32 masters as tensors
//!                                       assembled from runs of the optimizer partitions
//! open::open             files       -> torch object trees (cpm_torch reads zip, legacy and
//!                                       safetensors files through a memory map, executing
//!                                       nothing; a Distributed Checkpoint folder as one file
//!                                       of global tensors assembled from chunks), the family
//!                                       chosen, each file's weights
//! plan::build            weights + mapping (mappings/*.toml) -> every output tensor, checked
//! convert::prepare       the above, a model-parallel grid checked, the tokenizer read: all
//!                                       that `--dry-run` prints
//! merge::tensor          one tensor's parts -> Hugging Face layout (concat, qkv interleave,
//!                                       transpose), NaN/Inf check, cast
//! write                  streaming safetensors (one file or output shards) + config.json +
//!                                       SHA256SUMS, staged and renamed into place
//! export                 or (`--to cpm|megatron`): each merged tensor split again by the
//!                                       target family's mapping into rank files written by
//!                                       our own torch.save (pickle + zip), + SHA256SUMS
//! tokenizer_files        with a tokenizer: spiece.model, tokenizer.json, tokenizer_config.json,
//!                                       the Python tokenizer, generation_config.json, and
//!                                       config.json's bos/eos ids from its `<eod>`
//! ```
//!
//! Tensors stream through one at a time; the heap holds at most a few merged tensors (recycled
//! transpose buffers) and the writer's and hasher's bounded queues: docs/architecture.md, "Memory".

#![deny(missing_docs)]

pub mod checkpoint;
pub mod cli;
mod convert;
pub mod diff;
mod elements;
mod error;
pub mod export;
mod files;
pub mod gpt2_config;
pub mod inspect;
mod mapping;
mod merge;
mod open;
pub mod plan;
mod progress;
pub mod table;
pub mod tokenizer_files;
mod transpose;
pub mod write;
mod zero;

pub use convert::{convert, plan, prepare, Options, OutDir, Prepared, Request, Summary};
pub use error::{Error, Result};
pub(crate) use mapping::Mapping;
pub use open::{open, Family, Source};
pub use plan::{Hints, OutDtype, Plan};
pub use progress::Progress;
