//! Python jieba 0.42.1's `cut(text, cut_all=False, HMM=...)`, reproduced exactly on top of
//! jieba-rs 0.11.0's dictionary and HMM tables (which are Python jieba's).
//!
//! Python's rules (`jieba/__init__.py`, `jieba/finalseg/__init__.py`):
//! 1. `re_han_default = [\u4E00-\u9FD5a-zA-Z0-9+#&\._%\-]+` cuts the text into blocks. Outside
//!    blocks every character is its own segment, except `"\r\n"`, kept as one.
//! 2. In a block, the max-probability route through the dictionary DAG (ties: the longer word).
//! 3. HMM off: consecutive single-character route steps that are ASCII letters or digits are
//!    joined; every other step is a segment.
//! 4. HMM on: consecutive single-character steps (any characters) are collected; one character is
//!    a segment; a collection that is a dictionary word is emitted character by character; any
//!    other goes to `finalseg.cut`: runs of U+4E00–U+9FD5 through the BMES Viterbi, the rest
//!    split by `([a-zA-Z0-9]+(?:\.\d+)?%?)`, every match and every gap between matches one
//!    segment.
//!
//! jieba-rs alone differs (fixtures/tokenizer/README.md, Fact 3): its Han class also covers
//! U+9FD6–U+9FFF and the CJK extension/compatibility blocks, and its HMM path joins
//! `.`/`_`/`-`-connected alphanumeric runs and emits whole gaps. So this module cuts the blocks
//! itself (rule 1) and uses jieba-rs for two things only, both checked against the corpus:
//! - the route (rule 2): `Jieba::cut(block, false)` on a block of Python's class is one jieba-rs
//!   block, and its HMM-off output is the route with single ASCII alphanumeric steps joined. A
//!   joined token is never a dictionary word (a multi-character word inside a run of single
//!   steps would have given the route a better score), so a multi-character ASCII alphanumeric
//!   token that is not a word splits back into single steps;
//! - the Viterbi: `Jieba::empty()` has no dictionary, so on a run of U+4E00–U+9FD5 its route is
//!   all single characters and its HMM cuts the whole run with the built-in tables.

use std::sync::OnceLock;

use jieba_rs::Jieba;

/// Python's `re_han_default` class.
fn is_block_char(c: char) -> bool {
    matches!(c, '\u{4E00}'..='\u{9FD5}' | 'a'..='z' | 'A'..='Z' | '0'..='9' | '+' | '#' | '&' | '.' | '_' | '%' | '-')
}

/// The length in bytes of the longest block of `text` (rule 1): jieba cuts a block whole, with
/// tables per character, so a bounded caller checks this first.
pub fn longest_block(text: &str) -> usize {
    text.split(|c| !is_block_char(c))
        .map(str::len)
        .max()
        .unwrap_or(0)
}

/// `finalseg`'s `re_han`.
fn is_hmm_han(c: char) -> bool {
    matches!(c, '\u{4E00}'..='\u{9FD5}')
}

/// The dictionary instance and the dictionary-less one (for the Viterbi), built once per process.
pub struct Segmenter {
    dict: Jieba,
    empty: Jieba,
}

static SHARED: OnceLock<Segmenter> = OnceLock::new();

impl Segmenter {
    /// The process-wide segmenter (loading the dictionary takes a few hundred milliseconds).
    pub fn shared() -> &'static Segmenter {
        SHARED.get_or_init(|| Segmenter {
            dict: Jieba::new(),
            empty: Jieba::empty(),
        })
    }

    /// Python jieba's `cut(text, cut_all=False, HMM=hmm)`, as slices of `text`.
    pub fn cut<'a>(&self, text: &'a str, hmm: bool) -> Vec<&'a str> {
        let mut out = Vec::new();
        self.cut_each(text, hmm, &mut |s| out.push(s));
        out
    }

    /// The same segments, handed to `f` one at a time; what is kept meanwhile is one block's.
    pub fn cut_each<'a>(&self, text: &'a str, hmm: bool, f: &mut dyn FnMut(&'a str)) {
        let mut block_out = Vec::new();
        let mut rest = text;
        while let Some(c) = rest.chars().next() {
            if is_block_char(c) {
                let end = rest.find(|c| !is_block_char(c)).unwrap_or(rest.len());
                self.cut_block(&rest[..end], hmm, &mut block_out);
                block_out.drain(..).for_each(&mut *f);
                rest = &rest[end..];
            } else {
                let n = if rest.starts_with("\r\n") {
                    2
                } else {
                    c.len_utf8()
                };
                f(&rest[..n]);
                rest = &rest[n..];
            }
        }
    }

    /// The route steps of a block (rule 2).
    fn route<'a>(&self, block: &'a str) -> Vec<&'a str> {
        let mut steps = Vec::new();
        for tok in self.dict.cut(block, false) {
            let w = tok.word;
            let joined = w.len() > 1
                && w.bytes().all(|b| b.is_ascii_alphanumeric())
                && !self.dict.has_word(w);
            if joined {
                // ASCII: every byte is a character.
                steps.extend((0..w.len()).filter_map(|i| w.get(i..i + 1)));
            } else {
                steps.push(w);
            }
        }
        steps
    }

    fn cut_block<'a>(&self, block: &'a str, hmm: bool, out: &mut Vec<&'a str>) {
        let steps = self.route(block);
        let mut run_start: Option<usize> = None; // byte offset in `block` of the pending run
        let mut at = 0;
        for step in steps {
            let single = step.chars().count() == 1;
            let joinable = single && (hmm || step.bytes().all(|b| b.is_ascii_alphanumeric()));
            if joinable {
                run_start.get_or_insert(at);
            } else {
                if let Some(s) = run_start.take() {
                    self.flush(block.get(s..at).unwrap_or_default(), hmm, out);
                }
                out.push(step);
            }
            at += step.len();
        }
        if let Some(s) = run_start {
            self.flush(block.get(s..at).unwrap_or_default(), hmm, out);
        }
    }

    /// A run of single-character steps (rules 3 and 4).
    fn flush<'a>(&self, run: &'a str, hmm: bool, out: &mut Vec<&'a str>) {
        if !hmm || run.chars().nth(1).is_none() {
            out.push(run);
        } else if self.dict.has_word(run) {
            out.extend(run.char_indices().map(|(i, c)| &run[i..i + c.len_utf8()]));
        } else {
            self.finalseg(run, out);
        }
    }

    /// `finalseg.cut`.
    fn finalseg<'a>(&self, mut rest: &'a str, out: &mut Vec<&'a str>) {
        while let Some(c) = rest.chars().next() {
            let han = is_hmm_han(c);
            let end = rest.find(|c| is_hmm_han(c) != han).unwrap_or(rest.len());
            let (part, tail) = rest.split_at(end);
            if han {
                out.extend(self.empty.cut(part, true).into_iter().map(|t| t.word));
            } else {
                split_skip(part, out);
            }
            rest = tail;
        }
    }
}

/// `re_skip.split`: matches of `[a-zA-Z0-9]+(?:\.\d+)?%?` and the gaps between them, non-empty.
fn split_skip<'a>(s: &'a str, out: &mut Vec<&'a str>) {
    let b = s.as_bytes();
    let mut gap = 0;
    let mut i = 0;
    while i < b.len() {
        if !b[i].is_ascii_alphanumeric() {
            i += 1;
            continue;
        }
        let mut end = i;
        while end < b.len() && b[end].is_ascii_alphanumeric() {
            end += 1;
        }
        if b.get(end) == Some(&b'.') && b.get(end + 1).is_some_and(u8::is_ascii_digit) {
            end += 1;
            while end < b.len() && b[end].is_ascii_digit() {
                end += 1;
            }
        }
        if b.get(end) == Some(&b'%') {
            end += 1;
        }
        if gap < i {
            out.push(&s[gap..i]);
        }
        out.push(&s[i..end]);
        gap = end;
        i = end;
    }
    if gap < b.len() {
        out.push(&s[gap..]);
    }
}
