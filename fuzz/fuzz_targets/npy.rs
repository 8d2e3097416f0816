//! The verifier's fixture reader (.npy through npyz, plus our checks) on arbitrary bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;

mod scratch;
mod verify_common;

fuzz_target!(|data: &[u8]| verify_common::npy(data, scratch::dir("npy")));
