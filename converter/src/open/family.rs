//! Choosing the family: the first built-in mapping that fits the opened files' structure.

use crate::checkpoint::weights::{self, Rank};
use crate::error::{Error, Result};
use crate::mapping::Mapping;
use crate::plan;

/// The first built-in family whose mapping fits the files, or an error saying what was found.
pub(super) fn detect(ranks: &mut [Rank]) -> Result<(Mapping, String)> {
    let mut tried = Vec::new();
    let mut named_by: Option<Error> = None;
    for name in Mapping::builtin_names() {
        let mapping = Mapping::builtin(name)?;
        // Errors here are the file's own (a hostile name table), whatever the family.
        for r in ranks.iter_mut() {
            r.weights = weights::weights(&r.file, &mapping)?;
        }
        let listed = match ranks.iter().find(|r| r.weights.is_empty()) {
            Some(r) => Err(plan::Misfit::Names(weights::no_weights(&r.file, &mapping))),
            None => Ok(()),
        };
        match listed.and_then(|()| plan::fits(ranks, &mapping)) {
            Ok(()) => return Ok((mapping, "detected".into())),
            // Every name is this family's. Another family sharing its names may still fit
            // (nanoGPT's and Hugging Face's names are the same, their orientation is not);
            // if none does, this family's complaint is the one that helps.
            Err(plan::Misfit::Model(e)) => {
                tried.push(brief(name, &e));
                named_by.get_or_insert(e);
            }
            Err(plan::Misfit::Names(e)) => tried.push(brief(name, &e)),
        }
    }
    if let Some(e) = named_by {
        return Err(e);
    }
    let r0 = &ranks[0];
    let keys: Vec<String> = r0
        .file
        .root
        .dict_items()
        .unwrap_or_default()
        .iter()
        .take(8)
        .map(|(k, _)| {
            k.as_str()
                .map_or_else(|| k.describe(), |s| cpm_torch::shorten(s).into_owned())
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

/// One family's reason for not fitting, at most a few hundred characters.
fn brief(family: &str, e: &Error) -> String {
    let text = e.to_string();
    match text.char_indices().nth(160) {
        Some((cut, _)) => format!("{family}: {}…", &text[..cut]),
        None => format!("{family}: {text}"),
    }
}
