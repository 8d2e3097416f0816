//! safetensors files through the torch reader's API: the header becomes a dict of tensors, each
//! tensor its own storage (its byte range of the file), so `span`, `read` and the page calls work
//! unchanged.
//!
//! The header is parsed twice, independently: by our own bounded parser, which keeps the names
//! in header order and refuses more than 64 dimensions before allocating them, and by the
//! `safetensors` crate, whose validation (offsets tiling the data exactly, sizes matching shapes
//! and dtypes, overflow) must pass too.

use std::borrow::Cow;
use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::ops::Range;
use std::path::Path;
use std::rc::Rc;

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};

use crate::error::{Error, Result};
use crate::names::shorten;
use crate::tensor::{Dtype, TensorRef};
use crate::value::{Arena, Value};

/// The longest header read. Real headers take ~100 bytes per tensor (GPT-2 XL: ~60 KB); 16 MiB
/// is ~160,000 tensors, and keeps the parsed header within the heap bound (SECURITY.md) even
/// when every byte of it describes a tensor.
pub const MAX_HEADER_BYTES: u64 = 16 << 20;
/// The most tensors a header may describe. GPT-2 XL has 580, a 70B model's whole state dict
/// fewer than a thousand; the cap bounds what the `safetensors` crate allocates per entry (~800
/// bytes for an empty one, ~3 KB with 64 dimensions: 52 MB for 16,384 of them), which the
/// header's size alone does not.
pub const MAX_TENSORS: usize = 16_384;
/// As many dimensions as the pickle reader accepts.
const MAX_NDIM: usize = 64;
/// Longest message text taken from a parser's error (it may quote the input).
const MAX_DETAIL: usize = 300;

/// An 8-byte little-endian header length, then the JSON header, which starts with `{`. Neither
/// torch format has `{` at byte 8 (a zip's compression method is there, the legacy magic
/// number's bytes in a pickle), so this never claims one of them.
pub fn looks_like(bytes: &[u8]) -> bool {
    bytes.get(8) == Some(&b'{')
}

type Parsed = (Value, Arena, HashMap<String, Range<u64>>);

/// The object tree (a dict of name -> tensor) and the storages (name -> absolute byte range).
pub(super) fn read(bytes: &[u8], path: &Path) -> Result<Parsed> {
    let n = header_len(bytes, path)?;
    let json = bytes
        .get(8..8 + n)
        .ok_or_else(|| truncated(path, n, bytes.len()))?;
    // Counted first without storing anything, so the crate's parse (which keeps every entry)
    // and ours only ever see a bounded number of tensors of bounded rank.
    serde_json::from_slice::<Precheck>(json).map_err(|e| bad_header(path, e.to_string()))?;
    // The crate's own validation, on the whole file: it checks that the offsets tile the data
    // and end exactly at the end of the file, which our parse does not repeat. Its result is
    // dropped before ours is built, so the two never take memory together.
    safetensors::SafeTensors::read_metadata(bytes).map_err(|e| bad_header(path, e.to_string()))?;
    let header: Header =
        serde_json::from_slice(json).map_err(|e| bad_header(path, e.to_string()))?;
    let data_start = 8 + n as u64;
    let mut storages = HashMap::with_capacity(header.tensors.len());
    let mut items = Vec::with_capacity(header.tensors.len() + 1);
    if let Some(meta) = header.metadata {
        let pairs = meta
            .into_iter()
            .map(|(k, v)| (Value::Str(k.into()), Value::Str(v.into())))
            .collect();
        items.push((Value::Str("__metadata__".into()), dict(pairs)));
    }
    for (name, info) in header.tensors {
        let (t, range) = tensor(&name, info, data_start, path)?;
        if storages.insert(name.to_string(), range).is_some() {
            return Err(Error::tensor(
                path,
                shorten(&name),
                "appears twice in the safetensors header",
            ));
        }
        items.push((Value::Str(t.storage_key.clone()), Value::Tensor(Rc::new(t))));
    }
    let root = dict(items);
    let mut arena = Arena::default();
    arena.register(&root);
    Ok((root, arena, storages))
}

fn dict(items: Vec<(Value, Value)>) -> Value {
    Value::Dict(Rc::new(RefCell::new(items)))
}

/// The header length, checked against the cap and the file before anything is parsed.
fn header_len(bytes: &[u8], path: &Path) -> Result<usize> {
    let mut le = [0u8; 8];
    le.copy_from_slice(
        bytes
            .get(..8)
            .ok_or_else(|| truncated(path, 0, bytes.len()))?,
    );
    let n = u64::from_le_bytes(le);
    if n > MAX_HEADER_BYTES {
        return Err(Error::format(
            path,
            format!(
                "safetensors header claims {n} bytes; cpm-convert reads headers of at most \
                 {MAX_HEADER_BYTES} bytes"
            ),
        ));
    }
    let n = n as usize; // <= 16 MiB
    if n > bytes.len() - 8 {
        return Err(truncated(path, n, bytes.len()));
    }
    Ok(n)
}

fn truncated(path: &Path, n: usize, len: usize) -> Error {
    Error::format(
        path,
        format!("safetensors header claims {n} bytes but the file has only {len} (truncated?)"),
    )
}

fn bad_header(path: &Path, detail: String) -> Error {
    let detail: String = detail.chars().take(MAX_DETAIL).collect();
    Error::format(path, format!("invalid safetensors header: {detail}"))
}

/// One header entry as a tensor on its own storage, and that storage's byte range of the file.
fn tensor(name: &str, info: Info, data_start: u64, path: &Path) -> Result<(TensorRef, Range<u64>)> {
    let dtype = dtype(&info.dtype).ok_or_else(|| {
        Error::tensor(
            path,
            shorten(name),
            format!(
                "has dtype {}, which cpm-convert does not read (F64, F32, F16, BF16, I64, I32, \
                 I16, I8, U8, BOOL)",
                shorten(&info.dtype)
            ),
        )
    })?;
    let (s, e) = info.data_offsets;
    let range = data_start
        .checked_add(s)
        .zip(data_start.checked_add(e))
        .filter(|(s, e)| s <= e)
        .ok_or_else(|| Error::tensor(path, shorten(name), "data offsets overflow"))?;
    let shape = info.shape.0;
    // Row-major strides. Saturating: only a tensor with a zero dimension can overflow here (the
    // crate proved the element count fits), and one with no elements is never indexed.
    let mut stride = vec![0u64; shape.len()];
    let mut acc = 1u64;
    for (st, &d) in stride.iter_mut().zip(&shape).rev() {
        *st = acc;
        acc = acc.saturating_mul(d);
    }
    let t = TensorRef {
        storage_key: name.into(),
        dtype,
        offset: 0,
        shape,
        stride,
    };
    Ok((t, range.0..range.1))
}

fn dtype(name: &str) -> Option<Dtype> {
    Some(match name {
        "F64" => Dtype::F64,
        "F32" => Dtype::F32,
        "F16" => Dtype::F16,
        "BF16" => Dtype::BF16,
        "I64" => Dtype::I64,
        "I32" => Dtype::I32,
        "I16" => Dtype::I16,
        "I8" => Dtype::I8,
        "U8" => Dtype::U8,
        "BOOL" => Dtype::Bool,
        _ => return None,
    })
}

// ---------------------------------------------------------------------------------------------
// A first pass over the header that stores nothing: the number of tensors and their ranks.

/// Proof that the header is a JSON object of at most [`MAX_TENSORS`] entries whose shapes have
/// at most [`MAX_NDIM`] dimensions.
struct Precheck;

impl<'de> Deserialize<'de> for Precheck {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        d.deserialize_map(PrecheckVisitor)
    }
}

struct PrecheckVisitor;

impl<'de> Visitor<'de> for PrecheckVisitor {
    type Value = Precheck;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON object of tensor name -> {dtype, shape, data_offsets}")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> std::result::Result<Precheck, A::Error> {
        let mut tensors = 0usize;
        while let Some(Name(key)) = map.next_key()? {
            if key == "__metadata__" {
                map.next_value::<de::IgnoredAny>()?;
                continue;
            }
            tensors += 1;
            if tensors > MAX_TENSORS {
                return Err(de::Error::custom(format!(
                    "more than {MAX_TENSORS} tensors (cpm-convert reads at most {MAX_TENSORS} \
                     per file)"
                )));
            }
            map.next_value::<PreInfo>()?;
        }
        Ok(Precheck)
    }
}

/// An entry's shape, counted; every other field skipped.
#[derive(serde::Deserialize)]
struct PreInfo {
    #[serde(default)]
    #[allow(dead_code)]
    shape: Rank,
}

/// A shape's number of dimensions, counted without storing them.
#[derive(Default)]
struct Rank;

impl<'de> Deserialize<'de> for Rank {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        d.deserialize_seq(RankVisitor)
    }
}

struct RankVisitor;

impl<'de> Visitor<'de> for RankVisitor {
    type Value = Rank;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a list of at most 64 dimensions")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> std::result::Result<Rank, A::Error> {
        let mut n = 0usize;
        while seq.next_element::<de::IgnoredAny>()?.is_some() {
            n += 1;
            if n > MAX_NDIM {
                return Err(de::Error::custom(format!(
                    "a shape has more than {MAX_NDIM} dimensions"
                )));
            }
        }
        Ok(Rank)
    }
}

// ---------------------------------------------------------------------------------------------
// The header, parsed in order, borrowing names from the file where JSON allows.

struct Header<'a> {
    tensors: Vec<(Cow<'a, str>, Info<'a>)>,
    metadata: Option<BTreeMap<String, String>>,
}

#[derive(serde::Deserialize)]
struct Info<'a> {
    #[serde(borrow)]
    dtype: Cow<'a, str>,
    shape: Shape,
    data_offsets: (u64, u64),
}

/// A shape of at most [`MAX_NDIM`] dimensions, refused before a longer one is stored.
struct Shape(Vec<u64>);

/// A JSON string, borrowed from the input unless it holds escapes.
#[derive(serde::Deserialize)]
struct Name<'a>(#[serde(borrow)] Cow<'a, str>);

impl<'de> Deserialize<'de> for Header<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        d.deserialize_map(HeaderVisitor)
    }
}

struct HeaderVisitor;

impl<'de> Visitor<'de> for HeaderVisitor {
    type Value = Header<'de>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON object of tensor name -> {dtype, shape, data_offsets}")
    }

    fn visit_map<A: MapAccess<'de>>(
        self,
        mut map: A,
    ) -> std::result::Result<Self::Value, A::Error> {
        let mut tensors = Vec::new();
        let mut metadata = None;
        while let Some(Name(key)) = map.next_key()? {
            if key == "__metadata__" {
                metadata = Some(map.next_value()?);
            } else {
                tensors.push((key, map.next_value()?));
            }
        }
        Ok(Header { tensors, metadata })
    }
}

impl<'de> Deserialize<'de> for Shape {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        d.deserialize_seq(ShapeVisitor)
    }
}

struct ShapeVisitor;

impl<'de> Visitor<'de> for ShapeVisitor {
    type Value = Shape;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a list of at most 64 dimensions")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> std::result::Result<Shape, A::Error> {
        let mut dims = Vec::new();
        while let Some(d) = seq.next_element::<u64>()? {
            if dims.len() == MAX_NDIM {
                return Err(de::Error::custom(format!(
                    "a shape has more than {MAX_NDIM} dimensions"
                )));
            }
            dims.push(d);
        }
        Ok(Shape(dims))
    }
}
