//! The files a model directory is read from: regular files only, opened without blocking, and
//! the JSON ones read whole only up to a stated size (the one rule, `cpm_files`).

pub use cpm_files::{exists, open_regular, read_capped};

/// `config.json`: transformers writes about 1 KB; 1 MiB leaves room for label maps and notes.
pub const MAX_CONFIG_BYTES: u64 = 1 << 20;
/// `model.safetensors.index.json`: about 100 bytes per tensor, so 4 MiB is ~40,000 tensors,
/// a hundred times CPM-LM-Large's 390.
pub const MAX_INDEX_BYTES: u64 = 4 << 20;
