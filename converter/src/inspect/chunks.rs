//! A torch Distributed Checkpoint's own layout: every stored tensor's global shape and chunks
//! (which data file, which bytes), and what a conversion would read of each data file.

use std::collections::{BTreeMap, HashSet};
use std::fmt::Write as _;

use serde::Serialize;

use crate::checkpoint::weights::Rank;
use crate::plan::Plan;
use crate::table;

/// One chunk of a stored tensor.
#[derive(Debug, Clone, Serialize)]
pub struct ChunkRow {
    /// Where the chunk starts in the global tensor, per dimension.
    pub offsets: Vec<u64>,
    /// The chunk's shape.
    pub sizes: Vec<u64>,
    /// The data file (`__0_0.distcp`) and the byte range of its item.
    pub file: String,
    /// First byte of the item in the data file.
    pub start: u64,
    /// One past its last byte.
    pub end: u64,
}

/// One tensor as the checkpoint stores it.
#[derive(Debug, Clone, Serialize)]
pub struct StoredTensor {
    /// Its fully qualified name in the checkpoint's metadata.
    pub name: String,
    /// Its global shape.
    pub shape: Vec<u64>,
    /// Its chunks, as the metadata lists them.
    pub chunks: Vec<ChunkRow>,
    /// Whether a conversion reads it (the plan writes it, or checks it equals what it writes).
    pub read: bool,
}

/// One data file: its items' bytes, and those a conversion reads.
#[derive(Debug, Clone, Serialize)]
pub struct DataFile {
    /// Its name (`__0_0.distcp`).
    pub name: String,
    /// Bytes of all the tensor items stored in it.
    pub item_bytes: u64,
    /// Of those, the bytes a conversion reads.
    pub read_bytes: u64,
}

/// A DCP input's tensors and data files.
#[derive(Debug, Clone, Serialize)]
pub struct Chunks {
    /// Every stored tensor, in the metadata's order.
    pub tensors: Vec<StoredTensor>,
    /// Every data file the chunks name.
    pub data_files: Vec<DataFile>,
}

/// The chunk layout of the first DCP file among `ranks`, if any; `plan` says what is read.
pub fn chunks(ranks: &[Rank], plan: Option<&Plan>) -> Option<Chunks> {
    let (i, dcp) = ranks
        .iter()
        .enumerate()
        .find_map(|(i, r)| r.file.dcp().map(|d| (i, d)))?;
    let mut used: HashSet<&str> = HashSet::new();
    for p in plan.iter() {
        let entries = p.entries.iter().chain(p.checks.iter().map(|c| &c.entry));
        for e in entries {
            for part in e.sources.iter().filter(|s| s.rank == i) {
                used.insert(&part.tensor.storage_key);
            }
        }
        // A tied head is read once, to prove it equals the embedding.
        let weights = ranks[i].weights.iter();
        let copies = weights.filter(|(n, _)| p.tied_copies.contains(n));
        used.extend(copies.map(|(_, t)| &*t.storage_key));
    }
    let mut files: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    let tensors = dcp
        .describe()
        .into_iter()
        .map(|(name, shape, chunks)| {
            let read = used.contains(name.as_str());
            let chunks = chunks
                .into_iter()
                .map(|(c, file, range)| {
                    let f = files.entry(file.clone()).or_default();
                    let n = range.end - range.start;
                    f.0 = f.0.saturating_add(n);
                    if read {
                        f.1 = f.1.saturating_add(n);
                    }
                    ChunkRow {
                        offsets: c.offsets,
                        sizes: c.sizes,
                        file,
                        start: range.start,
                        end: range.end,
                    }
                })
                .collect();
            StoredTensor {
                name,
                shape,
                chunks,
                read,
            }
        })
        .collect();
    let data_files = files
        .into_iter()
        .map(|(name, (item_bytes, read_bytes))| DataFile {
            name,
            item_bytes,
            read_bytes,
        })
        .collect();
    Some(Chunks {
        tensors,
        data_files,
    })
}

/// The tables `cpm-inspect` prints for a DCP input.
pub fn text(c: &Chunks) -> String {
    let cells: Vec<Vec<String>> = c
        .tensors
        .iter()
        .map(|t| {
            let mut files: Vec<&str> = t.chunks.iter().map(|c| c.file.as_str()).collect();
            files.sort_unstable();
            files.dedup();
            vec![
                t.name.clone(),
                table::shape(&t.shape),
                t.chunks.len().to_string(),
                files.join(" "),
                if t.read { "yes" } else { "no" }.to_string(),
            ]
        })
        .collect();
    let mut out = table::render(
        &["STORED TENSOR", "SHAPE", "CHUNKS", "FILES", "READ"],
        &cells,
    );
    out.push('\n');
    let files: Vec<Vec<String>> = c
        .data_files
        .iter()
        .map(|f| {
            vec![
                f.name.clone(),
                f.item_bytes.to_string(),
                f.read_bytes.to_string(),
            ]
        })
        .collect();
    out.push_str(&table::render(
        &["DATA FILE", "ITEM BYTES", "A CONVERSION READS"],
        &files,
    ));
    let chunks: usize = c.tensors.iter().map(|t| t.chunks.len()).sum();
    let _ = writeln!(
        out,
        "{} stored tensors in {chunks} chunks over {} data files (one per rank and writer thread)",
        c.tensors.len(),
        c.data_files.len()
    );
    out
}
