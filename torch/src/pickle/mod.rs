//! A pickle machine that executes nothing.
//!
//! GLOBAL names a class or function but never resolves it; REDUCE, NEWOBJ and BUILD mean
//! something only for torch's tensor rebuild functions and a few containers, and build an inert
//! [`Object`](crate::value::Object) for everything else. Every length from the file is checked
//! against the bytes that remain before anything is allocated, and the stack, mark and memo
//! sizes are bounded.
//!
//! [`op`] names the opcodes; `machine` holds the stack, memo and memory budget and dispatches;
//! `data` builds numbers, strings and containers; `rebuild` gives torch's persistent ids and
//! rebuild functions their meaning.

mod data;
mod machine;
pub mod op;
mod rebuild;

use std::path::Path;
use std::rc::Rc;

use crate::error::Result;
use crate::value::{Arena, StorageRef, Value};

pub use machine::Budget;
use machine::Machine;
pub use op::Op;

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

/// Parse one pickle starting at `data[0]`. `base` is the offset of `data` in the file, for
/// messages.
pub fn parse(data: &[u8], path: &Path, base: u64) -> Result<Parsed> {
    parse_within(data, path, base, &mut Budget::for_bytes(data.len()))
}

/// [`parse`], charging what the values cost to `budget`, shared with other pickles of the file.
pub fn parse_within(data: &[u8], path: &Path, base: u64, budget: &mut Budget) -> Result<Parsed> {
    let mut m = Machine::new(data, path, base, budget);
    let value = m.run()?;
    Ok(Parsed {
        value,
        consumed: m.pos,
        storages: m.storages,
        arena: m.arena,
    })
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
        p.extend(std::iter::repeat(Op::Mark.byte()).take(1_000_000));
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
