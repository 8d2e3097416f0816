//! The zip flavour (torch >= 1.6): `<prefix>/data.pkl` plus one STORED entry per storage,
//! `<prefix>/data/<key>`, which we address in place inside the memory map.

use std::collections::HashMap;
use std::io::Cursor;
use std::ops::Range;
use std::path::Path;

use zip::{CompressionMethod, ZipArchive};

use super::pickle;
use super::value::Value;
use crate::error::{Error, Result};

/// Most entries we accept; a checkpoint has one per storage plus a handful.
const MAX_ENTRIES: usize = 1 << 20;

pub(super) fn read(bytes: &[u8], path: &Path) -> Result<(Value, HashMap<String, Range<u64>>)> {
    let bad = |msg: String| Error::format(path, msg);
    let mut archive = ZipArchive::new(Cursor::new(bytes))
        .map_err(|e| bad(format!("not a readable zip archive: {e}")))?;
    if archive.len() > MAX_ENTRIES {
        return Err(bad(format!(
            "{} zip entries (at most {MAX_ENTRIES})",
            archive.len()
        )));
    }

    let mut prefix: Option<String> = None;
    let mut pickle_range = None;
    let mut storages = HashMap::new();
    for i in 0..archive.len() {
        let entry = archive
            .by_index_raw(i)
            .map_err(|e| bad(format!("zip entry {i}: {e}")))?;
        let name = entry
            .name()
            .map_err(|e| bad(format!("zip entry {i}: {e}")))?
            .into_owned();
        // Torch puts everything under one folder, named after the saved file; take it from
        // the first entry rather than assuming it.
        let (p, rest) = name.split_once('/').ok_or_else(|| {
            bad(format!(
                "zip entry `{name}` is not inside a folder, as torch writes"
            ))
        })?;
        match &prefix {
            None => prefix = Some(p.to_string()),
            Some(q) if q != p => {
                return Err(bad(format!(
                    "zip entries in two folders, `{q}/` and `{p}/`; a torch checkpoint has one"
                )))
            }
            _ => {}
        }
        let is_data = rest == "data.pkl" || rest.starts_with("data/") || rest == "byteorder";
        if rest == "constants.pkl" {
            return Err(bad(
                "this is a TorchScript archive (it has constants.pkl), not a checkpoint".into(),
            ));
        }
        if !is_data {
            continue;
        }
        if entry.compression() != CompressionMethod::Stored {
            return Err(bad(format!(
                "zip entry `{name}` is compressed ({:?}); torch writes stored entries, which we \
                 read in place",
                entry.compression()
            )));
        }
        let start = entry
            .data_start()
            .ok_or_else(|| bad(format!("zip entry `{name}` has no data offset")))?;
        let size = entry.size();
        if entry.compressed_size() != size {
            return Err(bad(format!(
                "zip entry `{name}` is stored but its sizes differ ({} vs {size})",
                entry.compressed_size()
            )));
        }
        let end = start
            .checked_add(size)
            .filter(|&e| e <= bytes.len() as u64)
            .ok_or_else(|| {
                bad(format!(
                    "zip entry `{name}` claims bytes {start}..{} but the file has {} (truncated?)",
                    start.saturating_add(size),
                    bytes.len()
                ))
            })?;
        let range = start..end;
        if rest == "data.pkl" {
            pickle_range = Some(range);
        } else if rest == "byteorder" {
            let order = &bytes[range.start as usize..range.end as usize];
            if order != b"little" {
                return Err(bad(format!(
                    "byte order `{}` is not supported (only little-endian checkpoints)",
                    String::from_utf8_lossy(order)
                )));
            }
        } else if let Some(key) = rest.strip_prefix("data/") {
            if storages.insert(key.to_string(), range).is_some() {
                return Err(bad(format!("zip entry `{name}` appears twice")));
            }
        }
    }

    let pr = pickle_range.ok_or_else(|| {
        bad("zip archive has no `<folder>/data.pkl`: not a torch checkpoint".into())
    })?;
    let parsed = pickle::parse(&bytes[pr.start as usize..pr.end as usize], path, pr.start)?;
    for s in &parsed.storages {
        let range = storages.get_mut(&s.key).ok_or_else(|| {
            bad(format!(
                "the object refers to storage `{}`, but there is no entry data/{}",
                s.key, s.key
            ))
        })?;
        let es = s.dtype.map(|d| d.size() as u64).unwrap_or(1);
        let need = s.numel.checked_mul(es);
        if need.map_or(true, |n| n > range.end - range.start) {
            return Err(bad(format!(
                "storage `{}` should hold {} elements of {} bytes but its entry has {} bytes",
                s.key,
                s.numel,
                es,
                range.end - range.start
            )));
        }
        // Tensors are checked against what the storage declares, not against any slack.
        if let Some(n) = need {
            range.end = range.start + n;
        }
    }
    Ok((parsed.value, storages))
}
