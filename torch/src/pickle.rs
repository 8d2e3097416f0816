//! A pickle machine that executes nothing.
//!
//! GLOBAL names a class or function but never resolves it; REDUCE, NEWOBJ and BUILD mean
//! something only for torch's tensor rebuild functions and a few containers, and build an inert
//! [`Object`] for everything else. Every length from the file is checked against the bytes that
//! remain before anything is allocated, and the stack, mark and memo sizes are bounded.

use std::collections::HashMap;
use std::path::Path;
use std::rc::Rc;

use std::cell::RefCell;

use super::tensor::{Dtype, TensorRef};
use super::value::{shorten, Arena, Global, Object, StorageRef, Value, MAX_NAME_BYTES};
use crate::error::{Error, Result};

/// Deepest MARK nesting we accept; real checkpoints stay below a few dozen.
const MAX_MARKS: usize = 10_000;
/// Most values on the stack at once.
const MAX_STACK: usize = 1 << 22;
/// Most memo entries.
const MAX_MEMO: usize = 1 << 22;
/// Most values one pickle may create (every opcode that pushes creates one). A 32-layer CPM
/// checkpoint's object tree holds some tens of thousands. The memory budget below is the
/// tighter bound for all but the largest pickles; this one keeps the count itself sane.
const MAX_VALUES: usize = 1 << 23;
/// Longest tensor rank.
const MAX_NDIM: usize = 64;
/// Nesting of `_rebuild_from_type_v2` inside itself; torch writes one level.
const MAX_REBUILD_DEPTH: usize = 4;
/// Heap bytes the machine may charge beyond the pickle's own size: every value pushed, every
/// container, object, string and memo entry created, every copy out of an existing container.
/// What is really allocated stays within ~3x the charge (a vector's spare capacity, the stack's
/// high-water mark), so the tree of a pickle of N bytes costs at most ~3N + 48 MiB, whatever
/// the opcodes: one-byte DUPs and MEMOIZEs, memo reuse, copies. A real checkpoint's pickle (a
/// few hundred kilobytes) charges a few megabytes.
const BUDGET_SLACK: usize = 16 << 20;
/// What a value costs beyond its slot: an `Rc` header and an arena handle.
const SHARED_OVERHEAD: usize = 32;

/// What one pickle program produced.
pub struct Parsed {
    /// The value the program returned (STOP).
    pub value: Value,
    /// Bytes consumed: the legacy format stores several pickles back to back.
    pub consumed: usize,
    /// Every storage the program named through a persistent id, in order.
    pub storages: Vec<Rc<StorageRef>>,
    /// The containers `value` is made of; keep it alive as long as `value` (see [`Arena`]).
    pub arena: Arena,
}

/// Heap bytes the values of one or more pickles may cost (the pickle's size + 16 MiB). Pickles read
/// from one file share one: the legacy format's five pickles together get what one would.
pub struct Budget {
    left: usize,
    limit: usize,
}

impl Budget {
    /// What the pickles in `len` bytes of file may cost: `len` + 16 MiB.
    pub fn for_bytes(len: usize) -> Budget {
        let limit = len.saturating_add(BUDGET_SLACK);
        Budget { left: limit, limit }
    }
}

/// Parse one pickle starting at `data[0]`. `base` is the offset of `data` in the file, for
/// messages.
pub fn parse(data: &[u8], path: &Path, base: u64) -> Result<Parsed> {
    parse_within(data, path, base, &mut Budget::for_bytes(data.len()))
}

/// [`parse`], charging what the values cost to `budget`, shared with other pickles of the file.
pub fn parse_within(data: &[u8], path: &Path, base: u64, budget: &mut Budget) -> Result<Parsed> {
    let mut m = Machine {
        data,
        pos: 0,
        path,
        base,
        stack: Vec::new(),
        marks: Vec::new(),
        memo: HashMap::new(),
        storages: Vec::new(),
        budget,
        pushed: 0,
        arena: Arena::default(),
    };
    let value = m.run()?;
    Ok(Parsed {
        value,
        consumed: m.pos,
        storages: m.storages,
        arena: m.arena,
    })
}

struct Machine<'a, 'b> {
    data: &'a [u8],
    pos: usize,
    path: &'a Path,
    base: u64,
    stack: Vec<Value>,
    marks: Vec<usize>,
    memo: HashMap<u32, Value>,
    storages: Vec<Rc<StorageRef>>,
    /// Heap bytes the values may still cost.
    budget: &'b mut Budget,
    /// Values created so far (see [`MAX_VALUES`]).
    pushed: usize,
    /// Every mutable container created, to break cycles when the tree is dropped.
    arena: Arena,
}

impl<'a> Machine<'a, '_> {
    fn err(&self, msg: impl Into<String>) -> Error {
        Error::Pickle {
            path: self.path.to_path_buf(),
            offset: self.base + self.pos as u64,
            msg: msg.into(),
        }
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.data.len())
            .ok_or_else(|| {
                self.err(format!(
                    "needs {n} more bytes but only {} remain (truncated file?)",
                    self.data.len() - self.pos
                ))
            })?;
        let s = &self.data[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    fn u8(&mut self) -> Result<u8> {
        Ok(self.take(1)?[0])
    }

    fn u16(&mut self) -> Result<u16> {
        let b = self.take(2)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }

    fn u32(&mut self) -> Result<u32> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn u64(&mut self) -> Result<u64> {
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_le_bytes(a))
    }

    /// A length field: checked against what remains before it is used.
    fn len_bytes(&mut self, n: u64) -> Result<&'a [u8]> {
        let n = usize::try_from(n).map_err(|_| self.err(format!("length {n} is too large")))?;
        self.take(n)
    }

    fn line(&mut self) -> Result<&'a str> {
        let rest = &self.data[self.pos..];
        let nl = rest
            .iter()
            .take(MAX_NAME_BYTES + 1)
            .position(|&b| b == b'\n')
            .ok_or_else(|| {
                self.err(format!(
                    "GLOBAL name is not terminated by a newline within {MAX_NAME_BYTES} bytes"
                ))
            })?;
        let s =
            std::str::from_utf8(&rest[..nl]).map_err(|_| self.err("GLOBAL name is not UTF-8"))?;
        self.pos += nl + 1;
        Ok(s)
    }

    fn push(&mut self, v: Value) -> Result<()> {
        if self.stack.len() >= MAX_STACK {
            return Err(self.err(format!("more than {MAX_STACK} values on the stack")));
        }
        self.pushed += 1;
        if self.pushed > MAX_VALUES {
            return Err(self.err(format!(
                "more than {MAX_VALUES} values; a checkpoint's object tree holds far fewer"
            )));
        }
        // The slot on the stack, later in a container or the memo.
        self.charge(std::mem::size_of::<Value>(), "its values")?;
        self.stack.push(v);
        Ok(())
    }

    fn pop(&mut self) -> Result<Value> {
        let floor = self.marks.last().copied().unwrap_or(0);
        if self.stack.len() <= floor {
            return Err(self.err("stack underflow"));
        }
        self.stack.pop().ok_or_else(|| self.err("stack underflow"))
    }

    fn top(&self) -> Result<&Value> {
        let floor = self.marks.last().copied().unwrap_or(0);
        if self.stack.len() <= floor {
            return Err(self.err("stack underflow"));
        }
        self.stack.last().ok_or_else(|| self.err("stack underflow"))
    }

    fn pop_mark(&mut self) -> Result<Vec<Value>> {
        let m = self
            .marks
            .pop()
            .ok_or_else(|| self.err("no MARK to pop to"))?;
        if m > self.stack.len() {
            return Err(self.err("MARK above the stack"));
        }
        Ok(self.stack.split_off(m))
    }

    /// The values above the last mark, for the opcodes that build from one; none for their
    /// EMPTY_* twins.
    fn mark_items(&mut self, from_mark: bool) -> Result<Vec<Value>> {
        if from_mark {
            self.pop_mark()
        } else {
            Ok(Vec::new())
        }
    }

    fn memo_put(&mut self, idx: u32) -> Result<()> {
        let v = self.top()?.clone();
        if !self.memo.contains_key(&idx) {
            if self.memo.len() >= MAX_MEMO {
                return Err(self.err(format!("more than {MAX_MEMO} memo entries")));
            }
            // MEMOIZE is one byte; its entry is a key, a value and the table's spare room.
            self.charge(2 * std::mem::size_of::<(u32, Value)>(), "its memo")?;
        }
        self.memo.insert(idx, v);
        Ok(())
    }

    fn memo_get(&mut self, idx: u32) -> Result<()> {
        let v = self
            .memo
            .get(&idx)
            .cloned()
            .ok_or_else(|| self.err(format!("memo entry {idx} was never stored")))?;
        self.push(v)
    }

    /// A new mutable container, registered in the arena and charged to the budget.
    fn container(&mut self, v: Value, size: usize) -> Result<Value> {
        self.charge(size + SHARED_OVERHEAD, "its containers")?;
        self.arena.register(&v);
        Ok(v)
    }

    fn list(&mut self, items: Vec<Value>) -> Result<Value> {
        let size = std::mem::size_of::<RefCell<Vec<Value>>>();
        self.container(Value::List(Rc::new(RefCell::new(items))), size)
    }

    fn set(&mut self, items: Vec<Value>) -> Result<Value> {
        let size = std::mem::size_of::<RefCell<Vec<Value>>>();
        self.container(Value::Set(Rc::new(RefCell::new(items))), size)
    }

    fn dict(&mut self, pairs: Vec<(Value, Value)>) -> Result<Value> {
        let size = std::mem::size_of::<RefCell<Vec<(Value, Value)>>>();
        self.container(Value::Dict(Rc::new(RefCell::new(pairs))), size)
    }

    fn object(&mut self, o: Object) -> Result<Value> {
        let size = std::mem::size_of::<RefCell<Object>>();
        self.container(Value::Object(Rc::new(RefCell::new(o))), size)
    }

    /// An immutable tuple of values already charged (they were pushed).
    fn tuple(&mut self, items: Vec<Value>) -> Result<Value> {
        self.charge(SHARED_OVERHEAD, "its tuples")?;
        Ok(Value::Tuple(Rc::new(items)))
    }

    /// Account for `n` bytes of heap the values will hold: new ones, or copies out of existing
    /// containers, which is where memo reuse could turn a small file into a huge value
    /// (`set(<memoized list>)` a million times).
    fn charge(&mut self, n: usize, what: &str) -> Result<()> {
        self.budget.left = self.budget.left.checked_sub(n).ok_or_else(|| {
            self.err(format!(
                "the pickle's values would take more than {} bytes of memory (its size + {} MiB) \
                 for {what}; a checkpoint needs far less (memo reuse or a flood of values that \
                 would explode memory)",
                self.budget.limit,
                BUDGET_SLACK >> 20
            ))
        })?;
        Ok(())
    }

    /// Bytes copied from the file into a new string or byte string.
    fn charge_bytes(&mut self, n: usize) -> Result<()> {
        self.charge(n.saturating_add(SHARED_OVERHEAD), "its strings")
    }

    fn str_value(&mut self, b: &[u8]) -> Result<Value> {
        let s = std::str::from_utf8(b).map_err(|_| self.err("string is not valid UTF-8"))?;
        self.charge_bytes(s.len())?;
        Ok(Value::Str(Rc::from(s)))
    }

    fn run(&mut self) -> Result<Value> {
        loop {
            let op = self.u8()?;
            match op {
                0x80 => {
                    let p = self.u8()?;
                    if p > 5 {
                        return Err(self.err(format!("pickle protocol {p} (at most 5 is known)")));
                    }
                }
                0x95 => {
                    self.u64()?; // FRAME: a length hint only
                }
                b'.' => {
                    let v = self.pop()?;
                    return Ok(v);
                }
                b'(' => {
                    if self.marks.len() >= MAX_MARKS {
                        return Err(self.err(format!("more than {MAX_MARKS} nested MARKs")));
                    }
                    self.marks.push(self.stack.len());
                }
                b'0' => {
                    self.pop()?;
                }
                b'1' => {
                    self.pop_mark()?;
                }
                b'2' => {
                    let v = self.top()?.clone();
                    self.push(v)?;
                }
                b'N' => self.push(Value::None)?,
                0x88 => self.push(Value::Bool(true))?,
                0x89 => self.push(Value::Bool(false))?,
                b'J' => {
                    let v = self.u32()? as i32;
                    self.push(Value::Int(v as i64))?
                }
                b'K' => {
                    let v = self.u8()?;
                    self.push(Value::Int(v as i64))?
                }
                b'M' => {
                    let v = self.u16()?;
                    self.push(Value::Int(v as i64))?
                }
                0x8a | 0x8b => {
                    let n = if op == 0x8a {
                        self.u8()? as u64
                    } else {
                        let n = self.u32()? as i32;
                        u64::try_from(n).map_err(|_| self.err("LONG4 with a negative length"))?
                    };
                    let b = self.len_bytes(n)?;
                    self.charge_bytes(b.len())?;
                    let v = long_value(b);
                    self.push(v)?
                }
                b'G' => {
                    let b = self.take(8)?;
                    let mut a = [0u8; 8];
                    a.copy_from_slice(b);
                    self.push(Value::Float(f64::from_be_bytes(a)))?
                }
                b'X' | 0x8c | 0x8d => {
                    let n = match op {
                        b'X' => self.u32()? as u64,
                        0x8c => self.u8()? as u64,
                        _ => self.u64()?,
                    };
                    let b = self.len_bytes(n)?;
                    let v = self.str_value(b)?;
                    self.push(v)?
                }
                // Python 2 str: bytes that are text in practice; keep them as latin-1 text.
                b'T' | b'U' => {
                    let n = if op == b'T' {
                        let n = self.u32()? as i32;
                        if n < 0 {
                            return Err(self.err("BINSTRING with a negative length"));
                        }
                        n as u64
                    } else {
                        self.u8()? as u64
                    };
                    let b = self.len_bytes(n)?;
                    // Latin-1 to UTF-8 at most doubles the bytes.
                    self.charge_bytes(b.len().saturating_mul(2))?;
                    let s: String = b.iter().map(|&c| c as char).collect();
                    self.push(Value::Str(Rc::from(s.as_str())))?
                }
                b'B' | b'C' | 0x8e | 0x96 => {
                    let n = match op {
                        b'B' => self.u32()? as u64,
                        b'C' => self.u8()? as u64,
                        _ => self.u64()?,
                    };
                    let b = self.len_bytes(n)?;
                    self.charge_bytes(b.len())?;
                    self.push(Value::Bytes(Rc::new(b.to_vec())))?
                }
                // EMPTY_TUPLE, TUPLE (from the mark).
                b')' | b't' => {
                    let items = self.mark_items(op == b't')?;
                    let v = self.tuple(items)?;
                    self.push(v)?
                }
                0x85..=0x87 => {
                    let n = (op - 0x84) as usize;
                    let mut items = Vec::with_capacity(n);
                    for _ in 0..n {
                        items.push(self.pop()?);
                    }
                    items.reverse();
                    let v = self.tuple(items)?;
                    self.push(v)?
                }
                // EMPTY_LIST, LIST.
                b']' | b'l' => {
                    let items = self.mark_items(op == b'l')?;
                    let v = self.list(items)?;
                    self.push(v)?
                }
                b'a' => {
                    let v = self.pop()?;
                    self.append(vec![v])?
                }
                b'e' => {
                    let items = self.pop_mark()?;
                    self.append(items)?
                }
                // EMPTY_DICT, DICT.
                b'}' | b'd' => {
                    let items = self.mark_items(op == b'd')?;
                    let pairs = pairs(items).map_err(|m| self.err(m))?;
                    let v = self.dict(pairs)?;
                    self.push(v)?
                }
                b's' => {
                    let v = self.pop()?;
                    let k = self.pop()?;
                    self.set_items(vec![(k, v)])?
                }
                b'u' => {
                    let items = self.pop_mark()?;
                    let p = pairs(items).map_err(|m| self.err(m))?;
                    self.set_items(p)?
                }
                0x90 => {
                    let items = self.pop_mark()?;
                    match self.top()? {
                        Value::Set(s) => s.borrow_mut().extend(items),
                        other => {
                            return Err(self.err(format!("ADDITEMS on {}, not a set", other.describe())))
                        }
                    }
                }
                // EMPTY_SET, FROZENSET.
                0x8f | 0x91 => {
                    let items = self.mark_items(op == 0x91)?;
                    let v = self.set(items)?;
                    self.push(v)?
                }
                b'c' => {
                    let module: Rc<str> = Rc::from(self.line()?);
                    let name: Rc<str> = Rc::from(self.line()?);
                    let g = self.global(module, name)?;
                    self.push(g)?
                }
                0x93 => {
                    let name = self.pop()?;
                    let module = self.pop()?;
                    match (&module, &name) {
                        (Value::Str(m), Value::Str(n)) => {
                            let g = self.global(Rc::clone(m), Rc::clone(n))?;
                            self.push(g)?
                        }
                        _ => return Err(self.err("STACK_GLOBAL needs two strings")),
                    }
                }
                b'R' => {
                    let args = self.pop()?;
                    let callable = self.pop()?;
                    let v = self.reduce(callable, args, 0)?;
                    self.push(v)?
                }
                // NEWOBJ, NEWOBJ_EX (whose keyword arguments mean nothing to us).
                0x81 | 0x92 => {
                    if op == 0x92 {
                        self.pop()?;
                    }
                    let args = self.pop()?;
                    let cls = self.pop()?;
                    let v = self.new_object(cls, args)?;
                    self.push(v)?
                }
                b'b' => {
                    let state = self.pop()?;
                    self.build(state)?
                }
                b'Q' => {
                    let pid = self.pop()?;
                    let v = self.persistent(pid)?;
                    self.push(v)?
                }
                // BINPUT, LONG_BINPUT, MEMOIZE (the next free index).
                b'q' | b'r' | 0x94 => {
                    let i = match op {
                        b'q' => self.u8()? as u32,
                        b'r' => self.u32()?,
                        _ => u32::try_from(self.memo.len())
                            .map_err(|_| self.err("memo overflow"))?,
                    };
                    self.memo_put(i)?
                }
                // BINGET, LONG_BINGET.
                b'h' | b'j' => {
                    let i = if op == b'h' {
                        self.u8()? as u32
                    } else {
                        self.u32()?
                    };
                    self.memo_get(i)?
                }
                0x82..=0x84 => {
                    return Err(self.err("extension registry opcodes (EXT1/2/4) are not supported"))
                }
                0x97 | 0x98 => return Err(self.err("out-of-band buffers are not supported")),
                b'I' | b'L' | b'F' | b'S' | b'V' | b'P' | b'p' | b'g' | b'i' | b'o' => {
                    return Err(self.err(format!(
                        "text opcode {:?} (pickle protocol 0/1) is not supported; torch writes protocol 2",
                        op as char
                    )))
                }
                other => return Err(self.err(format!("unknown opcode 0x{other:02x}"))),
            }
        }
    }

    fn append(&mut self, items: Vec<Value>) -> Result<()> {
        match self.top()? {
            Value::List(l) => l.borrow_mut().extend(items),
            Value::Object(o) => o.borrow_mut().list.extend(items),
            other => return Err(self.err(format!("APPEND on {}, not a list", other.describe()))),
        }
        Ok(())
    }

    fn set_items(&mut self, items: Vec<(Value, Value)>) -> Result<()> {
        match self.top()? {
            Value::Dict(d) => d.borrow_mut().extend(items),
            Value::Object(o) => o.borrow_mut().items.extend(items),
            other => return Err(self.err(format!("SETITEM on {}, not a dict", other.describe()))),
        }
        Ok(())
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

    /// A global `module.name`, never resolved. Both names are shared with the strings the pickle
    /// built (a memoized name may be reused a million times) and at most [`MAX_NAME_BYTES`].
    fn global(&mut self, module: Rc<str>, name: Rc<str>) -> Result<Value> {
        for (what, s) in [("module", &module), ("class", &name)] {
            if s.len() > MAX_NAME_BYTES {
                return Err(self.err(format!(
                    "{what} name `{}` is longer than {MAX_NAME_BYTES} bytes",
                    shorten(s)
                )));
            }
        }
        // Protocol-2 pickles spell Python 3's `builtins` the Python 2 way.
        let module = if &*module == "__builtin__" {
            Rc::from("builtins")
        } else {
            module
        };
        self.charge(
            std::mem::size_of::<Global>() + SHARED_OVERHEAD,
            "its globals",
        )?;
        Ok(Value::Global(Rc::new(Global { module, name })))
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
            ("builtins" | "__builtin__", "set" | "frozenset") => {
                let items = match argv.first() {
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
            ("_codecs", "encode") => match argv.first() {
                // Protocol-2 bytes: a latin-1 str re-encoded.
                Some(Value::Str(s)) => {
                    self.charge(s.len(), "copies of memoized strings")?;
                    let b: Option<Vec<u8>> =
                        s.chars().map(|c| u8::try_from(c as u32).ok()).collect();
                    b.map(|b| Value::Bytes(Rc::new(b)))
                        .ok_or_else(|| self.err("_codecs.encode of a str outside latin-1"))
                }
                _ => Err(self.err("_codecs.encode without a str")),
            },
            _ => self.object(Object {
                class: Some(g),
                args: argv,
                ..Object::default()
            }),
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
}

fn long_value(b: &[u8]) -> Value {
    if b.is_empty() {
        return Value::Int(0);
    }
    if b.len() <= 8 {
        let neg = b[b.len() - 1] & 0x80 != 0;
        let mut a = if neg { [0xffu8; 8] } else { [0u8; 8] };
        a[..b.len()].copy_from_slice(b);
        Value::Int(i64::from_le_bytes(a))
    } else {
        Value::BigInt(Rc::new(b.to_vec()))
    }
}

fn pairs(items: Vec<Value>) -> Result<Vec<(Value, Value)>, String> {
    if items.len() % 2 != 0 {
        return Err(format!("{} items for key/value pairs (odd)", items.len()));
    }
    let mut out = Vec::with_capacity(items.len() / 2);
    let mut it = items.into_iter();
    while let (Some(k), Some(v)) = (it.next(), it.next()) {
        out.push((k, v));
    }
    Ok(out)
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

#[cfg(test)]
mod tests {
    use super::*;

    fn run(bytes: &[u8]) -> Result<Value> {
        parse(bytes, Path::new("test.pkl"), 0).map(|p| p.value)
    }

    #[test]
    fn global_is_a_name_never_a_call() {
        // posix.system('echo pwned') in protocol 2: GLOBAL, then REDUCE of a 1-tuple.
        let p = b"\x80\x02cposix\nsystem\nX\x0a\x00\x00\x00echo pwned\x85R.";
        let v = run(p).expect("inert object");
        match &v {
            Value::Object(o) => {
                let o = o.borrow();
                assert_eq!(o.class.as_ref().map(|c| &*c.name), Some("system"));
            }
            other => panic!("expected an inert object, got {}", other.describe()),
        }
    }

    #[test]
    fn deep_nesting_drops_without_recursion() {
        // Each new list holds the previous one, which only the memo kept: one owner per level.
        // 100,000 levels (about what the memory budget allows a 700 KB pickle) would overflow a
        // test thread's 2 MiB stack several times over if dropping recursed.
        let mut p = b"\x80\x02]q\x000".to_vec();
        for _ in 0..100_000 {
            p.extend_from_slice(b"]h\x00aq\x000");
        }
        p.extend_from_slice(b"h\x00.");
        let v = run(&p).expect("parses");
        drop(v); // must not overflow the stack
    }

    #[test]
    fn too_many_marks_is_an_error() {
        let mut p = b"\x80\x02".to_vec();
        p.extend(std::iter::repeat(b'(').take(1_000_000));
        let e = run(&p).unwrap_err().to_string();
        assert!(e.contains("nested MARKs"), "{e}");
    }

    #[test]
    fn length_beyond_the_file_is_refused_before_allocation() {
        let p = b"\x80\x02\x8e\x00\x00\x00\x00\x00\x00\x00\x10.";
        let e = run(p).unwrap_err().to_string();
        assert!(e.contains("truncated"), "{e}");
    }

    #[test]
    fn reference_cycles_are_freed_with_the_arena() {
        // l = []; l.append(l); o = Namespace(); o.__setstate__(o); d = {}; d['d'] = d
        let p = b"\x80\x02]q\x00h\x00acargparse\nNamespace\n)\x81q\x01h\x01b}q\x02X\x01\x00\x00\x00dh\x02s\x87.";
        let parsed = parse(p, Path::new("test.pkl"), 0).expect("parses");
        let weak: Vec<std::rc::Weak<dyn std::any::Any>> = match &parsed.value {
            Value::Tuple(t) => t
                .iter()
                .map(|v| match v {
                    Value::List(l) => Rc::downgrade(&(l.clone() as Rc<dyn std::any::Any>)),
                    Value::Object(o) => Rc::downgrade(&(o.clone() as Rc<dyn std::any::Any>)),
                    Value::Dict(d) => Rc::downgrade(&(d.clone() as Rc<dyn std::any::Any>)),
                    other => panic!("unexpected {}", other.describe()),
                })
                .collect(),
            other => panic!("unexpected {}", other.describe()),
        };
        assert_eq!(weak.len(), 3);
        assert!(weak.iter().all(|w| w.upgrade().is_some()));
        drop(parsed);
        assert!(
            weak.iter().all(|w| w.upgrade().is_none()),
            "a cycle outlived its tree"
        );
    }

    #[test]
    fn setitem_on_a_list_is_an_error() {
        let p = b"\x80\x02]K\x01K\x02s.";
        let e = run(p).unwrap_err().to_string();
        assert!(e.contains("SETITEM on"), "{e}");
    }
}
