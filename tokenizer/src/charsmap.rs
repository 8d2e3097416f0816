//! sentencepiece's `precompiled_charsmap`: the normalization rules compiled into a darts-clone
//! double array, as stored in the model.
//!
//! Layout: a little-endian `u32` with the trie's size in bytes, the trie (`u32` units), then the
//! replacement strings, each ended by a NUL byte. A unit packs a label (bits 0–7, bit 31 marks a
//! value unit), a has-leaf flag (bit 8) and an offset (bits 10–31, shifted by 8 more when bit 9
//! is set); a child is reached by XOR-ing the label into the parent's position, and a key's value
//! (an offset into the strings) sits in the unit at the position after the last label.
//!
//! [`Charsmap::parse`] walks every reachable unit once and checks it before anything uses the
//! table: each position is inside the array, including the whole 256-unit block a lookup may
//! XOR into (the `spm_precompiled` crate that `tokenizers` uses indexes without bounds checks),
//! each value points at a NUL-terminated, valid UTF-8 string starting on a character boundary.
//! Lookups are still bounds-checked, so no table can make them panic.

/// Keys longer than this are not followed while validating: sentencepiece's tables hold short
/// strings (a few characters); a longer chain means a cycle in a forged table.
pub(crate) const MAX_KEY_BYTES: usize = 256;
/// The longest replacement accepted. NFKC's longest expansion (U+FDFA) is 33 bytes; a rule
/// whose replacement is megabytes long would be copied at every match.
pub(crate) const MAX_REPLACEMENT_BYTES: usize = 256;
/// The most bytes a rule may write per byte of its key (U+FDFA: 33 bytes for 3), so normalized
/// text stays within this many times its input.
pub(crate) const MAX_EXPANSION: usize = 16;

/// A parsed, validated charsmap.
pub(crate) struct Charsmap {
    units: Vec<u32>,
    strings: String,
    /// (string offset, length to its NUL) of every offset a rule uses, sorted: each string is
    /// measured once at load, not at every lookup.
    lens: Vec<(u32, u32)>,
}

fn has_leaf(u: u32) -> bool {
    (u >> 8) & 1 == 1
}
fn value(u: u32) -> u32 {
    u & ((1 << 31) - 1)
}
fn label(u: u32) -> u32 {
    u & ((1 << 31) | 0xFF)
}
fn offset(u: u32) -> usize {
    ((u >> 10) << ((u & (1 << 9)) >> 6)) as usize
}

/// A key for messages: text when it is UTF-8, bytes otherwise.
fn show(key: &[u8]) -> String {
    match std::str::from_utf8(key) {
        Ok(s) => format!("{s:?}"),
        Err(_) => format!("{key:02x?}"),
    }
}

impl Charsmap {
    /// Parses and validates `blob`; the error says what is wrong.
    pub(crate) fn parse(blob: &[u8]) -> Result<Charsmap, String> {
        let head: [u8; 4] = blob
            .get(..4)
            .and_then(|h| h.try_into().ok())
            .ok_or_else(|| {
                format!(
                    "precompiled_charsmap of {} bytes has no size header",
                    blob.len()
                )
            })?;
        let trie_bytes = u32::from_le_bytes(head) as usize;
        let rest = &blob[4..];
        if trie_bytes % 4 != 0 || trie_bytes > rest.len() || trie_bytes == 0 {
            return Err(format!(
                "precompiled_charsmap declares a {trie_bytes}-byte trie but has {} bytes after the header (need a nonzero multiple of 4 that fits)",
                rest.len()
            ));
        }
        let units = rest[..trie_bytes]
            .chunks_exact(4)
            .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        let strings = String::from_utf8(rest[trie_bytes..].to_vec())
            .map_err(|_| "precompiled_charsmap string table is not UTF-8".to_string())?;
        let mut map = Charsmap {
            units,
            strings,
            lens: Vec::new(),
        };
        map.validate()?;
        Ok(map)
    }

    fn unit(&self, pos: usize) -> Result<u32, String> {
        self.units.get(pos).copied().ok_or_else(|| {
            format!(
                "precompiled_charsmap trie position {pos} is outside its {} units",
                self.units.len()
            )
        })
    }

    /// Calls `f(key, value)` for every rule, depth first with the key's bytes on the stack.
    /// Checks every position on the way; a node reached twice is walked once.
    fn walk(&self, mut f: impl FnMut(&[u8], u32) -> Result<(), String>) -> Result<(), String> {
        let mut seen = vec![false; self.units.len()];
        let mut key = Vec::new();
        // Frames: (base of the node's children, next label to try).
        let mut stack = vec![(offset(self.unit(0)?), 1u32)];
        while let Some(top) = stack.last_mut() {
            let (base, c) = *top;
            if c == 1 {
                // A lookup XORs any byte into `base`: the whole block must exist.
                self.unit(base | 0xFF)?;
                if std::mem::replace(&mut seen[base], true) {
                    stack.pop();
                    key.pop();
                    continue;
                }
            }
            if c > 255 {
                stack.pop();
                key.pop();
                continue;
            }
            top.1 += 1;
            let pos = base ^ c as usize;
            let u = self.unit(pos)?;
            if label(u) != c {
                continue;
            }
            let child = pos ^ offset(u);
            key.push(c as u8);
            if has_leaf(u) {
                f(&key, value(self.unit(child)?))?;
            }
            if key.len() > MAX_KEY_BYTES {
                return Err(format!(
                    "precompiled_charsmap has a key longer than {MAX_KEY_BYTES} bytes (a cycle?)"
                ));
            }
            stack.push((child, 1));
        }
        Ok(())
    }

    /// Walks the table once, gathering every rule's (string offset, key length); measures each
    /// string once, in one pass over the strings; checks every rule against the bounds. Only
    /// when one breaks them is the table walked again, to name its key.
    fn validate(&mut self) -> Result<(), String> {
        let mut leaves = Vec::new();
        self.walk(|key, v| {
            leaves.push((v, key.len()));
            Ok(())
        })?;
        let mut offsets: Vec<u32> = leaves.iter().map(|&(v, _)| v).collect();
        offsets.sort_unstable();
        offsets.dedup();
        self.lens = self.measure(&offsets)?;
        drop(offsets);
        if leaves.iter().all(|&(v, n)| self.rule_fits(v, n).is_ok()) {
            return Ok(());
        }
        self.walk(|key, v| {
            self.rule_fits(v, key.len()).map_err(|(len, limit)| {
                format!(
                    "precompiled_charsmap rule {} ({} bytes) has a {len}-byte replacement, more than the limit of {limit} ({MAX_EXPANSION} per key byte, at most {MAX_REPLACEMENT_BYTES})",
                    show(key),
                    key.len()
                )
            })
        })
    }

    /// Whether the replacement at `v` fits a key of `key_len` bytes; else (length, limit).
    fn rule_fits(&self, v: u32, key_len: usize) -> Result<(), (usize, usize)> {
        let len = self.lens_of(v).map_or(0, |(_, n)| n as usize);
        let limit = MAX_REPLACEMENT_BYTES.min(MAX_EXPANSION * key_len);
        if len > limit {
            return Err((len, limit));
        }
        Ok(())
    }

    /// The length of the string at each sorted offset, from one sweep over the strings.
    fn measure(&self, offsets: &[u32]) -> Result<Vec<(u32, u32)>, String> {
        let bytes = self.strings.as_bytes();
        let mut out = Vec::with_capacity(offsets.len());
        let mut nul = 0; // the first NUL at or after the current offset
        for &at in offsets {
            let at_us = at as usize;
            if at_us >= bytes.len() {
                return Err(format!(
                    "precompiled_charsmap value {at} is outside its {}-byte string table",
                    bytes.len()
                ));
            }
            if !self.strings.is_char_boundary(at_us) {
                return Err(format!(
                    "precompiled_charsmap string at {at} starts inside a character"
                ));
            }
            nul = nul.max(at_us);
            while bytes.get(nul).is_some_and(|&b| b != 0) {
                nul += 1;
            }
            if nul >= bytes.len() {
                return Err(format!(
                    "precompiled_charsmap string at {at} has no NUL terminator"
                ));
            }
            out.push((at, (nul - at_us) as u32));
        }
        Ok(out)
    }

    fn lens_of(&self, v: u32) -> Option<(u32, u32)> {
        let i = self.lens.binary_search_by_key(&v, |&(at, _)| at).ok()?;
        self.lens.get(i).copied()
    }

    /// The replacement a value points at (measured at load).
    fn string_at(&self, v: u32) -> Option<&str> {
        let (at, len) = self.lens_of(v)?;
        self.strings.get(at as usize..(at + len) as usize)
    }

    /// The longest rule matching a prefix of `input`: (bytes consumed, replacement).
    pub(crate) fn longest_prefix<'a>(&'a self, input: &[u8]) -> Option<(usize, &'a str)> {
        let mut pos = offset(*self.units.first()?);
        let mut best = None;
        for (i, &c) in input.iter().enumerate() {
            if c == 0 {
                break; // darts-clone: a NUL byte never matches a label
            }
            pos ^= c as usize;
            let Some(&u) = self.units.get(pos) else { break };
            if label(u) != c as u32 {
                break;
            }
            pos ^= offset(u);
            if has_leaf(u) {
                let Some(&v) = self.units.get(pos) else { break };
                if let Some(s) = self.string_at(value(v)) {
                    best = Some((i + 1, s));
                }
            }
        }
        best
    }
}
