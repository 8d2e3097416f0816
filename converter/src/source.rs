//! An opened checkpoint: its files parsed (structure only), its family chosen, its weights
//! listed; and reading one output tensor's parts from it.

use std::borrow::Cow;
use std::ops::Range;
use std::path::{Path, PathBuf};

use crate::checkpoint::{self, Rank};
use crate::error::{Error, Result};
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
    let layout = checkpoint::discover(input)?;
    let mut ranks = layout
        .ranks
        .iter()
        .zip(layout.display)
        .enumerate()
        .map(|(tp, (path, display))| {
            Ok(Rank {
                file: TorchFile::open(path)?,
                display,
                tp,
                pp: 0,
                weights: Vec::new(),
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let config = read_config(input)?;
    let (mapping, family_from) = match family {
        Family::Named(name) => (Mapping::builtin(name)?, format!("--from {name}")),
        Family::File(p) => (Mapping::load(p)?, format!("--mapping {}", p.display())),
        Family::Detect => detect(&mut ranks)?,
    };
    for r in &mut ranks {
        r.weights = checkpoint::weights(&r.file, &mapping)?;
    }
    Ok(Source {
        mapping,
        ranks,
        config,
        family_from,
    })
}

/// The first built-in family whose mapping fits the files, or an error saying what was found.
fn detect(ranks: &mut [Rank]) -> Result<(Mapping, String)> {
    let mut tried = Vec::new();
    for name in Mapping::builtin_names() {
        let mapping = Mapping::builtin(name)?;
        let fits = ranks
            .iter_mut()
            .try_for_each(|r| {
                r.weights = checkpoint::weights(&r.file, &mapping)?;
                Ok(())
            })
            .and_then(|()| plan::fits(ranks, &mapping));
        match fits {
            Ok(()) => return Ok((mapping, "detected".into())),
            Err(e) => tried.push(format!("{name}: {e}")),
        }
    }
    let r0 = &ranks[0];
    let keys: Vec<String> = r0
        .file
        .root
        .dict_items()
        .unwrap_or_default()
        .iter()
        .take(12)
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

/// `config.json` beside a checkpoint directory (Hugging Face), if there is one.
fn read_config(input: &Path) -> Result<Option<serde_json::Value>> {
    use std::io::Read;
    let dir = if input.is_file() {
        input.parent().unwrap_or(Path::new("."))
    } else {
        input
    };
    let path = dir.join("config.json");
    match std::fs::metadata(&path) {
        Ok(m) if m.is_file() => {}
        _ => return Ok(None),
    }
    let f = std::fs::File::open(&path).map_err(|e| Error::io(&path, "cannot read", e))?;
    let mut text = String::new();
    f.take(MAX_CONFIG_BYTES + 1)
        .read_to_string(&mut text)
        .map_err(|e| Error::io(&path, "cannot read", e))?;
    if text.len() as u64 > MAX_CONFIG_BYTES {
        return Err(Error::format(
            &path,
            format!("is larger than {MAX_CONFIG_BYTES} bytes; not a model config"),
        ));
    }
    serde_json::from_str(&text)
        .map(Some)
        .map_err(|e| Error::format(&path, format!("not valid JSON: {e}")))
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
}
