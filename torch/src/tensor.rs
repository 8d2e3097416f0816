//! One description of a tensor, whatever file format it came from: which storage, where in it,
//! which shape and strides, which element type.

use std::rc::Rc;

use crate::names::shorten;

/// Element types a torch checkpoint may hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Dtype {
    /// `torch.float64`.
    F64,
    /// `torch.float32`.
    F32,
    /// `torch.float16`.
    F16,
    /// `torch.bfloat16`.
    BF16,
    /// `torch.int64`.
    I64,
    /// `torch.int32`.
    I32,
    /// `torch.int16`.
    I16,
    /// `torch.int8`.
    I8,
    /// `torch.uint8`.
    U8,
    /// `torch.bool`.
    Bool,
}

impl Dtype {
    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            Dtype::F64 | Dtype::I64 => 8,
            Dtype::F32 | Dtype::I32 => 4,
            Dtype::F16 | Dtype::BF16 | Dtype::I16 => 2,
            Dtype::I8 | Dtype::U8 | Dtype::Bool => 1,
        }
    }

    /// From a typed storage class name such as `HalfStorage`.
    pub fn from_storage_class(name: &str) -> Option<Dtype> {
        Some(match name {
            "DoubleStorage" => Dtype::F64,
            "FloatStorage" => Dtype::F32,
            "HalfStorage" => Dtype::F16,
            "BFloat16Storage" => Dtype::BF16,
            "LongStorage" => Dtype::I64,
            "IntStorage" => Dtype::I32,
            "ShortStorage" => Dtype::I16,
            "CharStorage" => Dtype::I8,
            "ByteStorage" => Dtype::U8,
            "BoolStorage" => Dtype::Bool,
            _ => return None,
        })
    }

    /// From a `torch.<dtype>` global, as `_rebuild_tensor_v3` passes it.
    pub fn from_torch_name(name: &str) -> Option<Dtype> {
        Some(match name {
            "float64" | "double" => Dtype::F64,
            "float32" | "float" => Dtype::F32,
            "float16" | "half" => Dtype::F16,
            "bfloat16" => Dtype::BF16,
            "int64" | "long" => Dtype::I64,
            "int32" | "int" => Dtype::I32,
            "int16" | "short" => Dtype::I16,
            "int8" => Dtype::I8,
            "uint8" => Dtype::U8,
            "bool" => Dtype::Bool,
            _ => return None,
        })
    }

    /// The name torch gives it (`float32`).
    pub fn torch_name(self) -> &'static str {
        match self {
            Dtype::F64 => "float64",
            Dtype::F32 => "float32",
            Dtype::F16 => "float16",
            Dtype::BF16 => "bfloat16",
            Dtype::I64 => "int64",
            Dtype::I32 => "int32",
            Dtype::I16 => "int16",
            Dtype::I8 => "int8",
            Dtype::U8 => "uint8",
            Dtype::Bool => "bool",
        }
    }

    /// The safetensors header name.
    pub fn safetensors_name(self) -> &'static str {
        match self {
            Dtype::F64 => "F64",
            Dtype::F32 => "F32",
            Dtype::F16 => "F16",
            Dtype::BF16 => "BF16",
            Dtype::I64 => "I64",
            Dtype::I32 => "I32",
            Dtype::I16 => "I16",
            Dtype::I8 => "I8",
            Dtype::U8 => "U8",
            Dtype::Bool => "BOOL",
        }
    }

    /// Whether it is a floating-point type.
    pub fn is_float(self) -> bool {
        matches!(self, Dtype::F64 | Dtype::F32 | Dtype::F16 | Dtype::BF16)
    }
}

/// A tensor as a pickle describes it; `offset` and `stride` are in elements.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorRef {
    /// Shared with the storage's persistent id: a thousand tensors on one storage (or one
    /// memoized key reused a million times) hold one copy of the key.
    pub storage_key: Rc<str>,
    /// Element type.
    pub dtype: Dtype,
    /// Offset of the first element in the storage, in elements.
    pub offset: u64,
    /// Extent of each dimension.
    pub shape: Vec<u64>,
    /// Step of each dimension, in elements.
    pub stride: Vec<u64>,
}

impl TensorRef {
    /// Element count, or `None` on overflow.
    pub fn numel(&self) -> Option<u64> {
        self.shape.iter().try_fold(1u64, |a, &d| a.checked_mul(d))
    }

    /// Byte length of the tensor's data once contiguous.
    pub fn nbytes(&self) -> Option<u64> {
        self.numel()?.checked_mul(self.dtype.size() as u64)
    }

    /// Row-major with no gaps (dimensions of size 1 may carry any stride).
    pub fn is_contiguous(&self) -> bool {
        let mut expect = 1u64;
        for (&d, &s) in self.shape.iter().zip(&self.stride).rev() {
            if d != 1 && s != expect {
                return false;
            }
            expect = expect.saturating_mul(d);
        }
        true
    }

    /// The byte range `[start, end)` of the storage this tensor touches, checked against
    /// `storage_bytes` with overflow-checked arithmetic.
    pub fn byte_span(&self, storage_bytes: u64) -> Result<(u64, u64), String> {
        let es = self.dtype.size() as u64;
        if self.shape.len() != self.stride.len() {
            return Err(format!(
                "shape {:?} and stride {:?} have different ranks",
                self.shape, self.stride
            ));
        }
        let numel = self
            .numel()
            .ok_or_else(|| format!("shape {:?} overflows", self.shape))?;
        let start = self
            .offset
            .checked_mul(es)
            .ok_or_else(|| format!("storage offset {} overflows", self.offset))?;
        if numel == 0 {
            return Ok((start.min(storage_bytes), start.min(storage_bytes)));
        }
        let mut last = self.offset;
        for (&d, &s) in self.shape.iter().zip(&self.stride) {
            last = (d - 1)
                .checked_mul(s)
                .and_then(|x| last.checked_add(x))
                .ok_or_else(|| {
                    format!(
                        "shape {:?} with stride {:?} overflows",
                        self.shape, self.stride
                    )
                })?;
        }
        let end = last
            .checked_add(1)
            .and_then(|x| x.checked_mul(es))
            .ok_or_else(|| format!("tensor end overflows (shape {:?})", self.shape))?;
        if end > storage_bytes {
            return Err(format!(
                "needs bytes {start}..{end} of its storage `{}`, which holds {storage_bytes} bytes",
                shorten(&self.storage_key)
            ));
        }
        // Strides that make elements overlap (torch's `expand`) would let a few bytes of
        // storage describe an arbitrarily large tensor; weights never look like that.
        let nbytes = numel
            .checked_mul(es)
            .ok_or_else(|| format!("shape {:?} overflows", self.shape))?;
        if nbytes > end - start {
            return Err(format!(
                "shape {:?} with stride {:?} has {numel} elements ({nbytes} bytes) but spans only \
                 {} bytes of storage `{}`: overlapping (expanded) tensors are not supported",
                self.shape,
                self.stride,
                end - start,
                shorten(&self.storage_key)
            ));
        }
        Ok((start, end))
    }
}
