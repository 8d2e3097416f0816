//! The weights inside a checkpoint's rank files (finding the files: [`super::layout`]).

use std::rc::Rc;

use cpm_torch::{TensorRef, TorchFile, Value};

use crate::error::{Error, Result};
use crate::mapping::Mapping;

/// One opened file of a checkpoint: its place in the tensor-parallel × pipeline grid (several
/// files share one place when a state dict is sharded by tensor, as Hugging Face does) and the
/// weights found in it, in file order, names with the family's prefixes stripped.
pub struct Rank {
    /// The opened file (its structure parsed, no tensor data read).
    pub file: TorchFile,
    /// Its path relative to the input, for messages and the output's metadata.
    pub(crate) display: String,
    /// Tensor-parallel rank.
    pub(crate) tp: usize,
    /// Pipeline stage.
    pub(crate) pp: usize,
    /// The weights: stripped name and the stored tensor, in file order.
    pub weights: Vec<(String, Rc<TensorRef>)>,
}

/// Nested dicts deeper than this are not searched for weights (Megatron nests four levels).
const MAX_WEIGHT_DEPTH: usize = 8;

/// The weights: under the first of the mapping's `weights_keys` present (a dotted path; `""`
/// or none present: the top level itself), nested dicts flattened with `.`, non-tensor values
/// skipped. Possibly none (see [`no_weights`]): whether that is an error depends on the family.
pub fn weights(file: &TorchFile, mapping: &Mapping) -> Result<Vec<(String, Rc<TensorRef>)>> {
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
        stacked: &mapping.variant.stacked,
        // Each name is copied out of the tree. Real names are distinct strings stored in the
        // file, so together they are shorter than it; one memoized name reused is not.
        name_budget: file.file_len(),
        out: Vec::new(),
    };
    w.dict(&dict, "", 0)?;
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
    stacked: &'a [String],
    name_budget: u64,
    out: Vec<(String, Rc<TensorRef>)>,
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
                    self.tensor(name, t)?;
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

    /// A weight, or one per layer when it stacks the layers (see `stacked` in the mapping).
    fn tensor(&mut self, name: String, t: &Rc<TensorRef>) -> Result<()> {
        let stack = self.stacked.iter().find_map(|p| {
            let rest = name.strip_prefix(p.as_str())?;
            (!rest.starts_with(|c: char| c.is_ascii_digit())).then_some((p.as_str(), rest))
        });
        let Some((p, rest)) = stack else {
            self.out.push((name, Rc::clone(t)));
            return Ok(());
        };
        let (Some(&layers), Some(&step)) = (t.shape.first(), t.stride.first()) else {
            return Err(Error::tensor(
                &self.file.path,
                &name,
                "stacks layers on its first dimension, but is a scalar",
            ));
        };
        // Each view's name is at least this long: more layers than the file could name is a lie
        // about the first dimension, refused before any view is made.
        let least = (p.len() + rest.len() + 2) as u64;
        if layers.saturating_mul(least) > self.name_budget {
            return Err(Error::tensor(
                &self.file.path,
                &name,
                format!(
                    "stacks {layers} layers on its first dimension (shape {:?}): more than the \
                     file's {} bytes could name",
                    t.shape,
                    self.file.file_len()
                ),
            ));
        }
        for i in 0..layers {
            let view = self.name("", &format!("{p}{i}.{rest}"))?;
            let offset = i
                .checked_mul(step)
                .and_then(|o| o.checked_add(t.offset))
                .ok_or_else(|| Error::tensor(&self.file.path, &name, "layer offset overflows"))?;
            let one = TensorRef {
                offset,
                shape: t.shape[1..].to_vec(),
                stride: t.stride[1..].to_vec(),
                ..TensorRef::clone(t)
            };
            self.out.push((view, Rc::new(one)));
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
                    cpm_torch::shorten(key)
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

/// The error for a file in which `mapping` finds no weights.
pub fn no_weights(file: &TorchFile, mapping: &Mapping) -> Error {
    Error::format(
        &file.path,
        format!(
            "no tensors found: expected the weights under one of {:?} or at the top level",
            mapping.variant.weights_keys
        ),
    )
}
