//! [`SpModel`]: one sentencepiece `.model` with every step over it — the normalizer, the unigram
//! model, the decoder, and its `tokenizer.json` — as sentencepiece's own `encode`/`decode` (no jieba).

use std::path::{Path, PathBuf};

use crate::error::Result;
use crate::spm::PieceType;
use crate::{decoder, hf, model, normalizer, pipeline, spm};

/// A sentencepiece `.model` file, read and validated.
pub struct SpModel {
    path: PathBuf,
    bytes: Vec<u8>,
    pub(crate) parsed: spm::Parsed,
    pub(crate) search: model::Search,
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
    pub(crate) fn pipe(&self, max_window: usize, hint: usize) -> pipeline::Pipe<'_> {
        pipeline::Pipe::new(&self.parsed, &self.search, max_window, hint)
    }
    /// sentencepiece's `decode(ids)`: CONTROL pieces decode to nothing, `<unk>` to the model's
    /// `unk_surface`, `▁` to a space (dropped at the very start).
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        decoder::decode(&self.parsed, ids)
    }
    /// The unigram part as a Hugging Face `tokenizer.json` (the model's own normalizer).
    pub fn to_tokenizer_json(&self) -> Result<String> {
        hf::tokenizer_json(&self.parsed, &self.bytes)
    }
}
