//! The legacy stream flavour (`_use_new_zipfile_serialization=False`): five pickles back to
//! back (magic, protocol, sys_info, the object, the storage keys), then for each key an i64
//! element count and the raw little-endian elements. Walking the counts locates every storage.

use std::collections::HashMap;
use std::ops::Range;
use std::path::Path;
use std::rc::Rc;

use crate::error::{Error, Result};
use crate::names::{shorten, MAX_NAME_BYTES};
use crate::pickle::{self, Op};
use crate::value::{Arena, StorageRef, Value};

/// torch's magic number, as the first pickle's LONG1 holds it (10 little-endian bytes).
const MAGIC: &[u8; 10] = &[0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19];
/// How a legacy file begins: pickle protocol 2, then LONG1 of the magic number. Defined once;
/// the fuzz targets use it too.
pub const PREFIX: &[u8] = &prefix();

const fn prefix() -> [u8; 14] {
    let mut p = [0u8; 14];
    p[0] = Op::Proto.byte();
    p[1] = 2;
    p[2] = Op::Long1.byte();
    p[3] = MAGIC.len() as u8;
    let mut i = 0;
    while i < MAGIC.len() {
        p[4 + i] = MAGIC[i];
        i += 1;
    }
    p
}

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
    let proto = next(&mut pos)?;
    let sys = next(&mut pos)?;
    check_preamble(&magic.value, &proto.value, &sys.value).map_err(bad)?;
    let object = next(&mut pos)?;
    let key_list = next(&mut pos)?;
    let keys = storage_keys(&key_list.value).map_err(bad)?;
    let storages = walk_storages(bytes, pos as u64, &keys, &object.storages).map_err(bad)?;
    let mut arena = Arena::default();
    for p in [magic, proto, sys, key_list] {
        arena.extend(p.arena);
    }
    arena.extend(object.arena);
    Ok((object.value, arena, storages))
}

/// The first three pickles: torch's magic number, protocol version 1001, little-endian data.
fn check_preamble(magic: &Value, proto: &Value, sys: &Value) -> Result<(), String> {
    match magic {
        Value::BigInt(b) if b.as_slice() == MAGIC.as_slice() => {}
        other => {
            return Err(format!(
                "legacy torch file with a wrong magic number ({})",
                other.describe()
            ))
        }
    }
    if proto.as_int() != Some(PROTOCOL_VERSION) {
        return Err(format!(
            "legacy protocol version {} (expected {PROTOCOL_VERSION})",
            proto.describe()
        ));
    }
    if let Some(Value::Bool(false)) = sys.get("little_endian") {
        return Err("big-endian legacy checkpoints are not supported".into());
    }
    Ok(())
}

/// The fifth pickle: the storage keys, in the order their data follows. Shared, not copied: the
/// list may name one memoized string a million times.
fn storage_keys(list: &Value) -> Result<Vec<Rc<str>>, String> {
    let Value::List(l) = list else {
        return Err(format!(
            "expected the list of storage keys after the object, found {}",
            list.describe()
        ));
    };
    l.borrow()
        .iter()
        .map(|k| match k {
            Value::Str(s) if s.len() <= MAX_NAME_BYTES => Ok(Rc::clone(s)),
            Value::Str(s) => Err(format!(
                "legacy storage key `{}` is longer than {MAX_NAME_BYTES} bytes",
                shorten(s)
            )),
            _ => Err("legacy storage key list holds a non-string".into()),
        })
        .collect()
}

/// Locate every storage by walking the element counts from `at`: each key's i64 count must
/// equal what the object declares, and its bytes must lie inside the file. Every storage the
/// object uses must be found.
fn walk_storages(
    bytes: &[u8],
    mut at: u64,
    keys: &[Rc<str>],
    used: &[Rc<StorageRef>],
) -> Result<HashMap<String, Range<u64>>, String> {
    // Element size and count per root key, from the persistent ids the object used.
    let elem: HashMap<&str, (u64, u64)> = used
        .iter()
        .map(|s| (&*s.key, (s.dtype.map_or(1, |d| d.size() as u64), s.numel)))
        .collect();
    let len = bytes.len() as u64;
    let mut storages = HashMap::new();
    for key in keys {
        let (es, declared) = *elem.get(&**key).ok_or_else(|| {
            format!("storage `{key}` is listed but no tensor of the object uses it")
        })?;
        let count = element_count(bytes, at, key)?;
        if count != declared {
            return Err(format!(
                "storage `{key}` holds {count} elements but the object declares {declared}"
            ));
        }
        let start = at + 8;
        let end = count
            .checked_mul(es)
            .and_then(|b| start.checked_add(b))
            .filter(|&e| e <= len)
            .ok_or_else(|| {
                format!(
                    "storage `{key}` claims {count} elements of {es} bytes from byte {start}, past \
                     the end of the file at {len} (truncated?)"
                )
            })?;
        if storages.insert(key.to_string(), start..end).is_some() {
            return Err(format!("storage `{key}` is listed twice"));
        }
        at = end;
    }
    if let Some(s) = used.iter().find(|s| !storages.contains_key(&*s.key)) {
        return Err(format!(
            "the object refers to storage `{}`, which the file does not hold",
            shorten(&s.key)
        ));
    }
    Ok(storages)
}

/// The little-endian i64 element count at byte `at`.
fn element_count(bytes: &[u8], at: u64, key: &str) -> Result<u64, String> {
    let len = bytes.len() as u64;
    let field = at
        .checked_add(8)
        .filter(|&e| e <= len)
        .and_then(|e| bytes.get(at as usize..e as usize))
        .ok_or_else(|| {
            format!(
                "file ends at byte {len} before the element count of storage `{key}` (truncated?)"
            )
        })?;
    let mut n = [0u8; 8];
    n.copy_from_slice(field);
    let count = i64::from_le_bytes(n);
    u64::try_from(count)
        .map_err(|_| format!("storage `{key}` has a negative element count {count}"))
}
