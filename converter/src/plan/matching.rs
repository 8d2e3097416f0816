//! Grouping every weight of every file by pipeline stage and name, matching it to a mapping
//! rule, and numbering layers globally: a stage numbers its layers from 0, so stage `p`'s local
//! layer `i` is layer `i` plus the number of layers of the stages before it (counted, never
//! assumed equal).

use std::collections::{BTreeSet, HashMap, HashSet};

use super::Part;
use crate::checkpoint::weights::Rank;
use crate::error::{Error, Result};
use crate::mapping::{target_name, Mapping, Missing, BLOCK};

/// The files of a checkpoint as a tensor-parallel × pipeline grid.
pub struct Grid {
    pub tp: usize,
    pub pp: usize,
    /// For each stage and tensor-parallel rank, the indices in `ranks` of its files (one, or
    /// several shards of one state dict).
    pub stages: Vec<Vec<Vec<usize>>>,
}

impl Grid {
    /// Every (tp, pp) position holds at least one file.
    pub fn of(ranks: &[Rank]) -> Result<Grid> {
        let first = ranks
            .first()
            .ok_or_else(|| Error::internal("a checkpoint without files reached the plan"))?;
        let tp = ranks.iter().map(|r| r.tp).max().unwrap_or(0) + 1;
        let pp = ranks.iter().map(|r| r.pp).max().unwrap_or(0) + 1;
        // Bounded by the files present: a grid larger than them has a gap.
        if tp.checked_mul(pp).map_or(true, |n| n > ranks.len()) {
            return Err(Error::layout(
                &first.file.path,
                format!(
                    "{} files cannot fill a grid of {tp} tensor-parallel ranks × {pp} pipeline \
                     stages",
                    ranks.len()
                ),
            ));
        }
        let mut stages = vec![vec![Vec::new(); tp]; pp];
        for (i, r) in ranks.iter().enumerate() {
            stages[r.pp][r.tp].push(i);
        }
        let gap = (0..pp)
            .flat_map(|p| (0..tp).map(move |t| (p, t)))
            .find(|&(p, t)| stages[p][t].is_empty());
        if let Some((p, t)) = gap {
            return Err(Error::layout(
                &first.file.path,
                format!("no file holds tensor-parallel rank {t} of pipeline stage {p}"),
            ));
        }
        Ok(Grid { tp, pp, stages })
    }
}

/// Every weight matched, and the first gap in a stage's layer numbers: reported once the names
/// are known to be the family's (by [`check_complete`]), since a gap is an incomplete checkpoint
/// of this family, not another family.
pub struct AllMatched {
    pub matched: Vec<Matched>,
    pub gap: Option<Error>,
}

/// One output tensor's sources: the stored name (on rank 0 of its stage), its rule, its global
/// block index, and its part on every tensor-parallel rank (none for a synthesized tensor).
pub struct Matched {
    pub name: String,
    pub rule: usize,
    pub block: Option<u64>,
    pub parts: Vec<Part>,
}

/// Every weight of every file matched to a rule, each present on every tensor-parallel rank of
/// its stage, in stage and file order.
pub fn match_rules(ranks: &[Rank], grid: &Grid, mapping: &Mapping) -> Result<AllMatched> {
    let mut out = Vec::new();
    let mut gap = None;
    let mut offset = 0u64;
    let mut seen: HashMap<(usize, Option<u64>), (usize, String)> = HashMap::new();
    for (p, stage) in grid.stages.iter().enumerate() {
        let local = match_stage(ranks, stage, mapping)?;
        let (layers, g) = stage_layers(ranks, stage, &local, p, grid.pp);
        gap = gap.or(g);
        for mut m in local {
            m.block = m.block.map(|b| b + offset);
            if let Some((q, other)) = seen.insert((m.rule, m.block), (p, m.name.clone())) {
                let path = &ranks[stage[0][0]].file.path;
                let why = if q == p {
                    format!("and `{other}` are two spellings of one tensor; keep one")
                } else {
                    format!("appears on pipeline stages {q} and {p}; a tensor lives on one stage")
                };
                return Err(Error::tensor(path, &m.name, why));
            }
            out.push(m);
        }
        offset += layers;
    }
    Ok(AllMatched { matched: out, gap })
}

/// One stage's weights, grouped by name across its tensor-parallel ranks and matched to rules
/// (block indices still local to the stage).
fn match_stage(ranks: &[Rank], stage: &[Vec<usize>], mapping: &Mapping) -> Result<Vec<Matched>> {
    let tp = stage.len();
    let mut by_name: HashMap<&str, Vec<Option<Part>>> = HashMap::new();
    let mut order: Vec<&str> = Vec::new();
    let files = stage
        .iter()
        .enumerate()
        .flat_map(|(t, fs)| fs.iter().map(move |&r| (t, r)));
    for (t, r) in files {
        let rank = &ranks[r];
        for (name, tensor) in &rank.weights {
            if mapping.ignored(name) {
                continue;
            }
            let slot = by_name.entry(name.as_str()).or_insert_with(|| {
                order.push(name.as_str());
                vec![None; tp]
            });
            let part = Part {
                rank: r,
                tensor: tensor.clone(),
            };
            if slot[t].replace(part).is_some() {
                return Err(Error::tensor(
                    &rank.file.path,
                    name,
                    "appears twice in the weights dict",
                ));
            }
        }
    }
    let mut out = Vec::with_capacity(order.len());
    for name in order {
        let slots = by_name.remove(name).unwrap_or_default();
        let first = slots
            .iter()
            .flatten()
            .next()
            .map_or(stage[0][0], |p| p.rank);
        let (rule, block) = mapping.find(name).ok_or_else(|| {
            Error::tensor(
                &ranks[first].file.path,
                name,
                format!(
                    "matches no rule of the `{}` mapping; is this checkpoint a different family?",
                    mapping.variant.name
                ),
            )
        })?;
        let parts = slots
            .into_iter()
            .enumerate()
            .map(|(t, part)| {
                part.ok_or_else(|| {
                    Error::tensor(
                        &ranks[stage[t][0]].file.path,
                        name,
                        format!(
                            "is missing from tensor-parallel rank {t} but present on other ranks"
                        ),
                    )
                })
            })
            .collect::<Result<Vec<_>>>()?;
        out.push(Matched {
            name: name.to_string(),
            rule,
            block,
            parts,
        });
    }
    Ok(out)
}

/// A stage's layer count. Its local block indices must be exactly 0..n (a gap or a stray index
/// such as `layers.100000000` names the first missing layer); nothing here is sized by an index
/// read from a name.
fn stage_layers(
    ranks: &[Rank],
    stage: &[Vec<usize>],
    local: &[Matched],
    p: usize,
    pp: usize,
) -> (u64, Option<Error>) {
    let blocks: BTreeSet<u64> = local.iter().filter_map(|m| m.block).collect();
    let Some(gap) = blocks
        .iter()
        .zip(0u64..)
        .find(|(b, i)| **b != *i)
        .map(|(_, i)| i)
    else {
        return (blocks.len() as u64, None);
    };
    let last = blocks.last().copied().unwrap_or(0);
    let example = local
        .iter()
        .find(|m| m.block == Some(last))
        .map(|m| m.name.replacen(&last.to_string(), &gap.to_string(), 1))
        .unwrap_or_default();
    let stage_note = if pp > 1 {
        format!(" on pipeline stage {p} (stages number their layers from 0)")
    } else {
        String::new()
    };
    let error = Error::tensor(
        &ranks[stage[0][0]].file.path,
        example,
        format!(
            "is missing: layer {gap} has no tensors{stage_note}, but the checkpoint names layers \
             up to {last} (layer indices must run 0..{} without gaps)",
            blocks.len()
        ),
    );
    (blocks.len() as u64, Some(error))
}

/// The layer count; every per-layer rule present in every layer and every other rule once,
/// unless the rule says what a missing tensor means (zeros: a synthesized entry is added;
/// skip: nothing).
pub fn check_complete(ranks: &[Rank], mapping: &Mapping, all: &mut AllMatched) -> Result<u64> {
    if let Some(gap) = all.gap.take() {
        return Err(gap);
    }
    let matched = &mut all.matched;
    let layers = matched
        .iter()
        .filter_map(|m| m.block)
        .max()
        .map_or(0, |b| b + 1);
    let present: HashSet<(usize, Option<u64>)> =
        matched.iter().map(|m| (m.rule, m.block)).collect();
    let mut synthesized = Vec::new();
    for (i, rule) in mapping.tensors.iter().enumerate() {
        let wanted: Box<dyn Iterator<Item = Option<u64>>> = if rule.target.contains(BLOCK) {
            Box::new((0..layers).map(Some))
        } else {
            Box::new(std::iter::once(None))
        };
        for b in wanted {
            if present.contains(&(i, b)) {
                continue;
            }
            match rule.missing {
                Missing::Skip => {}
                Missing::Zeros => synthesized.push(Matched {
                    name: target_name(rule.source.first(), b),
                    rule: i,
                    block: b,
                    parts: Vec::new(),
                }),
                Missing::Error => {
                    return Err(Error::tensor(
                        &ranks[0].file.path,
                        target_name(rule.source.first(), b),
                        "is missing from the checkpoint (every rank), but the mapping needs it",
                    ))
                }
            }
        }
    }
    matched.extend(synthesized);
    Ok(layers)
}
