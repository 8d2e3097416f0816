//! The legacy stream reader on arbitrary bytes. Inputs are forced to start with the legacy magic
//! so every execution reaches the legacy code.
#![no_main]

use libfuzzer_sys::fuzz_target;

mod common;

fuzz_target!(|data: &[u8]| common::torch_file(&common::with_magic(common::LEGACY_MAGIC, data)));
