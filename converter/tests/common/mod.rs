//! What more than one of the converter's test files reads.

use std::path::PathBuf;

use serde::Deserialize;

/// The `tokenizer` object of the summary and the `--dry-run` plan (docs/tokenizer.md,
/// "Tokenizer files in a port"), exactly: an added or renamed field fails the parse.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)] // each test file reads its own subset
pub struct TokenizerReport {
    pub path: PathBuf,
    pub found: String,
    pub pieces: usize,
    pub embedding_rows: u64,
    pub eod_id: Option<u64>,
    pub bos_token_id: Option<u64>,
    pub eos_token_id: Option<u64>,
    pub pad_token_id: Option<u64>,
}
