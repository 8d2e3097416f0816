//! The tokenizer's one error type.

/// Everything that can go wrong reading a model or tokenizing.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Not implemented yet (skeleton).
    #[error("not implemented yet: {0}")]
    NotYet(String),
}

/// The crate's result type.
pub type Result<T> = std::result::Result<T, Error>;
