//! One input of a comparison: its map (canonical, as `cpm-convert` would write it, or the
//! weights as stored) and how to read, merge and release one tensor's parts.

use std::borrow::Cow;
use std::ops::Range;

use cpm_torch::{Dtype, TensorRef};

use crate::error::{Error, Result};
use crate::mapping::Split;
use crate::plan::{Entry, Hints, OutDtype, Plan};
use crate::Source;

use super::in_side;

/// One tensor of a side's map, and how to produce its values.
pub(super) struct Item {
    pub(super) name: String,
    pub(super) shape: Vec<u64>,
    pub(super) dtype: Dtype,
    pub(super) how: How,
}

pub(super) enum How {
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
pub(super) struct Side {
    pub(super) src: Source,
    pub(super) items: Vec<Item>,
    /// The head count the plan used, when the checkpoint (or `--heads`) gave one.
    pub(super) heads: Option<crate::plan::Heads>,
    /// "A (path)", for messages.
    pub(super) who: String,
}

impl Side {
    /// The canonical map: what `cpm-convert` would write (dtype kept). With `values`, the copies
    /// the checkpoint keeps of a written tensor are checked as cpm-convert checks them.
    pub(super) fn canonical(
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
    pub(super) fn raw(src: Source, who: String, qualify: bool) -> Result<Side> {
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
    let err = match crate::plan(src, hints.clone(), OutDtype::Keep) {
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
pub(super) fn merge_needs_heads(split: Split) -> bool {
    match split {
        Split::Replicated | Split::Dim0 | Split::Dim1 | Split::QkvDim0 => false,
        Split::QkvHeadsDim3 | Split::QkvHeads3Dim | Split::Qkv => true,
    }
}

/// [`merge::merge`](crate::merge::merge) with a recycled scratch buffer: every byte of the
/// buffer is overwritten (merge's contract), so it is only grown, never cleared.
pub(super) fn merge_with<'a>(
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

/// The mapped pages read, to release afterwards.
type Spans<'a> = Vec<(cpm_torch::Pages<'a>, Range<u64>)>;

/// Drop our view of these pages (the page cache keeps them if memory allows).
fn release(spans: &Spans) {
    for (p, s) in spans {
        p.release(s);
    }
}

impl Side {
    /// The item's parts (one per tensor-parallel rank for a canonical tensor, one for a stored
    /// one), as stored, and the spans to release afterwards.
    pub(super) fn parts(&self, item: &Item) -> Result<(Vec<Cow<'_, [u8]>>, Spans<'_>)> {
        match &item.how {
            How::Planned(e) => {
                let spans = self.src.spans(e)?;
                let parts = self.src.read(e, &spans)?;
                let pages = e.sources.iter().zip(&spans).flat_map(|(p, s)| {
                    self.src.ranks[p.rank]
                        .file
                        .pages_for(&e.source, &p.tensor, s)
                });
                Ok((parts, pages.collect()))
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
                Ok((vec![part], file.pages_for(source, tensor, &span)))
            }
        }
    }

    pub(super) fn release(&self, spans: &Spans) {
        release(spans)
    }

    /// The tensor in canonical row-major order, in its stored dtype.
    pub(super) fn merge<'a>(
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

    pub(super) fn check_replicated(&self, item: &Item, parts: &[Cow<'_, [u8]>]) -> Result<()> {
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
