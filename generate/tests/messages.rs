//! cpm-generate speaks as the other tools do: errors (usage errors too) start
//! `cpm-generate: error:`, every `--flag` its messages can name (its own, the verifier's forward
//! pass's, the tokenizer's) is one it has, and a prompt of ids without a tokenizer says what
//! to add.

use crate::common;

use std::path::Path;

use common::*;
use testkit::messages::{
    assert_advice_is_own, assert_error_prefix, assert_sources_name_only_flags_of, source_flags,
};

const EXE: &str = env!("CARGO_BIN_EXE_cpm-generate");

fn s(list: &[&str]) -> Vec<String> {
    list.iter().map(|x| x.to_string()).collect()
}

#[test]
fn errors_start_with_the_tools_name() {
    assert_error_prefix("cpm-generate", &run(&s(&["--no-such-flag"])));
    let r = run(&s(&["/nonexistent/model", "--prompt-ids", "1"]));
    assert_error_prefix("cpm-generate", &r);
    assert!(r.stderr.contains("/nonexistent/model"), "{}", r.stderr);
}

#[test]
fn ids_without_a_tokenizer_say_what_to_add() {
    // The fixture models ship no spiece.model: printing text needs one, printing ids does not.
    let dir = model_dir("small").display().to_string();
    let r = run(&s(&[
        &dir,
        "--prompt-ids",
        "1 2 3",
        "--max-new-tokens",
        "2",
    ]));
    assert_error_prefix("cpm-generate", &r);
    for hint in ["--ids", "--json", "--tokenizer", "spiece.model"] {
        assert!(r.stderr.contains(hint), "{hint}: {}", r.stderr);
    }
    assert_advice_is_own(EXE, &r.stderr);
    for fix in ["--ids", "--json"] {
        let r = run(&s(&[
            &dir,
            "--prompt-ids",
            "1 2 3",
            "--max-new-tokens",
            "2",
            fix,
        ]));
        assert_eq!(r.code, Some(0), "{fix}: {}", r.stderr);
    }
}

#[test]
fn every_flag_the_messages_advise_is_the_tools_own() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut sources = source_flags(&root.join("generate/src"), &[]);
    sources.extend(source_flags(&root.join("verifier/src"), &["bin"]));
    sources.extend(source_flags(&root.join("tokenizer/src"), &["bin"]));
    assert_sources_name_only_flags_of(EXE, &sources);
}
