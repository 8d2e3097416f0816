//! The flags the crate's tools share to read an input as a model. What every tool of the
//! workspace prints the same way (stdout, `--json` errors, usage errors) is `cpm_cli`'s.

use std::path::PathBuf;

use crate::{Family, Hints};

/// What every tool needs to know to read an input as a model: the flags `cpm-convert`,
/// `cpm-inspect` and `cpm-diff` share (flattened into each one's own arguments), so that advice
/// to use one of them holds in every tool that prints it. `cpm-diff` applies them to both sides.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct ModelArgs {
    /// Number of attention heads, when the checkpoint does not record it and the size is not a
    /// released one of its family (only needed where a layout needs it).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub heads: Option<u64>,

    /// The input's family instead of detecting it: cpm-lm, megatron-gpt2, megatron-core-gpt,
    /// nanogpt, hf-gpt2.
    #[arg(long, value_name = "FAMILY", conflicts_with = "mapping")]
    pub from: Option<String>,

    /// A mapping file to use instead of the built-in families (see mappings/).
    #[arg(long, value_name = "FILE")]
    pub mapping: Option<PathBuf>,

    /// Keep only the first N vocabulary rows: cuts the padding Megatron and nanoGPT add.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub vocab_size: Option<u64>,

    /// The activation function (config.json's activation_function: gelu is the exact erf GELU,
    /// gelu_new the tanh approximation), overriding what the checkpoint's flags imply; no
    /// warning that one was assumed.
    #[arg(long, value_name = "NAME")]
    pub activation: Option<String>,
}

impl ModelArgs {
    /// The family `--from` or `--mapping` chooses; detection without either.
    pub fn family(&self) -> Family {
        match (&self.from, &self.mapping) {
            (Some(f), _) => Family::Named(f.clone()),
            (None, Some(m)) => Family::File(m.clone()),
            (None, None) => Family::Detect,
        }
    }

    /// What `--heads`, `--vocab-size` and `--activation` tell the plan.
    pub fn hints(&self) -> Hints {
        Hints {
            heads: self.heads,
            vocab_size: self.vocab_size,
            activation: self.activation.clone(),
        }
    }
}
