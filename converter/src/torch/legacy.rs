//! The legacy stream flavour (`_use_new_zipfile_serialization=False`): five pickles back to
//! back (magic, protocol, sys_info, the object, the storage keys), then for each key an i64
//! element count and the raw little-endian elements. Walking the counts locates every storage.

use std::collections::HashMap;
use std::ops::Range;
use std::path::Path;

use super::pickle;
use super::value::{Arena, Value};
use crate::error::{Error, Result};

const MAGIC: &[u8] = &[0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19];
const PROTOCOL_VERSION: i64 = 1001;

pub(super) fn read(
    bytes: &[u8],
    path: &Path,
) -> Result<(Value, Arena, HashMap<String, Range<u64>>)> {
    let bad = |msg: String| Error::format(path, msg);
    let mut pos = 0usize;
    let next = |pos: &mut usize| -> Result<pickle::Parsed> {
        let p = pickle::parse(&bytes[*pos..], path, *pos as u64)?;
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
    let keys: Vec<String> = match &key_list.value {
        Value::List(l) => l
            .borrow()
            .iter()
            .map(|k| k.as_str().map(str::to_string))
            .collect::<Option<_>>()
            .ok_or_else(|| bad("legacy storage key list holds a non-string".into()))?,
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
        elem.insert(s.key.as_str(), (es, s.numel));
    }
    let mut storages = HashMap::new();
    let mut at = pos as u64;
    let len = bytes.len() as u64;
    for key in &keys {
        let (es, declared) = *elem.get(key.as_str()).ok_or_else(|| {
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
        if storages.insert(key.clone(), start..end).is_some() {
            return Err(bad(format!("storage `{key}` is listed twice")));
        }
        at = end;
    }
    for s in &object.storages {
        if !storages.contains_key(&s.key) {
            return Err(bad(format!(
                "the object refers to storage `{}`, which the file does not hold",
                s.key
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
