//! A torch file held in memory, whatever its format: which format it is, its object tree and
//! where each storage lies ([`parse_bytes`]), and a tensor's bytes read out of it, bounds
//! checked ([`span`], [`read_tensor`]).

use std::borrow::Cow;
use std::collections::HashMap;
use std::ops::Range;
use std::path::Path;

use crate::error::{Error, Result};
use crate::legacy::{self, PREFIX as LEGACY_PREFIX};
use crate::names::shorten;
use crate::tensor::TensorRef;
use crate::value::{Arena, Value};
use crate::{safetensors, zip};

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
/// targets). `path` is only used in messages. This is the one parsing path of [`TorchFile`](crate::TorchFile).
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
                shorten(&t.storage_key)
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
pub(crate) fn read_span<'a>(
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
