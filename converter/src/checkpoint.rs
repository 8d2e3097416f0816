//! Finding a checkpoint's rank files and the weights inside them.
//!
//! Accepted inputs: a root holding `latest_checkpointed_iteration.txt` (an integer or
//! `release`), an iteration directory holding `mp_rank_XX_model_states.pt` (or Megatron's
//! `mp_rank_XX/model_optim_rng.pt`), or one `.pt` file (model-parallel size 1).

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::mapping::Mapping;
use crate::torch::{TensorRef, TorchFile, Value};

const TRACKER: &str = "latest_checkpointed_iteration.txt";
/// More ranks than any released model uses; bounds a directory listing from a hostile input.
const MAX_RANKS: usize = 512;

/// The rank files of one checkpoint, in rank order.
#[derive(Debug, Clone)]
pub struct Layout {
    /// Each rank's file.
    pub ranks: Vec<PathBuf>,
    /// Names recorded in the output's metadata: relative to the input, never absolute.
    pub display: Vec<String>,
}

/// Find the rank files for `input`.
pub fn discover(input: &Path) -> Result<Layout> {
    let meta = std::fs::metadata(input).map_err(|e| Error::io(input, "cannot read input", e))?;
    if meta.is_file() {
        let name = file_name(input);
        return Ok(Layout {
            ranks: vec![input.to_path_buf()],
            display: vec![name],
        });
    }
    let tracker = input.join(TRACKER);
    if tracker.is_file() {
        let text = read_tracker(&tracker)?;
        let it = text.trim();
        let valid = it == "release"
            || (!it.is_empty() && it.len() <= 20 && it.bytes().all(|b| b.is_ascii_digit()));
        if !valid {
            return Err(Error::layout(
                &tracker,
                format!(
                    "expected an iteration number or `release`, found {:?}",
                    truncate(it, 40)
                ),
            ));
        }
        let dir = input.join(it);
        if !dir.is_dir() {
            return Err(Error::layout(
                &dir,
                format!("{TRACKER} names iteration `{it}`, but this directory does not exist"),
            ));
        }
        let mut l = rank_files(&dir)?;
        l.display = l.display.iter().map(|d| format!("{it}/{d}")).collect();
        return Ok(l);
    }
    rank_files(input)
}

/// The tracker holds one short line; read at most a little more than that, so a huge or
/// endless file (a device, a FIFO) costs nothing.
fn read_tracker(tracker: &Path) -> Result<String> {
    use std::io::Read;
    const MAX: u64 = 256;
    let f = std::fs::File::open(tracker).map_err(|e| Error::io(tracker, "cannot read", e))?;
    let mut buf = Vec::new();
    f.take(MAX + 1)
        .read_to_end(&mut buf)
        .map_err(|e| Error::io(tracker, "cannot read", e))?;
    if buf.len() as u64 > MAX {
        return Err(Error::layout(
            tracker,
            format!("is longer than {MAX} bytes; expected an iteration number or `release`"),
        ));
    }
    String::from_utf8(buf).map_err(|_| {
        Error::layout(
            tracker,
            "is not UTF-8 text; expected an iteration number or `release`",
        )
    })
}

fn file_name(p: &Path) -> String {
    p.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| p.to_string_lossy().into_owned())
}

fn truncate(s: &str, n: usize) -> String {
    s.chars().take(n).collect()
}

/// Parse `mp_rank_XX_model_states.pt` or the folder `mp_rank_XX`.
fn rank_of(name: &str) -> Option<usize> {
    let rest = name.strip_prefix("mp_rank_")?;
    let digits: String = rest.chars().take_while(|c| c.is_ascii_digit()).collect();
    let tail = &rest[digits.len()..];
    if digits.is_empty() || !(tail == "_model_states.pt" || tail.is_empty()) {
        return None;
    }
    digits.parse().ok()
}

fn rank_files(dir: &Path) -> Result<Layout> {
    let entries = std::fs::read_dir(dir).map_err(|e| Error::io(dir, "cannot list", e))?;
    let mut found: Vec<(usize, PathBuf, String)> = Vec::new();
    for e in entries {
        let e = e.map_err(|e| Error::io(dir, "cannot list", e))?;
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(rank) = rank_of(&name) else { continue };
        let path = e.path();
        let (path, shown) = if path.is_dir() {
            // Megatron-LM's own layout: mp_rank_XX/model_optim_rng.pt
            let f = path.join("model_optim_rng.pt");
            if !f.is_file() {
                continue;
            }
            (f, format!("{name}/model_optim_rng.pt"))
        } else {
            (path, name)
        };
        // Opening a FIFO or a device would block or read forever.
        if !path.is_file() {
            return Err(Error::layout(
                &path,
                "is not a regular file; rank files must be torch checkpoints",
            ));
        }
        if let Some(prev) = found.iter().find(|f| f.0 == rank) {
            return Err(Error::layout(
                dir,
                format!(
                    "two files claim model-parallel rank {rank}: {} and {}",
                    prev.2, shown
                ),
            ));
        }
        found.push((rank, path, shown));
        if found.len() > MAX_RANKS {
            return Err(Error::layout(
                dir,
                format!("more than {MAX_RANKS} rank files"),
            ));
        }
    }
    if found.is_empty() {
        return Err(Error::layout(
            dir,
            format!(
                "no checkpoint here: expected {TRACKER}, or files named mp_rank_00_model_states.pt, \
                 mp_rank_01_model_states.pt, …, or pass a single .pt file"
            ),
        ));
    }
    found.sort_by_key(|f| f.0);
    for (i, f) in found.iter().enumerate() {
        if f.0 != i {
            return Err(Error::layout(
                dir,
                format!(
                    "model-parallel rank {i} is missing (found ranks {}): expected mp_rank_{i:02}_model_states.pt",
                    found.iter().map(|f| f.0.to_string()).collect::<Vec<_>>().join(", ")
                ),
            ));
        }
    }
    Ok(Layout {
        ranks: found.iter().map(|f| f.1.clone()).collect(),
        display: found.into_iter().map(|f| f.2).collect(),
    })
}

/// One opened file of a checkpoint: its place in the tensor-parallel × pipeline grid and the
/// weights found in it, in file order, names with the family's prefixes stripped.
pub struct Rank {
    pub file: TorchFile,
    pub display: String,
    pub tp: usize,
    pub pp: usize,
    pub weights: Vec<(String, TensorRef)>,
}

impl Rank {
    pub fn open(
        path: &Path,
        display: String,
        tp: usize,
        pp: usize,
        mapping: &Mapping,
    ) -> Result<Rank> {
        let file = TorchFile::open(path)?;
        let weights = weights(&file, mapping)?;
        Ok(Rank {
            file,
            display,
            tp,
            pp,
            weights,
        })
    }

    /// An integer field of the top-level dict, if present.
    pub fn top_int(&self, key: &str) -> Option<i64> {
        self.file.root.get(key).and_then(|v| v.as_int())
    }
}

/// Nested dicts deeper than this are not searched for weights (Megatron nests four levels).
const MAX_WEIGHT_DEPTH: usize = 8;

/// The weights: under the first of the mapping's `weights_keys` present (a dotted path; `""`
/// or none present: the top level itself), nested dicts flattened with `.`, non-tensor values
/// skipped.
pub fn weights(file: &TorchFile, mapping: &Mapping) -> Result<Vec<(String, TensorRef)>> {
    if !matches!(file.root, Value::Dict(_)) {
        return Err(Error::format(
            &file.path,
            format!(
                "top-level object is {}, expected a dict",
                file.root.describe()
            ),
        ));
    }
    let (dict, keyname) = mapping
        .variant
        .weights_keys
        .iter()
        .find_map(|k| dotted(&file.root, k).map(|v| (v, k.as_str())))
        .unwrap_or((file.root.clone(), ""));
    let mut w = Walk {
        file,
        keyname: if keyname.is_empty() {
            "<top level>"
        } else {
            keyname
        },
        strip: &mapping.variant.strip_prefixes,
        // Each name is copied out of the tree. Real names are distinct strings stored in the
        // file, so together they are shorter than it; one memoized name reused is not.
        name_budget: file.file_len(),
        out: Vec::new(),
    };
    w.dict(&dict, "", 0)?;
    if w.out.is_empty() {
        return Err(Error::format(
            &file.path,
            format!(
                "no tensors found: expected the weights under one of {:?} or at the top level",
                mapping.variant.weights_keys
            ),
        ));
    }
    Ok(w.out)
}

/// The value at a dotted path of dict keys (`model.language_model`); `""` is `v` itself.
fn dotted(v: &Value, path: &str) -> Option<Value> {
    if path.is_empty() {
        return Some(v.clone());
    }
    let mut cur = v.clone();
    for key in path.split('.') {
        cur = cur.get(key)?;
    }
    Some(cur)
}

struct Walk<'a> {
    file: &'a TorchFile,
    keyname: &'a str,
    strip: &'a [String],
    name_budget: u64,
    out: Vec<(String, TensorRef)>,
}

impl Walk<'_> {
    fn dict(&mut self, dict: &Value, prefix: &str, depth: usize) -> Result<()> {
        let items = dict.dict_items().ok_or_else(|| {
            Error::format(
                &self.file.path,
                format!(
                    "`{}` is {}, expected a dict of tensors",
                    self.keyname,
                    dict.describe()
                ),
            )
        })?;
        for (k, v) in items {
            let key = k.as_str().ok_or_else(|| {
                Error::format(
                    &self.file.path,
                    format!(
                        "a key of `{}` is {}, not a string",
                        self.keyname,
                        k.describe()
                    ),
                )
            })?;
            match &v {
                Value::Tensor(t) => {
                    let name = self.name(prefix, key)?;
                    self.out.push((name, TensorRef::clone(t)));
                }
                Value::Dict(_) if depth < MAX_WEIGHT_DEPTH => {
                    let name = self.name(prefix, key)?;
                    self.dict(&v, &format!("{name}."), depth + 1)?;
                }
                // Non-tensor entries (`_metadata`, `_extra_state` bytes, None) carry no weights.
                _ => {}
            }
        }
        Ok(())
    }

    /// `prefix + key` with the family's prefixes stripped, charged to the name budget.
    fn name(&mut self, prefix: &str, key: &str) -> Result<String> {
        let len = (prefix.len() + key.len()) as u64;
        self.name_budget = self.name_budget.checked_sub(len).ok_or_else(|| {
            Error::format(
                &self.file.path,
                format!(
                    "the tensor names of `{}` add up to more bytes than the file holds (one \
                     memoized name reused, e.g. `{}`)",
                    self.keyname,
                    crate::torch::value::shorten(key)
                ),
            )
        })?;
        let full = format!("{prefix}{key}");
        let stripped = self
            .strip
            .iter()
            .find_map(|p| full.strip_prefix(p.as_str()))
            .map(str::to_string);
        Ok(stripped.unwrap_or(full))
    }
}
