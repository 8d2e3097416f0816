//! Finding a DeepSpeed ZeRO checkpoint's files: the root's `latest` names the tag folder
//! (`global_stepN/`), which holds one model-states file per tensor-parallel rank (stage 3: per
//! data-parallel rank too) and one optimizer-states file per (data-parallel, tensor-parallel)
//! rank. Nothing here is sized by a number read from a name: the grid is checked against the
//! files present.

use std::path::{Path, PathBuf};

use crate::checkpoint::found::{MAX_RANKS, MAX_TRACKER_BYTES, TRACKER};
use crate::error::{Error, Result};

/// DeepSpeed's tracker file in a checkpoint root.
pub const LATEST: &str = "latest";

/// A tag folder's ZeRO files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Files {
    /// The tag folder.
    pub dir: PathBuf,
    /// Shown before file names (`global_step2/` when the input is the root, else empty).
    pub prefix: String,
    /// The tag `latest` named, or the folder's name.
    pub tag: String,
    /// Per tensor-parallel rank: the model-states file that holds `param_shapes`.
    pub model: Vec<PathBuf>,
    /// `optim[tp][dp]`: every optimizer-states file, a complete grid.
    pub optim: Vec<Vec<PathBuf>>,
    /// Whether the optimizer files carry the `bf16_` prefix.
    pub bf16: bool,
}

impl Files {
    pub fn tp(&self) -> usize {
        self.optim.len()
    }

    pub fn dp(&self) -> usize {
        self.optim.first().map_or(0, Vec::len)
    }

    /// A path as shown to the user: relative to the input.
    pub fn show(&self, path: &Path) -> String {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        format!("{}{name}", self.prefix)
    }
}

/// What the input is, as far as DeepSpeed's tracker goes.
pub enum Found {
    /// A ZeRO checkpoint.
    Zero(Files),
    /// `latest` named a tag folder that holds no ZeRO optimizer files (a DeepSpeed checkpoint
    /// without ZeRO): read the folder as any other.
    Folder(PathBuf),
}

/// The ZeRO checkpoint at `input` (the root holding `latest`, or a tag folder), or `None`.
pub fn find(input: &Path) -> Result<Option<Found>> {
    if !input.is_dir() {
        return Ok(None);
    }
    let latest = input.join(LATEST);
    // Megatron-DeepSpeed roots may hold Megatron's tracker too: a tag folder without ZeRO files
    // is then the tracker's business.
    let tracker = exists(&input.join(TRACKER))?;
    let (dir, prefix, tag) = if exists(&latest)? {
        let tag = match read_latest(&latest) {
            Ok(tag) => tag,
            Err(_) if tracker => return Ok(None),
            Err(e) => return Err(e),
        };
        let dir = input.join(&tag);
        if !dir.is_dir() && tracker {
            return Ok(None);
        }
        if !dir.is_dir() {
            return Err(Error::layout(
                &dir,
                format!("{LATEST} names the tag `{tag}`, but this folder does not exist"),
            ));
        }
        let prefix = format!("{tag}/");
        (dir, prefix, tag)
    } else {
        let tag = input
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        (input.to_path_buf(), String::new(), tag)
    };
    let listed = list(&dir)?;
    if listed.optim.is_empty() {
        return Ok(if prefix.is_empty() || tracker {
            None
        } else {
            Some(Found::Folder(dir))
        });
    }
    grid(dir, prefix, tag, listed).map(|f| Some(Found::Zero(f)))
}

fn exists(p: &Path) -> Result<bool> {
    match std::fs::symlink_metadata(p) {
        Ok(_) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(Error::io(p, "cannot read", e)),
    }
}

/// The tag `latest` names: one plain folder name, never a path (`../x`, `/abs`, `a/b`).
fn read_latest(latest: &Path) -> Result<String> {
    let bytes = crate::files::read_capped(latest, MAX_TRACKER_BYTES)?;
    let text = String::from_utf8(bytes)
        .map_err(|_| Error::layout(latest, "is not UTF-8 text; expected a tag name"))?;
    let tag = text.trim();
    let plain = !tag.is_empty()
        && tag != "."
        && tag != ".."
        && !tag.contains(['/', '\\', '\0'])
        && !tag.chars().any(char::is_control);
    if !plain {
        return Err(Error::layout(
            latest,
            format!(
                "names {:?}; expected the name of a tag folder beside it (global_stepN), never a \
                 path",
                tag.chars().take(60).collect::<String>()
            ),
        ));
    }
    Ok(tag.to_string())
}

/// A ZeRO file name's kind and ranks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// `mp_rank_TT_model_states.pt` (stages 1 and 2).
    Model { tp: usize },
    /// `zero_pp_rank_R_mp_rank_TT_model_states.pt` (stage 3).
    Model3 { dp: usize, tp: usize },
    /// `[bf16_]zero_pp_rank_R_mp_rank_TT_optim_states.pt`.
    Optim { dp: usize, tp: usize, bf16: bool },
}

fn number(s: &str) -> Option<(usize, &str)> {
    let end = s.bytes().take_while(u8::is_ascii_digit).count();
    // A number too long for usize can never complete a grid: the grid check names the gap.
    (end > 0).then(|| (s[..end].parse().unwrap_or(usize::MAX), &s[end..]))
}

fn parse(name: &str) -> Option<Kind> {
    if let Some(rest) = name.strip_prefix("mp_rank_") {
        let (tp, tail) = number(rest)?;
        return (tail == "_model_states.pt").then_some(Kind::Model { tp });
    }
    let (bf16, rest) = match name.strip_prefix("bf16_") {
        Some(r) => (true, r),
        None => (false, name),
    };
    let (dp, tail) = number(rest.strip_prefix("zero_pp_rank_")?)?;
    let (tp, tail) = number(tail.strip_prefix("_mp_rank_")?)?;
    match tail {
        "_optim_states.pt" => Some(Kind::Optim { dp, tp, bf16 }),
        "_model_states.pt" if !bf16 => Some(Kind::Model3 { dp, tp }),
        _ => None,
    }
}

#[derive(Default)]
struct Listed {
    model: Vec<(usize, PathBuf)>,
    model3: Vec<(usize, usize, PathBuf)>,
    optim: Vec<(usize, usize, bool, PathBuf)>,
}

fn list(dir: &Path) -> Result<Listed> {
    let mut l = Listed::default();
    let entries = std::fs::read_dir(dir).map_err(|e| Error::io(dir, "cannot list", e))?;
    for e in entries {
        let e = e.map_err(|e| Error::io(dir, "cannot list", e))?;
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(kind) = parse(&name) else { continue };
        let path = e.path();
        match kind {
            Kind::Model { tp } => l.model.push((tp, path)),
            Kind::Model3 { dp, tp } => l.model3.push((dp, tp, path)),
            Kind::Optim { dp, tp, bf16 } => l.optim.push((tp, dp, bf16, path)),
        }
        let count = l.model.len() + l.model3.len() + l.optim.len();
        if count > 2 * MAX_RANKS {
            return Err(Error::layout(
                dir,
                format!("more than {} ZeRO rank files", 2 * MAX_RANKS),
            ));
        }
    }
    Ok(l)
}

/// Check the optimizer files form a complete tp × dp grid with one naming, and find each tp
/// rank's model states.
fn grid(dir: PathBuf, prefix: String, tag: String, mut l: Listed) -> Result<Files> {
    l.optim.sort();
    let bf16 = l.optim[0].2;
    if let Some(o) = l.optim.iter().find(|o| o.2 != bf16) {
        return Err(Error::layout(
            &o.3,
            "mixes bf16_-prefixed optimizer files with unprefixed ones; one run writes one form",
        ));
    }
    let tp = l
        .optim
        .iter()
        .map(|o| o.0)
        .max()
        .unwrap_or(0)
        .saturating_add(1);
    let dp = l
        .optim
        .iter()
        .map(|o| o.1)
        .max()
        .unwrap_or(0)
        .saturating_add(1);
    let name = |t: usize, d: usize| {
        let b = if bf16 { "bf16_" } else { "" };
        format!("{b}zero_pp_rank_{d}_mp_rank_{t:02}_optim_states.pt")
    };
    for (i, o) in l.optim.iter().enumerate() {
        let want = (i / dp, i % dp);
        if (o.0, o.1) != want {
            return Err(missing(
                &dir,
                &prefix,
                &name(want.0, want.1),
                (o.0, o.1) < want,
            ));
        }
    }
    if tp.checked_mul(dp) != Some(l.optim.len()) {
        let i = l.optim.len();
        return Err(missing(&dir, &prefix, &name(i / dp, i % dp), false));
    }
    let mut optim = vec![Vec::with_capacity(dp); tp];
    for (t, _, _, p) in l.optim {
        require_file(&p)?;
        optim[t].push(p);
    }
    let model = (0..tp)
        .map(|t| model_file(&dir, &prefix, &l.model, &l.model3, t))
        .collect::<Result<Vec<_>>>()?;
    Ok(Files {
        dir,
        prefix,
        tag,
        model,
        optim,
        bf16,
    })
}

fn missing(dir: &Path, prefix: &str, want: &str, duplicate: bool) -> Error {
    let what = if duplicate {
        "two optimizer files claim one rank"
    } else {
        "the optimizer-state grid is incomplete"
    };
    Error::layout(dir, format!("{what}: expected {prefix}{want}"))
}

/// Rank `t`'s model states: `mp_rank_TT_model_states.pt`, else (stage 3)
/// `zero_pp_rank_0_mp_rank_TT_model_states.pt`.
fn model_file(
    dir: &Path,
    prefix: &str,
    model: &[(usize, PathBuf)],
    model3: &[(usize, usize, PathBuf)],
    t: usize,
) -> Result<PathBuf> {
    let found = model
        .iter()
        .find(|m| m.0 == t)
        .map(|m| &m.1)
        .or_else(|| model3.iter().find(|m| (m.0, m.1) == (0, t)).map(|m| &m.2));
    let Some(p) = found else {
        return Err(Error::layout(
            dir,
            format!(
                "no model states for tensor-parallel rank {t}: expected {prefix}mp_rank_{t:02}_\
                 model_states.pt (stages 1, 2) or {prefix}zero_pp_rank_0_mp_rank_{t:02}_model_\
                 states.pt (stage 3)"
            ),
        ));
    };
    require_file(p)?;
    Ok(p.clone())
}

fn require_file(p: &Path) -> Result<()> {
    let meta = std::fs::metadata(p).map_err(|e| Error::io(p, "cannot read", e))?;
    if meta.is_file() {
        return Ok(());
    }
    Err(Error::layout(
        p,
        "is not a regular file; ZeRO rank files must be torch checkpoints",
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert_eq!(
            parse("bf16_zero_pp_rank_3_mp_rank_01_optim_states.pt"),
            Some(Kind::Optim {
                dp: 3,
                tp: 1,
                bf16: true
            })
        );
        assert_eq!(
            parse("zero_pp_rank_0_mp_rank_00_model_states.pt"),
            Some(Kind::Model3 { dp: 0, tp: 0 })
        );
        assert_eq!(
            parse("mp_rank_02_model_states.pt"),
            Some(Kind::Model { tp: 2 })
        );
        assert_eq!(
            parse("bf16_zero_pp_rank_0_mp_rank_00_model_states.pt"),
            None
        );
        assert_eq!(parse("zero_pp_rank_x_mp_rank_00_optim_states.pt"), None);
    }
}
