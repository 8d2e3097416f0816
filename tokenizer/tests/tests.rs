//! The integration tests of cpm-tokenize and the tokenizer library: one binary, a module per subject.

mod cases;
mod common;

mod cli;
mod corpus;
mod disagreements;
mod fuzz_seeds;
mod hostile;
mod longlines;
mod messages;
mod tokenizer_json;
