//! The report as `cpm-inspect` prints it: tables of the files and tensors (or the GPT-2 map),
//! the family and sizes line, and each file's tree as indented text.

use std::fmt::Write as _;

use crate::plan::Entry;
use crate::table;

use super::tree::Node;
use super::{FileTree, Report, TensorRow};

/// The report as `cpm-inspect` prints it: the files, then the tensors as stored (or, with
/// `--mapped`, the GPT-2 map as `cpm-convert --dry-run` prints it), then the family and sizes,
/// then the trees.
pub fn text(r: &Report) -> String {
    let mut out = String::new();
    let files: Vec<Vec<String>> = r
        .files
        .iter()
        .map(|f| vec![f.name.clone(), f.format.to_string(), f.bytes.to_string()])
        .collect();
    out.push_str(&table::render(&["FILE", "FORMAT", "BYTES"], &files));
    out.push('\n');
    match &r.mapped {
        Some(entries) => out.push_str(&mapped_text(entries)),
        None => out.push_str(&tensors_text(&r.tensors, r.files.len())),
    }
    if let Some(c) = &r.chunks {
        out.push('\n');
        out.push_str(&super::chunks::text(c));
    }
    out.push('\n');
    if let Some(z) = &r.zero {
        out.push_str(&crate::zero::report::text(z));
        out.push('\n');
    }
    out.push_str(&sizes_text(r));
    for t in r.tree.iter().flatten() {
        out.push('\n');
        out.push_str(&tree_text(t));
    }
    out
}

fn tensors_text(rows: &[TensorRow], files: usize) -> String {
    if rows.is_empty() {
        return format!("no tensors listed in {files} file(s) (see the warning)\n");
    }
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|t| {
            vec![
                t.name.clone(),
                t.dtype.to_string(),
                table::shape(&t.shape),
                t.bytes.map_or("overflows".into(), |b| b.to_string()),
                t.file.clone(),
            ]
        })
        .collect();
    let mut out = table::render(&["NAME", "DTYPE", "SHAPE", "BYTES", "FILE"], &cells);
    let total = rows
        .iter()
        .filter_map(|t| t.bytes)
        .fold(0u64, u64::saturating_add);
    let _ = writeln!(
        out,
        "{} tensors in {files} file(s), {total} bytes of tensor data",
        rows.len()
    );
    out
}

fn mapped_text(entries: &[Entry]) -> String {
    let rows: Vec<Vec<String>> = entries.iter().map(table::plan_row).collect();
    let mut out = table::render(&table::PLAN_HEAD, &rows);
    let bytes = entries
        .iter()
        .map(Entry::nbytes)
        .fold(0u64, u64::saturating_add);
    let _ = writeln!(
        out,
        "{} GPT-2 tensors, {bytes} bytes of tensor data",
        entries.len()
    );
    out
}

fn sizes_text(r: &Report) -> String {
    match (&r.family, &r.family_from, &r.sizes) {
        (Some(f), Some(from), Some(s)) => format!(
            "family {} ({}): tensor-parallel {} x pipeline {}, {} layers, hidden {}, {} heads \
             ({}), vocab {}, {} positions, inner {}, activation {} ({})\n",
            table::clean(f),
            table::clean(from),
            s.model_parallel,
            s.pipeline_stages,
            s.layers,
            s.hidden,
            s.heads.count,
            table::clean(&s.heads.source),
            s.vocab,
            s.positions,
            s.inner,
            table::clean(&s.activation.name),
            table::clean(&s.activation.source)
        ),
        _ => "family and sizes unknown: no GPT-2 plan for these tensors (see the warning)\n".into(),
    }
}

/// The longest line a list holding lists is shown on; longer ones are shown an item a line.
const INLINE_CHARS: usize = 100;

/// One file's tree as indented text, two spaces a level.
pub fn tree_text(t: &FileTree) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "{}", table::clean(&t.file));
    match &t.value {
        Node::Map { .. } | Node::List { .. } => children(&t.value, 1, &mut out),
        other => line(&mut out, 1, "", other),
    }
    out
}

/// One line for `n` under `label` (`key: ` or `- `), then its children indented.
fn line(out: &mut String, level: usize, label: &str, n: &Node) {
    let pad = "  ".repeat(level);
    match inline(n) {
        Some(s) => {
            let _ = writeln!(out, "{pad}{label}{s}");
        }
        None => {
            let head = match n {
                Node::Map { class: Some(c), .. } => table::clean(c).into_owned(),
                Node::Map { len, .. } => format!("dict ({})", count(*len, "entry", "entries")),
                Node::List { kind, len, .. } => {
                    format!("{kind} ({})", count(*len, "item", "items"))
                }
                _ => String::new(),
            };
            let _ = writeln!(out, "{pad}{label}{head}");
            children(n, level + 1, out);
        }
    }
}

fn count(n: usize, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

fn children(n: &Node, level: usize, out: &mut String) {
    let pad = "  ".repeat(level);
    match n {
        Node::Map { entries, len, .. } => {
            for (k, v) in entries {
                line(out, level, &format!("{}: ", table::clean(k)), v);
            }
            if *len > entries.len() {
                let _ = writeln!(out, "{pad}… {} more", len - entries.len());
            }
        }
        Node::List { items, len, .. } => {
            for v in items {
                line(out, level, "- ", v);
            }
            if *len > items.len() {
                let _ = writeln!(out, "{pad}… {len} items");
            }
        }
        _ => {}
    }
}

/// `n` on one line, when it fits there: scalars, empty containers, lists of scalars.
fn inline(n: &Node) -> Option<String> {
    Some(match n {
        Node::None => "None".into(),
        Node::Bool(b) => if *b { "True" } else { "False" }.into(),
        Node::Int(i) => i.to_string(),
        Node::Float(f) => format!("{f:?}"),
        Node::Str(s) => format!("{s:?}"),
        Node::Tensor { dtype, shape } => {
            format!("tensor {} {}", dtype.torch_name(), table::shape(shape))
        }
        Node::Tensors(n) => format!("{{{n} tensors}}"),
        Node::Other { text, .. } | Node::Cut { text } => table::clean(text).into_owned(),
        Node::Map {
            class: None,
            len: 0,
            ..
        } => "{}".into(),
        Node::Map { .. } => return None,
        Node::List { kind, items, len } => {
            let shown: Option<Vec<String>> = items.iter().map(inline).collect();
            let mut shown = shown?;
            if *len > items.len() {
                shown.push(format!("… {len} items"));
            }
            let text = match (*kind, shown.len()) {
                ("tuple", 1) => format!("({},)", shown[0]),
                ("tuple", _) => format!("({})", shown.join(", ")),
                ("set", 0) => "set()".to_string(),
                ("set", _) => format!("{{{}}}", shown.join(", ")),
                _ => format!("[{}]", shown.join(", ")),
            };
            // A list of lists on one line only while it stays short.
            let nested = items.iter().any(|x| matches!(x, Node::List { .. }));
            if nested && text.chars().count() > INLINE_CHARS {
                return None;
            }
            text
        }
    })
}
