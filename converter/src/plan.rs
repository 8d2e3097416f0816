//! From the ranks' tensor lists and a mapping to a plan: every output tensor with its sources on
//! each rank, how they merge, its final shape and dtype. All checks that need no tensor data
//! happen here, so `--dry-run` finds every structural problem.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;

use serde::Serialize;

use crate::checkpoint::Rank;
use crate::error::{Error, Result};
use crate::mapping::{target_name, Dim, Mapping, Rule, Split};
use crate::torch::{Dtype, TensorRef};

/// The output element type the user asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutDtype {
    Keep,
    F16,
    BF16,
    F32,
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

/// Build the plan. `heads` is the user's `--heads`.
pub fn build(ranks: &[Rank], mapping: &Mapping, heads: Option<u64>, out: OutDtype) -> Result<Plan> {
    let p = ranks.len();
    check_world_size(ranks, mapping)?;

    // name -> per-rank tensors, in rank 0's file order.
    let mut by_name: HashMap<&str, Vec<Option<&TensorRef>>> = HashMap::new();
    let mut order: Vec<&str> = Vec::new();
    for (r, rank) in ranks.iter().enumerate() {
        for (name, t) in &rank.weights {
            let slot = by_name.entry(name.as_str()).or_insert_with(|| {
                order.push(name.as_str());
                vec![None; p]
            });
            if slot[r].is_some() {
                return Err(Error::tensor(
                    &rank.file.path,
                    name,
                    "appears twice in the weights dict",
                ));
            }
            slot[r] = Some(t);
        }
    }

    // Match every tensor to a rule; group by (rule, block) so the output order follows layers.
    let mut planned: BTreeMap<(Option<u64>, usize), Entry> = BTreeMap::new();
    for name in &order {
        let per_rank = &by_name[name];
        let (rule_idx, block) = match mapping.find(name) {
            Some((rule, b)) => (
                mapping
                    .tensors
                    .iter()
                    .position(|x| std::ptr::eq(x, rule))
                    .unwrap_or(0),
                b,
            ),
            None => {
                let r = per_rank.iter().position(Option::is_some).unwrap_or(0);
                return Err(Error::tensor(
                    &ranks[r].file.path,
                    *name,
                    format!(
                        "matches no rule of the `{}` mapping; is this checkpoint a different variant?",
                        mapping.variant.name
                    ),
                ));
            }
        };
        let rule = &mapping.tensors[rule_idx];
        let mut sources = Vec::with_capacity(p);
        for (r, t) in per_rank.iter().enumerate() {
            match t {
                Some(t) => sources.push((*t).clone()),
                None => {
                    return Err(Error::tensor(
                        &ranks[r].file.path,
                        *name,
                        format!("is missing from rank {r} but present on other ranks"),
                    ))
                }
            }
        }
        let entry = plan_entry(ranks, name, rule, block, sources, out)?;
        planned.insert((block, rule_idx), entry);
    }

    // Blocks must be 0..L with every per-block rule present; non-block rules exactly once.
    let layers = planned
        .keys()
        .filter_map(|k| k.0)
        .max()
        .map_or(0, |m| m + 1);
    for (i, rule) in mapping.tensors.iter().enumerate() {
        let has_block = rule.source.contains(crate::mapping::BLOCK);
        let blocks: Vec<Option<u64>> = if has_block {
            (0..layers).map(Some).collect()
        } else {
            vec![None]
        };
        for b in blocks {
            if !planned.contains_key(&(b, i)) {
                return Err(Error::tensor(
                    &ranks[0].file.path,
                    target_name(&rule.source, b),
                    "is missing from the checkpoint (every rank), but the mapping needs it",
                ));
            }
        }
    }

    let entries: Vec<Entry> = {
        // Embeddings first, then blocks in order, then the final layer norm: the order a reader
        // of the file expects and the order the sources lie in.
        let mut head: Vec<Entry> = Vec::new();
        let mut tail: Vec<Entry> = Vec::new();
        let mut blocks: Vec<Entry> = Vec::new();
        let first_block_rule = mapping
            .tensors
            .iter()
            .position(|r| r.source.contains(crate::mapping::BLOCK));
        for ((b, i), e) in planned {
            match (b, first_block_rule) {
                (Some(_), _) => blocks.push(e),
                (None, Some(f)) if i > f => tail.push(e),
                _ => head.push(e),
            }
        }
        head.into_iter().chain(blocks).chain(tail).collect()
    };

    let sizes = model_sizes(&entries, &ranks[0].display)?;
    let size = |name: &str| {
        sizes.get(name).map(|s| s.0).ok_or_else(|| Error::Mapping {
            path: PathBuf::from(format!("mappings/{}.toml", mapping.variant.name)),
            msg: format!(
                "no rule's shape defines the model size `{name}`, which config.json needs"
            ),
        })
    };
    let (vocab, hidden, positions, inner) = (
        size("vocab")?,
        size("hidden")?,
        size("positions")?,
        size("inner")?,
    );

    let heads = head_count(ranks, mapping, heads, hidden, layers)?;
    if heads.count == 0 || hidden % heads.count != 0 {
        return Err(Error::usage(format!(
            "{} heads ({}) do not divide the hidden size {hidden}",
            heads.count, heads.source
        )));
    }
    if heads.count % p as u64 != 0 {
        return Err(Error::usage(format!(
            "{} heads ({}) cannot be split over {p} model-parallel ranks",
            heads.count, heads.source
        )));
    }

    Ok(Plan {
        variant: mapping.variant.name.clone(),
        model_parallel: p,
        layers,
        hidden,
        vocab,
        positions,
        inner,
        heads,
        entries,
    })
}

fn plan_entry(
    ranks: &[Rank],
    name: &str,
    rule: &Rule,
    block: Option<u64>,
    sources: Vec<TensorRef>,
    out: OutDtype,
) -> Result<Entry> {
    let (split, transpose) = (rule.split, rule.transpose);
    let p = sources.len();
    let t0 = &sources[0];
    let path0 = &ranks[0].file.path;
    for (r, t) in sources.iter().enumerate() {
        // Bounds against the storage, before anything is read.
        ranks[r].file.span(name, t)?;
        if t.dtype != t0.dtype {
            return Err(Error::merge(format!(
                "tensor `{name}`: rank 0 ({}) holds {} but rank {r} ({}) holds {}",
                ranks[0].display,
                t0.dtype.torch_name(),
                ranks[r].display,
                t.dtype.torch_name()
            )));
        }
    }
    if !t0.dtype.is_float() {
        return Err(Error::tensor(
            path0,
            name,
            format!(
                "is {}, expected a floating-point weight",
                t0.dtype.torch_name()
            ),
        ));
    }
    let nd = t0.shape.len();
    if nd == 0 || nd > 2 {
        return Err(Error::tensor(
            path0,
            name,
            format!("has shape {:?}, expected 1 or 2 dimensions", t0.shape),
        ));
    }
    if transpose && nd != 2 {
        return Err(Error::tensor(
            path0,
            name,
            format!(
                "has shape {:?}, but the mapping transposes it (needs 2 dimensions)",
                t0.shape
            ),
        ));
    }
    // Which dimension may differ between ranks.
    let free_dim = match split {
        Split::Replicated => None,
        Split::Dim0 | Split::QkvDim0 => Some(0),
        Split::Dim1 => {
            if nd != 2 {
                return Err(Error::tensor(
                    path0,
                    name,
                    format!(
                        "has shape {:?}, but dim1 splitting needs 2 dimensions",
                        t0.shape
                    ),
                ));
            }
            Some(1)
        }
    };
    for (r, t) in sources.iter().enumerate().skip(1) {
        // Megatron partitions evenly, so even split tensors have equal shapes on every rank.
        if t.shape != t0.shape {
            return Err(Error::merge(format!(
                "tensor `{name}` ({}): rank 0 ({}) has shape {:?} but rank {r} ({}) has {:?}; model-parallel \
                 ranks of one model hold equal shapes",
                split.name(),
                ranks[0].display,
                t0.shape,
                ranks[r].display,
                t.shape
            )));
        }
    }
    let mut merged = t0.shape.clone();
    if let Some(d) = free_dim {
        merged[d] = t0.shape[d]
            .checked_mul(p as u64)
            .ok_or_else(|| Error::tensor(path0, name, "merged size overflows"))?;
    }
    if split == Split::QkvDim0 && t0.shape[0] % 3 != 0 {
        return Err(Error::tensor(
            path0,
            name,
            format!(
                "has {} rows per rank, expected a multiple of 3 (query, key, value blocks)",
                t0.shape[0]
            ),
        ));
    }
    let shape = if transpose {
        vec![merged[1], merged[0]]
    } else {
        merged
    };
    let dtype = match out {
        OutDtype::Keep => t0.dtype,
        OutDtype::F16 => Dtype::F16,
        OutDtype::BF16 => Dtype::BF16,
        OutDtype::F32 => Dtype::F32,
    };
    Ok(Entry {
        target: target_name(&rule.target, block),
        source: name.to_string(),
        split,
        transpose,
        source_dtype: t0.dtype,
        dtype,
        rank_shapes: sources.iter().map(|t| t.shape.clone()).collect(),
        shape,
        sources,
        dims: Mapping::dims(rule),
    })
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
