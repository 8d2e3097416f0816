//! The model step: sentencepiece's unigram search over the model's pieces ([`unigram`]), with
//! the prefix index that finds the pieces a text starts with ([`prefix`]). Its input is the
//! normalizer's output; its output is ids, handed on as they become final.

mod prefix;
mod unigram;

pub(crate) use unigram::{Lattice, Search};
