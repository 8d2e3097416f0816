//! The zip flavour (torch >= 1.6): `<prefix>/data.pkl` plus one STORED entry per storage,
//! `<prefix>/data/<key>`, which we address in place inside the memory map.

use std::collections::{HashMap, HashSet};
use std::io::Cursor;
use std::ops::Range;
use std::path::Path;

use zip::{CompressionMethod, ZipArchive};

use crate::error::{Error, Result};
use crate::names::shorten;
use crate::pickle;
use crate::value::{Arena, StorageRef, Value};

/// Most entries we accept; a checkpoint has one per storage plus a handful (a 32-layer model
/// with its optimizer state, some 1,500). The zip crate keeps ~300 bytes per entry, so this
/// bounds its directory at ~15 MB whatever the file claims.
const MAX_ENTRIES: u64 = 50_000;
/// Bytes from the end of a zip in which its end-of-central-directory record must start
/// (the record, 22 bytes, plus a comment of at most 65,535).
const EOCD_SEARCH: usize = 22 + 0xffff;

pub(super) fn read(
    bytes: &[u8],
    path: &Path,
) -> Result<(Value, Arena, HashMap<String, Range<u64>>)> {
    let bad = |msg: String| Error::format(path, msg);
    let mut archive = open_archive(bytes, path)?;
    let mut found = Found::default();
    for i in 0..archive.len() {
        let entry = archive
            .by_index_raw(i)
            .map_err(|e| bad(format!("zip entry {i}: {e}")))?;
        found.add(bytes, &entry).map_err(bad)?;
    }
    check_no_overlap(&mut found.used).map_err(bad)?;
    let pr = found.pickle.ok_or_else(|| {
        bad("zip archive has no `<folder>/data.pkl`: not a torch checkpoint".into())
    })?;
    let parsed = pickle::parse(&bytes[pr.start as usize..pr.end as usize], path, pr.start)?;
    let mut storages = found.storages;
    bind_storages(&parsed.storages, &mut storages).map_err(bad)?;
    Ok((parsed.value, parsed.arena, storages))
}

/// The zip crate's view of the archive, after the checks it does not make itself: the entry
/// count claimed (before it allocates for them) and duplicate names (it keeps one silently, so a
/// reader could be shown either).
fn open_archive<'b>(bytes: &'b [u8], path: &Path) -> Result<ZipArchive<Cursor<&'b [u8]>>> {
    let bad = |msg: String| Error::format(path, msg);
    if let Some(n) = claimed_entries(bytes).filter(|&n| n > MAX_ENTRIES) {
        return Err(bad(format!(
            "the zip central directory claims {n} entries (at most {MAX_ENTRIES}); a checkpoint \
             has one per storage"
        )));
    }
    let archive = ZipArchive::new(Cursor::new(bytes))
        .map_err(|e| bad(format!("not a readable zip archive: {e}")))?;
    if archive.has_duplicate_names() {
        return Err(bad(
            "the zip central directory lists a name more than once (duplicate entries); a torch \
             checkpoint never does"
                .into(),
        ));
    }
    Ok(archive)
}

/// What the entries we use hold, collected entry by entry.
#[derive(Default)]
struct Found {
    /// The folder every entry lives in.
    prefix: Option<String>,
    pickle: Option<Range<u64>>,
    storages: HashMap<String, Range<u64>>,
    seen: HashSet<String>,
    /// Payload ranges of the entries we use, to refuse entries that share bytes.
    used: Vec<(Range<u64>, String)>,
}

impl Found {
    fn add(
        &mut self,
        bytes: &[u8],
        entry: &zip::read::ZipFile<'_, Cursor<&[u8]>>,
    ) -> Result<(), String> {
        let name = entry.name().map_err(|e| e.to_string())?.into_owned();
        // Names come from the file (up to 64 KiB each): messages show them shortened.
        let shown = shorten(&name).into_owned();
        let Some(rest) = self.entry_in_folder(&name)? else {
            return Ok(());
        };
        // Names are kept only for the entries we use, whose names the file holds twice
        // (central and local header): the copies never outgrow the file.
        if !self.seen.insert(name.clone()) {
            return Err(format!("zip entry `{shown}` appears twice"));
        }
        let range = payload(bytes, entry).map_err(|m| format!("zip entry `{shown}`{m}"))?;
        self.used.push((range.clone(), name.clone()));
        if rest == "data.pkl" {
            self.pickle = Some(range);
        } else if rest == "byteorder" {
            let order = &bytes[range.start as usize..range.end as usize];
            if order != b"little" {
                return Err(format!(
                    "byte order `{}` is not supported (only little-endian checkpoints)",
                    // Any length the file likes: show its start only.
                    String::from_utf8_lossy(&order[..order.len().min(16)])
                ));
            }
        } else if let Some(key) = rest.strip_prefix("data/") {
            self.storages.insert(key.to_string(), range);
        }
        Ok(())
    }

    /// The part of `name` after the one folder torch puts everything under (named after the
    /// saved file: taken from the first entry rather than assumed), when it is an entry we use.
    fn entry_in_folder<'n>(&mut self, name: &'n str) -> Result<Option<&'n str>, String> {
        let (p, rest) = name.split_once('/').ok_or_else(|| {
            format!(
                "zip entry `{}` is not inside a folder, as torch writes",
                shorten(name)
            )
        })?;
        match &self.prefix {
            None => self.prefix = Some(p.to_string()),
            Some(q) if q != p => {
                return Err(format!(
                    "zip entries in two folders, `{}/` and `{}/`; a torch checkpoint has one",
                    shorten(q),
                    shorten(p)
                ))
            }
            _ => {}
        }
        if rest == "constants.pkl" {
            return Err(
                "this is a TorchScript archive (it has constants.pkl), not a checkpoint".into(),
            );
        }
        let used = rest == "data.pkl" || rest.starts_with("data/") || rest == "byteorder";
        Ok(used.then_some(rest))
    }
}

/// A stored entry's payload in `bytes`, read from its local header and checked against the
/// central directory. Errors continue a sentence that starts with the entry's name.
fn payload(
    bytes: &[u8],
    entry: &zip::read::ZipFile<'_, Cursor<&[u8]>>,
) -> Result<Range<u64>, String> {
    if entry.compression() != CompressionMethod::Stored {
        return Err(format!(
            " is compressed ({:?}); torch writes stored entries, which we read in place",
            entry.compression()
        ));
    }
    let start = local_payload_start(bytes, entry.header_start(), entry.name_raw())
        .map_err(|m| format!(": {m}"))?;
    let size = entry.size();
    if entry.compressed_size() != size {
        return Err(format!(
            " is stored but its sizes differ ({} vs {size})",
            entry.compressed_size()
        ));
    }
    let end = start
        .checked_add(size)
        .filter(|&e| e <= bytes.len() as u64)
        .ok_or_else(|| {
            format!(
                " claims bytes {start}..{} but the file has {} (truncated?)",
                start.saturating_add(size),
                bytes.len()
            )
        })?;
    Ok(start..end)
}

/// Two entries we read may not share bytes.
fn check_no_overlap(used: &mut [(Range<u64>, String)]) -> Result<(), String> {
    used.sort_by_key(|(r, _)| (r.start, r.end));
    for w in used.windows(2) {
        if let [(a, an), (b, bn)] = w {
            if b.start < a.end {
                return Err(format!(
                    "zip entries `{}` (bytes {}..{}) and `{}` (bytes {}..{}) overlap: the \
                     central directory does not describe a well-formed archive",
                    shorten(an),
                    a.start,
                    a.end,
                    shorten(bn),
                    b.start,
                    b.end
                ));
            }
        }
    }
    Ok(())
}

/// Every storage the pickle names has an entry large enough for it; each range is cut to what
/// the storage declares, so tensors are checked against that and never against any slack.
fn bind_storages(
    declared: &[std::rc::Rc<StorageRef>],
    storages: &mut HashMap<String, Range<u64>>,
) -> Result<(), String> {
    for s in declared {
        let range = storages.get_mut(&*s.key).ok_or_else(|| {
            let key = shorten(&s.key);
            format!("the object refers to storage `{key}`, but there is no entry data/{key}")
        })?;
        let es = s.dtype.map(|d| d.size() as u64).unwrap_or(1);
        let need = s.numel.checked_mul(es);
        if need.map_or(true, |n| n > range.end - range.start) {
            return Err(format!(
                "storage `{}` should hold {} elements of {} bytes but its entry has {} bytes",
                shorten(&s.key),
                s.numel,
                es,
                range.end - range.start
            ));
        }
        if let Some(n) = need {
            range.end = range.start + n;
        }
    }
    Ok(())
}

/// Size of a zip local file header before its name and extra field.
const LOCAL_HEADER_LEN: u64 = 30;

/// Where the payload of the entry whose local header is at `at` begins, after checking that the
/// local header is there, names `central_name` and is stored (method 0). Sizes in the local
/// header are not compared: torch writes them in a data descriptor after the payload.
fn local_payload_start(bytes: &[u8], at: u64, central_name: &[u8]) -> Result<u64, String> {
    let field = |off: u64, len: u64| -> Result<&[u8], String> {
        let s = at.checked_add(off).ok_or("local header offset overflows")?;
        let e = s.checked_add(len).ok_or("local header offset overflows")?;
        usize::try_from(s)
            .ok()
            .zip(usize::try_from(e).ok())
            .and_then(|(s, e)| bytes.get(s..e))
            .ok_or_else(|| {
                format!(
                    "local header at byte {at} lies past the end of the file at {} (truncated?)",
                    bytes.len()
                )
            })
    };
    let u16_at = |off: u64| -> Result<u64, String> {
        let b = field(off, 2)?;
        Ok(u64::from(u16::from_le_bytes([b[0], b[1]])))
    };
    if field(0, 4)? != b"PK\x03\x04" {
        return Err(format!(
            "no local header at byte {at}, where the central directory points"
        ));
    }
    let method = u16_at(8)?;
    if method != 0 {
        return Err(format!(
            "local header says compression method {method}; torch writes stored (0) entries"
        ));
    }
    let name_len = u16_at(26)?;
    let extra_len = u16_at(28)?;
    let local_name = field(LOCAL_HEADER_LEN, name_len)?;
    if local_name != central_name {
        return Err(format!(
            "local header at byte {at} names `{}`, the central directory `{}`",
            shorten(&String::from_utf8_lossy(local_name)),
            shorten(&String::from_utf8_lossy(central_name))
        ));
    }
    let start = at
        .checked_add(LOCAL_HEADER_LEN + name_len + extra_len)
        .ok_or("local header offset overflows")?;
    if start > bytes.len() as u64 {
        return Err(format!(
            "local header at byte {at} runs past the end of the file (truncated?)"
        ));
    }
    Ok(start)
}

/// The largest entry count any end-of-central-directory record in the zip's tail claims (a
/// zip64 record's, where the classic one defers to it), or `None` if there is none. Every
/// candidate counts: the zip crate may settle on any of them.
fn claimed_entries(bytes: &[u8]) -> Option<u64> {
    let tail_start = bytes.len().saturating_sub(EOCD_SEARCH);
    let u16_at = |at: usize| {
        bytes
            .get(at..at + 2)
            .map(|b| u16::from_le_bytes([b[0], b[1]]))
    };
    let u64_at = |at: usize| {
        let b: [u8; 8] = bytes.get(at..at.checked_add(8)?)?.try_into().ok()?;
        Some(u64::from_le_bytes(b))
    };
    let mut most = None;
    for at in eocd_signatures(bytes, tail_start) {
        let Some(n) = u16_at(at + 10) else { continue };
        let mut n = u64::from(n);
        if n == 0xffff {
            // Zip64: a locator 20 bytes before points at the record holding the real count.
            let locator = at
                .checked_sub(20)
                .filter(|&l| bytes.get(l..l + 4) == Some(b"PK\x06\x07"));
            let record = locator
                .and_then(|l| u64_at(l + 8))
                .and_then(|r| usize::try_from(r).ok());
            if let Some(r) =
                record.filter(|&r| bytes.get(r..r.saturating_add(4)) == Some(b"PK\x06\x06"))
            {
                // 0xFFFF is a placeholder here: the zip64 record's count is the claim.
                n = u64_at(r + 32).unwrap_or(n);
            }
        }
        most = most.max(Some(n));
    }
    most
}

/// Offsets at or after `from` where an end-of-central-directory signature (`PK\x05\x06`)
/// starts. Eight bytes at a time, skipping words without a `P`: the 64 KiB tail of a file is
/// searched on every open, and the truncation tests open tens of thousands of files.
fn eocd_signatures(bytes: &[u8], from: usize) -> impl Iterator<Item = usize> + '_ {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGHS: u64 = 0x8080_8080_8080_8080;
    let has_p = |w: u64| {
        let x = w ^ (ONES * u64::from(b'P'));
        x.wrapping_sub(ONES) & !x & HIGHS != 0
    };
    let tail = bytes.get(from..).unwrap_or_default();
    tail.chunks(8)
        .enumerate()
        .filter(move |(_, c)| {
            c.len() < 8 || has_p(u64::from_le_bytes((*c).try_into().unwrap_or([0; 8])))
        })
        .flat_map(move |(i, c)| (0..c.len()).map(move |j| from + i * 8 + j))
        .filter(move |&at| bytes.get(at..at + 4) == Some(b"PK\x05\x06"))
}
