//! The integration tests of cpm-convert, cpm-inspect and cpm-diff: one binary, a module per subject.

mod cases;
mod common;

mod convert;
mod diff;
mod families;
mod fuzz_regressions;
mod hostile;
mod inspect;
mod interrupt;
mod json;
mod layout;
mod messages;
mod output_safety;
mod reshard;
mod tokenizer;
mod training;
mod zero;
