//! From the ranks' tensor lists and a mapping to a plan: every output tensor with its sources on
//! each rank, how they merge, its final shape and dtype. All checks that need no tensor data
//! happen here, so `--dry-run` finds every structural problem.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::path::PathBuf;

use serde::Serialize;

use crate::checkpoint::Rank;
use crate::error::{Error, Result};
use crate::mapping::{target_name, Dim, Mapping, Rule, Split, BLOCK};
use crate::torch::{Dtype, TensorRef};

/// The output element type the user asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutDtype {
    Keep,
    F16,
    BF16,
    F32,
}

impl OutDtype {
    /// The dtype a tensor stored as `source` is written as.
    pub fn resolve(self, source: Dtype) -> Dtype {
        match self {
            OutDtype::Keep => source,
            OutDtype::F16 => Dtype::F16,
            OutDtype::BF16 => Dtype::BF16,
            OutDtype::F32 => Dtype::F32,
        }
    }
}

/// One output tensor.
#[derive(Debug, Clone, Serialize)]
pub struct Entry {
    pub target: String,
    pub source: String,
    pub split: Split,
    pub transpose: bool,
    #[serde(serialize_with = "ser_dtype")]
    pub source_dtype: Dtype,
    #[serde(serialize_with = "ser_dtype")]
    pub dtype: Dtype,
    /// The source tensor's shape on each rank.
    pub rank_shapes: Vec<Vec<u64>>,
    /// Output shape (after any transpose).
    pub shape: Vec<u64>,
    #[serde(skip)]
    pub sources: Vec<TensorRef>,
    /// The rule's expected shape in model sizes.
    #[serde(skip)]
    pub dims: Vec<Dim>,
}

fn ser_dtype<S: serde::Serializer>(d: &Dtype, s: S) -> std::result::Result<S::Ok, S::Error> {
    s.serialize_str(d.safetensors_name())
}

impl Entry {
    pub fn numel(&self) -> u64 {
        self.shape.iter().product()
    }

    pub fn nbytes(&self) -> u64 {
        self.numel() * self.dtype.size() as u64
    }

    /// Rows and columns of the merged tensor before any transpose (1-D is one column).
    pub fn merged_dims(&self) -> (u64, u64) {
        let (r, c) = dims2(&self.shape);
        if self.transpose {
            (c, r)
        } else {
            (r, c)
        }
    }
}

/// Where the head count came from, for the summary and `--dry-run`.
#[derive(Debug, Clone, Serialize)]
pub struct Heads {
    pub count: u64,
    pub source: String,
}

/// The whole conversion, before any tensor data is read.
#[derive(Debug, Clone, Serialize)]
pub struct Plan {
    pub variant: String,
    pub model_parallel: usize,
    pub layers: u64,
    pub hidden: u64,
    pub vocab: u64,
    pub positions: u64,
    pub inner: u64,
    pub heads: Heads,
    pub entries: Vec<Entry>,
}

impl Plan {
    pub fn total_bytes(&self) -> u64 {
        self.entries.iter().map(Entry::nbytes).sum()
    }

    pub fn entry(&self, target: &str) -> Option<&Entry> {
        self.entries.iter().find(|e| e.target == target)
    }
}

fn dims2(shape: &[u64]) -> (u64, u64) {
    match shape {
        [n] => (*n, 1),
        [r, c] => (*r, *c),
        _ => (shape.iter().product(), 1),
    }
}

/// One source tensor matched to its rule: its name, the rule's index in the mapping, the block
/// (layer) index and the tensor on every rank.
struct Matched<'r> {
    name: &'r str,
    rule: usize,
    block: Option<u64>,
    sources: Vec<TensorRef>,
}

/// Build the plan. `heads` is the user's `--heads`.
pub fn build(ranks: &[Rank], mapping: &Mapping, heads: Option<u64>, out: OutDtype) -> Result<Plan> {
    check_world_size(ranks, mapping)?;
    let matched = match_rules(ranks, mapping)?;
    let layers = check_complete(ranks, mapping, &matched)?;
    let entries = matched
        .iter()
        .map(|m| plan_entry(ranks, m, &mapping.tensors[m.rule], out))
        .collect::<Result<Vec<_>>>()?;
    let entries = in_file_order(entries, &matched, mapping);
    let sizes = model_sizes(&entries, &ranks[0].display)?;
    let size = |name: &str| {
        sizes.get(name).map(|s| s.0).ok_or_else(|| Error::Mapping {
            path: PathBuf::from(format!("mappings/{}.toml", mapping.variant.name)),
            msg: format!(
                "no rule's shape defines the model size `{name}`, which config.json needs"
            ),
        })
    };
    let hidden = size("hidden")?;
    let heads = head_count(ranks, mapping, heads, hidden, layers)?;
    check_heads(&heads, hidden, ranks.len())?;
    Ok(Plan {
        variant: mapping.variant.name.clone(),
        model_parallel: ranks.len(),
        layers,
        hidden,
        vocab: size("vocab")?,
        positions: size("positions")?,
        inner: size("inner")?,
        heads,
        entries,
    })
}

/// Every weight of every rank matched to a mapping rule, each present on every rank, in rank 0's
/// file order.
fn match_rules<'r>(ranks: &'r [Rank], mapping: &Mapping) -> Result<Vec<Matched<'r>>> {
    let p = ranks.len();
    // name -> per-rank tensors; the order of first appearance is kept in `order`.
    let mut by_name: HashMap<&str, Vec<Option<&TensorRef>>> = HashMap::new();
    let mut order: Vec<&str> = Vec::new();
    for (r, rank) in ranks.iter().enumerate() {
        for (name, t) in &rank.weights {
            let slot = by_name.entry(name.as_str()).or_insert_with(|| {
                order.push(name.as_str());
                vec![None; p]
            });
            if slot[r].replace(t).is_some() {
                return Err(Error::tensor(
                    &rank.file.path,
                    name,
                    "appears twice in the weights dict",
                ));
            }
        }
    }
    let mut matched = Vec::with_capacity(order.len());
    for name in order {
        let per_rank = &by_name[name];
        let first = per_rank.iter().position(Option::is_some).unwrap_or(0);
        let (rule, block) = mapping.find(name).ok_or_else(|| {
            Error::tensor(
                &ranks[first].file.path,
                name,
                format!(
                    "matches no rule of the `{}` mapping; is this checkpoint a different variant?",
                    mapping.variant.name
                ),
            )
        })?;
        let sources = per_rank
            .iter()
            .enumerate()
            .map(|(r, t)| {
                t.cloned().ok_or_else(|| {
                    Error::tensor(
                        &ranks[r].file.path,
                        name,
                        format!("is missing from rank {r} but present on other ranks"),
                    )
                })
            })
            .collect::<Result<Vec<_>>>()?;
        matched.push(Matched {
            name,
            rule,
            block,
            sources,
        });
    }
    Ok(matched)
}

/// The layer count. Block indices must be exactly 0..L (a gap or a stray index such as
/// `layers.100000000` names the first missing layer), every per-block rule must be present in
/// every layer, and every other rule exactly once. Nothing here is sized by an index read from a
/// name: the work is bounded by the number of tensors present.
fn check_complete(ranks: &[Rank], mapping: &Mapping, matched: &[Matched]) -> Result<u64> {
    let path = &ranks[0].file.path;
    let missing = |rule: usize, block: Option<u64>, why: &str| {
        Error::tensor(path, source_name(mapping, rule, block), why.to_string())
    };
    let blocks: BTreeSet<u64> = matched.iter().filter_map(|m| m.block).collect();
    if let Some(gap) = first_gap(&blocks) {
        let rule = first_block_rule(mapping).unwrap_or(0);
        let last = blocks.last().copied().unwrap_or(0);
        return Err(missing(
            rule,
            Some(gap),
            &format!(
                "is missing: layer {gap} has no tensors, but the checkpoint names layers up to {last} \
                 (layer indices must run 0..{} without gaps)",
                blocks.len()
            ),
        ));
    }
    let layers = blocks.len() as u64;
    let present: HashSet<(usize, Option<u64>)> =
        matched.iter().map(|m| (m.rule, m.block)).collect();
    for (i, rule) in mapping.tensors.iter().enumerate() {
        let wanted: Box<dyn Iterator<Item = Option<u64>>> = if rule.source.contains(BLOCK) {
            Box::new((0..layers).map(Some))
        } else {
            Box::new(std::iter::once(None))
        };
        for b in wanted {
            if !present.contains(&(i, b)) {
                return Err(missing(
                    i,
                    b,
                    "is missing from the checkpoint (every rank), but the mapping needs it",
                ));
            }
        }
    }
    Ok(layers)
}

/// The smallest index absent from a set that should be 0..len.
fn first_gap(blocks: &BTreeSet<u64>) -> Option<u64> {
    blocks
        .iter()
        .zip(0u64..)
        .find(|(b, i)| **b != *i)
        .map(|(_, i)| i)
}

fn first_block_rule(mapping: &Mapping) -> Option<usize> {
    mapping
        .tensors
        .iter()
        .position(|r| r.source.contains(BLOCK))
}

fn source_name(mapping: &Mapping, rule: usize, block: Option<u64>) -> String {
    mapping
        .tensors
        .get(rule)
        .map(|r| target_name(&r.source, block))
        .unwrap_or_default()
}

/// Embeddings first, then blocks in layer order (each in rule order), then the final layer
/// norm: the order a reader of the file expects and the order the sources lie in.
fn in_file_order(entries: Vec<Entry>, matched: &[Matched], mapping: &Mapping) -> Vec<Entry> {
    let first_block = first_block_rule(mapping);
    let mut keyed: Vec<((u8, u64, usize), Entry)> = matched
        .iter()
        .zip(entries)
        .map(|(m, e)| {
            let part = match (m.block, first_block) {
                (Some(_), _) => 1,
                (None, Some(f)) if m.rule > f => 2,
                _ => 0,
            };
            ((part, m.block.unwrap_or(0), m.rule), e)
        })
        .collect();
    keyed.sort_by_key(|(k, _)| *k);
    keyed.into_iter().map(|(_, e)| e).collect()
}

fn check_heads(heads: &Heads, hidden: u64, ranks: usize) -> Result<()> {
    if heads.count == 0 || hidden % heads.count != 0 {
        return Err(Error::usage(format!(
            "{} heads ({}) do not divide the hidden size {hidden}",
            heads.count, heads.source
        )));
    }
    if heads.count % ranks as u64 != 0 {
        return Err(Error::usage(format!(
            "{} heads ({}) cannot be split over {ranks} model-parallel ranks",
            heads.count, heads.source
        )));
    }
    Ok(())
}

fn plan_entry(ranks: &[Rank], m: &Matched, rule: &Rule, out: OutDtype) -> Result<Entry> {
    let (name, sources) = (m.name, &m.sources);
    let path0 = &ranks[0].file.path;
    check_sources(ranks, name, sources)?;
    let t0 = &sources[0];
    let nd = t0.shape.len();
    let bad_shape =
        |why: &str| Error::tensor(path0, name, format!("has shape {:?}, {why}", t0.shape));
    if nd == 0 || nd > 2 {
        return Err(bad_shape("expected 1 or 2 dimensions"));
    }
    if rule.transpose && nd != 2 {
        return Err(bad_shape(
            "but the mapping transposes it (needs 2 dimensions)",
        ));
    }
    // Which dimension grows when the ranks are merged.
    let free_dim = match rule.split {
        Split::Replicated => None,
        Split::Dim0 | Split::QkvDim0 => Some(0),
        Split::Dim1 if nd == 2 => Some(1),
        Split::Dim1 => return Err(bad_shape("but dim1 splitting needs 2 dimensions")),
    };
    if rule.split == Split::QkvDim0 && t0.shape[0] % 3 != 0 {
        return Err(Error::tensor(
            path0,
            name,
            format!(
                "has {} rows per rank, expected a multiple of 3 (query, key, value blocks)",
                t0.shape[0]
            ),
        ));
    }
    let mut merged = t0.shape.clone();
    if let Some(d) = free_dim {
        merged[d] = t0.shape[d]
            .checked_mul(sources.len() as u64)
            .ok_or_else(|| Error::tensor(path0, name, "merged size overflows"))?;
    }
    let shape = if rule.transpose {
        vec![merged[1], merged[0]]
    } else {
        merged
    };
    Ok(Entry {
        target: target_name(&rule.target, m.block),
        source: name.to_string(),
        split: rule.split,
        transpose: rule.transpose,
        source_dtype: t0.dtype,
        dtype: out.resolve(t0.dtype),
        rank_shapes: sources.iter().map(|t| t.shape.clone()).collect(),
        shape,
        sources: sources.clone(),
        dims: Mapping::dims(rule),
    })
}

/// Every rank's copy of one tensor lies inside its storage, and all copies share a floating
/// dtype and a shape (Megatron partitions evenly, so even split tensors are equal on every rank).
fn check_sources(ranks: &[Rank], name: &str, sources: &[TensorRef]) -> Result<()> {
    let t0 = &sources[0];
    for (r, t) in sources.iter().enumerate() {
        // Bounds against the storage, before anything is read.
        ranks[r].file.span(name, t)?;
        let differs = |what: &str, a: String, b: String| {
            Error::merge(format!(
                "tensor `{name}`: rank 0 ({}) holds {what} {a} but rank {r} ({}) holds {b}; \
                 model-parallel ranks of one model hold equal {what}s",
                ranks[0].display, ranks[r].display
            ))
        };
        if t.dtype != t0.dtype {
            let (a, b) = (t0.dtype.torch_name(), t.dtype.torch_name());
            return Err(differs("dtype", a.into(), b.into()));
        }
        if t.shape != t0.shape {
            return Err(differs(
                "shape",
                format!("{:?}", t0.shape),
                format!("{:?}", t.shape),
            ));
        }
    }
    if !t0.dtype.is_float() {
        return Err(Error::tensor(
            &ranks[0].file.path,
            name,
            format!(
                "is {}, expected a floating-point weight",
                t0.dtype.torch_name()
            ),
        ));
    }
    Ok(())
}

/// Read the model sizes (`hidden`, `vocab`, ...) off the tensors in output order: the first
/// tensor to use a size defines it, every later one must agree. A checkpoint whose tensors do
/// not form one model (a transposed weight, a wrong width) stops here, before any data is read.
fn model_sizes(entries: &[Entry], rank0: &str) -> Result<BTreeMap<String, (u64, String)>> {
    let mut sizes: BTreeMap<String, (u64, String)> = BTreeMap::new();
    let show = |dims: &[Dim]| {
        format!(
            "[{}]",
            dims.iter()
                .map(Dim::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        )
    };
    for e in entries {
        let fail = |why: String| {
            Error::merge(format!(
                "tensor `{}` ({rank0}, merged into `{}`) has shape {:?}, expected {}: {why}",
                e.source,
                e.target,
                e.shape,
                show(&e.dims)
            ))
        };
        if e.dims.len() != e.shape.len() {
            return Err(fail(format!(
                "{} dimensions instead of {}",
                e.shape.len(),
                e.dims.len()
            )));
        }
        for (d, &actual) in e.dims.iter().zip(&e.shape) {
            match sizes.get(&d.size) {
                Some((v, from)) => {
                    if d.factor.checked_mul(*v) != Some(actual) {
                        return Err(fail(format!("`{}` is {v} (from `{from}`)", d.size)));
                    }
                }
                None => {
                    if actual == 0 || actual % d.factor != 0 {
                        return Err(fail(format!(
                            "{actual} is not a positive multiple of {}",
                            d.factor
                        )));
                    }
                    sizes.insert(d.size.clone(), (actual / d.factor, e.target.clone()));
                }
            }
        }
    }
    Ok(sizes)
}

fn check_world_size(ranks: &[Rank], mapping: &Mapping) -> Result<()> {
    let Some(key) = &mapping.variant.world_size_key else {
        return Ok(());
    };
    for rank in ranks {
        if let Some(n) = rank.top_int(key) {
            if n != ranks.len() as i64 {
                return Err(Error::layout(
                    &rank.file.path,
                    format!(
                        "records {key} = {n}, but {} rank file(s) were found ({}); {}",
                        ranks.len(),
                        ranks
                            .iter()
                            .map(|r| r.display.as_str())
                            .collect::<Vec<_>>()
                            .join(", "),
                        if (ranks.len() as i64) < n {
                            "a rank file is missing: pass the directory holding all mp_rank_XX files"
                        } else {
                            "there are more rank files than the checkpoint was saved with"
                        }
                    ),
                ));
            }
        }
    }
    Ok(())
}

fn head_count(
    ranks: &[Rank],
    mapping: &Mapping,
    flag: Option<u64>,
    hidden: u64,
    layers: u64,
) -> Result<Heads> {
    let from_args = match (&mapping.variant.args_key, &mapping.variant.heads_arg) {
        (Some(k), Some(f)) => ranks[0]
            .arg_int(k, f)
            .map(|n| (n, format!("{k}.{f} in {}", ranks[0].display))),
        _ => None,
    };
    match (flag, from_args) {
        (Some(h), Some((a, src))) if a != h as i64 => Err(Error::usage(format!(
            "--heads {h} disagrees with the checkpoint, which records {a} ({src})"
        ))),
        (Some(h), _) => Ok(Heads { count: h, source: "--heads".into() }),
        (None, Some((a, src))) => u64::try_from(a)
            .map(|count| Heads { count, source: src.clone() })
            .map_err(|_| Error::usage(format!("the checkpoint records {a} heads ({src})"))),
        (None, None) => mapping
            .known_sizes
            .iter()
            .find(|k| k.hidden == hidden && k.layers == layers)
            .map(|k| Heads {
                count: k.heads,
                source: format!("the released {} size with hidden {hidden} and {layers} layers", mapping.variant.name),
            })
            .ok_or_else(|| {
                Error::usage(format!(
                    "cannot tell the number of attention heads: the checkpoint has no `{}` entry with `{}`, and \
                     hidden {hidden} with {layers} layers is not a released {} size; pass --heads N",
                    mapping.variant.args_key.as_deref().unwrap_or("args"),
                    mapping.variant.heads_arg.as_deref().unwrap_or("num_attention_heads"),
                    mapping.variant.name
                ))
            }),
    }
}
