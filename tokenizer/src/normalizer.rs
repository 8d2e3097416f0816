//! The normalizer step: sentencepiece's `Normalizer::Normalize`, over text that arrives in
//! pieces. Its rules are the model's own `precompiled_charsmap` ([`charsmap`]).
//!
//! At each position a USER_DEFINED piece is copied unchanged (longest one wins); otherwise the
//! longest rule of the model's own charsmap replaces its key; otherwise one character is copied.
//! With `remove_extra_whitespaces`, leading spaces are dropped, a run of spaces becomes one,
//! trailing ones are dropped; `add_dummy_prefix` puts one space in front of non-empty text;
//! `escape_whitespaces` writes every space as `▁`.
//!
//! A position is normalized once the text after it is long enough for the longest possible
//! match (a USER_DEFINED piece or a charsmap key); trailing spaces are held back until
//! something else follows or the text ends. The output is at most
//! [`crate::charsmap::MAX_EXPANSION`] times the input (3 bytes per space when escaped), plus 3.

use crate::charsmap::MAX_KEY_BYTES;
use crate::model::Search;
use crate::spm::Parsed;
use crate::spm::PieceType;

const SPACE: &str = "\u{2581}";

pub(crate) struct Normalizer<'m> {
    m: &'m Parsed,
    s: &'m Search,
    started: bool,
    prev_space: bool,
    lookahead: usize,
}

impl<'m> Normalizer<'m> {
    pub(crate) fn new(m: &'m Parsed, s: &'m Search) -> Self {
        Normalizer {
            m,
            s,
            started: false,
            prev_space: m.normalizer.remove_extra_whitespaces,
            lookahead: s.max_user_bytes.max(MAX_KEY_BYTES + 1),
        }
    }

    /// The string spaces are written as.
    pub(crate) fn space(&self) -> &'static str {
        if self.m.normalizer.escape_whitespaces {
            SPACE
        } else {
            " "
        }
    }

    /// How much of `out` may go on: all of it, less trailing spaces that may yet be dropped.
    pub(crate) fn ready(&self, out: &str) -> usize {
        if self.m.normalizer.remove_extra_whitespaces {
            out.trim_end_matches(self.space()).len()
        } else {
            out.len()
        }
    }

    /// Normalizes a prefix of `input` into `out` (all of it when `last`), returns its length.
    pub(crate) fn feed(&mut self, input: &str, last: bool, out: &mut String) -> usize {
        let spec = &self.m.normalizer;
        let space = self.space();
        let mut at = 0;
        while at < input.len() && (last || input.len() - at > self.lookahead) {
            let (mut rep, n) = self.prefix(&input[at..]);
            at += n;
            if !self.started {
                if spec.remove_extra_whitespaces && rep == " " {
                    continue;
                }
                self.started = true;
                if spec.add_dummy_prefix {
                    out.push_str(space);
                }
            }
            if self.prev_space {
                rep = rep.trim_start_matches(' ');
            }
            if !rep.is_empty() {
                for piece in rep.split_inclusive(' ') {
                    match piece.strip_suffix(' ') {
                        Some(word) => {
                            out.push_str(word);
                            out.push_str(space);
                        }
                        None => out.push_str(piece),
                    }
                }
                self.prev_space = rep.ends_with(' ');
            }
            if !spec.remove_extra_whitespaces {
                self.prev_space = false;
            }
        }
        at
    }

    /// One normalization step at the start of `rest`: (replacement, bytes consumed).
    fn prefix<'a>(&self, rest: &'a str) -> (&'a str, usize)
    where
        'm: 'a,
    {
        if self.s.max_user_bytes > 0 {
            let mut user = None;
            self.s
                .index
                .each_prefix(&self.m.pieces, &self.m.ids, rest, |len, id| {
                    if self.m.pieces[id as usize].kind == PieceType::UserDefined {
                        user = Some(len);
                    }
                });
            if let Some(e) = user {
                return (&rest[..e], e);
            }
        }
        if let Some((n, rep)) = self
            .m
            .normalizer
            .charsmap
            .as_ref()
            .and_then(|c| c.longest_prefix(rest.as_bytes()))
        {
            // A rule always ends on a character boundary of valid text; if a forged table says
            // otherwise, fall back to one character.
            if rest.is_char_boundary(n) {
                return (rep, n);
            }
        }
        let n = rest.chars().next().map_or(rest.len(), char::len_utf8);
        (&rest[..n], n)
    }
}

/// sentencepiece's normalized form of `text`, whole.
pub(crate) fn normalize(m: &Parsed, s: &Search, text: &str) -> String {
    let mut n = Normalizer::new(m, s);
    let mut out = String::with_capacity(text.len() + 3);
    n.feed(text, true, &mut out);
    out.truncate(n.ready(&out));
    out
}
