//! `cpm-tokenize`'s work: lines in, one output line per input line, in order.
//!
//! Input is read in batches of at most [`BATCH_LINES`] lines or [`BATCH_BYTES`] bytes (whichever
//! comes first, a longer single line is one batch), so memory stays bounded by the batch and the
//! longest line. A batch is split into one contiguous chunk per thread; each thread writes its
//! chunk's output into its own buffer, and the buffers are written in input order, so the output
//! never depends on the thread count. Processing stops at the first bad line: the lines before
//! it are written, then the error names the line.

use std::io::{BufRead, Write};

use crate::error::{Error, Result};
use crate::CpmTokenizer;

/// Most lines in one batch.
pub const BATCH_LINES: usize = 4096;
/// Most bytes in one batch (a single longer line is a batch of its own).
pub const BATCH_BYTES: usize = 4 << 20;

/// What each line is and what is printed for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Options {
    /// Lines are JSON strings (encode) or JSON arrays of ids (decode); output likewise.
    pub jsonl: bool,
    /// Ids in, text out.
    pub decode: bool,
    /// Print pieces instead of ids (encode only).
    pub pieces: bool,
    /// Worker threads (at least 1).
    pub threads: usize,
}

/// Streams `input` to `output` as `opts` says.
pub fn run(
    tok: &CpmTokenizer,
    mut input: impl BufRead,
    output: impl Write,
    opts: &Options,
) -> Result<()> {
    let mut out = std::io::BufWriter::with_capacity(1 << 16, output);
    let mut first_line = 1u64;
    loop {
        let batch = read_batch(&mut input)?;
        if batch.is_empty() {
            break;
        }
        let n = batch.len() as u64;
        for (buf, err) in process(tok, &batch, first_line, opts) {
            out.write_all(&buf).map_err(Error::Output)?;
            if let Some(e) = err {
                out.flush().map_err(Error::Output)?;
                return Err(e);
            }
        }
        first_line += n;
    }
    out.flush().map_err(Error::Output)
}

fn read_batch(input: &mut impl BufRead) -> Result<Vec<Vec<u8>>> {
    let mut batch = Vec::new();
    let mut bytes = 0;
    while batch.len() < BATCH_LINES && bytes < BATCH_BYTES {
        let mut line = Vec::new();
        if input.read_until(b'\n', &mut line).map_err(Error::Input)? == 0 {
            break;
        }
        if line.last() == Some(&b'\n') {
            line.pop();
        }
        bytes += line.len() + 1;
        batch.push(line);
    }
    Ok(batch)
}

type Chunk = (Vec<u8>, Option<Error>);

fn process(tok: &CpmTokenizer, batch: &[Vec<u8>], first_line: u64, opts: &Options) -> Vec<Chunk> {
    let threads = opts.threads.clamp(1, batch.len().max(1));
    let per = batch.len().div_ceil(threads);
    if threads == 1 {
        return vec![chunk(tok, batch, first_line, opts)];
    }
    std::thread::scope(|s| {
        let handles: Vec<_> = batch
            .chunks(per)
            .enumerate()
            .map(|(i, lines)| {
                s.spawn(move || chunk(tok, lines, first_line + (i * per) as u64, opts))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join().unwrap_or_else(|_| {
                    (
                        Vec::new(),
                        Some(Error::Output(std::io::Error::other(
                            "worker thread panicked",
                        ))),
                    )
                })
            })
            .collect()
    })
}

fn chunk(tok: &CpmTokenizer, lines: &[Vec<u8>], first_line: u64, opts: &Options) -> Chunk {
    let mut buf = Vec::with_capacity(lines.iter().map(|l| l.len() * 2).sum());
    for (i, line) in lines.iter().enumerate() {
        let no = first_line + i as u64;
        if let Err(reason) = one_line_into(tok, line, opts, &mut buf) {
            return (buf, Some(Error::BadLine { line: no, reason }));
        }
    }
    (buf, None)
}

/// Appends the output line for one input line, or says what is wrong with it.
fn one_line_into(
    tok: &CpmTokenizer,
    line: &[u8],
    opts: &Options,
    buf: &mut Vec<u8>,
) -> std::result::Result<(), String> {
    let line = std::str::from_utf8(line).map_err(|e| format!("not UTF-8 ({e})"))?;
    if opts.decode {
        let ids = parse_ids(line, opts.jsonl)?;
        let text = tok.decode(&ids).map_err(|e| e.to_string())?;
        if opts.jsonl {
            buf.extend_from_slice(serde_json::Value::String(text).to_string().as_bytes());
        } else {
            buf.extend_from_slice(text.as_bytes());
        }
    } else {
        let text: String;
        let text = if opts.jsonl {
            text = serde_json::from_str::<String>(line)
                .map_err(|e| format!("not a JSON string ({e})"))?;
            text.as_str()
        } else {
            line
        };
        let ids = tok.encode_with(text, true);
        write_encoded(tok, &ids, opts, buf);
    }
    buf.push(b'\n');
    Ok(())
}

fn write_encoded(tok: &CpmTokenizer, ids: &[u32], opts: &Options, buf: &mut Vec<u8>) {
    use std::io::Write as _;
    if opts.pieces {
        let pieces: Vec<&str> = ids
            .iter()
            .filter_map(|&id| tok.model().id_to_piece(id))
            .collect();
        if opts.jsonl {
            buf.extend_from_slice(
                serde_json::to_string(&pieces)
                    .unwrap_or_default()
                    .as_bytes(),
            );
        } else {
            buf.extend_from_slice(pieces.join(" ").as_bytes());
        }
        return;
    }
    if opts.jsonl {
        buf.push(b'[');
    }
    for (i, id) in ids.iter().enumerate() {
        if i > 0 {
            buf.push(if opts.jsonl { b',' } else { b' ' });
        }
        let _ = write!(buf, "{id}"); // writing into a Vec cannot fail
    }
    if opts.jsonl {
        buf.push(b']');
    }
}

/// Ids from a line: whitespace-separated integers, or a JSON array of integers.
fn parse_ids(line: &str, jsonl: bool) -> std::result::Result<Vec<u32>, String> {
    let raw: Vec<u64> = if jsonl {
        serde_json::from_str(line).map_err(|e| format!("not a JSON array of ids ({e})"))?
    } else {
        line.split_ascii_whitespace()
            .map(|w| w.parse::<u64>().map_err(|_| format!("{w:?} is not an id")))
            .collect::<std::result::Result<_, _>>()?
    };
    raw.into_iter()
        .map(|id| u32::try_from(id).map_err(|_| format!("id {id} is outside the vocabulary")))
        .collect()
}
