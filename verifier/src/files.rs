//! Opening the fixture files the verifier reads (the model's: `cpm_gpt2::files`): regular files
//! only (after following symlinks), and the small JSON files read whole only up to a stated
//! size, by the one rule every tool follows (`cpm_files`).

pub use cpm_files::{exists, open_regular, read_capped};

/// `fixture.json`: a few tolerances and a description.
pub const MAX_FIXTURE_JSON_BYTES: u64 = 1 << 20;
