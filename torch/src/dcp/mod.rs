//! torch Distributed Checkpoint folders (`torch.distributed.checkpoint.save` with
//! `FileSystemWriter`): `.metadata`, a pickle of `Metadata`, and `__R_K.distcp` data files.
//!
//! `.metadata` goes through the same inert pickle machine as every torch file ([`metadata`]);
//! these classes are interpreted, by name only: `torch.distributed.checkpoint.metadata.{Metadata,
//! TensorStorageMetadata, BytesStorageMetadata, ChunkStorageMetadata, TensorProperties,
//! MetadataIndex}` and `torch.distributed.checkpoint.filesystem._StorageInfo` (`torch.Size`,
//! `torch.<dtype>` as elsewhere). Everything else it names (`StorageMeta`, `pathlib.PosixPath`,
//! `_MEM_FORMAT_ENCODING`, megatron-core's cached `SavePlan`/`WriteItem`/`WriteItemType`/
//! `TensorWriteData`) stays an opaque object and is never looked at.
//!
//! Each tensor is a [`Tiled`](crate::assembled::Tiled) global tensor, its chunks proven to tile it before anything is
//! read; each chunk's bytes are a standalone `torch.save` zip at its `_StorageInfo` byte range
//! of a data file, parsed only when the chunk is read. The object tree a
//! [`TorchFile`](crate::TorchFile) shows is a flat dict `fqn -> tensor`, each tensor read
//! through [`Dcp`]'s [`Assembled`], plus the "common" dict megatron-core's `dist_checkpointing`
//! keeps beside the tensors (`common.pt` in the folder, or the bytes item `common_state/*`),
//! which holds its `args`.

pub mod metadata;

use std::borrow::Cow;
use std::collections::HashMap;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::rc::Rc;

use memmap2::Mmap;

use crate::assembled::{Assembled, Chunk};
use crate::contents::{parse_bytes, read_span, span};
use crate::error::{Error, Result};
use crate::pages::Pages;
use crate::tensor::TensorRef;
use crate::value::{Arena, Value};
use metadata::{Item, Stored};

pub use metadata::{MAX_CHUNKS, MAX_CHUNKS_PER_TENSOR, MAX_FILES};

/// The file name of a DCP folder's metadata.
pub const METADATA: &str = ".metadata";
/// megatron-core's `common.pt` holds its args; anything larger is not one.
const MAX_COMMON_BYTES: u64 = 64 << 20;

/// An opened DCP folder: the data files mapped, every tensor's chunks checked.
pub struct Dcp {
    /// The `.metadata` file, named in messages about tensors.
    meta: PathBuf,
    files: Vec<(PathBuf, Mmap)>,
    items: Vec<Item>,
    /// Sorted by `start`.
    tensors: Vec<Stored>,
    /// Tensor name -> its virtual byte range.
    storages: HashMap<String, Range<u64>>,
}

/// A stored tensor for reports: name, global shape, and each chunk with its data file's name
/// and the byte range of its item there.
pub type Described = (String, Vec<u64>, Vec<(Chunk, String, Range<u64>)>);

/// What [`open`] gives a [`TorchFile`](crate::TorchFile).
pub struct Opened {
    /// The object tree: `fqn -> tensor`, plus the common dict's entries.
    pub root: Value,
    /// The containers `root` is made of.
    pub arena: Arena,
    /// The folder's data files and chunks.
    pub dcp: Dcp,
}

/// Read a DCP folder's `.metadata` (`bytes`, from `meta`), map the data files it names, check
/// every tensor's chunks.
pub fn open(bytes: &[u8], meta: &Path) -> Result<Opened> {
    let dir = meta.parent().unwrap_or(Path::new("."));
    let md = metadata::parse(bytes, meta)?;
    let mut arena = md.arena;
    let files = map_files(dir, &md.files)?;
    let storages = md
        .tensors
        .iter()
        .map(|s| (s.name.clone(), s.start..s.start + s.t.nbytes().unwrap_or(0)))
        .collect();
    let dcp = Dcp {
        meta: meta.to_path_buf(),
        files,
        items: md.items,
        tensors: md.tensors,
        storages,
    };
    dcp.check_items()?;
    let mut pairs = Vec::new();
    for s in &dcp.tensors {
        let t = TensorRef {
            storage_key: Rc::from(s.name.as_str()),
            dtype: s.t.dtype,
            offset: 0,
            shape: s.t.shape.clone(),
            stride: contiguous_strides(&s.t.shape),
        };
        pairs.push((
            Value::Str(Rc::from(s.name.as_str())),
            Value::Tensor(Rc::new(t)),
        ));
    }
    common(dir, &dcp, &md.commons, &mut pairs, &mut arena)?;
    let root = Value::Dict(Rc::new(std::cell::RefCell::new(pairs)));
    arena.register(&root);
    Ok(Opened { root, arena, dcp })
}

/// Map each data file the metadata names, in the folder `dir`.
fn map_files(dir: &Path, names: &[String]) -> Result<Vec<(PathBuf, Mmap)>> {
    names
        .iter()
        .map(|n| {
            let path = dir.join(n);
            let (file, _) =
                crate::error::open_regular(&path, "DCP data files must be regular files")?;
            // SAFETY: read-only map; see TorchFile::open.
            let map = unsafe { Mmap::map(&file) }.map_err(|e| Error::io(&path, "cannot map", e))?;
            Ok((path, map))
        })
        .collect()
}

impl Assembled for Dcp {
    fn holds(&self, key: &str) -> bool {
        self.storages.contains_key(key)
    }

    fn check(&self, name: &str, t: &TensorRef) -> Result<()> {
        self.span(name, t).map(drop)
    }

    /// The tensor's bytes, assembled: a contiguous view is those bytes, a strided one gathered.
    fn read(&self, name: &str, t: &TensorRef) -> Result<Vec<u8>> {
        let span = self.span(name, t)?;
        let bytes = self.read_span(name, &span)?;
        if t.is_contiguous() && t.nbytes() == Some(bytes.len() as u64) {
            return Ok(bytes);
        }
        let whole = 0..bytes.len() as u64;
        Ok(read_span(&bytes, &self.meta, name, t, &whole)?.into_owned())
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}

impl Dcp {
    /// Every item lies inside its file and is large enough to hold its chunk: what a read
    /// allocates is then backed by bytes of the input.
    fn check_items(&self) -> Result<()> {
        for s in &self.tensors {
            for c in &s.t.chunks {
                let it = &self.items[c.source];
                let (path, map) = &self.files[it.file];
                let need = c
                    .sizes
                    .iter()
                    .try_fold(s.t.dtype.size() as u64, |a, &d| a.checked_mul(d));
                if need.map_or(true, |n| n > it.range.end - it.range.start) {
                    return Err(Error::tensor(
                        &self.meta,
                        &s.name,
                        format!(
                            "chunk at offsets {:?} (sizes {:?}) needs more bytes than its item \
                             in {} holds ({})",
                            c.offsets,
                            c.sizes,
                            path.display(),
                            it.range.end - it.range.start
                        ),
                    ));
                }
                if it.range.end > map.len() as u64 {
                    return Err(Error::tensor(
                        &self.meta,
                        &s.name,
                        format!(
                            "chunk at offsets {:?} points at bytes {}..{} of {}, which has {} bytes",
                            c.offsets,
                            it.range.start,
                            it.range.end,
                            path.display(),
                            map.len()
                        ),
                    ));
                }
            }
        }
        Ok(())
    }

    /// An item's bytes, checked to lie inside its file.
    fn item(&self, i: usize) -> Result<(&Path, &[u8])> {
        let it = &self.items[i];
        let (path, map) = &self.files[it.file];
        let bytes = usize::try_from(it.range.start)
            .ok()
            .zip(usize::try_from(it.range.end).ok())
            .and_then(|(a, b)| map.get(a..b))
            .ok_or_else(|| {
                Error::format(
                    path,
                    format!(
                        "an item claims bytes {}..{}, but the file has {} bytes",
                        it.range.start,
                        it.range.end,
                        map.len()
                    ),
                )
            })?;
        Ok((path, bytes))
    }

    /// A chunk's row-major bytes: its item parsed as a `torch.save` zip of one tensor of the
    /// chunk's sizes and the tensor's dtype.
    fn chunk_bytes(&self, s: &Stored, c: &Chunk) -> Result<Cow<'_, [u8]>> {
        let (path, bytes) = self.item(c.source)?;
        let what = format!("{} (chunk at offsets {:?})", s.name, c.offsets);
        if !bytes.starts_with(b"PK\x03\x04") {
            return Err(Error::tensor(
                path,
                what,
                "the item is not a torch.save zip; other DCP serializations are not read",
            ));
        }
        let contents = parse_bytes(bytes, path)?;
        let t = match &contents.root {
            Value::Tensor(t) => Rc::clone(t),
            other => {
                return Err(Error::tensor(
                    path,
                    what,
                    format!("the item holds {}, expected a tensor", other.describe()),
                ))
            }
        };
        if t.dtype != s.t.dtype || t.shape != c.sizes {
            return Err(Error::tensor(
                path,
                what,
                format!(
                    "the item holds a {} tensor of shape {:?}, the metadata says {} {:?}",
                    t.dtype.torch_name(),
                    t.shape,
                    s.t.dtype.torch_name(),
                    c.sizes
                ),
            ));
        }
        let sp = span(&contents.storages, path, &what, &t)?;
        read_span(bytes, path, &what, &t, &sp)
    }

    /// `t` checked against the folder's tensors: its byte range in their virtual storage space
    /// (one range per tensor, back to back), which [`Dcp::read_span`] reads any part of.
    pub fn span(&self, name: &str, t: &TensorRef) -> Result<Range<u64>> {
        span(&self.storages, &self.meta, name, t)
    }

    /// The bytes of virtual range `span` (inside one tensor, as [`Dcp::span`] computed it),
    /// assembled from the chunks it touches.
    pub fn read_span(&self, name: &str, span: &Range<u64>) -> Result<Vec<u8>> {
        let i = self.tensors.partition_point(|s| s.start <= span.start);
        let s = i
            .checked_sub(1)
            .map(|i| &self.tensors[i])
            .filter(|s| span.end <= s.start + s.t.nbytes().unwrap_or(0))
            .ok_or_else(|| Error::internal(format!("span {span:?} of `{name}` is no tensor's")))?;
        let es = s.t.dtype.size() as u64;
        let (a, b) = ((span.start - s.start) / es, (span.end - s.start) / es);
        let mut out = vec![0u8; ((b - a) * es) as usize];
        let mut touched = Vec::new();
        let filled = s.t.fill(a..b, &mut out, |k| {
            touched.push(s.t.chunks[k].source);
            self.chunk_bytes(s, &s.t.chunks[k])
        });
        // The bytes are copied: drop the pages, so the resident set does not grow with the
        // model (as TorchFile::release does for mapped tensors).
        for i in touched {
            let it = &self.items[i];
            Pages(&self.files[it.file].1).release(&it.range);
        }
        filled?;
        Ok(out)
    }

    /// For reports: each tensor's name, global shape and chunks, and the files they lie in.
    pub fn describe(&self) -> Vec<Described> {
        self.tensors
            .iter()
            .map(|s| {
                let chunks =
                    s.t.chunks
                        .iter()
                        .map(|c| {
                            let it = &self.items[c.source];
                            let file = self.files[it.file]
                                .0
                                .file_name()
                                .map(|n| n.to_string_lossy().into_owned())
                                .unwrap_or_default();
                            (c.clone(), file, it.range.clone())
                        })
                        .collect();
                (s.name.clone(), s.t.shape.clone(), chunks)
            })
            .collect()
    }
}

/// megatron-core's common dict: `common.pt` beside `.metadata`, else the bytes items
/// `common_state/*` (each a `torch.save`d list holding the dict); its entries join the root.
fn common(
    dir: &Path,
    dcp: &Dcp,
    items: &[usize],
    pairs: &mut Vec<(Value, Value)>,
    arena: &mut Arena,
) -> Result<()> {
    let file = dir.join("common.pt");
    let parsed = if file.exists() {
        let bytes = crate::error::read_capped(&file, MAX_COMMON_BYTES)?;
        vec![(parse_bytes(&bytes, &file)?, file)]
    } else {
        items
            .iter()
            .map(|&i| {
                let (path, bytes) = dcp.item(i)?;
                Ok((parse_bytes(bytes, path)?, path.to_path_buf()))
            })
            .collect::<Result<Vec<_>>>()?
    };
    for (c, path) in parsed {
        let dict = match &c.root {
            Value::List(l) if l.borrow().len() == 1 => l.borrow()[0].clone(),
            v => v.clone(),
        };
        let entries = dict.dict_items().ok_or_else(|| {
            Error::format(
                &path,
                format!("common state is {}, expected a dict", dict.describe()),
            )
        })?;
        pairs.extend(entries);
        arena.extend(c.arena);
    }
    Ok(())
}

fn contiguous_strides(shape: &[u64]) -> Vec<u64> {
    let mut s = vec![1u64; shape.len()];
    for d in (0..shape.len().saturating_sub(1)).rev() {
        s[d] = s[d + 1].saturating_mul(shape[d + 1]);
    }
    s
}
