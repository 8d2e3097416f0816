//! The pickle half of our `torch.save`: a protocol-2 `data.pkl` for a small object tree whose
//! tensors are persistent references to the archive's `data/N` storages. The globals are those
//! `torch.load(weights_only=True)` admits (`torch._utils._rebuild_tensor_v2`, the typed storage
//! classes, `collections.OrderedDict`, `__builtin__.set`) and `argparse.Namespace`, the
//! training arguments every Megatron checkpoint carries, which that loader admits once it is
//! allowed (`torch.serialization.add_safe_globals([argparse.Namespace])`).

use cpm_torch::pickle::Op;
use cpm_torch::Dtype;

/// A value of the object tree. Dicts keep their order (as Python's do).
#[derive(Debug, Clone, PartialEq)]
pub enum Py {
    None,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    /// An empty `set()` (DeepSpeed's `csr_tensor_module_names`).
    EmptySet,
    Dict(Vec<(String, Py)>),
    /// `collections.OrderedDict`, what `state_dict()` returns.
    OrderedDict(Vec<(String, Py)>),
    Tensor(TensorMeta),
    /// `argparse.Namespace(**fields)`, pickled as torch.save pickles one: `Namespace()` by
    /// NEWOBJ, its `__dict__` set by BUILD.
    Namespace(Vec<(String, Py)>),
}

/// A contiguous tensor filling the whole storage `data/<key>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorMeta {
    pub key: usize,
    pub dtype: Dtype,
    pub shape: Vec<u64>,
}

impl TensorMeta {
    pub fn numel(&self) -> u64 {
        self.shape.iter().product()
    }
}

/// torch's typed storage class of a dtype (the `torch.<Name>Storage` global).
pub fn storage_class(d: Dtype) -> &'static str {
    match d {
        Dtype::F64 => "DoubleStorage",
        Dtype::F32 => "FloatStorage",
        Dtype::F16 => "HalfStorage",
        Dtype::BF16 => "BFloat16Storage",
        Dtype::I64 => "LongStorage",
        Dtype::I32 => "IntStorage",
        Dtype::I16 => "ShortStorage",
        Dtype::I8 => "CharStorage",
        Dtype::U8 => "ByteStorage",
        Dtype::Bool => "BoolStorage",
    }
}

/// `value` pickled at protocol 2, as `torch.save` pickles it (no memo: nothing is shared).
pub fn dumps(value: &Py) -> Vec<u8> {
    let mut out = vec![Op::Proto.byte(), 2];
    put(&mut out, value);
    op(&mut out, Op::Stop);
    out
}

fn op(out: &mut Vec<u8>, op: Op) {
    out.push(op.byte());
}

fn ops(out: &mut Vec<u8>, ops: &[Op]) {
    out.extend(ops.iter().map(|o| o.byte()));
}

fn put(out: &mut Vec<u8>, v: &Py) {
    match v {
        Py::None => op(out, Op::None),
        Py::Bool(b) => op(out, if *b { Op::NewTrue } else { Op::NewFalse }),
        Py::Int(n) => int(out, *n),
        Py::Float(f) => {
            op(out, Op::BinFloat);
            out.extend_from_slice(&f.to_be_bytes());
        }
        Py::Str(s) => string(out, s),
        Py::EmptySet => {
            global(out, "__builtin__", "set");
            ops(out, &[Op::EmptyList, Op::Tuple1, Op::Reduce]);
        }
        Py::Dict(items) => {
            op(out, Op::EmptyDict);
            items_of(out, items);
        }
        Py::OrderedDict(items) => {
            empty_ordered_dict(out);
            items_of(out, items);
        }
        Py::Tensor(t) => tensor(out, t),
        Py::Namespace(fields) => {
            global(out, "argparse", "Namespace");
            ops(out, &[Op::EmptyTuple, Op::NewObj, Op::EmptyDict]);
            items_of(out, fields);
            op(out, Op::Build);
        }
    }
}

fn items_of(out: &mut Vec<u8>, items: &[(String, Py)]) {
    // pickle batches SETITEMS by 1000; one batch per dict reads the same.
    if items.is_empty() {
        return;
    }
    op(out, Op::Mark);
    for (k, v) in items {
        string(out, k);
        put(out, v);
    }
    op(out, Op::SetItems);
}

fn empty_ordered_dict(out: &mut Vec<u8>) {
    global(out, "collections", "OrderedDict");
    ops(out, &[Op::EmptyTuple, Op::Reduce]);
}

/// `_rebuild_tensor_v2(storage, 0, size, stride, False, OrderedDict())`, the storage being the
/// persistent id `('storage', torch.<Class>, '<key>', 'cpu', numel)`.
fn tensor(out: &mut Vec<u8>, t: &TensorMeta) {
    global(out, "torch._utils", "_rebuild_tensor_v2");
    ops(out, &[Op::Mark, Op::Mark]);
    string(out, "storage");
    global(out, "torch", storage_class(t.dtype));
    string(out, &t.key.to_string());
    string(out, "cpu");
    int(out, clamp(t.numel()));
    ops(out, &[Op::Tuple, Op::BinPersId]);
    int(out, 0);
    let mut stride = vec![1u64; t.shape.len()];
    for i in (0..t.shape.len().saturating_sub(1)).rev() {
        stride[i] = stride[i + 1] * t.shape[i + 1];
    }
    tuple(out, &t.shape);
    tuple(out, &stride);
    op(out, Op::NewFalse);
    empty_ordered_dict(out);
    ops(out, &[Op::Tuple, Op::Reduce]);
}

fn clamp(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

fn tuple(out: &mut Vec<u8>, xs: &[u64]) {
    match xs.len() {
        0 => op(out, Op::EmptyTuple),
        n @ 1..=3 => {
            xs.iter().for_each(|&x| int(out, clamp(x)));
            op(out, [Op::Tuple1, Op::Tuple2, Op::Tuple3][n - 1]);
        }
        _ => {
            op(out, Op::Mark);
            xs.iter().for_each(|&x| int(out, clamp(x)));
            op(out, Op::Tuple);
        }
    }
}

fn int(out: &mut Vec<u8>, n: i64) {
    if (0..=0xff).contains(&n) {
        out.extend_from_slice(&[Op::BinInt1.byte(), n as u8]);
    } else if (0..=0xffff).contains(&n) {
        op(out, Op::BinInt2);
        out.extend_from_slice(&(n as u16).to_le_bytes());
    } else if let Ok(n) = i32::try_from(n) {
        op(out, Op::BinInt);
        out.extend_from_slice(&n.to_le_bytes());
    } else {
        // LONG1: little-endian two's complement, 8 bytes is always enough for an i64.
        out.extend_from_slice(&[Op::Long1.byte(), 8]);
        out.extend_from_slice(&n.to_le_bytes());
    }
}

fn string(out: &mut Vec<u8>, s: &str) {
    op(out, Op::BinUnicode);
    out.extend_from_slice(&(s.len() as u32).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

fn global(out: &mut Vec<u8>, module: &str, name: &str) {
    op(out, Op::Global);
    out.extend_from_slice(module.as_bytes());
    out.push(b'\n');
    out.extend_from_slice(name.as_bytes());
    out.push(b'\n');
}

#[cfg(test)]
mod tests {
    use super::*;

    /// torch 2.10's `torch.save({'args': argparse.Namespace(...), 'checkpoint_version': 3.0})`
    /// data.pkl, its memo opcodes dropped by `pickletools.optimize` (nothing is shared, so they
    /// carry nothing): our pickle of the same tree is exactly these bytes.
    #[test]
    fn a_namespace_is_pickled_as_torch_save_pickles_it() {
        let torch: &[u8] = b"\x80\x02}(X\x04\x00\x00\x00argscargparse\nNamespace\n)\x81}(X\n\x00\
            \x00\x00num_layersK\x02X\x0b\x00\x00\x00openai_gelu\x88X\x10\x00\x00\x00bias_gelu_\
            fusion\x89X\t\x00\x00\x00onnx_safeNX\x0c\x00\x00\x00norm_epsilonG>\xe4\xf8\xb5\x88\
            \xe3h\xf1X\r\x00\x00\x00normalizationX\t\x00\x00\x00LayerNormubX\x12\x00\x00\x00\
            checkpoint_versionG@\x08\x00\x00\x00\x00\x00\x00u.";
        let args = Py::Namespace(vec![
            ("num_layers".into(), Py::Int(2)),
            ("openai_gelu".into(), Py::Bool(true)),
            ("bias_gelu_fusion".into(), Py::Bool(false)),
            ("onnx_safe".into(), Py::None),
            ("norm_epsilon".into(), Py::Float(1e-5)),
            ("normalization".into(), Py::Str("LayerNorm".into())),
        ]);
        let top = Py::Dict(vec![
            ("args".into(), args),
            ("checkpoint_version".into(), Py::Float(3.0)),
        ]);
        assert_eq!(dumps(&top), torch);
    }
}
