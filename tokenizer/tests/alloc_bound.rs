//! Every hostile case (`cases/`, shared with `hostile.rs`) read in-process under a counting
//! global allocator: the heap's peak while reading a model of N bytes stays within
//! `testkit::heap_bound(N)` (4N + 64 MiB). The counter is process-wide, so this file holds one
//! test that runs its cases one after another.

use crate::cases;

use std::path::Path;

#[cfg(feature = "jieba")]
use cpm_tokenizer::CpmTokenizer;
use cpm_tokenizer::SpModel;

#[test]
fn reading_any_model_stays_within_the_heap_bound() {
    let _alone = testkit::alone();
    let mut all: Vec<(String, Vec<u8>)> = cases::cases()
        .into_iter()
        .map(|c| (c.name, c.bytes))
        .collect();
    all.extend(cases::mutations(40));
    // The largest model accepted, of the smallest pieces: the per-piece cost is what counts.
    let mut many = cases::piece(b"<unk>", Some(0.0), Some(2));
    for i in 1..cpm_tokenizer::spm::MAX_PIECES {
        many.extend(cases::piece(format!("{i:x}").as_bytes(), None, None));
    }
    all.push(("MAX_PIECES tiny pieces".into(), many));
    all.push((
        "real model".into(),
        std::fs::read(testkit::fixtures().join("tokenizer/chinese_vocab.model")).unwrap(),
    ));
    // A FIFO and /dev/zero are refused before any read: no heap beyond the error. (A reader
    // that read /dev/zero would fail here at the heap limit, not exhaust the machine.)
    testkit::limit_own_heap();
    let tmp = tempfile::tempdir().unwrap();
    for special in testkit::special_files(tmp.path()) {
        let (refused, peak) = testkit::peak_heap_during(|| SpModel::open(&special).is_err());
        assert!(refused, "{} accepted", special.display());
        assert!(peak < 64 << 10, "{}: peak {peak} bytes", special.display());
    }
    let mut worst = (0.0f64, String::new());
    for (name, bytes) in all {
        let n = bytes.len() as u64;
        let (_dir, path) = cases::write_temp(&bytes);
        drop(bytes);
        let (_, peak) = testkit::peak_heap_during(|| SpModel::open(&path).is_ok());
        let (_, peak2) = testkit::peak_heap_during(|| {
            SpModel::from_bytes(std::fs::read(&path).unwrap(), Path::new(&name)).is_ok()
        });
        let peak = peak.max(peak2);
        assert!(
            peak <= testkit::heap_bound(n),
            "{name}: peak {peak} bytes for a {n}-byte file"
        );
        let ratio = peak as f64 / n.max(1) as f64;
        eprintln!("{name}: {n} bytes, peak {peak}");
        if ratio > worst.0 && n > 1 << 20 {
            worst = (ratio, name);
        }
    }
    eprintln!(
        "largest peak/size ratio among files over 1 MiB: {:.1} ({})",
        worst.0, worst.1
    );
    #[cfg(feature = "jieba")]
    lines_through_crafted_models_stay_within_the_bound();
}

/// One line through each crafted model as `cpm-tokenize` runs it (ids counted, not kept): the
/// peak while encoding stays within the bound of the line's size.
#[cfg(feature = "jieba")]
fn lines_through_crafted_models_stay_within_the_bound() {
    let _ =
        CpmTokenizer::new(SpModel::from_bytes(cases::small_model_bytes(), Path::new("m")).unwrap())
            .unwrap()
            .encode("预热"); // jieba's dictionary is loaded once per process, outside the count
    for (name, bytes, line) in cases::crafted_lines() {
        let tok = CpmTokenizer::new(SpModel::from_bytes(bytes, Path::new(&name)).unwrap()).unwrap();
        let (n, peak) = testkit::peak_heap_during(|| {
            let mut n = 0u64;
            tok.encode_each(&line, true, &cpm_tokenizer::stream::LIMITS, &mut |_| n += 1)
                .map(|()| n)
        });
        let bound = testkit::heap_bound(line.len() as u64);
        eprintln!("{name}: {} bytes, {n:?} ids, peak {peak}", line.len());
        assert!(n.is_ok(), "{name}: {n:?}");
        assert!(
            peak <= bound,
            "{name}: peak {peak} for a {}-byte line",
            line.len()
        );
    }
}
