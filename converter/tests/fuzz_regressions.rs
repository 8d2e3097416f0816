//! Every input the fuzzers saved (fuzz/regressions/<target>/) and every seed (fuzz/seeds/<target>/)
//! replayed through exactly the code the fuzz targets run (fuzz/fuzz_targets/common.rs is
//! included here), so a fixed crash stays fixed without cargo-fuzz or a nightly toolchain.

use std::path::{Path, PathBuf};

use crate::cases;
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

#[test]
fn dcp_metadata_inputs_replay_cleanly() {
    replay("dcp_metadata", common::dcp_metadata);
}

/// The seeds built by `cases::fuzz_seeds` (small versions of the hostile memo cases) are the
/// committed files: `CPM_WRITE_SEEDS=1 cargo test --test fuzz_regressions` rewrites them.
#[test]
fn seeds_built_in_rust_match_their_builders() {
    let seeds = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/seeds");
    let write = std::env::var_os("CPM_WRITE_SEEDS").is_some();
    for (target, name, bytes) in cases::fuzz_seeds() {
        assert!(
            bytes.len() <= 65536,
            "{name}: fuzz inputs are at most 64 KB"
        );
        let path = seeds.join(target).join(name);
        if write {
            std::fs::write(&path, &bytes).unwrap();
        }
        let committed = std::fs::read(&path).unwrap_or_else(|e| {
            panic!("{}: {e} (write it with CPM_WRITE_SEEDS=1)", path.display())
        });
        assert!(
            committed == bytes,
            "{} differs from its builder",
            path.display()
        );
    }
}
