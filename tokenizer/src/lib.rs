//! CPM-LM's tokenizer, exact: Python jieba 0.42.1's segmentation (HMM on) with the ▂/▃
//! substitutions, then sentencepiece's unigram model. SKELETON: the API the generator and the
//! converter code against; the implementation lands with the tokenizer work.
#![deny(missing_docs)]

pub mod error;

pub use error::{Error, Result};

use std::path::Path;

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
    /// A byte-fallback piece `<0xNN>`.
    Byte,
}

/// A sentencepiece `.model` file, read and validated.
pub struct SpModel {
    _private: (),
}

impl SpModel {
    /// Reads and validates a `.model` file.
    pub fn open(path: &Path) -> Result<SpModel> {
        Err(Error::NotYet(path.display().to_string()))
    }
    /// The file's bytes, as read (for copying into a port).
    pub fn bytes(&self) -> &[u8] {
        &[]
    }
    /// How many pieces the model has.
    pub fn len(&self) -> usize {
        0
    }
    /// True when the model has no pieces (never, once validated).
    pub fn is_empty(&self) -> bool {
        true
    }
    /// The id of a piece, if the model has it.
    pub fn piece_to_id(&self, _piece: &str) -> Option<u32> {
        None
    }
    /// The piece of an id.
    pub fn id_to_piece(&self, _id: u32) -> Option<&str> {
        None
    }
    /// The type of an id's piece.
    pub fn piece_type(&self, _id: u32) -> Option<PieceType> {
        None
    }
    /// The unigram part as a Hugging Face `tokenizer.json` (the model's own normalizer).
    pub fn to_tokenizer_json(&self) -> Result<String> {
        Err(Error::NotYet("tokenizer.json".into()))
    }
}

/// The CPM pipeline over one sentencepiece model.
pub struct CpmTokenizer {
    model: SpModel,
}

impl CpmTokenizer {
    /// Builds the pipeline over a model.
    pub fn new(model: SpModel) -> Result<Self> {
        Ok(CpmTokenizer { model })
    }
    /// Opens a `.model` file, or a directory holding `spiece.model` (or `chinese_vocab.model`).
    pub fn open(path: &Path) -> Result<Self> {
        Self::new(SpModel::open(path)?)
    }
    /// The model underneath.
    pub fn model(&self) -> &SpModel {
        &self.model
    }
    /// The original ids for `text` (no special tokens added).
    pub fn encode(&self, _text: &str) -> Result<Vec<u32>> {
        Err(Error::NotYet("encode".into()))
    }
    /// The pieces for `text`.
    pub fn encode_pieces(&self, _text: &str) -> Result<Vec<String>> {
        Err(Error::NotYet("encode".into()))
    }
    /// The original decode: sentencepiece decode, spaces removed, ▂ → space, ▃ → newline.
    /// An id outside the vocabulary is an error.
    pub fn decode(&self, _ids: &[u32]) -> Result<String> {
        Err(Error::NotYet("decode".into()))
    }
}
