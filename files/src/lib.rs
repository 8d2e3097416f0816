//! How every cpm-port tool opens a file it reads: the one rule, written once.
//!
//! - The open never blocks: `O_NONBLOCK`, so a FIFO (which waits for a writer) returns at once.
//! - The type is checked on the opened handle (`fstat`), so a path swapped after an earlier
//!   check cannot slip through: anything but a regular file (after following symlinks) is
//!   refused ([`Error::NotRegular`]): a FIFO would hang, a device like `/dev/zero` never ends.
//! - A file read whole ([`read_capped`]) is read only up to a cap its caller states: the size is
//!   checked before reading and the read itself is limited, so a file that grows meanwhile
//!   cannot make us read more.
//!
//! Large inputs (checkpoints, safetensors) are memory-mapped from [`open_regular`]'s handle
//! instead; their readers bound what they allocate from the file's length.
#![deny(missing_docs)]

use std::fs::{File, OpenOptions};
use std::io::Read;
use std::path::{Path, PathBuf};

/// Why a file could not be opened or read.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The system refused to open, stat or read it. The OS error is part of the message and
    /// deliberately not a `source()`, so a chain printer (anyhow's `{:#}`) says it once.
    #[error("{}: {what}: {err}", path.display())]
    Io {
        /// The path as given.
        path: PathBuf,
        /// "cannot open", "cannot stat", "cannot read".
        what: &'static str,
        /// The operating system's reason.
        err: std::io::Error,
    },
    /// Not a regular file (after following symlinks).
    #[error("{}: is {kind}, not a regular file", path.display())]
    NotRegular {
        /// The path as given.
        path: PathBuf,
        /// What it is instead: "a FIFO", "a character device", "a directory", ...
        kind: &'static str,
    },
    /// Larger than the caller's cap, found before reading.
    #[error("{}: {size} bytes, more than the {cap}-byte limit for this file", path.display())]
    TooLarge {
        /// The path as given.
        path: PathBuf,
        /// Its size.
        size: u64,
        /// The cap.
        cap: u64,
    },
    /// Grew past the cap while it was being read.
    #[error("{}: grew past the {cap}-byte limit for this file while being read", path.display())]
    Grew {
        /// The path as given.
        path: PathBuf,
        /// The cap.
        cap: u64,
    },
}

impl Error {
    /// The path the error is about.
    pub fn path(&self) -> &Path {
        match self {
            Error::Io { path, .. }
            | Error::NotRegular { path, .. }
            | Error::TooLarge { path, .. }
            | Error::Grew { path, .. } => path,
        }
    }
}

/// The crate's result type.
pub type Result<T> = std::result::Result<T, Error>;

fn io(path: &Path, what: &'static str, err: std::io::Error) -> Error {
    Error::Io {
        path: path.to_path_buf(),
        what,
        err,
    }
}

/// Opens `path` for reading, refusing anything but a regular file, without ever blocking.
/// Returns the file and its length.
pub fn open_regular(path: &Path) -> Result<(File, u64)> {
    let mut opts = OpenOptions::new();
    opts.read(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        // On a regular file O_NONBLOCK changes nothing; it only keeps a FIFO's open from waiting.
        opts.custom_flags(libc::O_NONBLOCK);
    }
    let file = opts.open(path).map_err(|e| io(path, "cannot open", e))?;
    let meta = file.metadata().map_err(|e| io(path, "cannot stat", e))?;
    if !meta.is_file() {
        return Err(Error::NotRegular {
            path: path.to_path_buf(),
            kind: kind_of(&meta.file_type()),
        });
    }
    Ok((file, meta.len()))
}

/// What a file that is not regular is, for messages.
pub fn kind_of(t: &std::fs::FileType) -> &'static str {
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
    } else if t.is_file() {
        "a regular file"
    } else {
        "not a file"
    }
}

/// Reads the whole regular file `path`, refusing one of more than `cap` bytes.
pub fn read_capped(path: &Path, cap: u64) -> Result<Vec<u8>> {
    let (file, len) = open_regular(path)?;
    read_open_capped(file, len, path, cap)
}

/// [`read_capped`] on a file already opened by [`open_regular`] (`len` its length then).
pub fn read_open_capped(file: File, len: u64, path: &Path, cap: u64) -> Result<Vec<u8>> {
    if len > cap {
        return Err(Error::TooLarge {
            path: path.to_path_buf(),
            size: len,
            cap,
        });
    }
    // len <= cap: the capacity is bounded by the caller's cap.
    let mut buf = Vec::with_capacity(usize::try_from(len).unwrap_or(0));
    file.take(cap.saturating_add(1))
        .read_to_end(&mut buf)
        .map_err(|e| io(path, "cannot read", e))?;
    if buf.len() as u64 > cap {
        return Err(Error::Grew {
            path: path.to_path_buf(),
            cap,
        });
    }
    Ok(buf)
}

/// Whether anything exists at `path` (a dangling symlink, a FIFO or a device included), so that
/// a file that is present but unusable is an error rather than treated as absent.
pub fn exists(path: &Path) -> Result<bool> {
    match std::fs::symlink_metadata(path) {
        Ok(_) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(io(path, "cannot stat", e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    fn mkfifo(p: &Path) {
        let c = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: a valid NUL-terminated path; mkfifo touches no memory of ours.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    }

    #[test]
    fn fifos_devices_and_directories_are_refused_at_once() {
        let d = tempfile::tempdir().unwrap();
        let fifo = d.path().join("f");
        mkfifo(&fifo);
        let start = Instant::now();
        for (p, kind) in [
            (fifo.as_path(), "a FIFO"),
            (Path::new("/dev/zero"), "a character device"),
            (d.path(), "a directory"),
        ] {
            let e = read_capped(p, 1 << 20).unwrap_err();
            assert!(
                matches!(e, Error::NotRegular { kind: k, .. } if k == kind),
                "{e}"
            );
            let msg = e.to_string();
            assert!(msg.contains(&*p.to_string_lossy()) && msg.contains("not a regular file"));
        }
        assert!(start.elapsed() < Duration::from_secs(5));
    }

    #[test]
    fn a_file_over_the_cap_is_refused_before_reading_and_one_at_it_is_read() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("big");
        let f = File::create(&p).unwrap();
        f.set_len(1 << 40).unwrap(); // sparse: a terabyte that takes no space
        let e = read_capped(&p, 1000).unwrap_err();
        assert!(matches!(e, Error::TooLarge { size, cap: 1000, .. } if size == 1 << 40));
        assert!(e.to_string().contains("1000-byte limit"), "{e}");
        f.set_len(1000).unwrap();
        assert_eq!(read_capped(&p, 1000).unwrap().len(), 1000);
    }

    #[test]
    fn a_file_that_grows_after_the_size_check_is_still_capped() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("grows");
        std::fs::write(&p, [1u8; 10]).unwrap();
        let (file, len) = open_regular(&p).unwrap();
        std::fs::write(&p, [1u8; 100]).unwrap();
        let e = read_open_capped(file, len, &p, 50).unwrap_err();
        assert!(matches!(e, Error::Grew { cap: 50, .. }), "{e}");
    }

    #[test]
    fn exists_sees_dangling_links_and_missing_files() {
        let d = tempfile::tempdir().unwrap();
        let link = d.path().join("l");
        std::os::unix::fs::symlink(d.path().join("nowhere"), &link).unwrap();
        assert!(exists(&link).unwrap());
        assert!(!exists(&d.path().join("nowhere")).unwrap());
        assert!(matches!(open_regular(&link), Err(Error::Io { .. })));
    }
}
