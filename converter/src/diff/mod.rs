//! Comparing two checkpoints' tensor maps (`cpm-diff`).
//!
//! Each input is opened and planned exactly as `cpm-convert` would convert it ([`crate::open`],
//! [`crate::plan()`]): the plan's entries are the canonical GPT-2 map (target name, shape, dtype),
//! so a checkpoint and the directory converted from it compare equal, and any family the library
//! learns to read is compared without changes here. `raw` compares the names as stored instead,
//! rank by rank.
//!
//! Values (optional) stream one tensor pair at a time: each side's parts are read from its memory
//! map, merged into the canonical layout by `crate::merge::merge` (the converter's own merge), widened
//! to f32 in small chunks and compared; sums accumulate in f64. The pages of a pair are released
//! once it is compared, so the resident set stays near the largest tensor pair.
//!
//! The work is split by job: this file holds the report types and the driver (open both sides,
//! compare the maps, walk the common pairs); `side` one input's map and how to read a tensor;
//! `fast` the memory compares that settle most pairs without widening; `figures` the
//! element-by-element figures of a pair that differs.

mod fast;
mod figures;
mod side;

use std::collections::HashMap;
use std::path::Path;

use serde::Serialize;

use crate::error::{Error, Result};
use crate::open::{Family, Source};
use crate::plan::Hints;
use crate::progress::Progress;

use fast::Read;
use side::{Item, Side};

/// What to compare and how.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Attention heads for both sides (only needed where a side's layout needs them to merge).
    pub heads: Option<u64>,
    /// Keep only the first N vocabulary rows on both sides (cut the padding), as cpm-convert.
    pub vocab_size: Option<u64>,
    /// The activation function of both sides, as cpm-convert's `--activation` (the tensors do not
    /// depend on it; given, no side warns that it assumed one).
    pub activation: Option<String>,
    /// How both sides' families are chosen: detected, named (`--from`) or a mapping file.
    pub family: Family,
    /// Compare the weights as stored (names, shapes, dtypes of each rank file), not mapped.
    pub raw: bool,
    /// Compare the values of every tensor present on both sides with the same shape.
    pub values: bool,
    /// Largest absolute difference still counted as equal; 0 means bit-for-bit after widening
    /// to f32. Either way a NaN equals only a bit-identical NaN.
    pub atol: f64,
    /// Do not report dtype differences (values are compared after widening anyway).
    pub dtype_insensitive: bool,
}

/// A tensor present on one side only.
#[derive(Debug, Clone, Serialize)]
pub struct Tensor {
    /// Its name on that side (mapped to Hugging Face's unless raw).
    pub name: String,
    /// Its shape.
    pub shape: Vec<u64>,
    /// Its dtype, as safetensors names it.
    pub dtype: String,
}

/// A tensor present on both sides whose shape or dtype differs: one per differing attribute.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "what", rename_all = "lowercase")]
pub enum Change {
    /// The shapes differ.
    Shape {
        /// The tensor.
        name: String,
        /// Its shape in A.
        a: Vec<u64>,
        /// Its shape in B.
        b: Vec<u64>,
    },
    /// The dtypes differ (not reported with [`Options::dtype_insensitive`]).
    Dtype {
        /// The tensor.
        name: String,
        /// Its dtype in A.
        a: String,
        /// Its dtype in B.
        b: String,
    },
}

impl Change {
    /// The tensor that changed.
    pub fn name(&self) -> &str {
        match self {
            Change::Shape { name, .. } | Change::Dtype { name, .. } => name,
        }
    }
}

/// The figures of one tensor whose values differ (compared in f32, summed in f64). Figures that
/// are not finite (a NaN or Inf among the values, or ‖A‖ = 0) are `None`.
#[derive(Debug, Clone, Serialize)]
pub struct Values {
    /// The tensor.
    pub name: String,
    /// The largest |a - b| over the pairs where neither is NaN.
    pub max_abs_diff: Option<f64>,
    /// Elements that are not equal (see [`Options::atol`]).
    pub differing: u64,
    /// Elements compared (the tensor's numel).
    pub elements: u64,
    /// `differing / elements`.
    pub fraction: f64,
    /// The first differing element in row-major order, one index per dimension.
    pub first_index: Vec<u64>,
    /// ‖A − B‖ / ‖A‖ (Euclidean norms over all elements).
    pub rel_diff: Option<f64>,
    /// A·B / (‖A‖ ‖B‖).
    pub cosine: Option<f64>,
}

/// Counts for the one-line summary.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    /// Tensors in A.
    pub tensors_a: usize,
    /// Tensors in B.
    pub tensors_b: usize,
    /// Tensors present on both sides (by name).
    pub common: usize,
    /// Tensors in A only.
    pub only_in_a: usize,
    /// Tensors in B only.
    pub only_in_b: usize,
    /// Common tensors whose shape or dtype differs.
    pub changed: usize,
    /// With values: common tensors of equal shape whose values were compared.
    pub compared: Option<usize>,
    /// With values: compared tensors whose values are equal (within `atol`).
    pub identical: Option<usize>,
    /// With values: compared tensors whose values differ.
    pub differing: Option<usize>,
}

/// The result of a comparison.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Tensors in A only, in A's order.
    pub only_in_a: Vec<Tensor>,
    /// Tensors in B only, in B's order.
    pub only_in_b: Vec<Tensor>,
    /// Shape and dtype differences of the common tensors.
    pub changed: Vec<Change>,
    /// The tensors whose values differ; `None` when values were not compared.
    pub values: Option<Vec<Values>>,
    /// The counts.
    pub summary: Summary,
    /// No tensor only on one side, none changed, and (with values) none differing.
    pub equal: bool,
    /// Problems that did not stop the comparison (also sent to `progress.warn`).
    pub warnings: Vec<String>,
}

/// Compare the checkpoints at `a` and `b`. Problems that do not stop the comparison go to
/// `progress.warn` and into the report.
pub fn diff(a: &Path, b: &Path, opts: &Options, progress: &dyn Progress) -> Result<Report> {
    let mut warnings = Vec::new();
    let mut warn = |msg: String| {
        progress.warn(&msg);
        warnings.push(msg);
    };
    let (src_a, src_b) = if opts.raw {
        (
            open_raw(a, &opts.family, &mut warn)?,
            open_raw(b, &opts.family, &mut warn)?,
        )
    } else {
        (crate::open(a, &opts.family)?, crate::open(b, &opts.family)?)
    };
    let (side_a, side_b) = sides(src_a, a, src_b, b, opts, &mut warn)?;
    let mut report = compare_maps(&side_a, &side_b, opts);
    if opts.values {
        let found = compare_all_values(&side_a, &side_b, opts, progress)?;
        report.summary.compared = Some(found.compared);
        report.summary.identical = Some(found.compared - found.differing.len());
        report.summary.differing = Some(found.differing.len());
        report.equal &= found.differing.is_empty();
        report.values = Some(found.differing);
    }
    report.warnings = warnings;
    Ok(report)
}

/// Open an input for `--raw`, which needs a mapping only to find the weights: a checkpoint whose
/// model fits no family (ranks that disagree, a missing tensor) is still opened, by the first
/// family whose mapping finds weights in every file, with a warning saying so.
fn open_raw(path: &Path, family: &Family, warn: &mut dyn FnMut(String)) -> Result<Source> {
    let err = match (crate::open(path, family), family) {
        (Ok(src), _) => return Ok(src),
        (Err(e), Family::Detect) => e,
        (Err(e), _) => return Err(e),
    };
    for name in crate::Mapping::builtin_names() {
        if let Ok(src) = crate::open(path, &Family::Named(name.to_string())) {
            warn(format!(
                "{}: no family fits it as a model ({err}); its weights are those the `{name}` \
                 mapping finds",
                path.display()
            ));
            return Ok(src);
        }
    }
    Err(err)
}

/// Both sides' maps: canonical (planned) or raw.
fn sides(
    src_a: Source,
    a: &Path,
    src_b: Source,
    b: &Path,
    opts: &Options,
    warn: &mut dyn FnMut(String),
) -> Result<(Side, Side)> {
    let (side_a, side_b) = if opts.raw {
        let qualify = src_a.ranks.len() > 1 || src_b.ranks.len() > 1;
        (
            Side::raw(src_a, who("A", a), qualify)?,
            Side::raw(src_b, who("B", b), qualify)?,
        )
    } else {
        let hints = Hints {
            heads: opts.heads,
            vocab_size: opts.vocab_size,
            activation: opts.activation.clone(),
        };
        let a = Side::canonical(src_a, who("A", a), hints.clone(), opts.values, warn)?;
        let b = Side::canonical(src_b, who("B", b), hints, opts.values, warn)?;
        if let (Some(ha), Some(hb)) = (&a.heads, &b.heads) {
            if ha.count != hb.count {
                warn(format!(
                    "A has {} attention heads ({}), B has {} ({}); the tensors cannot show this",
                    ha.count, ha.source, hb.count, hb.source
                ));
            }
        }
        (a, b)
    };
    Ok((side_a, side_b))
}

fn who(label: &str, path: &Path) -> String {
    format!("{label} ({})", path.display())
}

/// Name the side in messages that name no file (ranks that disagree, a head count).
fn in_side(who: &str, e: Error) -> Error {
    let at = |msg: String| format!("{who}: {msg}");
    match e {
        Error::Merge { msg } => Error::Merge { msg: at(msg) },
        Error::Usage { msg } => Error::Usage { msg: at(msg) },
        Error::Values { tensor, msg } => Error::Values {
            tensor,
            msg: at(msg),
        },
        other => other,
    }
}

fn describe(item: &Item) -> Tensor {
    Tensor {
        name: item.name.clone(),
        shape: item.shape.clone(),
        dtype: item.dtype.safetensors_name().to_string(),
    }
}

/// Names on one side only, and shape/dtype changes of the common ones (A's order, then B's).
fn compare_maps(a: &Side, b: &Side, opts: &Options) -> Report {
    let in_a: HashMap<&str, &Item> = a.items.iter().map(|i| (i.name.as_str(), i)).collect();
    let in_b: HashMap<&str, &Item> = b.items.iter().map(|i| (i.name.as_str(), i)).collect();
    let only_in_a: Vec<Tensor> = a
        .items
        .iter()
        .filter(|i| !in_b.contains_key(i.name.as_str()))
        .map(describe)
        .collect();
    let only_in_b: Vec<Tensor> = b
        .items
        .iter()
        .filter(|i| !in_a.contains_key(i.name.as_str()))
        .map(describe)
        .collect();
    let mut changed = Vec::new();
    let mut changed_tensors = 0;
    for ia in &a.items {
        let Some(ib) = in_b.get(ia.name.as_str()) else {
            continue;
        };
        let before = changed.len();
        if ia.shape != ib.shape {
            changed.push(Change::Shape {
                name: ia.name.clone(),
                a: ia.shape.clone(),
                b: ib.shape.clone(),
            });
        }
        if ia.dtype != ib.dtype && !opts.dtype_insensitive {
            changed.push(Change::Dtype {
                name: ia.name.clone(),
                a: ia.dtype.safetensors_name().into(),
                b: ib.dtype.safetensors_name().into(),
            });
        }
        changed_tensors += usize::from(changed.len() > before);
    }
    let summary = Summary {
        tensors_a: a.items.len(),
        tensors_b: b.items.len(),
        common: a.items.len() - only_in_a.len(),
        only_in_a: only_in_a.len(),
        only_in_b: only_in_b.len(),
        changed: changed_tensors,
        compared: None,
        identical: None,
        differing: None,
    };
    Report {
        equal: only_in_a.is_empty() && only_in_b.is_empty() && changed.is_empty(),
        only_in_a,
        only_in_b,
        changed,
        values: None,
        summary,
        warnings: Vec::new(),
    }
}

struct Found {
    compared: usize,
    differing: Vec<Values>,
}

/// Compare the values of every common tensor of equal shape, one pair at a time, in A's order.
fn compare_all_values(
    a: &Side,
    b: &Side,
    opts: &Options,
    progress: &dyn Progress,
) -> Result<Found> {
    let in_b: HashMap<&str, &Item> = b.items.iter().map(|i| (i.name.as_str(), i)).collect();
    let mut found = Found {
        compared: 0,
        differing: Vec::new(),
    };
    // One scratch buffer per side, reused for every transposed merge: fresh allocations of a
    // large tensor would cost a page fault per page, every time.
    let mut bufs = (Vec::new(), Vec::new());
    for ia in &a.items {
        let Some(ib) = in_b.get(ia.name.as_str()) else {
            continue;
        };
        if ia.shape != ib.shape {
            continue;
        }
        if progress.cancelled() {
            return Err(Error::Interrupted);
        }
        found.compared += 1;
        if let Some(v) = compare_pair(a, ia, b, ib, opts, &mut bufs)? {
            found.differing.push(v);
        }
    }
    Ok(found)
}

/// Compare one tensor pair's values; `None` when they are equal. The pages of both are released
/// afterwards, whatever the outcome.
fn compare_pair(
    a: &Side,
    ia: &Item,
    b: &Side,
    ib: &Item,
    opts: &Options,
    bufs: &mut (Vec<u8>, Vec<u8>),
) -> Result<Option<Values>> {
    let (pa, spans_a) = a.parts(ia).map_err(|e| in_side(&a.who, e))?;
    let result = b
        .parts(ib)
        .map_err(|e| in_side(&b.who, e))
        .and_then(|(pb, spans_b)| {
            let ra = Read {
                side: a,
                item: ia,
                parts: pa,
            };
            let rb = Read {
                side: b,
                item: ib,
                parts: pb,
            };
            let r = fast::compare_parts(ra, rb, opts.atol, bufs);
            b.release(&spans_b);
            r
        });
    a.release(&spans_a);
    result
}
