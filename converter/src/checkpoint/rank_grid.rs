//! Rank grids: an iteration folder's rank files, `mp_rank_TT_model_states.pt` (DeepSpeed),
//! `mp_rank_TT/model_optim_rng.pt` or `model_rng.pt` (Megatron), `mp_rank_TT_PPP/…` (Megatron
//! with pipeline stages), checked to form one complete tensor-parallel x pipeline grid.

use std::path::{Path, PathBuf};

use super::found::{no_checkpoint, present, require_regular, Layout, ShardPath, MAX_RANKS};
use crate::error::{Error, Result};

/// Rank-folder lists longer than this are cut in messages (a refusal prints at most ~2 KB).
const SHOWN_RANKS: usize = 16;

/// How a rank file is named; one checkpoint uses one form.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Form {
    /// `mp_rank_TT_model_states.pt` (DeepSpeed, CPM-LM).
    DeepSpeed,
    /// `mp_rank_TT/model_optim_rng.pt` (Megatron, one pipeline stage).
    Megatron,
    /// `mp_rank_TT_PPP/model_optim_rng.pt` (Megatron with pipeline stages).
    Pipeline,
}

impl Form {
    fn describe(self) -> &'static str {
        match self {
            Form::DeepSpeed => "DeepSpeed rank files mp_rank_TT_model_states.pt",
            Form::Megatron => "Megatron rank folders mp_rank_TT/",
            Form::Pipeline => "Megatron pipeline rank folders mp_rank_TT_PPP/",
        }
    }

    /// The file this form names for (tp, pp), relative to the iteration folder.
    fn expected(self, tp: usize, pp: usize) -> String {
        match self {
            Form::DeepSpeed => format!("mp_rank_{tp:02}_model_states.pt"),
            Form::Megatron => format!("mp_rank_{tp:02}/model_optim_rng.pt"),
            Form::Pipeline => format!("mp_rank_{tp:02}_{pp:03}/model_optim_rng.pt"),
        }
    }
}

/// A rank-file name: `mp_rank_TT_model_states.pt`, `mp_rank_TT` or `mp_rank_TT_PPP`. A number too
/// long for `usize` reads as `usize::MAX`: it can never complete a grid, and the grid check
/// names the first rank missing.
fn parse_rank_name(name: &str) -> Option<(Form, usize, usize)> {
    let rest = name.strip_prefix("mp_rank_")?;
    let (tp, tail) = leading_number(rest)?;
    if tail == "_model_states.pt" {
        return Some((Form::DeepSpeed, tp, 0));
    }
    if tail.is_empty() {
        return Some((Form::Megatron, tp, 0));
    }
    let (pp, tail) = leading_number(tail.strip_prefix('_')?)?;
    tail.is_empty().then_some((Form::Pipeline, tp, pp))
}

fn leading_number(s: &str) -> Option<(usize, &str)> {
    let end = s.bytes().take_while(u8::is_ascii_digit).count();
    let digits = &s[..end];
    (!digits.is_empty()).then(|| (digits.parse().unwrap_or(usize::MAX), &s[end..]))
}

/// One rank file found.
struct Found {
    form: Form,
    shard: ShardPath,
    /// The folder entry's name, for messages.
    entry: String,
}

/// The complete rank grid of `dir`, or `None` when no entry is named like a rank file.
/// `prefix` is prepended to every display name (the iteration folder, relative to the input).
pub(super) fn rank_grid(dir: &Path, prefix: &str) -> Result<Option<Layout>> {
    let entries = std::fs::read_dir(dir).map_err(|e| Error::io(dir, "cannot list", e))?;
    let mut found: Vec<Found> = Vec::new();
    for e in entries {
        let e = e.map_err(|e| Error::io(dir, "cannot list", e))?;
        let name = e.file_name().to_string_lossy().into_owned();
        let Some((form, tp, pp)) = parse_rank_name(&name) else {
            continue;
        };
        let Some((path, shown)) = rank_file(&e.path(), &name, form)? else {
            continue;
        };
        let shard = ShardPath {
            path,
            display: format!("{prefix}{shown}"),
            tp,
            pp,
        };
        if let Some(prev) = found.iter().find(|f| (f.shard.tp, f.shard.pp) == (tp, pp)) {
            return Err(Error::layout(
                dir,
                format!(
                    "two files claim model-parallel rank {}: {} and {}",
                    rank_words(form, tp, pp),
                    prev.shard.display,
                    shard.display
                ),
            ));
        }
        found.push(Found {
            form,
            shard,
            entry: name,
        });
        if found.len() > MAX_RANKS {
            return Err(Error::layout(
                dir,
                format!("more than {MAX_RANKS} rank files"),
            ));
        }
    }
    if found.is_empty() {
        return Ok(None);
    }
    let form = one_form(dir, &found)?;
    found.sort_by(|a, b| {
        (a.shard.pp, a.shard.tp, &a.shard.path).cmp(&(b.shard.pp, b.shard.tp, &b.shard.path))
    });
    let (tp, pp) = complete_grid(dir, form, &found)?;
    Ok(Some(Layout {
        shards: found.into_iter().map(|f| f.shard).collect(),
        tp,
        pp,
        iteration: None,
        config: None,
    }))
}

/// `0` for a grid without pipeline stages, `(tp 1, pp 0)` with them.
fn rank_words(form: Form, tp: usize, pp: usize) -> String {
    match form {
        Form::Pipeline => format!("(tp {tp}, pp {pp})"),
        _ => tp.to_string(),
    }
}

/// The file a rank entry stands for (`None`: a folder without a model file, such as the
/// distributed optimizer's `mp_rank_TT_PPP_DDD`-like `optim.pt` folders), checked to be a
/// regular file, and its name relative to the iteration folder.
fn rank_file(path: &Path, name: &str, form: Form) -> Result<Option<(PathBuf, String)>> {
    if form == Form::DeepSpeed {
        require_regular(path, "rank files must be torch checkpoints")?;
        return Ok(Some((path.to_path_buf(), name.to_string())));
    }
    if !path.is_dir() {
        return Ok(None);
    }
    // Megatron writes `model_rng.pt` instead with `--use-distributed-optimizer`.
    let mut files = Vec::new();
    for f in ["model_optim_rng.pt", "model_rng.pt"] {
        if present(&path.join(f))? {
            files.push(f);
        }
    }
    match files.as_slice() {
        [] => Ok(None),
        [f] => {
            let p = path.join(f);
            require_regular(&p, "rank files must be torch checkpoints")?;
            Ok(Some((p, format!("{name}/{f}"))))
        }
        [a, b, ..] => Err(Error::layout(
            path,
            format!("holds both {a} and {b}; Megatron writes one of them per rank"),
        )),
    }
}

/// The one naming form all rank files use.
fn one_form(dir: &Path, found: &[Found]) -> Result<Form> {
    let Some(first) = found.first() else {
        return Err(no_checkpoint(dir));
    };
    if let Some(other) = found.iter().find(|f| f.form != first.form) {
        return Err(Error::layout(
            dir,
            format!(
                "mixes {} ({}) with {} ({}); a checkpoint uses one form (Megatron adds the \
                 _PPP pipeline stage to every folder when pipeline-parallel size > 1)",
                first.form.describe(),
                first.entry,
                other.form.describe(),
                other.entry
            ),
        ));
    }
    Ok(first.form)
}

/// Check that `found` (sorted by (pp, tp), without duplicates) is every (tp, pp) of a
/// `T × P` grid and return `(T, P)`. The check walks the files present, never the claimed
/// sizes: `mp_rank_99999999` costs one comparison, not a grid of that size.
fn complete_grid(dir: &Path, form: Form, found: &[Found]) -> Result<(usize, usize)> {
    let t = found.iter().map(|f| f.shard.tp).max().unwrap_or(0);
    let p = found.iter().map(|f| f.shard.pp).max().unwrap_or(0);
    let (t, p) = (t.saturating_add(1), p.saturating_add(1));
    // Expected in sorted order: (pp 0, tp 0), (pp 0, tp 1), … The first position where the
    // sorted files differ from that is the first rank missing.
    let mut missing = None;
    for (i, f) in found.iter().enumerate() {
        let want = (i / t, i % t);
        if (f.shard.pp, f.shard.tp) != want {
            missing = Some(want);
            break;
        }
    }
    let complete = t.checked_mul(p) == Some(found.len());
    let Some((pp, tp)) = missing.or((!complete).then(|| (found.len() / t, found.len() % t))) else {
        return Ok((t, p));
    };
    let shown: Vec<String> = found
        .iter()
        .take(SHOWN_RANKS)
        .map(|f| rank_words(form, f.shard.tp, f.shard.pp))
        .collect();
    let more = found.len().saturating_sub(SHOWN_RANKS);
    let more = if more > 0 {
        format!(", … ({} in all)", found.len())
    } else {
        String::new()
    };
    let what = match form {
        Form::Pipeline => format!("rank (tp {tp}, pp {pp}) is missing (found ranks"),
        _ => format!("model-parallel rank {tp} is missing (found ranks"),
    };
    Err(Error::layout(
        dir,
        format!(
            "{what} {}{more}): expected {}",
            shown.join(", "),
            form.expected(tp, pp)
        ),
    ))
}
