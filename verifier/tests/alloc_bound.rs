//! The heap a hostile input can make the verifier allocate is bounded by the input (issue 8:
//! "make the class impossible"). Every case of `cases/mod.rs` (the ones `hostile.rs` runs through
//! the binary) is run here in process, through the library's whole path (config.json, the shard
//! index, safetensors headers, fixture.json and the .npy files, the forward pass and the
//! comparison), under a counting allocator: the peak must stay within
//! `testkit::heap_bound(total input bytes)` = 4 x the input + 64 MiB. Memory-mapped weights are
//! not heap and are not counted (they are bounded by the files themselves).

use crate::cases;

use cases::{Case, Expect};
use cpm_verify::{Device, Options};

/// Runs one case in process; returns its peak heap and a failure description, if any.
fn measure(case: &Case) -> (usize, Option<String>) {
    let opts = Options {
        device: Device::Cpu,
        threads: 1,
        atol: None,
        rtol: None,
    };
    let (result, peak) =
        testkit::peak_heap_during(|| cpm_verify::verify(&case.model, &case.fixture, &opts));
    let name = &case.name;
    let wrong = match (&case.expect, result) {
        (Expect::Refused(needles), Err(e)) => {
            let msg = format!("{:#}", anyhow::Error::new(e));
            needles
                .iter()
                .find(|n| !msg.contains(n.as_str()))
                .map(|n| format!("{name}: message lacks {n:?}: {msg}"))
        }
        (Expect::Refused(_), Ok(r)) => Some(format!("{name}: accepted (pass {})", r.pass())),
        (Expect::Runs, Err(e)) => Some(format!("{name}: refused: {e}")),
        (Expect::Runs, Ok(_)) => None,
    };
    (peak, wrong)
}

/// One test function on purpose: the allocator's counts are process-wide, so cases must not
/// run concurrently with anything else in this binary.
#[test]
fn every_hostile_case_stays_within_the_heap_bound() {
    let _alone = testkit::alone();
    let mut failures = Vec::new();
    let mut count = 0;
    for (group, cases) in cases::all() {
        for case in &cases {
            let input = case.input_bytes();
            let bound = testkit::heap_bound(input);
            let (peak, wrong) = measure(case);
            failures.extend(wrong);
            if peak > bound {
                failures.push(format!(
                    "{group} / {}: peak heap {peak} bytes > bound {bound} (input {input} bytes)",
                    case.name
                ));
            }
            // `-- --nocapture` shows the measured table.
            println!("{peak:>12} <= {bound:>12}  {group} / {}", case.name);
            count += 1;
        }
    }
    assert!(
        count > 100,
        "only {count} cases: the shared list went missing"
    );
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
