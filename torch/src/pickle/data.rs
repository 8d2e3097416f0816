//! The opcodes that build plain data: numbers, strings and containers. Every container is
//! registered in the arena and every byte charged to the budget as it is made.

use std::cell::RefCell;
use std::rc::Rc;

use super::machine::{Machine, SHARED_OVERHEAD};
use super::op::Op;
use crate::error::Result;
use crate::value::{Object, Value};

impl Machine<'_, '_> {
    /// BININT, BININT1, BININT2.
    #[inline(always)]
    pub(super) fn int(&mut self, op: Op) -> Result<()> {
        let v = match op {
            Op::BinInt1 => self.u8()? as i64,
            Op::BinInt2 => self.u16()? as i64,
            _ => self.u32()? as i32 as i64,
        };
        self.push(Value::Int(v))
    }

    /// LONG1, LONG4: little-endian two's complement.
    #[inline(always)]
    pub(super) fn long(&mut self, op: Op) -> Result<()> {
        let n = if op == Op::Long1 {
            self.u8()? as u64
        } else {
            self.i32_len("LONG4")?
        };
        let b = self.len_bytes(n)?;
        self.charge_bytes(b.len())?;
        self.push(long_value(b))
    }

    #[inline(always)]
    pub(super) fn float(&mut self) -> Result<()> {
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        self.push(Value::Float(f64::from_be_bytes(a)))
    }

    /// BINUNICODE, SHORT_BINUNICODE, BINUNICODE8.
    #[inline(always)]
    pub(super) fn unicode(&mut self, op: Op) -> Result<()> {
        let n = match op {
            Op::BinUnicode => self.u32()? as u64,
            Op::ShortBinUnicode => self.u8()? as u64,
            _ => self.u64()?,
        };
        let b = self.len_bytes(n)?;
        let s = std::str::from_utf8(b).map_err(|_| self.err("string is not valid UTF-8"))?;
        self.charge_bytes(s.len())?;
        self.push(Value::Str(Rc::from(s)))
    }

    /// Python 2 str (BINSTRING, SHORT_BINSTRING): bytes that are text in practice; kept as
    /// latin-1 text.
    #[inline(always)]
    pub(super) fn py2_str(&mut self, op: Op) -> Result<()> {
        let n = if op == Op::BinString {
            self.i32_len("BINSTRING")?
        } else {
            self.u8()? as u64
        };
        let b = self.len_bytes(n)?;
        // Latin-1 to UTF-8 at most doubles the bytes.
        self.charge_bytes(b.len().saturating_mul(2))?;
        let s: String = b.iter().map(|&c| c as char).collect();
        self.push(Value::Str(Rc::from(s.as_str())))
    }

    /// BINBYTES, SHORT_BINBYTES, BINBYTES8, BYTEARRAY8.
    #[inline(always)]
    pub(super) fn bytes(&mut self, op: Op) -> Result<()> {
        let n = match op {
            Op::BinBytes => self.u32()? as u64,
            Op::ShortBinBytes => self.u8()? as u64,
            _ => self.u64()?,
        };
        let b = self.len_bytes(n)?;
        self.charge_bytes(b.len())?;
        self.push(Value::Bytes(Rc::new(b.to_vec())))
    }

    /// EMPTY_TUPLE, TUPLE (from the mark), TUPLE1-3 (from the stack).
    #[inline(always)]
    pub(super) fn tuple_op(&mut self, op: Op) -> Result<()> {
        let items = match op {
            Op::EmptyTuple | Op::Tuple => self.mark_items(op == Op::Tuple)?,
            _ => {
                let n = (op.byte() - Op::Ext4.byte()) as usize;
                let mut items = Vec::with_capacity(n);
                for _ in 0..n {
                    items.push(self.pop()?);
                }
                items.reverse();
                items
            }
        };
        let v = self.tuple(items)?;
        self.push(v)
    }

    /// EMPTY_LIST, LIST, APPEND, APPENDS.
    #[inline(always)]
    pub(super) fn list_op(&mut self, op: Op) -> Result<()> {
        let items = match op {
            Op::EmptyList | Op::List => {
                let items = self.mark_items(op == Op::List)?;
                let v = self.list(items)?;
                return self.push(v);
            }
            Op::Append => vec![self.pop()?],
            _ => self.pop_mark()?,
        };
        match self.top()? {
            Value::List(l) => l.borrow_mut().extend(items),
            Value::Object(o) => o.borrow_mut().list.extend(items),
            other => return Err(self.err(format!("APPEND on {}, not a list", other.describe()))),
        }
        Ok(())
    }

    /// EMPTY_DICT, DICT, SETITEM, SETITEMS.
    #[inline(always)]
    pub(super) fn dict_op(&mut self, op: Op) -> Result<()> {
        let items = match op {
            Op::EmptyDict | Op::Dict => {
                let items = self.mark_items(op == Op::Dict)?;
                let pairs = pairs(items).map_err(|m| self.err(m))?;
                let v = self.dict(pairs)?;
                return self.push(v);
            }
            Op::SetItem => {
                let v = self.pop()?;
                let k = self.pop()?;
                vec![(k, v)]
            }
            _ => {
                let items = self.pop_mark()?;
                pairs(items).map_err(|m| self.err(m))?
            }
        };
        match self.top()? {
            Value::Dict(d) => d.borrow_mut().extend(items),
            Value::Object(o) => o.borrow_mut().items.extend(items),
            other => return Err(self.err(format!("SETITEM on {}, not a dict", other.describe()))),
        }
        Ok(())
    }

    /// EMPTY_SET, FROZENSET, ADDITEMS.
    #[inline(always)]
    pub(super) fn set_op(&mut self, op: Op) -> Result<()> {
        if op != Op::AddItems {
            let items = self.mark_items(op == Op::FrozenSet)?;
            let v = self.set(items)?;
            return self.push(v);
        }
        let items = self.pop_mark()?;
        match self.top()? {
            Value::Set(s) => s.borrow_mut().extend(items),
            other => return Err(self.err(format!("ADDITEMS on {}, not a set", other.describe()))),
        }
        Ok(())
    }

    /// A new mutable container, registered in the arena and charged to the budget.
    fn container(&mut self, v: Value, size: usize) -> Result<Value> {
        self.charge(size + SHARED_OVERHEAD, "its containers")?;
        self.arena.register(&v);
        Ok(v)
    }

    pub(super) fn list(&mut self, items: Vec<Value>) -> Result<Value> {
        let size = std::mem::size_of::<RefCell<Vec<Value>>>();
        self.container(Value::List(Rc::new(RefCell::new(items))), size)
    }

    pub(super) fn set(&mut self, items: Vec<Value>) -> Result<Value> {
        let size = std::mem::size_of::<RefCell<Vec<Value>>>();
        self.container(Value::Set(Rc::new(RefCell::new(items))), size)
    }

    pub(super) fn dict(&mut self, pairs: Vec<(Value, Value)>) -> Result<Value> {
        let size = std::mem::size_of::<RefCell<Vec<(Value, Value)>>>();
        self.container(Value::Dict(Rc::new(RefCell::new(pairs))), size)
    }

    pub(super) fn object(&mut self, o: Object) -> Result<Value> {
        let size = std::mem::size_of::<RefCell<Object>>();
        self.container(Value::Object(Rc::new(RefCell::new(o))), size)
    }

    /// An immutable tuple of values already charged (they were pushed).
    pub(super) fn tuple(&mut self, items: Vec<Value>) -> Result<Value> {
        self.charge(SHARED_OVERHEAD, "its tuples")?;
        Ok(Value::Tuple(Rc::new(items)))
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
