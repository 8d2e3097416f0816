//! Reading `torch.save` files without Python and without executing anything.
//!
//! Both formats end up as the same thing: the unpickled object tree ([`Value`]) and a table of
//! storages, each a byte range of the memory-mapped file. Tensor data is only touched when a
//! caller asks for it, so reading a checkpoint's structure costs a few kilobytes of I/O.
//!
//! Tensors whose bytes lie in other files (a Distributed Checkpoint folder's chunks, or pieces a
//! caller plugs in, such as DeepSpeed ZeRO's optimizer partitions) are read through one trait,
//! [`Assembled`].
#![deny(missing_docs)]

pub mod assembled;
pub mod dcp;
pub mod error;
mod legacy;
pub mod names;
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

pub use error::{Error, Result};
pub use legacy::PREFIX as LEGACY_PREFIX;
pub use names::{shorten, MAX_NAME_BYTES};
pub use tensor::{Dtype, TensorRef};
pub use value::{Arena, Value};

/// The on-disk flavour of a torch file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// A zip archive (torch >= 1.6).
    Zip,
    /// The legacy stream of pickles (`_use_new_zipfile_serialization=False`).
    Legacy,
    /// A safetensors file: each tensor is its own storage.
    Safetensors,
    /// A torch Distributed Checkpoint folder (its `.metadata`): global tensors assembled from
    /// chunks in its data files.
    Dcp,
}

impl Format {
    /// The flavour as reports name it.
    pub fn name(self) -> &'static str {
        match self {
            Format::Zip => "zip",
            Format::Legacy => "legacy",
            Format::Safetensors => "safetensors",
            Format::Dcp => "dcp",
        }
    }
}

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
    /// Tensors whose bytes lie in other files (DeepSpeed ZeRO partitions), standing in for
    /// this file's own tensors: see [`TorchFile::with_assembled`].
    assembled: Option<Box<dyn Assembled>>,
    /// A DCP folder: storages are virtual ranges, read by assembling chunks.
    dcp: Option<dcp::Dcp>,
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
            let o = dcp::open(&map, path)?;
            return Ok(TorchFile {
                path: path.to_path_buf(),
                format: Format::Dcp,
                root: o.root,
                map,
                storages: o.storages,
                assembled: None,
                dcp: Some(o.dcp),
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
            dcp: None,
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
        self.dcp.is_some()
    }

    /// A DCP folder's tensors and chunks, for reports.
    pub fn dcp(&self) -> Option<&dcp::Dcp> {
        self.dcp.as_ref()
    }

    /// Size of the file in bytes.
    pub fn file_len(&self) -> u64 {
        self.map.len() as u64
    }

    /// Check `t` against its storage and return the byte range of the file it spans.
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
            return a.read(name, t).map(Cow::Owned);
        }
        let span = self.span(name, t)?;
        self.read_at(name, t, &span)
    }

    /// [`TorchFile::read`] for a span already computed by [`TorchFile::span`] for this tensor.
    pub fn read_at(&self, name: &str, t: &TensorRef, span: &Range<u64>) -> Result<Cow<'_, [u8]>> {
        if let Some(a) = self.assembled_for(t) {
            return a.read(name, t).map(Cow::Owned);
        }
        match &self.dcp {
            None => read_span(&self.map, &self.path, name, t, span),
            Some(d) => {
                let bytes = d.read(name, span)?;
                // Assembled already: a contiguous view is those bytes, a strided one gathered.
                if t.is_contiguous() && t.nbytes() == Some(bytes.len() as u64) {
                    return Ok(Cow::Owned(bytes));
                }
                let whole = 0..bytes.len() as u64;
                Ok(Cow::Owned(
                    read_span(&bytes, &self.path, name, t, &whole)?.into_owned(),
                ))
            }
        }
    }

    /// Map these pages in one system call before they are read: cheaper than a page fault per
    /// 64 KiB. Best effort (MADV_POPULATE_READ needs Linux 5.14).
    pub fn prefetch(&self, span: &Range<u64>) {
        if self.dcp.is_some() {
            return;
        }
        let page = 4096u64;
        let start = span.start / page * page;
        let len = (span.end - start) as usize;
        #[cfg(target_os = "linux")]
        let _ = self
            .map
            .advise_range(memmap2::Advice::PopulateRead, start as usize, len);
    }

    /// Tell the kernel we are done with these pages (see [`Pages::release`]).
    pub fn release(&self, span: &Range<u64>) {
        self.pages().release(span)
    }

    /// A handle on the file's mapped bytes that another thread may use to release pages (the
    /// object tree is single-threaded; the map is not).
    pub fn pages(&self) -> Pages<'_> {
        // A DCP folder's spans are virtual: its chunk bytes were copied when read.
        Pages(self.dcp.is_none().then_some(&self.map))
    }
}

/// Tensors a [`TorchFile`] stands for whose bytes lie elsewhere, in pieces (DeepSpeed ZeRO's
/// fp32 partitions, which the converter plugs in). Keyed by the storage key of the tensor references the
/// file's (replaced) object tree holds.
pub trait Assembled {
    /// Whether `key` names one of these tensors.
    fn holds(&self, key: &str) -> bool;
    /// Check that every piece of `t` lies inside its file.
    fn check(&self, name: &str, t: &TensorRef) -> Result<()>;
    /// `t`'s elements in row-major order, gathered from its pieces (whose pages are released
    /// once copied).
    fn read(&self, name: &str, t: &TensorRef) -> Result<Vec<u8>>;
    /// For reports that know the concrete kind.
    fn as_any(&self) -> &dyn std::any::Any;
}

/// The mapped bytes of a [`TorchFile`], shareable across threads.
#[derive(Clone, Copy)]
pub struct Pages<'a>(Option<&'a Mmap>);

impl Pages<'_> {
    /// Tell the kernel we are done with these pages, so a long conversion's resident set does
    /// not grow with the model (the page cache keeps them if memory allows).
    pub fn release(&self, span: &Range<u64>) {
        let Some(map) = self.0 else {
            return;
        };
        let page = 4096u64;
        let start = span.start / page * page;
        let len = (span.end - start) as usize;
        // SAFETY: DONTNEED on a read-only file mapping only drops our view of the pages; a later
        // read (even one still in flight on another thread) faults them in again from the
        // file, with the same contents. Callers release a tensor after they are done with it.
        let _ = unsafe {
            map.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, start as usize, len)
        };
    }
}

/// What a torch file holds, parsed from its bytes: the object tree and where each storage lies.
pub struct Contents {
    /// Which flavour the bytes are.
    pub format: Format,
    /// The unpickled object tree.
    pub root: Value,
    /// Storage key -> byte range in the file.
    pub storages: HashMap<String, Range<u64>>,
    /// The containers `root` is made of; dropped after `root`, it frees reference cycles.
    pub arena: Arena,
}

/// Parse a whole torch file held in memory (a memory map, or a buffer in tests and fuzz
/// targets). `path` is only used in messages. This is the one parsing path of [`TorchFile`].
pub fn parse_bytes(bytes: &[u8], path: &Path) -> Result<Contents> {
    if bytes.is_empty() {
        return Err(Error::format(
            path,
            "file is empty, expected a torch checkpoint",
        ));
    }
    let (format, (root, arena, storages)) = if bytes.starts_with(b"PK\x03\x04") {
        (Format::Zip, zip::read(bytes, path)?)
    } else if bytes.starts_with(LEGACY_PREFIX) {
        (Format::Legacy, legacy::read(bytes, path)?)
    } else if safetensors::looks_like(bytes) {
        (Format::Safetensors, safetensors::read(bytes, path)?)
    } else if bytes.len() > 262 && &bytes[257..262] == b"ustar" {
        return Err(Error::format(
            path,
            "tar-format torch file (torch < 0.4) is not supported; re-save it with a newer torch",
        ));
    } else {
        return Err(Error::format(
            path,
            format!(
                "not a torch checkpoint: expected a zip archive (PK\\x03\\x04), the legacy \
                 pickle magic or a safetensors header (8-byte length, then `{{`), found bytes \
                 {:02x?}",
                &bytes[..bytes.len().min(8)]
            ),
        ));
    };
    Ok(Contents {
        format,
        root,
        storages,
        arena,
    })
}

/// Check `t` against its storage in `storages` and return the byte range of the file it spans.
pub fn span(
    storages: &HashMap<String, Range<u64>>,
    path: &Path,
    name: &str,
    t: &TensorRef,
) -> Result<Range<u64>> {
    let storage = storages.get(&*t.storage_key).ok_or_else(|| {
        Error::tensor(
            path,
            name,
            format!(
                "refers to storage `{}`, which the file does not contain",
                value::shorten(&t.storage_key)
            ),
        )
    })?;
    let (s, e) = t
        .byte_span(storage.end - storage.start)
        .map_err(|m| Error::tensor(path, name, m))?;
    Ok(storage.start + s..storage.start + e)
}

/// The tensor's elements in row-major order, from the file's bytes: borrowed when the tensor
/// is contiguous, gathered otherwise. Bounds are checked first ([`span`]).
pub fn read_tensor<'a>(
    bytes: &'a [u8],
    storages: &HashMap<String, Range<u64>>,
    path: &Path,
    name: &str,
    t: &TensorRef,
) -> Result<Cow<'a, [u8]>> {
    let span = span(storages, path, name, t)?;
    read_span(bytes, path, name, t, &span)
}

/// The tensor's elements given its checked span of `bytes`.
fn read_span<'a>(
    bytes: &'a [u8],
    path: &Path,
    name: &str,
    t: &TensorRef,
    span: &Range<u64>,
) -> Result<Cow<'a, [u8]>> {
    let bytes = usize::try_from(span.start)
        .ok()
        .zip(usize::try_from(span.end).ok())
        .and_then(|(s, e)| bytes.get(s..e))
        .ok_or_else(|| Error::tensor(path, name, "lies outside the file"))?;
    let n = t
        .nbytes()
        .and_then(|n| usize::try_from(n).ok())
        .ok_or_else(|| Error::tensor(path, name, "size overflows"))?;
    if t.is_contiguous() {
        return bytes
            .get(..n)
            .map(Cow::Borrowed)
            .ok_or_else(|| Error::tensor(path, name, "lies outside its storage"));
    }
    // `byte_span` proved n <= the storage's bytes, so this allocation is backed by the file.
    Ok(Cow::Owned(gather(bytes, t)))
}

/// Copy a strided tensor into row-major order. `bytes` starts at the tensor's first element.
fn gather(bytes: &[u8], t: &TensorRef) -> Vec<u8> {
    let es = t.dtype.size();
    let numel = t.numel().unwrap_or(0) as usize;
    let mut out = Vec::with_capacity(numel * es);
    let nd = t.shape.len();
    let mut idx = vec![0u64; nd];
    for _ in 0..numel {
        // Bounds were proven by `byte_span`: every index stays inside the span.
        let off: u64 = idx.iter().zip(&t.stride).map(|(i, s)| i * s).sum();
        let o = off as usize * es;
        out.extend_from_slice(&bytes[o..o + es]);
        for d in (0..nd).rev() {
            idx[d] += 1;
            if idx[d] < t.shape[d] {
                break;
            }
            idx[d] = 0;
        }
    }
    out
}
