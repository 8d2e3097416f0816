//! Tensor-name and layout rules of one model variant, loaded from `mappings/<variant>.toml`.
//! This module applies the table; it knows no tensor names itself.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::error::{Error, Result};

/// The placeholder for a block (layer) index in source and target patterns.
pub const BLOCK: &str = "{bid}";

/// How tensor-parallel ranks hold one tensor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Split {
    Replicated,
    Dim0,
    Dim1,
    /// Fused query/key/value rows, laid out per rank as `[3, heads, head_dim]`: all q rows of
    /// the rank's heads, then all k, then all v.
    QkvDim0,
    /// Per rank `[heads, head_dim, 3]` (Megatron-LM checkpoint version 1.0).
    #[serde(rename = "qkv-heads-dim-3")]
    QkvHeadsDim3,
    /// Per rank `[heads, 3, head_dim]` (Megatron-LM 2.0 and later, megatron-core).
    #[serde(rename = "qkv-heads-3-dim")]
    QkvHeads3Dim,
    /// One of the three above, chosen by the checkpoint's version (`[variant.qkv]`).
    Qkv,
}

impl Split {
    pub fn name(self) -> &'static str {
        match self {
            Split::Replicated => "replicated",
            Split::Dim0 => "dim0",
            Split::Dim1 => "dim1",
            Split::QkvDim0 => "qkv-dim0",
            Split::QkvHeadsDim3 => "qkv-heads-dim-3",
            Split::QkvHeads3Dim => "qkv-heads-3-dim",
            Split::Qkv => "qkv",
        }
    }

    /// Fused query/key/value rows, in any layout.
    pub fn is_qkv(self) -> bool {
        matches!(
            self,
            Split::QkvDim0 | Split::QkvHeadsDim3 | Split::QkvHeads3Dim | Split::Qkv
        )
    }
}

/// One source name, or several alternatives (the first present is used): a family whose names
/// changed between versions (`transformer.` / `encoder.`) lists each spelling.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Sources {
    One(String),
    Any(Vec<String>),
}

impl Sources {
    pub fn all(&self) -> &[String] {
        match self {
            Sources::One(s) => std::slice::from_ref(s),
            Sources::Any(v) => v,
        }
    }

    /// The first spelling, for messages.
    pub fn first(&self) -> &str {
        self.all().first().map_or("", String::as_str)
    }
}

/// What to do when no rank holds a rule's tensor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Missing {
    /// The checkpoint is incomplete: an error naming the tensor.
    #[default]
    Error,
    /// The model has no such parameter (nanoGPT's `bias: false`): write zeros, which gives the
    /// same function.
    Zeros,
    /// Optional (an output head that only untied models save).
    Skip,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    pub source: Sources,
    pub target: String,
    pub split: Split,
    pub transpose: bool,
    /// The target shape in model sizes, e.g. `["hidden", "3*hidden"]`.
    pub shape: Vec<String>,
    #[serde(default)]
    pub missing: Missing,
    /// The target of another rule this tensor may be a copy of (a tied output head saved
    /// anyway): when every rank's copy shares its storage with, or holds the same bytes as,
    /// that tensor, it is not written and the head is tied.
    #[serde(default)]
    pub tied_to: Option<String>,
    /// The target of another rule this tensor must equal bit for bit (Megatron's
    /// `word_embeddings_for_head`): checked while converting, never written.
    #[serde(default)]
    pub copy_of: Option<String>,
}

/// How `split = "qkv"` rules are laid out, by the checkpoint's version number.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QkvByVersion {
    /// The top-level key holding the version (absent means 0).
    pub version_key: String,
    /// In order: the first whose `below` exceeds the version (or that has no `below`) applies.
    pub layouts: Vec<QkvLayout>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QkvLayout {
    pub below: Option<f64>,
    pub split: Split,
}

/// The activation, read from training arguments where the family's code chose it from flags.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ActivationRule {
    /// A path into the checkpoint's top-level object, e.g. `args.openai_gelu`.
    pub when: String,
    /// The value that selects `activation` (a missing field never matches).
    pub equals: toml::Value,
    pub activation: String,
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
    // Required in every mapping file for its readers; the converter itself never shows it.
    #[allow(dead_code)]
    pub description: String,
    /// Where the weights live in each file's top-level object: dotted paths tried in order
    /// (`""` is the top level itself). Nested dicts below are flattened with `.`.
    pub weights_keys: Vec<String>,
    /// Prefixes removed from every weight name when present (`_orig_mod.` from torch.compile).
    #[serde(default)]
    pub strip_prefixes: Vec<String>,
    /// Prefixes under which a tensor with no layer number holds every layer stacked on its
    /// first dimension (megatron-core's `torch_dist`: `decoder.layers.<name>` is
    /// `[layers, ...]`): it reads as one tensor per layer, `<prefix>N.<name>`.
    #[serde(default)]
    pub stacked: Vec<String>,
    /// Weights that are not parameters (buffers, Transformer Engine state): ignored by name.
    /// Patterns may hold `{bid}` and `*` (any run of characters).
    #[serde(default)]
    pub ignore: Vec<String>,
    pub world_size_key: Option<String>,
    /// Where the head count may be recorded: dotted paths into a file's top-level object
    /// (`args.num_attention_heads`), or `config.json:n_head` for a config file beside it.
    #[serde(default)]
    pub heads_from: Vec<String>,
    #[serde(default)]
    pub qkv: Option<QkvByVersion>,
    /// The vocabulary size a checkpoint records (`args.vocab_size`) or implies (a tokenizer
    /// type), the first that applies: used to cut padding when no `--vocab-size` is given and
    /// the size is at most the rows present.
    #[serde(default)]
    pub vocab_hints: Vec<VocabHint>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VocabHint {
    /// A path into the checkpoint's top-level object, e.g. `args.tokenizer_type`: the hint
    /// applies when the string there is `equals` (no `when`: whenever `from` is recorded).
    pub when: Option<String>,
    pub equals: Option<String>,
    /// The size: this number, implied ...
    pub size: Option<u64>,
    /// ... or the integer recorded at this path (`args.vocab_size`), plus `plus`.
    pub from: Option<String>,
    #[serde(default)]
    pub plus: u64,
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
    /// Used when no activation rule matches.
    pub activation_function: String,
    /// Checked in order; the first that matches chooses the activation.
    #[serde(default)]
    pub activation_rules: Vec<ActivationRule>,
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

/// The built-in families, compiled in so the binaries work from any directory, in the order
/// detection tries them.
const BUILTIN: &[(&str, &str)] = &[
    ("cpm-lm", CPM_LM),
    (
        "megatron-gpt2",
        include_str!("../../mappings/megatron-gpt2.toml"),
    ),
    (
        "megatron-core-gpt",
        include_str!("../../mappings/megatron-core-gpt.toml"),
    ),
    ("nanogpt", include_str!("../../mappings/nanogpt.toml")),
    ("hf-gpt2", include_str!("../../mappings/hf-gpt2.toml")),
];

/// A mapping file is a page of TOML; anything larger is not one.
const MAX_MAPPING_BYTES: u64 = 1 << 20;

impl Mapping {
    /// The built-in CPM-LM mapping.
    #[cfg(test)]
    pub fn cpm_lm() -> Result<Mapping> {
        Mapping::builtin("cpm-lm")
    }

    /// The names of the built-in families, in detection order.
    pub fn builtin_names() -> Vec<&'static str> {
        BUILTIN.iter().map(|(n, _)| *n).collect()
    }

    /// A built-in family's mapping by name.
    pub fn builtin(name: &str) -> Result<Mapping> {
        let (n, text) = BUILTIN.iter().find(|(n, _)| *n == name).ok_or_else(|| {
            Error::usage(format!(
                "unknown family `{name}`; the families are {}",
                Mapping::builtin_names().join(", ")
            ))
        })?;
        Mapping::parse(text, Path::new(&format!("mappings/{n}.toml")))
    }

    /// Load a mapping file (a regular file of at most 1 MiB).
    pub fn load(path: &Path) -> Result<Mapping> {
        let bytes = crate::files::read_capped(path, MAX_MAPPING_BYTES)?;
        let text = String::from_utf8(bytes).map_err(|_| Error::Mapping {
            path: path.to_path_buf(),
            msg: "is not UTF-8 text".into(),
        })?;
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
            let tb = r.target.matches(BLOCK).count();
            for src in r.source.all() {
                let sb = src.matches(BLOCK).count();
                if sb > 1 || sb != tb {
                    return Err(bad(format!(
                        "rule `{src}` -> `{}`: source and target must both hold `{BLOCK}` once, or neither",
                        r.target
                    )));
                }
            }
            if r.source.all().is_empty() {
                return Err(bad(bad_rule(r, "has no source name".into())));
            }
            if r.split == Split::Qkv && m.variant.qkv.is_none() {
                return Err(bad(bad_rule(
                    r,
                    "uses split `qkv`, but the mapping has no [variant.qkv] table".into(),
                )));
            }
            for other in [&r.tied_to, &r.copy_of].into_iter().flatten() {
                if !m.tensors.iter().any(|o| &o.target == other) {
                    return Err(bad(bad_rule(
                        r,
                        format!("names `{other}`, which no rule writes"),
                    )));
                }
            }
        }
        for h in &m.variant.vocab_hints {
            if h.size.is_some() == h.from.is_some() || h.when.is_some() != h.equals.is_some() {
                return Err(bad(
                    "a vocab_hints entry needs `size` or `from` (one of them), and `when` with \
                     `equals` or neither"
                        .into(),
                ));
            }
        }
        for (i, a) in m.tensors.iter().enumerate() {
            let clash = m.tensors[..i].iter().any(|b| {
                b.target == a.target || b.source.all().iter().any(|x| a.source.all().contains(x))
            });
            if clash {
                return Err(bad(format!(
                    "rule `{}` -> `{}` is listed twice",
                    a.source.first(),
                    a.target
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
        self.tensors.iter().enumerate().find_map(|(i, r)| {
            r.source
                .all()
                .iter()
                .find_map(|p| match_pattern(p, name))
                .map(|b| (i, b))
        })
    }

    /// Whether a weight is not a parameter of the model and is ignored by name.
    pub fn ignored(&self, name: &str) -> bool {
        self.variant.ignore.iter().any(|p| glob(p, name))
    }
}

fn bad_rule(r: &Rule, msg: String) -> String {
    format!("rule `{}` -> `{}`: {msg}", r.source.first(), r.target)
}

/// `*` matches any run of characters, `{bid}` any layer index; everything else itself.
fn glob(pattern: &str, name: &str) -> bool {
    let pattern = pattern.replace(BLOCK, "*");
    let mut parts = pattern.split('*');
    let Some(first) = parts.next() else {
        return false;
    };
    let Some(mut rest) = name.strip_prefix(first) else {
        return false;
    };
    let parts: Vec<&str> = parts.collect();
    for (i, part) in parts.iter().enumerate() {
        if i + 1 == parts.len() {
            return rest.ends_with(part);
        }
        match rest.find(part) {
            Some(at) => rest = &rest[at + part.len()..],
            None => return false,
        }
    }
    rest.is_empty()
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

    /// A vocabulary hint gives its size one way (`size` or `from`) and its condition whole.
    #[test]
    fn vocab_hints_that_say_too_much_or_too_little_are_refused() {
        let text = BUILTIN[1].1;
        let good = "{ from = \"args.vocab_size\" },";
        assert!(text.contains(good));
        for bad in [
            "{ from = \"args.vocab_size\", size = 3 },",
            "{ when = \"args.tokenizer_type\" },",
            "{ from = \"args.vocab_size\", equals = \"x\" },",
        ] {
            let e = Mapping::parse(&text.replace(good, bad), Path::new("m.toml")).unwrap_err();
            assert!(e.to_string().contains("vocab_hints"), "{bad}: {e}");
        }
    }

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
