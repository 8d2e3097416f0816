//! [`CpmTokenizer`], the whole CPM pipeline over one sentencepiece model (feature `jieba`):
//! encode is pre-tokenizer → normalizer → model ([`crate::pipeline`]), decode the decoder.

use std::path::Path;

use crate::error::Result;
use crate::pre_tokenizer::{jieba, Input};
use crate::sentencepiece::SpModel;
use crate::{decoder, pipeline, pre_tokenizer};

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
        pre_tokenizer::pre_tokenize(self.jieba, text, hmm, |input| match input {
            Input::Text(t) => s.push_str(t),
            Input::Char(c) => s.push(c),
        });
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
        // The pre-tokenizer cuts a jieba block whole: refused before any id is emitted.
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
        pipeline::encode(
            self.jieba,
            (&self.model.parsed, &self.model.search),
            text,
            hmm,
            limits.max_window_bytes,
            emit,
        )
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
        decoder::cpm_piece(&self.model.parsed, id, out)
    }
}
