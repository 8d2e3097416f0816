//! cpm-tokenize speaks as the other tools do: errors (usage errors too) start
//! `cpm-tokenize: error:`, an OS error is said once, and every `--flag` its messages can name is
//! one it has.

use std::path::Path;

use testkit::messages::{assert_error_prefix, assert_sources_name_only_flags_of, source_flags};
use testkit::run;

const EXE: &str = env!("CARGO_BIN_EXE_cpm-tokenize");

#[test]
fn errors_start_with_the_tools_name_and_say_the_os_error_once() {
    assert_error_prefix("cpm-tokenize", &run(EXE, &["--no-such-flag"], &[]));
    let missing = "/nonexistent/chinese_vocab.model";
    let r = run(EXE, &[missing], &[]);
    assert_error_prefix("cpm-tokenize", &r);
    assert!(r.stderr.contains(missing), "{}", r.stderr);
    assert_eq!(r.stderr.matches("os error 2").count(), 1, "{}", r.stderr);
}

#[test]
fn every_flag_the_messages_advise_is_the_tools_own() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    assert_sources_name_only_flags_of(EXE, &source_flags(&src, &[]));
}
