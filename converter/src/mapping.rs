//! Tensor-name and layout rules of one model variant, loaded from `mappings/<variant>.toml`.
//! This module applies the table; it knows no tensor names itself.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::error::{Error, Result};

/// The placeholder for a block (layer) index in source and target patterns.
pub const BLOCK: &str = "{bid}";

/// How model-parallel ranks hold one tensor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Split {
    Replicated,
    Dim0,
    Dim1,
    QkvDim0,
}

impl Split {
    pub fn name(self) -> &'static str {
        match self {
            Split::Replicated => "replicated",
            Split::Dim0 => "dim0",
            Split::Dim1 => "dim1",
            Split::QkvDim0 => "qkv-dim0",
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    pub source: String,
    pub target: String,
    pub split: Split,
    pub transpose: bool,
    /// The target shape in model sizes, e.g. `["hidden", "3*hidden"]`.
    pub shape: Vec<String>,
}

/// One dimension of a rule's `shape`: `factor * size`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dim {
    pub factor: u64,
    pub size: String,
}

impl Dim {
    pub fn parse(s: &str) -> Option<Dim> {
        let (factor, size) = match s.split_once('*') {
            Some((k, v)) => (k.trim().parse().ok()?, v.trim()),
            None => (1, s.trim()),
        };
        let ok = factor > 0
            && !size.is_empty()
            && size.bytes().all(|b| b.is_ascii_lowercase() || b == b'_');
        ok.then(|| Dim {
            factor,
            size: size.to_string(),
        })
    }
}

impl std::fmt::Display for Dim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.factor == 1 {
            write!(f, "{}", self.size)
        } else {
            write!(f, "{}*{}", self.factor, self.size)
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Variant {
    pub name: String,
    pub description: String,
    pub weights_keys: Vec<String>,
    pub world_size_key: Option<String>,
    pub args_key: Option<String>,
    pub heads_arg: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KnownSize {
    pub hidden: u64,
    pub layers: u64,
    pub heads: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Vocabulary {
    pub size: u64,
    pub bos_token_id: Option<u64>,
    pub eos_token_id: Option<u64>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigDefaults {
    pub activation_function: String,
    pub layer_norm_epsilon: f64,
    /// The target name of an untied output head: when a rule writes it, config.json says
    /// `tie_word_embeddings: false`; otherwise the head is tied to the word embeddings.
    #[serde(default = "default_head_target")]
    pub head_target: String,
    #[serde(default)]
    pub vocabularies: Vec<Vocabulary>,
}

fn default_head_target() -> String {
    "lm_head.weight".into()
}

/// One variant's mapping file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Mapping {
    pub variant: Variant,
    #[serde(default)]
    pub known_sizes: Vec<KnownSize>,
    pub config: ConfigDefaults,
    pub tensors: Vec<Rule>,
}

/// The CPM-LM mapping, compiled in so the binary works from any directory.
const CPM_LM: &str = include_str!("../../mappings/cpm-lm.toml");

impl Mapping {
    /// The built-in CPM-LM mapping.
    pub fn cpm_lm() -> Result<Mapping> {
        Mapping::parse(CPM_LM, Path::new("mappings/cpm-lm.toml"))
    }

    /// Load a mapping file.
    pub fn load(path: &Path) -> Result<Mapping> {
        let text =
            std::fs::read_to_string(path).map_err(|e| Error::io(path, "cannot read mapping", e))?;
        Mapping::parse(&text, path)
    }

    pub fn parse(text: &str, path: &Path) -> Result<Mapping> {
        let bad = |msg: String| Error::Mapping {
            path: PathBuf::from(path),
            msg,
        };
        let m: Mapping = toml::from_str(text).map_err(|e| bad(e.to_string()))?;
        for r in &m.tensors {
            if let Some(entry) = r.shape.iter().find(|d| Dim::parse(d).is_none()) {
                return Err(bad(bad_rule(
                    r,
                    format!("shape entry `{entry}` is not `size` or `N*size`"),
                )));
            }
            let sb = r.source.matches(BLOCK).count();
            let tb = r.target.matches(BLOCK).count();
            if sb > 1 || sb != tb {
                return Err(bad(format!(
                    "rule `{}` -> `{}`: source and target must both hold `{BLOCK}` once, or neither",
                    r.source, r.target
                )));
            }
        }
        for (i, a) in m.tensors.iter().enumerate() {
            if m.tensors[..i]
                .iter()
                .any(|b| b.source == a.source || b.target == a.target)
            {
                return Err(bad(format!(
                    "rule `{}` -> `{}` is listed twice",
                    a.source, a.target
                )));
            }
        }
        Ok(m)
    }

    /// A rule's shape, parsed (validated when the mapping was loaded).
    pub fn dims(rule: &Rule) -> Vec<Dim> {
        rule.shape.iter().filter_map(|d| Dim::parse(d)).collect()
    }

    /// The index (in `tensors`) of the rule matching a source name, with the block index if the
    /// rule has one.
    pub fn find(&self, name: &str) -> Option<(usize, Option<u64>)> {
        self.tensors
            .iter()
            .enumerate()
            .find_map(|(i, r)| match_pattern(&r.source, name).map(|b| (i, b)))
    }
}

fn bad_rule(r: &Rule, msg: String) -> String {
    format!("rule `{}` -> `{}`: {msg}", r.source, r.target)
}

/// `Some(None)` for an exact match of a pattern without `{bid}`, `Some(Some(i))` for a match
/// with block index `i`, `None` otherwise.
fn match_pattern(pattern: &str, name: &str) -> Option<Option<u64>> {
    match pattern.split_once(BLOCK) {
        None => (pattern == name).then_some(None),
        Some((pre, post)) => {
            let mid = name.strip_prefix(pre)?.strip_suffix(post)?;
            let canonical = !mid.is_empty()
                && mid.bytes().all(|b| b.is_ascii_digit())
                && (mid == "0" || !mid.starts_with('0'));
            if !canonical || mid.len() > 9 {
                return None;
            }
            mid.parse().ok().map(Some)
        }
    }
}

/// Fill the block index into a target pattern.
pub fn target_name(pattern: &str, block: Option<u64>) -> String {
    match block {
        Some(b) => pattern.replace(BLOCK, &b.to_string()),
        None => pattern.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_match_only_canonical_block_indices() {
        let p = "transformer.layers.{bid}.mlp.dense_h_to_4h.weight";
        assert_eq!(
            match_pattern(p, "transformer.layers.12.mlp.dense_h_to_4h.weight"),
            Some(Some(12))
        );
        assert_eq!(
            match_pattern(p, "transformer.layers.01.mlp.dense_h_to_4h.weight"),
            None
        );
        assert_eq!(
            match_pattern(p, "transformer.layers..mlp.dense_h_to_4h.weight"),
            None
        );
        assert_eq!(
            match_pattern(p, "transformer.layers.1.2.mlp.dense_h_to_4h.weight"),
            None
        );
        assert_eq!(match_pattern("a.b", "a.b"), Some(None));
        assert_eq!(match_pattern("a.b", "a.bc"), None);
    }

    #[test]
    fn shape_entries_are_a_size_times_a_constant() {
        assert_eq!(
            Dim::parse("3*hidden"),
            Some(Dim {
                factor: 3,
                size: "hidden".into()
            })
        );
        assert_eq!(
            Dim::parse("vocab"),
            Some(Dim {
                factor: 1,
                size: "vocab".into()
            })
        );
        assert_eq!(Dim::parse("0*hidden"), None);
        assert_eq!(Dim::parse("hidden*3"), None);
        assert_eq!(Dim::parse(""), None);
        let bad = CPM_LM.replacen(
            r#"shape = ["vocab", "hidden"]"#,
            r#"shape = ["vocab", "hidden+1"]"#,
            1,
        );
        let e = Mapping::parse(&bad, Path::new("m.toml"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("hidden+1"), "{e}");
    }

    #[test]
    fn shipped_cpm_mapping_parses_and_covers_gpt2() {
        let m = Mapping::cpm_lm().expect("shipped mapping parses");
        assert_eq!(m.variant.name, "cpm-lm");
        assert_eq!(m.tensors.len(), 16);
        let (i, b) = m
            .find("transformer.layers.3.attention.query_key_value.weight")
            .expect("qkv rule");
        let r = &m.tensors[i];
        assert_eq!((r.split, r.transpose, b), (Split::QkvDim0, true, Some(3)));
    }
}
