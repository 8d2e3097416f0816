//! CPM-LM's tokenizer, exact: Python jieba 0.42.1's segmentation (HMM on) with the ▂/▃
//! substitutions, then sentencepiece's unigram model.
//!
//! The original pipeline (CPM-Generate `data_utils/tokenization_gpt2.py`, facts in
//! `fixtures/tokenizer/README.md`):
//! - encode: `jieba.cut(text)` (HMM on); in every segment `" "` → `▂` (U+2582) and `"\n"` → `▃`
//!   (U+2583); the segments joined with `" "`; `sp.encode` of that string;
//! - decode: `sp.decode(ids)`, then every `" "` deleted, `▂` → space, `▃` → newline.
//!
//! Modules: [`spm`] reads and validates the `.model` file, `charsmap` its normalization table,
//! `normalize` runs sentencepiece's normalizer, `prefix` finds the pieces a text starts with,
//! `unigram` runs sentencepiece's search, `pipeline` chains the two over text in pieces,
//! [`jieba`] Python jieba's cut, and `hf` writes the Hugging Face `tokenizer.json` for the
//! unigram part.
#![deny(missing_docs)]

mod charsmap;
pub mod error;
mod hf;
pub mod jieba;
mod normalize;
mod pipeline;
mod prefix;
pub mod spm;
pub mod stream;
mod unigram;

pub use error::{Error, Result};

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
    search: unigram::Search,
}

impl SpModel {
    /// Reads and validates a `.model` file (see [`spm`] for what is refused); a directory
    /// stands for its `spiece.model` (else `chinese_vocab.model`).
    pub fn open(path: &Path) -> Result<SpModel> {
        let path = spm::resolve(path)?;
        let (bytes, parsed) = spm::read(&path)?;
        let search = unigram::Search::new(&parsed);
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
        let search = unigram::Search::new(&parsed);
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
        normalize::normalize(&self.parsed, &self.search, text)
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
        let mut out = String::new();
        let mut at_start = true;
        for &id in ids {
            let p = self
                .parsed
                .pieces
                .get(id as usize)
                .ok_or(Error::IdOutOfRange {
                    id: id.into(),
                    size: self.len(),
                })?;
            let text = match p.kind {
                PieceType::Control => continue,
                PieceType::Unknown => self.parsed.unk_surface.clone(),
                _ => {
                    let t = if at_start {
                        p.text.strip_prefix('\u{2581}').unwrap_or(&p.text)
                    } else {
                        &p.text
                    };
                    t.replace('\u{2581}', " ")
                }
            };
            at_start &= text.is_empty();
            out.push_str(&text);
        }
        Ok(out)
    }
    /// The unigram part as a Hugging Face `tokenizer.json` (the model's own normalizer).
    pub fn to_tokenizer_json(&self) -> Result<String> {
        hf::tokenizer_json(self)
    }
}

/// Bounds on what one text may hold at once in [`CpmTokenizer::encode_each`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// The longest run jieba cuts as one block (its tables cost ~30 bytes per byte).
    pub max_block_bytes: usize,
    /// The longest stretch of normalized text with no point every segmentation passes through
    /// (the search's table costs 8 bytes per byte of it).
    pub max_window_bytes: usize,
}

impl Limits {
    /// No bounds: memory grows with the text.
    pub const NONE: Limits = Limits {
        max_block_bytes: usize::MAX,
        max_window_bytes: usize::MAX,
    };
}

/// The CPM pipeline over one sentencepiece model.
pub struct CpmTokenizer {
    model: SpModel,
    jieba: &'static jieba::Segmenter,
}

impl CpmTokenizer {
    /// Builds the pipeline over a model (loads jieba's dictionary once per process).
    pub fn new(model: SpModel) -> Result<Self> {
        Ok(CpmTokenizer {
            model,
            jieba: jieba::Segmenter::shared(),
        })
    }
    /// Opens a `.model` file, or a directory holding `spiece.model` (or `chinese_vocab.model`).
    pub fn open(path: &Path) -> Result<Self> {
        Self::new(SpModel::open(path)?)
    }
    /// The model underneath.
    pub fn model(&self) -> &SpModel {
        &self.model
    }
    /// Python jieba's segments of `text` (`hmm`: jieba's HMM flag; CPM used `true`).
    pub fn segments<'a>(&self, text: &'a str, hmm: bool) -> Vec<&'a str> {
        self.jieba.cut(text, hmm)
    }
    /// The string the original hands to sentencepiece: segments with ▂/▃, joined by spaces.
    pub fn sp_input(&self, text: &str, hmm: bool) -> String {
        let mut s = String::with_capacity(text.len() * 2);
        for (i, seg) in self.segments(text, hmm).into_iter().enumerate() {
            if i > 0 {
                s.push(' ');
            }
            s.extend(seg.chars().map(|c| match c {
                ' ' => '\u{2582}',
                '\n' => '\u{2583}',
                c => c,
            }));
        }
        s
    }
    /// The original ids for `text` (no special tokens added).
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        Ok(self.encode_with(text, true))
    }
    /// The ids with jieba's HMM on (`true`, the original) or off.
    pub fn encode_with(&self, text: &str, hmm: bool) -> Vec<u32> {
        let mut ids = Vec::new();
        // Unlimited: cannot fail.
        let _ = self.encode_each(text, hmm, &Limits::NONE, &mut |id| ids.push(id));
        ids
    }
    /// The ids, handed to `emit` as they become final, with what is held at once bounded by
    /// `limits` (beyond the text itself); the error says which limit the text passes, before
    /// any id is emitted for the jieba block limit.
    pub fn encode_each(
        &self,
        text: &str,
        hmm: bool,
        limits: &Limits,
        emit: &mut dyn FnMut(u32),
    ) -> std::result::Result<(), String> {
        let block = match text.len() > limits.max_block_bytes {
            true => jieba::longest_block(text),
            false => 0,
        };
        if block > limits.max_block_bytes {
            return Err(format!(
                "a run of {block} bytes of letters, digits and Han characters with no punctuation or space, more than the limit of {} (jieba cuts such a run whole)",
                limits.max_block_bytes
            ));
        }
        // jieba's joining spaces and ▂/▃ make sentencepiece's input up to ~2x the text.
        let mut pipe = self.model.pipe(limits.max_window_bytes, text.len() * 2);
        let mut first = true;
        let mut failed = Ok(());
        self.jieba.cut_each(text, hmm, &mut |seg| {
            if failed.is_ok() {
                failed = self.push_segment(&mut pipe, seg, std::mem::take(&mut first), emit);
            }
        });
        failed?;
        pipe.finish(emit)
    }
    /// One segment into sentencepiece's input: a joining space, then ▂ for space, ▃ for newline.
    fn push_segment(
        &self,
        pipe: &mut pipeline::Pipe<'_>,
        seg: &str,
        first: bool,
        emit: &mut dyn FnMut(u32),
    ) -> std::result::Result<(), String> {
        if !first {
            pipe.push(' ', emit)?;
        }
        if !seg.contains([' ', '\n']) {
            return pipe.push_str(seg, emit);
        }
        for c in seg.chars() {
            pipe.push(
                match c {
                    ' ' => '\u{2582}',
                    '\n' => '\u{2583}',
                    c => c,
                },
                emit,
            )?;
        }
        Ok(())
    }
    /// The pieces for `text` (`<unk>` for unknown characters, as `sp.id_to_piece` gives).
    pub fn encode_pieces(&self, text: &str) -> Result<Vec<String>> {
        let ids = self.encode_with(text, true);
        Ok(ids
            .into_iter()
            .filter_map(|id| self.model.id_to_piece(id).map(str::to_owned))
            .collect())
    }
    /// The original decode: sentencepiece decode, spaces removed, ▂ → space, ▃ → newline.
    /// An id outside the vocabulary is an error.
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        let mut out = String::new();
        for &id in ids {
            self.decode_one(id, &mut out)?;
        }
        Ok(out)
    }
    /// Appends one id's share of [`CpmTokenizer::decode`] to `out`. The original's steps
    /// (sentencepiece decode, then every space deleted) make each id's share independent of
    /// its neighbours: a piece's text without spaces and `▁`, `▂` → space, `▃` → newline;
    /// `<unk>` the model's `unk_surface` likewise; CONTROL pieces nothing.
    pub fn decode_one(&self, id: u32, out: &mut String) -> Result<()> {
        let p = self
            .model
            .parsed
            .pieces
            .get(id as usize)
            .ok_or(Error::IdOutOfRange {
                id: id.into(),
                size: self.model.len(),
            })?;
        let text = match p.kind {
            PieceType::Control => return Ok(()),
            PieceType::Unknown => &self.model.parsed.unk_surface,
            _ => &p.text,
        };
        out.extend(text.chars().filter_map(|c| match c {
            ' ' | '\u{2581}' => None,
            '\u{2582}' => Some(' '),
            '\u{2583}' => Some('\n'),
            c => Some(c),
        }));
        Ok(())
    }
}
