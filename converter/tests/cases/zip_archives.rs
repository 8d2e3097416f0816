//! Malformed zip archives.

use std::io::{Cursor, Write};

use super::*;

pub fn zip_compressed() -> Vec<Case> {
    let mut out = Vec::new();
    // Marked as deflated in both headers, as a zip tool recompressing it would.
    for (entry, also_local) in [("data.pkl", true), ("data/0", true), ("data/0", false)] {
        let mut z = real_zip();
        let name = format!("{REAL_PREFIX}/{entry}");
        let (cd, local) = record(&z, &name);
        z[cd + 10] = 8;
        if also_local {
            z[local + 8] = 8;
        }
        out.push(Case::refused(
            format!("{entry} compressed (local header too: {also_local})"),
            z,
            &[&name, "compressed"],
        ));
    }
    // Only the local header says deflate: the two headers disagree.
    let mut z = real_zip();
    let name = format!("{REAL_PREFIX}/data/1");
    let (_, local) = record(&z, &name);
    z[local + 8] = 8;
    out.push(Case::refused(
        "only the local header says deflate",
        z,
        &[&name, "compression method 8"],
    ));
    out
}

pub fn stored() -> zip::write::SimpleFileOptions {
    zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored)
}

/// A zip of `entries` (name, bytes), stored.
pub fn zip_of(entries: &[(&str, &[u8])]) -> Vec<u8> {
    let mut w = zip::ZipWriter::new(Cursor::new(Vec::new()));
    for (name, bytes) in entries {
        w.start_file(*name, stored()).unwrap();
        w.write_all(bytes).unwrap();
    }
    w.finish().unwrap().into_inner()
}

pub fn zip_duplicates() -> Vec<Case> {
    // Two storages: rename data/1 to data/0 (same length) in both headers of the real file.
    let mut z = real_zip();
    let (from, to) = (
        format!("{REAL_PREFIX}/data/1"),
        format!("{REAL_PREFIX}/data/0"),
    );
    let (cd, local) = record(&z, &from);
    z[cd + 46..cd + 46 + to.len()].copy_from_slice(to.as_bytes());
    z[local + 30..local + 30 + to.len()].copy_from_slice(to.as_bytes());
    let twice = format!("`{to}` appears twice");
    let storages = Case::refused("two data/0 entries", z, &[]).any_of(&[&twice, "duplicate"]);
    // Two pickles: which one would a reader believe?
    let mut z = zip_of(&[
        ("a/data.pkl", &Pk::new().raw(b"}").stop()),
        ("a/data.pkX", &Pk::new().raw(b"]").stop()),
    ]);
    let (cd, local) = record(&z, "a/data.pkX");
    z[cd + 46 + 9] = b'l';
    z[local + 30 + 9] = b'l';
    let pickles = Case::refused("two data.pkl entries", z, &[])
        .any_of(&["`a/data.pkl` appears twice", "duplicate"]);
    vec![storages, pickles]
}

pub fn zip_disagreeing_headers() -> Vec<Case> {
    let mut out = Vec::new();
    // The local header names another file.
    let mut z = real_zip();
    let name = format!("{REAL_PREFIX}/data.pkl");
    let (_, local) = record(&z, &name);
    z[local + 30 + name.len() - 1] = b'x';
    out.push(Case::refused(
        "a local header naming another file",
        z,
        &[&name, "local header at byte 0 names", "central directory"],
    ));
    // The central directory points into the middle of another entry's payload.
    let mut z = real_zip();
    let (cd, local) = record(&z, &format!("{REAL_PREFIX}/data/3"));
    z[cd + 42..cd + 46].copy_from_slice(&((local + 100) as u32).to_le_bytes());
    out.push(
        Case::refused("a central record pointing into a payload", z, &[])
            .any_of(&["no local header at byte", "Invalid local file header"]),
    );
    // Two central records point at the same local header and bytes.
    let mut z = real_zip();
    let (_, local0) = record(&z, &format!("{REAL_PREFIX}/data/3"));
    let (cd1, _) = record(&z, &format!("{REAL_PREFIX}/data/4"));
    z[cd1 + 42..cd1 + 46].copy_from_slice(&(local0 as u32).to_le_bytes());
    out.push(
        Case::refused("two central records sharing a payload", z, &[]).any_of(&[
            "central directory",
            "overlap",
            "zip",
        ]),
    );
    // An entry size that runs past the end of the file.
    let mut z = real_zip();
    let (cd, _) = record(&z, &format!("{REAL_PREFIX}/data/2"));
    for off in [20, 24] {
        z[cd + off..cd + off + 4].copy_from_slice(&0x7fff_0000u32.to_le_bytes());
    }
    out.push(
        Case::refused("an entry size past the end of the file", z, &[])
            .any_of(&["truncated", "zip"]),
    );
    out
}

pub fn zip_foreign_layouts() -> Vec<Case> {
    let pk = Pk::new().raw(b"}").stop();
    vec![
        Case::refused(
            "an entry outside the archive folder",
            zip_of(&[("data.pkl", &pk)]),
            &["not inside a folder"],
        ),
        Case::refused(
            "two folders",
            zip_of(&[("a/data.pkl", &pk), ("b/data/0", b"xx")]),
            &["two folders"],
        ),
        Case::refused(
            "a TorchScript archive",
            zip_of(&[("m/data.pkl", &pk), ("m/constants.pkl", &pk)]),
            &["TorchScript"],
        ),
        Case::refused(
            "big-endian storages",
            zip_of(&[("m/data.pkl", &pk), ("m/byteorder", b"big")]),
            &["byte order `big`"],
        ),
        Case::refused(
            "no data.pkl",
            zip_of(&[("m/version", b"3")]),
            &["no `<folder>/data.pkl`"],
        ),
    ]
}

pub fn zip_entry_counts() -> Vec<Case> {
    // The end-of-central-directory record claims 60,000 entries (the directory holds 4): refused
    // before the zip crate allocates for them.
    let mut z = Ckpt::new().bytes();
    let eocd = z.len() - 22;
    assert_eq!(&z[eocd..eocd + 4], b"PK\x05\x06");
    z[eocd + 8..eocd + 12].copy_from_slice(&[0x60, 0xea, 0x60, 0xea]);
    let classic = Case::refused(
        "a central directory claiming 60,000 entries",
        z,
        &["claims 60000 entries (at most 50000)"],
    );
    // The same claim in a zip64 end record, which the classic one (0xFFFF entries) defers to;
    // with the true count there, the file converts.
    vec![
        classic,
        Case::refused(
            "a zip64 central directory claiming 100,000 entries",
            with_zip64_end(Ckpt::new().bytes(), 100_000),
            &["claims 100000 entries (at most 50000)"],
        ),
        Case::converts(
            "a zip64 end record with the true count",
            with_zip64_end(Ckpt::new().bytes(), 4),
        )
        .args(&["--heads", "1"]),
    ]
}

/// `z` with a zip64 end-of-central-directory record (and locator) claiming `entries`, and the
/// classic record's counts set to 0xFFFF, "see the zip64 record".
pub fn with_zip64_end(z: Vec<u8>, entries: u64) -> Vec<u8> {
    let eocd = z.len() - 22;
    let u32_at = |at: usize| u64::from(u32::from_le_bytes(z[at..at + 4].try_into().unwrap()));
    let (cd_size, cd_offset) = (u32_at(eocd + 12), u32_at(eocd + 16));
    let mut zip64 = z[..eocd].to_vec();
    let record_at = zip64.len() as u64;
    zip64.extend(b"PK\x06\x06");
    zip64.extend(44u64.to_le_bytes()); // size of the rest of the record
    zip64.extend([45, 0, 45, 0]); // versions made by and needed
    zip64.extend([0; 8]); // this disk, the directory's disk
    zip64.extend(entries.to_le_bytes()); // entries on this disk
    zip64.extend(entries.to_le_bytes()); // entries in all
    zip64.extend(cd_size.to_le_bytes());
    zip64.extend(cd_offset.to_le_bytes());
    zip64.extend(b"PK\x06\x07");
    zip64.extend(0u32.to_le_bytes());
    zip64.extend(record_at.to_le_bytes());
    zip64.extend(1u32.to_le_bytes());
    let mut end = z[eocd..].to_vec();
    end[8..12].copy_from_slice(&[0xff; 4]);
    zip64.extend(end);
    zip64
}
