//! Turning matched sources into output tensors: shapes checked and merged, the query/key/value
//! layout resolved, zeros synthesized, tied copies of the embedding dropped, copies that must
//! equal it set aside as checks, the file order fixed, and the vocabulary padding cut.

use super::matching::Matched;
use super::{Check, Entry, OutDtype, Part};
use crate::checkpoint::weights::Rank;
use crate::error::{Error, Result};
use crate::mapping::{target_name, Mapping, Rule, Split, BLOCK};
use crate::torch::Dtype;

/// The plan's tensors before the model's sizes are known.
pub struct Planned {
    pub entries: Vec<Entry>,
    pub checks: Vec<Check>,
    pub tied_copies: Vec<String>,
}

/// Every matched source as an entry (in file order), a check, or a dropped tied copy.
pub fn plan_all(
    ranks: &[Rank],
    mapping: &Mapping,
    matched: &[Matched],
    qkv: Option<Split>,
    out: OutDtype,
) -> Result<Planned> {
    let mut keyed = Vec::new();
    let mut checks = Vec::new();
    let mut tied_copies = Vec::new();
    let first_block = mapping
        .tensors
        .iter()
        .position(|r| r.target.contains(BLOCK));
    for m in matched {
        let rule = &mapping.tensors[m.rule];
        let split = match rule.split {
            Split::Qkv => qkv.ok_or_else(|| Error::internal("qkv layout unresolved"))?,
            s => s,
        };
        let entry = plan_entry(ranks, m, rule, split, out)?;
        if let Some(of) = &rule.copy_of {
            checks.push(Check {
                entry,
                of: of.clone(),
            });
            continue;
        }
        if let Some(of) = &rule.tied_to {
            if is_copy(ranks, mapping, matched, m, of)? {
                tied_copies.push(m.name.clone());
                continue;
            }
        }
        // Embeddings first, then blocks in layer order (each in rule order), then the final
        // layer norm: the order a reader of the file expects and the sources lie in.
        let part = match (m.block, first_block) {
            (Some(_), _) => 1,
            (None, Some(f)) if m.rule > f => 2,
            _ => 0,
        };
        keyed.push(((part, m.block.unwrap_or(0), m.rule), entry));
    }
    keyed.sort_by_key(|(k, _)| *k);
    let mut entries: Vec<Entry> = keyed.into_iter().map(|(_, e)| e).collect();
    // Synthesized tensors take the dtype of the weights around them.
    let dtype = entries.iter().find(|e| !e.zeros).map(|e| e.source_dtype);
    for e in entries.iter_mut().filter(|e| e.zeros) {
        e.source_dtype = dtype.unwrap_or(Dtype::F32);
        e.dtype = out.resolve(e.source_dtype);
    }
    Ok(Planned {
        entries,
        checks,
        tied_copies,
    })
}

fn plan_entry(
    ranks: &[Rank],
    m: &Matched,
    rule: &Rule,
    split: Split,
    out: OutDtype,
) -> Result<Entry> {
    let base = Entry {
        target: target_name(&rule.target, m.block),
        source: m.name.clone(),
        split,
        transpose: rule.transpose,
        source_dtype: Dtype::F32,
        dtype: out.resolve(Dtype::F32),
        rank_shapes: Vec::new(),
        shape: Vec::new(),
        zeros: m.parts.is_empty(),
        keep_rows: None,
        heads: 0,
        sources: m.parts.clone(),
        dims: Mapping::dims(rule),
    };
    if base.zeros {
        // Shape filled in once the model's sizes are known.
        return Ok(base);
    }
    check_sources(ranks, &m.name, &m.parts)?;
    let t0 = &m.parts[0].tensor;
    let shape = merged_shape(ranks, m, rule.transpose, split)?;
    Ok(Entry {
        source_dtype: t0.dtype,
        dtype: out.resolve(t0.dtype),
        rank_shapes: m.parts.iter().map(|p| p.tensor.shape.clone()).collect(),
        shape,
        ..base
    })
}

/// The merged tensor's shape (after any transpose).
fn merged_shape(ranks: &[Rank], m: &Matched, transpose: bool, split: Split) -> Result<Vec<u64>> {
    let path0 = &ranks[m.parts[0].rank].file.path;
    let t0 = &m.parts[0].tensor;
    let nd = t0.shape.len();
    let bad_shape =
        |why: &str| Error::tensor(path0, &m.name, format!("has shape {:?}, {why}", t0.shape));
    if nd == 0 || nd > 2 {
        return Err(bad_shape("expected 1 or 2 dimensions"));
    }
    if transpose && nd != 2 {
        return Err(bad_shape(
            "but the mapping transposes it (needs 2 dimensions)",
        ));
    }
    // Which dimension grows when the ranks are merged.
    let free_dim = match split {
        Split::Replicated => None,
        Split::Dim1 if nd == 2 => Some(1),
        Split::Dim1 => return Err(bad_shape("but dim1 splitting needs 2 dimensions")),
        _ => Some(0),
    };
    if split.is_qkv() && t0.shape[0] % 3 != 0 {
        return Err(Error::tensor(
            path0,
            &m.name,
            format!(
                "has {} rows per rank, expected a multiple of 3 (query, key, value blocks; \
                 grouped-query attention, which GPT-2 does not have, stores fewer key/value rows)",
                t0.shape[0]
            ),
        ));
    }
    let mut merged = t0.shape.clone();
    if let Some(d) = free_dim {
        merged[d] = t0.shape[d]
            .checked_mul(m.parts.len() as u64)
            .ok_or_else(|| Error::tensor(path0, &m.name, "merged size overflows"))?;
    }
    Ok(if transpose {
        vec![merged[1], merged[0]]
    } else {
        merged
    })
}

/// Every rank's copy of one tensor lies inside its storage, and all copies share a floating
/// dtype and a shape (Megatron partitions evenly, so even split tensors are equal on every rank).
fn check_sources(ranks: &[Rank], name: &str, parts: &[Part]) -> Result<()> {
    let p0 = &parts[0];
    let (t0, r0) = (&p0.tensor, &ranks[p0.rank]);
    for (t, p) in parts.iter().enumerate() {
        let rank = &ranks[p.rank];
        // Bounds against the storage, before anything is read.
        rank.file.span(name, &p.tensor)?;
        let differs = |what: &str, a: String, b: String| {
            Error::merge(format!(
                "tensor `{name}`: rank 0 ({}) holds {what} {a} but rank {t} ({}) holds {b}; \
                 model-parallel ranks of one model hold equal {what}s",
                r0.display, rank.display
            ))
        };
        if p.tensor.dtype != t0.dtype {
            let (a, b) = (t0.dtype.torch_name(), p.tensor.dtype.torch_name());
            return Err(differs("dtype", a.into(), b.into()));
        }
        if p.tensor.shape != t0.shape {
            let (a, b) = (format!("{:?}", t0.shape), format!("{:?}", p.tensor.shape));
            return Err(differs("shape", a, b));
        }
    }
    if !t0.dtype.is_float() {
        return Err(Error::tensor(
            &r0.file.path,
            name,
            format!(
                "is {}, expected a floating-point weight",
                t0.dtype.torch_name()
            ),
        ));
    }
    Ok(())
}

/// Whether `m` (an output head saved although tied) is a copy of the tensor written as `of`:
/// on every rank it shares that tensor's storage, or holds the same bytes.
fn is_copy(
    ranks: &[Rank],
    mapping: &Mapping,
    matched: &[Matched],
    m: &Matched,
    of: &str,
) -> Result<bool> {
    let Some(other) = matched
        .iter()
        .find(|o| mapping.tensors[o.rule].target == of && !o.parts.is_empty())
    else {
        return Ok(false);
    };
    if other.parts.len() != m.parts.len() {
        return Ok(false);
    }
    for (a, b) in m.parts.iter().zip(&other.parts) {
        let (ta, tb) = (&a.tensor, &b.tensor);
        if ta.dtype != tb.dtype || ta.shape != tb.shape {
            return Ok(false);
        }
        let shared = a.rank == b.rank
            && ta.storage_key == tb.storage_key
            && ta.offset == tb.offset
            && ta.stride == tb.stride;
        if shared {
            continue;
        }
        let fa = &ranks[a.rank].file;
        let fb = &ranks[b.rank].file;
        if fa.read(&m.name, ta)? != fb.read(&other.name, tb)? {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Fill the shapes of synthesized tensors once the model's sizes are known.
pub fn fill_zero_shapes(entries: &mut [Entry], size: &dyn Fn(&str) -> Result<u64>) -> Result<()> {
    for e in entries.iter_mut().filter(|e| e.zeros) {
        e.shape = e
            .dims
            .iter()
            .map(|d| size(&d.size).map(|v| v * d.factor))
            .collect::<Result<Vec<_>>>()?;
    }
    Ok(())
}

/// Apply `--vocab-size`: keep the first `want` rows of every tensor whose first dimension is the
/// vocabulary (the embedding, an untied head). Returns the vocabulary written. Without it,
/// padded-looking vocabularies are kept with a note (unless `padding_noted` says one was made).
pub fn cut_vocab(
    planned: &mut Planned,
    rows: u64,
    want: Option<u64>,
    padding_noted: bool,
    notes: &mut Vec<String>,
) -> Result<u64> {
    let Some(n) = want else {
        if rows % 64 == 0 && rows > 64 && !padding_noted {
            notes.push(format!(
                "the vocabulary has {rows} rows, a multiple of 64 as padded vocabularies are; if \
                 the tokenizer has fewer entries, pass --vocab-size N to cut the padding"
            ));
        }
        return Ok(rows);
    };
    if n == rows {
        return Ok(rows);
    }
    if n == 0 || n > rows {
        return Err(Error::usage(format!(
            "--vocab-size {n}: the checkpoint's vocabulary has {rows} rows; the size can only cut \
             padding (1..={rows})"
        )));
    }
    let all = planned
        .entries
        .iter_mut()
        .chain(planned.checks.iter_mut().map(|c| &mut c.entry));
    for e in all {
        let Some(pos) = e.dims.iter().position(|d| d.size == "vocab") else {
            continue;
        };
        if pos != 0 || e.transpose || e.dims[0].factor != 1 {
            return Err(Error::usage(format!(
                "--vocab-size: tensor `{}` holds the vocabulary in a layout that cannot be cut \
                 by rows",
                e.source
            )));
        }
        e.keep_rows = Some(n);
        e.shape[0] = n;
    }
    Ok(n)
}
