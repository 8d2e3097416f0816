//! The integration tests of cpm-tokenize and the tokenizer library: one binary, a module per subject.

mod cases;
mod common;

// Without the `jieba` feature only the sentencepiece part runs: the reader and sentencepiece alone.
mod hostile;
mod sentencepiece;

#[cfg(feature = "jieba")]
mod cli;
#[cfg(feature = "jieba")]
mod corpus;
#[cfg(feature = "jieba")]
mod disagreements;
#[cfg(feature = "jieba")]
mod fuzz_seeds;
#[cfg(feature = "jieba")]
mod longlines;
#[cfg(feature = "jieba")]
mod messages;
#[cfg(feature = "jieba")]
mod tokenizer_json;
