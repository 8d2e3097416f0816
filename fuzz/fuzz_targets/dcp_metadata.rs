//! A Distributed Checkpoint folder's `.metadata` reader on arbitrary bytes: the pickle machine,
//! then the Metadata walk and every chunk's tiling check; no data file is opened.
#![no_main]

use libfuzzer_sys::fuzz_target;

mod common;

fuzz_target!(|data: &[u8]| common::dcp_metadata(data));
