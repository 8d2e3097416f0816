//! Hostile `.model` files are refused with an error that names the file and the broken rule,
//! never a panic; corrupted-but-decodable models still tokenize without panicking.

use crate::cases;

use std::path::Path;

#[cfg(feature = "jieba")]
use cpm_tokenizer::CpmTokenizer;
use cpm_tokenizer::{Error, SpModel};

#[test]
fn every_hostile_model_is_refused_with_a_clear_error() {
    for case in cases::cases() {
        let (_dir, path) = cases::write_temp(&case.bytes);
        let err = match SpModel::open(&path) {
            Ok(_) => panic!("{}: accepted", case.name),
            Err(e) => e.to_string(),
        };
        assert!(
            err.contains("case.model"),
            "{}: error does not name the file: {err}",
            case.name
        );
        assert!(
            err.contains(case.expect),
            "{}: {err:?} lacks {:?}",
            case.name,
            case.expect
        );
    }
}

#[test]
fn corrupted_models_load_or_fail_cleanly_and_never_panic_when_used() {
    let texts = [
        "今天天气不错",
        "  Hugging Face\t①㎡ ▂▃ <eod>",
        "😀😃龍龘",
        "",
    ];
    let mut loaded = 0;
    for (name, bytes) in cases::mutations(300) {
        let Ok(m) = SpModel::from_bytes(bytes, Path::new(&name)) else {
            continue;
        };
        loaded += 1;
        for t in texts {
            let ids = m.encode(t);
            m.decode(&ids).unwrap_or_else(|e| panic!("{name}: {e}"));
        }
    }
    // Most flips land in piece text or scores, which stay valid: the loop did exercise models.
    assert!(loaded > 100, "only {loaded} of 300 corrupted models loaded");
}

#[test]
fn a_file_over_the_size_limit_is_refused_before_reading() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("big.model");
    let f = std::fs::File::create(&path).unwrap();
    f.set_len(cpm_tokenizer::spm::MAX_FILE_BYTES + 1).unwrap(); // sparse
    assert!(matches!(SpModel::open(&path), Err(Error::TooLarge { .. })));
}

#[cfg(feature = "jieba")]
#[test]
fn a_directory_without_a_model_is_refused_and_spiece_model_is_preferred() {
    let dir = tempfile::tempdir().unwrap();
    let err = CpmTokenizer::open(dir.path()).err().unwrap().to_string();
    assert!(
        err.contains("no spiece.model or chinese_vocab.model"),
        "{err}"
    );
    let fx = testkit::fixtures().join("tokenizer");
    std::fs::copy(
        fx.join("chinese_vocab.model"),
        dir.path().join("chinese_vocab.model"),
    )
    .unwrap();
    let tok = CpmTokenizer::open(dir.path()).unwrap();
    assert_eq!(tok.model().len(), 30000);
    std::fs::copy(
        fx.join("small/chinese_small.model"),
        dir.path().join("spiece.model"),
    )
    .unwrap();
    assert_eq!(CpmTokenizer::open(dir.path()).unwrap().model().len(), 873);
}

#[cfg(feature = "jieba")]
#[test]
fn decoding_an_id_outside_the_vocabulary_is_an_error() {
    let tok =
        CpmTokenizer::open(&testkit::fixtures().join("tokenizer/chinese_vocab.model")).unwrap();
    assert!(matches!(
        tok.decode(&[837, 30000]),
        Err(Error::IdOutOfRange {
            id: 30000,
            size: 30000
        })
    ));
    assert_eq!(
        tok.decode(&[0, 1, 2, 4, 5, 6, 7]).unwrap(),
        "⁇<eod>",
        "unk, control ids and <eod> as recorded"
    );
}

#[cfg(feature = "jieba")]
#[test]
fn arbitrary_text_encodes_and_decodes_without_panicking() {
    for model in [
        "tokenizer/chinese_vocab.model",
        "tokenizer/small/chinese_small.model",
    ] {
        let tok = CpmTokenizer::open(&testkit::fixtures().join(model)).unwrap();
        for seed in 0..200u64 {
            let bytes = testkit::noise(seed, (seed as usize * 37) % 700);
            // Mix raw noise with characters the pipeline treats specially.
            let mut text = String::from_utf8_lossy(&bytes).into_owned();
            let mid = text
                .char_indices()
                .nth(text.chars().count() / 2)
                .map_or(text.len(), |(i, _)| i);
            text.insert_str(mid, " \r\n\t▂▃▁<eod><sep>今天3.5%v1.2.3 ");
            let ids = tok.encode(&text).unwrap();
            assert!(ids.iter().all(|&id| (id as usize) < tok.model().len()));
            tok.decode(&ids).unwrap();
            let _ = tok.encode_with(&text, false);
        }
    }
}

/// A FIFO or `/dev/zero` as the model, given directly or as a directory's `spiece.model`: refused
/// at once, in-process and by cpm-tokenize (before, the FIFO hung and `/dev/zero` was read until
/// memory ran out).
#[test]
fn special_files_as_the_model_are_refused_at_once() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path().join("model-dir");
    std::fs::create_dir(&dir).unwrap();
    for special in testkit::special_files(d.path()) {
        let inside = dir.join("spiece.model");
        let _ = std::fs::remove_file(&inside);
        std::os::unix::fs::symlink(&special, &inside).unwrap();
        for (arg, named) in [(&special, &special), (&dir, &inside)] {
            let r = testkit::run_refusing(env!("CARGO_BIN_EXE_cpm-tokenize"), &[arg]);
            testkit::assert_not_regular(&r, named, "cpm-tokenize");
        }
        let start = std::time::Instant::now();
        let err = match SpModel::open(&special) {
            Ok(_) => panic!("{} accepted", special.display()),
            Err(e) => e,
        };
        let msg = err.to_string();
        assert!(
            msg.contains(&*special.to_string_lossy()) && msg.contains("not a regular file"),
            "{msg}"
        );
        assert!(start.elapsed() < std::time::Duration::from_secs(5));
    }
}

/// cpm-tokenize on a model over the size limit: exit 2 naming the file and the limit.
#[cfg(feature = "jieba")]
#[test]
fn cpm_tokenize_names_the_size_limit() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("big.model");
    let f = std::fs::File::create(&path).unwrap();
    f.set_len(cpm_tokenizer::spm::MAX_FILE_BYTES + 1).unwrap(); // sparse
    let r = testkit::run_refusing(env!("CARGO_BIN_EXE_cpm-tokenize"), &[&path]);
    assert_eq!(r.code, Some(2), "{r:?}");
    let limit = cpm_tokenizer::spm::MAX_FILE_BYTES.to_string();
    assert!(
        r.stderr.contains("big.model") && r.stderr.contains(&limit),
        "{}",
        r.stderr
    );
}

/// SIGINT/SIGTERM end cpm-tokenize at once, whatever it is doing (here: loading the model or
/// waiting for stdin), by the signal's default action: no handler defers it, and it writes no
/// file to leave behind.
#[cfg(feature = "jieba")]
#[test]
fn a_signal_ends_cpm_tokenize_at_once() {
    use std::process::{Command, Stdio};
    use std::time::Duration;
    let model = testkit::fixtures().join("tokenizer/chinese_vocab.model");
    for (sig, delay) in [(libc::SIGINT, 0), (libc::SIGTERM, 300), (libc::SIGINT, 300)] {
        let mut child = Command::new(env!("CARGO_BIN_EXE_cpm-tokenize"))
            .arg(&model)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(delay));
        let status = testkit::signal_and_wait(&mut child, sig);
        assert!(testkit::ended_by(status, sig), "signal {sig}: {status}");
    }
}

/// Runs `f` on a thread and fails the test if it takes longer than `secs`.
fn within<T: Send + 'static>(secs: u64, what: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || tx.send(f()));
    rx.recv_timeout(std::time::Duration::from_secs(secs))
        .unwrap_or_else(|_| panic!("{what}: not done in {secs} s"))
}

#[cfg(feature = "jieba")]
#[test]
fn crafted_models_that_load_cost_time_linear_in_the_line() {
    for (name, bytes, line) in cases::crafted_lines() {
        let tok = within(30, &format!("{name}: load"), move || {
            CpmTokenizer::new(SpModel::from_bytes(bytes, Path::new("crafted.model")).unwrap())
                .unwrap()
        });
        let n = line.len();
        let ids = within(30, &format!("{name}: encode {n} bytes"), move || {
            let ids = tok.encode(&line).unwrap();
            (ids.len(), tok.model().encode(&line).len())
        });
        assert!(ids.0 > 0 && ids.1 > 0, "{name}");
    }
}

#[test]
fn a_charsmap_of_many_rules_onto_one_long_string_is_refused_quickly() {
    let big: Vec<u8> = [vec![b'y'; 1 << 20], vec![0]].concat();
    let firsts: Vec<u8> = (1..=255).collect();
    let mut bytes = cases::small_model_bytes();
    bytes.extend(cases::normalizer_with(&cases::many_rules(
        &firsts,
        &big,
        |_| 0,
    )));
    let err = within(10, "65,025 rules onto one 1 MB string", move || {
        SpModel::from_bytes(bytes, Path::new("m.model"))
            .err()
            .map(|e| e.to_string())
    });
    assert!(err.unwrap().contains("1048576-byte replacement"));
}
