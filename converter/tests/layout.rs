//! The file layer (issue 10): `layout::discover` finds every file of every family's layout (the
//! fixtures PyTorch, Megatron-LM, megatron-core, nanoGPT and transformers wrote) and refuses every
//! incomplete, ambiguous or hostile layout by name; `TorchFile` reads safetensors files through
//! the same API as torch files, byte for byte what the `safetensors` crate reads.

use std::path::{Path, PathBuf};
use std::process::Command;

use cpm_convert::checkpoint::layout::{self, Layout, MAX_RANKS, MAX_SHARDS};
use cpm_torch::{Format, TorchFile, Value};

// The counter is process-wide: only `a_huge_rank_number_allocates_nothing_per_claimed_rank`
// reads it, with a bound far above what the other tests running beside it allocate.

fn fixtures() -> PathBuf {
    testkit::fixtures()
}

fn families() -> PathBuf {
    fixtures().join("families")
}

/// (display, tp, pp) of every shard, in order.
fn grid(l: &Layout) -> Vec<(String, usize, usize)> {
    l.shards
        .iter()
        .map(|s| (s.display.clone(), s.tp, s.pp))
        .collect()
}

fn names(l: &Layout) -> Vec<&str> {
    l.shards.iter().map(|s| s.display.as_str()).collect()
}

/// Every shard's path is the input joined with its display name, which is relative.
fn check_paths(input: &Path, l: &Layout) {
    for s in &l.shards {
        assert!(!Path::new(&s.display).is_absolute(), "{}", s.display);
        assert!(s.path.is_file(), "{}", s.path.display());
        if input.is_dir() {
            assert_eq!(s.path, input.join(&s.display));
        }
    }
}

fn discover(input: &Path) -> Layout {
    let l = layout::discover(input).unwrap_or_else(|e| panic!("{}: {e}", input.display()));
    check_paths(input, &l);
    l
}

/// The error's message, which must name `named`.
fn refused(input: &Path, named: &str, needles: &[&str]) -> String {
    let e = match layout::discover(input) {
        Ok(l) => panic!("{} accepted: {l:?}", input.display()),
        Err(e) => e.to_string(),
    };
    assert!(e.contains(named), "does not name {named}: {e}");
    for n in needles {
        assert!(e.contains(n), "lacks {n:?}: {e}");
    }
    assert!(e.len() <= 2048, "a {}-byte message", e.len());
    e
}

// ---------------------------------------------------------------------------------------------
// The fixtures

#[test]
fn deepspeed_tracker_names_the_digits_folder() {
    let l = discover(&fixtures().join("tiny/ckpt"));
    assert_eq!(
        grid(&l),
        [
            ("100/mp_rank_00_model_states.pt".into(), 0, 0),
            ("100/mp_rank_01_model_states.pt".into(), 1, 0)
        ]
    );
    assert_eq!((l.tp, l.pp, l.iteration.as_deref()), (2, 1, Some("100")));
    assert_eq!(l.config, None);
    // The iteration folder itself: names relative to it, the iteration from its name.
    let l = discover(&fixtures().join("tiny/ckpt/100"));
    assert_eq!(
        names(&l),
        ["mp_rank_00_model_states.pt", "mp_rank_01_model_states.pt"]
    );
    assert_eq!(l.iteration.as_deref(), Some("100"));
    // A folder of rank files with no iteration name.
    let l = discover(&fixtures().join("tiny/ckpt-legacy"));
    assert_eq!((l.tp, l.pp, l.iteration.as_deref()), (2, 1, None));
}

#[test]
fn release_folders_are_found_by_the_tracker_and_directly() {
    let l = discover(&fixtures().join("tiny/ckpt-mp1"));
    assert_eq!(names(&l), ["release/mp_rank_00_model_states.pt"]);
    assert_eq!(l.iteration.as_deref(), Some("release"));
    let erf = families().join("megatron-v3-erf");
    let l = discover(&erf);
    assert_eq!(
        grid(&l),
        [("release/mp_rank_00/model_optim_rng.pt".into(), 0, 0)]
    );
    assert_eq!(
        (l.tp, l.pp, l.iteration.as_deref()),
        (1, 1, Some("release"))
    );
    let l = discover(&erf.join("release"));
    assert_eq!(names(&l), ["mp_rank_00/model_optim_rng.pt"]);
    assert_eq!(l.iteration.as_deref(), Some("release"));
}

#[test]
fn megatron_and_megatron_core_tp2_find_iter_folders_from_a_tracker_without_newline() {
    for fixture in [
        "megatron-v0",
        "megatron-v1",
        "megatron-v2",
        "mcore-tp2-local",
        "mcore-tp2-te",
    ] {
        let root = families().join(fixture);
        let tracker = std::fs::read(root.join("latest_checkpointed_iteration.txt")).unwrap();
        assert_eq!(tracker, b"100", "{fixture}: Megatron writes no newline");
        let l = discover(&root);
        assert_eq!(
            grid(&l),
            [
                ("iter_0000100/mp_rank_00/model_optim_rng.pt".into(), 0, 0),
                ("iter_0000100/mp_rank_01/model_optim_rng.pt".into(), 1, 0)
            ],
            "{fixture}"
        );
        assert_eq!((l.tp, l.pp, l.iteration.as_deref()), (2, 1, Some("100")));
        let l = discover(&root.join("iter_0000100"));
        assert_eq!(l.shards.len(), 2);
        assert_eq!(l.iteration.as_deref(), Some("100"), "{fixture}");
    }
}

#[test]
fn pipeline_stages_are_sorted_by_stage_then_tensor_rank() {
    let root = families().join("megatron-v3-tp2-pp2");
    let l = discover(&root);
    let it = "iter_0000100";
    assert_eq!(
        grid(&l),
        [
            (format!("{it}/mp_rank_00_000/model_optim_rng.pt"), 0, 0),
            (format!("{it}/mp_rank_01_000/model_optim_rng.pt"), 1, 0),
            (format!("{it}/mp_rank_00_001/model_optim_rng.pt"), 0, 1),
            (format!("{it}/mp_rank_01_001/model_optim_rng.pt"), 1, 1),
        ]
    );
    assert_eq!((l.tp, l.pp), (2, 2));
}

#[test]
fn nanogpt_ckpt_is_one_shard_as_a_file_or_its_folder() {
    for fixture in ["nanogpt-nobias", "nanogpt-compiled"] {
        let dir = families().join(fixture);
        for input in [dir.clone(), dir.join("ckpt.pt")] {
            let l = discover(&input);
            assert_eq!(grid(&l), [("ckpt.pt".into(), 0, 0)], "{fixture}");
            assert_eq!((l.tp, l.pp, &l.iteration, &l.config), (1, 1, &None, &None));
        }
    }
}

#[test]
fn hugging_face_folders_give_their_shards_and_config() {
    let cases: [(&str, &[&str]); 4] = [
        (
            "families/hf-safetensors-untied",
            &[
                "model-00001-of-00004.safetensors",
                "model-00002-of-00004.safetensors",
                "model-00003-of-00004.safetensors",
                "model-00004-of-00004.safetensors",
            ],
        ),
        (
            "families/hf-bin-sharded",
            &[
                "pytorch_model-00001-of-00003.bin",
                "pytorch_model-00002-of-00003.bin",
                "pytorch_model-00003-of-00003.bin",
            ],
        ),
        ("families/hf-legacy-bin", &["pytorch_model.bin"]),
        ("tiny/hf", &["model.safetensors"]),
    ];
    for (fixture, want) in cases {
        let dir = fixtures().join(fixture);
        let l = discover(&dir);
        assert_eq!(names(&l), want, "{fixture}");
        assert!(l.shards.iter().all(|s| (s.tp, s.pp) == (0, 0)));
        assert_eq!((l.tp, l.pp, &l.iteration), (1, 1, &None));
        assert_eq!(l.config, Some(dir.join("config.json")), "{fixture}");
    }
    // One file passed alone: that file, no config.
    let f = fixtures().join("tiny/hf/model.safetensors");
    let l = discover(&f);
    assert_eq!(names(&l), ["model.safetensors"]);
    assert_eq!(l.config, None);
}

#[test]
fn every_family_fixture_is_discovered() {
    // A new fixture folder without a test above still has to be found.
    let mut n = 0;
    for e in std::fs::read_dir(families()).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            let l = discover(&p);
            assert!(l.shards.len() >= l.tp * l.pp, "{}", p.display());
            n += 1;
        }
    }
    assert_eq!(n, 12);
}

// ---------------------------------------------------------------------------------------------
// Synthetic layouts

/// A fresh folder holding `files` (relative paths, each a tiny placeholder).
fn folder(files: &[&str]) -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    for f in files {
        let p = d.path().join(f);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, b"x").unwrap();
    }
    d
}

fn mkfifo(p: &Path) -> bool {
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    Command::new("mkfifo")
        .arg(p)
        .status()
        .is_ok_and(|s| s.success())
}

#[test]
fn a_missing_tensor_rank_is_named_with_what_was_found() {
    let d = folder(&["mp_rank_00_model_states.pt", "mp_rank_02_model_states.pt"]);
    refused(
        d.path(),
        "",
        &[
            "model-parallel rank 1 is missing (found ranks 0, 2)",
            "expected mp_rank_01_model_states.pt",
        ],
    );
    let d = folder(&["mp_rank_01/model_optim_rng.pt"]);
    refused(
        d.path(),
        "",
        &[
            "rank 0 is missing (found ranks 1)",
            "mp_rank_00/model_optim_rng.pt",
        ],
    );
}

#[test]
fn a_missing_pipeline_stage_or_rank_is_named_as_tp_pp() {
    let d = folder(&[
        "mp_rank_00_000/model_optim_rng.pt",
        "mp_rank_01_000/model_optim_rng.pt",
        "mp_rank_00_001/model_optim_rng.pt",
    ]);
    refused(
        d.path(),
        "",
        &[
            "rank (tp 1, pp 1) is missing",
            "found ranks (tp 0, pp 0), (tp 1, pp 0), (tp 0, pp 1)",
            "expected mp_rank_01_001/model_optim_rng.pt",
        ],
    );
    // A whole stage 0 rank absent while stage 1 has it.
    let d = folder(&[
        "mp_rank_00_000/model_optim_rng.pt",
        "mp_rank_00_001/model_optim_rng.pt",
        "mp_rank_01_001/model_optim_rng.pt",
    ]);
    refused(d.path(), "", &["rank (tp 1, pp 0) is missing"]);
}

#[test]
fn two_files_for_one_rank_are_refused() {
    let d = folder(&[
        "mp_rank_00_model_states.pt",
        "mp_rank_00/model_optim_rng.pt",
    ]);
    refused(d.path(), "", &["two files claim model-parallel rank 0"]);
    let d = folder(&["mp_rank_00/model_optim_rng.pt", "mp_rank_00/model_rng.pt"]);
    refused(
        d.path(),
        "mp_rank_00",
        &["holds both model_optim_rng.pt and model_rng.pt"],
    );
    // One pipeline rank spelled twice.
    let d = folder(&[
        "mp_rank_00_000/model_optim_rng.pt",
        "mp_rank_00_0/model_optim_rng.pt",
    ]);
    refused(
        d.path(),
        "",
        &["two files claim model-parallel rank (tp 0, pp 0)"],
    );
}

#[test]
fn mixing_pipeline_and_plain_rank_folders_is_refused() {
    let d = folder(&[
        "mp_rank_00_000/model_optim_rng.pt",
        "mp_rank_01/model_optim_rng.pt",
    ]);
    refused(d.path(), "", &["mixes", "mp_rank_00_000", "mp_rank_01"]);
}

#[test]
fn distributed_optimizer_folders_are_not_ranks() {
    // `--use-distributed-optimizer`: model_rng.pt per rank, optim.pt in mp_rank_TT_DDD folders.
    let d = folder(&[
        "mp_rank_00/model_rng.pt",
        "mp_rank_01/model_rng.pt",
        "mp_rank_00_000/optim.pt",
        "mp_rank_01_000/optim.pt",
    ]);
    let l = discover(d.path());
    assert_eq!(
        names(&l),
        ["mp_rank_00/model_rng.pt", "mp_rank_01/model_rng.pt"]
    );
}

#[test]
fn a_huge_pipeline_stage_number_is_named_as_missing() {
    // The heap's peak for huge rank numbers is measured in alloc_bound.rs.
    let d = folder(&["mp_rank_00_99999999/model_optim_rng.pt"]);
    refused(d.path(), "", &["rank (tp 0, pp 0) is missing"]);
}

#[test]
fn more_rank_files_than_the_cap_are_refused() {
    let files: Vec<String> = (0..=MAX_RANKS)
        .map(|r| format!("mp_rank_{r:03}_model_states.pt"))
        .collect();
    let d = folder(&files.iter().map(String::as_str).collect::<Vec<_>>());
    refused(
        d.path(),
        "",
        &[&format!("more than {MAX_RANKS} rank files")],
    );
}

#[test]
fn tracker_iteration_folders() {
    // Both spellings of one iteration: ambiguous.
    let d = folder(&[
        "100/mp_rank_00_model_states.pt",
        "iter_0000100/mp_rank_00/model_optim_rng.pt",
    ]);
    std::fs::write(d.path().join("latest_checkpointed_iteration.txt"), "100").unwrap();
    refused(
        d.path(),
        "latest_checkpointed_iteration.txt",
        &["both 100/ and iter_0000100/"],
    );
    // Neither: both named.
    std::fs::write(d.path().join("latest_checkpointed_iteration.txt"), "200\n").unwrap();
    refused(
        d.path(),
        "200",
        &["iteration `200`", "does not exist", "iter_0000200"],
    );
    // An iteration folder with no rank files.
    std::fs::create_dir(d.path().join("iter_0000300")).unwrap();
    std::fs::write(d.path().join("latest_checkpointed_iteration.txt"), "300").unwrap();
    refused(d.path(), "iter_0000300", &["no checkpoint here"]);
}

#[test]
fn an_empty_folder_is_no_checkpoint() {
    let d = folder(&["README.md"]);
    refused(d.path(), "", &["no checkpoint here", "model.safetensors"]);
}

#[test]
fn hugging_face_prefers_safetensors() {
    let d = folder(&["model.safetensors", "pytorch_model.bin", "config.json"]);
    assert_eq!(names(&discover(d.path())), ["model.safetensors"]);
    let d = folder(&["model.safetensors.index.json", "pytorch_model.bin"]);
    write_index(
        d.path(),
        "model.safetensors.index.json",
        &[("a", "s1.safetensors")],
    );
    std::fs::write(d.path().join("s1.safetensors"), b"x").unwrap();
    let l = discover(d.path());
    assert_eq!(names(&l), ["s1.safetensors"]);
    assert_eq!(l.config, None);
}

/// An index mapping each tensor to a file.
fn write_index(dir: &Path, name: &str, map: &[(&str, &str)]) {
    let weight_map: serde_json::Map<String, serde_json::Value> = map
        .iter()
        .map(|(t, f)| (t.to_string(), serde_json::Value::from(*f)))
        .collect();
    let index = serde_json::json!({"metadata": {"total_size": 0}, "weight_map": weight_map});
    std::fs::write(dir.join(name), serde_json::to_vec(&index).unwrap()).unwrap();
}

#[test]
fn index_shards_are_deduplicated_and_sorted() {
    let d = folder(&["b.bin", "a.bin"]);
    let map = [("x", "b.bin"), ("y", "a.bin"), ("z", "b.bin")];
    write_index(d.path(), "pytorch_model.bin.index.json", &map);
    assert_eq!(names(&discover(d.path())), ["a.bin", "b.bin"]);
}

#[test]
fn index_names_that_leave_the_folder_are_refused() {
    let index = "model.safetensors.index.json";
    for bad in [
        "../x.safetensors",
        "/etc/passwd",
        "sub/x.safetensors",
        "..",
        ".",
        "",
        "a\\b",
    ] {
        let d = folder(&[]);
        write_index(d.path(), index, &[("w", bad)]);
        refused(d.path(), index, &["not a plain file name"]);
    }
    let d = folder(&[]);
    std::fs::write(d.path().join(index), br#"{"weight_map": {"w": [1, 2]}}"#).unwrap();
    refused(d.path(), index, &["maps to an array, expected a file name"]);
    std::fs::write(d.path().join(index), br#"{"weight_map": {}}"#).unwrap();
    refused(d.path(), index, &["names no shard files"]);
    std::fs::write(d.path().join(index), b"[1, 2").unwrap();
    refused(d.path(), index, &["is not a shard index"]);
    write_index(d.path(), index, &[("w", "absent.safetensors")]);
    refused(d.path(), "absent.safetensors", &["does not exist"]);
}

#[test]
fn an_index_naming_100000_shards_is_refused_by_its_count() {
    let d = folder(&[]);
    let names: Vec<(String, String)> = (0..100_000)
        .map(|i| (format!("t{i}"), format!("s{i}.safetensors")))
        .collect();
    let map: Vec<(&str, &str)> = names
        .iter()
        .map(|(a, b)| (a.as_str(), b.as_str()))
        .collect();
    write_index(d.path(), "model.safetensors.index.json", &map);
    refused(
        d.path(),
        "model.safetensors.index.json",
        &[&format!("names more than {MAX_SHARDS} shard files")],
    );
}

#[test]
fn an_index_over_16_mib_is_refused_unread() {
    let d = folder(&[]);
    let index = d.path().join("pytorch_model.bin.index.json");
    let f = std::fs::File::create(&index).unwrap();
    f.set_len(layout::MAX_INDEX_BYTES + 1).unwrap();
    refused(
        d.path(),
        "pytorch_model.bin.index.json",
        &["reads at most 16777216 bytes"],
    );
}

#[test]
fn fifos_are_refused_not_waited_on() {
    // Every place a file is expected: the input itself, a rank file, a shard, an index, the
    // tracker, config.json.
    let d = tempfile::tempdir().unwrap();
    let root = d.path();
    let spots: [(&str, &[&str]); 6] = [
        ("input.pt", &[]),
        ("ranks/mp_rank_00/model_optim_rng.pt", &[]),
        (
            "index/s1.safetensors",
            &["index/model.safetensors.index.json"],
        ),
        ("index2/model.safetensors.index.json", &[]),
        (
            "tracker/latest_checkpointed_iteration.txt",
            &["tracker/1/mp_rank_00_model_states.pt"],
        ),
        ("config/config.json", &["config/model.safetensors"]),
    ];
    for (fifo, others) in spots {
        if !mkfifo(&root.join(fifo)) {
            eprintln!("mkfifo unavailable; skipped");
            return;
        }
        for o in others {
            let p = root.join(o);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(&p, b"x").unwrap();
        }
        if fifo.starts_with("index/") {
            write_index(
                &root.join("index"),
                "model.safetensors.index.json",
                &[("w", "s1.safetensors")],
            );
        }
        let input = match fifo.split_once('/') {
            Some((dir, _)) => root.join(dir),
            None => root.join(fifo),
        };
        refused(
            &input,
            Path::new(fifo).file_name().unwrap().to_str().unwrap(),
            &["not a regular file"],
        );
    }
}

#[test]
fn torch_file_open_refuses_a_fifo_or_a_folder_without_blocking() {
    let d = tempfile::tempdir().unwrap();
    let fifo = d.path().join("model.safetensors");
    if !mkfifo(&fifo) {
        eprintln!("mkfifo unavailable; skipped");
        return;
    }
    for p in [fifo.as_path(), d.path()] {
        let e = TorchFile::open(p).err().expect("opened").to_string();
        assert!(e.contains("not a regular file"), "{e}");
    }
}

// ---------------------------------------------------------------------------------------------
// Reading safetensors through TorchFile

/// Every `.safetensors` fixture file the reader must read.
fn safetensors_fixtures() -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(families().join("hf-safetensors-untied"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "safetensors"))
        .collect();
    out.sort();
    assert_eq!(out.len(), 4);
    out.push(fixtures().join("tiny/hf/model.safetensors"));
    out
}

#[test]
fn safetensors_tensors_read_as_the_safetensors_crate_reads_them() {
    let mut tensors = 0;
    for path in safetensors_fixtures() {
        let bytes = std::fs::read(&path).unwrap();
        let reference = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
        let file = TorchFile::open(&path).unwrap();
        assert_eq!(file.format, Format::Safetensors);
        assert_eq!(file.format.name(), "safetensors");
        let items = file.root.dict_items().unwrap();
        let ours: Vec<(String, std::rc::Rc<cpm_torch::TensorRef>)> = items
            .iter()
            .filter_map(|(k, v)| match v {
                Value::Tensor(t) => Some((k.as_str().unwrap().to_string(), t.clone())),
                _ => None,
            })
            .collect();
        // Header order is data-offset order for files the safetensors writer made.
        let names: Vec<String> = ours.iter().map(|(n, _)| n.clone()).collect();
        assert_eq!(names, meta.offset_keys(), "{}", path.display());
        for (name, t) in &ours {
            let view = reference.tensor(name).unwrap();
            assert_eq!(
                t.dtype.safetensors_name(),
                view.dtype().to_string(),
                "{name}"
            );
            let shape: Vec<u64> = view.shape().iter().map(|&d| d as u64).collect();
            assert_eq!(t.shape, shape, "{name}");
            assert!(t.is_contiguous() && t.offset == 0, "{name}");
            let data = file.read(name, t).unwrap();
            assert_eq!(&*data, view.data(), "{name}");
            // The span-based calls agree with read().
            let span = file.span(name, t).unwrap();
            file.prefetch(&span);
            assert_eq!(
                &*file.read_at(name, t, &span).unwrap(),
                view.data(),
                "{name}"
            );
            file.release(&span);
            file.pages().release(&span);
            tensors += 1;
        }
    }
    assert!(tensors > 20, "{tensors} tensors");
}

#[test]
fn safetensors_metadata_is_a_dict_of_strings() {
    let path = fixtures().join("families/hf-safetensors-untied/model-00001-of-00004.safetensors");
    let bytes = std::fs::read(&path).unwrap();
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let want = meta
        .metadata()
        .clone()
        .expect("transformers writes metadata");
    let c = cpm_torch::parse_bytes(&bytes, &path).unwrap();
    let got = c.root.get("__metadata__").expect("__metadata__ kept");
    for (k, v) in &want {
        assert_eq!(
            got.get(k).and_then(|v| v.as_str().map(String::from)),
            Some(v.clone())
        );
    }
}

#[test]
fn parse_bytes_gives_the_same_storages_as_open() {
    for path in safetensors_fixtures() {
        let bytes = std::fs::read(&path).unwrap();
        let c = cpm_torch::parse_bytes(&bytes, &path).unwrap();
        assert_eq!(c.format, Format::Safetensors);
        let (n, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
        assert_eq!(c.storages.len(), meta.tensors().len());
        for (name, info) in meta.tensors() {
            let (s, e) = info.data_offsets;
            let start = 8 + n as u64;
            assert_eq!(
                c.storages[&name],
                start + s as u64..start + e as u64,
                "{name}"
            );
        }
    }
}

#[test]
fn a_safetensors_file_cut_anywhere_is_refused_naming_it() {
    let base = std::fs::read(fixtures().join("tiny/hf/model.safetensors")).unwrap();
    for cut in (0..base.len()).step_by(13) {
        match cpm_torch::parse_bytes(&base[..cut], Path::new("cut.safetensors")) {
            Ok(_) => panic!("a file cut at byte {cut} of {} parsed", base.len()),
            Err(e) => assert!(e.to_string().contains("cut.safetensors"), "{e}"),
        }
    }
}

#[test]
fn torch_fixtures_are_not_taken_for_safetensors() {
    // Byte 8 of a zip and of the legacy magic is never `{`.
    for f in [
        "tiny/ckpt/100/mp_rank_00_model_states.pt",
        "tiny/ckpt-legacy/mp_rank_00_model_states.pt",
    ] {
        let bytes = std::fs::read(fixtures().join(f)).unwrap();
        assert!(!cpm_torch::safetensors::looks_like(&bytes), "{f}");
        let c = cpm_torch::parse_bytes(&bytes, Path::new(f)).unwrap();
        assert_ne!(c.format, Format::Safetensors);
    }
}
