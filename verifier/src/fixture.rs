//! A fixture directory: `input_ids.npy`, `logits.npy` and optionally `fixture.json`, recorded
//! from the original implementation (see `fixtures/record.py`).

use std::fs::File;
use std::io::BufReader;
use std::path::{Path, PathBuf};

use npyz::{DType, NpyFile, Order, TypeChar};
use serde::Deserialize;

use crate::error::{checked_product, Error, Result};
use crate::files;
use cpm_gpt2::config::Config;

/// `fixture.json`. Unknown keys (e.g. the recording's torch version) are kept out of the way.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct FixtureMeta {
    /// Absolute tolerance the recording asks for.
    pub atol: Option<f64>,
    /// Relative tolerance the recording asks for.
    pub rtol: Option<f64>,
    /// What was recorded, from what.
    pub description: Option<String>,
}

/// How the reference logits were stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogitsDtype {
    /// float32: exact as recorded.
    F32,
    /// float16: each value carries its own rounding error (half an ulp, 2^-11 relative).
    F16,
}

/// A loaded, self-consistent fixture.
#[derive(Debug, Clone)]
pub struct Fixture {
    /// The fixture directory.
    pub dir: PathBuf,
    /// Token ids, row-major [batch, seq]; checked non-negative and within `u32`.
    pub input_ids: Vec<u32>,
    /// Reference logits widened to f32, row-major [batch, seq, vocab].
    pub logits: Vec<f32>,
    /// How `logits.npy` stored them.
    pub logits_dtype: LogitsDtype,
    /// Rows.
    pub batch: usize,
    /// Positions per row.
    pub seq: usize,
    /// Logits per position.
    pub vocab: usize,
    /// `fixture.json`, or defaults when absent.
    pub meta: FixtureMeta,
    /// Whether `fixture.json` exists.
    pub has_meta: bool,
}

fn npy_err(path: &Path, detail: impl Into<String>) -> Error {
    Error::Npy {
        path: path.to_path_buf(),
        detail: detail.into(),
    }
}

/// Opens an `.npy` file and checks the parts every array here must share: C order, plain dtype.
/// An opened `.npy`: the reader, its kind ('i', 'u', 'f'), element size in bytes, and shape.
type OpenNpy = (NpyFile<BufReader<File>>, char, u64, Vec<usize>);

/// numpy's own reader refuses longer headers (`np.lib.format`'s `max_header_size`).
const MAX_NPY_HEADER: usize = 10_000;
/// Bracket nesting a header may have; a plain array's header has 2 (`{` and `(`).
const MAX_NPY_NESTING: usize = 8;

/// Checks the header's size and nesting before `npyz` parses it: its Python-literal parser
/// backtracks exponentially on nested brackets (a 213-byte header took minutes).
fn check_npy_header(path: &Path, file: &mut File) -> Result<()> {
    use std::io::Read;
    let mut pre = Vec::with_capacity(12);
    (&mut *file)
        .take(12)
        .read_to_end(&mut pre)
        .map_err(|e| Error::io(path, e))?;
    if pre.len() < 10 || !pre.starts_with(b"\x93NUMPY") {
        return Ok(()); // npyz reports these precisely
    }
    let (len, start) = match pre[6] {
        1 => (usize::from(u16::from_le_bytes([pre[8], pre[9]])), 10u64),
        _ if pre.len() == 12 => {
            let n = u32::from_le_bytes([pre[8], pre[9], pre[10], pre[11]]);
            (usize::try_from(n).unwrap_or(usize::MAX), 12u64)
        }
        _ => return Ok(()),
    };
    if len > MAX_NPY_HEADER {
        return Err(npy_err(
            path,
            format!("header of {len} bytes; numpy writes and reads at most {MAX_NPY_HEADER}"),
        ));
    }
    // len <= MAX_NPY_HEADER, checked above.
    let mut header = Vec::with_capacity(len);
    std::io::Seek::seek(file, std::io::SeekFrom::Start(start)).map_err(|e| Error::io(path, e))?;
    file.take(len as u64)
        .read_to_end(&mut header)
        .map_err(|e| Error::io(path, e))?;
    let mut depth = 0usize;
    for &b in &header {
        match b {
            b'(' | b'[' | b'{' => {
                depth += 1;
                if depth > MAX_NPY_NESTING {
                    return Err(npy_err(
                        path,
                        format!(
                            "header nests brackets more than {MAX_NPY_NESTING} deep; not a plain array's header"
                        ),
                    ));
                }
            }
            b')' | b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    Ok(())
}

fn open_npy(path: &Path) -> Result<OpenNpy> {
    let (mut file, have) = files::open_regular(path)?;
    check_npy_header(path, &mut file)?;
    std::io::Seek::seek(&mut file, std::io::SeekFrom::Start(0)).map_err(|e| Error::io(path, e))?;
    let npy = NpyFile::new(BufReader::new(file))
        .map_err(|e| npy_err(path, format!("not a readable .npy file: {e}")))?;
    if npy.order() != Order::C {
        return Err(npy_err(
            path,
            "stored in Fortran order; save it with np.ascontiguousarray first",
        ));
    }
    let (kind, size) = match npy.dtype() {
        DType::Plain(ts) => {
            let kind = match ts.type_char() {
                TypeChar::Int => 'i',
                TypeChar::Uint => 'u',
                TypeChar::Float => 'f',
                _ => '?',
            };
            (kind, ts.size_field())
        }
        other => {
            return Err(npy_err(
                path,
                format!("dtype {other:?} is not a plain number type"),
            ))
        }
    };
    let shape = npy
        .shape()
        .iter()
        .map(|&d| usize::try_from(d))
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|_| {
            npy_err(
                path,
                format!("shape {:?} does not fit in memory", npy.shape()),
            )
        })?;
    // Check the data can be there before the reader allocates for it: a corrupt header must
    // give an error, not an out-of-memory abort.
    let mut dims = shape.clone();
    dims.push(usize::try_from(size).map_err(|_| npy_err(path, "element size too large"))?);
    let need = checked_product(&dims, &format!("the data size of {}", path.display()))?;
    if (need as u64) > have {
        return Err(npy_err(
            path,
            format!("shape {shape:?} needs {need} bytes of data but the file is only {have} bytes"),
        ));
    }
    Ok((npy, kind, size, shape))
}

/// The most positions per row a fixture may hold. Attention time grows with its square; a row of
/// 16,384 positions at CPM-LM's vocabulary is already 2 GB of float32 logits.
pub const MAX_SEQ: usize = 16_384;

impl Fixture {
    /// Reads and cross-checks the fixture files (not yet against a model).
    pub fn open(dir: &Path) -> Result<Fixture> {
        Self::read(dir, None)
    }

    /// Reads the fixture for a model configured by `c`: the ids are checked against the model's
    /// `n_positions` and vocabulary before the (larger) logits are read, then the logits' vocab.
    pub fn open_for(dir: &Path, c: &Config) -> Result<Fixture> {
        let f = Self::read(dir, Some(c))?;
        f.check_against(c)?;
        Ok(f)
    }

    fn read(dir: &Path, c: Option<&Config>) -> Result<Fixture> {
        let (meta, has_meta) = read_meta(&dir.join("fixture.json"))?;
        let (input_ids, batch, seq) = read_ids(&dir.join("input_ids.npy"))?;
        if let Some(c) = c {
            check_ids(dir, &input_ids, seq, c)?;
        }
        let (logits, logits_dtype, vocab) = read_logits(dir, batch, seq)?;
        Ok(Fixture {
            dir: dir.to_path_buf(),
            input_ids,
            logits,
            logits_dtype,
            batch,
            seq,
            vocab,
            meta,
            has_meta,
        })
    }

    /// `(batch, seq, vocab)`.
    pub fn shape(&self) -> (usize, usize, usize) {
        (self.batch, self.seq, self.vocab)
    }

    /// Checks that the model can run this fixture: vocabulary, positions, ids.
    pub fn check_against(&self, c: &Config) -> Result<()> {
        let mismatch = |detail: String| Error::FixtureMismatch {
            dir: self.dir.clone(),
            detail,
        };
        if self.vocab != c.vocab_size {
            return Err(mismatch(format!(
                "logits.npy has vocab {} but the model's config.json has vocab_size {}",
                self.vocab, c.vocab_size
            )));
        }
        check_ids(&self.dir, &self.input_ids, self.seq, c)
    }
}

/// Checks rows of `seq` ids against the model: positions within `n_positions`, every id inside
/// the vocabulary.
fn check_ids(dir: &Path, ids: &[u32], seq: usize, c: &Config) -> Result<()> {
    let mismatch = |detail: String| Error::FixtureMismatch {
        dir: dir.to_path_buf(),
        detail,
    };
    if seq > c.n_positions {
        return Err(mismatch(format!(
            "input_ids.npy has seq {seq} but the model has only n_positions {}",
            c.n_positions
        )));
    }
    if let Some(i) = ids.iter().position(|&id| id as usize >= c.vocab_size) {
        return Err(mismatch(format!(
            "input_ids.npy [{}, {}] is token {}, outside the model's vocabulary of {}",
            i / seq,
            i % seq,
            ids[i],
            c.vocab_size
        )));
    }
    Ok(())
}

fn read_vec<T: npyz::Deserialize>(npy: NpyFile<BufReader<File>>, path: &Path) -> Result<Vec<T>> {
    npy.into_vec::<T>()
        .map_err(|e| npy_err(path, format!("cannot read the data: {e}")))
}

/// `fixture.json` when present; a file that exists but cannot be read or parsed is an error.
fn read_meta(path: &Path) -> Result<(FixtureMeta, bool)> {
    if !files::exists(path)? {
        return Ok((FixtureMeta::default(), false));
    }
    let text = files::read_capped(path, files::MAX_FIXTURE_JSON_BYTES)?;
    let meta = serde_json::from_slice(&text).map_err(|e| Error::json(path, e))?;
    Ok((meta, true))
}

/// `input_ids.npy`: `[batch, seq]` integer ids, each a valid `u32`.
fn read_ids(path: &Path) -> Result<(Vec<u32>, usize, usize)> {
    let (npy, kind, size, shape) = open_npy(path)?;
    let &[batch, seq] = shape.as_slice() else {
        return Err(npy_err(
            path,
            format!("shape {shape:?}, expected [batch, seq]"),
        ));
    };
    if batch == 0 || seq == 0 {
        return Err(npy_err(path, format!("shape {shape:?} is empty")));
    }
    if seq > MAX_SEQ {
        return Err(Error::limit(
            path,
            format!("seq {seq}; cpm-verify compares at most {MAX_SEQ} positions per row"),
        ));
    }
    let tokens = checked_product(&[batch, seq], "batch * seq")?;
    let ids = match (kind, size) {
        ('i', 4) => narrow_ids::<i32>(npy, path, seq)?,
        ('i', 8) => narrow_ids::<i64>(npy, path, seq)?,
        ('u', 4) => narrow_ids::<u32>(npy, path, seq)?,
        ('u', 8) => narrow_ids::<u64>(npy, path, seq)?,
        _ => {
            return Err(npy_err(
                path,
                format!("dtype {kind}{size}, expected int32 or int64 token ids"),
            ))
        }
    };
    if ids.len() != tokens {
        return Err(npy_err(
            path,
            format!("holds {} values, shape says {tokens}", ids.len()),
        ));
    }
    Ok((ids, batch, seq))
}

/// Reads ids of type `T` and converts each to `u32`, naming the first that does not fit.
fn narrow_ids<T>(npy: NpyFile<BufReader<File>>, path: &Path, seq: usize) -> Result<Vec<u32>>
where
    T: npyz::Deserialize + Copy + std::fmt::Display + TryInto<u32>,
{
    let wide = read_vec::<T>(npy, path)?;
    let mut ids = Vec::with_capacity(wide.len());
    for (i, &id) in wide.iter().enumerate() {
        let narrow = id.try_into().map_err(|_| {
            npy_err(
                path,
                format!(
                    "token id {id} at [{}, {}] is not a valid id",
                    i / seq,
                    i % seq
                ),
            )
        })?;
        ids.push(narrow);
    }
    Ok(ids)
}

/// `logits.npy`: `[batch, seq, vocab]` finite floats, widened to f32.
fn read_logits(dir: &Path, batch: usize, seq: usize) -> Result<(Vec<f32>, LogitsDtype, usize)> {
    let path = dir.join("logits.npy");
    let (npy, kind, size, shape) = open_npy(&path)?;
    let &[lb, ls, vocab] = shape.as_slice() else {
        return Err(npy_err(
            &path,
            format!("shape {shape:?}, expected [batch, seq, vocab]"),
        ));
    };
    if (lb, ls) != (batch, seq) {
        return Err(Error::FixtureMismatch {
            dir: dir.to_path_buf(),
            detail: format!(
                "logits.npy is [{lb}, {ls}, {vocab}] but input_ids.npy is [{batch}, {seq}]"
            ),
        });
    }
    let n = checked_product(&[batch, seq, vocab], "batch * seq * vocab")?;
    let (logits, dtype) = match (kind, size) {
        ('f', 4) => (read_vec::<f32>(npy, &path)?, LogitsDtype::F32),
        ('f', 2) => {
            let half = read_vec::<half::f16>(npy, &path)?;
            let wide = half.into_iter().map(half::f16::to_f32).collect();
            (wide, LogitsDtype::F16)
        }
        _ => {
            let want = "float32 (or float16 with fixture.json tolerances)";
            return Err(npy_err(
                &path,
                format!("dtype {kind}{size}, expected {want}"),
            ));
        }
    };
    if logits.len() != n {
        return Err(npy_err(
            &path,
            format!("holds {} values, shape says {n}", logits.len()),
        ));
    }
    if let Some(i) = logits.iter().position(|x| !x.is_finite()) {
        let (b, t, v) = (i / (seq * vocab), (i / vocab) % seq, i % vocab);
        return Err(npy_err(
            &path,
            format!(
                "reference logit [{b}, {t}, {v}] is {}, not a finite number",
                logits[i]
            ),
        ));
    }
    Ok((logits, dtype, vocab))
}
