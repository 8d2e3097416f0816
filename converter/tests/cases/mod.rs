//! Hostile and broken inputs, built once and checked two ways: `hostile.rs` runs the real binary
//! on each (exit 2, a message naming the file and the problem), `alloc_bound.rs` runs every
//! reader in-process on each under a counting allocator (peak heap within 4x the input + 64
//! MiB). A case added here is checked both ways.
//!
//! Inputs are built from bytes: pickles opcode by opcode (`Pk`), zip files with the `zip` crate
//! (then patched where a case needs a malformed archive), and cuts and patches of the real
//! fixtures that PyTorch wrote. A `Ckpt` builder makes a complete, valid one-layer CPM
//! checkpoint; each case changes one thing about it, and the `builder` case proves the
//! unchanged one converts, so every refusal is caused by the one change.
#![allow(dead_code)] // shared by the tests and alloc binaries; each uses a part

pub mod build;
pub mod dcp;
pub mod files;
pub mod layout;
pub mod pickle;
pub mod safetensors;
pub mod tensors;
pub mod zero;
pub mod zip_archives;

use std::path::Path;

pub use build::*;
pub use files::*;
pub use layout::*;
pub use pickle::*;
pub use safetensors::*;
pub use tensors::*;
pub use zip_archives::*;

/// What must happen to a case's input.
#[derive(Debug, Clone)]
pub enum Expect {
    /// Exit 2, a message naming `file`, holding every one of `all` and, unless `any` is empty,
    /// at least one of `any`; nothing written.
    Refused {
        file: String,
        all: Vec<String>,
        any: Vec<String>,
    },
    /// Converts (exit 0).
    Converts,
    /// Converts or is refused cleanly (exit 0 or 2, no panic).
    Ends,
}

/// One input: files relative to a fresh directory, and how to run on it.
#[derive(Debug, Clone)]
pub struct Case {
    pub name: String,
    pub files: Vec<(String, Vec<u8>)>,
    /// Convert the directory (a layout case) rather than its single file.
    pub dir_input: bool,
    pub args: Vec<&'static str>,
    pub expect: Expect,
    /// The pickle inside the file, when the case built one: `alloc_bound` runs the pickle
    /// machine on it alone too.
    pub pickle: Option<Vec<u8>>,
    /// Why `alloc_bound` does not hold this case to the heap bound yet (a known defect fixed
    /// elsewhere); it still reports the case's peak.
    pub over_heap_bound: Option<&'static str>,
}

/// The file name single-file cases use.
pub const FILE: &str = "hostile.pt";

impl Case {
    /// `bytes` as one file, refused with a message holding every needle.
    pub fn refused(name: impl Into<String>, bytes: Vec<u8>, needles: &[&str]) -> Case {
        Case {
            name: name.into(),
            files: vec![(FILE.into(), bytes)],
            dir_input: false,
            args: Vec::new(),
            expect: Expect::Refused {
                file: FILE.into(),
                all: needles.iter().map(|s| s.to_string()).collect(),
                any: Vec::new(),
            },
            pickle: None,
            over_heap_bound: None,
        }
    }

    /// `bytes` as one file, converted.
    pub fn converts(name: impl Into<String>, bytes: Vec<u8>) -> Case {
        Case {
            expect: Expect::Converts,
            ..Case::refused(name, bytes, &[])
        }
    }

    /// A directory of files (rank layouts), refused with a message naming `file`.
    pub fn dir_refused(
        name: impl Into<String>,
        files: Vec<(String, Vec<u8>)>,
        file: &str,
        needles: &[&str],
    ) -> Case {
        Case {
            name: name.into(),
            files,
            dir_input: true,
            args: Vec::new(),
            expect: Expect::Refused {
                file: file.into(),
                all: needles.iter().map(|s| s.to_string()).collect(),
                any: Vec::new(),
            },
            pickle: None,
            over_heap_bound: None,
        }
    }

    /// A torch zip holding `pickle` and no storages, refused with every needle.
    pub fn pickle_refused(name: impl Into<String>, pickle: Vec<u8>, needles: &[&str]) -> Case {
        let mut c = Case::refused(name, torch_zip(&pickle, &[]), needles);
        c.pickle = Some(pickle);
        c
    }

    pub fn args(mut self, args: &[&'static str]) -> Case {
        self.args = args.to_vec();
        self
    }

    /// Refused with at least one of `any` in the message besides the needles.
    pub fn any_of(mut self, alternatives: &[&str]) -> Case {
        if let Expect::Refused { any, .. } = &mut self.expect {
            *any = alternatives.iter().map(|s| s.to_string()).collect();
        }
        self
    }

    /// Bytes of input, for the heap bound.
    pub fn input_bytes(&self) -> u64 {
        self.files.iter().map(|(_, b)| b.len() as u64).sum()
    }

    /// `--heads N` if the case passes it.
    pub fn heads(&self) -> Option<u64> {
        let i = self.args.iter().position(|a| *a == "--heads")?;
        self.args.get(i + 1)?.parse().ok()
    }
}

/// Every case, in a stable order. `marker` is the file a code-execution payload would create.
pub fn all(marker: &Path) -> Vec<Case> {
    let groups: Vec<fn() -> Vec<Case>> = vec![
        builder,
        nesting,
        memo_copies,
        memo_long_strings,
        value_floods,
        length_fields,
        tensors_that_do_not_fit,
        unmergeable_shapes,
        zip_compressed,
        zip_duplicates,
        zip_disagreeing_headers,
        zip_foreign_layouts,
        zip_entry_counts,
        legacy_counts,
        truncations,
        empty_and_random,
        rank_layouts,
        tracker_files,
        safetensors_builder,
        safetensors_headers,
        safetensors_sizes,
        hf_indexes,
        zero::zero_checkpoints,
        dcp::dcp_folders,
    ];
    let mut out = code_execution(marker);
    for g in groups {
        out.extend(g());
    }
    out
}

/// The control for every case built from `Ckpt`: unchanged, it converts.
pub fn builder() -> Vec<Case> {
    vec![Case::converts("builder", Ckpt::new().bytes()).args(&["--heads", "1"])]
}

/// Inside an otherwise valid checkpoint, as the value of top-level key `key`.
fn in_checkpoint(key: &str, body: &[u8]) -> Vec<u8> {
    let mut extra = Pk::default();
    extra.str(key).raw(body);
    Ckpt::with_extra(&extra.0).bytes()
}
