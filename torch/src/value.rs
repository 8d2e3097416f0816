//! Inert values that a pickle program builds. Nothing here can run code: a Python class is only
//! its name, an object only its class, arguments and state.
//!
//! Containers are shared (`Rc`) because pickle's memo refers to one object from many places; a
//! copy per reference would let a small file describe an exponentially large value.

use std::cell::RefCell;
use std::fmt::Write as _;
use std::rc::{Rc, Weak};

use crate::names::shorten;
use crate::tensor::{Dtype, TensorRef};

/// A Python global named by a pickle (`module.name`), never resolved to anything executable.
/// Both names are shared, not owned: a pickle can memoize one string and name a million globals
/// with it, and each copy would cost the string's length.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Global {
    /// The module path, `torch._utils`.
    pub module: Rc<str>,
    /// The name in the module, `_rebuild_tensor_v2`.
    pub name: Rc<str>,
}

impl Global {
    /// Whether this is `module.name`.
    pub fn is(&self, module: &str, name: &str) -> bool {
        &*self.module == module && &*self.name == name
    }
}

/// A storage named by a persistent id: which blob holds it and how its elements are typed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StorageRef {
    /// Shared with every tensor on this storage (see [`Global`]).
    pub key: Rc<str>,
    /// `None` for `UntypedStorage`: the tensor rebuild names the dtype.
    pub dtype: Option<Dtype>,
    /// Elements (bytes for untyped storages) the persistent id claims.
    pub numel: u64,
    /// Legacy-format views into a root storage: offset in elements.
    pub view_offset: u64,
}

/// An object we do not interpret: enough to show it and to walk into it.
#[derive(Debug, Default)]
pub struct Object {
    /// Shared with the global the pickle named: REDUCE of one memoized global a million times
    /// must not copy its names.
    pub class: Option<Rc<Global>>,
    /// Shared with the tuple the pickle passed: memo reuse must not copy it.
    pub args: Rc<Vec<Value>>,
    /// What BUILD gave it (`__setstate__`'s argument).
    pub state: Option<Value>,
    /// Items added by SETITEM(S) (dict subclasses) and APPEND(S) (list subclasses).
    pub items: Vec<(Value, Value)>,
    /// Items added by APPEND(S).
    pub list: Vec<Value>,
}

/// A mutable container the memo may share.
pub type Shared<T> = Rc<RefCell<T>>;

/// How many object-state levels [`Value::get`] follows (a Namespace needs one).
const MAX_STATE_DEPTH: usize = 4;

/// A value built by the pickle machine.
#[derive(Debug, Clone, Default)]
pub enum Value {
    #[default]
    /// `None`.
    None,
    /// `True` or `False`.
    Bool(bool),
    /// An integer that fits 64 bits.
    Int(i64),
    /// An integer beyond i64 (little-endian two's complement bytes); only ever shown.
    BigInt(Rc<Vec<u8>>),
    /// A float.
    Float(f64),
    /// A string (Python 2 byte strings as latin-1 text).
    Str(Rc<str>),
    /// A byte string.
    Bytes(Rc<Vec<u8>>),
    /// A tuple.
    Tuple(Rc<Vec<Value>>),
    /// A list.
    List(Shared<Vec<Value>>),
    /// A dict, its pairs in insertion order.
    Dict(Shared<Vec<(Value, Value)>>),
    /// A set or frozenset.
    Set(Shared<Vec<Value>>),
    /// A global, named only.
    Global(Rc<Global>),
    /// An object we do not interpret.
    Object(Shared<Object>),
    /// A storage named by a persistent id.
    Storage(Rc<StorageRef>),
    /// A tensor rebuilt by one of torch's rebuild functions.
    Tensor(Rc<TensorRef>),
}

impl Value {
    /// The string, if this is one.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }

    /// The integer, if this is one that fits 64 bits.
    pub fn as_int(&self) -> Option<i64> {
        match self {
            Value::Int(i) => Some(*i),
            Value::Bool(b) => Some(*b as i64),
            _ => None,
        }
    }

    /// Look a string key up in a dict, or in the attribute dict of an object
    /// (`argparse.Namespace` keeps its fields in its BUILD state). An object's state may be the
    /// object itself (a hostile pickle can BUILD that), so the walk is a bounded loop.
    pub fn get(&self, key: &str) -> Option<Value> {
        let mut cur = self.clone();
        for _ in 0..MAX_STATE_DEPTH {
            let next = match &cur {
                Value::Dict(d) => {
                    return d
                        .borrow()
                        .iter()
                        .find(|(k, _)| k.as_str() == Some(key))
                        .map(|(_, v)| v.clone())
                }
                Value::Object(o) => {
                    let o = o.borrow();
                    if let Some(v) = o
                        .items
                        .iter()
                        .find(|(k, _)| k.as_str() == Some(key))
                        .map(|(_, v)| v.clone())
                    {
                        return Some(v);
                    }
                    o.state.clone()?
                }
                _ => return None,
            };
            cur = next;
        }
        None
    }

    /// Entries of a dict (or dict-like object), in file order.
    pub fn dict_items(&self) -> Option<Vec<(Value, Value)>> {
        match self {
            Value::Dict(d) => Some(d.borrow().clone()),
            Value::Object(o) => {
                let o = o.borrow();
                (!o.items.is_empty()).then(|| o.items.clone())
            }
            _ => None,
        }
    }

    /// A short, bounded description for messages: never walks deep or loops on cycles.
    pub fn describe(&self) -> String {
        let mut out = String::new();
        let s = &mut out;
        let _ = match self {
            Value::None => write!(s, "None"),
            Value::Bool(b) => write!(s, "{}", if *b { "True" } else { "False" }),
            Value::Int(i) => write!(s, "{i}"),
            Value::BigInt(b) => write!(s, "<int of {} bytes>", b.len()),
            Value::Float(f) => write!(s, "{f}"),
            Value::Str(x) => write!(s, "'{}'", shorten(x)),
            Value::Bytes(b) => write!(s, "<{} bytes>", b.len()),
            Value::Tuple(t) => write!(s, "<tuple of {}>", t.len()),
            Value::List(l) => write!(s, "<list of {}>", l.borrow().len()),
            Value::Dict(d) => write!(s, "<dict of {}>", d.borrow().len()),
            Value::Set(x) => write!(s, "<set of {}>", x.borrow().len()),
            Value::Global(g) => write!(s, "{}.{}", shorten(&g.module), shorten(&g.name)),
            Value::Object(o) => {
                let o = o.borrow();
                match &o.class {
                    Some(c) => write!(s, "<{}.{} object>", shorten(&c.module), shorten(&c.name)),
                    None => write!(s, "<object>"),
                }
            }
            Value::Storage(st) => write!(s, "<storage {}>", shorten(&st.key)),
            Value::Tensor(t) => write!(s, "<tensor {} {:?}>", t.dtype.torch_name(), t.shape),
        };
        out
    }

    /// Move the children of a container we hold alone into `out`, so that dropping a deeply
    /// nested value never recurses (a hostile file can nest a million levels). "Alone" counts
    /// strong references only: the [`Arena`]'s weak handles must not stop the unnesting.
    fn take_children(&mut self, out: &mut Vec<Value>) {
        match self {
            Value::Tuple(t) => {
                if let Some(v) = Rc::get_mut(t) {
                    out.append(v);
                }
            }
            Value::List(l) | Value::Set(l) if Rc::strong_count(l) == 1 => {
                if let Ok(mut v) = l.try_borrow_mut() {
                    out.append(&mut v);
                }
            }
            Value::Dict(d) if Rc::strong_count(d) == 1 => {
                if let Ok(mut v) = d.try_borrow_mut() {
                    drain_pairs(&mut v, out);
                }
            }
            Value::Object(o) if Rc::strong_count(o) == 1 => {
                if let Ok(mut o) = o.try_borrow_mut() {
                    drain_object(&mut o, out);
                }
            }
            _ => {}
        }
    }
}

impl Drop for Value {
    fn drop(&mut self) {
        let mut pending = Vec::new();
        self.take_children(&mut pending);
        while let Some(mut v) = pending.pop() {
            v.take_children(&mut pending);
            // `v` now holds no children of its own, so its drop is shallow.
        }
    }
}

/// Move a dict's keys and values into `out`, leaving it empty.
fn drain_pairs(pairs: &mut Vec<(Value, Value)>, out: &mut Vec<Value>) {
    for (k, x) in pairs.drain(..) {
        out.push(k);
        out.push(x);
    }
}

/// Move everything an object holds into `out`, leaving it empty.
fn drain_object(o: &mut Object, out: &mut Vec<Value>) {
    out.push(Value::Tuple(std::mem::take(&mut o.args)));
    out.append(&mut o.list);
    if let Some(s) = o.state.take() {
        out.push(s);
    }
    drain_pairs(&mut o.items, out);
}

/// Weak handles to every mutable container one pickle created. Dropping the arena empties the
/// containers still alive, which frees the reference cycles a hostile pickle can build (a list
/// appended to itself, an object whose state is itself) instead of leaking them. Keep it beside
/// the tree it belongs to and drop it after: containers cloned out of the tree are empty once
/// it is gone.
#[derive(Default)]
pub struct Arena(Vec<WeakContainer>);

enum WeakContainer {
    Values(Weak<RefCell<Vec<Value>>>),
    Pairs(Weak<RefCell<Vec<(Value, Value)>>>),
    Object(Weak<RefCell<Object>>),
}

impl Arena {
    /// Remember the container `v` is (other values need nothing).
    pub fn register(&mut self, v: &Value) {
        match v {
            Value::List(l) | Value::Set(l) => self.0.push(WeakContainer::Values(Rc::downgrade(l))),
            Value::Dict(d) => self.0.push(WeakContainer::Pairs(Rc::downgrade(d))),
            Value::Object(o) => self.0.push(WeakContainer::Object(Rc::downgrade(o))),
            _ => {}
        }
    }

    /// Take over another arena's containers (the legacy format parses five pickles).
    pub fn extend(&mut self, other: Arena) {
        let mut other = other;
        self.0.append(&mut other.0);
    }
}

impl Drop for Arena {
    fn drop(&mut self) {
        // Move every surviving container's children out first (each borrow is short and no
        // other borrow exists while the arena drops), then drop them all: `Value`'s own drop
        // is iterative, so this never recurses.
        let mut pending: Vec<Value> = Vec::new();
        for w in self.0.drain(..) {
            match w {
                WeakContainer::Values(w) => {
                    if let Some(rc) = w.upgrade() {
                        if let Ok(mut v) = rc.try_borrow_mut() {
                            pending.append(&mut v);
                        }
                    }
                }
                WeakContainer::Pairs(w) => {
                    if let Some(rc) = w.upgrade() {
                        if let Ok(mut v) = rc.try_borrow_mut() {
                            drain_pairs(&mut v, &mut pending);
                        }
                    }
                }
                WeakContainer::Object(w) => {
                    if let Some(rc) = w.upgrade() {
                        if let Ok(mut o) = rc.try_borrow_mut() {
                            drain_object(&mut o, &mut pending);
                        }
                    }
                }
            }
        }
        drop(pending);
    }
}
