//! Files that are not regular files or too large to read whole (issue 8.6), and shard indexes
//! naming many shards (issue 8.5).

use std::path::Path;

use serde_json::{json, Map, Value};

use super::*;

fn mkfifo(path: &Path) {
    let _ = std::fs::remove_file(path);
    let ok = std::process::Command::new("mkfifo")
        .arg(path)
        .status()
        .expect("run mkfifo")
        .success();
    assert!(ok, "mkfifo {}", path.display());
}

fn link_to_dev_zero(path: &Path) {
    let _ = std::fs::remove_file(path);
    std::os::unix::fs::symlink("/dev/zero", path).expect("symlink");
}

/// `{}` after `pad` bytes of spaces: valid JSON, but larger than the reader's cap.
fn padded_json(pad: usize) -> Vec<u8> {
    let mut b = vec![b' '; pad];
    b.extend_from_slice(b"{}");
    b
}

pub fn special_and_oversized_files() -> Vec<Case> {
    const FIFO: &str = "a FIFO, not a regular file";
    const DEV: &str = "a character device, not a regular file";
    const BIG: &str = "-byte limit for this file";
    vec![
        model_case(
            "config.json is a FIFO".into(),
            &["config.json", FIFO],
            |d| mkfifo(&d.join("config.json")),
        ),
        model_case(
            "config.json -> /dev/zero".into(),
            &["config.json", DEV],
            |d| link_to_dev_zero(&d.join("config.json")),
        ),
        model_case("config.json of 2 MiB".into(), &["config.json", BIG], |d| {
            write(&d.join("config.json"), &padded_json(2 << 20))
        }),
        model_case(
            "model.safetensors is a FIFO".into(),
            &["model.safetensors", FIFO],
            |d| mkfifo(&d.join("model.safetensors")),
        ),
        model_case(
            "model.safetensors -> /dev/zero".into(),
            &["model.safetensors", DEV],
            |d| link_to_dev_zero(&d.join("model.safetensors")),
        ),
        fixture_case(
            "fixture.json -> /dev/zero".into(),
            &["fixture.json", DEV],
            |d| link_to_dev_zero(&d.join("fixture.json")),
        ),
        fixture_case(
            "fixture.json is a FIFO".into(),
            &["fixture.json", FIFO],
            |d| mkfifo(&d.join("fixture.json")),
        ),
        fixture_case(
            "fixture.json of 2 MiB".into(),
            &["fixture.json", BIG],
            |d| write(&d.join("fixture.json"), &padded_json(2 << 20)),
        ),
        fixture_case(
            "fixture.json not JSON".into(),
            &["fixture.json", "not valid JSON"],
            |d| write(&d.join("fixture.json"), b"atol = 1"),
        ),
        fixture_case(
            "fixture.json a dangling symlink".into(),
            &["fixture.json"],
            |d| {
                let p = d.join("fixture.json");
                let _ = std::fs::remove_file(&p);
                std::os::unix::fs::symlink(d.join("nowhere"), &p).expect("symlink");
            },
        ),
        fixture_case(
            "input_ids.npy -> /dev/zero".into(),
            &["input_ids.npy", DEV],
            |d| link_to_dev_zero(&d.join("input_ids.npy")),
        ),
        fixture_case("logits.npy is a FIFO".into(), &["logits.npy", FIFO], |d| {
            mkfifo(&d.join("logits.npy"))
        }),
    ]
}

/// A model directory holding only config.json and an index mapping `tensors` names to `shards`
/// distinct shard files (none of which exist).
fn index_case(name: String, tensors: usize, shards: usize, needles_: &[&str]) -> Case {
    model_case(name, needles_, |d| {
        std::fs::remove_file(d.join("model.safetensors")).expect("remove");
        let map: Map<String, Value> = (0..tensors)
            .map(|i| (format!("t{i}"), json!(format!("s{}", i % shards))))
            .collect();
        let index = serde_json::to_vec(&json!({ "weight_map": map })).expect("encode");
        write(&d.join("model.safetensors.index.json"), &index);
    })
}

/// Renames tiny/hf's model.safetensors to a shard and writes an index listing its tensors, plus
/// `extra` (a name the shard does not hold) when given.
fn one_shard_index(d: &Path, extra: Option<&str>) {
    let shard = "model-00001-of-00001.safetensors";
    std::fs::rename(d.join("model.safetensors"), d.join(shard)).expect("rename");
    let st = std::fs::read(d.join(shard)).expect("read the shard");
    let n = u64::from_le_bytes(st[..8].try_into().expect("8 bytes")) as usize;
    let header: Map<String, Value> = serde_json::from_slice(&st[8..8 + n]).expect("header");
    let mut map: Map<String, Value> = header
        .keys()
        .filter(|k| *k != "__metadata__")
        .map(|k| (k.clone(), json!(shard)))
        .collect();
    if let Some(name) = extra {
        map.insert(name.into(), json!(shard));
    }
    let index = json!({ "metadata": {}, "weight_map": map });
    write(
        &d.join("model.safetensors.index.json"),
        index.to_string().as_bytes(),
    );
}

pub fn shard_indexes() -> Vec<Case> {
    let mut valid = model_case("a valid one-shard index".into(), &[], |d| {
        one_shard_index(d, None)
    });
    valid.expect = Expect::Runs;
    vec![
        valid,
        model_case(
            "index listing a tensor its shard lacks".into(),
            &[
                "model.safetensors.index.json",
                "`ghost`",
                "which does not hold it",
            ],
            |d| one_shard_index(d, Some("ghost")),
        ),
        // Quadratic before: 10,000 distinct names took seconds to deduplicate. Now the first
        // missing shard is reported at once.
        index_case(
            "index naming 10,000 shards".into(),
            10_000,
            10_000,
            &["s0", "No such file"],
        ),
        index_case(
            "index naming 100,000 shards".into(),
            100_000,
            100_000,
            &[
                "model.safetensors.index.json",
                "more than 16384 shard files",
            ],
        ),
        model_case(
            "index of 5 MiB".into(),
            &["model.safetensors.index.json", "-byte limit for this file"],
            |d| {
                std::fs::remove_file(d.join("model.safetensors")).expect("remove");
                write(
                    &d.join("model.safetensors.index.json"),
                    &padded_json(5 << 20),
                );
            },
        ),
        model_case(
            "index is a FIFO".into(),
            &["model.safetensors.index.json", "a FIFO"],
            |d| {
                std::fs::remove_file(d.join("model.safetensors")).expect("remove");
                mkfifo(&d.join("model.safetensors.index.json"));
            },
        ),
    ]
}
