//! DeepSpeed ZeRO inputs that lie: cut and patched from the real fixtures DeepSpeed wrote
//! (`fixtures/training/zero*`). The unchanged copies convert (the controls), so each refusal is
//! caused by its one change.

use std::io::{Cursor, Read, Write};

use super::Case;

const TAG: &str = "global_step2";

/// Every file of a fixture's checkpoint folder, relative to it.
pub fn checkpoint(case: &str) -> Vec<(String, Vec<u8>)> {
    let root = testkit::fixtures()
        .join("training")
        .join(case)
        .join("checkpoint");
    let mut out = vec![(
        "latest".to_string(),
        std::fs::read(root.join("latest")).unwrap(),
    )];
    let mut names: Vec<String> = std::fs::read_dir(root.join(TAG))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    for n in names {
        let bytes = std::fs::read(root.join(TAG).join(&n)).unwrap();
        out.push((format!("{TAG}/{n}"), bytes));
    }
    out
}

fn set(files: &mut Vec<(String, Vec<u8>)>, name: &str, bytes: Vec<u8>) {
    files.retain(|(n, _)| n != name);
    files.push((name.to_string(), bytes));
}

fn without(mut files: Vec<(String, Vec<u8>)>, name: &str) -> Vec<(String, Vec<u8>)> {
    files.retain(|(n, _)| n != name);
    files
}

fn bytes_of(files: &[(String, Vec<u8>)], name: &str) -> Vec<u8> {
    files.iter().find(|(n, _)| n == name).unwrap().1.clone()
}

/// A torch zip with its `*/data.pkl` passed through `edit` (every entry re-stored as is).
fn edit_pickle(zip_bytes: &[u8], edit: impl Fn(&[u8]) -> Vec<u8>) -> Vec<u8> {
    edit_entries(zip_bytes, |name, data| {
        if name.ends_with("/data.pkl") {
            edit(&data)
        } else {
            data
        }
    })
}

/// A torch zip with every entry passed through `edit(name, bytes)`.
fn edit_entries(zip_bytes: &[u8], edit: impl Fn(&str, Vec<u8>) -> Vec<u8>) -> Vec<u8> {
    use zip::write::SimpleFileOptions;
    let opts = SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    let mut a = zip::ZipArchive::new(Cursor::new(zip_bytes)).unwrap();
    let mut z = zip::ZipWriter::new(Cursor::new(Vec::new()));
    for i in 0..a.len() {
        let mut f = a.by_index(i).unwrap();
        let name = f.name().unwrap().to_string();
        let mut data = Vec::new();
        f.read_to_end(&mut data).unwrap();
        z.start_file(name.clone(), opts).unwrap();
        z.write_all(&edit(&name, data)).unwrap();
    }
    z.finish().unwrap().into_inner()
}

/// `zero2-fp32-w5` as DeepSpeed before 0.19.8 saved it: the last rank's slice keeps the group's
/// 6 alignment-padding elements (size 6120 -> 6126), as every other rank's does. Its storage
/// already holds 6126 (0.19.8 saves a narrowed view of the padded partition).
pub fn padded_last_slice() -> Vec<(String, Vec<u8>)> {
    let mut files = checkpoint("zero2-fp32-w5");
    let last = format!("{TAG}/zero_pp_rank_4_mp_rank_00_optim_states.pt");
    let bytes = bytes_of(&files, &last);
    // 6120 as a pickle BININT2 (`M` + little-endian u16): the partition's size, the one 6120 in
    // the pickle (storages and Adam moments hold 6126).
    let patched = edit_entries(&bytes, |name, data| {
        if name.ends_with("/data.pkl") {
            assert_eq!(data.windows(3).filter(|w| *w == b"M\xe8\x17").count(), 1);
            let mut out = Vec::with_capacity(data.len());
            let mut i = 0;
            while i < data.len() {
                if data[i..].starts_with(b"M\xe8\x17") {
                    out.extend_from_slice(b"M\xee\x17");
                    i += 3;
                } else {
                    out.push(data[i]);
                    i += 1;
                }
            }
            out
        } else {
            data
        }
    });
    set(&mut files, &last, patched);
    files
}

/// `zero2-fp32-w5` with every storage but the fp32 partitions overwritten with NaN bytes: the
/// Adam moments and the module copy (fp32 here, equal to the masters). A conversion that read
/// either would not reproduce the logits.
pub fn poisoned_moments_and_module() -> Vec<(String, Vec<u8>)> {
    let files = checkpoint("zero2-fp32-w5");
    let mut out = Vec::new();
    for (name, bytes) in files {
        if !name.ends_with(".pt") {
            out.push((name, bytes));
            continue;
        }
        let pkl = {
            let mut a = zip::ZipArchive::new(Cursor::new(&bytes[..])).unwrap();
            let i = (0..a.len())
                .find(|&i| {
                    a.by_index(i)
                        .unwrap()
                        .name()
                        .unwrap()
                        .ends_with("/data.pkl")
                })
                .unwrap();
            let mut d = Vec::new();
            a.by_index(i).unwrap().read_to_end(&mut d).unwrap();
            d
        };
        // The storage key the fp32 partition's persistent id names (a one-character
        // BINUNICODE right after the list's name); model states keep none.
        let keep = super::find(&pkl, b"single_partition_of_fp32_groups").map(|at| {
            let k = at + super::find(&pkl[at..], b"X\x01\x00\x00\x00").unwrap() + 5;
            format!("/data/{}", pkl[k] as char)
        });
        let (hit, kept) = (std::cell::Cell::new(0), std::cell::Cell::new(0));
        let poisoned = edit_entries(&bytes, |entry, data| {
            let storage = entry.contains("/data/");
            if storage && !matches!(keep.as_deref(), Some(k) if entry.ends_with(k)) {
                hit.set(hit.get() + 1);
                vec![0xff; data.len()]
            } else {
                kept.set(kept.get() + usize::from(storage));
                data
            }
        });
        // Optimizer files: step, exp_avg, exp_avg_sq poisoned, the partition kept; model
        // states: the module copy (one flat storage all its tensors view) poisoned.
        let want = if keep.is_some() { (3, 1) } else { (1, 0) };
        assert_eq!((hit.get(), kept.get()), want, "{name}");
        out.push((name, poisoned));
    }
    out
}

/// `from` replaced by `to` at its first occurrence after `after` then `anchor`.
fn patch_after(p: &[u8], after: &[u8], anchor: &[u8], from: &[u8], to: &[u8]) -> Vec<u8> {
    let a = super::find(p, after).unwrap();
    let b = a + super::find(&p[a..], anchor).unwrap();
    let c = b + super::find(&p[b..], from).unwrap();
    let mut out = p[..c].to_vec();
    out.extend_from_slice(to);
    out.extend_from_slice(&p[c + from.len()..]);
    out
}

/// The wte shape in `param_shapes` (`K\x80K\x20` = (128, 32)) replaced by `to`.
fn wte_shape(model: &[u8], to: &[u8]) -> Vec<u8> {
    edit_pickle(model, |p| {
        patch_after(
            p,
            b"param_shapes",
            b"transformer.wte.weight",
            b"K\x80K\x20",
            to,
        )
    })
}

fn dir_case(name: &str, files: Vec<(String, Vec<u8>)>, file: &str, needles: &[&str]) -> Case {
    Case::dir_refused(name, files, file, needles).args(&["--heads", "4"])
}

pub fn zero_checkpoints() -> Vec<Case> {
    let w5 = checkpoint("zero2-fp32-w5");
    let z3 = checkpoint("zero3-bf16-w3");
    let model12 = format!("{TAG}/mp_rank_00_model_states.pt");
    let model3 = format!("{TAG}/zero_pp_rank_0_mp_rank_00_model_states.pt");
    let mut out = Vec::new();
    for (name, files) in [
        ("zero: stage 2 control", &w5),
        ("zero: stage 3 control", &z3),
    ] {
        let mut c = dir_case(name, files.clone(), "", &[]);
        c.expect = super::Expect::Converts;
        out.push(c);
    }
    let mut latest = |name: &str, text: &[u8], needles: &[&str]| {
        let mut f = w5.clone();
        set(&mut f, "latest", text.to_vec());
        out.push(dir_case(name, f, "latest", needles));
    };
    latest("zero: latest climbs out", b"../x", &["never a path"]);
    latest("zero: latest absolute", b"/etc", &["never a path"]);
    latest("zero: latest is dot-dot", b"..", &["never a path"]);
    latest("zero: latest empty", b"\n", &["never a path"]);
    out.push(dir_case(
        "zero: latest names a missing tag",
        {
            let mut f = w5.clone();
            set(&mut f, "latest", b"global_step9".to_vec());
            f
        },
        "global_step9",
        &["does not exist"],
    ));
    out.push(dir_case(
        "zero: a rank file missing from the grid",
        without(
            w5.clone(),
            &format!("{TAG}/zero_pp_rank_2_mp_rank_00_optim_states.pt"),
        ),
        TAG,
        &["zero_pp_rank_2_mp_rank_00_optim_states.pt"],
    ));
    out.push(
        dir_case(
            "zero: the last rank missing (world size lies)",
            without(
                w5.clone(),
                &format!("{TAG}/zero_pp_rank_4_mp_rank_00_optim_states.pt"),
            ),
            "",
            &["5"],
        )
        .any_of(&["dp_world_size", "partition_count"]),
    );
    out.push(dir_case(
        "zero: model states missing",
        without(w5.clone(), &model12),
        TAG,
        &["no model states"],
    ));
    out.push(dir_case(
        "zero: stage 3 rank missing",
        without(
            z3.clone(),
            &format!("{TAG}/bf16_zero_pp_rank_1_mp_rank_00_optim_states.pt"),
        ),
        TAG,
        &["bf16_zero_pp_rank_1_mp_rank_00_optim_states.pt"],
    ));
    // param_shapes says more than the partitions hold.
    for (name, files, model, to) in [
        (
            "zero: wte longer than its partitions",
            &w5,
            &model12,
            &b"K\xffK\x20"[..],
        ),
        ("zero: stage 3 wte longer", &z3, &model3, b"K\xffK\x20"),
        (
            "zero: huge param_shapes",
            &w5,
            &model12,
            b"J\xff\xff\xff\x7fJ\xff\xff\xff\x7f",
        ),
        (
            "zero: stage 3 huge param_shapes",
            &z3,
            &model3,
            b"J\xff\xff\xff\x7fJ\xff\xff\xff\x7f",
        ),
    ] {
        let mut f = files.clone();
        set(&mut f, model, wte_shape(&bytes_of(files, model), to));
        out.push(dir_case(name, f, "", &["param_shapes"]).any_of(&["shorter", "overflows"]));
    }
    // param_shapes says less than the partitions hold: more than ZeRO's padding is left over.
    for (name, files, model) in [
        ("zero: wte shorter than its partitions", &w5, &model12),
        ("zero: stage 3 wte shorter", &z3, &model3),
    ] {
        let mut f = files.clone();
        set(
            &mut f,
            model,
            wte_shape(&bytes_of(files, model), b"K\x40K\x20"),
        );
        out.push(dir_case(name, f, "", &["more than param_shapes needs"]));
    }
    out
}
