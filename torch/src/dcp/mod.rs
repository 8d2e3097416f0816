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

/// Bytes lent from a data file's map: the bytes, the map's pages, the file range they lie at.
type Lent<'a> = (&'a [u8], Pages<'a>, Range<u64>);

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

    /// The tensor's bytes, assembled: a contiguous view is those bytes (borrowed when one chunk
    /// holds them), a strided one gathered.
    fn read(&self, name: &str, t: &TensorRef) -> Result<Cow<'_, [u8]>> {
        let span = self.span(name, t)?;
        let bytes = self.read_span(name, &span)?;
        if t.is_contiguous() && t.nbytes() == Some(bytes.len() as u64) {
            return Ok(bytes);
        }
        let whole = 0..bytes.len() as u64;
        Ok(Cow::Owned(
            read_span(&bytes, &self.meta, name, t, &whole)?.into_owned(),
        ))
    }

    /// A contiguous tensor stored as chunks of whole rows is its chunks' bytes in row order,
    /// each lent from its item; anything else is [`Assembled::read`].
    fn read_pieces(&self, name: &str, t: &TensorRef) -> Result<Vec<Cow<'_, [u8]>>> {
        let span = self.span(name, t)?;
        let s = self.stored(name, &span)?;
        let whole = span.start == s.start && Some(span.end - span.start) == s.t.nbytes();
        if !(whole && t.is_contiguous()) || s.t.shape.is_empty() {
            return self.read(name, t).map(|b| vec![b]);
        }
        let mut rows: Vec<&Chunk> = s.t.chunks.iter().filter(|c| c.sizes[0] > 0).collect();
        rows.sort_by_key(|c| c.offsets[0]);
        let mut pieces = Vec::with_capacity(rows.len());
        for c in rows {
            let whole_rows = c.sizes[1..] == s.t.shape[1..];
            match self.chunk_bytes(s, c)? {
                Cow::Borrowed(b) if whole_rows => {
                    let n = (c.sizes.iter().product::<u64>() * s.t.dtype.size() as u64) as usize;
                    pieces.push(Cow::Borrowed(&b[..n]))
                }
                _ => return self.read(name, t).map(|b| vec![b]),
            }
        }
        for (p, r) in self.pages_span(name, &span) {
            p.prefetch(&r);
        }
        Ok(pieces)
    }

    fn pages(&self, name: &str, t: &TensorRef) -> Vec<(Pages<'_>, Range<u64>)> {
        match self.span(name, t) {
            Ok(span) => self.pages_span(name, &span),
            Err(_) => Vec::new(),
        }
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

    /// The stored tensor virtual range `span` lies in.
    fn stored(&self, name: &str, span: &Range<u64>) -> Result<&Stored> {
        let i = self.tensors.partition_point(|s| s.start <= span.start);
        i.checked_sub(1)
            .map(|i| &self.tensors[i])
            .filter(|s| span.end <= s.start + s.t.nbytes().unwrap_or(0))
            .ok_or_else(|| Error::internal(format!("span {span:?} of `{name}` is no tensor's")))
    }

    /// The bytes of virtual range `span`, lent from the one chunk that holds them as a run of
    /// its row-major bytes (a chunk of whole rows, as FSDP and tensor parallelism along the
    /// first dimension store them), with the file's pages and the byte range they lie at.
    /// `None` where no chunk does, or the chunk's item is stored strided.
    fn lend(&self, name: &str, span: &Range<u64>) -> Result<Option<Lent<'_>>> {
        let s = self.stored(name, span)?;
        let es = s.t.dtype.size() as u64;
        let (a, b) = ((span.start - s.start) / es, (span.end - s.start) / es);
        let shape = &s.t.shape;
        // Elements per index of the first dimension (the whole tensor for a scalar).
        let row: u64 = shape.iter().skip(1).product();
        let Some(c) = s.t.chunks.iter().find(|c| {
            let whole_rows = c.sizes.iter().skip(1).eq(shape.iter().skip(1));
            let first = c.offsets.first().copied().unwrap_or(0) * row;
            whole_rows && first <= a && b <= first + c.sizes.iter().product::<u64>()
        }) else {
            return Ok(None);
        };
        let Cow::Borrowed(bytes) = self.chunk_bytes(s, c)? else {
            return Ok(None);
        };
        let first = c.offsets.first().copied().unwrap_or(0) * row;
        let lent = &bytes[((a - first) * es) as usize..((b - first) * es) as usize];
        let map = &self.files[self.items[c.source].file].1;
        // Where the slice lies in the map: both are the same mapping's bytes.
        let at = (lent.as_ptr() as usize - map.as_ptr() as usize) as u64;
        Ok(Some((lent, Pages(map), at..at + lent.len() as u64)))
    }

    /// The bytes of virtual range `span` (inside one tensor, as [`Dcp::span`] computed it):
    /// borrowed from the chunk that holds them whole (see `Dcp::lend`; release them with
    /// [`Dcp::pages_span`]), else assembled from the chunks it touches, whose pages are then
    /// released.
    pub fn read_span(&self, name: &str, span: &Range<u64>) -> Result<Cow<'_, [u8]>> {
        if let Some((bytes, pages, range)) = self.lend(name, span)? {
            pages.prefetch(&range);
            return Ok(Cow::Borrowed(bytes));
        }
        let s = self.stored(name, span)?;
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
        Ok(Cow::Owned(out))
    }

    /// The mapped pages a read of `span` lent, to release once done with them: the exact
    /// range where one chunk lent it all, else (a whole tensor) the items of all its chunks.
    pub fn pages_span(&self, name: &str, span: &Range<u64>) -> Vec<(Pages<'_>, Range<u64>)> {
        if let Ok(Some((_, pages, range))) = self.lend(name, span) {
            return vec![(pages, range)];
        }
        // Part of a tensor assembled by copying was released as it was copied.
        match self.stored(name, span) {
            Ok(s) if span.start == s.start && Some(span.end - span.start) == s.t.nbytes() => {
                s.t.chunks
                    .iter()
                    .map(|c| {
                        let it = &self.items[c.source];
                        (Pages(&self.files[it.file].1), it.range.clone())
                    })
                    .collect()
            }
            _ => Vec::new(),
        }
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
