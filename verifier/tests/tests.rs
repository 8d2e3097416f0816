//! The integration tests of cpm-verify: one binary, a module per subject.

mod cases;
mod common;

mod cache;
mod cli;
mod contract;
mod hostile;
mod messages;
