//! Aligned text tables for the tools' terminal output (`cpm-convert --dry-run`, `cpm-inspect`),
//! in one place so that both print the same columns the same way.
//!
//! Cells come from input files (tensor names, keys): control characters are escaped, so a name
//! cannot move the cursor or recolour the terminal, and a cell longer than `MAX_ALIGNED`
//! characters does not widen its column, so one hostile 1 MiB name cannot pad every other row to
//! 1 MiB (output quadratic in the file).

use std::borrow::Cow;
use std::fmt::Write as _;

use crate::plan::{Entry, Plan};

/// The widest cell that still sets its column's width; longer ones overflow their column.
pub(crate) const MAX_ALIGNED: usize = 100;

/// `s` with every control character escaped (`\n`, `\u{1b}`), borrowed when there is none.
pub(crate) fn clean(s: &str) -> Cow<'_, str> {
    if !s.chars().any(char::is_control) {
        return Cow::Borrowed(s);
    }
    Cow::Owned(
        s.chars()
            .map(|c| {
                if c.is_control() {
                    c.escape_default().to_string()
                } else {
                    c.to_string()
                }
            })
            .collect(),
    )
}

/// A shape as `[2560, 30000]`.
pub(crate) fn shape(s: &[u64]) -> String {
    format!(
        "[{}]",
        s.iter().map(u64::to_string).collect::<Vec<_>>().join(", ")
    )
}

/// `head` and `rows` as left-aligned columns two spaces apart, one line each, trailing spaces
/// trimmed. Rows shorter than `head` are fine; cells beyond it are ignored.
pub(crate) fn render(head: &[&str], rows: &[Vec<String>]) -> String {
    let head: Vec<Cow<'_, str>> = head.iter().map(|h| clean(h)).collect();
    let rows: Vec<Vec<Cow<'_, str>>> = rows
        .iter()
        .map(|r| r.iter().take(head.len()).map(|c| clean(c)).collect())
        .collect();
    let mut width = vec![0usize; head.len()];
    for row in std::iter::once(&head).chain(&rows) {
        for (w, cell) in width.iter_mut().zip(row) {
            let n = cell.chars().count();
            if n <= MAX_ALIGNED {
                *w = (*w).max(n);
            }
        }
    }
    let mut text = String::new();
    for row in std::iter::once(&head).chain(&rows) {
        let line: Vec<String> = row
            .iter()
            .zip(&width)
            .map(|(cell, w)| format!("{cell:<w$}"))
            .collect();
        let _ = writeln!(text, "{}", line.join("  ").trim_end());
    }
    text
}

/// The plan's summary line: the family, the grid, every model size with where the head count
/// came from, and the activation with why.
pub fn plan_summary(plan: &Plan) -> String {
    format!(
        "family {}, tensor-parallel {} x pipeline {}, {} layers, hidden {}, {} heads ({}), vocab {}, \
         {} positions, inner {}, activation {} ({})",
        clean(&plan.variant),
        plan.model_parallel,
        plan.pipeline_stages,
        plan.layers,
        plan.hidden,
        plan.heads.count,
        clean(&plan.heads.source),
        plan.vocab,
        plan.positions,
        plan.inner,
        clean(&plan.activation.name),
        clean(&plan.activation.source)
    )
}

/// Columns of [`plan_table`].
pub(crate) const PLAN_HEAD: [&str; 6] =
    ["SOURCE", "SPLIT", "RANK SHAPES", "TARGET", "SHAPE", "DTYPE"];

/// One output tensor per line: its source, how the ranks merge (`+T`: transposed), each rank's
/// shape, the target name, the merged shape and the dtype (`F32->F16` when cast).
pub fn plan_table(plan: &Plan) -> String {
    let rows: Vec<Vec<String>> = plan.entries.iter().map(plan_row).collect();
    render(&PLAN_HEAD, &rows)
}

/// One row of [`plan_table`].
pub(crate) fn plan_row(e: &Entry) -> Vec<String> {
    let ranks = e
        .rank_shapes
        .iter()
        .map(|s| shape(s))
        .collect::<Vec<_>>()
        .join(" ");
    let dtype = if e.dtype == e.source_dtype {
        e.dtype.safetensors_name().to_string()
    } else {
        format!(
            "{}->{}",
            e.source_dtype.safetensors_name(),
            e.dtype.safetensors_name()
        )
    };
    vec![
        e.source.clone(),
        format!("{}{}", e.split.name(), if e.transpose { "+T" } else { "" }),
        ranks,
        e.target.clone(),
        shape(&e.shape),
        dtype,
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_align_and_lines_are_trimmed() {
        let rows = vec![
            vec!["a".to_string(), "1".to_string()],
            vec!["long name".to_string(), "22".to_string()],
        ];
        assert_eq!(
            render(&["NAME", "N"], &rows),
            "NAME       N\na          1\nlong name  22\n"
        );
    }

    /// One overlong cell must not pad the other rows (output would grow with rows x its length).
    #[test]
    fn an_overlong_cell_does_not_widen_its_column() {
        let long = "x".repeat(10_000);
        let rows = vec![
            vec![long.clone(), "1".to_string()],
            vec!["b".to_string(), "2".to_string()],
        ];
        let text = render(&["NAME", "N"], &rows);
        assert_eq!(
            text.len(),
            "NAME  N\n".len() + long.len() + "  1\n".len() + "b     2\n".len()
        );
    }

    /// A name holding an escape sequence or a newline prints as text, on its own line.
    #[test]
    fn control_characters_are_escaped() {
        let rows = vec![vec!["a\nb\u{1b}[31m".to_string()]];
        assert_eq!(render(&["X"], &rows), "X\na\\nb\\u{1b}[31m\n");
        assert!(matches!(clean("plain"), Cow::Borrowed(_)));
    }
}
