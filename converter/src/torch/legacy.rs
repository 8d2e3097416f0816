//! The legacy stream flavour (`_use_new_zipfile_serialization=False`): five pickles back to
//! back (magic, protocol, sys_info, the object, the storage keys), then for each key an i64
//! element count and the raw little-endian elements. Walking the counts locates every storage.

use std::collections::HashMap;
use std::ops::Range;
use std::path::Path;
use std::rc::Rc;

use super::pickle;
use super::value::{shorten, Arena, Value, MAX_NAME_BYTES};
use crate::error::{Error, Result};

/// How a legacy file begins: pickle protocol 2 (`\x80\x02`), then LONG1 of 10 bytes
/// (`\x8a\x0a`) holding torch's magic number. Defined once; the fuzz targets use it too.
pub const PREFIX: &[u8] = b"\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19";
/// The magic number itself, as the first pickle's integer bytes (little-endian).
const MAGIC: &[u8] = PREFIX.split_at(4).1;
const PROTOCOL_VERSION: i64 = 1001;

pub(super) fn read(
    bytes: &[u8],
    path: &Path,
) -> Result<(Value, Arena, HashMap<String, Range<u64>>)> {
    let bad = |msg: String| Error::format(path, msg);
    let mut pos = 0usize;
    // One budget for the five pickles: each alone could otherwise cost what the file allows.
    let mut budget = pickle::Budget::for_bytes(bytes.len());
    let mut next = |pos: &mut usize| -> Result<pickle::Parsed> {
        let p = pickle::parse_within(&bytes[*pos..], path, *pos as u64, &mut budget)?;
        *pos += p.consumed;
        Ok(p)
    };

    let magic = next(&mut pos)?;
    match &magic.value {
        Value::BigInt(b) if b.as_slice() == MAGIC => {}
        other => {
            return Err(bad(format!(
                "legacy torch file with a wrong magic number ({})",
                other.describe()
            )))
        }
    }
    let proto = next(&mut pos)?;
    if proto.value.as_int() != Some(PROTOCOL_VERSION) {
        return Err(bad(format!(
            "legacy protocol version {} (expected {PROTOCOL_VERSION})",
            proto.value.describe()
        )));
    }
    let sys = next(&mut pos)?;
    if let Some(Value::Bool(false)) = sys.value.get("little_endian") {
        return Err(bad("big-endian legacy checkpoints are not supported".into()));
    }
    let object = next(&mut pos)?;
    let key_list = next(&mut pos)?;
    // Shared, not copied: the list may name one memoized string a million times.
    let keys: Vec<Rc<str>> = match &key_list.value {
        Value::List(l) => l
            .borrow()
            .iter()
            .map(|k| match k {
                Value::Str(s) if s.len() <= MAX_NAME_BYTES => Ok(Rc::clone(s)),
                Value::Str(s) => Err(bad(format!(
                    "legacy storage key `{}` is longer than {MAX_NAME_BYTES} bytes",
                    shorten(s)
                ))),
                _ => Err(bad("legacy storage key list holds a non-string".into())),
            })
            .collect::<Result<_>>()?,
        other => {
            return Err(bad(format!(
                "expected the list of storage keys after the object, found {}",
                other.describe()
            )))
        }
    };

    // Element size per root key, from the persistent ids the object used.
    let mut elem: HashMap<&str, (u64, u64)> = HashMap::new();
    for s in &object.storages {
        let es = s.dtype.map(|d| d.size() as u64).unwrap_or(1);
        elem.insert(&*s.key, (es, s.numel));
    }
    let mut storages = HashMap::new();
    let mut at = pos as u64;
    let len = bytes.len() as u64;
    for key in &keys {
        let (es, declared) = *elem.get(&**key).ok_or_else(|| {
            bad(format!(
                "storage `{key}` is listed but no tensor of the object uses it"
            ))
        })?;
        if at.checked_add(8).map_or(true, |e| e > len) {
            return Err(bad(format!(
                "file ends at byte {len} before the element count of storage `{key}` (truncated?)"
            )));
        }
        let mut n = [0u8; 8];
        n.copy_from_slice(&bytes[at as usize..at as usize + 8]);
        let count = i64::from_le_bytes(n);
        let count = u64::try_from(count).map_err(|_| {
            bad(format!(
                "storage `{key}` has a negative element count {count}"
            ))
        })?;
        if count != declared {
            return Err(bad(format!(
                "storage `{key}` holds {count} elements but the object declares {declared}"
            )));
        }
        let start = at + 8;
        let end = count
            .checked_mul(es)
            .and_then(|b| start.checked_add(b))
            .filter(|&e| e <= len)
            .ok_or_else(|| {
                bad(format!(
                    "storage `{key}` claims {count} elements of {es} bytes from byte {start}, past the \
                     end of the file at {len} (truncated?)"
                ))
            })?;
        if storages.insert(key.to_string(), start..end).is_some() {
            return Err(bad(format!("storage `{key}` is listed twice")));
        }
        at = end;
    }
    for s in &object.storages {
        if !storages.contains_key(&*s.key) {
            return Err(bad(format!(
                "the object refers to storage `{}`, which the file does not hold",
                shorten(&s.key)
            )));
        }
    }
    let mut arena = Arena::default();
    for p in [magic, proto, sys, key_list] {
        arena.extend(p.arena);
    }
    arena.extend(object.arena);
    Ok((object.value, arena, storages))
}
