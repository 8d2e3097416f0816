//! A Hugging Face GPT-2 directory: `config.json` plus `model.safetensors` or a sharded
//! `model.safetensors.index.json`, memory-mapped.
//!
//! Everything about the files is validated in [`Model::open`], before any arithmetic: the
//! safetensors headers (by the `safetensors` crate, which checks that offsets tile the buffer),
//! the presence, dtype and shape of every tensor the forward pass will read. Weights stay in the
//! map until [`Model::tensor_f32`] widens one of them, so the forward pass holds one layer in f32
//! at a time whatever the model's size.

use std::borrow::Cow;
use std::collections::{BTreeSet, HashMap, HashSet};
use std::path::{Path, PathBuf};

use memmap2::Mmap;
use safetensors::{Dtype, SafeTensors};
use serde_json::Value;

pub use crate::config::{Activation, Config};
use crate::error::{checked_product, Error, Result};
use crate::files;

/// One safetensors file, mapped.
struct Shard {
    path: PathBuf,
    map: Mmap,
}

/// Where one tensor's bytes are.
#[derive(Debug, Clone)]
struct Entry {
    shard: usize,
    dtype: Dtype,
    shape: Vec<usize>,
    /// Byte range within the shard's map (header included in the offset).
    start: usize,
    end: usize,
}

/// A GPT-2 model directory, memory-mapped and validated against its config.
pub struct Model {
    /// The directory.
    pub dir: PathBuf,
    /// The parsed `config.json`.
    pub config: Config,
    shards: Vec<Shard>,
    tensors: HashMap<String, Entry>,
    /// The stored name of each canonical tensor the forward pass reads.
    names: HashMap<String, String>,
}

/// The tensors one transformer block reads, with canonical names relative to `h.{i}.`,
/// and their shapes in terms of (n_embd, n_inner).
fn layer_tensors(c: &Config) -> Vec<(&'static str, Vec<usize>)> {
    let (h, inner) = (c.n_embd, c.n_inner);
    vec![
        ("ln_1.weight", vec![h]),
        ("ln_1.bias", vec![h]),
        ("attn.c_attn.weight", vec![h, 3 * h]),
        ("attn.c_attn.bias", vec![3 * h]),
        ("attn.c_proj.weight", vec![h, h]),
        ("attn.c_proj.bias", vec![h]),
        ("ln_2.weight", vec![h]),
        ("ln_2.bias", vec![h]),
        ("mlp.c_fc.weight", vec![h, inner]),
        ("mlp.c_fc.bias", vec![inner]),
        ("mlp.c_proj.weight", vec![inner, h]),
        ("mlp.c_proj.bias", vec![h]),
    ]
}

/// The most shard files an index may name. Public checkpoints use at most a few thousand; each
/// shard is one memory map, and Linux allows 65,530 per process by default.
pub const MAX_SHARDS: usize = 16_384;

/// The safetensors files of a model directory and, when sharded, the index and its map.
type Layout = (Vec<PathBuf>, Option<(PathBuf, Vec<(String, String)>)>);

impl Model {
    /// Opens and validates a model directory.
    pub fn open(dir: &Path) -> Result<Model> {
        let config_path = dir.join("config.json");
        let text = files::read_capped(&config_path, files::MAX_CONFIG_BYTES)?;
        let config = Config::from_json(&text, &config_path)?;
        drop(text);
        // 3 * n_embd etc. must not overflow anywhere later.
        checked_product(
            &[config.n_embd, 3, config.n_inner.max(1)],
            &format!("layer sizes from {}", config_path.display()),
        )?;
        let (files, weight_map) = model_files(dir)?;
        let mut shards = Vec::with_capacity(files.len());
        let mut tensors = HashMap::new();
        for (i, path) in files.into_iter().enumerate() {
            shards.push(map_shard(path, i, &mut tensors)?);
        }
        if let Some((index, map)) = weight_map {
            check_index(&index, &map, &tensors, &shards)?;
        }
        let mut model = Model {
            dir: dir.to_path_buf(),
            config,
            shards,
            tensors,
            names: HashMap::new(),
        };
        model.resolve_names()?;
        Ok(model)
    }

    /// Finds every tensor the forward pass reads, under either naming, and checks dtype and shape.
    fn resolve_names(&mut self) -> Result<()> {
        let c = &self.config;
        let (v, p, h) = (c.vocab_size, c.n_positions, c.n_embd);
        let mut wanted: Vec<(String, Vec<usize>)> = vec![
            ("wte.weight".into(), vec![v, h]),
            ("wpe.weight".into(), vec![p, h]),
            ("ln_f.weight".into(), vec![h]),
            ("ln_f.bias".into(), vec![h]),
        ];
        // n_layer comes from a file: refuse a count the weights cannot hold before building a
        // list of that length (a config claiming 10^12 layers would exhaust memory).
        let per_layer = layer_tensors(c).len();
        if c.n_layer > self.tensors.len() / per_layer {
            return Err(Error::Config {
                path: self.dir.join("config.json"),
                detail: format!(
                    "n_layer is {}, but the safetensors files hold only {} tensors ({per_layer} per layer)",
                    c.n_layer,
                    self.tensors.len()
                ),
            });
        }
        for i in 0..c.n_layer {
            for (name, shape) in layer_tensors(c) {
                wanted.push((format!("h.{i}.{name}"), shape));
            }
        }
        let head_present = self.tensors.contains_key("lm_head.weight");
        if head_present {
            wanted.push(("lm_head.weight".into(), vec![v, h]));
        } else if !c.tie_word_embeddings {
            return Err(Error::MissingTensor {
                dir: self.dir.clone(),
                name: "lm_head.weight".into(),
                tried: "lm_head.weight (tie_word_embeddings is false, so wte cannot stand in)"
                    .into(),
            });
        }
        for (canonical, shape) in wanted {
            let candidates = if canonical == "lm_head.weight" {
                vec![canonical.clone()]
            } else {
                vec![format!("transformer.{canonical}"), canonical.clone()]
            };
            let stored = candidates
                .iter()
                .find(|n| self.tensors.contains_key(n.as_str()))
                .ok_or_else(|| Error::MissingTensor {
                    dir: self.dir.clone(),
                    name: canonical.clone(),
                    tried: candidates.join(", "),
                })?
                .clone();
            let entry = &self.tensors[&stored];
            let path = self.shards[entry.shard].path.clone();
            if !matches!(entry.dtype, Dtype::F16 | Dtype::BF16 | Dtype::F32) {
                return Err(Error::TensorDtype {
                    path,
                    name: stored,
                    dtype: format!("{:?}", entry.dtype),
                });
            }
            if entry.shape != shape {
                return Err(Error::TensorShape {
                    path,
                    name: stored,
                    expected: shape,
                    found: entry.shape.clone(),
                });
            }
            self.names.insert(canonical, stored);
        }
        Ok(())
    }

    /// Whether the model has its own `lm_head.weight` (otherwise the head is `wte`).
    pub fn has_lm_head(&self) -> bool {
        self.names.contains_key("lm_head.weight")
    }

    /// The stored dtypes of the tensors the forward pass reads (for the report).
    pub fn dtypes(&self) -> BTreeSet<String> {
        self.names
            .values()
            .filter_map(|n| self.tensors.get(n))
            .map(|e| format!("{:?}", e.dtype))
            .collect()
    }

    /// One validated tensor as f32, by canonical name (`wte.weight`, `h.0.ln_1.bias`,
    /// `lm_head.weight`), row-major; borrowed from the map when it is aligned F32.
    pub fn tensor_f32(&self, canonical: &str) -> Result<Cow<'_, [f32]>> {
        let (entry, _, bytes) = self.locate(canonical)?;
        if let Some(direct) = borrow_f32(entry.dtype, bytes) {
            return Ok(Cow::Borrowed(direct));
        }
        let mut buf = Vec::new();
        self.tensor_f32_in(canonical, &mut buf, 1)?;
        Ok(Cow::Owned(buf))
    }

    /// The entry, its shard and its bytes, for a canonical name validated at open.
    fn locate(&self, canonical: &str) -> Result<(&Entry, &Shard, &[u8])> {
        let stored = self
            .names
            .get(canonical)
            .ok_or_else(|| Error::MissingTensor {
                dir: self.dir.clone(),
                name: canonical.to_string(),
                tried: "(not among the tensors validated at open)".into(),
            })?;
        // `names` is built from `tensors` and entries from `shards`, so both lookups succeed.
        let entry = self
            .tensors
            .get(stored)
            .ok_or_else(|| Error::Internal(format!("validated tensor `{stored}` has no entry")))?;
        let shard = self.shards.get(entry.shard).ok_or_else(|| {
            Error::Internal(format!("tensor `{stored}` refers to a shard never mapped"))
        })?;
        let bytes = shard
            .map
            .get(entry.start..entry.end)
            .ok_or_else(|| Error::Safetensors {
                path: shard.path.clone(),
                detail: format!("tensor `{stored}` lies outside the file"),
            })?;
        Ok((entry, shard, bytes))
    }

    /// One validated tensor as f32, reusing `buf` so that streaming layer after layer touches
    /// no fresh memory. F32 data aligned in the map is borrowed without copying; F16 and BF16
    /// are widened (exactly) into `buf`, split over `threads` threads.
    pub fn tensor_f32_in<'a>(
        &'a self,
        canonical: &str,
        buf: &'a mut Vec<f32>,
        threads: usize,
    ) -> Result<&'a [f32]> {
        let (entry, shard, bytes) = self.locate(canonical)?;
        if let Some(direct) = borrow_f32(entry.dtype, bytes) {
            return Ok(direct);
        }
        let width = match entry.dtype {
            Dtype::F32 => 4,
            Dtype::F16 | Dtype::BF16 => 2,
            other => {
                return Err(Error::TensorDtype {
                    path: shard.path.clone(),
                    name: canonical.to_string(),
                    dtype: format!("{other:?}"),
                })
            }
        };
        let n = bytes.len() / width;
        if buf.len() != n {
            buf.clear();
            buf.resize(n, 0.0);
        }
        let dtype = entry.dtype;
        let chunk = n.div_ceil(threads.max(1)).max(1 << 16);
        let work = |src: &[u8], dst: &mut [f32]| widen(dtype, src, dst);
        if n <= chunk {
            work(bytes, buf);
        } else {
            std::thread::scope(|s| {
                for (src, dst) in bytes.chunks(chunk * width).zip(buf.chunks_mut(chunk)) {
                    s.spawn(move || work(src, dst));
                }
            });
        }
        // The widened copy is all we need: let the file's pages leave our resident set, so a
        // model read layer by layer never holds more than a layer of it.
        release_pages(shard, entry);
        Ok(buf)
    }

    /// Lets the mapped pages of tensor `canonical` leave the resident set once a pass is done
    /// with them (a model read in place layer by layer then never holds more than a layer).
    pub fn release(&self, canonical: &str) -> Result<()> {
        let (entry, shard, _) = self.locate(canonical)?;
        release_pages(shard, entry);
        Ok(())
    }
}

/// How a tensor is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stored {
    /// 32-bit float.
    F32,
    /// IEEE half.
    F16,
    /// bfloat16.
    Bf16,
}

/// A validated tensor's bytes in the map, as stored: little-endian, row-major, and possibly
/// unaligned (safetensors aligns nothing; readers must not assume even 2-byte alignment).
#[derive(Debug, Clone, Copy)]
pub struct Raw<'a> {
    /// The element type.
    pub dtype: Stored,
    /// The elements' bytes.
    pub bytes: &'a [u8],
    /// Elements per row (the last dimension).
    pub cols: usize,
}

impl Model {
    /// One validated tensor's stored bytes, by canonical name, for kernels that read 16-bit
    /// weights directly.
    pub fn tensor_raw(&self, canonical: &str) -> Result<Raw<'_>> {
        let (entry, shard, bytes) = self.locate(canonical)?;
        let dtype = match entry.dtype {
            Dtype::F32 => Stored::F32,
            Dtype::F16 => Stored::F16,
            Dtype::BF16 => Stored::Bf16,
            other => {
                return Err(Error::TensorDtype {
                    path: shard.path.clone(),
                    name: canonical.to_string(),
                    dtype: format!("{other:?}"),
                })
            }
        };
        let cols = entry.shape.last().copied().unwrap_or(1);
        Ok(Raw { dtype, bytes, cols })
    }

    /// Row `row` of a validated 2-D tensor, widened exactly into `dst` (`cols` long): an
    /// embedding lookup without widening the whole table.
    pub fn row_f32(&self, canonical: &str, row: usize, dst: &mut [f32]) -> Result<()> {
        let raw = self.tensor_raw(canonical)?;
        let (dtype, width) = match raw.dtype {
            Stored::F32 => (Dtype::F32, 4),
            Stored::F16 => (Dtype::F16, 2),
            Stored::Bf16 => (Dtype::BF16, 2),
        };
        let start = row.saturating_mul(raw.cols).saturating_mul(width);
        let src = raw
            .bytes
            .get(start..start.saturating_add(raw.cols * width))
            .filter(|_| dst.len() == raw.cols)
            .ok_or_else(|| {
                Error::Internal(format!("row {row} of `{canonical}` read out of bounds"))
            })?;
        widen(dtype, src, dst);
        Ok(())
    }
}

/// Drops the map's pages of `entry` from the resident set (they stay in the page cache).
fn release_pages(shard: &Shard, entry: &Entry) {
    #[cfg(unix)]
    // SAFETY: the map is read-only and never written, so MADV_DONTNEED only makes the next
    // access (if any) fault the same bytes back in from the file.
    unsafe {
        let _ = shard.map.unchecked_advise_range(
            memmap2::UncheckedAdvice::DontNeed,
            entry.start,
            entry.end - entry.start,
        );
    }
}

/// F32 bytes viewed in place, when they are aligned and the target is little-endian (the
/// format's byte order).
fn borrow_f32(dtype: Dtype, bytes: &[u8]) -> Option<&[f32]> {
    if dtype != Dtype::F32 || !cfg!(target_endian = "little") {
        return None;
    }
    // SAFETY: every bit pattern is a valid f32 and align_to only yields an aligned middle.
    let (pre, mid, post) = unsafe { bytes.align_to::<f32>() };
    (pre.is_empty() && post.is_empty()).then_some(mid)
}

/// Widens little-endian `dtype` values in `src` into `dst` (same element count).
fn widen(dtype: Dtype, src: &[u8], dst: &mut [f32]) {
    use half::slice::{HalfBitsSliceExt, HalfFloatSliceExt};
    // SAFETY: any bit pattern is a valid u16; align_to only yields an aligned middle.
    let (pre, bits, post) = unsafe { src.align_to::<u16>() };
    let aligned = pre.is_empty() && post.is_empty() && cfg!(target_endian = "little");
    match dtype {
        // half's slice conversion uses F16C/NEON when the CPU has it: 8 values per instruction.
        Dtype::F16 if aligned => bits
            .reinterpret_cast::<half::f16>()
            .convert_to_f32_slice(dst),
        Dtype::BF16 if aligned => bits
            .reinterpret_cast::<half::bf16>()
            .convert_to_f32_slice(dst),
        Dtype::F16 => widen_16(src, dst, |b| half::f16::from_bits(b).to_f32()),
        Dtype::BF16 => widen_16(src, dst, |b| half::bf16::from_bits(b).to_f32()),
        _ => {
            for (d, b) in dst.iter_mut().zip(src.chunks_exact(4)) {
                *d = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
            }
        }
    }
}

/// Widens little-endian 16-bit floats one at a time; `f` maps the raw bits to f32.
fn widen_16(src: &[u8], dst: &mut [f32], f: impl Fn(u16) -> f32) {
    for (d, b) in dst.iter_mut().zip(src.chunks_exact(2)) {
        *d = f(u16::from_le_bytes([b[0], b[1]]));
    }
}

/// `model.safetensors` when it exists (whatever it is: a FIFO there is an error, not a reason
/// to look for an index), else the shards of `model.safetensors.index.json`.
fn model_files(dir: &Path) -> Result<Layout> {
    let single = dir.join("model.safetensors");
    let index = dir.join("model.safetensors.index.json");
    if files::exists(&single)? {
        return Ok((vec![single], None));
    }
    if files::exists(&index)? {
        let (files, map) = read_index(&index)?;
        return Ok((files, Some((index, map))));
    }
    Err(Error::io(
        &single,
        std::io::Error::new(
            std::io::ErrorKind::NotFound,
            "neither model.safetensors nor model.safetensors.index.json exists",
        ),
    ))
}

/// Maps shard number `i`, validates its header and records its tensors in `tensors`.
fn map_shard(path: PathBuf, i: usize, tensors: &mut HashMap<String, Entry>) -> Result<Shard> {
    let (file, _) = files::open_regular(&path)?;
    // SAFETY: the map is read-only; if another process truncates the file while we run,
    // reads may fault. That is the usual contract of safetensors loaders and acceptable
    // for a verification tool reading files it was pointed at.
    let map = unsafe { Mmap::map(&file) }.map_err(|e| Error::io(&path, e))?;
    // A file read cold through a MADV_HUGEPAGE map enters the page cache in 2 MiB folios, which
    // this and later maps take a page-table entry per 2 MiB for (not per 4 KiB): mapping and
    // unmapping 4 KiB pages cost 0.08 s per GB read, a tenth of a verification. Advice only:
    // a kernel or file system without large folios ignores it.
    #[cfg(target_os = "linux")]
    let _ = map.advise(memmap2::Advice::HugePage);
    let (header_len, meta) = SafeTensors::read_metadata(&map).map_err(|e| Error::Safetensors {
        path: path.clone(),
        detail: e.to_string(),
    })?;
    // read_metadata proved 8 + header_len + data_len == file length, so these add up.
    let data_start = header_len
        .checked_add(8)
        .ok_or_else(|| Error::Overflow(format!("{} header", path.display())))?;
    for (name, info) in meta.tensors() {
        let (s, e) = info.data_offsets;
        let entry = Entry {
            shard: i,
            dtype: info.dtype,
            shape: info.shape.clone(),
            start: data_start + s,
            end: data_start + e,
        };
        if tensors.insert(name.clone(), entry).is_some() {
            return Err(Error::Safetensors {
                path,
                detail: format!("tensor `{name}` also appears in an earlier shard"),
            });
        }
    }
    Ok(Shard { path, map })
}

/// Checks that every tensor the index lists is in the shard the index names.
fn check_index(
    index: &Path,
    map: &[(String, String)],
    tensors: &HashMap<String, Entry>,
    shards: &[Shard],
) -> Result<()> {
    let bad = |detail: String| Error::ShardIndex {
        path: index.to_path_buf(),
        detail,
    };
    for (name, file) in map {
        let Some(entry) = tensors.get(name) else {
            return Err(bad(format!(
                "lists `{name}` in {file}, which does not hold it"
            )));
        };
        let holder = &shards[entry.shard].path;
        if holder.file_name().and_then(|f| f.to_str()) != Some(file.as_str()) {
            return Err(bad(format!(
                "lists `{name}` in {file}, but it is in {}",
                holder.display()
            )));
        }
    }
    Ok(())
}

/// `model.safetensors.index.json`; other keys (`metadata`) are ignored.
#[derive(serde::Deserialize)]
struct IndexFile {
    weight_map: serde_json::Map<String, Value>,
}

/// Reads `model.safetensors.index.json`: the shard files (in first-seen order) and the
/// tensor-to-file map.
#[allow(clippy::type_complexity)]
fn read_index(index: &Path) -> Result<(Vec<PathBuf>, Vec<(String, String)>)> {
    let text = files::read_capped(index, files::MAX_INDEX_BYTES)?;
    let parsed: IndexFile = serde_json::from_slice(&text).map_err(|e| Error::json(index, e))?;
    drop(text);
    let bad = |detail: String| Error::ShardIndex {
        path: index.to_path_buf(),
        detail,
    };
    let dir = index.parent().unwrap_or(Path::new("."));
    let mut files: Vec<PathBuf> = Vec::new();
    let mut seen: HashSet<&str> = HashSet::new();
    // At most one pair per entry of a file already read whole and capped.
    let mut pairs = Vec::with_capacity(parsed.weight_map.len());
    for (name, file) in &parsed.weight_map {
        let file = file
            .as_str()
            .ok_or_else(|| bad(format!("`{name}` maps to {file}, expected a file name")))?;
        // Shards live beside the index; refuse paths that would leave the directory.
        if file.is_empty() || file.contains('/') || file.contains('\\') || file == ".." {
            return Err(bad(format!(
                "`{name}` maps to \"{file}\", which is not a plain file name"
            )));
        }
        if seen.insert(file) {
            if seen.len() > MAX_SHARDS {
                return Err(Error::limit(
                    index,
                    format!("names more than {MAX_SHARDS} shard files; cpm-verify maps at most {MAX_SHARDS}"),
                ));
            }
            files.push(dir.join(file));
        }
        pairs.push((name.clone(), file.to_string()));
    }
    Ok((files, pairs))
}
