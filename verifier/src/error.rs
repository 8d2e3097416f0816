//! The crate's one error type. Every variant names the file (or flag) at fault, and where a size
//! or type is wrong, what was expected and what was found.

use std::path::PathBuf;

/// Why a verification could not be carried out (as opposed to a mismatch, which is a result).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The model directory could not be opened, validated or run (the GPT-2 crate's errors).
    #[error(transparent)]
    Model(#[from] cpm_gpt2::Error),
    /// A file could not be opened, mapped or read. The OS error is part of the message and
    /// deliberately not a `source()`, so a chain printer (anyhow's `{:#}`) says it once.
    #[error("{}: {err}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The operating system's reason.
        err: std::io::Error,
    },
    /// A fixture file could not be opened as a regular file or read whole under its cap.
    #[error(transparent)]
    File(#[from] cpm_files::Error),
    /// MODEL_DIR holds a fixture and FIXTURE_DIR a model: the arguments were given swapped.
    #[error(
        "the arguments are swapped: {} holds a fixture (logits.npy) and {} a model \
         (config.json); the model comes first: cpm-verify {} {}",
        model_dir.display(),
        fixture_dir.display(),
        fixture_dir.display(),
        model_dir.display()
    )]
    Swapped {
        /// The first argument (a fixture).
        model_dir: PathBuf,
        /// The second argument (a model).
        fixture_dir: PathBuf,
    },
    /// An input exceeds one of the verifier's stated limits (SECURITY.md lists them).
    #[error("{}: {detail}", path.display())]
    Limit {
        /// The file (or directory) whose content is too large.
        path: PathBuf,
        /// What exceeds which limit, with both numbers.
        detail: String,
    },
    /// A JSON file (config, shard index, fixture.json) is not valid JSON of the expected form.
    /// As with [`Error::Io`], the parser's message is in the text and not a `source()`.
    #[error("{}: not valid JSON of the expected form: {err}", path.display())]
    Json {
        /// The file.
        path: PathBuf,
        /// What the parser said.
        err: serde_json::Error,
    },
    /// An `.npy` file has the wrong dtype, rank or layout, or is truncated.
    #[error("{}: {detail}", path.display())]
    Npy {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        detail: String,
    },
    /// The fixture disagrees with itself or with the model (shapes, vocabulary, positions).
    #[error("fixture {} does not fit the model: {detail}", dir.display())]
    FixtureMismatch {
        /// The fixture directory.
        dir: PathBuf,
        /// Which sizes disagree, with both values.
        detail: String,
    },
    /// The tolerances are unusable (negative, not finite, or tighter than a float16 reference's
    /// own rounding).
    #[error("tolerance: {0}")]
    Tolerance(String),
    /// A broken internal precondition (a caller skipped a check it promised): a bug to report,
    /// never the input's fault.
    #[error("internal error: {0}; please report this")]
    Internal(String),
    /// The requested device cannot be used.
    #[error("device: {0}")]
    Device(String),
}

/// The crate's result type.
pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>, err: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            err,
        }
    }

    pub(crate) fn json(path: impl Into<PathBuf>, err: serde_json::Error) -> Self {
        Error::Json {
            path: path.into(),
            err,
        }
    }

    pub(crate) fn limit(path: impl Into<PathBuf>, detail: impl Into<String>) -> Self {
        Error::Limit {
            path: path.into(),
            detail: detail.into(),
        }
    }
}

/// Multiplies sizes, naming what was being computed if the product overflows (the model
/// crate's rule and message, in this crate's error).
pub(crate) fn checked_product(dims: &[usize], what: &str) -> Result<usize> {
    Ok(cpm_gpt2::error::checked_product(dims, what)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_os_error_is_printed_once_by_a_chain_printer() {
        let e = Error::io(
            "model/config.json",
            std::io::Error::new(std::io::ErrorKind::NotFound, "no such file"),
        );
        let shown = format!("{:#}", anyhow::Error::new(e));
        assert_eq!(shown.matches("no such file").count(), 1, "{shown}");
        let bad = serde_json::from_str::<serde_json::Value>("{").unwrap_err();
        let shown = format!("{:#}", anyhow::Error::new(Error::json("config.json", bad)));
        assert_eq!(shown.matches("EOF").count(), 1, "{shown}");
    }

    #[test]
    fn internal_errors_say_they_are_bugs_and_overflow_says_overflow() {
        let e = Error::Internal("forward pass given unchecked ids".into()).to_string();
        assert!(e.starts_with("internal error:") && e.ends_with("please report this"));
        let e = checked_product(&[usize::MAX, 2], "batch * seq").unwrap_err();
        assert_eq!(e.to_string(), "size overflow computing batch * seq");
    }
}
