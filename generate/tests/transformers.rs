//! cpm-generate against transformers' recorded continuations (fixtures/generate): greedy token
//! for token, stopping at eos, min-new-tokens, beam search, and sampling's reproducibility.

use crate::common;

use common::*;

/// Compares our greedy ids with the recorded ones; a difference is tolerated only at a step
/// where transformers' own top two were within 1e-4 (a tie an f32 rounding may break either
/// way), and comparison stops there. Returns the steps compared.
fn same_up_to_ties(ours: &[u32], want: &[u32], gaps: &[f64], what: &str) -> usize {
    for (i, w) in want.iter().enumerate() {
        match ours.get(i) {
            Some(o) if o == w => {}
            _ if gaps.get(i).is_some_and(|&g| g < 1e-4) => {
                println!(
                    "{what}: step {i} is a near tie (gap {:?}); stopped comparing",
                    gaps[i]
                );
                return i;
            }
            _ => panic!("{what}: step {i}: ours {ours:?}\nwant {want:?}"),
        }
    }
    assert_eq!(ours.len(), want.len(), "{what}: length");
    want.len()
}

#[test]
fn greedy_matches_transformers_token_for_token_on_every_prompt() {
    for m in MODELS {
        for (p, r) in records(m).iter().enumerate() {
            let n = r.max_new.to_string();
            let ours = new_ids(
                m,
                &r.prompt_ids,
                &["--max-new-tokens", &n, "--min-new-tokens", &n],
            );
            let steps = same_up_to_ties(&ours, &r.greedy, &r.gaps, &format!("{m} prompt {p}"));
            assert!(
                steps == r.greedy.len(),
                "{m} prompt {p}: only {steps} steps compared"
            );
        }
    }
}

#[test]
fn greedy_stops_at_eos_and_includes_it() {
    let mut stopped = 0;
    for m in MODELS {
        for (p, r) in records(m).iter().enumerate() {
            let n = r.max_new.to_string();
            let ours = new_ids(m, &r.prompt_ids, &["--max-new-tokens", &n]);
            assert_eq!(ours, r.greedy_eos, "{m} prompt {p}");
            stopped += usize::from(r.eos_stopped);
        }
    }
    // The fixtures make most prompts end on eos; a test where none does would prove nothing.
    assert!(stopped >= 10, "{stopped}");
}

#[test]
fn min_new_tokens_suppresses_eos_until_reached() {
    for m in MODELS {
        for r in records(m).iter().filter(|r| r.eos_stopped) {
            let eos_at = r.greedy_eos.len();
            // Suppressed for the whole run: transformers' masked run, no eos anywhere.
            let n = r.max_new.to_string();
            let ours = new_ids(
                m,
                &r.prompt_ids,
                &["--max-new-tokens", &n, "--min-new-tokens", &n],
            );
            assert_eq!(ours, r.greedy, "{m} {:?}", r.prompt);
            // Suppressed only before the step where eos came: the same stop as without it.
            let before = (eos_at - 1).to_string();
            let ours = new_ids(
                m,
                &r.prompt_ids,
                &["--max-new-tokens", &n, "--min-new-tokens", &before],
            );
            assert_eq!(ours, r.greedy_eos, "{m} {:?}", r.prompt);
        }
    }
}

#[test]
fn one_beam_is_greedy() {
    for m in MODELS {
        let r = &records(m)[0];
        let n = r.max_new.to_string();
        let greedy = new_ids(m, &r.prompt_ids, &["--max-new-tokens", &n, "--greedy"]);
        let beam = new_ids(m, &r.prompt_ids, &["--max-new-tokens", &n, "--beams", "1"]);
        assert_eq!(beam, greedy);
        assert_eq!(beam, r.greedy_eos);
    }
}

#[test]
fn four_beams_match_transformers_best_beam() {
    for m in MODELS {
        for (p, r) in records(m).iter().enumerate() {
            let n = r.beam_new.to_string();
            let flags = [
                "--beams",
                "4",
                "--max-new-tokens",
                &n,
                "--min-new-tokens",
                &n,
            ];
            let ours = new_ids(m, &r.prompt_ids, &flags);
            assert_eq!(ours, r.beam4, "{m} prompt {p}");
        }
    }
}

#[test]
fn four_beams_without_min_length_return_a_finished_hypothesis() {
    // Without min-new-tokens eos can finish beams early (these models emit it often): the
    // result must end on eos or run the full length, with no eos inside it.
    let mut ended_on_eos = 0;
    for m in MODELS {
        let eos = if m == "small" { 9 } else { 7 };
        for r in records(m) {
            let ours = new_ids(
                m,
                &r.prompt_ids,
                &["--beams", "4", "--max-new-tokens", "16"],
            );
            let inner = &ours[..ours.len().saturating_sub(1)];
            assert!(!inner.contains(&eos), "{m} {:?}: {ours:?}", r.prompt);
            assert!(
                ours.len() == 16 || ours.last() == Some(&eos),
                "{m}: {ours:?}"
            );
            ended_on_eos += usize::from(ours.last() == Some(&eos));
        }
    }
    assert!(
        ended_on_eos > 0,
        "no beam search ended on eos: the case is not exercised"
    );
}

#[test]
fn sampling_with_top_k_1_or_tiny_top_p_is_greedy() {
    // Both filters leave only the most likely token, so the draw must give transformers' greedy
    // continuation whatever the seed.
    for m in MODELS {
        let r = &records(m)[1];
        let n = r.max_new.to_string();
        let base = [
            "--max-new-tokens",
            &n,
            "--min-new-tokens",
            &n,
            "--seed",
            "5",
        ];
        let k1 = new_ids(m, &r.prompt_ids, &[&base[..], &["--top-k", "1"]].concat());
        assert_eq!(k1, r.greedy, "{m} top-k 1");
        let p = new_ids(
            m,
            &r.prompt_ids,
            &[&base[..], &["--top-p", "1e-6"]].concat(),
        );
        assert_eq!(p, r.greedy, "{m} top-p 1e-6");
    }
}

#[test]
fn sampling_is_reproducible_per_seed_and_differs_between_seeds() {
    let r = &records("vocab30000")[0];
    let run = |seed: &str| {
        let f = [
            "--max-new-tokens",
            "30",
            "--temperature",
            "3",
            "--seed",
            seed,
        ];
        new_ids("vocab30000", &r.prompt_ids, &f)
    };
    assert_eq!(run("1"), run("1"));
    let outs: Vec<Vec<u32>> = ["1", "2", "3"].iter().map(|s| run(s)).collect();
    assert!(outs[0] != outs[1] || outs[1] != outs[2], "{outs:?}");
    // Hot sampling wanders away from greedy.
    assert_ne!(outs[0], r.greedy_eos[..].to_vec());
}
