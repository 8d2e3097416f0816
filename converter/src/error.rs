//! The converter's one error type. Every variant names the file (and the tensor where there is
//! one), what was expected and what was found, so a user can act on the message alone.

use std::path::PathBuf;

/// Everything that can stop a conversion.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An operating-system error on a named path.
    #[error("{path}: {what}: {source}")]
    Io {
        path: PathBuf,
        what: &'static str,
        #[source]
        source: std::io::Error,
    },

    /// The file is not a checkpoint we can read, or its bytes contradict themselves.
    #[error("{path}: {msg}")]
    Format { path: PathBuf, msg: String },

    /// The pickle program inside a torch file is malformed or outside what we accept.
    #[error("{path}: pickle at byte {offset}: {msg}")]
    Pickle {
        path: PathBuf,
        offset: u64,
        msg: String,
    },

    /// A tensor's description does not fit its storage or our expectations.
    #[error("{path}: tensor `{tensor}`: {msg}")]
    Tensor {
        path: PathBuf,
        tensor: String,
        msg: String,
    },

    /// The checkpoint directory layout (tracker file, iteration folder, rank files) is wrong.
    #[error("{path}: {msg}")]
    Layout { path: PathBuf, msg: String },

    /// The ranks of one model disagree with each other or with the mapping.
    #[error("{msg}")]
    Merge { msg: String },

    /// A mapping file is malformed.
    #[error("mapping {path}: {msg}")]
    Mapping { path: PathBuf, msg: String },

    /// The user's options cannot be honoured.
    #[error("{msg}")]
    Usage { msg: String },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>, what: &'static str, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            what,
            source,
        }
    }

    pub(crate) fn format(path: impl Into<PathBuf>, msg: impl Into<String>) -> Self {
        Error::Format {
            path: path.into(),
            msg: msg.into(),
        }
    }

    pub(crate) fn tensor(
        path: impl Into<PathBuf>,
        tensor: impl Into<String>,
        msg: impl Into<String>,
    ) -> Self {
        Error::Tensor {
            path: path.into(),
            tensor: tensor.into(),
            msg: msg.into(),
        }
    }

    pub(crate) fn layout(path: impl Into<PathBuf>, msg: impl Into<String>) -> Self {
        Error::Layout {
            path: path.into(),
            msg: msg.into(),
        }
    }

    pub(crate) fn merge(msg: impl Into<String>) -> Self {
        Error::Merge { msg: msg.into() }
    }

    pub(crate) fn usage(msg: impl Into<String>) -> Self {
        Error::Usage { msg: msg.into() }
    }
}
