//! `cpm-tokenize`'s work: lines in, one output line per input line, in order.
//!
//! Input is read in batches of at most [`BATCH_LINES`] lines or [`BATCH_BYTES`] bytes (whichever
//! comes first), so memory stays bounded by the batch and the longest line. A line over
//! [`LONG_LINE`] bytes is a batch of its own, encoded on one thread with its ids written out as
//! they become final: what it costs beyond the line itself is bounded by [`LIMITS`] (a jieba
//! block over 4 MiB is refused before anything is written for the line; a stretch of over
//! 8 MiB of normalized text with no point every segmentation passes through, which a model
//! splitting on whitespace cannot produce from such blocks, is refused where it is met, after
//! the ids before it). Plain `--decode` of such a line checks every id, then writes the text id
//! by id; `--decode --jsonl` holds the line's ids and text whole. A batch is split into one contiguous chunk per thread; each thread writes its
//! chunk's output into its own buffer, and the buffers are written in input order, so the output
//! never depends on the thread count. Processing stops at the first bad line: the lines before
//! it are written, then the error names the line.

use std::io::{BufRead, Write};

use crate::cpm::{CpmTokenizer, Limits};
use crate::error::{Error, Result};

/// Most lines in one batch.
pub const BATCH_LINES: usize = 4096;
/// Most bytes in one batch (a single longer line is a batch of its own).
pub const BATCH_BYTES: usize = 4 << 20;
/// Lines longer than this are encoded alone, their output written as it is produced.
pub const LONG_LINE: usize = 1 << 20;
/// What one line may hold at once, beyond itself.
pub const LIMITS: Limits = Limits {
    max_block_bytes: 4 << 20,
    max_window_bytes: 8 << 20,
};
/// Output gathered for a long line before it is written.
const FLUSH_BYTES: usize = 1 << 20;

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
    let mut pending = None;
    loop {
        let batch = read_batch(&mut input, &mut pending)?;
        if batch.is_empty() {
            break;
        }
        let n = batch.len() as u64;
        if let [line] = batch.as_slice() {
            if line.len() > LONG_LINE && !(opts.decode && opts.jsonl) {
                long_line(tok, line, first_line, opts, &mut out)?;
                first_line += 1;
                continue;
            }
        }
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

/// The next batch; a long line read after others waits in `pending` for a batch of its own.
fn read_batch(input: &mut impl BufRead, pending: &mut Option<Vec<u8>>) -> Result<Vec<Vec<u8>>> {
    let mut batch: Vec<Vec<u8>> = pending.take().into_iter().collect();
    let mut bytes = batch.first().map_or(0, |l| l.len() + 1);
    while batch.len() < BATCH_LINES && bytes < BATCH_BYTES && bytes <= LONG_LINE {
        let mut line = Vec::new();
        if input.read_until(b'\n', &mut line).map_err(Error::Input)? == 0 {
            break;
        }
        if line.last() == Some(&b'\n') {
            line.pop();
        }
        if line.len() > LONG_LINE && !batch.is_empty() {
            *pending = Some(line);
            break;
        }
        bytes += line.len() + 1;
        batch.push(line);
    }
    Ok(batch)
}

/// Encodes one long line, writing its output as it goes.
fn long_line(
    tok: &CpmTokenizer,
    line: &[u8],
    no: u64,
    opts: &Options,
    out: &mut impl Write,
) -> Result<()> {
    let mut buf = Vec::with_capacity(FLUSH_BYTES + 4096);
    let mut failed = None;
    let mut flush = |buf: &mut Vec<u8>| {
        if failed.is_none() {
            failed = out.write_all(buf).err();
        }
        buf.clear();
    };
    let mut drain = |buf: &mut Vec<u8>| {
        if buf.len() >= FLUSH_BYTES {
            flush(buf);
        }
    };
    let res = match opts.decode {
        true => decode_plain_line(tok, line, &mut buf, &mut drain),
        false => encode_line(tok, line, opts, &mut buf, &mut drain),
    };
    if res.is_ok() {
        buf.push(b'\n');
    }
    flush(&mut buf);
    if let Some(e) = failed {
        return Err(Error::Output(e));
    }
    res.map_err(|reason| Error::BadLine { line: no, reason })
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
        let mark = buf.len();
        if let Err(reason) = one_line_into(tok, line, opts, &mut buf) {
            buf.truncate(mark); // nothing of a bad line
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
        encode_line(tok, line.as_bytes(), opts, buf, &mut |_| {})?;
    }
    buf.push(b'\n');
    Ok(())
}

/// Appends the ids (or pieces) of one line to `buf`, calling `drain(buf)` after each one.
fn encode_line(
    tok: &CpmTokenizer,
    line: &[u8],
    opts: &Options,
    buf: &mut Vec<u8>,
    drain: &mut dyn FnMut(&mut Vec<u8>),
) -> std::result::Result<(), String> {
    let line = std::str::from_utf8(line).map_err(|e| format!("not UTF-8 ({e})"))?;
    let text: String;
    let text = if opts.jsonl {
        text =
            serde_json::from_str::<String>(line).map_err(|e| format!("not a JSON string ({e})"))?;
        text.as_str()
    } else {
        line
    };
    if opts.jsonl {
        buf.push(b'[');
    }
    let mut first = true;
    tok.encode_each(text, true, &LIMITS, &mut |id| {
        if !std::mem::take(&mut first) {
            buf.push(if opts.jsonl { b',' } else { b' ' });
        }
        write_one(tok, id, opts, buf);
        drain(buf);
    })?;
    if opts.jsonl {
        buf.push(b']');
    }
    Ok(())
}

fn write_one(tok: &CpmTokenizer, id: u32, opts: &Options, buf: &mut Vec<u8>) {
    use std::io::Write as _;
    if !opts.pieces {
        let _ = write!(buf, "{id}"); // writing into a Vec cannot fail
        return;
    }
    let piece = tok.model().id_to_piece(id).unwrap_or_default();
    if opts.jsonl {
        let _ = serde_json::to_writer(&mut *buf, piece);
    } else {
        buf.extend_from_slice(piece.as_bytes());
    }
}

/// Decodes a plain line of ids into `buf` one id at a time, calling `drain(buf)` after each;
/// every id is checked first, so a bad line writes nothing.
fn decode_plain_line(
    tok: &CpmTokenizer,
    line: &[u8],
    buf: &mut Vec<u8>,
    drain: &mut dyn FnMut(&mut Vec<u8>),
) -> std::result::Result<(), String> {
    let line = std::str::from_utf8(line).map_err(|e| format!("not UTF-8 ({e})"))?;
    let words = || line.split_ascii_whitespace();
    // The checks in the order the short path makes them: every word a number, every number
    // an id, every id in the vocabulary.
    for w in words() {
        w.parse::<u64>()
            .map_err(|_| format!("{w:?} is not an id"))?;
    }
    words().try_for_each(|w| parse_id(w).map(drop))?;
    let mut text = String::new();
    for emit in [false, true] {
        for w in words() {
            text.clear();
            tok.decode_one(parse_id(w)?, &mut text)
                .map_err(|e| e.to_string())?;
            if emit {
                buf.extend_from_slice(text.as_bytes());
                drain(buf);
            }
        }
    }
    Ok(())
}

fn parse_id(w: &str) -> std::result::Result<u32, String> {
    let id = w
        .parse::<u64>()
        .map_err(|_| format!("{w:?} is not an id"))?;
    u32::try_from(id).map_err(|_| format!("id {id} is outside the vocabulary"))
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
