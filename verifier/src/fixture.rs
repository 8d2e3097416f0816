//! A fixture directory: `input_ids.npy`, `logits.npy` and optionally `fixture.json`, recorded
//! from the original implementation (see `fixtures/record.py`).

use std::fs::File;
use std::io::BufReader;
use std::path::{Path, PathBuf};

use npyz::{DType, NpyFile, Order, TypeChar};
use serde::Deserialize;

use crate::error::{checked_product, Error, Result};
use crate::model::Config;

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
fn check_npy_header(path: &Path) -> Result<()> {
    use std::io::Read;
    let mut file = File::open(path).map_err(|e| Error::io(path, e))?;
    let mut pre = Vec::with_capacity(12);
    (&mut file)
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
    let mut header = Vec::with_capacity(len);
    std::io::Seek::seek(&mut file, std::io::SeekFrom::Start(start))
        .map_err(|e| Error::io(path, e))?;
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
    check_npy_header(path)?;
    let file = File::open(path).map_err(|e| Error::io(path, e))?;
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
    let have = std::fs::metadata(path)
        .map_err(|e| Error::io(path, e))?
        .len();
    if (need as u64) > have {
        return Err(npy_err(
            path,
            format!("shape {shape:?} needs {need} bytes of data but the file is only {have} bytes"),
        ));
    }
    Ok((npy, kind, size, shape))
}

impl Fixture {
    /// Reads and cross-checks the fixture files (not yet against a model).
    pub fn open(dir: &Path) -> Result<Fixture> {
        let meta_path = dir.join("fixture.json");
        let (meta, has_meta) = if meta_path.is_file() {
            let text = std::fs::read_to_string(&meta_path).map_err(|e| Error::io(&meta_path, e))?;
            let meta: FixtureMeta = serde_json::from_str(&text).map_err(|source| Error::Json {
                path: meta_path.clone(),
                source,
            })?;
            (meta, true)
        } else {
            (FixtureMeta::default(), false)
        };

        let ids_path = dir.join("input_ids.npy");
        let (npy, kind, size, ids_shape) = open_npy(&ids_path)?;
        let &[batch, seq] = ids_shape.as_slice() else {
            return Err(npy_err(
                &ids_path,
                format!("shape {ids_shape:?}, expected [batch, seq]"),
            ));
        };
        if batch == 0 || seq == 0 {
            return Err(npy_err(&ids_path, format!("shape {ids_shape:?} is empty")));
        }
        let tokens = checked_product(&[batch, seq], "batch * seq")?;
        let wide: Vec<i128> = match (kind, size) {
            ('i', 4) => read_vec::<i32>(npy, &ids_path)?
                .into_iter()
                .map(i128::from)
                .collect(),
            ('i', 8) => read_vec::<i64>(npy, &ids_path)?
                .into_iter()
                .map(i128::from)
                .collect(),
            ('u', 4) => read_vec::<u32>(npy, &ids_path)?
                .into_iter()
                .map(i128::from)
                .collect(),
            ('u', 8) => read_vec::<u64>(npy, &ids_path)?
                .into_iter()
                .map(i128::from)
                .collect(),
            _ => {
                return Err(npy_err(
                    &ids_path,
                    format!("dtype {kind}{size}, expected int32 or int64 token ids"),
                ))
            }
        };
        if wide.len() != tokens {
            return Err(npy_err(
                &ids_path,
                format!("holds {} values, shape says {tokens}", wide.len()),
            ));
        }
        let mut input_ids = Vec::with_capacity(tokens);
        for (i, &id) in wide.iter().enumerate() {
            let id = u32::try_from(id).map_err(|_| {
                npy_err(
                    &ids_path,
                    format!(
                        "token id {id} at [{}, {}] is not a valid id",
                        i / seq,
                        i % seq
                    ),
                )
            })?;
            input_ids.push(id);
        }

        let logits_path = dir.join("logits.npy");
        let (npy, kind, size, lshape) = open_npy(&logits_path)?;
        let &[lb, ls, vocab] = lshape.as_slice() else {
            return Err(npy_err(
                &logits_path,
                format!("shape {lshape:?}, expected [batch, seq, vocab]"),
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
        let (logits, logits_dtype) = match (kind, size) {
            ('f', 4) => (read_vec::<f32>(npy, &logits_path)?, LogitsDtype::F32),
            ('f', 2) => (
                read_vec::<half::f16>(npy, &logits_path)?
                    .into_iter()
                    .map(half::f16::to_f32)
                    .collect(),
                LogitsDtype::F16,
            ),
            _ => {
                return Err(npy_err(
                    &logits_path,
                    format!("dtype {kind}{size}, expected float32 (or float16 with fixture.json tolerances)"),
                ))
            }
        };
        if logits.len() != n {
            return Err(npy_err(
                &logits_path,
                format!("holds {} values, shape says {n}", logits.len()),
            ));
        }
        if let Some(i) = logits.iter().position(|x| !x.is_finite()) {
            let (b, t, v) = (i / (seq * vocab), (i / vocab) % seq, i % vocab);
            return Err(npy_err(
                &logits_path,
                format!(
                    "reference logit [{b}, {t}, {v}] is {}, not a finite number",
                    logits[i]
                ),
            ));
        }
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
        if self.seq > c.n_positions {
            return Err(mismatch(format!(
                "input_ids.npy has seq {} but the model has only n_positions {}",
                self.seq, c.n_positions
            )));
        }
        if let Some(i) = self
            .input_ids
            .iter()
            .position(|&id| id as usize >= c.vocab_size)
        {
            return Err(mismatch(format!(
                "input_ids.npy [{}, {}] is token {}, outside the model's vocabulary of {}",
                i / self.seq,
                i % self.seq,
                self.input_ids[i],
                c.vocab_size
            )));
        }
        Ok(())
    }
}

fn read_vec<T: npyz::Deserialize>(npy: NpyFile<BufReader<File>>, path: &Path) -> Result<Vec<T>> {
    npy.into_vec::<T>()
        .map_err(|e| npy_err(path, format!("cannot read the data: {e}")))
}
