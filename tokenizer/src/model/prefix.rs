//! Every piece that is a prefix of a text. Pieces of up to [`SHORT_CHARS`] characters (every
//! piece of a trained model) are looked up by hash, only at the lengths some piece starting with
//! the text's first character has (a bit mask per first character), so the walk stops when no
//! piece continues. Longer pieces (a crafted model's) are found by narrowing a range of them
//! sorted by their bytes, one byte at a time, so their cost at a position grows with how far
//! the text matches one of them, never with their length; hashing a 100,000-character prefix at
//! every candidate length made one such piece cost O(length^2) per position. The index costs a
//! `u32` per long piece and a `u64` per distinct first character.

use std::collections::HashMap;

use crate::spm::Piece;
use crate::spm::PieceType;

/// The longest piece (in characters) looked up by hash.
const SHORT_CHARS: usize = 63;

/// The matchable (NORMAL and USER_DEFINED) pieces, for prefix walks.
pub(crate) struct Matcher {
    /// For each first character, bit `k` set when a short matchable piece of `k` characters
    /// starts with it.
    lengths: HashMap<char, u64, ahash::RandomState>,
    max_short_bytes: usize,
    long: PrefixIndex,
}

fn matchable(p: &Piece) -> bool {
    matches!(p.kind, PieceType::Normal | PieceType::UserDefined)
}

impl Matcher {
    pub(crate) fn new(pieces: &[Piece]) -> Matcher {
        let mut lengths = HashMap::with_hasher(ahash::RandomState::new());
        let mut max_short_bytes = 0;
        for p in pieces.iter().filter(|p| matchable(p)) {
            let chars = p.text.chars().count();
            if let (Some(c), true) = (p.text.chars().next(), chars <= SHORT_CHARS) {
                *lengths.entry(c).or_insert(0u64) |= 1 << chars;
                max_short_bytes = max_short_bytes.max(p.text.len());
            }
        }
        let long = PrefixIndex::new(pieces, |p| {
            matchable(p) && p.text.chars().nth(SHORT_CHARS).is_some()
        });
        Matcher {
            lengths,
            max_short_bytes,
            long,
        }
    }

    /// Calls `f(length in bytes, id)` for every matchable piece `text` starts with, shortest
    /// first; `ids` is the model's piece table.
    pub(crate) fn each_prefix(
        &self,
        pieces: &[Piece],
        ids: &HashMap<Box<str>, u32, ahash::RandomState>,
        text: &str,
        mut f: impl FnMut(usize, u32),
    ) {
        let Some(first) = text.chars().next() else {
            return;
        };
        let mask = self.lengths.get(&first).copied().unwrap_or(0);
        let ends = text
            .char_indices()
            .map(|(i, c)| i + c.len_utf8())
            .take_while(|&e| e <= self.max_short_bytes);
        for (k, end) in (1..).zip(ends) {
            if mask >> k == 0 {
                break; // no longer short piece starts with this character
            }
            if mask & (1 << k) == 0 {
                continue;
            }
            match ids.get(&text[..end]) {
                Some(&id) if pieces.get(id as usize).is_some_and(matchable) => f(end, id),
                _ => {}
            }
        }
        self.long.each_prefix(pieces, text.as_bytes(), f);
    }
}

struct PrefixIndex {
    /// The ids of the indexed pieces, sorted by their bytes.
    order: Vec<u32>,
    /// For each first byte, its range in `order`.
    first: Vec<(u32, u32)>,
}

impl PrefixIndex {
    /// Indexes the pieces `keep` accepts.
    fn new(pieces: &[Piece], keep: impl Fn(&Piece) -> bool) -> PrefixIndex {
        let mut order: Vec<u32> = (0..pieces.len() as u32)
            .filter(|&i| keep(&pieces[i as usize]))
            .collect();
        order.sort_unstable_by(|&a, &b| pieces[a as usize].text.cmp(&pieces[b as usize].text));
        let mut first = vec![(0u32, 0u32); 256];
        let mut i = 0;
        while i < order.len() {
            let b = pieces[order[i] as usize].text.as_bytes()[0];
            let j =
                i + order[i..].partition_point(|&id| pieces[id as usize].text.as_bytes()[0] == b);
            first[b as usize] = (i as u32, j as u32);
            i = j;
        }
        PrefixIndex { order, first }
    }

    /// Calls `f(length in bytes, id)` for every indexed piece that `text` starts with, shortest
    /// first.
    fn each_prefix(&self, pieces: &[Piece], text: &[u8], mut f: impl FnMut(usize, u32)) {
        let Some(&b0) = text.first() else { return };
        let bytes = |id: u32| pieces[id as usize].text.as_bytes();
        let (lo, hi) = self.first[b0 as usize];
        let mut range = &self.order[lo as usize..hi as usize];
        let mut d = 1; // every piece in `range` starts with text[..d]
        while let Some((&id, rest)) = range.split_first() {
            let p = bytes(id);
            if p.len() == d {
                f(d, id); // sorted: the one piece of exactly d bytes comes first
                range = rest;
                continue;
            }
            if range.len() == 1 {
                if text.get(d..p.len()) == Some(&p[d..]) {
                    f(p.len(), id);
                }
                return;
            }
            let Some(&c) = text.get(d) else { return };
            let start = range.partition_point(|&id| bytes(id)[d] < c);
            let end = start + range[start..].partition_point(|&id| bytes(id)[d] == c);
            range = &range[start..end];
            d += 1;
        }
    }
}
