//! torch Distributed Checkpoint folders (`torch.distributed.checkpoint.save` with
//! `FileSystemWriter`): `.metadata`, a pickle of `Metadata`, and `__R_K.distcp` data files.
//!
//! `.metadata` goes through the same inert pickle machine as every torch file; these classes
//! are interpreted, by name only: `torch.distributed.checkpoint.metadata.{Metadata,
//! TensorStorageMetadata, BytesStorageMetadata, ChunkStorageMetadata, TensorProperties,
//! MetadataIndex}` and `torch.distributed.checkpoint.filesystem._StorageInfo` (`torch.Size`,
//! `torch.<dtype>` as elsewhere). Everything else it names (`StorageMeta`, `pathlib.PosixPath`,
//! `_MEM_FORMAT_ENCODING`, megatron-core's cached `SavePlan`/`WriteItem`/`WriteItemType`/
//! `TensorWriteData`) stays an opaque object and is never looked at.
//!
//! Each tensor becomes an [`Assembled`] global tensor, its chunks proven to tile it before
//! anything is read; each chunk's bytes are a standalone `torch.save` zip at its
//! `_StorageInfo` byte range of a data file, parsed only when the chunk is read. The object tree
//! a [`super::TorchFile`] shows is a flat dict `fqn -> tensor` over a virtual storage per tensor,
//! plus the "common" dict megatron-core's `dist_checkpointing` keeps beside the tensors
//! (`common.pt` in the folder, or the bytes item `common_state/*`), which holds its `args`.

use std::borrow::Cow;
use std::collections::HashMap;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::rc::Rc;

use memmap2::Mmap;

use super::assembled::{Assembled, Chunk};
use super::tensor::{Dtype, TensorRef};
use super::value::{shorten, Arena, Value};
use super::{parse_bytes, pickle, read_span, span};
use crate::error::{Error, Result};

/// The file name of a DCP folder's metadata.
pub const METADATA: &str = ".metadata";
/// Chunks in one checkpoint: a 100-layer model at tp 8 × pp 8 has ~10,000 per tensor kind.
pub const MAX_CHUNKS: usize = 1 << 17;
/// Chunks of one tensor.
pub const MAX_CHUNKS_PER_TENSOR: usize = 1 << 14;
/// Data files one checkpoint may name (one or two per rank).
pub const MAX_FILES: usize = 16_384;
/// megatron-core's `common.pt` holds its args; anything larger is not one.
const MAX_COMMON_BYTES: u64 = 64 << 20;

/// One stored item: a byte range of a data file.
#[derive(Debug, Clone)]
struct Item {
    file: usize,
    range: Range<u64>,
}

/// A tensor of the checkpoint: its name, chunks, and place in the virtual storage space.
struct Stored {
    name: String,
    start: u64,
    t: Assembled,
}

/// An opened DCP folder: the data files mapped, every tensor's chunks checked.
pub struct Dcp {
    files: Vec<(PathBuf, Mmap)>,
    items: Vec<Item>,
    /// Sorted by `start`.
    tensors: Vec<Stored>,
}

/// A stored tensor for reports: name, global shape, and each chunk with its data file's name
/// and the byte range of its item there.
pub type Described = (String, Vec<u64>, Vec<(Chunk, String, Range<u64>)>);

/// What [`open`] gives a [`super::TorchFile`].
pub struct Opened {
    /// The object tree: `fqn -> tensor`, plus the common dict's entries.
    pub root: Value,
    /// The containers `root` is made of.
    pub arena: Arena,
    /// Tensor name -> its virtual byte range.
    pub storages: HashMap<String, Range<u64>>,
    /// The folder's data files and chunks.
    pub dcp: Dcp,
}

/// Read a DCP folder's `.metadata` (`bytes`, from `meta`), map the data files it names, check
/// every tensor's chunks.
pub fn open(bytes: &[u8], meta: &Path) -> Result<Opened> {
    let dir = meta.parent().unwrap_or(Path::new("."));
    let parsed = pickle::parse(bytes, meta, 0)?;
    let bad = |msg: String| Error::format(meta, msg);
    if !is_class(&parsed.value, "metadata", "Metadata") {
        return Err(bad(format!(
            "is {}, expected a torch.distributed.checkpoint Metadata",
            parsed.value.describe()
        )));
    }
    let mut arena = parsed.arena;
    let mut files = Files::new(dir);
    let index = storage_index(&parsed.value, meta, &mut files)?;
    let sdm = parsed
        .value
        .get("state_dict_metadata")
        .and_then(|v| v.dict_items())
        .ok_or_else(|| bad("has no state_dict_metadata dict".into()))?;
    let mut tensors = Vec::new();
    let mut commons = Vec::new();
    let mut next = 0u64;
    let mut chunks = 0usize;
    for (k, md) in &sdm {
        let name = k
            .as_str()
            .ok_or_else(|| bad(format!("a key is {}, not a string", k.describe())))?;
        if is_class(md, "metadata", "BytesStorageMetadata") {
            if name.starts_with("common_state/") {
                commons.push(lookup(&index, name, None, meta)?);
            }
            continue;
        }
        if !is_class(md, "metadata", "TensorStorageMetadata") {
            return Err(bad(format!(
                "entry `{}` is {}, expected tensor or bytes storage metadata",
                shorten(name),
                md.describe()
            )));
        }
        let t = tensor(name, md, &index, meta)?;
        chunks = chunks.saturating_add(t.chunks.len());
        if chunks > MAX_CHUNKS {
            return Err(bad(format!(
                "lists more than {MAX_CHUNKS} chunks; refusing a checkpoint this fragmented"
            )));
        }
        let nbytes = t.nbytes().unwrap_or(0);
        tensors.push(Stored {
            name: name.to_string(),
            start: next,
            t,
        });
        next = next
            .checked_add(nbytes)
            .ok_or_else(|| bad("tensor sizes overflow".into()))?;
    }
    let files = files.map()?;
    let dcp = Dcp {
        files,
        items: index.items,
        tensors,
    };
    dcp.check_items(meta)?;
    let mut pairs = Vec::new();
    let mut storages = HashMap::new();
    for s in &dcp.tensors {
        let nbytes = s.t.nbytes().unwrap_or(0);
        storages.insert(s.name.clone(), s.start..s.start + nbytes);
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
    common(dir, &dcp, &commons, &mut pairs, &mut arena)?;
    let root = Value::Dict(Rc::new(std::cell::RefCell::new(pairs)));
    arena.register(&root);
    Ok(Opened {
        root,
        arena,
        storages,
        dcp,
    })
}

/// `storage_data`: (fqn, offsets) -> item, the data files named collected on the way.
struct Index {
    items: Vec<Item>,
    at: HashMap<(String, Option<Vec<u64>>), usize>,
}

fn storage_index(md: &Value, meta: &Path, files: &mut Files) -> Result<Index> {
    let bad = |msg: String| Error::format(meta, msg);
    let entries = md
        .get("storage_data")
        .and_then(|v| v.dict_items())
        .ok_or_else(|| bad("has no storage_data dict".into()))?;
    if entries.len() > MAX_CHUNKS + MAX_FILES {
        return Err(bad(format!(
            "storage_data lists {} items (at most {})",
            entries.len(),
            MAX_CHUNKS + MAX_FILES
        )));
    }
    let mut index = Index {
        items: Vec::with_capacity(entries.len()),
        at: HashMap::new(),
    };
    for (k, info) in &entries {
        let fqn = k.get("fqn").and_then(|v| v.as_str().map(str::to_string));
        let fqn =
            fqn.ok_or_else(|| bad(format!("storage_data key {} has no fqn", k.describe())))?;
        let offset = match k.get("offset") {
            None | Some(Value::None) => None,
            Some(v) => Some(ints(&v).ok_or_else(|| {
                bad(format!(
                    "storage_data `{}`: offset is not a tuple of sizes",
                    shorten(&fqn)
                ))
            })?),
        };
        let what = |m: &str| bad(format!("storage of `{}`: {m}", shorten(&fqn)));
        if !is_class(info, "filesystem", "_StorageInfo") {
            return Err(what(&format!(
                "is {}, expected a _StorageInfo",
                info.describe()
            )));
        }
        match &info.get("transform_descriptors") {
            None | Some(Value::None) => {}
            Some(Value::List(l)) if l.borrow().is_empty() => {}
            Some(Value::Tuple(t)) if t.is_empty() => {}
            Some(v) => {
                return Err(what(&format!(
                    "has storage transforms ({}): compressed or transformed DCP items are not \
                     supported",
                    v.describe()
                )))
            }
        }
        let path = info
            .get("relative_path")
            .and_then(|v| v.as_str().map(str::to_string))
            .ok_or_else(|| what("relative_path is not a string"))?;
        let num = |f: &str| {
            info.get(f)
                .and_then(|v| v.as_int())
                .and_then(|n| u64::try_from(n).ok())
        };
        let (start, len) = num("offset")
            .zip(num("length"))
            .ok_or_else(|| what("offset or length is not a non-negative integer"))?;
        let end = start
            .checked_add(len)
            .ok_or_else(|| what("offset + length overflows"))?;
        let file = files.add(&path).map_err(|m| what(&m))?;
        let n = index.items.len();
        index.items.push(Item {
            file,
            range: start..end,
        });
        index.at.insert((fqn, offset), n);
    }
    Ok(index)
}

fn lookup(index: &Index, fqn: &str, offsets: Option<&[u64]>, meta: &Path) -> Result<usize> {
    let key = (fqn.to_string(), offsets.map(<[u64]>::to_vec));
    index.at.get(&key).copied().ok_or_else(|| {
        Error::format(
            meta,
            format!(
                "`{}`{}: storage_data has no entry for it",
                shorten(fqn),
                offsets
                    .map(|o| format!(" chunk at offsets {o:?}"))
                    .unwrap_or_default()
            ),
        )
    })
}

/// One `TensorStorageMetadata`: dtype, global size, chunks, each chunk found in the index.
fn tensor(name: &str, md: &Value, index: &Index, meta: &Path) -> Result<Assembled> {
    let bad = |m: String| Error::tensor(meta, name, m);
    let props = md
        .get("properties")
        .ok_or_else(|| bad("has no properties".into()))?;
    // TensorProperties pickles a tuple state (dtype, layout, ...); older torch a dict.
    let dtype_v = match &props_state(&props) {
        Some(Value::Tuple(t)) => t.first().cloned(),
        _ => props.get("dtype"),
    };
    let dtype = match &dtype_v {
        Some(Value::Global(g)) if &*g.module == "torch" => Dtype::from_torch_name(&g.name),
        _ => None,
    }
    .ok_or_else(|| {
        bad(format!(
            "has dtype {}, which is not a dtype cpm-convert reads",
            dtype_v.map_or("<none>".into(), |v| v.describe())
        ))
    })?;
    let shape = md
        .get("size")
        .as_ref()
        .and_then(ints)
        .ok_or_else(|| bad("size is not a tuple of sizes".into()))?;
    let list = match &md.get("chunks") {
        Some(Value::List(l)) => l.borrow().clone(),
        _ => return Err(bad("chunks is not a list".into())),
    };
    if list.len() > MAX_CHUNKS_PER_TENSOR {
        return Err(bad(format!(
            "has {} chunks (at most {MAX_CHUNKS_PER_TENSOR})",
            list.len()
        )));
    }
    let mut chunks = Vec::with_capacity(list.len());
    for c in &list {
        let (offsets, sizes) = c
            .get("offsets")
            .as_ref()
            .and_then(ints)
            .zip(c.get("sizes").as_ref().and_then(ints))
            .ok_or_else(|| bad("a chunk's offsets or sizes are not tuples of sizes".into()))?;
        let source = lookup(index, name, Some(&offsets), meta)?;
        chunks.push(Chunk {
            offsets,
            sizes,
            source,
        });
    }
    let t = Assembled {
        dtype,
        shape,
        chunks,
    };
    t.check().map_err(bad)?;
    Ok(t)
}

fn props_state(props: &Value) -> Option<Value> {
    match props {
        Value::Object(o) => o.borrow().state.clone(),
        _ => None,
    }
}

/// The data files `storage_data` names: plain names inside the folder, each counted once.
struct Files<'a> {
    dir: &'a Path,
    names: Vec<String>,
    at: HashMap<String, usize>,
}

impl<'a> Files<'a> {
    fn new(dir: &'a Path) -> Self {
        Files {
            dir,
            names: Vec::new(),
            at: HashMap::new(),
        }
    }

    fn add(&mut self, name: &str) -> std::result::Result<usize, String> {
        if let Some(&i) = self.at.get(name) {
            return Ok(i);
        }
        let plain = !name.is_empty()
            && name != "."
            && name != ".."
            && !name.contains(['/', '\\', '\0'])
            && name.len() <= super::value::MAX_NAME_BYTES;
        if !plain {
            return Err(format!(
                "relative_path `{}` is not a plain file name in the checkpoint folder",
                shorten(name)
            ));
        }
        if self.names.len() >= MAX_FILES {
            return Err(format!("names more than {MAX_FILES} data files"));
        }
        self.at.insert(name.to_string(), self.names.len());
        self.names.push(name.to_string());
        Ok(self.names.len() - 1)
    }

    fn map(self) -> Result<Vec<(PathBuf, Mmap)>> {
        self.names
            .iter()
            .map(|n| {
                let path = self.dir.join(n);
                let (file, _) =
                    crate::error::open_regular(&path, "DCP data files must be regular files")?;
                // SAFETY: read-only map; see TorchFile::open.
                let map =
                    unsafe { Mmap::map(&file) }.map_err(|e| Error::io(&path, "cannot map", e))?;
                Ok((path, map))
            })
            .collect()
    }
}

impl Dcp {
    /// Every item lies inside its file and is large enough to hold its chunk: what a read
    /// allocates is then backed by bytes of the input.
    fn check_items(&self, meta: &Path) -> Result<()> {
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
                        meta,
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
                        meta,
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

    /// The bytes of virtual range `span` (inside one tensor, as [`span`] computed it).
    pub fn read(&self, name: &str, span: &Range<u64>) -> Result<Vec<u8>> {
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
            super::Pages(Some(&self.files[it.file].1)).release(&it.range);
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

fn is_class(v: &Value, module_tail: &str, name: &str) -> bool {
    match v {
        Value::Object(o) => o.borrow().class.as_ref().is_some_and(|g| {
            &*g.name == name
                && g.module.strip_prefix("torch.distributed.checkpoint.") == Some(module_tail)
        }),
        _ => false,
    }
}

/// A tuple or list of non-negative ints (a `torch.Size` is its tuple).
fn ints(v: &Value) -> Option<Vec<u64>> {
    let items = match v {
        Value::Tuple(t) => t.to_vec(),
        Value::List(l) => l.borrow().clone(),
        _ => return None,
    };
    if items.len() > super::assembled::MAX_NDIM {
        return None;
    }
    items
        .iter()
        .map(|x| x.as_int().and_then(|n| u64::try_from(n).ok()))
        .collect()
}

fn contiguous_strides(shape: &[u64]) -> Vec<u64> {
    let mut s = vec![1u64; shape.len()];
    for d in (0..shape.len().saturating_sub(1)).rev() {
        s[d] = s[d + 1].saturating_mul(shape[d + 1]);
    }
    s
}
