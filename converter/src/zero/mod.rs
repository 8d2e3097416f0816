//! DeepSpeed ZeRO checkpoints (stages 1, 2 and 3, with or without tensor parallelism): each
//! tensor-parallel rank's fp32 master weights, as DeepSpeed's `zero_to_fp32` recovers them,
//! read from the optimizer files' flat fp32 partitions, never from the module copy in the
//! training dtype and never touching the Adam moments.
//!
//! Each tensor-parallel rank becomes one [`Rank`] whose file is its model-states file with the
//! object tree replaced by `{parameter name: tensor}` (names and shapes from `param_shapes`);
//! those tensors are [`Masters`], read run by run ([`partition::Run`]) from the optimizer files.
//! From there on the family's mapping merges the ranks as for any rank grid.

pub mod files;
pub mod partition;
pub mod report;

use std::borrow::Cow;
use std::ops::Range;
use std::rc::Rc;

use cpm_torch::{Assembled, Pages, TensorRef, TorchFile, Value};

use crate::checkpoint::weights::Rank;
use crate::error::{Error, Result};
pub use files::{find, Files, Found};
use partition::{Group, Packing, Param, Partitions};

/// What a conversion of ZeRO ranks writes, for the user (`None` for other checkpoints).
pub fn note(ranks: &[Rank]) -> Option<String> {
    let r = report::report(ranks)?;
    let stage = r.first().map_or("?", |r| r.stage);
    Some(format!(
        "DeepSpeed ZeRO stage {stage}, {} tensor-parallel rank(s): writing the fp32 master \
         weights from the optimizer partitions (as DeepSpeed's zero_to_fp32 recovers them), not \
         the module copy in the training dtype; float32 unless another output dtype is asked for",
        r.len()
    ))
}

/// Storage keys of assembled tensors: `zero/<parameter index>`.
const KEY: &str = "zero/";

/// Open every file of `files` and describe each tensor-parallel rank's master weights.
pub fn open(files: &Files) -> Result<Vec<Rank>> {
    (0..files.tp())
        .map(|t| {
            let model = TorchFile::open(&files.model[t])?;
            let optim = files.optim[t]
                .iter()
                .map(|p| TorchFile::open(p))
                .collect::<cpm_torch::Result<Vec<_>>>()?;
            let parts = partitions(files, &model, &optim)?;
            let root = root(&parts);
            let display = files.show(&files.model[t]);
            let masters = Masters {
                files: optim,
                names: files.optim[t].iter().map(|p| files.show(p)).collect(),
                parts,
                tp: t,
            };
            Ok(Rank {
                file: model.with_assembled(root, Box::new(masters)),
                display,
                tp: t,
                pp: 0,
                weights: Vec::new(),
            })
        })
        .collect()
}

/// `{name: tensor}` for every parameter, in `param_shapes` order.
fn root(parts: &Partitions) -> Value {
    let items = parts
        .params
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let t = partition::tensor_ref(&format!("{KEY}{i}"), p);
            (
                Value::Str(p.name.as_str().into()),
                Value::Tensor(Rc::new(t)),
            )
        })
        .collect();
    Value::Dict(Rc::new(std::cell::RefCell::new(items)))
}

/// The record a model-states file keeps of the world it was saved from must match the files.
fn check_world(files: &Files, model: &TorchFile) -> Result<()> {
    for (key, found) in [("dp_world_size", files.dp()), ("mp_world_size", files.tp())] {
        let Some(n) = model.root.get(key).and_then(|v| v.as_int()) else {
            continue;
        };
        if n != found as i64 {
            return Err(Error::layout(
                &model.path,
                format!(
                    "records {key} = {n}, but the tag folder holds a {} × {} (tp × dp) grid of \
                     optimizer files",
                    files.tp(),
                    files.dp()
                ),
            ));
        }
    }
    Ok(())
}

/// Where each parameter of one tensor-parallel rank lies, checked against the files.
fn partitions(files: &Files, model: &TorchFile, optim: &[TorchFile]) -> Result<Partitions> {
    check_world(files, model)?;
    let shapes = partition::param_shapes(model)?;
    let dp = optim.len();
    let mut per_rank = Vec::with_capacity(dp);
    for f in optim {
        let (packing, flats, world) = partition::flats(f)?;
        if let Some(w) = world.filter(|&w| w != dp as u64) {
            return Err(Error::layout(
                &f.path,
                format!("records partition_count {w}, but {dp} data-parallel rank file(s) exist"),
            ));
        }
        if flats.len() != shapes.len() {
            return Err(Error::format(
                &f.path,
                format!(
                    "holds {} fp32 group(s), but param_shapes in {} lists {}",
                    flats.len(),
                    model.path.display(),
                    shapes.len()
                ),
            ));
        }
        per_rank.push((packing, flats));
    }
    let packing = per_rank[0].0;
    if let Some((i, _)) = per_rank.iter().enumerate().find(|(_, r)| r.0 != packing) {
        return Err(Error::format(
            &optim[i].path,
            "is of another ZeRO stage than its data-parallel peers",
        ));
    }
    let mut params = Vec::new();
    let mut groups = Vec::with_capacity(shapes.len());
    let mut seen = std::collections::HashSet::new();
    for (g, shape) in shapes.into_iter().enumerate() {
        let flats: Vec<_> = per_rank.iter().map(|r| r.1[g].clone()).collect();
        let pads = match packing {
            Packing::Joined => partition::alignment_paddings(&optim[0], g)?,
            Packing::PerParameter => Vec::new(),
        };
        let first = params.len();
        let mut cursor = 0u64;
        for (i, (name, dims)) in shape.into_iter().enumerate() {
            if !seen.insert(name.clone()) {
                return Err(Error::format(
                    &model.path,
                    format!("param_shapes lists `{name}` twice"),
                ));
            }
            let numel = dims
                .iter()
                .try_fold(1u64, |a, &d| a.checked_mul(d))
                .ok_or_else(|| too_big(model, &name, &dims))?;
            let step = match packing {
                Packing::Joined => numel.checked_add(pads.get(i).copied().unwrap_or(0)),
                Packing::PerParameter => Some(numel.div_ceil(dp as u64)),
            };
            let offset = cursor;
            cursor = step
                .and_then(|s| cursor.checked_add(s))
                .ok_or_else(|| too_big(model, &name, &dims))?;
            params.push(Param {
                name,
                shape: dims,
                numel,
                group: g,
                offset,
            });
        }
        groups.push(group(
            files,
            optim,
            g,
            packing,
            flats,
            cursor,
            &params[first..],
        )?);
    }
    Ok(Partitions {
        packing,
        params,
        groups,
    })
}

fn too_big(model: &TorchFile, name: &str, dims: &[u64]) -> Error {
    Error::tensor(
        &model.path,
        name,
        format!("param_shapes gives {dims:?}, whose element count overflows"),
    )
}

/// Check group `g`'s partitions hold what its parameters need (`used` elements: joined, or per
/// rank for stage 3) plus less than 2 × world size of padding.
fn group(
    files: &Files,
    optim: &[TorchFile],
    g: usize,
    packing: Packing,
    flats: Vec<partition::Flat>,
    used: u64,
    params: &[Param],
) -> Result<Group> {
    let dp = flats.len() as u64;
    let slack = 2 * dp;
    let held: Vec<u64> = match packing {
        Packing::Joined => vec![flats.iter().map(|f| f.len).sum()],
        Packing::PerParameter => flats.iter().map(|f| f.len).collect(),
    };
    for (i, &h) in held.iter().enumerate() {
        let whose = match packing {
            Packing::Joined => format!("the joined partitions of group {g}"),
            Packing::PerParameter => {
                format!("fp32_flat_groups[{g}] of {}", files.show(&optim[i].path))
            }
        };
        if h < used {
            return Err(Error::format(
                &optim[i].path,
                format!(
                    "{whose} hold {h} elements, but param_shapes ({} parameters) needs {used}: a \
                     partition is shorter than the parameters it should hold",
                    params.len()
                ),
            ));
        }
        if h - used >= slack {
            return Err(Error::format(
                &optim[i].path,
                format!(
                    "{whose} hold {h} elements, {} more than param_shapes needs; ZeRO pads by \
                     less than 2 × world size ({slack}): the world size or shapes are wrong",
                    h - used
                ),
            ));
        }
    }
    let numel: u64 = params.iter().map(|p| p.numel).sum();
    let stored: u64 = flats.iter().map(|f| f.len).sum();
    Ok(Group {
        flats,
        padding: stored.saturating_sub(numel),
    })
}

/// One tensor-parallel rank's master weights, read from its optimizer files.
pub struct Masters {
    files: Vec<TorchFile>,
    /// The files as shown to the user.
    names: Vec<String>,
    pub parts: Partitions,
    pub tp: usize,
}

impl Masters {
    fn param(&self, key: &str) -> Option<&Param> {
        let i: usize = key.strip_prefix(KEY)?.parse().ok()?;
        self.parts.params.get(i)
    }

    /// The optimizer files, as shown to the user, in data-parallel order.
    pub fn file_names(&self) -> &[String] {
        &self.names
    }
}

impl Assembled for Masters {
    fn holds(&self, key: &str) -> bool {
        self.param(key).is_some()
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }

    fn check(&self, name: &str, t: &TensorRef) -> cpm_torch::Result<()> {
        let p = self
            .param(&t.storage_key)
            .ok_or_else(|| cpm_torch::Error::internal(format!("no ZeRO parameter for `{name}`")))?;
        let runs = self.parts.runs(p);
        let covered: u64 = runs.iter().map(|r| r.count).sum();
        let inside = runs.iter().all(|r| {
            let f = &self.parts.groups[p.group].flats[r.dp];
            r.start >= f.bytes.start && r.bytes().end <= f.bytes.end
        });
        if covered != p.numel || !inside || t.shape != p.shape {
            return Err(cpm_torch::Error::internal(format!(
                "ZeRO parameter `{name}`: runs cover {covered} of {} elements",
                p.numel
            )));
        }
        Ok(())
    }

    /// Borrowed from the map when one run holds the parameter whole (all but the parameters
    /// that straddle two ranks' partitions); those few are copied, their pages released.
    fn read(&self, name: &str, t: &TensorRef) -> cpm_torch::Result<Cow<'_, [u8]>> {
        self.check(name, t)?;
        let p = self
            .param(&t.storage_key)
            .ok_or_else(|| cpm_torch::Error::internal(format!("no ZeRO parameter for `{name}`")))?;
        let runs = self.parts.runs(p);
        let run_bytes = |r: &partition::Run| {
            let f = &self.files[r.dp];
            let bytes = f.bytes_at(&r.bytes()).ok_or_else(|| {
                cpm_torch::Error::tensor(&f.path, name, "its fp32 partition lies outside the file")
            })?;
            f.prefetch(&r.bytes());
            Ok::<_, cpm_torch::Error>((f, bytes))
        };
        if let [r] = runs[..] {
            return run_bytes(&r).map(|(_, b)| Cow::Borrowed(b));
        }
        // numel was proven (by `check`) to lie in the files' bytes: this allocation is backed.
        let mut out = Vec::with_capacity((p.numel * 4) as usize);
        for r in runs {
            let (f, bytes) = run_bytes(&r)?;
            out.extend_from_slice(bytes);
            f.release(&r.bytes());
        }
        Ok(Cow::Owned(out))
    }

    /// The one run a parameter held whole is read from (see [`Masters::read`]).
    fn pages(&self, _name: &str, t: &TensorRef) -> Vec<(Pages<'_>, Range<u64>)> {
        let Some(p) = self.param(&t.storage_key) else {
            return Vec::new();
        };
        match self.parts.runs(p)[..] {
            [r] => vec![(self.files[r.dp].pages(), r.bytes())],
            _ => Vec::new(),
        }
    }
}
