//! Every hostile case (`cases/`, shared with `hostile.rs`) through every reader in-process, under
//! a counting global allocator: the heap's peak while reading an input of N bytes must stay
//! within `testkit::heap_bound(N)` (4N + 64 MiB; for cpm-diff, which reads two inputs, N is both
//! together). The counter is process-wide, so this file holds one test that runs its cases one
//! after another.

use crate::cases;

use std::path::Path;

use cases::{Case, Expect};
use cpm_torch::{pickle, TorchFile};

/// The whole pipeline short of writing: `cpm_convert::open`, `plan`, every tensor read.
const PIPELINE: &str = "open + plan + read";

/// One reader on one case, measured: (what ran, peak heap bytes, whether it succeeded).
struct Measured {
    reader: &'static str,
    peak: usize,
    ok: bool,
}

fn measure<T, E>(reader: &'static str, f: impl FnOnce() -> Result<T, E>) -> Measured {
    // The result is dropped inside the measurement: freeing is part of reading.
    let (ok, peak) = testkit::peak_heap_during(|| f().is_ok());
    Measured { reader, peak, ok }
}

/// Every tensor of every rank read through the bounds checks (and gathered when strided).
fn open_plan_and_read(input: &Path, heads: Option<u64>) -> cpm_convert::Result<()> {
    let src = cpm_convert::open(input, &cpm_convert::Family::Detect)?;
    let hints = cpm_convert::Hints {
        heads,
        ..Default::default()
    };
    cpm_convert::plan(&src, hints, cpm_convert::OutDtype::Keep)?;
    for rank in &src.ranks {
        for (name, t) in &rank.weights {
            rank.file.read(name, t)?;
        }
    }
    Ok(())
}

/// Run each reader the case reaches and return its measurements.
fn readers(case: &Case, dir: &Path) -> Vec<Measured> {
    let mut out = Vec::new();
    if !case.dir_input {
        let (name, bytes) = &case.files[0];
        let path = dir.join(name);
        out.push(measure("TorchFile::open", || TorchFile::open(&path)));
        out.push(measure("torch::parse_bytes", || {
            cpm_torch::parse_bytes(bytes, &path)
        }));
        // The bytes as one pickle (the legacy format starts with one), and the case's own
        // pickle when it built one.
        out.push(measure("pickle::parse (file)", || {
            pickle::parse(bytes, &path, 0)
        }));
        if let Some(p) = &case.pickle {
            out.push(measure("pickle::parse", || pickle::parse(p, &path, 0)));
        }
    }
    let input = if case.dir_input {
        dir.to_path_buf()
    } else {
        dir.join(&case.files[0].0)
    };
    out.push(measure(PIPELINE, || {
        open_plan_and_read(&input, case.heads())
    }));
    // cpm-inspect's report, text and JSON, with the bounded tree and the mapped plan.
    out.push(measure("inspect", || {
        let opts = cpm_convert::inspect::Options {
            input: input.clone(),
            hints: cpm_convert::Hints {
                heads: case.heads(),
                ..Default::default()
            },
            tree: true,
            ..Default::default()
        };
        let report = cpm_convert::inspect::inspect(&opts, &mut Vec::new())?;
        let text = cpm_convert::inspect::text(&report);
        let json = serde_json::to_string(&report)
            .map_err(|e| cpm_convert::Error::Internal { msg: e.to_string() })?;
        Ok::<usize, cpm_convert::Error>(text.len() + json.len())
    }));
    // cpm-diff of the input against itself, values streamed (mapped, then as stored).
    for raw in [false, true] {
        out.push(measure(if raw { "diff --raw" } else { "diff" }, || {
            let opts = cpm_convert::diff::Options {
                heads: case.heads(),
                vocab_size: None,
                activation: None,
                family: cpm_convert::Family::Detect,
                raw,
                values: true,
                atol: 0.0,
                dtype_insensitive: false,
            };
            cpm_convert::diff::diff(&input, &input, &opts, &Quiet)
        }));
    }
    out
}

/// A progress sink that drops warnings (the test measures memory only).
struct Quiet;

impl cpm_convert::Progress for Quiet {
    fn warn(&self, _msg: &str) {}
}

#[test]
fn every_hostile_case_stays_within_the_heap_bound() {
    let _alone = testkit::alone();
    let marker_dir = tempfile::tempdir().unwrap();
    let marker = marker_dir.path().join("PWNED");
    let cases = cases::all(&marker);
    counter_sees_the_readers_allocations(&cases);
    let mut failures = Vec::new();
    let mut worst = (0.0f64, String::new());
    for case in &cases {
        // The input is written outside the measurement: it is the test's, not the reader's.
        let dir = tempfile::tempdir().unwrap();
        for (name, bytes) in &case.files {
            let f = dir.path().join(name);
            std::fs::create_dir_all(f.parent().unwrap()).unwrap();
            std::fs::write(&f, bytes).unwrap();
        }
        for m in readers(case, dir.path()) {
            // cpm-diff reads two inputs (here the case twice): its bound is on both together.
            let inputs = if m.reader.starts_with("diff") { 2 } else { 1 };
            let bound = testkit::heap_bound(inputs * case.input_bytes());
            // Shown with `-- --nocapture`: what the largest inputs cost.
            if m.peak > 1 << 20 {
                println!("{} / {}: peak {} bytes", case.name, m.reader, m.peak);
            }
            match case.over_heap_bound {
                Some(why) if m.reader == PIPELINE => {
                    println!("NOT BOUNDED YET {}: {} bytes ({why})", case.name, m.peak);
                    continue;
                }
                _ => {}
            }
            let share = m.peak as f64 / bound as f64;
            if share > worst.0 {
                worst = (
                    share,
                    format!("{} / {}: {} bytes", case.name, m.reader, m.peak),
                );
            }
            if m.peak > bound {
                failures.push(format!(
                    "{} / {}: peak {} bytes > bound {bound} ({} input bytes)",
                    case.name,
                    m.reader,
                    m.peak,
                    case.input_bytes()
                ));
            }
            // A refused case must be refused in-process too (the whole pipeline at least).
            if m.reader == PIPELINE {
                let refused = matches!(case.expect, Expect::Refused { .. });
                assert!(!(refused && m.ok), "{}: accepted in-process", case.name);
                if matches!(case.expect, Expect::Converts) {
                    assert!(m.ok, "{}: refused in-process", case.name);
                }
            }
        }
        assert!(!marker.exists(), "{}: a payload ran", case.name);
    }
    println!(
        "{} cases; highest peak relative to its bound: {:.1}% ({})",
        cases.len(),
        worst.0 * 100.0,
        worst.1
    );
    assert!(
        failures.is_empty(),
        "over the heap bound:\n{}",
        failures.join("\n")
    );
}

/// Without this, a bound never approached would pass for the wrong reason: a 1 MiB string the
/// pickle machine builds must show in the peak.
fn counter_sees_the_readers_allocations(cases: &[Case]) {
    let long = "k".repeat(1 << 20);
    let mut p = cases::Pk::new();
    p.str(&long);
    let p = p.stop();
    let (_, peak) = testkit::peak_heap_during(|| pickle::parse(&p, Path::new("x"), 0).is_ok());
    assert!(peak >= 1 << 20, "the 1 MiB string was not counted: {peak}");
    assert!(cases.len() > 300, "{} cases", cases.len());
}

#[test]
fn a_huge_rank_number_allocates_nothing_per_claimed_rank() {
    let _alone = testkit::alone();
    for huge in ["mp_rank_4000000000", "mp_rank_99999999999999999999999999"] {
        let d = tempfile::tempdir().unwrap();
        for f in ["mp_rank_00", huge] {
            std::fs::create_dir_all(d.path().join(f)).unwrap();
            std::fs::write(d.path().join(f).join("model_optim_rng.pt"), b"x").unwrap();
        }
        // A grid of 4e9 entries would take tens of GB; the check walks the two files present.
        let (e, peak) = testkit::peak_heap_during(|| {
            cpm_convert::checkpoint::layout::discover(d.path()).map(|_| ())
        });
        let e = e.unwrap_err().to_string();
        assert!(e.contains("model-parallel rank 1 is missing"), "{e}");
        assert!(peak < 64 << 20, "{huge}: peak heap {peak} bytes");
    }
}
