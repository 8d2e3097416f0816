//! The crate's one error type.

use std::path::PathBuf;

/// Why a generation could not run.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The model directory or the forward pass failed (the verifier's error names the file).
    #[error(transparent)]
    Model(#[from] cpm_gpt2::Error),
    /// The tokenizer could not be read or could not encode/decode.
    #[error("tokenizer {}: {err}", path.display())]
    Tokenizer {
        /// The sentencepiece model.
        path: PathBuf,
        /// What the tokenizer said.
        err: cpm_tokenizer::Error,
    },
    /// No tokenizer file where one was needed.
    #[error(
        "no tokenizer at {}: pass --tokenizer PATH (a CPM spiece.model) or put spiece.model in \
         the model directory",
        path.display()
    )]
    NoTokenizer {
        /// Where it was looked for.
        path: PathBuf,
    },
    /// A file (the prompt file, generation_config.json) is not a regular file, is over its
    /// size limit, or cannot be read; the message names it.
    #[error(transparent)]
    File(cpm_files::Error),
    /// A prompt of ids needs no tokenizer, but printing the continuation as text does.
    #[error(
        "no tokenizer at {} to print the continuation as text: add --ids or --json to print \
         the new token ids instead, or pass --tokenizer PATH (a CPM spiece.model)",
        path.display()
    )]
    NoTokenizerForText {
        /// Where it was looked for.
        path: PathBuf,
    },
    /// `generation_config.json` or `config.json` has an eos_token_id of the wrong form.
    #[error("{}: {detail}", path.display())]
    GenerationConfig {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        detail: String,
    },
    /// The prompt could not be read (stdin unreadable or over its size limit, text not UTF-8)
    /// or its ids do not parse; the message says which.
    #[error("{0}")]
    Prompt(String),
    /// The prompt encodes to no tokens.
    #[error("the prompt is empty (no tokens to condition on); give some text")]
    EmptyPrompt,
    /// Prompt + new tokens exceed the model's positions.
    #[error(
        "the prompt is {prompt} tokens and --max-new-tokens is {max_new}: {total} positions, but \
         the model has n_positions {n_positions}; shorten the prompt or lower --max-new-tokens"
    )]
    TooLong {
        /// Prompt tokens.
        prompt: usize,
        /// Requested new tokens.
        max_new: usize,
        /// Their sum.
        total: usize,
        /// The model's limit.
        n_positions: usize,
    },
    /// A prompt id is outside the vocabulary.
    #[error("prompt token id {id} is outside the model's vocabulary of {vocab}")]
    BadToken {
        /// The id.
        id: u32,
        /// vocab_size.
        vocab: usize,
    },
    /// Options that contradict each other or are out of range.
    #[error("{0}")]
    Options(String),
    /// The forward pass returned logits of an unexpected size (a bug, not bad input).
    #[error("internal error: {0}")]
    Internal(String),
}

/// The crate's result type.
pub type Result<T> = std::result::Result<T, Error>;
