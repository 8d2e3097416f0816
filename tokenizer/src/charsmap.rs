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
const MAX_KEY_BYTES: usize = 256;

/// A parsed, validated charsmap.
pub(crate) struct Charsmap {
    units: Vec<u32>,
    strings: Vec<u8>,
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
        let map = Charsmap {
            units,
            strings: rest[trie_bytes..].to_vec(),
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

    /// The replacement string a value points at, checked.
    fn string_at(&self, at: usize) -> Result<&str, String> {
        let tail = self.strings.get(at..).ok_or_else(|| {
            format!(
                "precompiled_charsmap value {at} is outside its {}-byte string table",
                self.strings.len()
            )
        })?;
        let end = tail
            .iter()
            .position(|&b| b == 0)
            .ok_or_else(|| format!("precompiled_charsmap string at {at} has no NUL terminator"))?;
        std::str::from_utf8(&tail[..end])
            .map_err(|_| format!("precompiled_charsmap string at {at} is not UTF-8"))
    }

    /// Visits every reachable node once (depth-first, explicit stack).
    fn validate(&self) -> Result<(), String> {
        std::str::from_utf8(&self.strings)
            .map_err(|_| "precompiled_charsmap string table is not UTF-8".to_string())?;
        let mut seen = vec![false; self.units.len()];
        let root = self.unit(0)?;
        let mut stack = vec![(offset(root), 0usize)];
        while let Some((base, depth)) = stack.pop() {
            if depth > MAX_KEY_BYTES {
                return Err(format!(
                    "precompiled_charsmap has a key longer than {MAX_KEY_BYTES} bytes (a cycle?)"
                ));
            }
            // A lookup XORs any byte into `base`: the whole block must exist.
            self.unit(base | 0xFF)?;
            if std::mem::replace(&mut seen[base], true) {
                continue;
            }
            for c in 1u32..=255 {
                let pos = base ^ c as usize;
                let u = self.unit(pos)?;
                if label(u) != c {
                    continue;
                }
                let child = pos ^ offset(u);
                if has_leaf(u) {
                    let v = self.unit(child)?;
                    self.string_at(value(v) as usize)?;
                }
                stack.push((child, depth + 1));
            }
        }
        Ok(())
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
                if let Ok(s) = self.string_at(value(v) as usize) {
                    best = Some((i + 1, s));
                }
            }
        }
        best
    }
}
