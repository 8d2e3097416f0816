//! Builders for hostile inputs: pickles opcode by opcode (`Pk`), torch zip files, and a
//! complete, valid one-layer CPM checkpoint (`Ckpt`) that each case changes in one place.

use std::io::{Cursor, Write};

pub use cpm_torch::pickle::Op;
// ---------------------------------------------------------------------------------------------
// Pickles, opcode by opcode (protocol 2, as torch.save writes)

#[derive(Clone, Default)]
pub struct Pk(pub Vec<u8>);

impl Pk {
    pub fn new() -> Pk {
        Pk(vec![Op::Proto.byte(), 0x02])
    }
    pub fn raw(&mut self, b: &[u8]) -> &mut Pk {
        self.0.extend_from_slice(b);
        self
    }
    /// Opcodes without operands.
    pub fn ops(&mut self, ops: &[Op]) -> &mut Pk {
        self.0.extend(ops.iter().map(|o| o.byte()));
        self
    }
    pub fn mark(&mut self) -> &mut Pk {
        self.ops(&[Op::Mark])
    }
    pub fn str(&mut self, s: &str) -> &mut Pk {
        self.ops(&[Op::BinUnicode])
            .raw(&(s.len() as u32).to_le_bytes())
            .raw(s.as_bytes())
    }
    pub fn int(&mut self, i: i64) -> &mut Pk {
        if (0..256).contains(&i) {
            self.raw(&[Op::BinInt1.byte(), i as u8])
        } else if i32::try_from(i).is_ok() {
            self.ops(&[Op::BinInt]).raw(&(i as i32).to_le_bytes())
        } else {
            self.raw(&[Op::Long1.byte(), 8]).raw(&i.to_le_bytes())
        }
    }
    pub fn global(&mut self, module: &str, name: &str) -> &mut Pk {
        self.ops(&[Op::Global])
            .raw(module.as_bytes())
            .raw(b"\n")
            .raw(name.as_bytes())
            .raw(b"\n")
    }
    pub fn tuple_of_ints(&mut self, v: &[i64]) -> &mut Pk {
        self.mark();
        for &i in v {
            self.int(i);
        }
        self.ops(&[Op::Tuple])
    }
    /// `torch._utils._rebuild_tensor_v2(storage, offset, size, stride, False, OrderedDict())`.
    pub fn tensor(&mut self, t: &T) -> &mut Pk {
        self.global("torch._utils", "_rebuild_tensor_v2").mark();
        self.mark()
            .str("storage")
            .global("torch", t.class)
            .str(t.key)
            .str("cpu")
            .int(t.numel)
            .ops(&[Op::Tuple, Op::BinPersId])
            .int(t.offset);
        self.tuple_of_ints(&t.size).tuple_of_ints(&t.stride);
        self.ops(&[Op::NewFalse])
            .global("collections", "OrderedDict")
            .ops(&[Op::EmptyTuple, Op::Reduce])
            .ops(&[Op::Tuple, Op::Reduce])
    }
    pub fn stop(&mut self) -> Vec<u8> {
        self.ops(&[Op::Stop]);
        self.0.clone()
    }
}

/// One tensor's persistent id and view.
#[derive(Clone)]
pub struct T {
    pub class: &'static str,
    pub key: &'static str,
    pub numel: i64,
    pub offset: i64,
    pub size: Vec<i64>,
    pub stride: Vec<i64>,
}

impl T {
    pub fn half(key: &'static str, numel: i64, offset: i64, size: &[i64]) -> T {
        let mut stride = vec![1i64; size.len()];
        for d in (0..size.len().saturating_sub(1)).rev() {
            stride[d] = stride[d + 1] * size[d + 1];
        }
        T {
            class: "HalfStorage",
            key,
            numel,
            offset,
            size: size.to_vec(),
            stride,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Zip files

/// A torch zip file: `archive/data.pkl`, `archive/byteorder`, `archive/data/<key>` (STORED).
pub fn torch_zip(pickle: &[u8], storages: &[(&str, &[u8])]) -> Vec<u8> {
    use zip::write::SimpleFileOptions;
    let opts = SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    let mut z = zip::ZipWriter::new(Cursor::new(Vec::new()));
    z.start_file("archive/data.pkl", opts).unwrap();
    z.write_all(pickle).unwrap();
    z.start_file("archive/byteorder", opts).unwrap();
    z.write_all(b"little").unwrap();
    for (k, b) in storages {
        z.start_file(format!("archive/data/{k}"), opts).unwrap();
        z.write_all(b).unwrap();
    }
    z.start_file("archive/version", opts).unwrap();
    z.write_all(b"3\n").unwrap();
    z.finish().unwrap().into_inner()
}

/// Central directory records of a zip: (offset of the record, local header offset, name).
pub fn central_records(z: &[u8]) -> Vec<(usize, usize, Vec<u8>)> {
    let mut out = Vec::new();
    let mut i = 0;
    while let Some(p) = find(&z[i..], b"PK\x01\x02") {
        let at = i + p;
        let n = u16::from_le_bytes([z[at + 28], z[at + 29]]) as usize;
        let local = u32::from_le_bytes([z[at + 42], z[at + 43], z[at + 44], z[at + 45]]) as usize;
        out.push((at, local, z[at + 46..at + 46 + n].to_vec()));
        i = at + 4;
    }
    out
}

pub fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

pub fn record(z: &[u8], name: &str) -> (usize, usize) {
    let r = central_records(z)
        .into_iter()
        .find(|r| r.2 == name.as_bytes())
        .unwrap_or_else(|| panic!("no entry {name}"));
    (r.0, r.1)
}

// ---------------------------------------------------------------------------------------------
// A complete, valid one-layer CPM checkpoint (model-parallel size 1), from scratch

pub const H: i64 = 4;
pub const V: i64 = 8;
pub const P: i64 = 4;

/// Every tensor the CPM-LM mapping needs, with its shape.
pub fn cpm_tensors() -> Vec<(String, Vec<i64>)> {
    let mut v = vec![
        ("word_embeddings.weight".to_string(), vec![V, H]),
        ("position_embeddings.weight".to_string(), vec![P, H]),
    ];
    let l = "transformer.layers.0.";
    for (n, s) in [
        ("input_layernorm.weight", vec![H]),
        ("input_layernorm.bias", vec![H]),
        ("attention.query_key_value.weight", vec![3 * H, H]),
        ("attention.query_key_value.bias", vec![3 * H]),
        ("attention.dense.weight", vec![H, H]),
        ("attention.dense.bias", vec![H]),
        ("post_attention_layernorm.weight", vec![H]),
        ("post_attention_layernorm.bias", vec![H]),
        ("mlp.dense_h_to_4h.weight", vec![4 * H, H]),
        ("mlp.dense_h_to_4h.bias", vec![4 * H]),
        ("mlp.dense_4h_to_h.weight", vec![H, 4 * H]),
        ("mlp.dense_4h_to_h.bias", vec![H]),
    ] {
        v.push((format!("{l}{n}"), s));
    }
    v.push(("transformer.final_layernorm.weight".into(), vec![H]));
    v.push(("transformer.final_layernorm.bias".into(), vec![H]));
    v
}

/// The builder: `{"module": {name: tensor, ...}, "mp_world_size": 1, <extra entries>}` with every
/// tensor a view into one flat float16 storage `0`. `edit` may replace one tensor's description;
/// `extra` appends raw pickle (key, value pairs) to the top-level dict.
pub struct Ckpt {
    pub edit: Option<(String, T)>,
    pub extra: Vec<u8>,
    pub storage_bytes: Option<usize>,
    /// Bytes of a second storage `1`, for an edited tensor of another dtype.
    pub extra_storage: Option<Vec<u8>>,
    /// Leave out the `module` dict: `extra` brings its own.
    pub replace_module: bool,
}

impl Ckpt {
    pub fn new() -> Ckpt {
        Ckpt {
            edit: None,
            extra: Vec::new(),
            storage_bytes: None,
            extra_storage: None,
            replace_module: false,
        }
    }

    pub fn numel() -> i64 {
        cpm_tensors()
            .iter()
            .map(|(_, s)| s.iter().product::<i64>())
            .sum()
    }

    pub fn pickle(&self) -> Vec<u8> {
        let mut p = Pk::new();
        p.raw(b"}").mark();
        if !self.replace_module {
            p.str("module").raw(b"}").mark();
            let mut off = 0;
            for (name, shape) in cpm_tensors() {
                p.str(&name);
                match &self.edit {
                    Some((n, t)) if *n == name => p.tensor(t),
                    _ => p.tensor(&T::half("0", Ckpt::numel(), off, &shape)),
                };
                off += shape.iter().product::<i64>();
            }
            p.raw(b"u");
        }
        p.str("mp_world_size").int(1);
        p.raw(&self.extra);
        p.raw(b"u");
        p.stop()
    }

    pub fn bytes(&self) -> Vec<u8> {
        // Small, finite, distinct values: 1.0 + i/1024 as float16.
        let n = self.storage_bytes.unwrap_or(Ckpt::numel() as usize * 2);
        let data: Vec<u8> = (0..n / 2)
            .flat_map(|i| {
                let bits = 0x3c00u16 + (i % 1024) as u16;
                bits.to_le_bytes()
            })
            .collect();
        match &self.extra_storage {
            Some(b) if !b.is_empty() => torch_zip(&self.pickle(), &[("0", &data), ("1", b)]),
            _ => torch_zip(&self.pickle(), &[("0", &data)]),
        }
    }

    pub fn with_tensor(name: &str, t: T) -> Ckpt {
        let mut c = Ckpt::new();
        c.edit = Some((name.to_string(), t));
        c
    }

    pub fn with_extra(extra: &[u8]) -> Ckpt {
        let mut c = Ckpt::new();
        c.extra = extra.to_vec();
        c
    }
}

/// REDUCE of `module.name` with one string argument.
pub fn call(p: &mut Pk, module: &str, name: &str, arg: &str) {
    p.global(module, name).str(arg).raw(b"\x85R");
}

// ---------------------------------------------------------------------------------------------
// The real fixtures (written by PyTorch: fixtures/make_fixtures.py)

pub fn fixtures() -> std::path::PathBuf {
    testkit::fixtures().join("tiny")
}

pub fn real_zip() -> Vec<u8> {
    std::fs::read(fixtures().join("ckpt/100/mp_rank_00_model_states.pt")).unwrap()
}
pub const REAL_PREFIX: &str = "mp_rank_00_model_states";

pub fn real_legacy() -> Vec<u8> {
    std::fs::read(fixtures().join("ckpt-legacy/mp_rank_00_model_states.pt")).unwrap()
}

/// Byte offset of the first storage's i64 element count: just after the key list pickle.
pub fn legacy_data_start(b: &[u8]) -> usize {
    let mut pos = 0;
    for _ in 0..5 {
        pos += cpm_torch::pickle::parse(&b[pos..], std::path::Path::new("x"), pos as u64)
            .unwrap()
            .consumed;
    }
    pos
}

/// A legacy-format file: magic, protocol 1001, an empty sys_info, then `object` and `keys`
/// (two complete pickles), then `data` (element counts and elements).
pub fn legacy_file(object: &[u8], keys: &[u8], data: &[u8]) -> Vec<u8> {
    let mut f = cpm_torch::LEGACY_PREFIX.to_vec();
    f.push(b'.');
    f.extend(Pk::new().int(1001).stop());
    f.extend(Pk::new().raw(b"}").stop());
    f.extend(object);
    f.extend(keys);
    f.extend(data);
    f
}

/// Rank `r` of a fixture checkpoint directory.
pub fn rank(dir: &str, r: usize) -> Vec<u8> {
    std::fs::read(
        fixtures()
            .join(dir)
            .join(format!("mp_rank_{r:02}_model_states.pt")),
    )
    .unwrap()
}
