//! An opened checkpoint: its files parsed (structure only), its family chosen, its weights
//! listed; and reading one output tensor's parts from it.

use std::borrow::Cow;
use std::ops::Range;
use std::path::{Path, PathBuf};

use crate::checkpoint::{self, Rank};
use crate::error::{Error, Result};
use crate::layout;
use crate::mapping::Mapping;
use crate::plan::{self, Entry};
use crate::torch::TorchFile;

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
    pub mapping: Mapping,
    pub ranks: Vec<Rank>,
    /// A Hugging Face `config.json` beside the weights, parsed.
    pub config: Option<serde_json::Value>,
    /// How the family was chosen, for the summary.
    pub family_from: String,
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
        None if input.is_file() => layout::config_beside(input.parent().unwrap_or(Path::new(".")))?,
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
            let (mapping, from) = detect(&mut ranks)?;
            (mapping, from, true)
        }
    };
    for r in ranks.iter_mut().filter(|_| !listed) {
        r.weights = checkpoint::weights(&r.file, &mapping)?;
        if r.weights.is_empty() {
            return Err(checkpoint::no_weights(&r.file, &mapping));
        }
    }
    Ok(Source {
        mapping,
        ranks,
        config,
        family_from,
    })
}

fn open_ranks(shards: Vec<layout::ShardPath>) -> Result<Vec<Rank>> {
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
pub fn discover(input: &Path) -> Result<layout::Layout> {
    discover_with(input).map(|(l, _)| l)
}

fn discover_with(input: &Path) -> Result<(layout::Layout, Option<crate::zero::Files>)> {
    Ok(match crate::zero::find(input)? {
        Some(crate::zero::Found::Zero(z)) => (zero_layout(input, &z)?, Some(z)),
        Some(crate::zero::Found::Folder(dir)) => (layout::discover(&dir)?, None),
        None => (layout::discover(input)?, None),
    })
}

/// A ZeRO checkpoint's layout: every file as a shard (its ranks come from [`crate::zero`]) (its ranks come from [`crate::zero`]), the
/// config.json beside the tag folder, else beside the root (ZeRO records no model config).
fn zero_layout(input: &Path, z: &crate::zero::Files) -> Result<layout::Layout> {
    let config = match layout::config_beside(&z.dir)? {
        Some(c) => Some(c),
        None if z.dir != input => layout::config_beside(input)?,
        None => None,
    };
    let tp_files = z.model.iter().zip(&z.optim).enumerate();
    let shards = tp_files
        .flat_map(|(t, (m, o))| std::iter::once(m).chain(o).map(move |p| (t, p)))
        .map(|(tp, p)| layout::ShardPath {
            path: p.clone(),
            display: z.show(p),
            tp,
            pp: 0,
        })
        .collect();
    Ok(layout::Layout {
        shards,
        tp: z.tp(),
        pp: 1,
        iteration: z.tag.strip_prefix("global_step").map(str::to_string),
        config,
    })
}

/// The first built-in family whose mapping fits the files, or an error saying what was found.
fn detect(ranks: &mut [Rank]) -> Result<(Mapping, String)> {
    let mut tried = Vec::new();
    let mut named_by: Option<Error> = None;
    for name in Mapping::builtin_names() {
        let mapping = Mapping::builtin(name)?;
        // Errors here are the file's own (a hostile name table), whatever the family.
        for r in ranks.iter_mut() {
            r.weights = checkpoint::weights(&r.file, &mapping)?;
        }
        let listed = match ranks.iter().find(|r| r.weights.is_empty()) {
            Some(r) => Err(plan::Misfit::Names(checkpoint::no_weights(
                &r.file, &mapping,
            ))),
            None => Ok(()),
        };
        match listed.and_then(|()| plan::fits(ranks, &mapping)) {
            Ok(()) => return Ok((mapping, "detected".into())),
            // Every name is this family's. Another family sharing its names may still fit
            // (nanoGPT's and Hugging Face's names are the same, their orientation is not);
            // if none does, this family's complaint is the one that helps.
            Err(plan::Misfit::Model(e)) => {
                tried.push(brief(name, &e));
                named_by.get_or_insert(e);
            }
            Err(plan::Misfit::Names(e)) => tried.push(brief(name, &e)),
        }
    }
    if let Some(e) = named_by {
        return Err(e);
    }
    let r0 = &ranks[0];
    let keys: Vec<String> = r0
        .file
        .root
        .dict_items()
        .unwrap_or_default()
        .iter()
        .take(8)
        .map(|(k, _)| {
            k.as_str().map_or_else(
                || k.describe(),
                |s| crate::torch::value::shorten(s).into_owned(),
            )
        })
        .collect();
    Err(Error::format(
        &r0.file.path,
        format!(
            "fits no known GPT-2 family (top-level keys: {}); pass --from FAMILY or --mapping \
             FILE to see the first mismatch in full. Tried:\n  {}",
            keys.join(", "),
            tried.join("\n  ")
        ),
    ))
}

/// One family's reason for not fitting, at most a few hundred characters.
fn brief(family: &str, e: &Error) -> String {
    let text = e.to_string();
    match text.char_indices().nth(160) {
        Some((cut, _)) => format!("{family}: {}…", &text[..cut]),
        None => format!("{family}: {text}"),
    }
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
            .collect()
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
            .collect()
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
                    self.ranks[p.rank].file.release(s);
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
