//! The tree (`--tree`): every value of each file as a [`Node`], bounded in depth, width, string
//! length and total count, and a node's JSON form.

use std::collections::HashSet;

use serde::ser::{SerializeMap, Serializer};
use serde::Serialize;

use cpm_torch::value::{Object, Value};
use cpm_torch::{Dtype, TorchFile};

use super::FileTree;

/// Containers deeper than this show as one line (`<dict of 3>`): reference cycles end here.
pub const MAX_DEPTH: usize = 8;
/// Items of a list, tuple or set shown before `… N items`.
pub const MAX_ITEMS: usize = 8;
/// Entries of a dict or fields of an object shown before `… N more` (Megatron's args have a few
/// hundred).
pub const MAX_ENTRIES: usize = 512;
/// Characters of a string or key shown before it is cut.
pub const MAX_CHARS: usize = 60;
/// Values shown for all files together: a file of a million memo references to one large
/// container prints this many at most.
pub const MAX_NODES: usize = 8192;

/// A value as the tree shows it: containers cut to their first entries, strings to their first
/// characters, tensors to dtype and shape.
#[derive(Debug, Clone, PartialEq)]
pub enum Node {
    /// Python's `None`.
    None,
    /// A Python bool.
    Bool(bool),
    /// A Python int that fits 64 bits.
    Int(i64),
    /// A Python float.
    Float(f64),
    /// A string, cut to [`MAX_CHARS`] characters (`… (N bytes)` appended when cut).
    Str(String),
    /// A tensor, shown by its type and shape only.
    Tensor {
        /// Its element type.
        dtype: Dtype,
        /// Its shape.
        shape: Vec<u64>,
    },
    /// A dict of more than [`MAX_ITEMS`] tensors and nothing else (a weights dict).
    Tensors(usize),
    /// A value with no structure worth showing: bytes, a big integer, a Python global, a
    /// storage; `kind` names which, `text` describes it.
    Other {
        /// `int` (past 64 bits), `bytes`, `global` or `storage`.
        kind: &'static str,
        /// A short description.
        text: String,
    },
    /// A tuple, list or set: its first items and its length.
    List {
        /// `tuple`, `list` or `set`.
        kind: &'static str,
        /// The first [`MAX_ITEMS`] items.
        items: Vec<Node>,
        /// Items in all.
        len: usize,
    },
    /// A dict (`class` None) or an object (its class and fields): the first entries and the
    /// count.
    Map {
        /// The object's class; `None` for a dict.
        class: Option<String>,
        /// The first [`MAX_ENTRIES`] keys (or field names) and values.
        entries: Vec<(String, Node)>,
        /// Entries in all.
        len: usize,
    },
    /// Not shown: too deep (`text` is its short description) or past [`MAX_NODES`].
    Cut {
        /// Its short description (`<list of 3>`), or why nothing more is shown.
        text: String,
    },
}

/// Each file's tree, all of them within one [`MAX_NODES`] budget.
pub(super) fn trees<'f>(files: impl Iterator<Item = (&'f String, &'f TorchFile)>) -> Vec<FileTree> {
    let mut budget = MAX_NODES;
    files
        .map(|(display, f)| FileTree {
            file: display.clone(),
            value: node(&f.root, 0, &mut budget),
        })
        .collect()
}

/// `v` as a [`Node`], at most `budget` nodes (decremented), containers below [`MAX_DEPTH`].
pub fn node(v: &Value, depth: usize, budget: &mut usize) -> Node {
    if *budget == 0 {
        return over_budget();
    }
    *budget -= 1;
    let other = |kind, text| Node::Other { kind, text };
    match v {
        Value::None => Node::None,
        Value::Bool(b) => Node::Bool(*b),
        Value::Int(i) => Node::Int(*i),
        Value::Float(f) => Node::Float(*f),
        Value::Str(s) => Node::Str(cut(s)),
        Value::Tensor(t) => Node::Tensor {
            dtype: t.dtype,
            shape: t.shape.clone(),
        },
        Value::BigInt(_) => other("int", v.describe()),
        Value::Bytes(_) => other("bytes", v.describe()),
        Value::Global(_) => other("global", v.describe()),
        Value::Storage(_) => other("storage", v.describe()),
        _ if depth >= MAX_DEPTH => Node::Cut { text: v.describe() },
        Value::Tuple(t) => list("tuple", t, depth, budget),
        Value::List(l) | Value::Set(l) => match l.try_borrow() {
            Ok(items) => list(
                if matches!(v, Value::Set(_)) {
                    "set"
                } else {
                    "list"
                },
                &items,
                depth,
                budget,
            ),
            Err(_) => Node::Cut { text: v.describe() },
        },
        Value::Dict(d) => match d.try_borrow() {
            Ok(pairs) => dict(&pairs, depth, budget),
            Err(_) => Node::Cut { text: v.describe() },
        },
        Value::Object(o) => match o.try_borrow() {
            Ok(o) => object(&o, depth, budget),
            Err(_) => Node::Cut { text: v.describe() },
        },
    }
}

fn over_budget() -> Node {
    Node::Cut {
        text: format!("… not shown: more than {MAX_NODES} values"),
    }
}

/// `s` cut to [`MAX_CHARS`] characters, its byte length appended when cut (counting characters
/// of a memoized 1 MiB string at every reference would cost more than showing it).
fn cut(s: &str) -> String {
    match s.char_indices().nth(MAX_CHARS) {
        None => s.to_string(),
        Some((at, _)) => format!("{}… ({} bytes)", &s[..at], s.len()),
    }
}

fn list(kind: &'static str, items: &[Value], depth: usize, budget: &mut usize) -> Node {
    let items_shown = shown(
        items.iter().take(MAX_ITEMS).map(Child::Value),
        depth,
        budget,
    );
    Node::List {
        kind,
        items: items_shown,
        len: items.len(),
    }
}

/// What one entry of a map shows: a value, or an object's list items (held in the object, not
/// as a value of their own).
enum Child<'v> {
    Value(&'v Value),
    Items(&'v [Value]),
}

fn child(c: Child, depth: usize, budget: &mut usize) -> Node {
    match c {
        Child::Value(v) => node(v, depth, budget),
        Child::Items(_) if *budget == 0 => over_budget(),
        Child::Items(items) if depth >= MAX_DEPTH => {
            *budget -= 1;
            Node::Cut {
                text: format!("<list of {}>", items.len()),
            }
        }
        Child::Items(items) => {
            *budget -= 1;
            list("list", items, depth, budget)
        }
    }
}

fn dict(pairs: &[(Value, Value)], depth: usize, budget: &mut usize) -> Node {
    // A weights dict is listed in the table already.
    if pairs.len() > MAX_ITEMS && pairs.iter().all(|(_, x)| matches!(x, Value::Tensor(_))) {
        return Node::Tensors(pairs.len());
    }
    let entries = pairs.iter().map(|(k, x)| (key(k), Child::Value(x)));
    map(None, entries, pairs.len(), depth, budget)
}

/// The children of a container at `depth`. Past the budget only the first is shown (as the
/// note that the rest is not): every open container adds at most one line to [`MAX_NODES`].
fn shown<'v>(
    children: impl Iterator<Item = Child<'v>>,
    depth: usize,
    budget: &mut usize,
) -> Vec<Node> {
    let mut out = Vec::new();
    for c in children {
        let exhausted = *budget == 0;
        out.push(child(c, depth + 1, budget));
        if exhausted {
            break;
        }
    }
    out
}

/// The first [`MAX_ENTRIES`] of `len` entries. Only those are looked at: a memoized dict of a
/// million entries shown from a thousand places costs a thousand times 512 entries.
fn map<'v>(
    class: Option<String>,
    entries: impl Iterator<Item = (String, Child<'v>)>,
    len: usize,
    depth: usize,
    budget: &mut usize,
) -> Node {
    let (keys, children): (Vec<String>, Vec<Child>) = entries.take(MAX_ENTRIES).unzip();
    let nodes = shown(children.into_iter(), depth, budget);
    let entries = keys.into_iter().zip(nodes).collect();
    Node::Map {
        class,
        entries,
        len,
    }
}

/// A dict key as shown: strings cut, anything else described.
fn key(k: &Value) -> String {
    match k {
        Value::Str(s) => cut(s),
        other => other.describe(),
    }
}

/// An object: its class, then its constructor arguments, its state (a dict's entries become the
/// object's fields, as for `argparse.Namespace`), its list items and dict items.
fn object(o: &Object, depth: usize, budget: &mut usize) -> Node {
    let class = Some(match &o.class {
        Some(c) => format!("{}.{}", cut(&c.module), cut(&c.name)),
        None => "object".to_string(),
    });
    // Shares the tuple (an Rc), copies nothing.
    let args = Value::Tuple(o.args.clone());
    let state = match &o.state {
        Some(Value::Dict(d)) => d.try_borrow().ok(),
        _ => None,
    };
    let state_pairs: &[(Value, Value)] = state.as_deref().map_or(&[], |p| p.as_slice());
    let mut fields: Vec<(String, Child)> = Vec::new();
    if !o.args.is_empty() {
        fields.push(("args".into(), Child::Value(&args)));
    }
    match &o.state {
        Some(Value::Dict(_)) | None => {}
        Some(other) => fields.push(("state".into(), Child::Value(other))),
    }
    if !o.list.is_empty() {
        fields.push(("items".into(), Child::Items(&o.list)));
    }
    let len = fields.len() + state_pairs.len() + o.items.len();
    let pairs = state_pairs
        .iter()
        .chain(&o.items)
        .map(|(k, x)| (key(k), Child::Value(x)));
    map(class, fields.into_iter().chain(pairs), len, depth, budget)
}

/// JSON: scalars as themselves, lists as arrays, dicts as objects; what JSON has no word for is
/// an object tagged `$type` (`tensor`, `tensors`, `object`, `bytes`, `int`, `global`,
/// `storage`, `float` for NaN/Inf, `cut`), and a cut container ends with `{"$type": "more"}`
/// (arrays) or a `$more` key (objects) giving how many were left out.
impl Serialize for Node {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        match self {
            Node::None => s.serialize_unit(),
            Node::Bool(b) => s.serialize_bool(*b),
            Node::Int(i) => s.serialize_i64(*i),
            Node::Float(f) if f.is_finite() => s.serialize_f64(*f),
            Node::Float(f) => tagged(s, "float", |m| m.serialize_entry("value", &f.to_string())),
            Node::Str(x) => s.serialize_str(x),
            Node::Tensor { dtype, shape } => tagged(s, "tensor", |m| {
                m.serialize_entry("dtype", dtype.torch_name())?;
                m.serialize_entry("shape", shape)
            }),
            Node::Tensors(n) => tagged(s, "tensors", |m| m.serialize_entry("count", n)),
            Node::Other { kind, text } => tagged(s, kind, |m| m.serialize_entry("repr", text)),
            Node::Cut { text } => tagged(s, "cut", |m| m.serialize_entry("repr", text)),
            Node::List { items, len, .. } => {
                let more = len.saturating_sub(items.len());
                let tail = (more > 0).then_some(Item::More(more));
                s.collect_seq(items.iter().map(Item::Node).chain(tail))
            }
            Node::Map {
                class,
                entries,
                len,
            } => {
                let fields = Fields(entries, len.saturating_sub(entries.len()));
                match class {
                    None => fields.serialize(s),
                    Some(c) => tagged(s, "object", |m| {
                        m.serialize_entry("class", c)?;
                        m.serialize_entry("fields", &fields)
                    }),
                }
            }
        }
    }
}

/// An array item: a node, or the `{"$type": "more", "count": N}` that ends a cut list.
enum Item<'a> {
    Node(&'a Node),
    More(usize),
}

impl Serialize for Item<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        match self {
            Item::Node(n) => n.serialize(s),
            Item::More(n) => tagged(s, "more", |m| m.serialize_entry("count", n)),
        }
    }
}

/// A map's entries as a JSON object. A hostile pickle can repeat a key; JSON readers keep one
/// of the copies, so a repeat is written as `key#2`, `key#3`, ….
struct Fields<'a>(&'a [(String, Node)], usize);

impl Serialize for Fields<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(None)?;
        let mut seen: HashSet<String> = HashSet::new();
        for (k, v) in self.0 {
            let mut name = k.clone();
            // Ends: each try is a name not yet seen, and only entries seen so far are taken.
            for n in 2.. {
                if !seen.contains(&name) {
                    break;
                }
                name = format!("{k}#{n}");
            }
            m.serialize_entry(&name, v)?;
            seen.insert(name);
        }
        if self.1 > 0 {
            m.serialize_entry("$more", &self.1)?;
        }
        m.end()
    }
}

/// `{"$type": kind, …}` with the fields `f` adds.
fn tagged<S: Serializer>(
    s: S,
    kind: &str,
    f: impl FnOnce(&mut S::SerializeMap) -> std::result::Result<(), S::Error>,
) -> std::result::Result<S::Ok, S::Error> {
    let mut m = s.serialize_map(None)?;
    m.serialize_entry("$type", kind)?;
    f(&mut m)?;
    m.end()
}

#[cfg(test)]
mod tests {
    use super::super::tree_text;
    use super::*;
    use std::cell::RefCell;
    use std::rc::Rc;

    fn count(n: &Node) -> usize {
        1 + match n {
            Node::List { items, .. } => items.iter().map(count).sum(),
            Node::Map { entries, .. } => entries.iter().map(|(_, v)| count(v)).sum(),
            _ => 0,
        }
    }

    fn depth(n: &Node) -> usize {
        match n {
            Node::List { items, .. } => 1 + items.iter().map(depth).max().unwrap_or(0),
            _ => 0,
        }
    }

    /// A list that contains itself (a hostile pickle can build one) ends at the depth cap.
    #[test]
    fn a_reference_cycle_ends_at_the_depth_cap() {
        let l = Rc::new(RefCell::new(Vec::new()));
        l.borrow_mut().push(Value::List(l.clone()));
        let mut budget = MAX_NODES;
        let n = node(&Value::List(l.clone()), 0, &mut budget);
        l.borrow_mut().clear(); // break the cycle
        assert_eq!(depth(&n), MAX_DEPTH);
        assert_eq!(budget, MAX_NODES - (MAX_DEPTH + 1));
    }

    /// One memoized 512-entry dict shown from 512 places is 262,144 values; the tree stops at
    /// MAX_NODES and says so.
    #[test]
    fn shared_values_share_one_budget() {
        let pair = |i: usize, v: Value| (Value::Str(format!("k{i}").into()), v);
        let inner: Vec<_> = (0..512).map(|i| pair(i, Value::Int(1))).collect();
        let inner = Value::Dict(Rc::new(RefCell::new(inner)));
        let outer: Vec<_> = (0..512).map(|i| pair(i, inner.clone())).collect();
        let mut budget = MAX_NODES;
        let n = node(&Value::Dict(Rc::new(RefCell::new(outer))), 0, &mut budget);
        assert_eq!(budget, 0);
        // Past the budget each open container adds one line saying so.
        assert!(count(&n) <= MAX_NODES + MAX_DEPTH + 1, "{}", count(&n));
        let text = tree_text(&FileTree {
            file: "f".into(),
            value: n,
        });
        assert!(text.contains("… not shown: more than 8192 values"));
    }

    /// A hostile dict may repeat a key; the JSON object keeps every entry under its own name.
    #[test]
    fn repeated_keys_stay_distinct_in_json() {
        let n = Node::Map {
            class: None,
            entries: vec![
                ("a".into(), Node::Int(1)),
                ("a".into(), Node::Int(2)),
                ("a#2".into(), Node::Int(3)),
            ],
            len: 4,
        };
        assert_eq!(
            serde_json::to_string(&n).unwrap(),
            r#"{"a":1,"a#2":2,"a#2#2":3,"$more":1}"#
        );
    }

    /// Strings are cut by characters, never inside one, with their size.
    #[test]
    fn long_strings_are_cut_with_their_length() {
        assert_eq!(cut("short"), "short");
        let s = "é".repeat(100);
        assert_eq!(cut(&s), format!("{}… (200 bytes)", "é".repeat(MAX_CHARS)));
    }
}
