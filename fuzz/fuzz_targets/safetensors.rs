//! The verifier's model reader on an arbitrary model.safetensors beside a valid config.json.
#![no_main]

use libfuzzer_sys::fuzz_target;

mod scratch;
mod verify_common;

fuzz_target!(|data: &[u8]| verify_common::safetensors(data, scratch::dir("safetensors")));
