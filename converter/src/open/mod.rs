//! Opening a checkpoint: its files found ([`crate::checkpoint`], or [`crate::zero`] for a ZeRO
//! root), parsed (structure only), its family chosen (`family`), its weights listed; and
//! reading one output tensor's parts from it.

use std::borrow::Cow;
use std::ops::Range;
use std::path::{Path, PathBuf};

use cpm_torch::TorchFile;

use crate::checkpoint::{hugging_face, layout, weights};
use crate::error::{Error, Result};
use crate::mapping::Mapping;
use crate::plan::{self, Entry};

mod family;
mod zero_root;

pub use crate::checkpoint::{Layout, Rank, ShardPath};

/// Which family's mapping describes the input.
#[derive(Debug, Clone, Default)]
pub enum Family {
    /// Try every built-in family; the first that fits the files' structure wins.
    #[default]
    Detect,
    /// A built-in family by name (`--from`).
    Named(String),
    /// A mapping file (`--mapping`).
    File(PathBuf),
}

/// An opened checkpoint: its mapping and ranks, structure parsed, no tensor data read.
pub struct Source {
    pub(crate) mapping: Mapping,
    /// Every file, in the layout's (pp, tp, path) order, its weights listed.
    pub ranks: Vec<Rank>,
    /// A Hugging Face `config.json` beside the weights, parsed.
    pub(crate) config: Option<serde_json::Value>,
    /// How the family was chosen, for the summary.
    pub(crate) family_from: String,
}

/// config.json is a page of JSON; a larger one is not a model config.
const MAX_CONFIG_BYTES: u64 = 1 << 20;

/// Find and open the checkpoint at `input`.
pub fn open(input: &Path, family: &Family) -> Result<Source> {
    let (layout, zero) = discover_with(input)?;
    let mut ranks = match zero {
        Some(z) => crate::zero::open(&z)?,
        None => open_ranks(layout.shards)?,
    };
    let config = match &layout.config {
        Some(path) => Some(path.clone()),
        // A single file may have its config beside it.
        None if input.is_file() => {
            hugging_face::config_beside(input.parent().unwrap_or(Path::new(".")))?
        }
        None => None,
    };
    let config = config.map(|p| read_config(&p)).transpose()?;
    // Detection leaves each file's weights listed under the family it chose.
    let (mapping, family_from, listed) = match family {
        Family::Named(name) => (Mapping::builtin(name)?, format!("--from {name}"), false),
        Family::File(p) => (
            Mapping::load(p)?,
            format!("--mapping {}", p.display()),
            false,
        ),
        Family::Detect => {
            let (mapping, from) = family::detect(&mut ranks)?;
            (mapping, from, true)
        }
    };
    for r in ranks.iter_mut().filter(|_| !listed) {
        r.weights = weights::weights(&r.file, &mapping)?;
        if r.weights.is_empty() {
            return Err(weights::no_weights(&r.file, &mapping));
        }
    }
    Ok(Source {
        mapping,
        ranks,
        config,
        family_from,
    })
}

fn open_ranks(shards: Vec<ShardPath>) -> Result<Vec<Rank>> {
    shards
        .into_iter()
        .map(|s| {
            Ok(Rank {
                file: TorchFile::open(&s.path)?,
                display: s.display,
                tp: s.tp,
                pp: s.pp,
                weights: Vec::new(),
            })
        })
        .collect()
}

/// Every file of the checkpoint at `input`, DeepSpeed ZeRO's included.
pub fn discover(input: &Path) -> Result<Layout> {
    discover_with(input).map(|(l, _)| l)
}

fn discover_with(input: &Path) -> Result<(Layout, Option<crate::zero::Files>)> {
    Ok(match crate::zero::find(input)? {
        Some(crate::zero::Found::Zero(z)) => (zero_root::zero_layout(input, &z)?, Some(z)),
        Some(crate::zero::Found::Folder(dir)) => (layout::discover(&dir)?, None),
        None => (layout::discover(input)?, None),
    })
}

/// A Hugging Face `config.json`, read whole up to its cap.
fn read_config(path: &Path) -> Result<serde_json::Value> {
    let bytes = crate::files::read_capped(path, MAX_CONFIG_BYTES)?;
    serde_json::from_slice(&bytes).map_err(|e| Error::format(path, format!("not valid JSON: {e}")))
}

impl Source {
    /// The files holding `e`'s parts, for messages.
    pub fn part_names(&self, e: &Entry) -> Vec<String> {
        e.sources
            .iter()
            .map(|p| self.ranks[p.rank].display.clone())
            .collect()
    }

    /// Each part's byte span, checked against its storage.
    pub fn spans(&self, e: &Entry) -> Result<Vec<Range<u64>>> {
        e.sources
            .iter()
            .map(|p| self.ranks[p.rank].file.span(&e.source, &p.tensor))
            .collect::<cpm_torch::Result<_>>()
            .map_err(Error::from)
    }

    /// Each part's bytes (pages populated first: one system call instead of a fault per
    /// 64 KiB).
    pub fn read(&self, e: &Entry, spans: &[Range<u64>]) -> Result<Vec<Cow<'_, [u8]>>> {
        for (p, span) in e.sources.iter().zip(spans) {
            self.ranks[p.rank].file.prefetch(span);
        }
        e.sources
            .iter()
            .zip(spans)
            .map(|(p, span)| self.ranks[p.rank].file.read_at(&e.source, &p.tensor, span))
            .collect::<cpm_torch::Result<_>>()
            .map_err(Error::from)
    }

    /// Every copy a checkpoint keeps of an output tensor (Megatron's
    /// `word_embeddings_for_head`) must hold the same bits as that tensor. The pages read are
    /// released afterwards.
    pub fn check_copies(&self, plan: &plan::Plan) -> Result<()> {
        for c in &plan.checks {
            let of = plan.entry(&c.of).ok_or_else(|| {
                Error::internal(format!(
                    "the copy `{}` names no written tensor",
                    c.entry.source
                ))
            })?;
            let (copy_spans, of_spans) = (self.spans(&c.entry)?, self.spans(of)?);
            let merged = |e: &Entry, spans: &[Range<u64>]| -> Result<Vec<Cow<'_, [u8]>>> {
                let parts = self.read(e, spans)?;
                let names = self.part_names(e);
                Ok(crate::merge::tensor(e, parts, &names, false, &mut |n| vec![0; n])?.pieces)
            };
            let same =
                crate::merge::same_bytes(&merged(&c.entry, &copy_spans)?, &merged(of, &of_spans)?);
            for (e, spans) in [(&c.entry, &copy_spans), (of, &of_spans)] {
                for (p, s) in e.sources.iter().zip(spans) {
                    self.ranks[p.rank].file.release_for(&e.source, &p.tensor, s);
                }
            }
            if !same {
                return Err(Error::merge(format!(
                    "tensor `{}` must be a copy of `{}` (as written from `{}`), but their values \
                     differ; the checkpoint is inconsistent",
                    c.entry.source, c.of, of.source
                )));
            }
        }
        Ok(())
    }
}
