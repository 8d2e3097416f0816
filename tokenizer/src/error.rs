//! The tokenizer's one error type.

use std::path::PathBuf;

/// Everything that can go wrong reading a model or tokenizing.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The model file (or directory) could not be read.
    #[error("{path}: cannot read: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// What the system said.
        source: std::io::Error,
    },
    /// The model is not a regular file (a FIFO, a device, ...) or grew while being read.
    #[error(transparent)]
    File(cpm_files::Error),
    /// A directory without `spiece.model` or `chinese_vocab.model`.
    #[error("{0}: no spiece.model or chinese_vocab.model in this directory")]
    NoModelInDir(PathBuf),
    /// The file is larger than any sentencepiece model we accept.
    #[error("{path}: {size} bytes, more than the {limit}-byte limit for a sentencepiece model")]
    TooLarge {
        /// The file.
        path: PathBuf,
        /// Its size.
        size: u64,
        /// The limit.
        limit: u64,
    },
    /// The bytes are not a sentencepiece `ModelProto`.
    #[error("{path}: not a sentencepiece model (protobuf decode failed: {reason})")]
    Proto {
        /// The file.
        path: PathBuf,
        /// prost's message.
        reason: String,
    },
    /// The model decodes but breaks a rule this tokenizer relies on.
    #[error("{path}: invalid sentencepiece model: {reason}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// Which rule, with the offending piece or field.
        reason: String,
    },
    /// A valid model of a kind this tokenizer does not run.
    #[error("{path}: unsupported sentencepiece model: {reason}")]
    Unsupported {
        /// The file.
        path: PathBuf,
        /// What is unsupported.
        reason: String,
    },
    /// An id that the vocabulary does not have.
    #[error("id {id} is outside the vocabulary ({size} pieces)")]
    IdOutOfRange {
        /// The id.
        id: u64,
        /// The vocabulary size.
        size: usize,
    },
    /// A line of streamed input that cannot be processed (1-based line number).
    #[error("stdin line {line}: {reason}")]
    BadLine {
        /// The line number, from 1.
        line: u64,
        /// What is wrong with it.
        reason: String,
    },
    /// Reading the input stream failed.
    #[error("reading stdin: {0}")]
    Input(std::io::Error),
    /// Writing the output stream failed (a closed pipe is [`std::io::ErrorKind::BrokenPipe`]).
    #[error("writing stdout: {0}")]
    Output(std::io::Error),
    /// The `tokenizers` crate refused to build or serialize the unigram part.
    #[error("tokenizer.json: {0}")]
    TokenizerJson(String),
}

impl Error {
    /// The shared file reader's error (`cpm_files`) in ours.
    pub(crate) fn from_file(e: cpm_files::Error) -> Error {
        use cpm_files::Error as F;
        match e {
            F::Io { path, err, .. } => Error::Io { path, source: err },
            F::TooLarge { path, size, cap } => Error::TooLarge {
                path,
                size,
                limit: cap,
            },
            e => Error::File(e),
        }
    }
}

/// The crate's result type.
pub type Result<T> = std::result::Result<T, Error>;
