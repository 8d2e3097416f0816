//! The machine's state (stack, marks, memo, memory budget), its operand readers, and the
//! opcodes that move values around (stack, globals, memo). [`Machine::run`] reads one opcode
//! at a time and hands it to the function for its family, here, in `data` or in `rebuild`.

use std::collections::HashMap;
use std::path::Path;
use std::rc::Rc;

use super::op::Op;
use crate::error::{Error, Result};
use crate::names::{shorten, MAX_NAME_BYTES};
use crate::value::{Arena, Global, StorageRef, Value};

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
/// Heap bytes the machine may charge beyond the pickle's own size: every value pushed, every
/// container, object, string and memo entry created, every copy out of an existing container.
/// What is really allocated stays within ~3x the charge (a vector's spare capacity, the stack's
/// high-water mark), so the tree of a pickle of N bytes costs at most ~3N + 48 MiB, whatever
/// the opcodes: one-byte DUPs and MEMOIZEs, memo reuse, copies. A real checkpoint's pickle (a
/// few hundred kilobytes) charges a few megabytes.
const BUDGET_SLACK: usize = 16 << 20;
/// What a value costs beyond its slot: an `Rc` header and an arena handle.
pub(super) const SHARED_OVERHEAD: usize = 32;

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

pub(super) struct Machine<'a, 'b> {
    data: &'a [u8],
    pub(super) pos: usize,
    path: &'a Path,
    base: u64,
    stack: Vec<Value>,
    marks: Vec<usize>,
    memo: HashMap<u32, Value>,
    pub(super) storages: Vec<Rc<StorageRef>>,
    /// Heap bytes the values may still cost.
    budget: &'b mut Budget,
    /// Values created so far (see [`MAX_VALUES`]).
    pushed: usize,
    /// Every mutable container created, to break cycles when the tree is dropped.
    pub(super) arena: Arena,
}

impl<'a, 'b> Machine<'a, 'b> {
    pub(super) fn new(
        data: &'a [u8],
        path: &'a Path,
        base: u64,
        budget: &'b mut Budget,
    ) -> Machine<'a, 'b> {
        Machine {
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
        }
    }

    /// Run the program to its STOP and return its value.
    pub(super) fn run(&mut self) -> Result<Value> {
        loop {
            let byte = self.u8()?;
            let op =
                Op::try_from(byte).map_err(|b| self.err(format!("unknown opcode 0x{b:02x}")))?;
            if op == Op::Stop {
                return self.pop();
            }
            self.step(op)?;
        }
    }

    /// One opcode, by family. This and the family functions are inlined into [`Machine::run`]:
    /// a call per opcode made parsing measurably slower than the single match it replaces.
    #[inline(always)]
    fn step(&mut self, op: Op) -> Result<()> {
        match op {
            Op::Proto => self.proto(),
            // FRAME: a length hint only.
            Op::Frame => self.u64().map(drop),
            Op::Mark | Op::Pop | Op::PopMark | Op::Dup => self.stack_op(op),
            Op::None => self.push(Value::None),
            Op::NewTrue | Op::NewFalse => self.push(Value::Bool(op == Op::NewTrue)),
            Op::BinInt | Op::BinInt1 | Op::BinInt2 => self.int(op),
            Op::Long1 | Op::Long4 => self.long(op),
            Op::BinFloat => self.float(),
            Op::BinUnicode | Op::ShortBinUnicode | Op::BinUnicode8 => self.unicode(op),
            Op::BinString | Op::ShortBinString => self.py2_str(op),
            Op::BinBytes | Op::ShortBinBytes | Op::BinBytes8 | Op::ByteArray8 => self.bytes(op),
            Op::EmptyTuple | Op::Tuple | Op::Tuple1 | Op::Tuple2 | Op::Tuple3 => self.tuple_op(op),
            Op::EmptyList | Op::List | Op::Append | Op::Appends => self.list_op(op),
            Op::EmptyDict | Op::Dict | Op::SetItem | Op::SetItems => self.dict_op(op),
            Op::EmptySet | Op::FrozenSet | Op::AddItems => self.set_op(op),
            Op::Global | Op::StackGlobal => self.global_op(op),
            Op::Reduce | Op::NewObj | Op::NewObjEx | Op::Build | Op::BinPersId => self.call(op),
            Op::BinPut | Op::LongBinPut | Op::Memoize => self.memo_put(op),
            Op::BinGet | Op::LongBinGet => self.memo_get(op),
            Op::Stop
            | Op::Ext1
            | Op::Ext2
            | Op::Ext4
            | Op::NextBuffer
            | Op::ReadOnlyBuffer
            | Op::Int
            | Op::Long
            | Op::Float
            | Op::String
            | Op::Unicode
            | Op::PersId
            | Op::Put
            | Op::Get
            | Op::Inst
            | Op::Obj => Err(self.unsupported(op)),
        }
    }

    /// Why an opcode we do not run is refused.
    fn unsupported(&self, op: Op) -> Error {
        match op {
            Op::Ext1 | Op::Ext2 | Op::Ext4 => {
                self.err("extension registry opcodes (EXT1/2/4) are not supported")
            }
            Op::NextBuffer | Op::ReadOnlyBuffer => {
                self.err("out-of-band buffers are not supported")
            }
            _ => self.err(format!(
                "text opcode {:?} (pickle protocol 0/1) is not supported; torch writes protocol 2",
                op.byte() as char
            )),
        }
    }

    pub(super) fn err(&self, msg: impl Into<String>) -> Error {
        Error::Pickle {
            path: self.path.to_path_buf(),
            offset: self.base + self.pos as u64,
            msg: msg.into(),
        }
    }

    // ---------------------------------------------------------------------------------------
    // Operands

    pub(super) fn take(&mut self, n: usize) -> Result<&'a [u8]> {
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

    pub(super) fn u8(&mut self) -> Result<u8> {
        Ok(self.take(1)?[0])
    }

    pub(super) fn u16(&mut self) -> Result<u16> {
        let b = self.take(2)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }

    pub(super) fn u32(&mut self) -> Result<u32> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    pub(super) fn u64(&mut self) -> Result<u64> {
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_le_bytes(a))
    }

    /// A 4-byte signed length; `what` names the opcode in the message when it is negative.
    pub(super) fn i32_len(&mut self, what: &str) -> Result<u64> {
        let n = self.u32()? as i32;
        u64::try_from(n).map_err(|_| self.err(format!("{what} with a negative length")))
    }

    /// A length field: checked against what remains before it is used.
    pub(super) fn len_bytes(&mut self, n: u64) -> Result<&'a [u8]> {
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

    // ---------------------------------------------------------------------------------------
    // Stack and marks

    pub(super) fn push(&mut self, v: Value) -> Result<()> {
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

    pub(super) fn pop(&mut self) -> Result<Value> {
        let floor = self.marks.last().copied().unwrap_or(0);
        if self.stack.len() <= floor {
            return Err(self.err("stack underflow"));
        }
        self.stack.pop().ok_or_else(|| self.err("stack underflow"))
    }

    pub(super) fn top(&self) -> Result<&Value> {
        let floor = self.marks.last().copied().unwrap_or(0);
        if self.stack.len() <= floor {
            return Err(self.err("stack underflow"));
        }
        self.stack.last().ok_or_else(|| self.err("stack underflow"))
    }

    pub(super) fn pop_mark(&mut self) -> Result<Vec<Value>> {
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
    pub(super) fn mark_items(&mut self, from_mark: bool) -> Result<Vec<Value>> {
        if from_mark {
            self.pop_mark()
        } else {
            Ok(Vec::new())
        }
    }

    /// MARK, POP, POP_MARK, DUP.
    #[inline(always)]
    fn stack_op(&mut self, op: Op) -> Result<()> {
        match op {
            Op::Mark => {
                if self.marks.len() >= MAX_MARKS {
                    return Err(self.err(format!("more than {MAX_MARKS} nested MARKs")));
                }
                self.marks.push(self.stack.len());
            }
            Op::Pop => drop(self.pop()?),
            Op::PopMark => drop(self.pop_mark()?),
            _ => {
                let v = self.top()?.clone();
                self.push(v)?;
            }
        }
        Ok(())
    }

    #[inline(always)]
    fn proto(&mut self) -> Result<()> {
        let p = self.u8()?;
        if p > 5 {
            return Err(self.err(format!("pickle protocol {p} (at most 5 is known)")));
        }
        Ok(())
    }

    // ---------------------------------------------------------------------------------------
    // Globals and the memo

    /// GLOBAL (two lines), STACK_GLOBAL (two strings).
    #[inline(always)]
    fn global_op(&mut self, op: Op) -> Result<()> {
        let g = if op == Op::Global {
            let module: Rc<str> = Rc::from(self.line()?);
            let name: Rc<str> = Rc::from(self.line()?);
            self.global(module, name)?
        } else {
            let name = self.pop()?;
            let module = self.pop()?;
            match (&module, &name) {
                (Value::Str(m), Value::Str(n)) => self.global(Rc::clone(m), Rc::clone(n))?,
                _ => return Err(self.err("STACK_GLOBAL needs two strings")),
            }
        };
        self.push(g)
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

    /// BINPUT, LONG_BINPUT, MEMOIZE (the next free index).
    #[inline(always)]
    fn memo_put(&mut self, op: Op) -> Result<()> {
        let idx = match op {
            Op::BinPut => self.u8()? as u32,
            Op::LongBinPut => self.u32()?,
            _ => u32::try_from(self.memo.len()).map_err(|_| self.err("memo overflow"))?,
        };
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

    /// BINGET, LONG_BINGET.
    #[inline(always)]
    fn memo_get(&mut self, op: Op) -> Result<()> {
        let idx = if op == Op::BinGet {
            self.u8()? as u32
        } else {
            self.u32()?
        };
        let v = self
            .memo
            .get(&idx)
            .cloned()
            .ok_or_else(|| self.err(format!("memo entry {idx} was never stored")))?;
        self.push(v)
    }

    // ---------------------------------------------------------------------------------------
    // The budget

    /// Account for `n` bytes of heap the values will hold: new ones, or copies out of existing
    /// containers, which is where memo reuse could turn a small file into a huge value
    /// (`set(<memoized list>)` a million times).
    pub(super) fn charge(&mut self, n: usize, what: &str) -> Result<()> {
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
    pub(super) fn charge_bytes(&mut self, n: usize) -> Result<()> {
        self.charge(n.saturating_add(SHARED_OVERHEAD), "its strings")
    }
}
