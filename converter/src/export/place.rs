//! Where each output tensor goes in a model-parallel layout: the target mapping's rule for it
//! (found by its Hugging Face name), its name there, its pipeline stage, its split, padding and
//! orientation; every size that must divide by `--tp` checked before anything is written; and
//! each rank file's pickled object tree, known before the first tensor is read.

use crate::error::{Error, Result};
use crate::mapping::{Mapping, Rule, Split, BLOCK};
use crate::plan::{Entry, Plan};

use super::pickler::{self, Py, TensorMeta};
use super::{Export, Grid, Iteration, RankFormat, Slot};

/// One output tensor's journey.
#[derive(Debug, Clone)]
pub struct Placed {
    /// The plan's entry (how to read it).
    pub entry: Entry,
    /// The same, transposed by the merge only if the target's orientation differs from the
    /// source's.
    pub merge: Entry,
    /// The same, with the target's split (what `split::split` reads).
    pub split: Entry,
    /// The whole tensor in the target's orientation, padding included (1-D: one column).
    pub rows: usize,
    pub cols: usize,
    /// Zero rows appended (Megatron's vocabulary padding).
    pub pad_rows: usize,
    /// Each (stage, name) it is saved under: one, or two for the embedding Megatron's last stage
    /// keeps a copy of.
    pub dests: Vec<(usize, String)>,
    /// One rank's part's shape.
    pub part_shape: Vec<u64>,
}

/// Place every tensor of `plan` in `fmt`'s layout at `opts`' grid, refusing (before any
/// writing) a grid the model cannot be split on.
pub fn place(plan: &Plan, opts: &Export, fmt: &dyn RankFormat) -> Result<Vec<Placed>> {
    let grid = Grid {
        tp: opts.tp,
        pp: opts.pp,
    };
    check_grid(plan, grid, fmt)?;
    // A model the format cannot state is refused here, before anything is written.
    fmt.args(&super::Described::of(plan, opts, fmt), grid)?;
    let mapping = Mapping::builtin(fmt.mapping_name())?;
    let first_block = mapping
        .tensors
        .iter()
        .position(|r| r.target.contains(BLOCK));
    let mut out = Vec::with_capacity(plan.entries.len());
    for e in &plan.entries {
        let (ri, bid) = find_rule(&mapping, &e.target).ok_or_else(|| {
            Error::usage(format!(
                "tensor `{}` has no place in the {} layout (mapping {} writes no such tensor)",
                e.target,
                fmt.name(),
                mapping.variant.name
            ))
        })?;
        let rule = &mapping.tensors[ri];
        let stage = match (bid, first_block) {
            (Some(b), _) => stage_of(b, plan.layers, grid.pp),
            (None, Some(f)) if ri < f => (0, 0),
            _ => (grid.pp - 1, 0),
        };
        let name = source_name(rule, bid.map(|_| stage.1));
        let mut placed = placed(e, rule, split_of(rule, &mapping, fmt)?, opts, fmt, plan)?;
        placed.dests.push((stage.0, name));
        // The tied embedding's copy on the last stage (Megatron's word_embeddings_for_head),
        // unless the model has its own head (a rule tied to the same tensor is written).
        let untied = mapping
            .tensors
            .iter()
            .any(|r| r.tied_to.as_ref() == Some(&e.target) && plan.entry(&r.target).is_some());
        for copy in mapping
            .tensors
            .iter()
            .filter(|c| c.copy_of.as_ref() == Some(&e.target))
        {
            if grid.pp > 1 && !untied {
                placed.dests.push((grid.pp - 1, source_name(copy, None)));
            }
        }
        out.push(placed);
    }
    Ok(out)
}

/// What the user should know about a grid that can be written: stages of unequal length, which
/// Megatron-LM's legacy loader refuses (`num_layers % pipeline size == 0`).
pub fn notes(plan: &Plan, opts: &Export) -> Vec<String> {
    let pp = opts.pp.max(1) as u64;
    if pp > 1 && plan.layers % pp != 0 {
        vec![format!(
            "--pp {pp}: {} layers do not divide into {pp} equal stages; the first {} stage(s) \
             get one layer more. Megatron-LM's legacy model asserts equal stages, so only \
             readers that count each stage's layers (this converter, cpm-diff) read it",
            plan.layers,
            plan.layers % pp
        )]
    } else {
        Vec::new()
    }
}

fn check_grid(plan: &Plan, grid: Grid, fmt: &dyn RankFormat) -> Result<()> {
    if grid.tp == 0 || grid.pp == 0 {
        return Err(Error::usage("--tp and --pp must be at least 1"));
    }
    if grid.pp > fmt.max_stages() {
        return Err(Error::usage(format!(
            "--pp {}: the {} layout has no pipeline stages (only --to megatron has)",
            grid.pp,
            fmt.name()
        )));
    }
    if grid.pp as u64 > plan.layers {
        return Err(Error::usage(format!(
            "--pp {}: more pipeline stages than the model's {} layers",
            grid.pp, plan.layers
        )));
    }
    let heads = plan.heads.count;
    if heads % grid.tp as u64 != 0 {
        return Err(Error::usage(format!(
            "--tp {}: the {heads} attention heads do not divide by {}",
            grid.tp, grid.tp
        )));
    }
    Ok(())
}

/// Stage and local index of global layer `b`: stages as even as the count allows, the first
/// ones one layer longer.
fn stage_of(b: u64, layers: u64, pp: usize) -> (usize, u64) {
    let pp64 = pp as u64;
    let (base, extra) = (layers / pp64, layers % pp64);
    let long = extra * (base + 1);
    if b < long {
        ((b / (base + 1)) as usize, b % (base + 1))
    } else {
        let b = b - long;
        ((extra + b / base.max(1)) as usize, b % base.max(1))
    }
}

/// The rule of `mapping` writing Hugging Face tensor `target`, and its block index.
fn find_rule(mapping: &Mapping, target: &str) -> Option<(usize, Option<u64>)> {
    mapping.tensors.iter().enumerate().find_map(|(i, r)| {
        if r.copy_of.is_some() {
            return None;
        }
        match r.target.split_once(BLOCK) {
            None => (r.target == target).then_some((i, None)),
            Some((pre, post)) => {
                let mid = target.strip_prefix(pre)?.strip_suffix(post)?;
                let canonical = !mid.is_empty()
                    && mid.len() <= 9
                    && mid.bytes().all(|c| c.is_ascii_digit())
                    && (mid == "0" || !mid.starts_with('0'));
                canonical.then(|| (i, mid.parse().ok()))
            }
        }
    })
}

/// The rule's newest spelling (the last alternative), its block filled in.
fn source_name(rule: &Rule, block: Option<u64>) -> String {
    let s = rule.source.all().last().map_or("", String::as_str);
    crate::mapping::target_name(s, block)
}

/// The rule's split, a version-dependent qkv layout resolved at the format's version.
fn split_of(rule: &Rule, mapping: &Mapping, fmt: &dyn RankFormat) -> Result<Split> {
    if rule.split != Split::Qkv {
        return Ok(rule.split);
    }
    let (Some(table), Some(v)) = (&mapping.variant.qkv, fmt.qkv_version()) else {
        return Err(Error::internal(format!(
            "mapping {}: a qkv rule without a version table",
            mapping.variant.name
        )));
    };
    table
        .layouts
        .iter()
        .find(|l| l.below.map_or(true, |b| v < b))
        .map(|l| l.split)
        .ok_or_else(|| Error::internal(format!("no qkv layout for version {v}")))
}

fn placed(
    e: &Entry,
    rule: &Rule,
    split: Split,
    opts: &Export,
    fmt: &dyn RankFormat,
    plan: &Plan,
) -> Result<Placed> {
    let mut shape = e.shape.clone();
    if rule.transpose {
        shape.reverse();
    }
    let (rows, cols) = match shape.as_slice() {
        [n] => (*n, 1),
        [r, c] => (*r, *c),
        other => {
            return Err(Error::usage(format!(
                "tensor `{}`: shape {other:?} cannot be split",
                e.target
            )))
        }
    };
    let tp = opts.tp as u64;
    let vocab = rule.shape.first().is_some_and(|d| d == "vocab");
    let padded = if vocab {
        padded_rows(rows, opts, fmt)
    } else {
        rows
    };
    let (n, what) = match split {
        Split::Replicated => (tp, ""),
        Split::Dim1 => (cols, rule.shape.first().map_or("", String::as_str)),
        _ if vocab && fmt.pads_vocab() => (padded, "vocab (padded)"),
        _ => (rows, rule.shape.last().map_or("", String::as_str)),
    };
    if n % tp != 0 {
        return Err(Error::usage(format!(
            "--tp {tp}: tensor `{}` is split on its `{what}` dimension, {n}, which does not \
             divide by {tp}",
            e.target
        )));
    }
    let mut part_shape = vec![padded, cols];
    match split {
        Split::Replicated => {}
        Split::Dim1 => part_shape[1] /= tp,
        _ => part_shape[0] /= tp,
    }
    part_shape.truncate(shape.len());
    let mut merge = e.clone();
    merge.transpose = e.transpose != rule.transpose;
    let mut split_e = e.clone();
    split_e.split = split;
    split_e.heads = plan.heads.count;
    Ok(Placed {
        entry: e.clone(),
        merge,
        split: split_e,
        rows: padded as usize,
        cols: cols as usize,
        pad_rows: (padded - rows) as usize,
        dests: Vec::new(),
        part_shape,
    })
}

/// A vocabulary of `rows` as `fmt` stores it: padded with zero rows to a multiple of
/// `--pad-vocab-multiple` x `--tp` where the format pads (Megatron's
/// `make_vocab_size_divisible_by`).
pub fn padded_rows(rows: u64, opts: &Export, fmt: &dyn RankFormat) -> u64 {
    if fmt.pads_vocab() {
        let mult = opts.pad_vocab_multiple.max(1) * opts.tp.max(1) as u64;
        rows.div_ceil(mult) * mult
    } else {
        rows
    }
}

/// One rank file before writing: its path in the iteration folder, its pickle, its storages.
pub struct FileSpec {
    pub name: String,
    pub pickle: Vec<u8>,
    pub storages: usize,
}

/// Every rank file's object tree, storages numbered in the order [`super::write`] appends them.
pub fn files(
    placed: &[Placed],
    fmt: &dyn RankFormat,
    grid: Grid,
    it: &Iteration,
    args: &Py,
) -> Vec<FileSpec> {
    let n = grid.tp * grid.pp;
    // (is a copy, key path, tensor) per file.
    let mut trees: Vec<Vec<(bool, Vec<String>, TensorMeta)>> = vec![Vec::new(); n];
    for p in placed {
        for (d, (stage, name)) in p.dests.iter().enumerate() {
            for r in 0..grid.tp {
                let list = &mut trees[stage * grid.tp + r];
                let meta = TensorMeta {
                    key: list.len(),
                    dtype: p.entry.dtype,
                    shape: p.part_shape.clone(),
                };
                list.push((d > 0, fmt.nest(name), meta));
            }
        }
    }
    trees
        .into_iter()
        .enumerate()
        .map(|(i, mut list)| {
            let slot = Slot {
                tp: i % grid.tp,
                pp: i / grid.tp,
            };
            // Copies after the model's own tensors, as Megatron's state dict orders them
            // (storage keys stay in write order).
            list.sort_by_key(|(copy, _, _)| *copy);
            let list: Vec<_> = list.into_iter().map(|(_, path, m)| (path, m)).collect();
            let storages = list.len();
            let top = fmt.top(nested(list), args.clone(), grid, it);
            FileSpec {
                name: fmt.file(slot, grid),
                pickle: pickler::dumps(&top),
                storages,
            }
        })
        .collect()
}

/// A tree of dicts from key paths: a dict of tensors is an OrderedDict (a `state_dict()`),
/// one of dicts a plain dict.
fn nested(list: Vec<(Vec<String>, TensorMeta)>) -> Py {
    enum Node {
        Leaf(TensorMeta),
        Branch(Vec<(String, Node)>),
    }
    fn insert(into: &mut Vec<(String, Node)>, path: &[String], meta: TensorMeta) {
        let [first, rest @ ..] = path else { return };
        if rest.is_empty() {
            into.push((first.clone(), Node::Leaf(meta)));
            return;
        }
        let at = match into
            .iter()
            .position(|(k, n)| k == first && matches!(n, Node::Branch(_)))
        {
            Some(at) => at,
            None => {
                into.push((first.clone(), Node::Branch(Vec::new())));
                into.len() - 1
            }
        };
        if let Some((_, Node::Branch(b))) = into.get_mut(at) {
            insert(b, rest, meta);
        }
    }
    fn to_py(items: Vec<(String, Node)>) -> Py {
        let leaves = items.iter().all(|(_, n)| matches!(n, Node::Leaf(_)));
        let items = items
            .into_iter()
            .map(|(k, n)| match n {
                Node::Leaf(m) => (k, Py::Tensor(m)),
                Node::Branch(b) => (k, to_py(b)),
            })
            .collect();
        if leaves {
            Py::OrderedDict(items)
        } else {
            Py::Dict(items)
        }
    }
    let mut root = Vec::new();
    for (path, meta) in list {
        insert(&mut root, &path, meta);
    }
    to_py(root)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 5 layers over 2 stages: 3 then 2, each numbered from 0.
    #[test]
    fn stages_are_as_even_as_the_layer_count_allows_first_ones_longer() {
        let got: Vec<_> = (0..5).map(|b| stage_of(b, 5, 2)).collect();
        assert_eq!(got, vec![(0, 0), (0, 1), (0, 2), (1, 0), (1, 1)]);
        let got: Vec<_> = (0..4).map(|b| stage_of(b, 4, 4)).collect();
        assert_eq!(got, vec![(0, 0), (1, 0), (2, 0), (3, 0)]);
    }

    #[test]
    fn rules_are_found_by_their_hugging_face_name() {
        let m = Mapping::builtin("megatron-gpt2").unwrap();
        let (i, b) = find_rule(&m, "transformer.h.12.attn.c_attn.weight").unwrap();
        assert_eq!(b, Some(12));
        assert_eq!(
            source_name(&m.tensors[i], Some(3)),
            "language_model.encoder.layers.3.self_attention.query_key_value.weight"
        );
        assert!(find_rule(&m, "transformer.h.01.attn.c_attn.weight").is_none());
        // The copy rule is never the home of the embedding.
        let (i, _) = find_rule(&m, "transformer.wte.weight").unwrap();
        assert_eq!(
            m.tensors[i].source.first(),
            "language_model.embedding.word_embeddings.weight"
        );
    }
}
