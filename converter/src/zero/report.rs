//! What `cpm-inspect` shows of a ZeRO checkpoint: per tensor-parallel rank, each group's
//! parameters, padding and partitions, and how many bytes of each optimizer file a conversion
//! reads (the fp32 elements its parameters use; never the Adam moments).

use std::fmt::Write as _;

use serde::Serialize;

use super::partition::Packing;
use super::Masters;
use crate::checkpoint::weights::Rank;
use crate::table;

/// One tensor-parallel rank's partitions.
#[derive(Debug, Clone, Serialize)]
pub struct RankReport {
    pub tp: usize,
    /// `1/2` (slices joined in rank order) or `3` (every parameter split over the ranks).
    pub stage: &'static str,
    pub model_states: String,
    pub groups: Vec<GroupReport>,
}

#[derive(Debug, Clone, Serialize)]
pub struct GroupReport {
    pub group: usize,
    pub parameters: usize,
    /// The parameters' elements.
    pub elements: u64,
    /// Elements stored beyond them (alignment, per-parameter rounding).
    pub padding: u64,
    pub partitions: Vec<PartitionReport>,
}

/// One data-parallel rank's flat fp32 tensor of a group.
#[derive(Debug, Clone, Serialize)]
pub struct PartitionReport {
    pub file: String,
    pub elements: u64,
    /// Byte offset of its first fp32 element in the file.
    pub start: u64,
    /// Its fp32 bytes in the file.
    pub bytes: u64,
    /// The bytes a conversion reads from it.
    pub read: u64,
}

/// The ZeRO layout of `ranks`, or `None` when they are not ZeRO ranks.
pub fn report(ranks: &[Rank]) -> Option<Vec<RankReport>> {
    let masters: Vec<(&Rank, &Masters)> = ranks
        .iter()
        .filter_map(|r| {
            let m = r.file.assembled()?.as_any().downcast_ref::<Masters>()?;
            Some((r, m))
        })
        .collect();
    (!masters.is_empty()).then(|| masters.into_iter().map(|(r, m)| rank(r, m)).collect())
}

fn rank(r: &Rank, m: &Masters) -> RankReport {
    let parts = &m.parts;
    let groups = parts
        .groups
        .iter()
        .enumerate()
        .map(|(g, group)| {
            let params: Vec<_> = parts.params.iter().filter(|p| p.group == g).collect();
            let mut read = vec![0u64; group.flats.len()];
            for p in &params {
                for run in parts.runs(p) {
                    read[run.dp] += run.count * 4;
                }
            }
            GroupReport {
                group: g,
                parameters: params.len(),
                elements: params.iter().map(|p| p.numel).sum(),
                padding: group.padding,
                partitions: group
                    .flats
                    .iter()
                    .zip(read)
                    .zip(m.file_names())
                    .map(|((f, read), file)| PartitionReport {
                        file: file.clone(),
                        elements: f.len,
                        start: f.bytes.start,
                        bytes: f.len * 4,
                        read,
                    })
                    .collect(),
            }
        })
        .collect();
    RankReport {
        tp: m.tp,
        stage: match parts.packing {
            Packing::Joined => "1/2",
            Packing::PerParameter => "3",
        },
        model_states: r.display.clone(),
        groups,
    }
}

/// The report as `cpm-inspect` prints it.
pub fn text(ranks: &[RankReport]) -> String {
    let mut out = String::new();
    let mut rows = Vec::new();
    for r in ranks {
        for g in &r.groups {
            for p in &g.partitions {
                rows.push(vec![
                    r.tp.to_string(),
                    g.group.to_string(),
                    p.file.clone(),
                    p.elements.to_string(),
                    p.bytes.to_string(),
                    p.read.to_string(),
                ]);
            }
        }
    }
    let head = ["TP", "GROUP", "FP32 PARTITION", "ELEMENTS", "BYTES", "READ"];
    out.push_str(&table::render(&head, &rows));
    for r in ranks {
        for g in &r.groups {
            let _ = writeln!(
                out,
                "ZeRO stage {}, tp rank {} ({}), group {}: {} parameters, {} elements over {} \
                 partition(s), {} padding element(s); fp32 master weights are read, the module \
                 copy and the Adam moments never",
                r.stage,
                r.tp,
                r.model_states,
                g.group,
                g.parameters,
                g.elements,
                g.partitions.len(),
                g.padding
            );
        }
    }
    out
}
