//! sentencepiece's encoder for UNIGRAM models, written out so that piece types behave exactly as
//! in sentencepiece. The `tokenizers` crate's `Unigram` is used only for the Hugging Face
//! `tokenizer.json` ([`crate::hf`]), not here, because it differs from sentencepiece where the
//! piece types matter: it matches every piece in text, CONTROL and UNKNOWN included (`<sep>`
//! would become id 4), scores USER_DEFINED pieces with their stored score instead of
//! sentencepiece's bonus, and takes its minimum (hence the `<unk>` score) over all pieces; and
//! its Precompiled normalizer works per grapheme cluster instead of sentencepiece's longest
//! match, and indexes the charsmap without bounds checks.
//!
//! Normalization (sentencepiece `Normalizer::Normalize`): at each position a USER_DEFINED piece
//! is copied unchanged (longest one wins); otherwise the longest rule of the model's own
//! charsmap replaces its key; otherwise one character is copied. With
//! `remove_extra_whitespaces`, leading spaces are dropped, a run of spaces becomes one, trailing
//! ones are dropped; `add_dummy_prefix` puts one space in front of non-empty text;
//! `escape_whitespaces` writes every space as `▁`.
//!
//! Search (sentencepiece `Model::EncodeOptimized`): at each character, every NORMAL or
//! USER_DEFINED piece starting there is a candidate edge, with the piece's score (a
//! USER_DEFINED piece scores `bytes * max_score - 0.1`, `max_score` being the largest NORMAL
//! score and at least `f32::MIN_POSITIVE`, as sentencepiece starts it at `FLT_MIN`); when no
//! piece covers exactly the one character, an `<unk>` edge of one character scores
//! `min_score - 10`. The best path keeps the first candidate on ties (shorter pieces come
//! first). Scores add in `f32`, candidates compare in `f64` before rounding, as in the C++.
//! CONTROL, UNKNOWN and UNUSED pieces are never matched from text. Adjacent unknown characters
//! come out as one `<unk>` (recorded: `sp.encode("😀😃")` is `▁ <unk>`, ids `8 0`).

use std::collections::HashMap;

use crate::spm::Parsed;
use crate::PieceType;

const SPACE: &str = "\u{2581}";

/// What the search needs beyond the parsed model, computed once.
pub(crate) struct Search {
    /// For each first character, bit `k` set when a matchable piece of `k` characters starts
    /// with it (bit 63: 63 or more), so the search looks up only lengths that exist.
    lengths: HashMap<char, u64, ahash::RandomState>,
    min_score: f32,
    max_score: f32,
    max_piece_bytes: usize,
    max_user_bytes: usize,
}

impl Search {
    pub(crate) fn new(m: &Parsed) -> Search {
        let (mut min_score, mut max_score) = (f32::MAX, f32::MIN_POSITIVE);
        let (mut max_piece_bytes, mut max_user_bytes) = (0, 0);
        let mut lengths = HashMap::with_hasher(ahash::RandomState::new());
        for p in &m.pieces {
            if matches!(p.kind, PieceType::Normal | PieceType::UserDefined) {
                if let Some(c) = p.text.chars().next() {
                    *lengths.entry(c).or_insert(0u64) |= 1 << p.text.chars().count().min(63);
                }
            }
            match p.kind {
                PieceType::Normal => {
                    min_score = min_score.min(p.score);
                    max_score = max_score.max(p.score);
                    max_piece_bytes = max_piece_bytes.max(p.text.len());
                }
                PieceType::UserDefined => {
                    max_user_bytes = max_user_bytes.max(p.text.len());
                    max_piece_bytes = max_piece_bytes.max(p.text.len());
                }
                _ => {}
            }
        }
        Search {
            lengths,
            min_score,
            max_score,
            max_piece_bytes,
            max_user_bytes,
        }
    }
}

/// The id of `s` when it is a piece of type `want`.
fn piece_of(m: &Parsed, s: &str, want: PieceType) -> Option<u32> {
    let id = *m.ids.get(s)?;
    (m.pieces.get(id as usize)?.kind == want).then_some(id)
}

/// The byte ends of the characters of `s` starting at `from`, up to `max` bytes.
fn char_ends(s: &str, from: usize, max: usize) -> impl Iterator<Item = usize> + '_ {
    s.get(from..)
        .unwrap_or("")
        .char_indices()
        .map(move |(i, c)| from + i + c.len_utf8())
        .take_while(move |&e| e - from <= max)
}

/// One normalization step at the start of `rest`: (replacement, bytes consumed).
fn normalize_prefix<'a>(m: &'a Parsed, search: &Search, rest: &'a str) -> (&'a str, usize) {
    let user = char_ends(rest, 0, search.max_user_bytes)
        .filter(|&e| piece_of(m, &rest[..e], PieceType::UserDefined).is_some())
        .last();
    if let Some(e) = user {
        return (&rest[..e], e);
    }
    if let Some((n, rep)) = m
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

/// sentencepiece's normalized form of `text`.
pub(crate) fn normalize(m: &Parsed, search: &Search, text: &str) -> String {
    let spec = &m.normalizer;
    let mut rest = text;
    if spec.remove_extra_whitespaces {
        while !rest.is_empty() {
            let (rep, n) = normalize_prefix(m, search, rest);
            if rep != " " {
                break;
            }
            rest = &rest[n..];
        }
    }
    let mut out = String::with_capacity(text.len() + 3);
    if rest.is_empty() {
        return out;
    }
    let space = if spec.escape_whitespaces { SPACE } else { " " };
    if spec.add_dummy_prefix {
        out.push_str(space);
    }
    let mut prev_space = spec.remove_extra_whitespaces;
    while !rest.is_empty() {
        let (mut rep, n) = normalize_prefix(m, search, rest);
        if prev_space {
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
            prev_space = rep.ends_with(' ');
        }
        rest = &rest[n..];
        if !spec.remove_extra_whitespaces {
            prev_space = false;
        }
    }
    if spec.remove_extra_whitespaces {
        while let Some(s) = out.strip_suffix(space) {
            out.truncate(s.len());
        }
    }
    out
}

#[derive(Clone, Copy)]
struct Best {
    id: u32,
    score: f32,
    start: Option<usize>,
}

/// The best segmentation of normalized text: (piece text, id) pairs in order.
pub(crate) fn search<'a>(m: &Parsed, search: &Search, s: &'a str) -> Vec<(&'a str, u32)> {
    let unk_score = search.min_score - 10.0;
    let mut best = vec![
        Best {
            id: 0,
            score: 0.0,
            start: None
        };
        s.len() + 1
    ];
    let mut at = 0;
    while at < s.len() {
        let here = best[at].score;
        let mblen = s[at..].chars().next().map_or(1, char::len_utf8);
        let mut single = false;
        let first = s[at..].chars().next().unwrap_or_default();
        let mask = search.lengths.get(&first).copied().unwrap_or(0);
        for (k, end) in char_ends(s, at, search.max_piece_bytes).enumerate() {
            let bit = (k + 1).min(63);
            if mask >> bit == 0 {
                break; // no longer piece starts with this character
            }
            if mask & (1 << bit) == 0 {
                continue;
            }
            let Some(&id) = m.ids.get(&s[at..end]) else {
                continue;
            };
            let score = match m.pieces.get(id as usize).map(|p| (p.kind, p.score)) {
                Some((PieceType::Normal, score)) => f64::from(score),
                Some((PieceType::UserDefined, _)) => {
                    (end - at) as f64 * f64::from(search.max_score) - 0.1
                }
                _ => continue,
            };
            relax(&mut best[end], score + f64::from(here), at, id);
            single |= end - at == mblen;
        }
        if !single {
            relax(
                &mut best[at + mblen],
                f64::from(unk_score) + f64::from(here),
                at,
                m.unk_id,
            );
        }
        at += mblen;
    }
    let mut out: Vec<(&str, u32)> = Vec::new();
    let mut end = s.len();
    while let Some(start) = best.get(end).and_then(|b| b.start) {
        let id = best[end].id;
        match out.last_mut() {
            // sentencepiece merges adjacent unknown characters into one `<unk>`.
            Some((piece, last)) if *last == m.unk_id && id == m.unk_id => {
                *piece = &s[start..start + (end - start) + piece.len()];
            }
            _ => out.push((&s[start..end], id)),
        }
        end = start;
    }
    out.reverse();
    out
}

fn relax(node: &mut Best, candidate: f64, start: usize, id: u32) {
    if node.start.is_none() || candidate > f64::from(node.score) {
        *node = Best {
            id,
            score: candidate as f32,
            start: Some(start),
        };
    }
}
