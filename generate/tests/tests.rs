//! The integration tests of cpm-generate: one binary, a module per subject.

mod common;

mod cli;
mod hostile;
mod messages;
mod sampling;
mod text;
mod transformers;
