//! The tokenizer a port ships is read whole and turned into tokenizer.json: the heap's peak for
//! an input of N bytes must stay within `testkit::heap_bound(N)` (4N + 64 MiB), for the released
//! model and for broken files, through `tokenizer_files::load` and the writing of the port's
//! files. One test: the counter is process-wide.

use std::path::Path;

use cpm_convert::gpt2_config::TokenIds;
use cpm_convert::tokenizer_files::{load, Located};

/// Load `model` against a 30000-row embedding and, when that works, write the files.
fn load_and_write(model: &Path, out: &Path) -> bool {
    let located = Located {
        path: model.to_path_buf(),
        found: "given",
    };
    let t = load(
        located,
        (30000, Path::new("model")),
        TokenIds::default(),
        &mut |_| {},
    );
    t.and_then(|t| t.write(out, 1024)).is_ok()
}

#[test]
fn reading_a_tokenizer_stays_within_the_heap_bound() {
    let _alone = testkit::alone();
    let tmp = tempfile::tempdir().unwrap();
    let released = testkit::fixtures().join("tokenizer/chinese_vocab.model");
    let good = std::fs::read(&released).unwrap();
    let oversized = tmp.path().join("oversized.model");
    std::fs::File::create(&oversized)
        .unwrap()
        .set_len(65 << 20)
        .unwrap();
    let mut cases = vec![
        ("released".to_string(), released.clone(), true),
        ("oversized-sparse".to_string(), oversized, false),
    ];
    for (name, bytes) in [
        ("noise", testkit::noise(11, 1 << 20)),
        ("truncated", good[..good.len() / 3].to_vec()),
    ] {
        let p = tmp.path().join(format!("{name}.model"));
        std::fs::write(&p, bytes).unwrap();
        cases.push((name.to_string(), p, false));
    }
    // /dev/zero and a FIFO are refused before any read (a reader that read /dev/zero would
    // fail at this heap limit instead of exhausting the machine).
    testkit::limit_own_heap();
    for special in testkit::special_files(tmp.path()) {
        cases.push((special.display().to_string(), special, false));
    }
    for (i, (name, path, ok)) in cases.iter().enumerate() {
        let out = tmp.path().join(format!("out{i}"));
        std::fs::create_dir(&out).unwrap();
        let n = std::fs::metadata(path).unwrap().len();
        let (loaded, peak) = testkit::peak_heap_during(|| load_and_write(path, &out));
        assert_eq!(loaded, *ok, "{name}");
        // Shown with --nocapture: the measurements SECURITY.md quotes.
        println!("{name}: {n} bytes, peak heap {peak} bytes");
        assert!(
            peak <= testkit::heap_bound(n),
            "{name}: peak {peak} for {n} bytes"
        );
    }
}
