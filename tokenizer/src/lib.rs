//! CPM-LM's tokenizer, exact: Python jieba 0.42.1's segmentation (HMM on) with the ▂/▃
//! substitutions, then sentencepiece's unigram model.
//!
//! The original pipeline (CPM-Generate `data_utils/tokenization_gpt2.py`, facts in
//! `fixtures/tokenizer/README.md`):
//! - encode: `jieba.cut(text)` (HMM on); in every segment `" "` → `▂` (U+2582) and `"\n"` → `▃`
//!   (U+2583); the segments joined with `" "`; `sp.encode` of that string;
//! - decode: `sp.decode(ids)`, then every `" "` deleted, `▂` → space, `▃` → newline.
//!
//! The steps are the stages Hugging Face `tokenizers` composes (normalizer, pre-tokenizer,
//! model, decoder), one module each, chained in `pipeline` in the order the original runs them:
//!
//! ```text
//!          pre_tokenizer          normalizer           model                  decoder
//! text ──▶ jieba.cut, ▂/▃   ──▶  charsmap rules,  ──▶ unigram search  ──▶ ids ──▶ pieces' text,
//!          in segments,           space runs,          over the pieces,            spaces dropped,
//!          joined by " "          spaces as ▁          best path                   ▂ ▃ back
//! ```
//!
//! The pre-tokenizer comes first, where `tokenizers` puts the normalizer: the original cuts the
//! raw text with jieba and sentencepiece normalizes the joined segments, and swapping the two
//! changes ids (full-width `ＡＢ` is two jieba segments, `▁A▁B` once normalized; `AB` is one).
//! [`SpModel`] is sentencepiece alone (normalizer, model, decoder); `CpmTokenizer` adds the
//! pre-tokenizer. [`spm`] reads and validates the `.model` file that feeds the normalizer
//! (its `precompiled_charsmap`, `normalizer::charsmap`) and the model (the pieces); `hf` writes
//! the Hugging Face `tokenizer.json` for the sentencepiece part; `stream` is `cpm-tokenize`'s
//! line handling.
//!
//! Feature `jieba` (default): the pre-tokenizer and everything that uses it (`jieba`,
//! `CpmTokenizer`, `Limits`, `stream`, the `cpm-tokenize` binary), with jieba-rs and its
//! dictionary. Without it the crate reads `.model` files, runs sentencepiece alone and writes
//! `tokenizer.json`, which is all the checkpoint tools need.
#![deny(missing_docs)]

#[cfg(feature = "jieba")]
mod cpm;
mod decoder;
pub mod error;
mod hf;
mod model;
mod normalizer;
mod pipeline;
#[cfg(feature = "jieba")]
mod pre_tokenizer;
pub mod spm;
#[cfg(feature = "jieba")]
pub mod stream;

#[cfg(feature = "jieba")]
pub use cpm::{CpmTokenizer, Limits};
pub use error::{Error, Result};
#[cfg(feature = "jieba")]
pub use pre_tokenizer::jieba;

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

/// A sentencepiece `.model` file, read and validated.
pub struct SpModel {
    path: PathBuf,
    bytes: Vec<u8>,
    parsed: spm::Parsed,
    search: model::Search,
}

impl SpModel {
    /// Reads and validates a `.model` file (see [`spm`] for what is refused); a directory
    /// stands for its `spiece.model` (else `chinese_vocab.model`).
    pub fn open(path: &Path) -> Result<SpModel> {
        let path = spm::resolve(path)?;
        let (bytes, parsed) = spm::read(&path)?;
        let search = model::Search::new(&parsed);
        Ok(SpModel {
            path,
            bytes,
            parsed,
            search,
        })
    }
    /// Validates the bytes of a `.model` file; `name` stands for the file in errors.
    pub fn from_bytes(bytes: Vec<u8>, name: &Path) -> Result<SpModel> {
        let parsed = spm::parse(&bytes, name)?;
        let search = model::Search::new(&parsed);
        Ok(SpModel {
            path: name.to_path_buf(),
            bytes,
            parsed,
            search,
        })
    }
    /// The file this model was read from.
    pub fn path(&self) -> &Path {
        &self.path
    }
    /// The file's bytes, as read (for copying into a port).
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }
    /// How many pieces the model has.
    pub fn len(&self) -> usize {
        self.parsed.pieces.len()
    }
    /// True when the model has no pieces (never, once validated).
    pub fn is_empty(&self) -> bool {
        self.parsed.pieces.is_empty()
    }
    /// The id of a piece, if the model has it.
    pub fn piece_to_id(&self, piece: &str) -> Option<u32> {
        self.parsed.ids.get(piece).copied()
    }
    /// The piece of an id.
    pub fn id_to_piece(&self, id: u32) -> Option<&str> {
        self.parsed.pieces.get(id as usize).map(|p| p.text.as_str())
    }
    /// The type of an id's piece.
    pub fn piece_type(&self, id: u32) -> Option<PieceType> {
        self.parsed.pieces.get(id as usize).map(|p| p.kind)
    }
    /// The score of an id's piece.
    pub fn score(&self, id: u32) -> Option<f32> {
        self.parsed.pieces.get(id as usize).map(|p| p.score)
    }
    /// The normalizer's name (`nmt_nfkc` for CPM; informational: the rules are the charsmap).
    pub fn normalizer_name(&self) -> &str {
        &self.parsed.normalizer.name
    }
    /// The id of the UNKNOWN piece.
    pub fn unk_id(&self) -> u32 {
        self.parsed.unk_id
    }
    /// sentencepiece's `normalize(text)`.
    pub fn normalize(&self, text: &str) -> String {
        normalizer::normalize(&self.parsed, &self.search, text)
    }
    /// sentencepiece's `encode(text)` (ids), no jieba.
    pub fn encode(&self, text: &str) -> Vec<u32> {
        let mut ids = Vec::new();
        let mut pipe = self.pipe(usize::MAX, text.len());
        let mut emit = |id| ids.push(id);
        // Without a window limit the pipe cannot fail.
        let _ = pipe
            .push_str(text, &mut emit)
            .and_then(|()| pipe.finish(&mut emit));
        ids
    }
    fn pipe(&self, max_window: usize, hint: usize) -> pipeline::Pipe<'_> {
        pipeline::Pipe::new(&self.parsed, &self.search, max_window, hint)
    }
    /// sentencepiece's `decode(ids)`: CONTROL pieces decode to nothing, `<unk>` to the model's
    /// `unk_surface`, `▁` to a space (dropped at the very start).
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        decoder::decode(&self.parsed, ids)
    }
    /// The unigram part as a Hugging Face `tokenizer.json` (the model's own normalizer).
    pub fn to_tokenizer_json(&self) -> Result<String> {
        hf::tokenizer_json(self)
    }
}
