//! The zip reader (and the pickle and tensor checks behind it) on arbitrary bytes. Inputs are
//! forced to start with the zip signature so every execution reaches the zip code.
#![no_main]

use libfuzzer_sys::fuzz_target;

mod common;

fuzz_target!(|data: &[u8]| common::torch_file(&common::with_magic(common::ZIP_MAGIC, data)));
