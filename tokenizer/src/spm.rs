//! Reading a sentencepiece `.model` file (a `ModelProto`) with prost derive structs, and the
//! checks that make every later step safe.
//!
//! Only the fields the encoder and decoder need are declared; prost skips the rest. What is
//! refused, and why:
//! - files over [`MAX_FILE_BYTES`], or with more than [`MAX_PIECES`] pieces (counted on the wire
//!   before decoding). Pieces are then decoded one at a time straight into the compact table (a
//!   `Vec<ProtoPiece>` would cost ~40 bytes per 5-byte piece before any check), so reading stays
//!   within 4x the file + 64 MiB (`tests/alloc_bound.rs`);
//! - a `trainer_spec.model_type` other than UNIGRAM (BPE, WORD, CHAR run other algorithms);
//! - `byte_fallback` models and BYTE pieces: CPM's model has none, and sentencepiece's byte
//!   fallback changes what unknown characters become; refused rather than half supported;
//! - `treat_whitespace_as_suffix`, a non-empty `denormalizer_spec` charsmap (decode would change);
//! - a normalizer name other than sentencepiece's built-in ones (the rules a model runs are its
//!   own `precompiled_charsmap`, never a built-in table: see `normalizer`);
//! - empty, duplicate or missing pieces, non-finite scores, unknown piece types, not exactly one
//!   UNKNOWN piece, a charsmap that does not parse and validate (`charsmap`).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// The type sentencepiece gives a piece.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PieceType {
    /// Found by the unigram search.
    Normal,
    /// `<unk>`.
    Unknown,
    /// Never matched in text (`<s>`, `<sep>`, ...).
    Control,
    /// Matched whole in text before the unigram search.
    UserDefined,
    /// Reserved, never produced.
    Unused,
    /// A byte-fallback piece `<0xNN>` (models with them are refused).
    Byte,
}

use crate::charsmap::Charsmap;
use crate::error::{Error, Result};

/// The largest `.model` file accepted (real ones are 0.2–5 MB).
pub const MAX_FILE_BYTES: u64 = 64 << 20;
/// The most pieces accepted (the largest sentencepiece vocabularies in use are ~256k).
pub const MAX_PIECES: usize = 1 << 19;

#[derive(Clone, PartialEq, prost::Message)]
struct ModelProto {
    // Field 1 (pieces) is left out: prost skips it here, `pieces` decodes each one.
    #[prost(message, optional, tag = "2")]
    trainer_spec: Option<TrainerSpec>,
    #[prost(message, optional, tag = "3")]
    normalizer_spec: Option<NormalizerSpec>,
    #[prost(message, optional, tag = "5")]
    denormalizer_spec: Option<NormalizerSpec>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct ProtoPiece {
    #[prost(string, optional, tag = "1")]
    piece: Option<String>,
    #[prost(float, optional, tag = "2")]
    score: Option<f32>,
    #[prost(int32, optional, tag = "3")]
    kind: Option<i32>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct TrainerSpec {
    #[prost(int32, optional, tag = "3")]
    model_type: Option<i32>,
    #[prost(bool, optional, tag = "24")]
    treat_whitespace_as_suffix: Option<bool>,
    #[prost(bool, optional, tag = "35")]
    byte_fallback: Option<bool>,
    #[prost(string, optional, tag = "44")]
    unk_surface: Option<String>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct NormalizerSpec {
    #[prost(string, optional, tag = "1")]
    name: Option<String>,
    #[prost(bytes = "vec", optional, tag = "2")]
    precompiled_charsmap: Option<Vec<u8>>,
    #[prost(bool, optional, tag = "3")]
    add_dummy_prefix: Option<bool>,
    #[prost(bool, optional, tag = "4")]
    remove_extra_whitespaces: Option<bool>,
    #[prost(bool, optional, tag = "5")]
    escape_whitespaces: Option<bool>,
}

/// Normalizer names sentencepiece builds in; the rules themselves come from the model's charsmap.
const KNOWN_NORMALIZERS: [&str; 5] = ["nmt_nfkc", "nfkc", "nmt_nfkc_cf", "nfkc_cf", "identity"];

/// One piece, validated.
pub(crate) struct Piece {
    pub(crate) text: String,
    pub(crate) score: f32,
    pub(crate) kind: PieceType,
}

/// The normalizer settings the encoder runs.
pub(crate) struct Normalizer {
    pub(crate) charsmap: Option<Charsmap>,
    pub(crate) name: String,
    pub(crate) add_dummy_prefix: bool,
    pub(crate) remove_extra_whitespaces: bool,
    pub(crate) escape_whitespaces: bool,
}

/// Everything read from a model file.
pub(crate) struct Parsed {
    pub(crate) pieces: Vec<Piece>,
    pub(crate) ids: HashMap<Box<str>, u32, ahash::RandomState>,
    pub(crate) unk_id: u32,
    pub(crate) unk_surface: String,
    pub(crate) normalizer: Normalizer,
}

/// Reads `path` (a regular file, at most [`MAX_FILE_BYTES`]: `cpm_files::read_capped`) and
/// parses it.
pub(crate) fn read(path: &Path) -> Result<(Vec<u8>, Parsed)> {
    let bytes = cpm_files::read_capped(path, MAX_FILE_BYTES).map_err(Error::from_file)?;
    let parsed = parse(&bytes, path)?;
    Ok((bytes, parsed))
}

fn invalid(path: &Path, reason: impl Into<String>) -> Error {
    Error::Invalid {
        path: path.into(),
        reason: reason.into(),
    }
}
fn unsupported(path: &Path, reason: impl Into<String>) -> Error {
    Error::Unsupported {
        path: path.into(),
        reason: reason.into(),
    }
}

/// Parses and validates the bytes of a `.model` file; `path` names it in errors.
pub(crate) fn parse(bytes: &[u8], path: &Path) -> Result<Parsed> {
    let count = count_pieces(bytes).map_err(|reason| Error::Proto {
        path: path.into(),
        reason,
    })?;
    if count > MAX_PIECES {
        return Err(invalid(
            path,
            format!("{count} pieces, more than the limit of {MAX_PIECES}"),
        ));
    }
    let proto = <ModelProto as prost::Message>::decode(bytes).map_err(|e| Error::Proto {
        path: path.into(),
        reason: e.to_string(),
    })?;
    let trainer = proto.trainer_spec.unwrap_or_default();
    check_trainer(&trainer, path)?;
    if let Some(d) = &proto.denormalizer_spec {
        if d.precompiled_charsmap
            .as_ref()
            .is_some_and(|c| !c.is_empty())
        {
            return Err(unsupported(
                path,
                "a denormalizer_spec with rules (decode would change)",
            ));
        }
    }
    let normalizer = normalizer(proto.normalizer_spec.unwrap_or_default(), path)?;
    let (pieces, ids, unk_id) = pieces(bytes, count, path)?;
    let unk_surface = trainer
        .unk_surface
        .unwrap_or_else(|| " \u{2047} ".to_string());
    Ok(Parsed {
        pieces,
        ids,
        unk_id,
        unk_surface,
        normalizer,
    })
}

fn check_trainer(t: &TrainerSpec, path: &Path) -> Result<()> {
    match t.model_type.unwrap_or(1) {
        1 => {}
        2 => {
            return Err(unsupported(
                path,
                "model_type BPE (only UNIGRAM is implemented)",
            ))
        }
        3 => {
            return Err(unsupported(
                path,
                "model_type WORD (only UNIGRAM is implemented)",
            ))
        }
        4 => {
            return Err(unsupported(
                path,
                "model_type CHAR (only UNIGRAM is implemented)",
            ))
        }
        n => return Err(invalid(path, format!("unknown model_type {n}"))),
    }
    if t.byte_fallback.unwrap_or(false) {
        return Err(unsupported(path, "byte_fallback models (CPM's has none)"));
    }
    if t.treat_whitespace_as_suffix.unwrap_or(false) {
        return Err(unsupported(path, "treat_whitespace_as_suffix"));
    }
    Ok(())
}

fn normalizer(spec: NormalizerSpec, path: &Path) -> Result<Normalizer> {
    let name = spec.name.unwrap_or_default();
    if !name.is_empty() && !KNOWN_NORMALIZERS.contains(&name.as_str()) {
        return Err(unsupported(
            path,
            format!(
                "normalizer {name:?} (known: {})",
                KNOWN_NORMALIZERS.join(", ")
            ),
        ));
    }
    let charsmap = match spec.precompiled_charsmap {
        Some(blob) if !blob.is_empty() => {
            Some(Charsmap::parse(&blob).map_err(|r| invalid(path, r))?)
        }
        _ => None,
    };
    Ok(Normalizer {
        charsmap,
        name,
        add_dummy_prefix: spec.add_dummy_prefix.unwrap_or(true),
        remove_extra_whitespaces: spec.remove_extra_whitespaces.unwrap_or(true),
        escape_whitespaces: spec.escape_whitespaces.unwrap_or(true),
    })
}

fn piece_type(kind: Option<i32>) -> Option<PieceType> {
    Some(match kind.unwrap_or(1) {
        1 => PieceType::Normal,
        2 => PieceType::Unknown,
        3 => PieceType::Control,
        4 => PieceType::UserDefined,
        5 => PieceType::Unused,
        6 => PieceType::Byte,
        _ => return None,
    })
}

type Pieces = (Vec<Piece>, HashMap<Box<str>, u32, ahash::RandomState>, u32);

fn pieces(bytes: &[u8], count: usize, path: &Path) -> Result<Pieces> {
    let mut ids = HashMap::with_capacity_and_hasher(count, ahash::RandomState::new());
    let mut out = Vec::with_capacity(count);
    let mut unk = None;
    for (i, payload) in piece_fields(bytes).into_iter().enumerate() {
        let id = i as u32; // i < MAX_PIECES
        let p = <ProtoPiece as prost::Message>::decode(payload).map_err(|e| Error::Proto {
            path: path.into(),
            reason: format!("piece {id}: {e}"),
        })?;
        let piece = check_piece(id, p, path)?;
        if piece.kind == PieceType::Unknown {
            if unk.is_some() {
                return Err(invalid(
                    path,
                    format!("a second UNKNOWN piece {id} {:?}", piece.text),
                ));
            }
            unk = Some(id);
        }
        if let Some(prev) = ids.insert(piece.text.as_str().into(), id) {
            return Err(invalid(
                path,
                format!(
                    "piece {:?} is defined twice (ids {prev} and {id})",
                    piece.text
                ),
            ));
        }
        out.push(piece);
    }
    let unk =
        unk.ok_or_else(|| invalid(path, format!("no UNKNOWN piece among {} pieces", out.len())))?;
    Ok((out, ids, unk))
}

/// One piece's own rules: non-empty, finite score, a known type, no BYTE pieces.
fn check_piece(id: u32, p: ProtoPiece, path: &Path) -> Result<Piece> {
    let text = p.piece.unwrap_or_default();
    if text.is_empty() {
        return Err(invalid(path, format!("piece {id} is empty")));
    }
    let score = p.score.unwrap_or(0.0);
    if !score.is_finite() {
        return Err(invalid(
            path,
            format!("piece {id} {text:?} has score {score}"),
        ));
    }
    let kind = piece_type(p.kind).ok_or_else(|| {
        invalid(
            path,
            format!("piece {id} {text:?} has unknown type {:?}", p.kind),
        )
    })?;
    if kind == PieceType::Byte {
        return Err(unsupported(
            path,
            format!("BYTE piece {id} {text:?} (byte fallback)"),
        ));
    }
    Ok(Piece { text, score, kind })
}

/// Counts the top-level `pieces` fields (tag 1, length-delimited) by walking the wire format.
fn count_pieces(b: &[u8]) -> std::result::Result<usize, String> {
    let mut n = 0usize;
    walk(b, |key, _| n += usize::from(key == (1 << 3 | 2)))?;
    Ok(n)
}

/// The payloads of the top-level `pieces` fields, in order (the wire was walked once already).
fn piece_fields(b: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    let _ = walk(b, |key, payload| {
        if key == (1 << 3 | 2) {
            out.push(payload);
        }
    });
    out
}

/// Calls `f(key, payload)` for each top-level field (payload: the bytes of a length-delimited
/// field, empty for the others).
fn walk<'a>(mut b: &'a [u8], mut f: impl FnMut(u64, &'a [u8])) -> std::result::Result<(), String> {
    while !b.is_empty() {
        let key = varint(&mut b)?;
        let skip = match key & 7 {
            0 => {
                varint(&mut b)?;
                0
            }
            1 => 8,
            2 => usize::try_from(varint(&mut b)?).map_err(|_| "length overflows".to_string())?,
            5 => 4,
            w => return Err(format!("wire type {w} at top level")),
        };
        let payload = b
            .get(..skip)
            .ok_or_else(|| format!("a field declares {skip} bytes, {} remain", b.len()))?;
        f(key, if key & 7 == 2 { payload } else { &[] });
        b = &b[skip..];
    }
    Ok(())
}

fn varint(b: &mut &[u8]) -> std::result::Result<u64, String> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let (&byte, rest) = b.split_first().ok_or("truncated varint")?;
        *b = rest;
        v |= u64::from(byte & 0x7F) << shift;
        if byte & 0x80 == 0 {
            return Ok(v);
        }
    }
    Err("varint longer than 10 bytes".into())
}

/// Picks the model file for `path`: the file itself, or `spiece.model` / `chinese_vocab.model`
/// inside a directory. A name that is there but is no regular file (a FIFO, a dangling link) is
/// picked, so that reading it says why, rather than taken as absent.
pub(crate) fn resolve(path: &Path) -> Result<PathBuf> {
    if !path.is_dir() {
        return Ok(path.to_path_buf());
    }
    ["spiece.model", "chinese_vocab.model"]
        .iter()
        .map(|n| path.join(n))
        .find(|p| cpm_files::exists(p).unwrap_or(true))
        .ok_or_else(|| Error::NoModelInDir(path.to_path_buf()))
}
