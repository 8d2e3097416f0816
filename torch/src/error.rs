//! The reader's one error type. Every variant names the file (and the tensor where there is
//! one), what was expected and what was found, so a user can act on the message alone.

use std::path::PathBuf;

/// Everything that can stop reading a torch, safetensors or DCP file.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An operating-system error on a named path. The OS error is part of the message and
    /// deliberately not a `source()`, so a chain printer (anyhow's `{:#}`) says it once.
    #[error("{path}: {what}: {err}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What was attempted: "cannot open", "cannot map", ...
        what: &'static str,
        /// The operating system's reason.
        err: std::io::Error,
    },

    /// The file is not a checkpoint we can read, or its bytes contradict themselves.
    #[error("{path}: {msg}")]
    Format {
        /// The file.
        path: PathBuf,
        /// What was expected and what was found.
        msg: String,
    },

    /// The pickle program inside a torch file is malformed or outside what we accept.
    #[error("{path}: pickle at byte {offset}: {msg}")]
    Pickle {
        /// The file.
        path: PathBuf,
        /// Where in the file the failing opcode's operand ends.
        offset: u64,
        /// What was wrong.
        msg: String,
    },

    /// A tensor's description does not fit its storage or our expectations.
    #[error("{path}: tensor `{tensor}`: {msg}")]
    Tensor {
        /// The file.
        path: PathBuf,
        /// The tensor's name, shortened when long.
        tensor: String,
        /// What was wrong.
        msg: String,
    },

    /// A file cannot be read at all: not a regular file, or larger than its cap.
    #[error("{path}: {msg}")]
    Open {
        /// The file.
        path: PathBuf,
        /// Why it was refused.
        msg: String,
    },

    /// A broken internal invariant: a bug to report, never the input's fault.
    #[error("internal error: {msg}; please report this")]
    Internal {
        /// What broke.
        msg: String,
    },
}

/// The crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// An operating-system error on `path`.
    pub fn io(path: impl Into<PathBuf>, what: &'static str, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            what,
            err: source,
        }
    }

    /// A file whose bytes are not what its format says.
    pub fn format(path: impl Into<PathBuf>, msg: impl Into<String>) -> Self {
        Error::Format {
            path: path.into(),
            msg: msg.into(),
        }
    }

    /// A tensor of `path` that does not fit its storage; a long name is shortened.
    pub fn tensor(
        path: impl Into<PathBuf>,
        tensor: impl Into<String>,
        msg: impl Into<String>,
    ) -> Self {
        // Names come from the file and may be a megabyte long: show their start.
        let tensor: String = tensor.into();
        Error::Tensor {
            path: path.into(),
            tensor: crate::names::shorten(&tensor).into_owned(),
            msg: msg.into(),
        }
    }

    /// A broken invariant of ours.
    pub fn internal(msg: impl Into<String>) -> Self {
        Error::Internal { msg: msg.into() }
    }

    /// The shared file opener's error in ours; `why` follows a refused file type.
    pub(crate) fn from_files(e: cpm_files::Error, why: &str) -> Self {
        use cpm_files::Error as F;
        let open = |path, msg| Error::Open { path, msg };
        match e {
            F::Io { path, what, err } => Error::io(path, what, err),
            F::NotRegular { path, kind } => {
                open(path, format!("is {kind}, not a regular file; {why}"))
            }
            F::TooLarge { path, size, cap } => open(
                path,
                format!("is {size} bytes; cpm-convert reads at most {cap} bytes of it"),
            ),
            F::Grew { path, cap } => open(path, format!("grew past {cap} bytes while being read")),
        }
    }
}

/// Open `path` for reading, refusing anything but a regular file without blocking
/// (`cpm_files::open_regular`). Returns the file and its length.
pub(crate) fn open_regular(path: &std::path::Path, why: &str) -> Result<(std::fs::File, u64)> {
    cpm_files::open_regular(path).map_err(|e| Error::from_files(e, why))
}

/// A whole regular file of at most `cap` bytes (`cpm_files::read_capped`).
pub(crate) fn read_capped(path: &std::path::Path, cap: u64) -> Result<Vec<u8>> {
    cpm_files::read_capped(path, cap).map_err(|e| Error::from_files(e, "expected a text file"))
}
