//! cpm-verify speaks as the other tools do: errors (usage errors too) start `cpm-verify: error:`,
//! every `--flag` its messages can name is one it has, and arguments given the wrong way round
//! are called swapped.

use std::path::Path;

use testkit::messages::{assert_error_prefix, assert_sources_name_only_flags_of, source_flags};
use testkit::{fixtures, run};

const EXE: &str = env!("CARGO_BIN_EXE_cpm-verify");

#[test]
fn errors_start_with_the_tools_name() {
    assert_error_prefix("cpm-verify", &run(EXE, &["--no-such-flag"], &[]));
    let r = run(EXE, &["/nonexistent/model", "/nonexistent/fixture"], &[]);
    assert_error_prefix("cpm-verify", &r);
    assert!(r.stderr.contains("/nonexistent/model"), "{}", r.stderr);
}

#[test]
fn swapped_arguments_are_called_swapped() {
    let (model, fixture) = (
        fixtures().join("tiny/hf"),
        fixtures().join("tiny/reference"),
    );
    let r = run(EXE, &[fixture.as_os_str(), model.as_os_str()], &[]);
    assert_error_prefix("cpm-verify", &r);
    let want = format!("cpm-verify {} {}", model.display(), fixture.display());
    assert!(
        r.stderr.contains("swapped") && r.stderr.contains(&want),
        "{}",
        r.stderr
    );
    // The right order passes, so the message is about the order and nothing else.
    let r = run(EXE, &[model.as_os_str(), fixture.as_os_str()], &[]);
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    // Two directories that are both fixtures are not "swapped": the missing config.json is named.
    let r = run(EXE, &[fixture.as_os_str(), fixture.as_os_str()], &[]);
    assert!(
        !r.stderr.contains("swapped") && r.stderr.contains("config.json"),
        "{}",
        r.stderr
    );
}

#[test]
fn every_flag_the_messages_advise_is_the_tools_own() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    assert_sources_name_only_flags_of(EXE, &source_flags(&src, &[]));
}
