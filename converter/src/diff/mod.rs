//! Comparing two checkpoints' tensor maps (`cpm-diff`).
//!
//! Each input is opened and planned exactly as `cpm-convert` would convert it ([`crate::open`],
//! [`crate::plan`]): the plan's entries are the canonical GPT-2 map (target name, shape, dtype),
//! so a checkpoint and the directory converted from it compare equal, and any family the library
//! learns to read is compared without changes here. `raw` compares the names as stored instead,
//! rank by rank.
//!
//! Values (optional) stream one tensor pair at a time: each side's parts are read from its memory
//! map, merged into the canonical layout by [`merge::merge`] (the converter's own merge), widened
//! to f32 in small chunks and compared; sums accumulate in f64. The pages of a pair are released
//! once it is compared, so the resident set stays near the largest tensor pair.

use std::borrow::Cow;
use std::collections::HashMap;
use std::ops::Range;
use std::path::Path;

use serde::Serialize;

use crate::error::{Error, Result};
use crate::mapping::Split;
use crate::plan::{Entry, Hints, OutDtype, Plan};
use crate::torch::{Dtype, TensorRef};
use crate::{Family, Progress, Source};

/// What to compare and how.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Attention heads for both sides (only needed where a side's layout needs them to merge).
    pub heads: Option<u64>,
    /// Keep only the first N vocabulary rows on both sides (cut the padding), as cpm-convert.
    pub vocab_size: Option<u64>,
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
    pub name: String,
    pub shape: Vec<u64>,
    pub dtype: String,
}

/// A tensor present on both sides whose shape or dtype differs: one per differing attribute.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "what", rename_all = "lowercase")]
pub enum Change {
    Shape {
        name: String,
        a: Vec<u64>,
        b: Vec<u64>,
    },
    Dtype {
        name: String,
        a: String,
        b: String,
    },
}

impl Change {
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
    pub name: String,
    /// The largest |a - b| over the pairs where neither is NaN.
    pub max_abs_diff: Option<f64>,
    /// Elements that are not equal (see [`Options::atol`]).
    pub differing: u64,
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
    pub tensors_a: usize,
    pub tensors_b: usize,
    pub common: usize,
    pub only_in_a: usize,
    pub only_in_b: usize,
    /// Common tensors whose shape or dtype differs.
    pub changed: usize,
    /// With values: common tensors of equal shape whose values were compared.
    pub compared: Option<usize>,
    pub identical: Option<usize>,
    pub differing: Option<usize>,
}

/// The result of a comparison.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub only_in_a: Vec<Tensor>,
    pub only_in_b: Vec<Tensor>,
    pub changed: Vec<Change>,
    /// The tensors whose values differ; `None` when values were not compared.
    pub values: Option<Vec<Values>>,
    pub summary: Summary,
    /// No tensor only on one side, none changed, and (with values) none differing.
    pub equal: bool,
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
        };
        let a = Side::canonical(src_a, who("A", a), hints, opts.values, warn)?;
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

/// One tensor of a side's map, and how to produce its values.
struct Item {
    name: String,
    shape: Vec<u64>,
    dtype: Dtype,
    how: How,
}

enum How {
    /// A canonical tensor: the plan entry that merges it from every rank.
    Planned(Box<Entry>),
    /// A tensor as stored in one rank file.
    Stored {
        rank: usize,
        source: String,
        tensor: std::rc::Rc<TensorRef>,
    },
}

/// One input, opened, with its map.
struct Side {
    src: Source,
    items: Vec<Item>,
    /// The head count the plan used, when the checkpoint (or `--heads`) gave one.
    heads: Option<crate::plan::Heads>,
    /// "A (path)", for messages.
    who: String,
}

impl Side {
    /// The canonical map: what `cpm-convert` would write (dtype kept). With `values`, the copies
    /// the checkpoint keeps of a written tensor are checked as cpm-convert checks them.
    fn canonical(
        src: Source,
        who: String,
        hints: Hints,
        values: bool,
        warn: &mut dyn FnMut(String),
    ) -> Result<Side> {
        let (plan, known) = plan_side(&src, hints, &who, warn).map_err(|e| in_side(&who, e))?;
        for n in &plan.notes {
            warn(format!("{who}: {n}"));
        }
        if values {
            src.check_copies(&plan).map_err(|e| in_side(&who, e))?;
        }
        let items = plan
            .entries
            .into_iter()
            .map(|e| Item {
                name: e.target.clone(),
                shape: e.shape.clone(),
                dtype: e.dtype,
                how: How::Planned(Box::new(e)),
            })
            .collect();
        Ok(Side {
            src,
            items,
            heads: known.then_some(plan.heads),
            who,
        })
    }

    /// The weights as stored. When either side has more than one rank file, each name is
    /// prefixed with its rank as Megatron names the files (`mp_rank_01:`, or `mp_rank_01_002:`
    /// with pipeline stages): file names differ between layouts, ranks do not.
    fn raw(src: Source, who: String, qualify: bool) -> Result<Side> {
        let staged = src.ranks.iter().any(|r| r.pp > 0);
        let mut items = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for (r, rank) in src.ranks.iter().enumerate() {
            for (name, t) in &rank.weights {
                let shown = match (qualify, staged) {
                    (false, _) => name.clone(),
                    (true, false) => format!("mp_rank_{:02}:{name}", rank.tp),
                    (true, true) => format!("mp_rank_{:02}_{:03}:{name}", rank.tp, rank.pp),
                };
                if !seen.insert(shown.clone()) {
                    return Err(Error::tensor(
                        &rank.file.path,
                        name,
                        "appears twice in the weights dict",
                    ));
                }
                items.push(Item {
                    name: shown,
                    shape: t.shape.clone(),
                    dtype: t.dtype,
                    how: How::Stored {
                        rank: r,
                        source: name.clone(),
                        tensor: t.clone(),
                    },
                });
            }
        }
        Ok(Side {
            src,
            items,
            heads: None,
            who,
        })
    }
}

/// Plan one side as `cpm-convert` would. A checkpoint that records no head count, and whose
/// tensors need none to merge, is still compared: heads only matter to config.json there. Returns
/// the plan and whether its head count is known.
fn plan_side(
    src: &Source,
    hints: Hints,
    who: &str,
    warn: &mut dyn FnMut(String),
) -> Result<(Plan, bool)> {
    let err = match crate::plan(src, hints, OutDtype::Keep) {
        Ok(p) => return Ok((p, true)),
        Err(e @ Error::Usage { .. }) if hints.heads.is_none() => e,
        Err(e) => return Err(e),
    };
    // A stand-in count that passes the plan's checks (it divides over the tensor-parallel
    // ranks). If the checkpoint records a count, any stand-in contradicts it and the first error
    // stands; if a tensor needs the count to merge, the first error stands too.
    let tp = src.ranks.iter().map(|r| r.tp + 1).max().unwrap_or(1);
    let stand_in = Hints {
        heads: Some(tp as u64),
        ..hints
    };
    match crate::plan(src, stand_in, OutDtype::Keep) {
        Ok(p) if !p.entries.iter().any(|e| merge_needs_heads(e.split)) => {
            warn(format!(
                "{who} records no attention-head count; none of its tensors needs one to merge, \
                 so it is compared without (cpm-convert would ask for --heads)"
            ));
            Ok((p, false))
        }
        _ => Err(err),
    }
}

/// Whether merging a tensor split this way depends on the head count. No wildcard on purpose: a
/// new split must decide here whether the stand-in head count of [`plan_side`] is safe for it.
fn merge_needs_heads(split: Split) -> bool {
    match split {
        Split::Replicated | Split::Dim0 | Split::Dim1 | Split::QkvDim0 => false,
        Split::QkvHeadsDim3 | Split::QkvHeads3Dim | Split::Qkv => true,
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
            let r = compare_parts(ra, rb, opts.atol, bufs);
            b.release(&spans_b);
            r
        });
    a.release(&spans_a);
    result
}

/// One side's tensor, read but not merged.
struct Read<'s> {
    side: &'s Side,
    item: &'s Item,
    parts: Vec<Cow<'s, [u8]>>,
}

/// Equal raw parts of the same layout are equal tensors (the common case, decided by a memory
/// compare); otherwise both are merged into the canonical layout and compared element by element.
fn compare_parts(
    a: Read<'_>,
    b: Read<'_>,
    atol: f64,
    bufs: &mut (Vec<u8>, Vec<u8>),
) -> Result<Option<Values>> {
    let blame = |r: &Read<'_>| {
        let who = r.side.who.clone();
        move |e| in_side(&who, e)
    };
    if same_layout(a.item, b.item) && a.parts.iter().zip(&b.parts).all(|(x, y)| x[..] == y[..]) {
        // The merge would also check that replicated copies agree across ranks; keep that.
        a.side
            .check_replicated(a.item, &a.parts)
            .map_err(blame(&a))?;
        b.side
            .check_replicated(b.item, &b.parts)
            .map_err(blame(&b))?;
        return Ok(None);
    }
    if let Some(same) = same_untransposed(&a, &b, bufs)? {
        if same {
            return Ok(None);
        }
    }
    let (ea, eb) = (blame(&a), blame(&b));
    let ma = a.side.merge(a.item, a.parts, &mut bufs.0).map_err(ea)?;
    let mb = b.side.merge(b.item, b.parts, &mut bufs.1).map_err(eb)?;
    let v = compare_streams(a.item, &ma, b.item, &mb, atol);
    recycle(ma, &mut bufs.0);
    recycle(mb, &mut bufs.1);
    Ok(v)
}

/// Where a side transposes, compare its merge before the transpose: a merge without a transpose
/// mostly borrows the parts, and the transpose costs more than all the rest of a comparison.
/// Both sides transposing: the same bytes there are the same tensor. One side: its rows must be
/// the other's columns, checked tile by tile without writing a transposed copy (a checkpoint
/// against its own conversion). `None` when not applicable (no transpose, or dtypes differ).
fn same_untransposed(
    a: &Read<'_>,
    b: &Read<'_>,
    bufs: &mut (Vec<u8>, Vec<u8>),
) -> Result<Option<bool>> {
    let (How::Planned(ea), How::Planned(eb)) = (&a.item.how, &b.item.how) else {
        return Ok(None);
    };
    if !(ea.transpose || eb.transpose) || ea.source_dtype != eb.source_dtype {
        return Ok(None);
    }
    // The same entry with the transpose left out: the merged matrix, [shape[1], shape[0]].
    let untransposed = |e: &Entry| {
        let mut e = e.clone();
        if e.transpose {
            e.transpose = false;
            e.shape.reverse();
        }
        e
    };
    let (ua, ub) = (untransposed(ea), untransposed(eb));
    let names = (a.side.src.part_names(ea), b.side.src.part_names(eb));
    let ma = merge_with(&ua, a.parts.clone(), &names.0, &mut bufs.0);
    let ma = ma.map_err(|e| in_side(&a.side.who, e))?;
    let mb = merge_with(&ub, b.parts.clone(), &names.1, &mut bufs.1);
    let mb = mb.map_err(|e| in_side(&b.side.who, e))?;
    let es = ea.source_dtype.size();
    let same = if ea.transpose == eb.transpose {
        Some(crate::merge::same_bytes(&ma, &mb))
    } else {
        // The transposing side's merged rows against the other side's canonical rows.
        let (t, o) = if ea.transpose { (&ma, &mb) } else { (&mb, &ma) };
        let width = |u: &Entry| u.shape.get(1).map_or(0, |&w| w as usize * es);
        let (wt, wo) = if ea.transpose {
            (width(&ua), width(&ub))
        } else {
            (width(&ub), width(&ua))
        };
        match (rows(t, wt), rows(o, wo)) {
            (Some(tr), Some(or)) => Some(same_transposed(&tr, &or, es)),
            _ => None,
        }
    };
    recycle(ma, &mut bufs.0);
    recycle(mb, &mut bufs.1);
    Ok(same)
}

/// The rows of a 2-D tensor held in pieces of whole rows; `None` if a piece cuts a row.
fn rows<'m>(pieces: &'m [Cow<'m, [u8]>], row_bytes: usize) -> Option<Vec<&'m [u8]>> {
    if row_bytes == 0 || pieces.iter().any(|p| p.len() % row_bytes != 0) {
        return None;
    }
    Some(
        pieces
            .iter()
            .flat_map(|p| p.chunks_exact(row_bytes))
            .collect(),
    )
}

/// A tile of [`same_transposed`]: rows of `a` (elements of each row of `b`) by rows of `b`.
/// Tall and narrow: each of the few rows of `b` is read along 512 contiguous bytes, which beat
/// square tiles by a fifth on the 8-layer benchmark (64x64: 0.64 s, 256x16: 0.51 s).
const TILE_A: usize = 256;
const TILE_B: usize = 16;

/// Whether `a` (R rows of C elements of `es` bytes) is bit for bit the transpose of `b` (C rows
/// of R elements). Large tensors are split by rows over a few threads: this is the one step of a
/// comparison that is not bound by memory bandwidth.
fn same_transposed(a: &[&[u8]], b: &[&[u8]], es: usize) -> bool {
    let (r, c) = (a.len(), b.len());
    if a.iter().any(|x| x.len() != c * es) || b.iter().any(|x| x.len() != r * es) {
        return false;
    }
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get().min(4));
    if threads < 2 || r * c < (1 << 20) {
        return same_rows(a, b, es, 0..r);
    }
    let chunk = r.div_ceil(threads).div_ceil(TILE_A) * TILE_A;
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..r)
            .step_by(chunk)
            .map(|i0| s.spawn(move || same_rows(a, b, es, i0..(i0 + chunk).min(r))))
            .collect();
        // A thread that panicked proves nothing: "not the same" sends the pair down the full
        // comparison, which reports what differs.
        handles.into_iter().all(|h| h.join().unwrap_or(false))
    })
}

/// [`same_transposed`] for rows `i` of `a`, tile by tile.
fn same_rows(a: &[&[u8]], b: &[&[u8]], es: usize, i: Range<usize>) -> bool {
    for i0 in i.clone().step_by(TILE_A) {
        let i1 = (i0 + TILE_A).min(i.end);
        for j0 in (0..b.len()).step_by(TILE_B) {
            let j1 = (j0 + TILE_B).min(b.len());
            if !same_tile(a, b, es, (i0, i1), (j0, j1)) {
                return false;
            }
        }
    }
    true
}

/// One tile: rows `i` of `a` against columns `i` of rows `j` of `b`. Lengths were checked.
fn same_tile(a: &[&[u8]], b: &[&[u8]], es: usize, i: (usize, usize), j: (usize, usize)) -> bool {
    // Whole 8x8 blocks of two-byte elements with SSE2 on x86-64; the rest element by element.
    let (mut i8, mut j8) = (i.0, j.0);
    #[cfg(target_arch = "x86_64")]
    if es == 2 {
        (i8, j8) = (i.0 + (i.1 - i.0) / 8 * 8, j.0 + (j.1 - j.0) / 8 * 8);
        for ii in (i.0..i8).step_by(8) {
            for jj in (j.0..j8).step_by(8) {
                if !sse2::same_8x8_u16(a, b, ii, jj) {
                    return false;
                }
            }
        }
    }
    let same =
        |ii: usize, jj: usize| a[ii][jj * es..(jj + 1) * es] == b[jj][ii * es..(ii + 1) * es];
    (i8..i.1).all(|ii| (j.0..j.1).all(|jj| same(ii, jj)))
        && (i.0..i8).all(|ii| (j8..j.1).all(|jj| same(ii, jj)))
}

#[cfg(target_arch = "x86_64")]
mod sse2 {
    use std::arch::x86_64::*;

    /// Rows `i..i+8` of `a`, elements `j..j+8`, against rows `j..j+8` of `b`, elements `i..i+8`:
    /// the block of `a` is transposed in registers. Every row must hold those elements (checked
    /// by slicing, so a caller's mistake is a panic, never an out-of-bounds read).
    pub fn same_8x8_u16(a: &[&[u8]], b: &[&[u8]], i: usize, j: usize) -> bool {
        let load = |row: &[u8], at: usize| -> __m128i {
            let s = &row[at * 2..at * 2 + 16];
            // SAFETY: `s` is 16 readable bytes; unaligned loads are allowed; SSE2 is part of
            // every x86-64 CPU.
            unsafe { _mm_loadu_si128(s.as_ptr() as *const __m128i) }
        };
        let r: [__m128i; 8] = std::array::from_fn(|k| load(a[i + k], j));
        // SAFETY: register-only SSE2 intrinsics; SSE2 is part of every x86-64 CPU.
        unsafe {
            let t0 = _mm_unpacklo_epi16(r[0], r[1]);
            let t1 = _mm_unpackhi_epi16(r[0], r[1]);
            let t2 = _mm_unpacklo_epi16(r[2], r[3]);
            let t3 = _mm_unpackhi_epi16(r[2], r[3]);
            let t4 = _mm_unpacklo_epi16(r[4], r[5]);
            let t5 = _mm_unpackhi_epi16(r[4], r[5]);
            let t6 = _mm_unpacklo_epi16(r[6], r[7]);
            let t7 = _mm_unpackhi_epi16(r[6], r[7]);
            let u0 = _mm_unpacklo_epi32(t0, t2);
            let u1 = _mm_unpackhi_epi32(t0, t2);
            let u2 = _mm_unpacklo_epi32(t1, t3);
            let u3 = _mm_unpackhi_epi32(t1, t3);
            let u4 = _mm_unpacklo_epi32(t4, t6);
            let u5 = _mm_unpackhi_epi32(t4, t6);
            let u6 = _mm_unpacklo_epi32(t5, t7);
            let u7 = _mm_unpackhi_epi32(t5, t7);
            // Column k of the block.
            let cols = [
                _mm_unpacklo_epi64(u0, u4),
                _mm_unpackhi_epi64(u0, u4),
                _mm_unpacklo_epi64(u1, u5),
                _mm_unpackhi_epi64(u1, u5),
                _mm_unpacklo_epi64(u2, u6),
                _mm_unpackhi_epi64(u2, u6),
                _mm_unpacklo_epi64(u3, u7),
                _mm_unpackhi_epi64(u3, u7),
            ];
            let mut all = _mm_set1_epi8(-1);
            for (k, col) in cols.iter().enumerate() {
                all = _mm_and_si128(all, _mm_cmpeq_epi16(*col, load(b[j + k], i)));
            }
            _mm_movemask_epi8(all) == 0xffff
        }
    }
}

/// [`merge::merge`](crate::merge::merge) with a recycled scratch buffer: every byte of the
/// buffer is overwritten (merge's contract), so it is only grown, never cleared.
fn merge_with<'a>(
    e: &Entry,
    parts: Vec<Cow<'a, [u8]>>,
    names: &[String],
    buf: &mut Vec<u8>,
) -> Result<Vec<Cow<'a, [u8]>>> {
    let mut alloc = |n: usize| {
        let mut v = std::mem::take(buf);
        v.resize(n, 0);
        v
    };
    crate::merge::merge(e, parts, names, &mut alloc)
}

/// Same dtype and the same way of merging the same part shapes: equal parts make equal tensors.
fn same_layout(ia: &Item, ib: &Item) -> bool {
    if ia.dtype != ib.dtype {
        return false;
    }
    match (&ia.how, &ib.how) {
        (How::Planned(x), How::Planned(y)) => {
            x.split == y.split
                && x.transpose == y.transpose
                && x.rank_shapes == y.rank_shapes
                && x.source_dtype == y.source_dtype
                && x.zeros == y.zeros
                && x.keep_rows == y.keep_rows
                && (x.heads == y.heads || !merge_needs_heads(x.split))
        }
        (How::Stored { tensor: x, .. }, How::Stored { tensor: y, .. }) => x.shape == y.shape,
        _ => false,
    }
}

/// Keep the larger of a merged buffer and the scratch buffer for the next merge.
fn recycle(pieces: Vec<Cow<'_, [u8]>>, buf: &mut Vec<u8>) {
    for p in pieces {
        if let Cow::Owned(v) = p {
            if v.capacity() > buf.capacity() {
                *buf = v;
            }
        }
    }
}

/// Byte spans read, with the index of the rank file each lies in.
type Spans = Vec<(usize, Range<u64>)>;

/// Drop our view of these pages (the page cache keeps them if memory allows).
fn release(src: &Source, spans: &Spans) {
    for (r, s) in spans {
        if let Some(rank) = src.ranks.get(*r) {
            rank.file.release(s);
        }
    }
}

impl Side {
    /// The item's parts (one per tensor-parallel rank for a canonical tensor, one for a stored
    /// one), as stored, and the spans to release afterwards.
    fn parts(&self, item: &Item) -> Result<(Vec<Cow<'_, [u8]>>, Spans)> {
        match &item.how {
            How::Planned(e) => {
                let spans = self.src.spans(e)?;
                let parts = self.src.read(e, &spans)?;
                let ranks = e.sources.iter().map(|p| p.rank);
                Ok((parts, ranks.zip(spans).collect()))
            }
            How::Stored {
                rank,
                source,
                tensor,
            } => {
                let file = &self.src.ranks[*rank].file;
                let span = file.span(source, tensor)?;
                file.prefetch(&span);
                let part = file.read_at(source, tensor, &span)?;
                Ok((vec![part], vec![(*rank, span)]))
            }
        }
    }

    fn release(&self, spans: &Spans) {
        release(&self.src, spans)
    }

    /// The tensor in canonical row-major order, in its stored dtype.
    fn merge<'a>(
        &self,
        item: &Item,
        parts: Vec<Cow<'a, [u8]>>,
        buf: &mut Vec<u8>,
    ) -> Result<Vec<Cow<'a, [u8]>>> {
        let How::Planned(e) = &item.how else {
            return Ok(parts);
        };
        merge_with(e, parts, &self.src.part_names(e), buf)
    }

    fn check_replicated(&self, item: &Item, parts: &[Cow<'_, [u8]>]) -> Result<()> {
        match &item.how {
            How::Planned(e) if e.split == Split::Replicated && parts.len() > 1 => {
                let borrowed = parts.iter().map(|p| Cow::Borrowed(&p[..])).collect();
                let names = self.src.part_names(e);
                crate::merge::merge(e, borrowed, &names, &mut |n| vec![0; n]).map(|_| ())
            }
            _ => Ok(()),
        }
    }
}

/// Elements per step of the comparison: a few KiB per side, in L1.
const CHUNK: usize = 2048;

/// A tensor's bytes as a sequence of pieces, read element by element in order.
struct Stream<'p> {
    pieces: &'p [Cow<'p, [u8]>],
    dtype: Dtype,
    piece: usize,
    at: usize,
}

impl<'p> Stream<'p> {
    fn new(pieces: &'p [Cow<'p, [u8]>], dtype: Dtype) -> Self {
        Stream {
            pieces,
            dtype,
            piece: 0,
            at: 0,
        }
    }

    /// The next up to `max` whole elements' bytes, within one piece; empty at the end.
    fn next_bytes(&mut self, max: usize) -> &'p [u8] {
        let es = self.dtype.size();
        while let Some(p) = self.pieces.get(self.piece) {
            let rest = &p[self.at.min(p.len())..];
            let n = (rest.len() / es).min(max) * es;
            if n > 0 {
                self.at += n;
                return &rest[..n];
            }
            self.piece += 1;
            self.at = 0;
        }
        &[]
    }

    /// Fill `out` with the next elements, widened; returns how many were written.
    fn fill<W: Wide>(&mut self, out: &mut [W]) -> usize {
        let es = self.dtype.size();
        let mut n = 0;
        while n < out.len() {
            let bytes = self.next_bytes(out.len() - n);
            if bytes.is_empty() {
                break;
            }
            let m = bytes.len() / es;
            W::widen(bytes, self.dtype, &mut out[n..n + m]);
            n += m;
        }
        n
    }
}

/// Compare two merged tensors of equal shape. Equal bytes in the same dtype are equal values
/// (a memory compare); anything else is widened and compared element by element.
fn compare_streams(
    ia: &Item,
    ma: &[Cow<'_, [u8]>],
    ib: &Item,
    mb: &[Cow<'_, [u8]>],
    atol: f64,
) -> Option<Values> {
    if ia.dtype == ib.dtype && crate::merge::same_bytes(ma, mb) {
        return None;
    }
    let (sa, sb) = (Stream::new(ma, ia.dtype), Stream::new(mb, ib.dtype));
    let fig = if ia.dtype.is_float() && ib.dtype.is_float() {
        figures::<f32>(sa, sb, atol)
    } else {
        figures::<f64>(sa, sb, atol)
    };
    (fig.differing > 0).then(|| fig.values(&ia.name, &ia.shape))
}

/// Run the accumulator over both streams, a chunk at a time.
fn figures<W: Wide>(mut sa: Stream<'_>, mut sb: Stream<'_>, atol: f64) -> Figures {
    let mut fig = Figures::new(atol);
    let mut xa = vec![W::default(); CHUNK];
    let mut xb = vec![W::default(); CHUNK];
    loop {
        let (n, m) = (sa.fill(&mut xa), sb.fill(&mut xb));
        let n = n.min(m);
        if n == 0 {
            return fig;
        }
        fig.add(&xa[..n], &xb[..n]);
    }
}

/// Values the comparison runs on: f32 for float tensors (exact for f16, bf16, f32; f64 rounds),
/// f64 for integer and boolean ones (raw mode only; exact up to 2^53).
trait Wide: Copy + Default {
    fn f64(self) -> f64;
    /// Bit-for-bit equality (so NaN equals only the identical NaN, and -0 is not +0).
    fn same(self, o: Self) -> bool;
    fn widen(bytes: &[u8], dtype: Dtype, out: &mut [Self]);
}

impl Wide for f32 {
    fn f64(self) -> f64 {
        self as f64
    }
    fn same(self, o: f32) -> bool {
        self.to_bits() == o.to_bits()
    }
    fn widen(bytes: &[u8], dtype: Dtype, out: &mut [f32]) {
        crate::merge::widen(bytes, dtype, out)
    }
}

impl Wide for f64 {
    fn f64(self) -> f64 {
        self
    }
    fn same(self, o: f64) -> bool {
        self.to_bits() == o.to_bits()
    }
    fn widen(bytes: &[u8], dtype: Dtype, out: &mut [f64]) {
        let es = dtype.size();
        for (o, c) in out.iter_mut().zip(bytes.chunks_exact(es)) {
            *o = crate::merge::element(c, dtype, 0);
        }
    }
}

/// Independent sums, so the compiler can keep them in vector registers (f64 addition is not
/// reassociated on its own).
const LANES: usize = 4;

/// Running figures of one tensor pair.
struct Figures {
    atol: f64,
    elements: u64,
    differing: u64,
    first: Option<u64>,
    max_abs: [f64; LANES],
    d2: [f64; LANES],
    a2: [f64; LANES],
    b2: [f64; LANES],
    ab: [f64; LANES],
}

impl Figures {
    fn new(atol: f64) -> Self {
        Figures {
            // At 0 only identical bits are equal (so -0 is not +0): no difference is <= -1.
            atol: if atol > 0.0 { atol } else { -1.0 },
            elements: 0,
            differing: 0,
            first: None,
            max_abs: [0.0; LANES],
            d2: [0.0; LANES],
            a2: [0.0; LANES],
            b2: [0.0; LANES],
            ab: [0.0; LANES],
        }
    }

    /// Add a chunk of pairs (equal lengths).
    fn add<W: Wide>(&mut self, a: &[W], b: &[W]) {
        let atol = self.atol;
        let mut ndiff = [0u64; LANES];
        let body = a.len() / LANES * LANES;
        for (ca, cb) in a[..body]
            .chunks_exact(LANES)
            .zip(b[..body].chunks_exact(LANES))
        {
            for l in 0..LANES {
                let (x, y) = (ca[l].f64(), cb[l].f64());
                let d = x - y;
                self.d2[l] += d * d;
                self.a2[l] += x * x;
                self.b2[l] += y * y;
                self.ab[l] += x * y;
                // A NaN difference compares false: it is never "within atol", never a maximum.
                let ad = d.abs();
                ndiff[l] += u64::from(!(ca[l].same(cb[l]) || ad <= atol));
                self.max_abs[l] = if ad > self.max_abs[l] {
                    ad
                } else {
                    self.max_abs[l]
                };
            }
        }
        for (i, (x, y)) in a[body..].iter().zip(&b[body..]).enumerate() {
            let l = i % LANES;
            let (xf, yf) = (x.f64(), y.f64());
            let d = xf - yf;
            self.d2[l] += d * d;
            self.a2[l] += xf * xf;
            self.b2[l] += yf * yf;
            self.ab[l] += xf * yf;
            ndiff[l] += u64::from(!(x.same(*y) || d.abs() <= atol));
            self.max_abs[l] = if d.abs() > self.max_abs[l] {
                d.abs()
            } else {
                self.max_abs[l]
            };
        }
        let n: u64 = ndiff.iter().sum();
        if n > 0 && self.first.is_none() {
            let at = a
                .iter()
                .zip(b)
                .position(|(x, y)| !(x.same(*y) || (x.f64() - y.f64()).abs() <= atol));
            self.first = at.map(|i| self.elements + i as u64);
        }
        self.differing += n;
        self.elements += a.len() as u64;
    }

    fn values(&self, name: &str, shape: &[u64]) -> Values {
        let sum = |v: &[f64; LANES]| v.iter().sum::<f64>();
        let finite = |x: f64| x.is_finite().then_some(x);
        let (d2, a2, b2, ab) = (sum(&self.d2), sum(&self.a2), sum(&self.b2), sum(&self.ab));
        let max = self.max_abs.iter().fold(0.0f64, |m, &x| m.max(x));
        Values {
            name: name.to_string(),
            max_abs_diff: finite(max),
            differing: self.differing,
            elements: self.elements,
            fraction: self.differing as f64 / (self.elements.max(1)) as f64,
            first_index: unravel(self.first.unwrap_or(0), shape),
            rel_diff: finite(d2.sqrt() / a2.sqrt()),
            cosine: finite(ab / (a2.sqrt() * b2.sqrt())),
        }
    }
}

/// A row-major linear index as one index per dimension.
fn unravel(mut i: u64, shape: &[u64]) -> Vec<u64> {
    let mut idx = vec![0; shape.len()];
    for (k, &d) in shape.iter().enumerate().rev() {
        if d > 0 {
            idx[k] = i % d;
            i /= d;
        }
    }
    idx
}

#[cfg(test)]
mod tests {
    use super::*;
    use half::f16;

    fn f32_bytes(v: &[f32]) -> Vec<u8> {
        v.iter().flat_map(|x| x.to_le_bytes()).collect()
    }

    fn item(name: &str, shape: &[u64], dtype: Dtype) -> Item {
        let tensor = TensorRef {
            storage_key: "0".into(),
            dtype,
            offset: 0,
            shape: shape.to_vec(),
            stride: vec![1; shape.len()],
        };
        Item {
            name: name.into(),
            shape: shape.to_vec(),
            dtype,
            how: How::Stored {
                rank: 0,
                source: name.into(),
                tensor: std::rc::Rc::new(tensor),
            },
        }
    }

    /// Compare `a` (as one f32 piece) with `b` (as f32 pieces split at `cuts`).
    fn compare(a: &[f32], b: &[f32], cuts: &[usize], atol: f64) -> Option<Values> {
        let shape = [a.len() as u64];
        let pa = vec![Cow::Owned(f32_bytes(a))];
        let mut pb = Vec::new();
        let mut last = 0;
        for &c in cuts.iter().chain([b.len()].iter()) {
            pb.push(Cow::Owned(f32_bytes(&b[last..c])));
            last = c;
        }
        let (ia, ib) = (item("t", &shape, Dtype::F32), item("t", &shape, Dtype::F32));
        compare_streams(&ia, &pa, &ib, &pb, atol)
    }

    #[test]
    fn nan_equals_only_the_identical_nan_and_minus_zero_is_not_plus_zero_at_atol_0() {
        let quiet = f32::from_bits(0x7fc0_0000);
        let other = f32::from_bits(0x7fc0_0001);
        assert!(compare(&[1.0, quiet], &[1.0, quiet], &[], 0.0).is_none());
        let v = compare(&[1.0, quiet], &[1.0, other], &[], 0.0).expect("payloads differ");
        assert_eq!((v.differing, v.first_index.as_slice()), (1, &[1u64][..]));
        assert_eq!(v.max_abs_diff, Some(0.0), "a NaN pair has no magnitude");
        assert!(
            v.rel_diff.is_none() && v.cosine.is_none(),
            "NaN figures are null"
        );
        // A NaN is never within any tolerance.
        assert!(compare(&[quiet], &[1.0], &[], 1e30).is_some());
        let v = compare(&[0.0], &[-0.0], &[], 0.0).expect("bit-for-bit");
        assert_eq!(v.max_abs_diff, Some(0.0));
        assert!(compare(&[0.0], &[-0.0], &[], 1e-30).is_none());
    }

    #[test]
    fn atol_is_inclusive_and_measured_exactly_in_f64() {
        let (a, b) = (1.0f32, 1.0f32 + f32::EPSILON);
        let d = (b as f64) - (a as f64);
        assert!(compare(&[a], &[b], &[], d).is_none());
        assert!(compare(&[a], &[b], &[], d * 0.5).is_some());
        assert!(compare(&[f32::INFINITY], &[f32::INFINITY], &[], 0.5).is_none());
        let v = compare(&[f32::INFINITY], &[1.0], &[], 0.5).expect("inf vs 1");
        assert_eq!(
            v.max_abs_diff, None,
            "an infinite difference is not a finite figure"
        );
    }

    #[test]
    fn figures_agree_with_a_plain_f64_computation_across_chunks_lanes_and_pieces() {
        // Long enough for several chunks, a length that leaves a lane tail, pieces of B cut
        // at odd places, and the first difference past the first chunk.
        let n = 3 * CHUNK + 7;
        let a: Vec<f32> = (0..n)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) / 7.0)
            .collect();
        let mut b = a.clone();
        for &k in &[CHUNK + 5, 2 * CHUNK + 1, n - 1] {
            b[k] += 0.5 + k as f32 / 1e4;
        }
        let v = compare(&a, &b, &[1, 333, CHUNK + 3, 2 * CHUNK + 2], 0.0).expect("differs");
        assert_eq!((v.differing, v.elements), (3, n as u64));
        assert_eq!(v.first_index, [(CHUNK + 5) as u64]);
        let (mut d2, mut a2, mut b2, mut ab, mut max) = (0f64, 0f64, 0f64, 0f64, 0f64);
        for (x, y) in a.iter().zip(&b) {
            let (x, y) = (*x as f64, *y as f64);
            d2 += (x - y) * (x - y);
            a2 += x * x;
            b2 += y * y;
            ab += x * y;
            max = max.max((x - y).abs());
        }
        assert_eq!(v.max_abs_diff, Some(max));
        let close = |x: Option<f64>, y: f64| (x.unwrap() - y).abs() <= 1e-12 * y.abs();
        assert!(close(v.rel_diff, d2.sqrt() / a2.sqrt()), "{v:?}");
        assert!(close(v.cosine, ab / (a2.sqrt() * b2.sqrt())), "{v:?}");
        // Equal values in differently cut pieces are equal.
        assert!(compare(&a, &a, &[1, CHUNK, CHUNK + 1], 0.0).is_none());
    }

    #[test]
    fn f16_and_f32_of_the_same_values_are_equal_and_integers_compare_exactly() {
        let xs = [0.5f32, -3.25, 65504.0, 1.0e-7];
        let h: Vec<u8> = xs
            .iter()
            .flat_map(|x| f16::from_f32(*x).to_le_bytes())
            .collect();
        let w: Vec<f32> = xs.iter().map(|x| f16::from_f32(*x).to_f32()).collect();
        let (ia, ib) = (item("t", &[4], Dtype::F16), item("t", &[4], Dtype::F32));
        let (pa, pb) = (vec![Cow::Owned(h)], vec![Cow::Owned(f32_bytes(&w))]);
        assert!(compare_streams(&ia, &pa, &ib, &pb, 0.0).is_none());
        // 2^53 + 1 and 2^53 are one apart as integers but equal as f32 (and f64).
        let big = |v: i64| vec![Cow::Owned(v.to_le_bytes().to_vec())];
        let (ia, ib) = (item("t", &[1], Dtype::I64), item("t", &[1], Dtype::I64));
        let v = compare_streams(&ia, &big(3), &ib, &big(4), 0.0).expect("3 vs 4");
        assert_eq!(v.max_abs_diff, Some(1.0));
    }

    /// `a` (r x c elements of `es` bytes, from noise) and its transpose.
    fn matrix_and_transpose(r: usize, c: usize, es: usize) -> (Vec<u8>, Vec<u8>) {
        let a: Vec<u8> = (0..r * c * es).map(|k| (k * 7919 % 251) as u8).collect();
        let mut t = vec![0u8; a.len()];
        for i in 0..r {
            for j in 0..c {
                let (from, to) = ((i * c + j) * es, (j * r + i) * es);
                t[to..to + es].copy_from_slice(&a[from..from + es]);
            }
        }
        (a, t)
    }

    fn row_slices(m: &[u8], w: usize, es: usize) -> Vec<&[u8]> {
        m.chunks_exact(w * es).collect()
    }

    #[test]
    fn transposed_comparison_finds_every_single_changed_element() {
        // Sizes around the 8x8 SIMD blocks, the 256x16 tiles and the threaded split (over
        // 2^20 elements), 2- and 4-byte elements: every element changed in turn (small sizes)
        // or a spread of them (large) is found.
        for (r, c, es) in [
            (1, 1, 2),
            (8, 8, 2),
            (9, 17, 2),
            (70, 13, 2),
            (130, 72, 2),
            (300, 20, 2),
            (9, 10, 4),
            (1100, 1000, 2),
        ] {
            let (a, t) = matrix_and_transpose(r, c, es);
            let (ra, rt) = (row_slices(&a, c, es), row_slices(&t, r, es));
            assert!(same_transposed(&ra, &rt, es), "{r}x{c}x{es}");
            let step = if r * c > 20_000 {
                99_991
            } else if r * c > 500 {
                97
            } else {
                1
            };
            for k in (0..r * c).step_by(step).chain([r * c - 1]) {
                let mut u = t.clone();
                u[k * es + es - 1] ^= 0x80;
                let ru = row_slices(&u, r, es);
                assert!(!same_transposed(&ra, &ru, es), "{r}x{c}x{es} at {k}");
            }
        }
        // Rows of the wrong length are not the transpose.
        let (a, t) = matrix_and_transpose(8, 8, 2);
        let short: Vec<&[u8]> = t.chunks_exact(16).map(|x| &x[..14]).collect();
        assert!(!same_transposed(&row_slices(&a, 8, 2), &short, 2));
    }

    #[test]
    fn unravel_gives_row_major_indices() {
        assert_eq!(unravel(0, &[2, 3]), [0, 0]);
        assert_eq!(unravel(5, &[2, 3]), [1, 2]);
        assert_eq!(unravel(7, &[2, 3, 4]), [0, 1, 3]);
        assert_eq!(unravel(3, &[4]), [3]);
    }
}
