//! Finding every file of a checkpoint, whatever family's directory layout holds it.
//!
//! Accepted inputs, recognised by structure (file and folder names), never by a family name:
//!
//! * one file of any name: one shard;
//! * a root holding `latest_checkpointed_iteration.txt` (digits or `release`), which names the
//!   iteration folder: the digits as written (DeepSpeed/CPM: `80000/`), `iter_%07d` (Megatron:
//!   `iter_0000100/`) or `release/`;
//! * an iteration folder itself, holding a complete grid of rank files:
//!   `mp_rank_TT_model_states.pt` (DeepSpeed), `mp_rank_TT/model_optim_rng.pt` or
//!   `mp_rank_TT/model_rng.pt` (Megatron, one pipeline stage), `mp_rank_TT_PPP/model_optim_rng.pt`
//!   (Megatron with pipeline stages);
//! * a Hugging Face folder: `model.safetensors`, `model.safetensors.index.json`,
//!   `pytorch_model.bin` or `pytorch_model.bin.index.json` (safetensors preferred), with
//!   `config.json` beside it;
//! * a folder holding nanoGPT's `ckpt.pt`;
//! * a torch Distributed Checkpoint folder (`.metadata` and `*.distcp`), as itself, as
//!   megatron-core's iteration folder (found through the tracker too), or inside accelerate's
//!   output folder (`pytorch_model_fsdp_0/`, `config.json` beside it): one rank of global
//!   tensors.
//!
//! Nothing here is sized by a number read from a name: rank numbers are checked against the files
//! present, and every count is capped.

use std::io::Read;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::files::open_regular;

mod dcp;
mod hugging_face;
pub(crate) use hugging_face::config_beside;
use hugging_face::hugging_face;

pub const TRACKER: &str = "latest_checkpointed_iteration.txt";
/// More rank files than any released model uses; bounds a directory listing from a hostile input.
pub const MAX_RANKS: usize = 512;
/// The tracker holds one short line.
pub const MAX_TRACKER_BYTES: u64 = 256;
/// A sharded index: about 100 bytes per tensor, so 16 MiB is ~160,000 tensors.
pub const MAX_INDEX_BYTES: u64 = 16 << 20;
/// The most shard files an index may name; real models use a few hundred at most.
pub const MAX_SHARDS: usize = 16_384;
/// Rank-folder lists longer than this are cut in messages (a refusal prints at most ~2 KB).
const SHOWN_RANKS: usize = 16;

/// Every file of one checkpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    /// Sorted by (pp, tp, path). A rank grid has exactly one shard per (tp, pp); a Hugging Face
    /// sharded save splits one state dict (tp 0, pp 0) across several files.
    pub shards: Vec<ShardPath>,
    /// Tensor-parallel ranks (1 unless the input is a rank grid).
    pub tp: usize,
    /// Pipeline stages (1 unless the input is a Megatron `mp_rank_TT_PPP` grid).
    pub pp: usize,
    /// The iteration the tracker or the folder's name gives: digits or `release`.
    pub iteration: Option<String>,
    /// `config.json` beside a Hugging Face model's files.
    pub config: Option<PathBuf>,
}

/// One file of a checkpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardPath {
    pub path: PathBuf,
    /// The path relative to the input (never absolute: it is recorded in the output's metadata).
    pub display: String,
    pub tp: usize,
    pub pp: usize,
}

/// Find every file of the checkpoint at `input`.
pub fn discover(input: &Path) -> Result<Layout> {
    let meta = std::fs::metadata(input).map_err(|e| Error::io(input, "cannot read input", e))?;
    if !meta.is_dir() {
        check_regular(
            input,
            &meta,
            "pass a checkpoint file or the folder holding one",
        )?;
        let display = file_name(input);
        return Ok(single(input.to_path_buf(), display, None));
    }
    let tracker = input.join(TRACKER);
    if present(&tracker)? {
        return from_tracker(input, &tracker);
    }
    if let Some(l) = hugging_face(input)? {
        return Ok(l);
    }
    let name = input.file_name().map(|n| n.to_string_lossy().into_owned());
    let iteration = name.as_deref().and_then(iteration_of_folder);
    if let Some(mut l) = dcp::folder(input, "")? {
        l.iteration = iteration;
        l.config = match config_beside(input)? {
            Some(c) => Some(c),
            None => input.parent().map(config_beside).transpose()?.flatten(),
        };
        return Ok(l);
    }
    if let Some(l) = dcp::accelerate(input)? {
        return Ok(l);
    }
    match rank_grid(input, "")? {
        Some(mut l) => {
            l.iteration = iteration;
            Ok(l)
        }
        None => nanogpt(input),
    }
}

/// One shard at tp 0, pp 0.
fn single(path: PathBuf, display: String, config: Option<PathBuf>) -> Layout {
    Layout {
        shards: vec![ShardPath {
            path,
            display,
            tp: 0,
            pp: 0,
        }],
        tp: 1,
        pp: 1,
        iteration: None,
        config,
    }
}

/// The iteration folder the tracker names, and its rank grid.
fn from_tracker(input: &Path, tracker: &Path) -> Result<Layout> {
    let text = read_tracker(tracker)?;
    let it = text.trim();
    let digits = !it.is_empty() && it.len() <= 20 && it.bytes().all(|b| b.is_ascii_digit());
    if !(it == "release" || digits) {
        return Err(Error::layout(
            tracker,
            format!(
                "expected an iteration number or `release`, found {:?}",
                truncate(it, 40)
            ),
        ));
    }
    // DeepSpeed names the folder by the digits as written, Megatron `iter_%07d`.
    let mut names = vec![it.to_string()];
    if let Some(n) = digits.then(|| it.parse::<u128>().ok()).flatten() {
        names.push(format!("iter_{n:07}"));
    }
    let found: Vec<&String> = names.iter().filter(|n| input.join(n).is_dir()).collect();
    let folder = match found.as_slice() {
        [one] => one.as_str(),
        [] => {
            return Err(Error::layout(
                input.join(it),
                format!(
                    "{TRACKER} names iteration `{it}`, but this directory does not exist{}",
                    names
                        .get(1)
                        .map(|m| format!(" (nor {m})"))
                        .unwrap_or_default()
                ),
            ))
        }
        [a, b, ..] => {
            return Err(Error::layout(
                input,
                format!(
                    "{TRACKER} names iteration `{it}`, and both {a}/ and {b}/ exist: which one?"
                ),
            ))
        }
    };
    let dir = input.join(folder);
    let prefix = format!("{folder}/");
    let grid = match dcp::folder(&dir, &prefix)? {
        Some(l) => Some(l),
        None => rank_grid(&dir, &prefix)?,
    };
    let mut l = grid.ok_or_else(|| no_checkpoint(&dir))?;
    l.iteration = Some(it.to_string());
    Ok(l)
}

/// `80000`, `iter_0000100` or `release` as an iteration; other folder names give none.
fn iteration_of_folder(name: &str) -> Option<String> {
    let digits = name.strip_prefix("iter_").unwrap_or(name);
    let all_digits = !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit());
    if name == "release" {
        return Some(name.to_string());
    }
    all_digits.then(|| {
        // Megatron pads to 7 digits; the tracker holds the number without the padding.
        let trimmed = digits.trim_start_matches('0');
        if trimmed.is_empty() { "0" } else { trimmed }.to_string()
    })
}

/// The tracker holds one short line; read at most a little more than that, so a huge or
/// endless file costs nothing.
fn read_tracker(tracker: &Path) -> Result<String> {
    let (f, _) = open_regular(tracker, "the tracker must be a text file")?;
    let mut buf = Vec::new();
    f.take(MAX_TRACKER_BYTES + 1)
        .read_to_end(&mut buf)
        .map_err(|e| Error::io(tracker, "cannot read", e))?;
    if buf.len() as u64 > MAX_TRACKER_BYTES {
        return Err(Error::layout(
            tracker,
            format!(
                "is longer than {MAX_TRACKER_BYTES} bytes; expected an iteration number or \
                 `release`"
            ),
        ));
    }
    String::from_utf8(buf).map_err(|_| {
        Error::layout(
            tracker,
            "is not UTF-8 text; expected an iteration number or `release`",
        )
    })
}

fn no_checkpoint(dir: &Path) -> Error {
    Error::layout(
        dir,
        format!(
            "no checkpoint here: expected {TRACKER}, or files named mp_rank_00_model_states.pt, \
             mp_rank_01_model_states.pt, … (or folders mp_rank_00/model_optim_rng.pt, \
             mp_rank_00_000/model_optim_rng.pt, …), or model.safetensors, \
             model.safetensors.index.json, pytorch_model.bin, pytorch_model.bin.index.json or \
             ckpt.pt, or pass a single checkpoint file"
        ),
    )
}

/// nanoGPT's `out_dir`: `ckpt.pt` alone.
fn nanogpt(dir: &Path) -> Result<Layout> {
    let ckpt = dir.join("ckpt.pt");
    if !present(&ckpt)? {
        return Err(no_checkpoint(dir));
    }
    require_regular(&ckpt, "nanoGPT's ckpt.pt must be a torch checkpoint")?;
    Ok(single(ckpt, "ckpt.pt".into(), None))
}

// ---------------------------------------------------------------------------------------------
// Rank grids

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
fn rank_grid(dir: &Path, prefix: &str) -> Result<Option<Layout>> {
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

// ---------------------------------------------------------------------------------------------
// Files

/// Whether anything exists at `path` (a dangling symlink, a FIFO or a device included), so a
/// file that is there but unusable is an error rather than taken as absent.
fn present(path: &Path) -> Result<bool> {
    cpm_files::exists(path).map_err(|e| crate::files::from_files(e, ""))
}

/// Refuse anything but a regular file (after following symlinks): opening a FIFO or a device
/// would block or read forever.
fn require_regular(path: &Path, why: &str) -> Result<()> {
    let meta = std::fs::metadata(path).map_err(|e| Error::io(path, "cannot read", e))?;
    check_regular(path, &meta, why)
}

fn check_regular(path: &Path, meta: &std::fs::Metadata, why: &str) -> Result<()> {
    if meta.is_file() {
        return Ok(());
    }
    let kind = cpm_files::kind_of(&meta.file_type());
    Err(Error::layout(
        path,
        format!("is {kind}, not a regular file; {why}"),
    ))
}

/// What a JSON value is, for messages (the value itself may be megabytes).
fn json_kind(v: &serde_json::Value) -> &'static str {
    match v {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}

fn file_name(p: &Path) -> String {
    p.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| p.to_string_lossy().into_owned())
}

fn truncate(s: &str, n: usize) -> String {
    s.chars().take(n).collect()
}
