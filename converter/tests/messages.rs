//! One voice in cpm-convert's, cpm-inspect's and cpm-diff's messages: errors start `TOOL: error:`
//! (usage errors too), no warning contradicts a flag that was passed, and every `--flag` any of
//! their messages can advise is one the tool printing it has.

use std::path::{Path, PathBuf};

use testkit::messages::{
    assert_advice_is_own, assert_error_prefix, assert_sources_name_only_flags_of, source_flags,
};
use testkit::{fixtures, run};

const CONVERT: &str = env!("CARGO_BIN_EXE_cpm-convert");
const INSPECT: &str = env!("CARGO_BIN_EXE_cpm-inspect");
const DIFF: &str = env!("CARGO_BIN_EXE_cpm-diff");
const TOOLS: [(&str, &str); 3] = [
    ("cpm-convert", CONVERT),
    ("cpm-inspect", INSPECT),
    ("cpm-diff", DIFF),
];

fn src(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

/// The tiny fixture read with a copy of its family's mapping that lets flags choose the
/// activation: the checkpoint records none of them, so the family's default is assumed and
/// said. Returns (checkpoint, mapping).
fn without_activation_flags(dir: &Path) -> (PathBuf, PathBuf) {
    let text = std::fs::read_to_string(src("../mappings/cpm-lm.toml")).unwrap();
    let ruled = text.replacen(
        "activation_function = \"gelu_new\"\n",
        "activation_function = \"gelu_new\"\nactivation_rules = [{ when = \"args.openai_gelu\", \
         equals = true, activation = \"gelu_new\" }]\n",
        1,
    );
    assert_ne!(ruled, text, "cpm-lm.toml's activation line moved");
    let mapping = dir.join("cpm-lm-flags.toml");
    std::fs::write(&mapping, ruled).unwrap();
    (fixtures().join("tiny/ckpt"), mapping)
}

#[test]
fn a_passed_activation_is_not_warned_about() {
    let dir = tempfile::tempdir().unwrap();
    let (ckpt, mapping) = without_activation_flags(dir.path());
    let (ckpt, m) = (ckpt.to_str().unwrap(), mapping.to_str().unwrap());
    // The same conversion into `name`, with `extra` flags.
    let convert = |name: &str, extra: &[&str]| {
        let hf = dir.path().join(name);
        let mut args = vec![ckpt, "--mapping", m, "-o", hf.to_str().unwrap()];
        args.extend(["--vocab-size", "1000", "--heads", "4"]);
        args.extend(extra);
        args.push("--json");
        (run(CONVERT, &args, &[]), hf)
    };
    // Without the flag the assumption is a warning (so the check below can fail)...
    let (r, _) = convert("hf", &[]);
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    assert!(
        r.stderr.contains("activation_function `gelu_new` assumed"),
        "{}",
        r.stderr
    );
    // ...with it there is none, on stderr or in the JSON warnings, and config.json has it.
    let (r, hf) = convert("hf-flag", &["--activation", "gelu_new"]);
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    assert!(!r.stderr.contains("activation"), "{}", r.stderr);
    let summary: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    let warnings = summary["warnings"].as_array().unwrap();
    assert!(
        warnings
            .iter()
            .all(|w| !w.as_str().unwrap().contains("activation")),
        "{warnings:?}"
    );
    let config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(hf.join("config.json")).unwrap()).unwrap();
    assert_eq!(config["activation_function"], "gelu_new");
    // The dry run, cpm-inspect and cpm-diff take the flag the same way.
    for (tool, exe, args) in [
        (
            "cpm-convert",
            CONVERT,
            vec![ckpt, "--mapping", m, "--dry-run", "--heads", "4"],
        ),
        (
            "cpm-inspect",
            INSPECT,
            vec![ckpt, "--mapping", m, "--heads", "4"],
        ),
        (
            "cpm-diff",
            DIFF,
            vec![ckpt, ckpt, "--mapping", m, "--heads", "4"],
        ),
    ] {
        let plain = run(exe, &args, &[]);
        assert!(
            plain.stderr.contains("--activation"),
            "{tool}: {}",
            plain.stderr
        );
        assert_advice_is_own(exe, &plain.stderr);
        let with = run(
            exe,
            &[&args[..], &["--activation", "gelu_new"]].concat(),
            &[],
        );
        assert!(matches!(with.code, Some(0)), "{tool}: {}", with.stderr);
        assert!(
            !with.stderr.contains("activation"),
            "{tool}: {}",
            with.stderr
        );
    }
}

#[test]
fn every_flag_the_messages_advise_is_the_tools_own() {
    // The library modules every tool runs (reading, planning, inspecting, comparing) may name
    // only flags all three have; what only a conversion reaches, only cpm-convert's flags.
    let convert_only = ["convert", "write", "export", "bin"];
    let shared: Vec<_> = source_flags(&src("src"), &convert_only)
        .into_iter()
        .filter(|(p, _)| {
            !["lib.rs", "merge.rs", "tokenizer_files.rs"]
                .iter()
                .any(|f| p.ends_with(f))
        })
        .collect();
    for (_, exe) in TOOLS {
        assert_sources_name_only_flags_of(exe, &shared);
    }
    let mut convert = source_flags(&src("src"), &["cpm-inspect.rs", "cpm-diff.rs"]);
    convert.retain(|(p, _)| !p.ends_with("cpm-inspect.rs") && !p.ends_with("cpm-diff.rs"));
    // The tokenizer's reader speaks through cpm-convert too.
    convert.extend(source_flags(&src("../tokenizer/src"), &["bin"]));
    assert_sources_name_only_flags_of(CONVERT, &convert);
    assert_sources_name_only_flags_of(INSPECT, &source_flags(&src("src/bin/cpm-inspect.rs"), &[]));
    assert_sources_name_only_flags_of(DIFF, &source_flags(&src("src/bin/cpm-diff.rs"), &[]));
}

#[test]
fn errors_start_with_the_tools_name() {
    let missing = "/nonexistent/checkpoint";
    for (tool, exe) in TOOLS {
        assert_error_prefix(tool, &run(exe, &["--no-such-flag"], &[]));
        let args: &[&str] = match tool {
            "cpm-convert" => &[missing, "-o", "/nonexistent/out"],
            "cpm-diff" => &[missing, missing],
            _ => &[missing],
        };
        let r = run(exe, args, &[]);
        assert_error_prefix(tool, &r);
        assert!(r.stderr.contains(missing), "{tool}: {}", r.stderr);
    }
}
