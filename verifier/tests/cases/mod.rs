//! Hostile and broken inputs, built once and run twice: by `hostile.rs` through the binary
//! (exit code, message, deadline) and by `alloc_bound.rs` in process (peak heap). A case added
//! here runs in both.
//!
//! Inputs are the real fixtures (fixtures/tiny/hf written by transformers, fixtures/tiny/reference
//! by numpy), cut, patched or rewritten byte by byte, plus small models built here for the
//! size-driven cases.
#![allow(dead_code)] // shared by the tests and alloc binaries; each uses a part

use std::path::{Path, PathBuf};

use tempfile::TempDir;

pub mod files;
pub mod model;
pub mod npy;
pub mod sizes;

/// What a case must end in.
pub enum Expect {
    /// An error (exit 2) whose message contains every needle (the file's name first).
    Refused(Vec<String>),
    /// A completed comparison (exit 0 or 1): the input is legitimate, only large.
    Runs,
}

/// One named input: a model directory, a fixture directory and the expected outcome.
pub struct Case {
    pub name: String,
    pub model: PathBuf,
    pub fixture: PathBuf,
    pub expect: Expect,
    /// Temporary directories the paths point into, removed when the case is dropped.
    _dirs: Vec<TempDir>,
}

impl Case {
    /// Bytes of every regular file (symlinks followed) the case's directories hold: what the
    /// verifier may justify allocating against. FIFOs and devices count nothing.
    pub fn input_bytes(&self) -> u64 {
        [&self.model, &self.fixture]
            .iter()
            .filter_map(|d| std::fs::read_dir(d).ok())
            .flatten()
            .flatten()
            .filter_map(|e| std::fs::metadata(e.path()).ok())
            .filter(|m| m.is_file())
            .map(|m| m.len())
            .sum()
    }
}

pub fn tiny() -> PathBuf {
    testkit::fixtures().join("tiny")
}

pub fn reference() -> PathBuf {
    tiny().join("reference")
}

pub(crate) fn needles(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

/// A case whose model directory is a copy of tiny/hf with `edit` applied.
pub(crate) fn model_case(name: String, needles_: &[&str], edit: impl FnOnce(&Path)) -> Case {
    let d = testkit::copy_dir(&tiny().join("hf"));
    edit(d.path());
    Case {
        name,
        model: d.path().to_path_buf(),
        fixture: reference(),
        expect: Expect::Refused(needles(needles_)),
        _dirs: vec![d],
    }
}

/// A case whose fixture directory is a copy of tiny/reference with `edit` applied.
pub(crate) fn fixture_case(name: String, needles_: &[&str], edit: impl FnOnce(&Path)) -> Case {
    let d = testkit::copy_dir(&reference());
    edit(d.path());
    Case {
        name,
        model: tiny().join("hf"),
        fixture: d.path().to_path_buf(),
        expect: Expect::Refused(needles(needles_)),
        _dirs: vec![d],
    }
}

pub(crate) fn write(path: &Path, bytes: &[u8]) {
    std::fs::write(path, bytes).expect("write a case file");
}

/// Every case, by group name.
pub fn all() -> Vec<(&'static str, Vec<Case>)> {
    vec![
        (
            "safetensors header lengths",
            model::safetensors_header_lengths(),
        ),
        ("safetensors offsets", model::safetensors_offsets()),
        (
            "safetensors names and headers",
            model::safetensors_names_and_headers(),
        ),
        (
            "safetensors truncated or random",
            model::safetensors_truncated_or_random(),
        ),
        ("config.json", model::hostile_config_json()),
        (
            "special and oversized files",
            files::special_and_oversized_files(),
        ),
        ("shard indexes", files::shard_indexes()),
        ("npy shape lies", npy::npy_shape_lies()),
        ("npy bad headers", npy::npy_bad_headers()),
        ("npy backtracking headers", npy::npy_backtracking_headers()),
        ("npy truncated or random", npy::npy_truncated_or_random()),
        ("multiplying sizes", sizes::multiplying_sizes()),
    ]
}
