//! The tokenizer's `.model` reader (protobuf, pieces, charsmap) on arbitrary bytes, then a few
//! texts through an accepted model.
#![no_main]

use libfuzzer_sys::fuzz_target;

mod tokenizer_common;

fuzz_target!(|data: &[u8]| tokenizer_common::spm_model(data));
