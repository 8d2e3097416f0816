//! A DeepSpeed ZeRO root or tag folder as a layout: the files [`crate::zero::find`] found, the
//! model config beside them.

use std::path::Path;

use crate::checkpoint::found::{Layout, ShardPath};
use crate::checkpoint::hugging_face::config_beside;
use crate::error::Result;

/// A ZeRO checkpoint's layout: every file as a shard (its ranks come from [`crate::zero`]), the
/// config.json beside the tag folder, else beside the root (ZeRO records no model config).
pub(super) fn zero_layout(input: &Path, z: &crate::zero::Files) -> Result<Layout> {
    let config = match config_beside(&z.dir)? {
        Some(c) => Some(c),
        None if z.dir != input => config_beside(input)?,
        None => None,
    };
    let tp_files = z.model.iter().zip(&z.optim).enumerate();
    let shards = tp_files
        .flat_map(|(t, (m, o))| std::iter::once(m).chain(o).map(move |p| (t, p)))
        .map(|(tp, p)| ShardPath {
            path: p.clone(),
            display: z.show(p),
            tp,
            pp: 0,
        })
        .collect();
    Ok(Layout {
        shards,
        tp: z.tp(),
        pp: 1,
        iteration: z.tag.strip_prefix("global_step").map(str::to_string),
        config,
    })
}
