//! Opening the files the verifier reads: regular files only (after following symlinks), and the
//! small JSON files read whole only up to a stated size.

use std::fs::File;
use std::path::Path;

use crate::error::{Error, Result};

/// `config.json`: transformers writes about 1 KB; 1 MiB leaves room for label maps and notes.
pub const MAX_CONFIG_BYTES: u64 = 1 << 20;
/// `fixture.json`: a few tolerances and a description.
pub const MAX_FIXTURE_JSON_BYTES: u64 = 1 << 20;
/// `model.safetensors.index.json`: about 100 bytes per tensor, so 4 MiB is ~40,000 tensors,
/// a hundred times CPM-LM-Large's 390.
pub const MAX_INDEX_BYTES: u64 = 4 << 20;

/// Opens `path` for reading, refusing anything but a regular file without blocking
/// (`cpm_files::open_regular`). Returns the file and its length.
pub fn open_regular(path: &Path) -> Result<(File, u64)> {
    cpm_files::open_regular(path).map_err(from_files)
}

/// Reads a whole regular file of at most `cap` bytes (`cpm_files::read_capped`).
pub fn read_capped(path: &Path, cap: u64) -> Result<Vec<u8>> {
    cpm_files::read_capped(path, cap).map_err(from_files)
}

/// Whether anything exists at `path` (a dangling symlink, a FIFO or a device included), so that
/// a file that is present but unusable is an error rather than treated as absent.
pub fn exists(path: &Path) -> Result<bool> {
    cpm_files::exists(path).map_err(from_files)
}

/// The shared reader's error in ours.
fn from_files(e: cpm_files::Error) -> Error {
    use cpm_files::Error as F;
    match e {
        F::Io { path, err, .. } => Error::Io { path, err },
        F::NotRegular { path, kind } => Error::NotAFile { path, kind },
        F::TooLarge { path, size, cap } => Error::limit(
            path,
            format!("{size} bytes; cpm-verify reads at most {cap} bytes from this file"),
        ),
        F::Grew { path, cap } => {
            Error::limit(path, format!("grew past {cap} bytes while being read"))
        }
    }
}
