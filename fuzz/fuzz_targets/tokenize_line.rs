//! Input lines through `cpm-tokenize`'s path (jieba, normalizer, search, streaming output) with
//! the released or the small model.
#![no_main]

use libfuzzer_sys::fuzz_target;

mod tokenizer_common;

fuzz_target!(|data: &[u8]| tokenizer_common::tokenize_line(data));
