//! A DCP folder's `.metadata`: the pickled `Metadata` read into tensors, their chunks and the
//! data-file items that hold them, every chunk proven to tile its tensor. Nothing here opens a
//! file: the data files are only named (and checked to be plain names in the folder).

use std::collections::HashMap;
use std::ops::Range;
use std::path::Path;

use crate::assembled::{Chunk, Tiled, MAX_NDIM};
use crate::error::{Error, Result};
use crate::names::{shorten, MAX_NAME_BYTES};
use crate::pickle;
use crate::tensor::Dtype;
use crate::value::{Arena, Value};

/// Chunks in one checkpoint: a 100-layer model at tp 8 × pp 8 has ~10,000 per tensor kind.
pub const MAX_CHUNKS: usize = 1 << 17;
/// Chunks of one tensor.
pub const MAX_CHUNKS_PER_TENSOR: usize = 1 << 14;
/// Data files one checkpoint may name (one or two per rank).
pub const MAX_FILES: usize = 16_384;

/// One stored item: a byte range of a data file.
#[derive(Debug, Clone)]
pub(crate) struct Item {
    /// Index into [`Metadata::files`].
    pub(crate) file: usize,
    pub(crate) range: Range<u64>,
}

/// A tensor of the checkpoint: its name, chunks, and place in the virtual storage space.
pub(crate) struct Stored {
    pub(crate) name: String,
    pub(crate) start: u64,
    pub(crate) t: Tiled,
}

/// What `.metadata` says: the data files it names, their items, the tensors (each chunk's
/// [`Chunk::source`] an index into `items`) and the bytes items of megatron-core's common dict.
pub struct Metadata {
    /// Data file names, plain names inside the folder, each once.
    pub(crate) files: Vec<String>,
    pub(crate) items: Vec<Item>,
    /// In the order `.metadata` lists them, each at its `start` in a virtual storage space.
    pub(crate) tensors: Vec<Stored>,
    /// Items holding `common_state/*`.
    pub(crate) commons: Vec<usize>,
    /// The containers of the parsed pickle.
    pub(crate) arena: Arena,
}

impl Metadata {
    /// How many tensors it lists.
    pub fn tensor_count(&self) -> usize {
        self.tensors.len()
    }
}

/// Read a DCP folder's `.metadata` (`bytes`, from `meta`, which is only used in messages).
pub fn parse(bytes: &[u8], meta: &Path) -> Result<Metadata> {
    let parsed = pickle::parse(bytes, meta, 0)?;
    let bad = |msg: String| Error::format(meta, msg);
    if !is_class(&parsed.value, "metadata", "Metadata") {
        return Err(bad(format!(
            "is {}, expected a torch.distributed.checkpoint Metadata",
            parsed.value.describe()
        )));
    }
    let mut files = Files::default();
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
    Ok(Metadata {
        files: files.names,
        items: index.items,
        tensors,
        commons,
        arena: parsed.arena,
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
        let item = item(info, files).map_err(|m| what(&m))?;
        let n = index.items.len();
        index.items.push(item);
        index.at.insert((fqn, offset), n);
    }
    Ok(index)
}

/// One `_StorageInfo`: its data file (named in `files`) and byte range there.
fn item(info: &Value, files: &mut Files) -> std::result::Result<Item, String> {
    if !is_class(info, "filesystem", "_StorageInfo") {
        return Err(format!("is {}, expected a _StorageInfo", info.describe()));
    }
    match &info.get("transform_descriptors") {
        None | Some(Value::None) => {}
        Some(Value::List(l)) if l.borrow().is_empty() => {}
        Some(Value::Tuple(t)) if t.is_empty() => {}
        Some(v) => {
            return Err(format!(
                "has storage transforms ({}): compressed or transformed DCP items are not \
                 supported",
                v.describe()
            ))
        }
    }
    let path = info
        .get("relative_path")
        .and_then(|v| v.as_str().map(str::to_string))
        .ok_or("relative_path is not a string")?;
    let num = |f: &str| {
        info.get(f)
            .and_then(|v| v.as_int())
            .and_then(|n| u64::try_from(n).ok())
    };
    let (start, len) = num("offset")
        .zip(num("length"))
        .ok_or("offset or length is not a non-negative integer")?;
    let end = start.checked_add(len).ok_or("offset + length overflows")?;
    let file = files.add(&path)?;
    Ok(Item {
        file,
        range: start..end,
    })
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
fn tensor(name: &str, md: &Value, index: &Index, meta: &Path) -> Result<Tiled> {
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
    let t = Tiled {
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
#[derive(Default)]
struct Files {
    names: Vec<String>,
    at: HashMap<String, usize>,
}

impl Files {
    fn add(&mut self, name: &str) -> std::result::Result<usize, String> {
        if let Some(&i) = self.at.get(name) {
            return Ok(i);
        }
        let plain = !name.is_empty()
            && name != "."
            && name != ".."
            && !name.contains(['/', '\\', '\0'])
            && name.len() <= MAX_NAME_BYTES;
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
}

/// Whether `v` is an object of `torch.distributed.checkpoint.<module_tail>.<name>`.
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
    if items.len() > MAX_NDIM {
        return None;
    }
    items
        .iter()
        .map(|x| x.as_int().and_then(|n| u64::try_from(n).ok()))
        .collect()
}
