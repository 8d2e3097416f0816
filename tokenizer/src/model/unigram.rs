//! sentencepiece's encoder for UNIGRAM models, written out so that piece types behave exactly as
//! in sentencepiece. The `tokenizers` crate's `Unigram` is used only for the Hugging Face
//! `tokenizer.json` ([`crate::hf`]), not here, because it differs from sentencepiece where the
//! piece types matter: it matches every piece in text, CONTROL and UNKNOWN included (`<sep>`
//! would become id 4), scores USER_DEFINED pieces with their stored score instead of
//! sentencepiece's bonus, and takes its minimum (hence the `<unk>` score) over all pieces; and
//! its Precompiled normalizer works per grapheme cluster instead of sentencepiece's longest
//! match, and indexes the charsmap without bounds checks. Normalization is in [`crate::normalizer`].
//!
//! Search (sentencepiece 0.2.3 `Model::EncodeOptimized`): at each character, every NORMAL or
//! USER_DEFINED piece starting there is a candidate edge, with the piece's score (a
//! USER_DEFINED piece scores `0.1 * (bytes - 1)`, computed in `f64` and returned as `f32`);
//! when no piece covers exactly the one character, an `<unk>` edge of one character scores
//! `min_score - 10` (`min_score`: the lowest NORMAL score). The best path keeps the first
//! candidate on ties (shorter pieces come first). CONTROL, UNKNOWN and UNUSED pieces are never
//! matched from text. Adjacent unknown characters come out as one `<unk>` (recorded:
//! `sp.encode("😀😃")` is `▁ <unk>`, ids `8 0`).
//!
//! Arithmetic, as in 0.2.3's source (read in the sdist, `src/unigram_model.cc`) and checked on
//! its PyPI build: node scores are `f32`; a candidate is the piece's `f32` score plus the
//! score where it starts, added and compared in `f32`. When the score where the search stands
//! passes ±100,000 (`kScoreResetThreshold`), that score is subtracted from every node between
//! there and the furthest edge end so far, and the search goes on from 0; without this reset
//! long lines get other ids (`▁` + `回事` for `▁回事`, `V ID` for `VI D`). Established against
//! sentencepiece on the lines of `fixtures/tokenizer/longlines.jsonl` (texts rebuilt from the
//! corpus by the rule in `fixtures/make_tokenizer_longlines.py`): the C++ reading of older
//! versions ("add and compare in `double`, store `float`") first differs at id 11,170 of the
//! 10^5-character prose line, a score kept in `f64` throughout at the same place, `f32` without
//! the reset at id 144,463 of the 10^6-character line; `f32` with the reset gives
//! sentencepiece's ids on every corpus line and every recorded line up to 10^7 characters
//! (`tests/longlines.rs`).
//!
//! Bounded memory: a position that no edge crosses (every edge from before it ends at or
//! before it) is one every path passes through. There the best path so far is final: it is
//! emitted and the table before it dropped, the running score carried on unchanged, so the
//! result is the same as one search over the whole text. With `split_by_whitespace` models
//! every `▁` is such a point, since no piece has `▁` after its first character; the rule
//! itself needs no such property and holds for any model. Nodes cost 8 bytes per byte of the
//! text since the last such point.

use super::prefix::Matcher;
use crate::spm::Parsed;
use crate::spm::PieceType;

/// What the search needs beyond the parsed model, computed once.
pub(crate) struct Search {
    /// The NORMAL and USER_DEFINED pieces, for prefix walks.
    pub(crate) index: Matcher,
    min_score: f32,
    pub(crate) max_piece_bytes: usize,
    pub(crate) max_user_bytes: usize,
}

impl Search {
    pub(crate) fn new(m: &Parsed) -> Search {
        let mut min_score = f32::MAX;
        let (mut max_piece_bytes, mut max_user_bytes) = (0, 0);
        for p in &m.pieces {
            match p.kind {
                PieceType::Normal => {
                    min_score = min_score.min(p.score);
                    max_piece_bytes = max_piece_bytes.max(p.text.len());
                }
                PieceType::UserDefined => {
                    max_user_bytes = max_user_bytes.max(p.text.len());
                    max_piece_bytes = max_piece_bytes.max(p.text.len());
                }
                _ => {}
            }
        }
        let index = Matcher::new(&m.pieces);
        Search {
            index,
            min_score,
            max_piece_bytes,
            max_user_bytes,
        }
    }
}

const NONE: u32 = u32::MAX;
/// sentencepiece 0.2.3's `kScoreResetThreshold`.
const RESET_AT: f32 = 100_000.0;

/// The search over normalized text that arrives in pieces.
pub(crate) struct Lattice<'m> {
    m: &'m Parsed,
    s: &'m Search,
    /// The text since the last point every path passes through.
    text: String,
    /// Best score and last piece of the best path to each byte position of `text`.
    score: Vec<f32>,
    back: Vec<u32>,
    /// The next position to expand, the furthest edge end so far, the latest point every
    /// path passes through.
    at: usize,
    reach: usize,
    cut: usize,
    last_unk: bool,
    /// The path being emitted, reused.
    path: Vec<u32>,
    /// The longest `text` may grow (a stretch with no point every path passes through).
    max_window: usize,
}

impl<'m> Lattice<'m> {
    pub(crate) fn new(m: &'m Parsed, s: &'m Search, max_window: usize) -> Self {
        Lattice {
            m,
            s,
            text: String::new(),
            score: vec![0.0],
            back: vec![NONE],
            at: 0,
            reach: 0,
            cut: 0,
            last_unk: false,
            path: Vec::new(),
            max_window,
        }
    }

    /// Adds `more` text (`last`: nothing follows) and emits every id that is final.
    pub(crate) fn feed(
        &mut self,
        more: &str,
        last: bool,
        emit: &mut dyn FnMut(u32),
    ) -> Result<(), String> {
        self.text.push_str(more);
        self.score.resize(self.text.len() + 1, f32::NEG_INFINITY);
        self.back.resize(self.text.len() + 1, NONE);
        while self.at < self.text.len() {
            if !last && self.text.len() - self.at < self.s.max_piece_bytes {
                break; // a piece from here could end in text not yet seen
            }
            if self.reach <= self.at {
                self.cut = self.at;
            }
            self.expand();
        }
        if last {
            self.cut = self.text.len();
        }
        self.flush(emit);
        if self.text.len() > self.max_window {
            return Err(format!(
                "{} bytes of normalized text with no point every segmentation passes through, more than the limit of {}",
                self.text.len(),
                self.max_window
            ));
        }
        Ok(())
    }

    /// Relaxes every edge from `self.at`.
    fn expand(&mut self) {
        let (m, s, at) = (self.m, self.s, self.at);
        let mut here = self.score[at];
        if !(-RESET_AT..=RESET_AT).contains(&here) {
            // sentencepiece 0.2.3 moves every node from here to the furthest edge end by the
            // score here (exact: nearby floats), then goes on from 0.
            let reach = self.reach.max(at);
            self.score[at..=reach].iter_mut().for_each(|v| *v -= here);
            here = 0.0;
        }
        let rest = &self.text[at..];
        let mblen = self.text[at..].chars().next().map_or(1, char::len_utf8);
        let mut single = false;
        let (score, back, reach) = (&mut self.score, &mut self.back, &mut self.reach);
        s.index.each_prefix(&m.pieces, &m.ids, rest, |len, id| {
            let edge = match m.pieces[id as usize].kind {
                PieceType::Normal => m.pieces[id as usize].score,
                // USER_DEFINED: sentencepiece 0.2.3's `GetUserDefinedScore(length)`, the double
                // `0.1 * (length - 1)` returned as float (length in bytes).
                _ => (0.1 * (len as f64 - 1.0)) as f32,
            };
            relax(score, back, at + len, edge + here, id);
            *reach = (*reach).max(at + len);
            single |= len == mblen;
        });
        if !single {
            let unk = s.min_score - 10.0;
            relax(score, back, at + mblen, unk + here, m.unk_id);
        }
        self.reach = self.reach.max(at + mblen);
        self.at += mblen;
    }

    /// Emits the best path up to `self.cut` and drops the table before it.
    fn flush(&mut self, emit: &mut dyn FnMut(u32)) {
        let cut = std::mem::take(&mut self.cut);
        if cut == 0 {
            return;
        }
        let mut ids = std::mem::take(&mut self.path);
        let mut end = cut;
        while end > 0 {
            let id = self.back[end];
            ids.push(id);
            end -= match self.m.pieces.get(id as usize) {
                Some(p) if id != self.m.unk_id => p.text.len(),
                _ => self.text[..end]
                    .chars()
                    .next_back()
                    .map_or(1, char::len_utf8),
            };
        }
        for id in ids.drain(..).rev() {
            let unk = id == self.m.unk_id;
            // sentencepiece merges adjacent unknown characters into one `<unk>`.
            if !(unk && self.last_unk) {
                emit(id);
            }
            self.last_unk = unk;
        }
        self.path = ids;
        self.text.drain(..cut);
        self.score.drain(..cut);
        self.back.drain(..cut);
        self.at -= cut;
        self.reach -= cut;
    }
}

fn relax(score: &mut [f32], back: &mut [u32], node: usize, candidate: f32, id: u32) {
    if candidate > score[node] {
        score[node] = candidate;
        back[node] = id;
    }
}
