//! Output shards, `--max-shard-size`: the Hugging Face model written split over `model-0000K-of-0000N.safetensors` files
//! and `model.safetensors.index.json`, the way transformers' `save_pretrained` splits it
//! (huggingface_hub's `split_state_dict_into_shards_factory`): tensors in file order fill the
//! current shard until the next would pass the limit; a tensor larger than the limit gets a
//! shard of its own, placed before the shard being filled.

use crate::error::{Error, Result};
use crate::plan::{Entry, Plan};

/// A size such as `2GB`, `500MB`, `1.5GB` (decimal units, as huggingface_hub's
/// `parse_size_to_int`: KB, MB, GB, TB) or plain bytes.
pub fn parse_size(text: &str) -> Result<u64> {
    let t = text.trim();
    let bad = || {
        Error::usage(format!(
            "size `{text}`: expected bytes or a number with KB, MB, GB or TB (e.g. 2GB)"
        ))
    };
    let upper = t.to_ascii_uppercase();
    let (num, mult) = match upper.len().checked_sub(2).map(|i| upper.split_at(i)) {
        Some((n, "KB")) => (n, 1e3),
        Some((n, "MB")) => (n, 1e6),
        Some((n, "GB")) => (n, 1e9),
        Some((n, "TB")) => (n, 1e12),
        _ => (upper.as_str(), 1.0),
    };
    let v: f64 = num.trim().parse().map_err(|_| bad())?;
    let bytes = v * mult;
    if !bytes.is_finite() || bytes < 1.0 || bytes > u64::MAX as f64 {
        return Err(bad());
    }
    Ok(bytes as u64)
}

/// The plan's entries grouped into shards, in file order.
pub(crate) fn split(entries: &[Entry], max: u64) -> Vec<Vec<Entry>> {
    let mut shards: Vec<Vec<Entry>> = Vec::new();
    let (mut current, mut size) = (Vec::new(), 0u64);
    for e in entries {
        let n = e.nbytes();
        if n > max {
            shards.push(vec![e.clone()]);
            continue;
        }
        if size + n > max && !current.is_empty() {
            shards.push(std::mem::take(&mut current));
            size = 0;
        }
        current.push(e.clone());
        size += n;
    }
    if !current.is_empty() {
        shards.push(current);
    }
    shards
}

/// Shard `k` (from 0) of `n`'s file name.
pub(crate) fn file_name(k: usize, n: usize) -> String {
    format!("model-{:05}-of-{:05}.safetensors", k + 1, n)
}

/// `model.safetensors.index.json` as transformers writes it: sorted keys, indent 2, a newline.
pub(crate) fn index(plan: &Plan, shards: &[Vec<Entry>]) -> Result<String> {
    let mut map = serde_json::Map::new();
    for (k, s) in shards.iter().enumerate() {
        for e in s {
            map.insert(
                e.target.clone(),
                serde_json::Value::String(file_name(k, shards.len())),
            );
        }
    }
    let params: u64 = plan.entries.iter().map(Entry::numel).sum();
    let value = serde_json::json!({
        "metadata": {"total_parameters": params, "total_size": plan.total_bytes()},
        "weight_map": map,
    });
    // serde_json's map is sorted (no preserve_order), as json.dumps(sort_keys=True).
    let mut text = serde_json::to_string_pretty(&value)
        .map_err(|e| Error::internal(format!("cannot encode the shard index: {e}")))?;
    text.push('\n');
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_read_as_huggingface_hub_reads_them() {
        assert_eq!(parse_size("2GB").unwrap(), 2_000_000_000);
        assert_eq!(parse_size("1.5gb").unwrap(), 1_500_000_000);
        assert_eq!(parse_size(" 500 MB").unwrap(), 500_000_000);
        assert_eq!(parse_size("4096").unwrap(), 4096);
        for bad in ["", "GB", "-1GB", "2XB", "nanGB", "0"] {
            assert!(parse_size(bad).is_err(), "{bad}");
        }
    }
}
