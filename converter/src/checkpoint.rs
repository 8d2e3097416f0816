//! The weights inside a checkpoint's rank files (finding the files: [`crate::layout`]).

use std::path::Path;

use crate::error::{Error, Result};
use crate::mapping::Mapping;
use crate::torch::{TensorRef, TorchFile, Value};

/// One opened rank: the file and the weights found in it, in file order.
pub struct Rank {
    pub file: TorchFile,
    pub display: String,
    pub weights: Vec<(String, TensorRef)>,
}

impl Rank {
    pub fn open(path: &Path, display: String, mapping: &Mapping) -> Result<Rank> {
        let file = TorchFile::open(path)?;
        let weights = weights(&file, mapping)?;
        Ok(Rank {
            file,
            display,
            weights,
        })
    }

    /// An integer field of the top-level dict, if present.
    pub fn top_int(&self, key: &str) -> Option<i64> {
        self.file.root.get(key).and_then(|v| v.as_int())
    }

    /// An integer field of the training arguments (argparse.Namespace or dict), if present.
    pub fn arg_int(&self, args_key: &str, field: &str) -> Option<i64> {
        self.file.root.get(args_key)?.get(field)?.as_int()
    }
}

/// The weights dict: the first of the mapping's `weights_keys` present, else the top level
/// itself when it holds tensors (a bare state dict).
fn weights(file: &TorchFile, mapping: &Mapping) -> Result<Vec<(String, TensorRef)>> {
    let top = match &file.root {
        Value::Dict(_) => file.root.clone(),
        other => {
            return Err(Error::format(
                &file.path,
                format!("top-level object is {}, expected a dict", other.describe()),
            ))
        }
    };
    let (dict, keyname) = match mapping
        .variant
        .weights_keys
        .iter()
        .find_map(|k| top.get(k).map(|v| (v, k.as_str())))
    {
        Some(found) => found,
        None => (top, "<top level>"),
    };
    let items = dict.dict_items().ok_or_else(|| {
        Error::format(
            &file.path,
            format!(
                "`{keyname}` is {}, expected a dict of tensors",
                dict.describe()
            ),
        )
    })?;
    let mut out = Vec::with_capacity(items.len());
    // Each name is copied out of the tree. Real names are distinct strings stored in the file,
    // so together they are shorter than it; one memoized name reused for every key is not.
    let mut name_budget = file.file_len();
    for (k, v) in items {
        let name = k.as_str().ok_or_else(|| {
            Error::format(
                &file.path,
                format!("a key of `{keyname}` is {}, not a string", k.describe()),
            )
        })?;
        let Value::Tensor(t) = &v else {
            // Non-tensor entries (a `_metadata`-like value) carry no weights.
            continue;
        };
        name_budget = name_budget.checked_sub(name.len() as u64).ok_or_else(|| {
            Error::format(
                &file.path,
                format!(
                    "the tensor names of `{keyname}` add up to more bytes than the file holds \
                         (one memoized name reused, e.g. `{}`)",
                    crate::torch::value::shorten(name)
                ),
            )
        })?;
        out.push((name.to_string(), TensorRef::clone(t)));
    }
    if out.is_empty() {
        return Err(Error::format(
            &file.path,
            format!(
                "no tensors found: expected the weights under one of {:?} or at the top level",
                mapping.variant.weights_keys
            ),
        ));
    }
    Ok(out)
}
