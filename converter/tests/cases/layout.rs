//! Checkpoint layout: ranks and tracker.

use super::*;

pub fn rank_file(r: usize) -> String {
    format!("mp_rank_{r:02}_model_states.pt")
}

pub fn rank_layouts() -> Vec<Case> {
    let (r0, r1) = (rank("ckpt/100", 0), rank("ckpt/100", 1));
    vec![
        // mp_world_size says 2, three files.
        Case::dir_refused(
            "an extra rank",
            vec![
                (rank_file(0), r0.clone()),
                (rank_file(1), r1.clone()),
                (rank_file(2), r1.clone()),
            ],
            &rank_file(0),
            &["mp_world_size = 2", "3 rank file(s)", "more rank files"],
        ),
        // The directory is named in the message: the runner checks it (`file` empty).
        Case::dir_refused(
            "a gap: ranks 0 and 2",
            vec![(rank_file(0), r0.clone()), (rank_file(2), r1)],
            "",
            &["rank 1 is missing", "found ranks 0, 2"],
        ),
        // File and Megatron folder layout for one rank.
        Case::dir_refused(
            "two files claiming rank 0",
            vec![
                (rank_file(0), r0.clone()),
                ("mp_rank_00/model_optim_rng.pt".into(), r0),
            ],
            "",
            &["two files claim model-parallel rank 0"],
        ),
    ]
}

pub fn tracker_files() -> Vec<Case> {
    let tracker = "latest_checkpointed_iteration.txt";
    let mut out = Vec::new();
    for (what, content, needle) in [
        ("a missing iteration", b"200\n".to_vec(), "iteration `200`"),
        (
            "a path",
            b"../100\n".to_vec(),
            "expected an iteration number",
        ),
        ("non-UTF-8", b"\xff\xfe1\x00".to_vec(), tracker),
        ("10 MB", vec![b'1'; 10 << 20], tracker),
        ("empty", b"".to_vec(), "expected an iteration number"),
    ] {
        out.push(Case::dir_refused(
            format!("tracker: {what}"),
            vec![
                (format!("100/{}", rank_file(0)), rank("ckpt/100", 0)),
                (tracker.into(), content),
            ],
            tracker,
            &[needle],
        ));
    }
    out
}
