//! Turning matched sources into output tensors: shapes checked and merged, the query/key/value
//! layout resolved, zeros synthesized, tied copies of the embedding dropped, copies that must
//! equal it set aside as checks, the file order fixed, and the vocabulary padding cut.

use cpm_torch::{Dtype, TensorRef, TorchFile};

use super::matching::Matched;
use super::{Check, Entry, OutDtype, Part};
use crate::checkpoint::weights::Rank;
use crate::error::{Error, Result};
use crate::mapping::{target_name, Mapping, Rule, Split, BLOCK};

/// The plan's tensors before the model's sizes are known.
pub struct Planned {
    pub entries: Vec<Entry>,
    pub checks: Vec<Check>,
    pub tied_copies: Vec<String>,
}

/// Every matched source as an entry (in file order), a check, or a dropped tied copy. Without
/// `read_copies` a tied head of the embedding's dtype and shape is taken for a copy unread
/// (enough to tell whether a family fits: either way the model's structure is the same).
pub fn plan_all(
    ranks: &[Rank],
    mapping: &Mapping,
    matched: &[Matched],
    read_copies: bool,
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
            if is_copy(ranks, mapping, matched, m, of, read_copies)? {
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
/// on every rank it shares that tensor's storage, or holds the same bytes (compared only with
/// `read`; without, one of the same dtype and shape is taken for a copy).
fn is_copy(
    ranks: &[Rank],
    mapping: &Mapping,
    matched: &[Matched],
    m: &Matched,
    of: &str,
    read: bool,
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
        if shared || !read {
            continue;
        }
        let fa = &ranks[a.rank].file;
        let fb = &ranks[b.rank].file;
        if !same_bytes((fa, &m.name, ta), (fb, &other.name, tb), COMPARE_BLOCK)? {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Bytes compared at a time where a tensor is assembled from chunks.
const COMPARE_BLOCK: u64 = 8 << 20;

/// Whether two tensors of one dtype and shape hold the same bytes. Tensors a DCP folder
/// assembles from chunks are compared `block` bytes at a time: assembling an embedding-sized
/// head and the embedding whole, once to detect the family and once to plan, cost more than
/// the rest of the conversion's reading and held two such copies in memory.
fn same_bytes(
    (fa, na, ta): (&TorchFile, &str, &TensorRef),
    (fb, nb, tb): (&TorchFile, &str, &TensorRef),
    block: u64,
) -> Result<bool> {
    let whole = || -> Result<bool> {
        let (sa, sb) = (fa.span(na, ta)?, fb.span(nb, tb)?);
        let same = fa.read_at(na, ta, &sa)? == fb.read_at(nb, tb, &sb)?;
        fa.release_for(na, ta, &sa);
        fb.release_for(nb, tb, &sb);
        Ok(same)
    };
    let (Some(da), Some(db)) = (fa.dcp(), fb.dcp()) else {
        return whole();
    };
    if !ta.is_contiguous() || !tb.is_contiguous() {
        return whole();
    }
    // Contiguous: the span's bytes are the tensor's (as TorchFile::read_at takes them).
    let (sa, sb) = (da.span(na, ta)?, db.span(nb, tb)?);
    let n = sa.end - sa.start;
    if sb.end - sb.start != n {
        return Ok(false);
    }
    // Whole elements per block, so every piece starts on an element.
    let step = (block / ta.dtype.size() as u64).max(1) * ta.dtype.size() as u64;
    let mut at = 0;
    while at < n {
        let len = step.min(n - at);
        let (ra, rb) = (
            sa.start + at..sa.start + at + len,
            sb.start + at..sb.start + at + len,
        );
        let same = da.read_span(na, &ra)? == db.read_span(nb, &rb)?;
        // Lent blocks are compared in place; drop their pages as assembled ones are.
        let lent = da
            .pages_span(na, &ra)
            .into_iter()
            .chain(db.pages_span(nb, &rb));
        lent.for_each(|(p, r)| p.release(&r));
        if !same {
            return Ok(false);
        }
        at += len;
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

#[cfg(test)]
mod tests {
    use super::*;

    /// accelerate saved the tied head beside the embedding in this DCP folder (the same values,
    /// split over its two ranks); every block size, down to one element, must agree with the
    /// whole comparison, and two different weights of one shape must differ at every size.
    #[test]
    fn dcp_tensors_compared_by_blocks_agree_with_whole_reads() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../fixtures/training/dcp-fsdp2-accelerate/checkpoint");
        let src = crate::open(&dir, &crate::Family::Detect).unwrap();
        let rank = &src.ranks[0];
        let f = &rank.file;
        assert!(f.dcp().is_some());
        let find = |suffix: &str| {
            let (n, t) = rank
                .weights
                .iter()
                .find(|(n, _)| n.ends_with(suffix))
                .unwrap();
            (n.as_str(), t.as_ref())
        };
        let (head, wte) = (find("lm_head.weight"), find("wte.weight"));
        let (p0, p1) = (
            find("h.0.attn.c_proj.weight"),
            find("h.1.attn.c_proj.weight"),
        );
        let whole = |a: (&str, &TensorRef), b: (&str, &TensorRef)| {
            f.read(a.0, a.1).unwrap() == f.read(b.0, b.1).unwrap()
        };
        assert!(whole(head, wte));
        assert!(!whole(p0, p1));
        for block in [1, 4, 4096, 100_000, COMPARE_BLOCK] {
            assert!(same_bytes((f, head.0, head.1), (f, wte.0, wte.1), block).unwrap());
            assert!(!same_bytes((f, p0.0, p0.1), (f, p1.0, p1.1), block).unwrap());
        }
    }
}
