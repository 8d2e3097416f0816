//! Reading `torch.save` files without Python and without executing anything.
//!
//! Every format (zip and legacy `torch.save`, safetensors, a Distributed Checkpoint folder) ends
//! up as the same thing: the object tree ([`Value`]) and where each tensor's bytes lie, a byte
//! range of the memory-mapped file or pieces of other files. Tensor data is only touched when a
//! caller asks for it, so reading a checkpoint's structure costs a few kilobytes of I/O.
//!
//! Tensors whose bytes lie in other files are read through one trait, [`Assembled`]: a
//! Distributed Checkpoint folder's chunks ([`dcp`]), or pieces a caller plugs in with
//! [`TorchFile::with_assembled`] (the converter's DeepSpeed ZeRO optimizer partitions).
#![deny(missing_docs)]

pub mod assembled;
pub mod contents;
pub mod dcp;
pub mod error;
mod legacy;
pub mod names;
mod pages;
pub mod pickle;
pub mod safetensors;
pub mod tensor;
pub mod value;
mod zip;

use std::borrow::Cow;
use std::collections::HashMap;
use std::ops::Range;
use std::path::{Path, PathBuf};

use memmap2::Mmap;

pub use assembled::Assembled;
pub use contents::{parse_bytes, read_tensor, span, Contents, Format};
pub use error::{Error, Result};
pub use legacy::PREFIX as LEGACY_PREFIX;
pub use names::{shorten, MAX_NAME_BYTES};
pub use pages::Pages;
pub use tensor::{Dtype, TensorRef};
pub use value::{Arena, Value};

use contents::read_span;

/// An open, memory-mapped torch checkpoint file.
pub struct TorchFile {
    /// The path it was opened from.
    pub path: PathBuf,
    /// Which flavour it is.
    pub format: Format,
    /// The unpickled object tree (replaced by [`TorchFile::with_assembled`]).
    pub root: Value,
    map: Mmap,
    /// Storage key -> byte range in `map`.
    storages: HashMap<String, Range<u64>>,
    /// Tensors whose bytes lie in other files (a DCP folder's chunks, DeepSpeed ZeRO
    /// partitions), standing in for this file's own tensors whose storage keys they hold.
    assembled: Option<Box<dyn Assembled>>,
    /// Declared after `root`, so it drops after it and frees any reference cycles.
    _arena: Arena,
}

impl TorchFile {
    /// Map `path` and parse its object tree; no tensor data is read.
    pub fn open(path: &Path) -> Result<TorchFile> {
        // A FIFO or a device would block or read forever: regular files only, checked on the
        // handle.
        let (file, len) = crate::error::open_regular(
            path,
            "checkpoint files must be torch or safetensors files",
        )?;
        if len == 0 {
            return Err(Error::format(
                path,
                "file is empty, expected a torch checkpoint",
            ));
        }
        // SAFETY: the map is read-only. If another process truncates the file while we read,
        // the kernel raises SIGBUS; that is the usual contract of memory-mapped readers
        // (safetensors, llama.cpp) and the price of not copying gigabytes.
        let map = unsafe { Mmap::map(&file) }.map_err(|e| Error::io(path, "cannot map", e))?;
        if path.file_name().is_some_and(|n| n == dcp::METADATA) {
            // Every tensor is the folder's: this file (the metadata) holds no storage.
            let o = dcp::open(&map, path)?;
            return Ok(TorchFile {
                path: path.to_path_buf(),
                format: Format::Dcp,
                root: o.root,
                map,
                storages: HashMap::new(),
                assembled: Some(Box::new(o.dcp)),
                _arena: o.arena,
            });
        }
        let Contents {
            format,
            root,
            storages,
            arena,
        } = parse_bytes(&map, path)?;
        Ok(TorchFile {
            path: path.to_path_buf(),
            format,
            root,
            map,
            storages,
            assembled: None,
            _arena: arena,
        })
    }

    /// This file with `root` as its object tree and `assembled` answering for the tensors
    /// whose storage keys it holds (their bytes lie in other files). The file's own storages
    /// stay readable.
    pub fn with_assembled(mut self, root: Value, assembled: Box<dyn Assembled>) -> TorchFile {
        self.root = root;
        self.assembled = Some(assembled);
        self
    }

    /// The assembled tensors this file stands for, if any.
    pub fn assembled(&self) -> Option<&dyn Assembled> {
        self.assembled.as_deref()
    }

    fn assembled_for(&self, t: &TensorRef) -> Option<&dyn Assembled> {
        self.assembled
            .as_deref()
            .filter(|a| a.holds(&t.storage_key))
    }

    /// Bytes `r` of the mapped file, if it lies inside.
    pub fn bytes_at(&self, r: &Range<u64>) -> Option<&[u8]> {
        let s = usize::try_from(r.start).ok()?;
        let e = usize::try_from(r.end).ok()?;
        self.map.get(s..e)
    }

    /// Whether the file holds global tensors (a DCP folder), not one model-parallel rank's.
    pub fn holds_global_tensors(&self) -> bool {
        self.format == Format::Dcp
    }

    /// A DCP folder's tensors and chunks, for reports.
    pub fn dcp(&self) -> Option<&dcp::Dcp> {
        self.assembled()?.as_any().downcast_ref()
    }

    /// Size of the file in bytes.
    pub fn file_len(&self) -> u64 {
        self.map.len() as u64
    }

    /// Check `t` against its storage and return the byte range of the file it spans (empty
    /// for an assembled tensor: its bytes are not this file's).
    pub fn span(&self, name: &str, t: &TensorRef) -> Result<Range<u64>> {
        if let Some(a) = self.assembled_for(t) {
            // Nothing of this file's map: the pieces are checked and read by `a`.
            a.check(name, t)?;
            return Ok(0..0);
        }
        span(&self.storages, &self.path, name, t)
    }

    /// The tensor's elements in row-major order: borrowed from the map when the tensor is
    /// contiguous (the usual case), gathered otherwise.
    pub fn read(&self, name: &str, t: &TensorRef) -> Result<Cow<'_, [u8]>> {
        if let Some(a) = self.assembled_for(t) {
            return a.read(name, t);
        }
        let span = self.span(name, t)?;
        self.read_at(name, t, &span)
    }

    /// [`TorchFile::read`] for a span already computed by [`TorchFile::span`] for this tensor.
    pub fn read_at(&self, name: &str, t: &TensorRef, span: &Range<u64>) -> Result<Cow<'_, [u8]>> {
        if let Some(a) = self.assembled_for(t) {
            return a.read(name, t);
        }
        read_span(&self.map, &self.path, name, t, span)
    }

    /// [`TorchFile::read_at`] as pieces to be taken in order: an assembled tensor's pieces lent
    /// where each lies whole (see [`Assembled::read_pieces`]), else the one read.
    pub fn read_pieces(
        &self,
        name: &str,
        t: &TensorRef,
        span: &Range<u64>,
    ) -> Result<Vec<Cow<'_, [u8]>>> {
        if let Some(a) = self.assembled_for(t) {
            return a.read_pieces(name, t);
        }
        self.read_at(name, t, span).map(|b| vec![b])
    }

    /// Map these pages in one system call before they are read: cheaper than a page fault per
    /// 64 KiB. Best effort (MADV_POPULATE_READ needs Linux 5.14).
    pub fn prefetch(&self, span: &Range<u64>) {
        // An assembled tensor's span is empty: its pieces are read (and released) elsewhere.
        self.pages().prefetch(span)
    }

    /// Tell the kernel we are done with these pages (see [`Pages::release`]).
    pub fn release(&self, span: &Range<u64>) {
        self.pages().release(span)
    }

    /// The mapped pages a read of `t` (at `span`, from [`TorchFile::span`]) uses, to release
    /// once done with its bytes: its span of this file, or the pieces an assembled tensor lends
    /// from other files.
    pub fn pages_for(
        &self,
        name: &str,
        t: &TensorRef,
        span: &Range<u64>,
    ) -> Vec<(Pages<'_>, Range<u64>)> {
        match self.assembled_for(t) {
            Some(a) => a.pages(name, t),
            None => vec![(self.pages(), span.clone())],
        }
    }

    /// Release the pages a read of `t` used (see [`TorchFile::pages_for`]).
    pub fn release_for(&self, name: &str, t: &TensorRef, span: &Range<u64>) {
        for (p, r) in self.pages_for(name, t, span) {
            p.release(&r);
        }
    }

    /// A handle on the file's mapped bytes that another thread may use to release pages (the
    /// object tree is single-threaded; the map is not).
    pub fn pages(&self) -> Pages<'_> {
        Pages(&self.map)
    }
}
