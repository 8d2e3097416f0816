//! Writing the output: a streaming safetensors writer that hashes as it writes, config.json,
//! SHA256SUMS, and the directory protocol that leaves either the complete result or nothing.
//!
//! The `safetensors` crate's writer wants every tensor's bytes up front (or a `View` per tensor,
//! all alive at once); we know every shape and offset from the plan, so we write the header
//! first and then one merged tensor at a time, holding only a few tensors in memory, while a
//! writer thread and a hashing thread consume them. Tests read the result back with the
//! `safetensors` crate.

use std::borrow::Cow;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::ops::Range;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{channel, sync_channel, Sender, SyncSender};
use std::sync::{Arc, Mutex};

use cpm_torch::Dtype;
use sha2::{Digest, Sha256};

use crate::elements::count_non_finite;

use crate::checkpoint::weights::Rank;
use crate::error::{Error, Result};
use crate::plan::Plan;

pub mod shards;
mod staging;
pub(crate) use staging::{check_outside_inputs, check_target, Staging};

/// The safetensors header for `plan`, padded with spaces to a multiple of 8 bytes.
pub(crate) fn safetensors_header(plan: &Plan, metadata: &[(String, String)]) -> Result<Vec<u8>> {
    let mut map = serde_json::Map::new();
    let meta: serde_json::Map<String, serde_json::Value> = metadata
        .iter()
        .map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone())))
        .collect();
    map.insert("__metadata__".into(), serde_json::Value::Object(meta));
    let mut offset = 0u64;
    for e in &plan.entries {
        let end = offset + e.nbytes();
        map.insert(
            e.target.clone(),
            serde_json::json!({
                "dtype": e.dtype.safetensors_name(),
                "shape": e.shape,
                "data_offsets": [offset, end],
            }),
        );
        offset = end;
    }
    let mut json = serde_json::to_vec(&serde_json::Value::Object(map))
        .map_err(|e| Error::internal(format!("cannot encode the safetensors header: {e}")))?;
    while json.len() % 8 != 0 {
        json.push(b' ');
    }
    let mut out = Vec::with_capacity(8 + json.len());
    out.extend_from_slice(&(json.len() as u64).to_le_bytes());
    out.extend_from_slice(&json);
    Ok(out)
}

/// A piece of the model file on its way to the disk: borrowed from an input map, a range of a
/// buffer shared between the writer and the hasher, or a marker carrying an action to run once
/// both consumers are past it ([`Sink::after_written`]).
pub(crate) enum Chunk<'a> {
    Borrowed(&'a [u8]),
    Shared(Arc<Vec<u8>>, Range<usize>),
    Marker(Arc<AfterWritten<'a>>),
    /// To the hasher only: count the NaN/Inf elements (of this dtype) of the bytes that follow
    /// into this counter, until the next `Count` (`None`: stop counting).
    Count(Option<(Dtype, Arc<AtomicU64>)>),
}

impl Chunk<'_> {
    fn bytes(&self) -> &[u8] {
        match self {
            Chunk::Borrowed(b) => b,
            Chunk::Shared(v, r) => &v[r.clone()],
            Chunk::Marker(_) | Chunk::Count(_) => &[],
        }
    }
}

/// An action that runs when the last reference to it is dropped. The writer and the hasher each
/// get one clone and drop it after processing every chunk queued before it, so the action runs
/// exactly once, when both are done with those chunks (or when an aborted stream drops them).
pub(crate) struct AfterWritten<'a>(Mutex<Option<Box<dyn FnOnce() + Send + 'a>>>);

impl Drop for AfterWritten<'_> {
    fn drop(&mut self) {
        // The mutex only makes the action shareable between threads; it is never locked, so it
        // cannot be poisoned, but take the action either way.
        let action = match self.0.get_mut() {
            Ok(a) => a.take(),
            Err(poisoned) => poisoned.into_inner().take(),
        };
        if let Some(f) = action {
            f();
        }
    }
}

/// Chunks larger than this are split, so the writer and the hasher work on a tensor in parallel.
const CHUNK: usize = 1 << 20;
/// Chunks in flight per consumer: bounds memory while keeping both consumers busy.
const QUEUE: usize = 32;

/// Where the producer of the model file puts its bytes.
pub(crate) struct Sink<'a> {
    to_writer: SyncSender<Chunk<'a>>,
    to_hasher: SyncSender<Chunk<'a>>,
    /// Buffers handed to the consumers, recycled once both are done with them: fresh large
    /// allocations cost a page fault per 4 KiB and an munmap, more than the transpose itself.
    pool: Vec<Arc<Vec<u8>>>,
}

/// Buffers kept for reuse.
const POOL: usize = 6;

impl<'a> Sink<'a> {
    /// A buffer of `n` bytes with unspecified contents, recycled when one is free.
    pub fn buffer(&mut self, n: usize) -> Vec<u8> {
        let free = self
            .pool
            .iter()
            .position(|b| Arc::strong_count(b) == 1 && b.capacity() >= n);
        let mut v = match free.map(|i| self.pool.swap_remove(i)).map(Arc::try_unwrap) {
            Some(Ok(v)) => v,
            _ => Vec::new(),
        };
        v.resize(n, 0);
        v.truncate(n);
        v
    }

    /// Queue `bytes` for writing and hashing, in order.
    pub fn put(&mut self, bytes: Cow<'a, [u8]>) -> Result<()> {
        match bytes {
            Cow::Borrowed(b) => {
                for c in b.chunks(CHUNK) {
                    self.send(Chunk::Borrowed(c), Chunk::Borrowed(c))?;
                }
            }
            Cow::Owned(v) => {
                let n = v.len();
                let v = Arc::new(v);
                if self.pool.len() >= POOL {
                    // Forget the oldest recycled buffer; the consumers drop it when done.
                    self.pool.remove(0);
                }
                self.pool.push(v.clone());
                for start in (0..n).step_by(CHUNK) {
                    let r = start..(start + CHUNK).min(n);
                    self.send(
                        Chunk::Shared(v.clone(), r.clone()),
                        Chunk::Shared(v.clone(), r),
                    )?;
                }
            }
        }
        Ok(())
    }

    /// Run `f` once both consumers are done with everything put before this call: the writer has
    /// copied those bytes out of their source (into its buffer or the kernel) and the hasher has
    /// hashed them. The producer uses it to release a source tensor's mapped pages as soon as
    /// its last chunk is written. If the stream stops early (a consumer's error), `f` still runs,
    /// when the queued chunks are dropped. Costs no copy: one empty marker per consumer.
    pub fn after_written(&mut self, f: Box<dyn FnOnce() + Send + 'a>) -> Result<()> {
        let marker = Arc::new(AfterWritten(Mutex::new(Some(f))));
        self.send(Chunk::Marker(marker.clone()), Chunk::Marker(marker))
    }

    /// Count the NaN/Inf elements of the bytes put from now on into `counter` (the hasher
    /// counts them from the copy it hashes, in cache), until [`Sink::count`] is called again;
    /// `None` stops counting. The count is complete once the stream is.
    pub fn count(&mut self, what: Option<(Dtype, Arc<AtomicU64>)>) -> Result<()> {
        self.to_hasher
            .send(Chunk::Count(what))
            .map_err(|_| Error::internal("the hashing thread stopped"))
    }

    fn send(&self, w: Chunk<'a>, h: Chunk<'a>) -> Result<()> {
        // A closed channel means the consumer stopped on an error, which `stream_model` reports.
        self.to_writer
            .send(w)
            .map_err(|_| Error::internal("the writer thread stopped"))?;
        self.to_hasher
            .send(h)
            .map_err(|_| Error::internal("the hashing thread stopped"))?;
        Ok(())
    }
}

/// Write `path` from what `produce` puts into the sink, with writing and SHA-256 hashing each on
/// their own thread, overlapped with the producer's merging. Returns the hex hash and the size.
/// The file is fsynced before this returns; a stream that failed (or was interrupted) is not,
/// since its file is about to be removed.
pub(crate) fn stream_model<'a, F>(path: &Path, produce: F) -> Result<(String, u64)>
where
    F: FnOnce(&mut Sink<'a>) -> Result<()>,
{
    let file = File::create(path).map_err(|e| Error::io(path, "cannot create", e))?;
    let (to_writer, from_producer) = sync_channel::<Chunk<'a>>(QUEUE);
    let (to_hasher, for_hasher) = sync_channel::<Chunk<'a>>(QUEUE);
    let (to_releaser, releases) = channel::<Arc<AfterWritten<'a>>>();
    std::thread::scope(|s| {
        let writer = s.spawn(move || write_chunks(path, file, from_producer));
        let hasher = s.spawn(move || hash_chunks(for_hasher, to_releaser));
        // Releasing a tensor's source pages (munmap work) is done here, not on the hasher, which
        // is the slowest stage and should only hash.
        s.spawn(move || releases.into_iter().for_each(drop));
        let mut sink = Sink {
            to_writer,
            to_hasher,
            pool: Vec::new(),
        };
        let produced = produce(&mut sink);
        drop(sink);
        let written = writer.join().map_err(|_| {
            Error::internal(format!("{}: the writer thread panicked", path.display()))
        })?;
        let hash = hasher.join().map_err(|_| {
            Error::internal(format!("{}: the hashing thread panicked", path.display()))
        })?;
        // The writer's own error explains a producer's "writer stopped".
        let (file, n) = written?;
        produced?;
        file.sync_all()
            .map_err(|e| Error::io(path, "cannot sync", e))?;
        Ok((hash, n))
    })
}

/// The hashing thread: SHA-256 of every chunk, in order. Markers go on to the releasing thread,
/// so that when the hasher is the last to let go of one its action does not run here.
fn hash_chunks<'a>(
    chunks: std::sync::mpsc::Receiver<Chunk<'a>>,
    releaser: Sender<Arc<AfterWritten<'a>>>,
) -> String {
    let mut h = Sha256::new();
    let mut stage = vec![0u8; HASH_STAGE];
    let mut counting = None;
    for c in chunks {
        match c {
            // A send fails only once the releaser is gone; the marker is then dropped here.
            Chunk::Marker(m) => drop(releaser.send(m)),
            Chunk::Count(what) => counting = what,
            c => {
                let mut n = 0;
                for b in c.bytes().chunks(HASH_STAGE) {
                    let staged = &mut stage[..b.len()];
                    staged.copy_from_slice(b);
                    h.update(&*staged);
                    if let Some((dtype, _)) = &counting {
                        n += count_non_finite(staged, *dtype);
                    }
                }
                if let Some((_, counter)) = &counting {
                    counter.fetch_add(n, Ordering::Relaxed);
                }
            }
        }
    }
    hex(&h.finalize())
}

/// Bytes staged in a buffer that stays in L1 before they are hashed. SHA-NI hashing straight
/// out of a mapped input stalls on its loads (435 MB: 0.37 s of CPU here); a streaming copy,
/// which the prefetchers keep fed, then hashing from L1 costs 0.26 s in all, as fast as
/// hashing a buffer `read` filled.
const HASH_STAGE: usize = 16 << 10;

/// The writer thread: every chunk to `file` in order, then the buffer flushed (not synced).
fn write_chunks(
    path: &Path,
    file: File,
    chunks: std::sync::mpsc::Receiver<Chunk<'_>>,
) -> Result<(File, u64)> {
    let mut out = BufWriter::with_capacity(1 << 20, file);
    let mut n = 0u64;
    let mut flushed = 0u64;
    for c in chunks {
        out.write_all(c.bytes())
            .map_err(|e| Error::io(path, "cannot write", e))?;
        n += c.bytes().len() as u64;
        // Start writing back each window as soon as it is complete, so the final fsync finds
        // little left to do and dirty pages stay bounded.
        let in_kernel = n - out.buffer().len() as u64;
        if in_kernel >= flushed + WRITEBACK_WINDOW {
            writeback(out.get_ref(), flushed, in_kernel - flushed, false);
            if flushed >= 2 * WRITEBACK_WINDOW {
                writeback(out.get_ref(), 0, flushed - WRITEBACK_WINDOW, true);
            }
            flushed = in_kernel;
        }
    }
    let file = out
        .into_inner()
        .map_err(|e| Error::io(path, "cannot write", e.into_error()))?;
    Ok((file, n))
}

/// Bytes written between two writeback requests.
pub(crate) const WRITEBACK_WINDOW: u64 = 64 << 20;

/// Ask the kernel to start writing `len` bytes from `start` to disk, and with `wait` to finish
/// doing so first. Best effort: the final fsync reports any I/O error.
#[cfg(target_os = "linux")]
pub(crate) fn writeback(file: &File, start: u64, len: u64, wait: bool) {
    use std::os::fd::AsRawFd;
    let flags = if wait {
        libc::SYNC_FILE_RANGE_WAIT_BEFORE
            | libc::SYNC_FILE_RANGE_WRITE
            | libc::SYNC_FILE_RANGE_WAIT_AFTER
    } else {
        libc::SYNC_FILE_RANGE_WRITE
    };
    let (Ok(start), Ok(len)) = (i64::try_from(start), i64::try_from(len)) else {
        return;
    };
    // SAFETY: a plain system call on a file descriptor we own; it touches no memory of ours.
    unsafe {
        libc::sync_file_range(file.as_raw_fd(), start, len, flags);
    }
}

#[cfg(not(target_os = "linux"))]
pub(crate) fn writeback(_file: &File, _start: u64, _len: u64, _wait: bool) {}

/// Lower-case hexadecimal, as sha256sum prints a digest.
pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Write a small file whole and fsync it, returning its SHA-256.
pub(crate) fn small_file(path: &Path, bytes: &[u8]) -> Result<String> {
    let mut f = File::create(path).map_err(|e| Error::io(path, "cannot create", e))?;
    f.write_all(bytes)
        .map_err(|e| Error::io(path, "cannot write", e))?;
    f.sync_all()
        .map_err(|e| Error::io(path, "cannot sync", e))?;
    Ok(hex(&Sha256::digest(bytes)))
}

/// `sha256sum -c` format: `<hex>  <name>` per line, names sorted.
pub(crate) fn sha256sums(mut entries: Vec<(String, String)>) -> String {
    entries.sort_by(|a, b| a.0.cmp(&b.0));
    entries
        .iter()
        .map(|(name, h)| format!("{h}  {name}\n"))
        .collect()
}

/// One file of the output directory, as the summary reports it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct OutputFile {
    /// Its path relative to OUT_DIR, as SHA256SUMS lists it.
    pub name: String,
    /// Its size.
    pub bytes: u64,
    /// Its SHA-256, lowercase hex.
    pub sha256: String,
}

/// The `__metadata__` of the model file. Shared by the writer and `--dry-run`, so the size the
/// dry run reports is the size of the header the writer produces.
pub(crate) fn model_metadata(ranks: &[Rank], plan: &Plan) -> Vec<(String, String)> {
    let files: Vec<serde_json::Value> = ranks
        .iter()
        .map(|r| serde_json::json!({"name": r.display, "bytes": r.file.file_len(), "format": r.file.format.name()}))
        .collect();
    vec![
        ("format".to_string(), "pt".to_string()),
        ("source_variant".to_string(), plan.variant.clone()),
        (
            "source_files".to_string(),
            serde_json::Value::Array(files).to_string(),
        ),
        (
            "model_parallel_size".to_string(),
            plan.model_parallel.to_string(),
        ),
        (
            "converter".to_string(),
            format!("cpm-convert {}", env!("CARGO_PKG_VERSION")),
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// The action waits for the last of the two consumers' clones, whichever drops last.
    #[test]
    fn after_written_action_runs_once_when_both_consumers_dropped_their_marker() {
        let runs = AtomicUsize::new(0);
        let marker = Arc::new(AfterWritten(Mutex::new(Some(Box::new(|| {
            runs.fetch_add(1, Ordering::SeqCst);
        })))));
        let (writer, hasher) = (Chunk::Marker(marker.clone()), Chunk::Marker(marker));
        assert!(writer.bytes().is_empty() && hasher.bytes().is_empty());
        drop(hasher);
        assert_eq!(
            runs.load(Ordering::SeqCst),
            0,
            "ran before the writer was done"
        );
        drop(writer);
        assert_eq!(runs.load(Ordering::SeqCst), 1);
    }

    /// Through the real stream: when the action runs, everything put before it is in the file
    /// (so the source it came from may be released), and it runs exactly once.
    #[test]
    fn after_written_runs_after_the_bytes_before_it_are_written() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("model.safetensors");
        let first = vec![7u8; 100];
        let big = vec![9u8; 3 << 20];
        let seen = Mutex::new(Vec::new());
        let (hash, n) = stream_model(&path, |sink| {
            sink.put(Cow::Borrowed(&first))?;
            sink.put(Cow::Owned(big.clone()))?;
            sink.after_written(Box::new(|| {
                let len = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
                seen.lock().unwrap().push(len);
            }))?;
            sink.put(Cow::Borrowed(&big))
        })
        .unwrap();
        assert_eq!(n, 100 + 2 * (3 << 20));
        let seen = seen.into_inner().unwrap();
        assert_eq!(seen.len(), 1, "ran {} times", seen.len());
        // The writer may be further on when the hasher, too, is done; never behind.
        assert!(
            seen[0] >= 100 + (3 << 20),
            "ran with {} bytes written",
            seen[0]
        );
        let mut all = first.clone();
        all.extend_from_slice(&big);
        all.extend_from_slice(&big);
        assert_eq!(hash, hex(&Sha256::digest(&all)));
    }

    /// A stream that fails still runs the actions queued in it (a release is never lost).
    #[test]
    fn after_written_runs_when_the_writer_fails() {
        let full = Path::new("/dev/full");
        if !full.exists() {
            return;
        }
        // Small pieces: the writer buffers 1 MiB before its first write fails.
        let data = vec![1u8; 64 << 10];
        let runs = AtomicUsize::new(0);
        let mut attached = 0;
        let r = stream_model(full, |sink| {
            for _ in 0..64 {
                sink.put(Cow::Borrowed(&data))?;
                attached += 1;
                sink.after_written(Box::new(|| {
                    runs.fetch_add(1, Ordering::SeqCst);
                }))?;
            }
            Ok(())
        });
        assert!(r.is_err(), "writing to /dev/full succeeded");
        assert!(attached > 0);
        assert_eq!(runs.load(Ordering::SeqCst), attached, "an action was lost");
    }
}
