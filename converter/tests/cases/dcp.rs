//! torch Distributed Checkpoint folders (`.metadata` + `__R_0.distcp`) built opcode by opcode:
//! a valid tiny Hugging Face GPT-2 saved as accelerate does (`model.` + the HF name, every
//! tensor split in two along dimension 0 over two ranks' files), and cases that change it in
//! one place.

use super::{torch_zip, Case, Pk, T};

/// One tensor: name, global shape, chunks as (offsets, sizes).
#[derive(Clone)]
pub struct Tensor {
    pub name: String,
    pub shape: Vec<u64>,
    pub chunks: Vec<(Vec<u64>, Vec<u64>)>,
}

/// A DCP folder to build, and the one thing a case changes.
#[derive(Clone)]
pub struct Dcp {
    pub tensors: Vec<Tensor>,
    /// `torch.<dtype>` of every tensor.
    pub dtype: &'static str,
    /// The first chunk's `relative_path`, instead of its data file.
    pub first_path: Option<String>,
    /// Added to the first chunk's `length`.
    pub first_extra_length: u64,
    /// The first chunk's `transform_descriptors` (pickle opcodes), instead of None.
    pub first_transform: Option<Vec<u8>>,
    /// The first chunk's item bytes, instead of its torch.save zip.
    pub first_item: Option<Vec<u8>>,
    /// A bytes item `common_state/shard_0_1` (megatron-core's args) at this byte range of
    /// `__0_0.distcp`.
    pub common_state: Option<(u64, u64)>,
}

fn split0(name: &str, shape: &[u64]) -> Tensor {
    let half = shape[0] / 2;
    let mut rest = shape.to_vec();
    rest[0] = half;
    let mut second = shape.to_vec();
    second[0] = shape[0] - half;
    let mut at = vec![0; shape.len()];
    let first = (at.clone(), rest);
    at[0] = half;
    Tensor {
        name: format!("model.{name}"),
        shape: shape.to_vec(),
        chunks: vec![first, (at, second)],
    }
}

impl Dcp {
    /// GPT-2, 1 layer, hidden 4, vocabulary 8, 4 positions (convert with `--heads 1`).
    pub fn gpt2() -> Dcp {
        let h = 4;
        let shapes: Vec<(&str, Vec<u64>)> = vec![
            ("transformer.wte.weight", vec![8, h]),
            ("transformer.wpe.weight", vec![4, h]),
            ("transformer.h.0.ln_1.weight", vec![h]),
            ("transformer.h.0.ln_1.bias", vec![h]),
            ("transformer.h.0.attn.c_attn.weight", vec![h, 3 * h]),
            ("transformer.h.0.attn.c_attn.bias", vec![3 * h]),
            ("transformer.h.0.attn.c_proj.weight", vec![h, h]),
            ("transformer.h.0.attn.c_proj.bias", vec![h]),
            ("transformer.h.0.ln_2.weight", vec![h]),
            ("transformer.h.0.ln_2.bias", vec![h]),
            ("transformer.h.0.mlp.c_fc.weight", vec![h, 4 * h]),
            ("transformer.h.0.mlp.c_fc.bias", vec![4 * h]),
            ("transformer.h.0.mlp.c_proj.weight", vec![4 * h, h]),
            ("transformer.h.0.mlp.c_proj.bias", vec![h]),
            ("transformer.ln_f.weight", vec![h]),
            ("transformer.ln_f.bias", vec![h]),
        ];
        Dcp {
            tensors: shapes.iter().map(|(n, s)| split0(n, s)).collect(),
            dtype: "float32",
            first_path: None,
            first_extra_length: 0,
            first_transform: None,
            first_item: None,
            common_state: None,
        }
    }

    /// The first tensor's chunks replaced.
    pub fn with_chunks(chunks: Vec<(Vec<u64>, Vec<u64>)>) -> Dcp {
        let mut d = Dcp::gpt2();
        d.tensors[0].chunks = chunks;
        d
    }

    /// `.metadata` and the two data files.
    pub fn files(&self) -> Vec<(String, Vec<u8>)> {
        let mut data = [Vec::new(), Vec::new()];
        // (fqn, offsets, file, offset, length) per chunk.
        let mut entries = Vec::new();
        let mut first = true;
        for t in &self.tensors {
            for (k, (off, sizes)) in t.chunks.iter().enumerate() {
                let item = match (&self.first_item, first) {
                    (Some(b), true) => b.clone(),
                    _ => item(sizes),
                };
                let f = k % 2;
                let start = data[f].len() as u64;
                data[f].extend_from_slice(&item);
                let mut len = item.len() as u64;
                if first {
                    len += self.first_extra_length;
                }
                let path = match (&self.first_path, first) {
                    (Some(p), true) => p.clone(),
                    _ => format!("__{f}_0.distcp"),
                };
                entries.push((t.name.clone(), off.clone(), path, start, len, first));
                first = false;
            }
        }
        let mut p = Pk::new();
        obj(&mut p, "metadata", "Metadata");
        p.raw(b"}(").str("state_dict_metadata").raw(b"}(");
        for t in &self.tensors {
            p.str(&t.name);
            self.tensor_metadata(&mut p, t);
        }
        if self.common_state.is_some() {
            p.str("common_state/shard_0_1");
            obj(&mut p, "metadata", "BytesStorageMetadata");
        }
        p.raw(b"u").str("storage_data").raw(b"}(");
        if let Some((start, len)) = self.common_state {
            obj(&mut p, "metadata", "MetadataIndex");
            p.raw(b"}(").str("fqn").str("common_state/shard_0_1");
            p.str("offset").raw(b"N").str("index").raw(b"Nub");
            obj(&mut p, "filesystem", "_StorageInfo");
            p.raw(b"}(").str("relative_path").str("__0_0.distcp");
            p.str("offset")
                .int(start as i64)
                .str("length")
                .int(len as i64);
            p.str("transform_descriptors").raw(b"Nub");
        }
        for (fqn, off, path, start, len, first) in &entries {
            obj(&mut p, "metadata", "MetadataIndex");
            p.raw(b"}(").str("fqn").str(fqn).str("offset");
            size(&mut p, off);
            p.str("index").raw(b"Nub");
            obj(&mut p, "filesystem", "_StorageInfo");
            p.raw(b"}(").str("relative_path").str(path);
            p.str("offset")
                .int(*start as i64)
                .str("length")
                .int(*len as i64);
            p.str("transform_descriptors");
            match (&self.first_transform, first) {
                (Some(t), true) => p.raw(t),
                _ => p.raw(b"N"),
            };
            p.raw(b"ub");
        }
        p.raw(b"uub");
        vec![
            (".metadata".into(), p.stop()),
            ("__0_0.distcp".into(), data[0].clone()),
            ("__1_0.distcp".into(), data[1].clone()),
        ]
    }

    fn tensor_metadata(&self, p: &mut Pk, t: &Tensor) {
        obj(p, "metadata", "TensorStorageMetadata");
        p.raw(b"}(").str("properties");
        obj(p, "metadata", "TensorProperties");
        p.mark()
            .global("torch", self.dtype)
            .raw(b"N\x89N\x89Nt")
            .raw(b"b");
        p.str("size");
        size(p, &t.shape);
        p.str("chunks").raw(b"](");
        for (off, sizes) in &t.chunks {
            obj(p, "metadata", "ChunkStorageMetadata");
            p.raw(b"}(").str("offsets");
            size(p, off);
            p.str("sizes");
            size(p, sizes);
            p.raw(b"ub");
        }
        p.raw(b"eub");
    }

    /// A case over this folder, refused naming `file` with every needle.
    pub fn refused(&self, name: &str, file: &str, needles: &[&str]) -> Case {
        Case::dir_refused(format!("dcp: {name}"), self.files(), file, needles)
            .args(&["--heads", "1"])
    }
}

/// `cls()` with its state to follow: `torch.distributed.checkpoint.<module>.<cls>`, NEWOBJ.
fn obj(p: &mut Pk, module: &str, cls: &str) {
    p.global(&format!("torch.distributed.checkpoint.{module}"), cls)
        .raw(b")\x81");
}

/// `torch.Size((…))`.
fn size(p: &mut Pk, v: &[u64]) {
    let v: Vec<i64> = v.iter().map(|&x| x as i64).collect();
    p.global("torch", "Size")
        .mark()
        .tuple_of_ints(&v)
        .raw(b"tR");
}

/// A chunk's item: `torch.save` of a float32 tensor of `sizes` (small finite values).
fn item(sizes: &[u64]) -> Vec<u8> {
    let numel = sizes.iter().try_fold(1u64, |a, &d| a.checked_mul(d));
    // A chunk claiming more than the test can hold gets a one-element item: refused first.
    let Some(numel) = numel.filter(|&n| n <= 4096) else {
        return item(&[1]);
    };
    let size: Vec<i64> = sizes.iter().map(|&x| x as i64).collect();
    let mut t = T::half("0", numel as i64, 0, &size);
    t.class = "FloatStorage";
    let pickle = Pk::new().tensor(&t).stop();
    let data: Vec<u8> = (0..numel)
        .flat_map(|i| (0.01 * (i % 7) as f32).to_le_bytes())
        .collect();
    torch_zip(&pickle, &[("0", &data)])
}

/// A `.metadata` whose one tensor lists `n` chunks, each the same memoized object.
fn memo_chunks(n: usize) -> Vec<(String, Vec<u8>)> {
    let d = Dcp::gpt2();
    let mut files = d.files();
    let mut p = Pk::new();
    obj(&mut p, "metadata", "Metadata");
    p.raw(b"}(")
        .str("state_dict_metadata")
        .raw(b"}(")
        .str("model.x");
    obj(&mut p, "metadata", "TensorStorageMetadata");
    p.raw(b"}(").str("properties");
    obj(&mut p, "metadata", "TensorProperties");
    p.mark().global("torch", "float32").raw(b"Nt").raw(b"b");
    p.str("size");
    size(&mut p, &[1]);
    p.str("chunks").raw(b"](");
    obj(&mut p, "metadata", "ChunkStorageMetadata");
    p.raw(b"}(").str("offsets");
    size(&mut p, &[0]);
    p.str("sizes");
    size(&mut p, &[1]);
    p.raw(b"ub").raw(b"q\x01");
    for _ in 1..n {
        p.raw(b"h\x01");
    }
    p.raw(b"eub")
        .raw(b"u")
        .str("storage_data")
        .raw(b"}")
        .raw(b"ub");
    files[0].1 = p.stop();
    files
}

pub fn dcp_folders() -> Vec<Case> {
    let meta = ".metadata";
    let mut out = vec![Case {
        expect: super::Expect::Converts,
        ..Dcp::gpt2().refused("control", "", &[])
    }];
    let w = |c: Vec<(Vec<u64>, Vec<u64>)>| Dcp::with_chunks(c);
    out.push(
        w(vec![(vec![0, 0], vec![5, 4]), (vec![4, 0], vec![4, 4])]).refused(
            "chunks that overlap",
            meta,
            &["transformer.wte.weight", "overlap"],
        ),
    );
    out.push(
        w(vec![(vec![0, 0], vec![3, 4]), (vec![4, 0], vec![4, 4])]).refused(
            "chunks that leave a hole",
            meta,
            &["transformer.wte.weight", "holes"],
        ),
    );
    out.push(
        w(vec![(vec![0, 0], vec![4, 4]), (vec![4, 0], vec![5, 4])]).refused(
            "a chunk past the global shape",
            meta,
            &["transformer.wte.weight", "exceeds the global shape"],
        ),
    );
    out.push(
        w(vec![
            (vec![0, 0], vec![4, 4]),
            (vec![4, 0], vec![4, u64::MAX >> 1]),
        ])
        .refused(
            "a chunk of 2^63 columns",
            meta,
            &["exceeds the global shape"],
        ),
    );
    let mut d = Dcp::gpt2();
    d.first_extra_length = 1 << 40;
    out.push(d.refused(
        "a chunk past the end of its file",
        meta,
        &["__0_0.distcp", "bytes"],
    ));
    for (what, path) in [
        ("../", "../__0_0.distcp"),
        ("absolute", "/etc/passwd"),
        ("a subfolder", "sub/__0_0.distcp"),
    ] {
        let mut d = Dcp::gpt2();
        d.first_path = Some(path.into());
        out.push(d.refused(
            &format!("relative_path {what}"),
            meta,
            &["not a plain file name"],
        ));
    }
    let mut d = Dcp::gpt2();
    d.first_path = Some("__9_0.distcp".into());
    out.push(d.refused("relative_path naming a missing file", "__9_0.distcp", &[]));
    // megatron-core's stacked layers: 2^40 layers, each a view; the item holds one element.
    let mut d = Dcp::gpt2();
    d.tensors = vec![Tensor {
        name: "decoder.layers.mlp.linear_fc2.bias".into(),
        shape: vec![1 << 40, 1],
        chunks: vec![(vec![0, 0], vec![1 << 40, 1])],
    }];
    out.push(d.refused(
        "2^40 stacked layers",
        meta,
        &["sizes [1099511627776, 1]", "needs more bytes than its item"],
    ));
    let mut d = Dcp::gpt2();
    d.common_state = Some((100, 1 << 40));
    out.push(d.refused(
        "a bytes item past the end of its file",
        "__0_0.distcp",
        &["claims bytes 100..1099511627876"],
    ));
    let mut d = Dcp::gpt2();
    d.dtype = "complex64";
    out.push(d.refused(
        "an unknown dtype",
        meta,
        &["torch.complex64", "not a dtype"],
    ));
    let mut d = Dcp::gpt2();
    d.first_transform = Some(b"]q\x00X\x04\x00\x00\x00zstda".to_vec());
    out.push(d.refused(
        "a storage transform",
        meta,
        &["transforms", "not supported"],
    ));
    let mut d = Dcp::gpt2();
    d.first_item = Some(vec![0u8; 256]);
    out.push(d.refused(
        "a raw tensor item",
        "__0_0.distcp",
        &["not a torch.save zip"],
    ));
    let mut d = Dcp::gpt2();
    d.first_item = Some(item(&[3, 4]));
    out.push(d.refused(
        "an item of the wrong shape",
        "__0_0.distcp",
        &["shape [3, 4]", "[4, 4]"],
    ));
    let mut d = Dcp::gpt2();
    d.tensors[0].chunks.truncate(1);
    d.tensors[0].chunks.push((vec![4, 0], vec![4, 4]));
    let mut files = d.files();
    // The second chunk's storage entry removed: its fqn renamed in storage_data only.
    let m = &mut files[0].1;
    let needle = b"model.transformer.wte.weight";
    let at: Vec<usize> = (0..m.len() - needle.len())
        .filter(|&i| &m[i..i + needle.len()] == needle)
        .collect();
    m[at[2] + 6] = b'T';
    out.push(
        Case::dir_refused(
            "dcp: a chunk without storage",
            files,
            meta,
            &["storage_data has no entry"],
        )
        .args(&["--heads", "1"]),
    );
    out.push(
        Case::dir_refused(
            "dcp: 200,000 chunks of one memoized object",
            memo_chunks(200_000),
            meta,
            &["chunks"],
        )
        .args(&["--heads", "1"]),
    );
    out.push(
        Case::dir_refused("dcp: a million chunks", memo_chunks(1_000_000), meta, &[])
            .args(&["--heads", "1"]),
    );
    out
}
