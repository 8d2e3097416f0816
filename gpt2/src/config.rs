//! A GPT-2 `config.json`: the fields that change the forward pass, with transformers' defaults.

use std::path::Path;

use serde_json::Value;

use crate::error::{Error, Result};

/// The element-wise non-linearity between `c_fc` and `mlp.c_proj` (`activation_function`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    /// `gelu_new`, `gelu_pytorch_tanh`, `gelu_fast`: the tanh approximation (GPT-2, CPM-LM).
    GeluTanh,
    /// `gelu`: the exact erf form.
    GeluErf,
    /// `relu`.
    Relu,
    /// `silu` / `swish`: x * sigmoid(x).
    Silu,
    /// `quick_gelu`: x * sigmoid(1.702 x).
    QuickGelu,
}

impl Activation {
    /// Maps transformers' `ACT2FN` key to the function; `None` for names we do not implement.
    pub fn from_name(name: &str) -> Option<Self> {
        Some(match name {
            "gelu_new" | "gelu_pytorch_tanh" | "gelu_fast" => Activation::GeluTanh,
            "gelu" => Activation::GeluErf,
            "relu" => Activation::Relu,
            "silu" | "swish" => Activation::Silu,
            "quick_gelu" => Activation::QuickGelu,
            _ => return None,
        })
    }
}

/// The fields of a GPT-2 `config.json` that change the forward pass. Absent fields take
/// transformers' `GPT2Config` defaults, because that is what transformers would run.
#[derive(Debug, Clone)]
pub struct Config {
    /// `vocab_size`.
    pub vocab_size: usize,
    /// `n_positions` (alias `max_position_embeddings`).
    pub n_positions: usize,
    /// `n_embd` (alias `hidden_size`).
    pub n_embd: usize,
    /// `n_layer` (alias `num_hidden_layers`).
    pub n_layer: usize,
    /// `n_head` (alias `num_attention_heads`).
    pub n_head: usize,
    /// `n_inner`, or 4 * `n_embd` when null or absent.
    pub n_inner: usize,
    /// `activation_function`.
    pub activation: Activation,
    /// The `activation_function` string as written.
    pub activation_name: String,
    /// `layer_norm_epsilon`.
    pub layer_norm_epsilon: f64,
    /// `scale_attn_weights`: divide scores by sqrt(head_dim).
    pub scale_attn_weights: bool,
    /// `scale_attn_by_inverse_layer_idx`: also divide scores by (layer index + 1).
    pub scale_attn_by_inverse_layer_idx: bool,
    /// `tie_word_embeddings`: the LM head is `wte` when `lm_head.weight` is absent.
    pub tie_word_embeddings: bool,
}

impl Config {
    /// The width of one attention head.
    pub fn head_dim(&self) -> usize {
        // n_head > 0 and divisibility are checked in `from_json`.
        self.n_embd / self.n_head
    }

    /// Parses a `config.json` text; `path` is only used in error messages.
    pub fn from_json(text: &[u8], path: &Path) -> Result<Config> {
        let v: Value = serde_json::from_slice(text).map_err(|e| Error::json(path, e))?;
        let f = Fields::new(&v, path)?;
        if let Some(mt) = f.obj.get("model_type") {
            if mt.as_str() != Some("gpt2") {
                return Err(f.bad(format!(
                    "model_type is {mt}, expected \"gpt2\": this verifier runs GPT-2 only"
                )));
            }
        }
        let n_embd = f.size(&["n_embd", "hidden_size"], 768)?;
        let n_head = f.size(&["n_head", "num_attention_heads"], 12)?;
        if n_embd % n_head != 0 {
            return Err(f.bad(format!(
                "n_embd {n_embd} is not divisible by n_head {n_head}"
            )));
        }
        let default_inner = n_embd
            .checked_mul(4)
            .ok_or_else(|| Error::Overflow(format!("4 * n_embd in {}", path.display())))?;
        let (activation, activation_name) = f.activation()?;
        Ok(Config {
            vocab_size: f.size(&["vocab_size"], 50257)?,
            n_positions: f.size(&["n_positions", "max_position_embeddings"], 1024)?,
            n_embd,
            n_layer: f.size(&["n_layer", "num_hidden_layers"], 12)?,
            n_head,
            n_inner: f.size(&["n_inner"], default_inner)?,
            activation,
            activation_name,
            layer_norm_epsilon: f.epsilon()?,
            scale_attn_weights: f.flag("scale_attn_weights", true)?,
            scale_attn_by_inverse_layer_idx: f.flag("scale_attn_by_inverse_layer_idx", false)?,
            tie_word_embeddings: f.flag("tie_word_embeddings", true)?,
        })
    }
}

/// The top-level object of a `config.json`, read field by field with transformers' defaults.
struct Fields<'a> {
    obj: &'a serde_json::Map<String, Value>,
    path: &'a Path,
}

impl<'a> Fields<'a> {
    fn new(v: &'a Value, path: &'a Path) -> Result<Self> {
        let obj = v.as_object().ok_or_else(|| Error::Config {
            path: path.to_path_buf(),
            detail: "the top level is not a JSON object".into(),
        })?;
        Ok(Fields { obj, path })
    }

    fn bad(&self, detail: String) -> Error {
        Error::Config {
            path: self.path.to_path_buf(),
            detail,
        }
    }

    /// The first non-null value among a field's GPT-2 name and its generic aliases
    /// (GPT2Config.attribute_map).
    fn field(&self, names: &[&str]) -> Option<&'a Value> {
        names
            .iter()
            .find_map(|n| self.obj.get(*n).filter(|x| !x.is_null()))
    }

    /// A positive integer size, or `default` when absent.
    fn size(&self, names: &[&str], default: usize) -> Result<usize> {
        let Some(x) = self.field(names) else {
            return Ok(default);
        };
        x.as_u64()
            .and_then(|n| usize::try_from(n).ok())
            .filter(|&n| n > 0)
            .ok_or_else(|| {
                self.bad(format!(
                    "`{}` is {x}, expected a positive integer",
                    names[0]
                ))
            })
    }

    fn flag(&self, name: &str, default: bool) -> Result<bool> {
        match self.field(&[name]) {
            None => Ok(default),
            Some(x) => x
                .as_bool()
                .ok_or_else(|| self.bad(format!("`{name}` is {x}, expected true or false"))),
        }
    }

    fn activation(&self) -> Result<(Activation, String)> {
        let name = match self.field(&["activation_function"]) {
            None => "gelu_new".to_string(),
            Some(x) => x
                .as_str()
                .ok_or_else(|| {
                    self.bad(format!("`activation_function` is {x}, expected a string"))
                })?
                .to_string(),
        };
        let act = Activation::from_name(&name).ok_or_else(|| {
            self.bad(format!(
                "activation_function \"{name}\" is not supported \
                 (supported: gelu_new, gelu_pytorch_tanh, gelu_fast, gelu, relu, silu, swish, quick_gelu)"
            ))
        })?;
        Ok((act, name))
    }

    fn epsilon(&self) -> Result<f64> {
        match self.field(&["layer_norm_epsilon"]) {
            None => Ok(1e-5),
            Some(x) => x
                .as_f64()
                .filter(|e| e.is_finite() && *e >= 0.0)
                .ok_or_else(|| {
                    self.bad(format!(
                        "`layer_norm_epsilon` is {x}, expected a number >= 0"
                    ))
                }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config> {
        Config::from_json(text.as_bytes(), Path::new("config.json"))
    }

    #[test]
    fn generic_aliases_and_defaults_are_read_like_transformers() {
        let c = parse(
            r#"{"hidden_size": 128, "num_attention_heads": 8, "num_hidden_layers": 3,
                          "max_position_embeddings": 32, "vocab_size": 50, "n_inner": null}"#,
        )
        .unwrap();
        assert_eq!(
            (c.n_embd, c.n_head, c.n_layer, c.n_positions),
            (128, 8, 3, 32)
        );
        assert_eq!(c.n_inner, 512, "null n_inner means 4 * n_embd");
        assert_eq!(
            c.activation,
            Activation::GeluTanh,
            "GPT2Config's default is gelu_new"
        );
        assert_eq!(c.layer_norm_epsilon, 1e-5);
        assert!(
            c.scale_attn_weights && c.tie_word_embeddings && !c.scale_attn_by_inverse_layer_idx
        );
    }

    #[test]
    fn other_architectures_and_bad_values_are_refused_with_the_field_named() {
        let e = parse(r#"{"model_type": "gpt_neo"}"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("gpt_neo"), "{e}");
        let e = parse(r#"{"n_embd": 64, "n_head": 5}"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("not divisible"), "{e}");
        let e = parse(r#"{"n_layer": -1}"#).unwrap_err().to_string();
        assert!(e.contains("`n_layer`"), "{e}");
        let e = parse(r#"{"scale_attn_weights": "yes"}"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("scale_attn_weights"), "{e}");
    }
}
