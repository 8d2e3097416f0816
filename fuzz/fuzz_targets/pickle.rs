//! The pickle machine on arbitrary bytes: it must return a value or an error, never panic,
//! overflow the stack, or allocate beyond what the input justifies.
#![no_main]

use libfuzzer_sys::fuzz_target;

mod common;

fuzz_target!(|data: &[u8]| common::pickle(data));
