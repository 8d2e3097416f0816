//! The Hugging Face `tokenizer.json` for the unigram part (what sentencepiece does with the
//! jieba-joined string), built and serialized by the `tokenizers` crate itself.
//!
//! Normalizer: a sequence of the model's own `precompiled_charsmap` (validated in
//! [`crate::charsmap`] before `tokenizers` parses it), `" {2,}"` → `" "` and a strip of spaces
//! (sentencepiece's `remove_extra_whitespaces`); pre-tokenizer `Metaspace("▁", prepend_scheme
//! "always", split false)`; model `Unigram` with every piece and its score; decoder `Metaspace`.
//! Differences from sentencepiece that this format cannot express, none of which the CPM
//! pipeline reaches on the corpus (jieba always cuts `<` and `>` off): `tokenizers`' Unigram also
//! matches CONTROL and UNKNOWN pieces in text and gives USER_DEFINED pieces no bonus, and its
//! Precompiled normalizer works per grapheme cluster (see [`crate::model`]). Checked: the JSON
//! loads back and encodes every recorded corpus input to the recorded ids, for both models
//! (`tests/tokenizer_json.rs`; also with Python `tokenizers` 0.23.3, by hand).

use tokenizers::models::unigram::Unigram;
use tokenizers::normalizers::{
    precompiled::Precompiled, replace::Replace, strip::Strip, NormalizerWrapper, Sequence,
};
use tokenizers::pre_tokenizers::metaspace::{Metaspace, PrependScheme};
use tokenizers::Tokenizer;

use crate::error::{Error, Result};
use crate::spm::Parsed;

fn err(e: impl std::fmt::Display) -> Error {
    Error::TokenizerJson(e.to_string())
}

fn normalizer(parsed: &Parsed, bytes: &[u8]) -> Result<Option<NormalizerWrapper>> {
    let spec = &parsed.normalizer;
    let mut parts: Vec<NormalizerWrapper> = Vec::new();
    if spec.charsmap.is_some() {
        let blob =
            precompiled_blob(bytes).ok_or_else(|| err("precompiled_charsmap not found again"))?;
        parts.push(Precompiled::from(&blob).map_err(err)?.into());
    }
    if spec.remove_extra_whitespaces {
        parts.push(
            Replace::new(
                tokenizers::normalizers::replace::ReplacePattern::Regex(" {2,}".into()),
                " ",
            )
            .map_err(err)?
            .into(),
        );
        parts.push(Strip::new(true, true).into());
    }
    Ok(match parts.len() {
        0 => None,
        _ => Some(Sequence::new(parts).into()),
    })
}

/// The charsmap bytes of a validated model (decoded again: `Parsed` keeps only the table).
fn precompiled_blob(bytes: &[u8]) -> Option<Vec<u8>> {
    #[derive(Clone, PartialEq, prost::Message)]
    struct M {
        #[prost(message, optional, tag = "3")]
        n: Option<N>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    struct N {
        #[prost(bytes = "vec", optional, tag = "2")]
        charsmap: Option<Vec<u8>>,
    }
    <M as prost::Message>::decode(bytes).ok()?.n?.charsmap
}

/// `parsed` is the validated form of the `.model` file `bytes`.
pub(crate) fn tokenizer_json(parsed: &Parsed, bytes: &[u8]) -> Result<String> {
    let vocab: Vec<(String, f64)> = parsed
        .pieces
        .iter()
        .map(|p| (p.text.clone(), f64::from(p.score)))
        .collect();
    let unigram = Unigram::from(vocab, Some(parsed.unk_id as usize), false).map_err(err)?;
    let mut tok = Tokenizer::new(unigram);
    if let Some(n) = normalizer(parsed, bytes)? {
        tok.with_normalizer(Some(n)).map_err(err)?;
    }
    let spec = &parsed.normalizer;
    let scheme = if spec.add_dummy_prefix {
        PrependScheme::Always
    } else {
        PrependScheme::Never
    };
    tok.with_pre_tokenizer(Some(Metaspace::new('\u{2581}', scheme, false)));
    tok.with_decoder(Some(Metaspace::new('\u{2581}', scheme, false)));
    tok.to_string(true).map_err(err)
}
