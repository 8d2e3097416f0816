//! Where each parameter's fp32 master elements lie in a ZeRO checkpoint's optimizer files.
//!
//! Every parameter is an ordered list of 1-D element runs ([`Run`]: a file, the byte offset of
//! its first element, an element count) that together cover its flattened elements; the
//! parameter is those elements viewed with its `param_shapes` shape. Runs are computed per
//! parameter when it is read, from one record per parameter and one span per (group, rank):
//! nothing here grows with the product of parameters and ranks.
//!
//! * Stages 1 and 2: the ranks' `single_partition_of_fp32_groups[g]`, joined in rank order,
//!   are group g's parameters flattened in `param_shapes[g]` order, each followed by its
//!   `param_alignment_paddings[g][i]` elements; what is left at the end (the group's alignment
//!   padding, which DeepSpeed 0.19.8 cuts from the last rank's slice and older versions saved)
//!   must be shorter than 2 × world size.
//! * Stage 3: each rank's `fp32_flat_groups[g]` holds, for every parameter in order, its
//!   `ceil(numel / world)` elements `[r·p, (r+1)·p)`; joined over ranks, the first `numel` are
//!   the parameter (the rest is padding, never read: it holds garbage).

use std::ops::Range;

use cpm_torch::{Dtype, TensorRef, TorchFile};

use crate::error::{Error, Result};

/// A run of consecutive f32 elements in one optimizer file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Run {
    /// Index into the data-parallel ranks' files.
    pub dp: usize,
    /// Byte offset of the first element in the file.
    pub start: u64,
    /// Elements.
    pub count: u64,
}

impl Run {
    pub fn bytes(&self) -> Range<u64> {
        self.start..self.start + self.count * 4
    }
}

/// How a group's elements are spread over the ranks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Packing {
    /// Stages 1 and 2: the ranks' slices joined.
    Joined,
    /// Stage 3: every parameter split over the ranks.
    PerParameter,
}

/// One parameter: its name and shape from `param_shapes`, where it starts.
#[derive(Debug, Clone)]
pub struct Param {
    pub name: String,
    pub shape: Vec<u64>,
    pub numel: u64,
    pub group: usize,
    /// Joined: element offset in the joined group. Per parameter: offset in each rank's flat.
    pub offset: u64,
}

/// One rank's flat fp32 tensor of one group: where it lies in its file.
#[derive(Debug, Clone)]
pub struct Flat {
    /// Byte range in the rank's optimizer file.
    pub bytes: Range<u64>,
    /// Elements.
    pub len: u64,
}

/// One parameter group over all data-parallel ranks.
#[derive(Debug, Clone)]
pub struct Group {
    /// Per dp rank.
    pub flats: Vec<Flat>,
    /// Elements left over (the group's padding as stored), summed over ranks.
    pub padding: u64,
}

/// The layout of one tensor-parallel rank's fp32 masters.
#[derive(Debug, Clone)]
pub struct Partitions {
    pub packing: Packing,
    pub params: Vec<Param>,
    pub groups: Vec<Group>,
}

impl Partitions {
    /// `p`'s runs, in element order, covering exactly its numel.
    pub fn runs(&self, p: &Param) -> Vec<Run> {
        let flats = &self.groups[p.group].flats;
        let mut out = Vec::new();
        match self.packing {
            Packing::Joined => {
                let (mut at, mut left) = (p.offset, p.numel);
                let mut base = 0u64;
                for (dp, f) in flats.iter().enumerate() {
                    let end = base + f.len;
                    if left > 0 && at < end {
                        let count = left.min(end - at);
                        out.push(Run {
                            dp,
                            start: f.bytes.start + (at - base) * 4,
                            count,
                        });
                        at += count;
                        left -= count;
                    }
                    base = end;
                }
            }
            Packing::PerParameter => {
                let world = flats.len() as u64;
                let piece = p.numel.div_ceil(world.max(1));
                for (dp, f) in flats.iter().enumerate() {
                    let first = dp as u64 * piece;
                    let count = piece.min(p.numel.saturating_sub(first));
                    if count > 0 {
                        out.push(Run {
                            dp,
                            start: f.bytes.start + p.offset * 4,
                            count,
                        });
                    }
                }
            }
        }
        out
    }
}

/// A value's integer, for messages too.
fn int(v: &cpm_torch::Value) -> Option<u64> {
    v.as_int().and_then(|i| u64::try_from(i).ok())
}

/// One parameter group's `(name, shape)` pairs, in order.
pub type GroupShapes = Vec<(String, Vec<u64>)>;

/// `param_shapes`: a list of dicts name -> `torch.Size` (a tuple of ints).
pub fn param_shapes(model: &TorchFile) -> Result<Vec<GroupShapes>> {
    let bad = |m: String| Error::format(&model.path, m);
    let groups = match &model.root.get("param_shapes") {
        Some(cpm_torch::Value::List(l)) => l.borrow().clone(),
        Some(other) => {
            return Err(bad(format!(
                "param_shapes is {}, expected a list of dicts",
                other.describe()
            )))
        }
        None => {
            return Err(bad(
                "has no param_shapes: not a ZeRO model-states file".into()
            ))
        }
    };
    let mut out = Vec::with_capacity(groups.len());
    for (g, group) in groups.iter().enumerate() {
        let items = group
            .dict_items()
            .ok_or_else(|| bad(format!("param_shapes[{g}] is {}", group.describe())))?;
        let mut params = Vec::with_capacity(items.len());
        for (k, v) in items {
            let name = k
                .as_str()
                .ok_or_else(|| bad(format!("a name in param_shapes[{g}] is {}", k.describe())))?;
            let dims = match &v {
                cpm_torch::Value::Tuple(t) => t.iter().map(int).collect::<Option<Vec<_>>>(),
                cpm_torch::Value::List(l) => l.borrow().iter().map(int).collect(),
                _ => None,
            };
            let dims = dims.ok_or_else(|| {
                bad(format!(
                    "param_shapes[{g}][`{}`] is {}, expected a torch.Size",
                    cpm_torch::shorten(name),
                    v.describe()
                ))
            })?;
            params.push((name.to_string(), dims));
        }
        out.push(params);
    }
    Ok(out)
}

/// The optimizer's state dict of one optimizer file (`optimizer_state_dict`).
pub fn optimizer_state(f: &TorchFile) -> Result<cpm_torch::Value> {
    f.root.get("optimizer_state_dict").ok_or_else(|| {
        Error::format(
            &f.path,
            "has no optimizer_state_dict: not a DeepSpeed ZeRO optimizer-states file",
        )
    })
}

/// One rank's fp32 flat groups (stage 1/2 or 3 by which key is present) and the world size it
/// records.
pub fn flats(f: &TorchFile) -> Result<(Packing, Vec<Flat>, Option<u64>)> {
    let osd = optimizer_state(f)?;
    let (packing, key) = if osd.get("fp32_flat_groups").is_some() {
        (Packing::PerParameter, "fp32_flat_groups")
    } else if osd.get("single_partition_of_fp32_groups").is_some() {
        (Packing::Joined, "single_partition_of_fp32_groups")
    } else {
        return Err(Error::format(
            &f.path,
            "holds neither single_partition_of_fp32_groups (ZeRO stages 1, 2) nor \
             fp32_flat_groups (stage 3)",
        ));
    };
    let list = match &osd.get(key) {
        Some(cpm_torch::Value::List(l)) => l.borrow().clone(),
        other => {
            return Err(Error::format(
                &f.path,
                format!(
                    "{key} is {}, expected a list of tensors",
                    other.as_ref().map_or("missing".into(), |v| v.describe())
                ),
            ))
        }
    };
    let mut out = Vec::with_capacity(list.len());
    for (g, v) in list.iter().enumerate() {
        let name = format!("{key}[{g}]");
        let cpm_torch::Value::Tensor(t) = v else {
            return Err(Error::tensor(
                &f.path,
                &name,
                format!("is {}", v.describe()),
            ));
        };
        if t.dtype != Dtype::F32 || t.shape.len() != 1 || !t.is_contiguous() {
            return Err(Error::tensor(
                &f.path,
                &name,
                format!(
                    "is {} {:?} (stride {:?}); ZeRO's master partitions are contiguous 1-D \
                     float32",
                    t.dtype.torch_name(),
                    t.shape,
                    t.stride
                ),
            ));
        }
        let bytes = f.span(&name, t)?;
        out.push(Flat {
            bytes,
            len: t.shape[0],
        });
    }
    // Stage 1/2 record a list (one per group), stage 3 an int.
    let world = match &osd.get("partition_count") {
        Some(cpm_torch::Value::List(l)) => l.borrow().first().and_then(int),
        Some(v) => int(v),
        None => None,
    };
    Ok((packing, out, world))
}

/// `param_alignment_paddings[g]` (stages 1/2; absent in older versions: none).
pub fn alignment_paddings(f: &TorchFile, g: usize) -> Result<Vec<u64>> {
    let osd = optimizer_state(f)?;
    let Some(all) = osd.get("param_alignment_paddings") else {
        return Ok(Vec::new());
    };
    let group = match &all {
        cpm_torch::Value::List(l) => l.borrow().get(g).cloned(),
        _ => None,
    };
    let Some(cpm_torch::Value::List(l)) = &group else {
        return Err(Error::format(
            &f.path,
            format!("param_alignment_paddings[{g}] is not a list of ints"),
        ));
    };
    let pads = l.borrow().iter().map(int).collect::<Option<Vec<_>>>();
    pads.ok_or_else(|| {
        Error::format(
            &f.path,
            format!("param_alignment_paddings[{g}] is not a list of ints"),
        )
    })
}

/// A tensor reference for `p`, keyed so [`cpm_torch::Assembled`] finds it.
pub fn tensor_ref(key: &str, p: &Param) -> TensorRef {
    let mut stride = vec![1u64; p.shape.len()];
    for d in (0..p.shape.len().saturating_sub(1)).rev() {
        stride[d] = stride[d + 1].saturating_mul(p.shape[d + 1]);
    }
    TensorRef {
        storage_key: key.into(),
        dtype: Dtype::F32,
        offset: 0,
        shape: p.shape.clone(),
        stride,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flat(start: u64, len: u64) -> Flat {
        Flat {
            bytes: start..start + len * 4,
            len,
        }
    }

    fn param(numel: u64, offset: u64) -> Param {
        Param {
            name: "p".into(),
            shape: vec![numel],
            numel,
            group: 0,
            offset,
        }
    }

    fn parts(packing: Packing, flats: Vec<Flat>) -> Partitions {
        Partitions {
            packing,
            params: Vec::new(),
            groups: vec![Group { flats, padding: 0 }],
        }
    }

    #[test]
    fn joined_runs_cross_rank_boundaries_after_alignment_padding() {
        // Two slices of 5: a (3 elements, 1 padding) at 0, b (4 elements) at 4 ends in rank 1.
        let p = parts(Packing::Joined, vec![flat(100, 5), flat(1000, 5)]);
        assert_eq!(
            p.runs(&param(4, 4)),
            [
                Run {
                    dp: 0,
                    start: 116,
                    count: 1
                },
                Run {
                    dp: 1,
                    start: 1000,
                    count: 3
                }
            ]
        );
    }

    #[test]
    fn stage_3_pieces_are_ceil_numel_over_world() {
        // 7 elements over 3 ranks: 3 + 3 + 1, each at the parameter's offset 2 in its flat.
        let p = parts(
            Packing::PerParameter,
            vec![flat(100, 9), flat(1000, 9), flat(2000, 9)],
        );
        assert_eq!(
            p.runs(&param(7, 2)),
            [
                Run {
                    dp: 0,
                    start: 108,
                    count: 3
                },
                Run {
                    dp: 1,
                    start: 1008,
                    count: 3
                },
                Run {
                    dp: 2,
                    start: 2008,
                    count: 1
                }
            ]
        );
        // Fewer elements than ranks: the last rank holds only padding.
        assert_eq!(p.runs(&param(2, 0)).len(), 2);
    }
}
