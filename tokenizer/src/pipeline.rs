//! The steps chained, in the order the original runs them:
//!
//! ```text
//! encode:  text ─▶ pre_tokenizer ─▶ normalizer ─▶ model ─▶ ids   (SpModel::encode: no pre_tokenizer)
//! decode:  ids ─▶ decoder ─▶ text                                (crate::decoder)
//! ```
//!
//! Text goes through normalization and search in pieces of [`CHUNK`] bytes, so that what is held
//! at once is a chunk, the search's table since its last cut point, and the ids not yet handed
//! on; the result is the same as one pass over the whole text.

use crate::model::{Lattice, Search};
use crate::normalizer::Normalizer;
use crate::spm::Parsed;

/// How much sentencepiece input is gathered before it is normalized and searched.
const CHUNK: usize = 64 << 10;

/// CPM's encode: the pre-tokenizer's output (sentencepiece's input) through the normalizer and
/// the model ([`Pipe`]); ids go to `emit` as they become final.
#[cfg(feature = "jieba")]
pub(crate) fn encode(
    segmenter: &crate::pre_tokenizer::jieba::Segmenter,
    model: (&Parsed, &Search),
    text: &str,
    hmm: bool,
    max_window: usize,
    emit: &mut dyn FnMut(u32),
) -> Result<(), String> {
    use crate::pre_tokenizer::Input;
    // jieba's joining spaces and ▂/▃ make sentencepiece's input up to ~2x the text.
    let mut pipe = Pipe::new(model.0, model.1, max_window, text.len() * 2);
    let mut failed = Ok(());
    crate::pre_tokenizer::pre_tokenize(segmenter, text, hmm, |input| {
        if failed.is_ok() {
            failed = match input {
                Input::Text(s) => pipe.push_str(s, emit),
                Input::Char(c) => pipe.push(c, emit),
            };
        }
    });
    failed?;
    pipe.finish(emit)
}

/// The normalizer and the model over sentencepiece's input, which arrives in pieces.
pub(crate) struct Pipe<'m> {
    norm: Normalizer<'m>,
    lattice: Lattice<'m>,
    /// sentencepiece's input, not yet normalized.
    input: String,
    /// Normalized text not yet searched.
    normed: String,
}

impl<'m> Pipe<'m> {
    /// A pipe for about `hint` bytes of input (buffers sized once, up to a chunk).
    pub(crate) fn new(m: &'m Parsed, s: &'m Search, max_window: usize, hint: usize) -> Self {
        let hint = hint.min(CHUNK) + 16;
        Pipe {
            norm: Normalizer::new(m, s),
            lattice: Lattice::new(m, s, max_window),
            input: String::with_capacity(hint),
            normed: String::with_capacity(hint * 2),
        }
    }

    /// Appends one character of sentencepiece's input.
    #[cfg(feature = "jieba")]
    pub(crate) fn push(&mut self, c: char, emit: &mut dyn FnMut(u32)) -> Result<(), String> {
        self.input.push(c);
        if self.input.len() >= CHUNK {
            self.pump(false, emit)?;
        }
        Ok(())
    }

    /// Appends a string of sentencepiece's input.
    pub(crate) fn push_str(&mut self, s: &str, emit: &mut dyn FnMut(u32)) -> Result<(), String> {
        let mut rest = s;
        while !rest.is_empty() {
            let mut n = CHUNK.saturating_sub(self.input.len()).clamp(1, rest.len());
            while !rest.is_char_boundary(n) {
                n += 1;
            }
            self.input.push_str(&rest[..n]);
            rest = &rest[n..];
            if self.input.len() >= CHUNK {
                self.pump(false, emit)?;
            }
        }
        Ok(())
    }

    /// The input is complete: emits the rest.
    pub(crate) fn finish(mut self, emit: &mut dyn FnMut(u32)) -> Result<(), String> {
        self.pump(true, emit)
    }

    /// Normalizes what the input holds, then runs the model over what is final of it.
    fn pump(&mut self, last: bool, emit: &mut dyn FnMut(u32)) -> Result<(), String> {
        // normalizer
        let used = self.norm.feed(&self.input, last, &mut self.normed);
        self.input.drain(..used);
        // model, over the normalized text no later input can change
        let ready = self.norm.ready(&self.normed);
        self.lattice.feed(&self.normed[..ready], last, emit)?;
        self.normed.drain(..ready);
        Ok(())
    }
}
