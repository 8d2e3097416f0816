//! The model's description, read off the checkpoint: sizes from the tensors' shapes, the head
//! count and the activation from training arguments, the query/key/value layout from the
//! checkpoint's version, the recorded tensor-parallel size.

use std::collections::BTreeMap;
use std::path::PathBuf;

use cpm_torch::Value;
use serde::Serialize;

use super::Entry;
use crate::checkpoint::weights::Rank;
use crate::error::{Error, Result};
use crate::mapping::{Dim, Mapping, Split};

/// Where the head count came from, for the summary and `--dry-run`.
#[derive(Debug, Clone, Serialize)]
pub struct Heads {
    /// Attention heads.
    pub count: u64,
    /// Where the count came from, for the user (`--heads`, a recorded argument, a released size).
    pub source: String,
}

/// The MLP's activation (`activation_function` in config.json) and why.
#[derive(Debug, Clone, Serialize)]
pub struct Activation {
    /// Hugging Face's name (`gelu_new`, `gelu`, `relu`, ...).
    pub name: String,
    /// Why that one, for the user (a recorded flag, the family's default).
    pub source: String,
}

/// The model sizes (`hidden`, `vocab`, ...), each with the tensor that defined it.
pub struct Sizes {
    sizes: BTreeMap<String, (u64, String)>,
    mapping: String,
}

impl Sizes {
    pub fn get(&self, name: &str) -> Result<u64> {
        self.sizes
            .get(name)
            .map(|s| s.0)
            .ok_or_else(|| Error::Mapping {
                path: PathBuf::from(format!("mappings/{}.toml", self.mapping)),
                msg: format!(
                    "no rule's shape defines the model size `{name}`, which config.json needs"
                ),
            })
    }
}

/// Read the model sizes off the tensors in output order: the first tensor to use a size defines
/// it, every later one must agree. A checkpoint whose tensors do not form one model (a
/// transposed weight, a wrong width) stops here, before any data is read. Synthesized tensors
/// get their shapes from the sizes.
pub fn sizes(entries: &mut [Entry], rank0: &str, mapping: &Mapping) -> Result<Sizes> {
    let mut sizes: BTreeMap<String, (u64, String)> = BTreeMap::new();
    for e in entries.iter().filter(|e| !e.zeros) {
        let fail = |why: String| {
            Error::merge(format!(
                "tensor `{}` ({rank0}, merged into `{}`) has shape {:?}, expected [{}]: {why}",
                e.source,
                e.target,
                e.shape,
                e.dims
                    .iter()
                    .map(Dim::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
        };
        if e.dims.len() != e.shape.len() {
            return Err(fail(format!(
                "{} dimensions instead of {}",
                e.shape.len(),
                e.dims.len()
            )));
        }
        for (d, &actual) in e.dims.iter().zip(&e.shape) {
            match sizes.get(&d.size) {
                Some((v, from)) if d.factor.checked_mul(*v) != Some(actual) => {
                    return Err(fail(format!("`{}` is {v} (from `{from}`)", d.size)));
                }
                Some(_) => {}
                None if actual == 0 || actual % d.factor != 0 => {
                    return Err(fail(format!(
                        "{actual} is not a positive multiple of {}",
                        d.factor
                    )));
                }
                None => {
                    sizes.insert(d.size.clone(), (actual / d.factor, e.target.clone()));
                }
            }
        }
    }
    let sizes = Sizes {
        sizes,
        mapping: mapping.variant.name.clone(),
    };
    super::entry::fill_zero_shapes(entries, &|n| sizes.get(n))?;
    Ok(sizes)
}

/// A value at a dotted path in a file's top-level object (`args.num_attention_heads`).
fn at_path(root: &Value, path: &str) -> Option<Value> {
    let mut cur = root.clone();
    for key in path.split('.') {
        cur = cur.get(key)?;
    }
    Some(cur)
}

/// Where a recorded value is looked up: rank 0's top-level object, or (`config.json:KEY`) the
/// config file beside a Hugging Face checkpoint.
pub struct Recorded<'a> {
    pub root: &'a Value,
    pub file: &'a str,
    pub config: Option<&'a serde_json::Value>,
}

impl Recorded<'_> {
    fn get(&self, path: &str) -> Option<Value> {
        match path.strip_prefix("config.json:") {
            Some(key) => match self.config?.get(key)? {
                serde_json::Value::Bool(b) => Some(Value::Bool(*b)),
                serde_json::Value::Number(n) => n
                    .as_i64()
                    .map(Value::Int)
                    .or_else(|| n.as_f64().map(Value::Float)),
                serde_json::Value::String(s) => Some(Value::Str(s.as_str().into())),
                _ => None,
            },
            None => at_path(self.root, path),
        }
    }

    /// Where a path was read, for messages.
    fn place(&self, path: &str) -> String {
        if path.starts_with("config.json:") {
            path.to_string()
        } else {
            format!("{path} in {}", self.file)
        }
    }
}

fn number(v: &Value) -> Option<f64> {
    match v {
        Value::Float(f) => Some(*f),
        other => other.as_int().map(|i| i as f64),
    }
}

/// The head count: `--heads`, else the first `heads_from` path the checkpoint records, else a
/// released size of the family; a flag contradicting the checkpoint is an error.
pub fn head_count(
    rec: &Recorded,
    mapping: &Mapping,
    flag: Option<u64>,
    hidden: u64,
    layers: u64,
) -> Result<Heads> {
    let recorded = mapping.variant.heads_from.iter().find_map(|p| {
        let n = rec.get(p)?.as_int()?;
        Some((n, rec.place(p)))
    });
    match (flag, recorded) {
        (Some(h), Some((a, src))) if a != h as i64 => Err(Error::usage(format!(
            "--heads {h} disagrees with the checkpoint, which records {a} ({src})"
        ))),
        (Some(h), _) => Ok(Heads {
            count: h,
            source: "--heads".into(),
        }),
        (None, Some((a, src))) => u64::try_from(a)
            .map(|count| Heads {
                count,
                source: src.clone(),
            })
            .map_err(|_| Error::usage(format!("the checkpoint records {a} heads ({src})"))),
        (None, None) => known_size(mapping, hidden, layers),
    }
}

fn known_size(mapping: &Mapping, hidden: u64, layers: u64) -> Result<Heads> {
    let name = &mapping.variant.name;
    mapping
        .known_sizes
        .iter()
        .find(|k| k.hidden == hidden && k.layers == layers)
        .map(|k| Heads {
            count: k.heads,
            source: format!("the released {name} size with hidden {hidden} and {layers} layers"),
        })
        .ok_or_else(|| {
            let looked = if mapping.variant.heads_from.is_empty() {
                "the checkpoint does not record it".to_string()
            } else {
                format!(
                    "the checkpoint has none of {}",
                    mapping.variant.heads_from.join(", ")
                )
            };
            Error::usage(format!(
                "cannot tell the number of attention heads: {looked}, and hidden {hidden} with \
                 {layers} layers is not a released {name} size; pass --heads N"
            ))
        })
}

pub fn check_heads(heads: &Heads, hidden: u64, tp: usize) -> Result<()> {
    if heads.count == 0 || hidden % heads.count != 0 {
        return Err(Error::usage(format!(
            "{} heads ({}) do not divide the hidden size {hidden}",
            heads.count, heads.source
        )));
    }
    if heads.count % tp as u64 != 0 {
        return Err(Error::usage(format!(
            "{} heads ({}) cannot be split over {tp} tensor-parallel ranks",
            heads.count, heads.source
        )));
    }
    Ok(())
}

/// The layout of `split = "qkv"` rules, from the checkpoint's version (absent: 0).
pub fn qkv_split(ranks: &[Rank], mapping: &Mapping) -> Result<Option<Split>> {
    let Some(table) = &mapping.variant.qkv else {
        return Ok(None);
    };
    let version = at_path(&ranks[0].file.root, &table.version_key)
        .and_then(|v| number(&v))
        .unwrap_or(0.0);
    table
        .layouts
        .iter()
        .find(|l| l.below.map_or(true, |b| version < b))
        .map(|l| Some(l.split))
        .ok_or_else(|| {
            Error::format(
                &ranks[0].file.path,
                format!(
                    "{} {version} is newer than the `{}` mapping knows",
                    table.version_key, mapping.variant.name
                ),
            )
        })
}

/// The activation: the first rule whose training argument has the given value, else the
/// mapping's default (said so: an older run may have used another).
pub fn activation(rec: &Recorded, mapping: &Mapping) -> Activation {
    for rule in &mapping.config.activation_rules {
        let Some(v) = rec.get(&rule.when) else {
            continue;
        };
        let matches = match &rule.equals {
            toml::Value::Boolean(b) => v.as_int() == Some(*b as i64),
            toml::Value::Integer(i) => v.as_int() == Some(*i),
            toml::Value::String(s) => v.as_str() == Some(s.as_str()),
            _ => false,
        };
        if matches {
            return Activation {
                name: rule.activation.clone(),
                source: format!("{} = {}", rec.place(&rule.when), rule.equals),
            };
        }
    }
    let rules = &mapping.config.activation_rules;
    let recorded: Vec<&str> = rules
        .iter()
        .filter(|r| rec.get(&r.when).is_some())
        .map(|r| r.when.as_str())
        .collect();
    let why = if rules.is_empty() {
        format!("the `{}` family's activation", mapping.variant.name)
    } else if recorded.is_empty() {
        format!(
            "the `{}` family's default: the checkpoint records none of the flags that choose it",
            mapping.variant.name
        )
    } else {
        format!(
            "no flag selects another ({} in {})",
            recorded.join(", "),
            rec.file
        )
    };
    Activation {
        name: mapping.config.activation_function.clone(),
        source: why,
    }
}

/// The tensor-parallel size a file records must match the files found.
pub fn check_world_size(ranks: &[Rank], mapping: &Mapping, tp: usize) -> Result<()> {
    let Some(key) = &mapping.variant.world_size_key else {
        return Ok(());
    };
    // A DCP folder holds global tensors: the size it was trained at is no file count.
    for rank in ranks.iter().filter(|r| !r.file.holds_global_tensors()) {
        let Some(n) = at_path(&rank.file.root, key).and_then(|v| v.as_int()) else {
            continue;
        };
        if n != tp as i64 {
            let names: Vec<&str> = ranks.iter().map(|r| r.display.as_str()).collect();
            let hint = if (tp as i64) < n {
                "a rank file is missing: pass the directory holding all mp_rank_XX files"
            } else {
                "there are more rank files than the checkpoint was saved with"
            };
            return Err(Error::layout(
                &rank.file.path,
                format!(
                    "records {key} = {n}, but {tp} rank file(s) were found ({}); {hint}",
                    names.join(", ")
                ),
            ));
        }
    }
    Ok(())
}

/// The vocabulary size the checkpoint records or implies, where that came from, and whether it
/// was recorded (an exact size, not a guess from a tokenizer type).
pub fn vocab_hint(rec: &Recorded, mapping: &Mapping) -> Option<(u64, String, bool)> {
    mapping.variant.vocab_hints.iter().find_map(|h| {
        let mut from = Vec::new();
        if let (Some(when), Some(equals)) = (&h.when, &h.equals) {
            if rec.get(when)?.as_str()? != equals.as_str() {
                return None;
            }
            from.push(format!("{} = {equals}", rec.place(when)));
        }
        let size = match (&h.from, h.size) {
            (Some(path), _) => {
                let n = u64::try_from(rec.get(path)?.as_int()?).ok()?;
                from.insert(0, format!("{} = {n}", rec.place(path)));
                n.checked_add(h.plus)?
            }
            (None, Some(size)) => size,
            (None, None) => return None,
        };
        Some((size, from.join(", "), h.from.is_some()))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::export::pickler::{dumps, Py};

    /// The vocabulary `megatron-gpt2`'s hints read from a file whose `args` hold `fields`.
    fn hint(fields: Vec<(&str, Py)>) -> Option<(u64, String, bool)> {
        let args = Py::Namespace(fields.into_iter().map(|(k, v)| (k.into(), v)).collect());
        let bytes = dumps(&Py::Dict(vec![("args".into(), args)]));
        // The parse owns what the value refers to: kept while the value is read.
        let parsed = cpm_torch::pickle::parse(&bytes, std::path::Path::new("t.pkl"), 0).unwrap();
        let rec = Recorded {
            root: &parsed.value,
            file: "t.pkl",
            config: None,
        };
        vocab_hint(&rec, &Mapping::builtin("megatron-gpt2").unwrap())
    }

    /// `args.vocab_size` is the vocabulary before NullTokenizer's EOD (Megatron-LM's
    /// `_NullTokenizer` has one id more); a tokenizer type alone is only a guess.
    #[test]
    fn the_recorded_vocab_size_comes_first_and_null_tokenizer_adds_its_eod() {
        let v = |n: i64| ("vocab_size", Py::Int(n));
        let t = |s: &str| ("tokenizer_type", Py::Str(s.into()));
        let got = hint(vec![v(999), t("NullTokenizer")]).unwrap();
        assert_eq!((got.0, got.2), (1000, true), "{}", got.1);
        assert!(
            got.1.contains("args.vocab_size in t.pkl = 999"),
            "{}",
            got.1
        );
        let got = hint(vec![v(1000), t("GPT2BPETokenizer")]).unwrap();
        assert_eq!((got.0, got.2), (1000, true));
        let got = hint(vec![("vocab_size", Py::None), t("GPT2BPETokenizer")]).unwrap();
        assert_eq!((got.0, got.2), (50257, false));
        assert_eq!(hint(vec![("vocab_size", Py::None)]), None);
    }
}
