//! CPM-LM's tokenizer, exact: Python jieba 0.42.1's segmentation (HMM on) with the ▂/▃
//! substitutions, then sentencepiece's unigram model.
//!
//! The original pipeline (CPM-Generate `data_utils/tokenization_gpt2.py`, facts in
//! `fixtures/tokenizer/README.md`):
//! - encode: `jieba.cut(text)` (HMM on); in every segment `" "` → `▂` (U+2582) and `"\n"` → `▃`
//!   (U+2583); the segments joined with `" "`; `sp.encode` of that string;
//! - decode: `sp.decode(ids)`, then every `" "` deleted, `▂` → space, `▃` → newline.
//!
//! The steps are the stages Hugging Face `tokenizers` composes (normalizer, pre-tokenizer,
//! model, decoder), one module each, chained in `pipeline` in the order the original runs them:
//!
//! ```text
//!          pre_tokenizer          normalizer           model                  decoder
//! text ──▶ jieba.cut, ▂/▃   ──▶  charsmap rules,  ──▶ unigram search  ──▶ ids ──▶ pieces' text,
//!          in segments,           space runs,          over the pieces,            spaces dropped,
//!          joined by " "          spaces as ▁          best path                   ▂ ▃ back
//! ```
//!
//! The pre-tokenizer comes first, where `tokenizers` puts the normalizer: the original cuts the
//! raw text with jieba and sentencepiece normalizes the joined segments, and swapping the two
//! changes ids (full-width `ＡＢ` is two jieba segments, `▁A▁B` once normalized; `AB` is one).
//! [`SpModel`] is sentencepiece alone (normalizer, model, decoder); `CpmTokenizer` adds the
//! pre-tokenizer. [`spm`] reads and validates the `.model` file that feeds the normalizer
//! (its `precompiled_charsmap`, `charsmap`) and the model (the pieces); `hf` writes
//! the Hugging Face `tokenizer.json` for the sentencepiece part; `stream` is `cpm-tokenize`'s
//! line handling.
//!
//! Feature `jieba` (default): the pre-tokenizer and everything that uses it (`jieba`,
//! `CpmTokenizer`, `Limits`, `stream`, the `cpm-tokenize` binary), with jieba-rs and its
//! dictionary. Without it the crate reads `.model` files, runs sentencepiece alone and writes
//! `tokenizer.json`, which is all the checkpoint tools need.
#![deny(missing_docs)]

mod charsmap;
#[cfg(feature = "jieba")]
mod cpm;
mod decoder;
pub mod error;
mod hf;
mod model;
mod normalizer;
mod pipeline;
#[cfg(feature = "jieba")]
mod pre_tokenizer;
mod sentencepiece;
pub mod spm;
#[cfg(feature = "jieba")]
pub mod stream;

#[cfg(feature = "jieba")]
pub use cpm::{CpmTokenizer, Limits};
pub use error::{Error, Result};
#[cfg(feature = "jieba")]
pub use pre_tokenizer::jieba;
pub use sentencepiece::SpModel;
pub use spm::PieceType;
