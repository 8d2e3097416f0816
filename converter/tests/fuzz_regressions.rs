//! Every input the fuzzers saved (fuzz/regressions/<target>/) and every seed (fuzz/seeds/<target>/)
//! replayed through exactly the code the fuzz targets run (fuzz/fuzz_targets/common.rs is
//! included here), so a fixed crash stays fixed without cargo-fuzz or a nightly toolchain.

use std::path::{Path, PathBuf};

#[path = "../../fuzz/fuzz_targets/common.rs"]
mod common;

fn inputs(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let fuzz = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz");
    let mut out = Vec::new();
    for dir in ["regressions", "seeds"] {
        let Ok(entries) = std::fs::read_dir(fuzz.join(dir).join(target)) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            let bytes = std::fs::read(&p).unwrap();
            out.push((p, bytes));
        }
    }
    out.sort();
    out
}

fn replay(target: &str, f: fn(&[u8])) {
    let cases = inputs(target);
    assert!(!cases.is_empty(), "no inputs for {target}");
    for (path, bytes) in cases {
        // A panic inside names the input it came from.
        eprintln!("replaying {}", path.display());
        f(&bytes);
    }
}

#[test]
fn pickle_inputs_replay_cleanly() {
    replay("pickle", common::pickle);
}

#[test]
fn torch_zip_inputs_replay_cleanly() {
    replay("torch_zip", |d| {
        common::torch_file(&common::with_magic(common::ZIP_MAGIC, d))
    });
}

#[test]
fn torch_legacy_inputs_replay_cleanly() {
    replay("torch_legacy", |d| {
        common::torch_file(&common::with_magic(common::LEGACY_MAGIC, d))
    });
}
