//! What torch's pickles mean beyond plain data: persistent ids naming storages, REDUCE of the
//! tensor rebuild functions and of the few containers torch pickles by reduction, NEWOBJ and
//! BUILD of the objects it saves. Everything else stays an inert [`Object`].

use std::rc::Rc;

use super::machine::{Machine, SHARED_OVERHEAD};
use super::op::Op;
use crate::error::Result;
use crate::names::{shorten, MAX_NAME_BYTES};
use crate::tensor::{Dtype, TensorRef};
use crate::value::{Object, StorageRef, Value};

/// Longest tensor rank.
const MAX_NDIM: usize = 64;
/// Nesting of `_rebuild_from_type_v2` inside itself; torch writes one level.
const MAX_REBUILD_DEPTH: usize = 4;

impl Machine<'_, '_> {
    /// REDUCE, NEWOBJ, NEWOBJ_EX (whose keyword arguments mean nothing to us), BUILD,
    /// BINPERSID.
    #[inline(always)]
    pub(super) fn call(&mut self, op: Op) -> Result<()> {
        let v = match op {
            Op::Reduce => {
                let args = self.pop()?;
                let callable = self.pop()?;
                self.reduce(callable, args, 0)?
            }
            Op::NewObj | Op::NewObjEx => {
                if op == Op::NewObjEx {
                    self.pop()?;
                }
                let args = self.pop()?;
                let cls = self.pop()?;
                self.new_object(cls, args)?
            }
            Op::Build => {
                let state = self.pop()?;
                return self.build(state);
            }
            _ => {
                let pid = self.pop()?;
                self.persistent(pid)?
            }
        };
        self.push(v)
    }

    fn build(&mut self, state: Value) -> Result<()> {
        match self.top()? {
            Value::Object(o) => {
                o.borrow_mut().state = Some(state);
                Ok(())
            }
            // OrderedDict's BUILD sets attributes such as `_metadata`, not entries; tensors may
            // get a state from `_rebuild_parameter_with_state`. Neither matters for weights.
            Value::Dict(_) | Value::Tensor(_) => Ok(()),
            other => Err(self.err(format!("BUILD on {}", other.describe()))),
        }
    }

    fn new_object(&mut self, cls: Value, args: Value) -> Result<Value> {
        let class = match &cls {
            Value::Global(g) => Rc::clone(g),
            other => return Err(self.err(format!("NEWOBJ of {}, not a class", other.describe()))),
        };
        let args = match &args {
            Value::Tuple(t) => Rc::clone(t),
            _ => return Err(self.err("NEWOBJ arguments are not a tuple")),
        };
        self.object(Object {
            class: Some(class),
            args,
            ..Object::default()
        })
    }

    fn persistent(&mut self, pid: Value) -> Result<Value> {
        let t = match &pid {
            Value::Tuple(t) => t.clone(),
            _ => return Err(self.err(format!("persistent id {} is not a tuple", pid.describe()))),
        };
        if t.len() < 5 || t[0].as_str() != Some("storage") {
            return Err(self.err(format!(
                "persistent id is not a ('storage', type, key, location, numel) tuple (found a tuple of {})",
                t.len()
            )));
        }
        let class = match &t[1] {
            Value::Global(g) => Rc::clone(&g.name),
            other => {
                return Err(self.err(format!("storage type {} is not a class", other.describe())))
            }
        };
        let dtype =
            if &*class == "UntypedStorage" {
                None
            } else {
                Some(Dtype::from_storage_class(&class).ok_or_else(|| {
                    self.err(format!("unknown storage type `{}`", shorten(&class)))
                })?)
            };
        let key = self.storage_key(&t[2])?;
        let numel = t[4]
            .as_int()
            .and_then(|n| u64::try_from(n).ok())
            .ok_or_else(|| self.err(format!("storage `{key}` has a bad element count")))?;
        // Legacy views: (view_key, offset, size) into the root storage.
        let mut view_offset = 0;
        if let Some(Value::Tuple(view)) = t.get(5) {
            if view.len() == 3 {
                view_offset = view[1]
                    .as_int()
                    .and_then(|n| u64::try_from(n).ok())
                    .ok_or_else(|| self.err(format!("storage `{key}` view has a bad offset")))?;
            }
        }
        self.charge(
            std::mem::size_of::<StorageRef>() + 2 * SHARED_OVERHEAD,
            "its storages",
        )?;
        let s = Rc::new(StorageRef {
            key,
            dtype,
            numel,
            view_offset,
        });
        self.storages.push(s.clone());
        Ok(Value::Storage(s))
    }

    /// A persistent id's storage key: shared, not copied (one memoized key may name every
    /// storage), and at most [`MAX_NAME_BYTES`] long.
    fn storage_key(&mut self, v: &Value) -> Result<Rc<str>> {
        let key = match v {
            Value::Str(s) => Rc::clone(s),
            Value::Int(i) => {
                self.charge_bytes(20)?;
                Rc::from(i.to_string().as_str())
            }
            other => {
                return Err(self.err(format!("storage key {} is not a string", other.describe())))
            }
        };
        if key.len() > MAX_NAME_BYTES {
            return Err(self.err(format!(
                "storage key `{}` is longer than {MAX_NAME_BYTES} bytes; torch writes short keys",
                shorten(&key)
            )));
        }
        Ok(key)
    }

    /// REDUCE: meaningful for torch's rebuild functions and a few containers only.
    fn reduce(&mut self, callable: Value, args: Value, depth: usize) -> Result<Value> {
        let g = match &callable {
            Value::Global(g) => g.clone(),
            other => return Err(self.err(format!("REDUCE of {}, not a global", other.describe()))),
        };
        let argv: Rc<Vec<Value>> = match &args {
            Value::Tuple(t) => Rc::clone(t),
            _ => {
                return Err(self.err(format!(
                    "REDUCE arguments for {}.{} are not a tuple",
                    shorten(&g.module),
                    shorten(&g.name)
                )))
            }
        };
        let m = &*g.module;
        let n = &*g.name;
        match (m, n) {
            ("torch._utils", "_rebuild_tensor" | "_rebuild_tensor_v2" | "_rebuild_tensor_v3") => {
                self.rebuild_tensor(n, &argv)
            }
            ("torch._utils", "_rebuild_parameter" | "_rebuild_parameter_with_state") => argv
                .first()
                .cloned()
                .ok_or_else(|| self.err(format!("{n} without arguments"))),
            ("torch._tensor", "_rebuild_from_type_v2") => {
                // (func, type, args, state): the tensor is func(*args).
                if depth >= MAX_REBUILD_DEPTH {
                    return Err(self.err(format!(
                        "_rebuild_from_type_v2 nested more than {MAX_REBUILD_DEPTH} deep"
                    )));
                }
                match (argv.first(), argv.get(2)) {
                    (Some(f), Some(a)) => self.reduce(f.clone(), a.clone(), depth + 1),
                    _ => Err(self.err("_rebuild_from_type_v2 needs (func, type, args, state)")),
                }
            }
            ("collections", "OrderedDict") => self.dict(Vec::new()),
            ("torch", "Size") => argv
                .first()
                .cloned()
                .ok_or_else(|| self.err("torch.Size without arguments")),
            ("builtins" | "__builtin__", "set" | "frozenset") => self.set_of(argv.first()),
            ("_codecs", "encode") => self.encode(argv.first()),
            _ => self.object(Object {
                class: Some(g),
                args: argv,
                ..Object::default()
            }),
        }
    }

    /// `set(items)`: a copy of a list or tuple the pickle may have memoized.
    fn set_of(&mut self, items: Option<&Value>) -> Result<Value> {
        let items = match items {
            Some(Value::List(l)) => {
                self.charge_copy(l.borrow().len())?;
                l.borrow().clone()
            }
            Some(Value::Tuple(t)) => {
                self.charge_copy(t.len())?;
                t.to_vec()
            }
            _ => Vec::new(),
        };
        self.set(items)
    }

    /// `_codecs.encode(s, 'latin1')`: protocol-2 bytes, a latin-1 str re-encoded.
    fn encode(&mut self, s: Option<&Value>) -> Result<Value> {
        match s {
            Some(Value::Str(s)) => {
                self.charge(s.len(), "copies of memoized strings")?;
                let b: Option<Vec<u8>> = s.chars().map(|c| u8::try_from(c as u32).ok()).collect();
                b.map(|b| Value::Bytes(Rc::new(b)))
                    .ok_or_else(|| self.err("_codecs.encode of a str outside latin-1"))
            }
            _ => Err(self.err("_codecs.encode without a str")),
        }
    }

    /// Account for copying `n` values out of an existing container.
    fn charge_copy(&mut self, n: usize) -> Result<()> {
        let bytes = n.saturating_mul(std::mem::size_of::<Value>());
        self.charge(bytes, "copies of memoized containers")
    }

    fn rebuild_tensor(&mut self, func: &str, a: &[Value]) -> Result<Value> {
        let need = if func == "_rebuild_tensor_v3" { 7 } else { 4 };
        if a.len() < need {
            return Err(self.err(format!(
                "{func} needs at least {need} arguments, found {}",
                a.len()
            )));
        }
        let storage = match &a[0] {
            Value::Storage(s) => s.clone(),
            other => {
                return Err(self.err(format!(
                    "{func}: first argument {} is not a storage",
                    other.describe()
                )))
            }
        };
        let offset = a[1]
            .as_int()
            .ok_or_else(|| self.err(format!("{func}: storage offset is not an integer")))?;
        let offset = u64::try_from(offset)
            .map_err(|_| self.err(format!("{func}: negative storage offset {offset}")))?;
        let shape = dims(&a[2]).map_err(|m| self.err(format!("{func}: size {m}")))?;
        let stride = dims(&a[3]).map_err(|m| self.err(format!("{func}: stride {m}")))?;
        // The dimensions are copied out of tuples a pickle may memoize and reuse.
        let dims_bytes = (shape.len() + stride.len()) * std::mem::size_of::<u64>();
        self.charge(
            dims_bytes + std::mem::size_of::<TensorRef>() + SHARED_OVERHEAD,
            "its tensors",
        )?;
        if shape.len() != stride.len() {
            return Err(self.err(format!(
                "{func}: size {shape:?} and stride {stride:?} differ in rank"
            )));
        }
        let dtype = self.tensor_dtype(func, a, &storage)?;
        let offset = offset
            .checked_add(storage.view_offset)
            .ok_or_else(|| self.err("storage offset overflows"))?;
        Ok(Value::Tensor(Rc::new(TensorRef {
            storage_key: storage.key.clone(),
            dtype,
            offset,
            shape,
            stride,
        })))
    }

    /// The dtype `_rebuild_tensor_v3` names, else the typed storage's; they must agree.
    fn tensor_dtype(&self, func: &str, a: &[Value], storage: &StorageRef) -> Result<Dtype> {
        let dtype = if func == "_rebuild_tensor_v3" {
            match &a[6] {
                Value::Global(g) if &*g.module == "torch" => Dtype::from_torch_name(&g.name)
                    .ok_or_else(|| {
                        self.err(format!("unsupported dtype torch.{}", shorten(&g.name)))
                    })?,
                other => {
                    return Err(self.err(format!(
                        "{func}: dtype {} is not a torch dtype",
                        other.describe()
                    )))
                }
            }
        } else {
            storage
                .dtype
                .ok_or_else(|| self.err(format!("{func} on an untyped storage names no dtype")))?
        };
        if let Some(sd) = storage.dtype {
            if sd != dtype {
                return Err(self.err(format!(
                    "tensor of {} on a storage of {}",
                    dtype.torch_name(),
                    sd.torch_name()
                )));
            }
        }
        Ok(dtype)
    }
}

fn dims(v: &Value) -> Result<Vec<u64>, String> {
    // Check the length before copying: a memoized huge list passed as a size must cost nothing.
    let len = match v {
        Value::Tuple(t) => t.len(),
        Value::List(l) => l.borrow().len(),
        other => return Err(format!("{} is not a tuple", other.describe())),
    };
    if len > MAX_NDIM {
        return Err(format!("has {len} dimensions (at most {MAX_NDIM})"));
    }
    let items = match v {
        Value::Tuple(t) => t.to_vec(),
        Value::List(l) => l.borrow().clone(),
        _ => Vec::new(),
    };
    items
        .iter()
        .map(|x| match x.as_int() {
            Some(i) if i >= 0 => Ok(i as u64),
            Some(i) => Err(format!("has a negative entry {i}")),
            None => Err(format!("has a non-integer entry {}", x.describe())),
        })
        .collect()
}
