//! Opening the files the verifier reads: regular files only (after following symlinks), and the
//! small JSON files read whole only up to a stated size.

use std::fs::{File, OpenOptions};
use std::io::Read;
use std::path::Path;

use crate::error::{Error, Result};

/// `config.json`: transformers writes about 1 KB; 1 MiB leaves room for label maps and notes.
pub const MAX_CONFIG_BYTES: u64 = 1 << 20;
/// `fixture.json`: a few tolerances and a description.
pub const MAX_FIXTURE_JSON_BYTES: u64 = 1 << 20;
/// `model.safetensors.index.json`: about 100 bytes per tensor, so 4 MiB is ~40,000 tensors,
/// a hundred times CPM-LM-Large's 390.
pub const MAX_INDEX_BYTES: u64 = 4 << 20;

/// Opens `path` for reading, refusing anything but a regular file. The open never blocks (a
/// FIFO opened for reading would wait for a writer) and the type is checked on the opened handle,
/// so a file swapped after a check cannot slip through. Returns the file and its length.
pub fn open_regular(path: &Path) -> Result<(File, u64)> {
    let mut opts = OpenOptions::new();
    opts.read(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.custom_flags(libc::O_NONBLOCK);
    }
    let file = opts.open(path).map_err(|e| Error::io(path, e))?;
    let meta = file.metadata().map_err(|e| Error::io(path, e))?;
    if !meta.is_file() {
        return Err(Error::NotAFile {
            path: path.to_path_buf(),
            kind: kind_of(&meta.file_type()),
        });
    }
    Ok((file, meta.len()))
}

/// What a non-regular file is, for the message.
fn kind_of(t: &std::fs::FileType) -> &'static str {
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt;
        if t.is_fifo() {
            return "a FIFO";
        }
        if t.is_char_device() {
            return "a character device";
        }
        if t.is_block_device() {
            return "a block device";
        }
        if t.is_socket() {
            return "a socket";
        }
    }
    if t.is_dir() {
        "a directory"
    } else {
        "not a regular file"
    }
}

/// Reads a whole regular file of at most `cap` bytes. The read itself is limited too, so a file
/// that grows after its size was checked still cannot make us read more.
pub fn read_capped(path: &Path, cap: u64) -> Result<Vec<u8>> {
    let (file, len) = open_regular(path)?;
    if len > cap {
        return Err(Error::limit(
            path,
            format!("{len} bytes; cpm-verify reads at most {cap} bytes from this file"),
        ));
    }
    // len <= cap, a few MiB at most: the capacity is bounded by the stated cap.
    let mut buf = Vec::with_capacity(usize::try_from(len).unwrap_or(0));
    file.take(cap.saturating_add(1))
        .read_to_end(&mut buf)
        .map_err(|e| Error::io(path, e))?;
    if buf.len() as u64 > cap {
        return Err(Error::limit(
            path,
            format!("grew past {cap} bytes while being read"),
        ));
    }
    Ok(buf)
}

/// Whether anything exists at `path` (a dangling symlink, a FIFO or a device included), so that
/// a file that is present but unusable is an error rather than treated as absent.
pub fn exists(path: &Path) -> Result<bool> {
    match std::fs::symlink_metadata(path) {
        Ok(_) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(Error::io(path, e)),
    }
}
