//! The converter's one error type. Every variant names the file (and the tensor where there is
//! one), what was expected and what was found, so a user can act on the message alone.

use std::path::PathBuf;

/// Everything that can stop a conversion.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An operating-system error on a named path. The OS error is part of the message and
    /// deliberately not a `source()`, so a chain printer (anyhow's `{:#}`) says it once.
    #[error("{path}: {what}: {err}")]
    Io {
        /// The path the operation was on.
        path: PathBuf,
        /// The operation that failed ("cannot open", "cannot read", ...).
        what: &'static str,
        /// The OS error.
        err: std::io::Error,
    },

    /// The file is not a checkpoint we can read, or its bytes contradict themselves.
    #[error("{path}: {msg}")]
    Format {
        /// The file or directory concerned.
        path: PathBuf,
        /// What is wrong, worded for the user.
        msg: String,
    },

    /// A tensor's description does not fit its storage or our expectations.
    #[error("{path}: tensor `{tensor}`: {msg}")]
    Tensor {
        /// The file holding the tensor.
        path: PathBuf,
        /// The tensor's name, shortened when the file gives a very long one.
        tensor: String,
        /// What is wrong, worded for the user.
        msg: String,
    },

    /// The checkpoint directory layout (tracker file, iteration folder, rank files) is wrong.
    #[error("{path}: {msg}")]
    Layout {
        /// The file or directory concerned.
        path: PathBuf,
        /// What is wrong, worded for the user.
        msg: String,
    },

    /// Reading a torch, safetensors or DCP file failed (its message is the reader's own).
    #[error(transparent)]
    Torch(#[from] cpm_torch::Error),

    /// The ranks of one model disagree with each other or with the mapping.
    #[error("{msg}")]
    Merge {
        /// What is wrong, worded for the user.
        msg: String,
    },

    /// A weight's values cannot be written as asked: NaN/Inf under `--strict`, or a finite value
    /// that overflows the output dtype.
    #[error("tensor `{tensor}`: {msg}")]
    Values {
        /// The tensor's name.
        tensor: String,
        /// What is wrong, worded for the user.
        msg: String,
    },

    /// Producing an output file failed for a reason that is not an operating-system error on a
    /// path (encoding a header or config.json).
    #[error("{path}: {msg}")]
    Output {
        /// The output file.
        path: PathBuf,
        /// What is wrong, worded for the user.
        msg: String,
    },

    /// A broken internal invariant (a worker thread panicked, a channel closed early): a bug to
    /// report, never the input's fault.
    #[error("internal error: {msg}; please report this")]
    Internal {
        /// What broke, for the bug report.
        msg: String,
    },

    /// A mapping file is malformed.
    #[error("mapping {path}: {msg}")]
    Mapping {
        /// The mapping file (`mappings/NAME.toml` for a built-in one).
        path: PathBuf,
        /// What is wrong, worded for the user.
        msg: String,
    },

    /// The tokenizer given or found for the port cannot be read, or does not fit the model.
    #[error("tokenizer {path}: {msg}")]
    Tokenizer {
        /// The tokenizer model file.
        path: PathBuf,
        /// What is wrong, worded for the user.
        msg: String,
    },

    /// The user's options cannot be honoured.
    #[error("{msg}")]
    Usage {
        /// What is wrong, worded for the user.
        msg: String,
    },

    /// The user asked to stop (SIGINT/SIGTERM); the staging directory was removed and an
    /// existing OUT_DIR left as it was.
    #[error("interrupted: nothing written")]
    Interrupted,
}

/// The converter's result, [`Error`] by default.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>, what: &'static str, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            what,
            err: source,
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
        // Names come from the file and may be a megabyte long: show their start.
        let tensor: String = tensor.into();
        Error::Tensor {
            path: path.into(),
            tensor: cpm_torch::shorten(&tensor).into_owned(),
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

    pub(crate) fn values(tensor: impl Into<String>, msg: impl Into<String>) -> Self {
        Error::Values {
            tensor: tensor.into(),
            msg: msg.into(),
        }
    }

    pub(crate) fn output(path: impl Into<PathBuf>, msg: impl Into<String>) -> Self {
        Error::Output {
            path: path.into(),
            msg: msg.into(),
        }
    }

    pub(crate) fn tokenizer(path: impl Into<PathBuf>, msg: impl Into<String>) -> Self {
        Error::Tokenizer {
            path: path.into(),
            msg: msg.into(),
        }
    }

    pub(crate) fn internal(msg: impl Into<String>) -> Self {
        Error::Internal { msg: msg.into() }
    }

    pub(crate) fn usage(msg: impl Into<String>) -> Self {
        Error::Usage { msg: msg.into() }
    }
}
