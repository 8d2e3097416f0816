//! Opening the files the converter reads whole or maps: the one rule every tool follows
//! (`cpm_files`: regular files only, opened without blocking, read under a cap), with the
//! converter's own messages. Below every reader, so layout and mapping use it (cpm-torch words
//! the same refusals in its own error).

use std::fs::File;
use std::path::Path;

use crate::error::{Error, Result};

/// Open `path` for reading, refusing anything but a regular file without blocking
/// (`cpm_files::open_regular`). Returns the file and its length.
pub(crate) fn open_regular(path: &Path, why: &str) -> Result<(File, u64)> {
    cpm_files::open_regular(path).map_err(|e| from_files(e, why))
}

/// A whole regular file of at most `cap` bytes (`cpm_files::read_capped`).
pub(crate) fn read_capped(path: &Path, cap: u64) -> Result<Vec<u8>> {
    cpm_files::read_capped(path, cap).map_err(|e| from_files(e, "expected a text file"))
}

/// Whether anything exists at `path` (`cpm_files::exists`: a dangling symlink, a FIFO or a
/// device included).
pub(crate) fn exists(path: &Path) -> Result<bool> {
    cpm_files::exists(path).map_err(|e| from_files(e, ""))
}

/// What a file is, for messages (`a directory`, `a FIFO`, …).
pub(crate) fn kind_of(meta: &std::fs::Metadata) -> &'static str {
    cpm_files::kind_of(&meta.file_type())
}

/// The shared reader's error in ours; `why` follows a refused file type.
pub(crate) fn from_files(e: cpm_files::Error, why: &str) -> Error {
    use cpm_files::Error as F;
    match e {
        F::Io { path, what, err } => Error::io(path, what, err),
        F::NotRegular { path, kind } => {
            Error::layout(path, format!("is {kind}, not a regular file; {why}"))
        }
        F::TooLarge { path, size, cap } => Error::layout(
            path,
            format!("is {size} bytes; cpm-convert reads at most {cap} bytes of it"),
        ),
        F::Grew { path, cap } => {
            Error::layout(path, format!("grew past {cap} bytes while being read"))
        }
    }
}
