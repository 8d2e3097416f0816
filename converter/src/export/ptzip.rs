//! The zip half of our `torch.save`: the archive torch writes (records under a folder named after
//! the file's stem: `data.pkl`, `.format_version`, `.storage_alignment`, `byteorder`, one STORED
//! `data/N` per storage with its data at a 64-byte aligned offset, `version`), written as a
//! stream: the header records first, each storage appended as it is produced, the central
//! directory last. Unlike torch we write each record's CRC and sizes into its local header (we
//! hold the bytes before writing them), so no data descriptors, and no random
//! `.data/serialization_id`: the same tensors give the same bytes. ZIP64 records appear only
//! where an offset or size passes 4 GiB, as zip tools expect.

use std::borrow::Cow;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::error::{Error, Result};

/// torch aligns storage data to 64 bytes (`.storage_alignment`).
pub const ALIGN: u64 = 64;
const U32_MAX: u64 = 0xffff_ffff;

/// One record, as the central directory lists it.
struct Record {
    name: String,
    crc: u32,
    size: u64,
    offset: u64,
}

/// A torch zip file being written.
pub struct PtWriter {
    path: PathBuf,
    stem: String,
    out: BufWriter<File>,
    hash: Sha256,
    pos: u64,
    records: Vec<Record>,
    storages: usize,
    /// Bytes handed to the disk so far (see `write`'s writeback windows).
    flushed: u64,
}

impl PtWriter {
    /// Create `path` and write its header records: `data.pkl` (the pickled object tree, whose
    /// tensors name storages `0..`), `.format_version`, `.storage_alignment`, `byteorder`.
    pub fn create(path: &Path, pickle: &[u8]) -> Result<PtWriter> {
        let stem = path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "archive".into());
        let file = File::create(path).map_err(|e| Error::io(path, "cannot create", e))?;
        let mut w = PtWriter {
            path: path.to_path_buf(),
            stem,
            out: BufWriter::with_capacity(4 << 20, file),
            hash: Sha256::new(),
            pos: 0,
            records: Vec::new(),
            storages: 0,
            flushed: 0,
        };
        w.record("data.pkl", &[Cow::Borrowed(pickle)])?;
        w.record(".format_version", &[Cow::Borrowed(b"1")])?;
        w.record(".storage_alignment", &[Cow::Borrowed(b"64")])?;
        w.record("byteorder", &[Cow::Borrowed(b"little")])?;
        Ok(w)
    }

    /// Append the next storage, `data/<n>` (n counts from 0), from its pieces in order.
    pub fn storage(&mut self, pieces: &[Cow<'_, [u8]>]) -> Result<()> {
        let name = format!("data/{}", self.storages);
        self.storages += 1;
        self.record(&name, pieces)
    }

    /// The storages appended so far.
    pub fn storages(&self) -> usize {
        self.storages
    }

    /// Write `version` and the central directory, flush and sync; the file's size and SHA-256.
    pub fn finish(mut self) -> Result<(u64, String)> {
        self.record("version", &[Cow::Borrowed(b"3\n")])?;
        let cd_start = self.pos;
        let records = std::mem::take(&mut self.records);
        for r in &records {
            let bytes = central_header(r);
            self.put(&bytes)?;
        }
        let end = end_records(records.len() as u64, cd_start, self.pos - cd_start);
        self.put(&end)?;
        let file = self
            .out
            .into_inner()
            .map_err(|e| Error::io(&self.path, "cannot write", e.into_error()))?;
        file.sync_all()
            .map_err(|e| Error::io(&self.path, "cannot sync", e))?;
        Ok((self.pos, crate::write::hex(&self.hash.finalize())))
    }

    fn record(&mut self, name: &str, pieces: &[Cow<'_, [u8]>]) -> Result<()> {
        let mut crc = crc32fast::Hasher::new();
        pieces.iter().for_each(|p| crc.update(p));
        let r = Record {
            name: format!("{}/{name}", self.stem),
            crc: crc.finalize(),
            size: pieces.iter().map(|p| p.len() as u64).sum(),
            offset: self.pos,
        };
        let header = local_header(&r);
        self.put(&header)?;
        for p in pieces {
            self.put(p)?;
        }
        self.records.push(r);
        Ok(())
    }

    fn put(&mut self, bytes: &[u8]) -> Result<()> {
        self.out
            .write_all(bytes)
            .map_err(|e| Error::io(&self.path, "cannot write", e))?;
        self.hash.update(bytes);
        self.pos += bytes.len() as u64;
        // As the safetensors writer does: start each window's writeback once it is complete
        // and wait for the one before, so the closing fsync is short and dirty pages bounded.
        let window = crate::write::WRITEBACK_WINDOW;
        let in_kernel = self.pos - self.out.buffer().len() as u64;
        if in_kernel >= self.flushed + window {
            let file = self.out.get_ref();
            crate::write::writeback(file, self.flushed, in_kernel - self.flushed, false);
            if self.flushed >= 2 * window {
                crate::write::writeback(file, 0, self.flushed - window, true);
            }
            self.flushed = in_kernel;
        }
        Ok(())
    }
}

/// The local file header of `r` (whose `name` is the full path), padded with an extra field
/// (id `FB`, as torch's) so that the data starts at a multiple of [`ALIGN`].
fn local_header(r: &Record) -> Vec<u8> {
    let big = r.size >= U32_MAX;
    let mut h = Vec::with_capacity(30 + r.name.len() + 84);
    h.extend_from_slice(&0x0403_4b50u32.to_le_bytes());
    h.extend_from_slice(&(if big { 45u16 } else { 20 }).to_le_bytes());
    h.extend_from_slice(&[0; 2]); // flags
    h.extend_from_slice(&[0; 2]); // STORED
    h.extend_from_slice(&[0; 4]); // time and date: none (torch writes 0 too)
    h.extend_from_slice(&r.crc.to_le_bytes());
    let size32 = if big { U32_MAX as u32 } else { r.size as u32 };
    h.extend_from_slice(&size32.to_le_bytes());
    h.extend_from_slice(&size32.to_le_bytes());
    h.extend_from_slice(&(r.name.len() as u16).to_le_bytes());
    let mut extra = Vec::new();
    if big {
        extra.extend_from_slice(&1u16.to_le_bytes());
        extra.extend_from_slice(&16u16.to_le_bytes());
        extra.extend_from_slice(&r.size.to_le_bytes());
        extra.extend_from_slice(&r.size.to_le_bytes());
    }
    let data_at = r.offset + 30 + r.name.len() as u64 + extra.len() as u64;
    let mut pad = (ALIGN - data_at % ALIGN) % ALIGN;
    if pad > 0 && pad < 4 {
        pad += ALIGN;
    }
    if pad > 0 {
        extra.extend_from_slice(b"FB");
        extra.extend_from_slice(&((pad - 4) as u16).to_le_bytes());
        extra.resize(extra.len() + pad as usize - 4, b'Z');
    }
    h.extend_from_slice(&(extra.len() as u16).to_le_bytes());
    h.extend_from_slice(r.name.as_bytes());
    h.extend_from_slice(&extra);
    h
}

fn central_header(r: &Record) -> Vec<u8> {
    let (big_size, big_offset) = (r.size >= U32_MAX, r.offset >= U32_MAX);
    let mut extra = Vec::new();
    if big_size || big_offset {
        let n = 8 * (2 * big_size as u16 + big_offset as u16);
        extra.extend_from_slice(&1u16.to_le_bytes());
        extra.extend_from_slice(&n.to_le_bytes());
        if big_size {
            extra.extend_from_slice(&r.size.to_le_bytes());
            extra.extend_from_slice(&r.size.to_le_bytes());
        }
        if big_offset {
            extra.extend_from_slice(&r.offset.to_le_bytes());
        }
    }
    let version: u16 = if extra.is_empty() { 20 } else { 45 };
    let mut h = Vec::with_capacity(46 + r.name.len() + extra.len());
    h.extend_from_slice(&0x0201_4b50u32.to_le_bytes());
    h.extend_from_slice(&version.to_le_bytes()); // made by
    h.extend_from_slice(&version.to_le_bytes()); // needed
    h.extend_from_slice(&[0; 8]); // flags, STORED, time, date
    h.extend_from_slice(&r.crc.to_le_bytes());
    let size32 = r.size.min(U32_MAX) as u32;
    h.extend_from_slice(&size32.to_le_bytes());
    h.extend_from_slice(&size32.to_le_bytes());
    h.extend_from_slice(&(r.name.len() as u16).to_le_bytes());
    h.extend_from_slice(&(extra.len() as u16).to_le_bytes());
    h.extend_from_slice(&[0; 10]); // comment length, disk, internal and external attributes
    h.extend_from_slice(&(r.offset.min(U32_MAX) as u32).to_le_bytes());
    h.extend_from_slice(r.name.as_bytes());
    h.extend_from_slice(&extra);
    h
}

/// The end of central directory record, preceded by the ZIP64 record and its locator when a
/// count, size or offset does not fit the classic one.
fn end_records(entries: u64, cd_start: u64, cd_size: u64) -> Vec<u8> {
    let zip64 = entries >= 0xffff || cd_start >= U32_MAX || cd_size >= U32_MAX;
    let mut e = Vec::new();
    if zip64 {
        let at = cd_start + cd_size;
        e.extend_from_slice(&0x0606_4b50u32.to_le_bytes());
        e.extend_from_slice(&44u64.to_le_bytes());
        e.extend_from_slice(&45u16.to_le_bytes());
        e.extend_from_slice(&45u16.to_le_bytes());
        e.extend_from_slice(&[0; 8]); // this disk, the directory's disk
        e.extend_from_slice(&entries.to_le_bytes());
        e.extend_from_slice(&entries.to_le_bytes());
        e.extend_from_slice(&cd_size.to_le_bytes());
        e.extend_from_slice(&cd_start.to_le_bytes());
        e.extend_from_slice(&0x0706_4b50u32.to_le_bytes());
        e.extend_from_slice(&0u32.to_le_bytes());
        e.extend_from_slice(&at.to_le_bytes());
        e.extend_from_slice(&1u32.to_le_bytes());
    }
    let n16 = entries.min(0xffff) as u16;
    e.extend_from_slice(&0x0605_4b50u32.to_le_bytes());
    e.extend_from_slice(&[0; 4]);
    e.extend_from_slice(&n16.to_le_bytes());
    e.extend_from_slice(&n16.to_le_bytes());
    e.extend_from_slice(&(cd_size.min(U32_MAX) as u32).to_le_bytes());
    e.extend_from_slice(&(cd_start.min(U32_MAX) as u32).to_le_bytes());
    e.extend_from_slice(&0u16.to_le_bytes());
    e
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every record's data starts on a 64-byte boundary whatever the name length, and the local
    /// header's extra field says exactly how long the padding is.
    #[test]
    fn data_lands_on_64_byte_boundaries() {
        for (offset, name) in [
            (0u64, "a/data/0"),
            (7, "model_optim_rng/data/12"),
            (61, "x"),
        ] {
            let r = Record {
                name: name.into(),
                crc: 0,
                size: 5,
                offset,
            };
            let h = local_header(&r);
            assert_eq!((offset + h.len() as u64) % ALIGN, 0, "{name} at {offset}");
            let extra = u16::from_le_bytes([h[28], h[29]]) as usize;
            assert_eq!(h.len(), 30 + name.len() + extra);
        }
    }
}
