//! Every piece that is a prefix of a text, found by narrowing a range of the pieces sorted by
//! their bytes, one byte at a time: the cost at a position grows with how far the text matches
//! some piece, never with the longest piece (a hash lookup per candidate length costs that
//! length each time). The index is one `u32` per piece beside the pieces themselves.

use crate::spm::Piece;

pub(crate) struct PrefixIndex {
    /// The ids of the indexed pieces, sorted by their bytes.
    order: Vec<u32>,
    /// For each first byte, its range in `order`.
    first: Vec<(u32, u32)>,
}

impl PrefixIndex {
    /// Indexes the pieces `keep` accepts.
    pub(crate) fn new(pieces: &[Piece], keep: impl Fn(&Piece) -> bool) -> PrefixIndex {
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
    pub(crate) fn each_prefix(&self, pieces: &[Piece], text: &[u8], mut f: impl FnMut(usize, u32)) {
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
