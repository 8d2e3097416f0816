//! The `cpm-diff` command: flags, the text and JSON reports, exit codes as diff(1). The work is
//! in the library (`cpm_convert::diff`).

use std::cell::RefCell;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;

use cpm_cli as cli;
use cpm_convert::cli::ModelArgs;
use cpm_convert::diff::{Change, Options, Report, Tensor, Values};
use cpm_convert::Progress;

const AFTER_HELP: &str = "\
Examples:
  cpm-diff CPM-large cpm-lm-hf --values
      check a conversion: every tensor of the port equals the original's, bit for bit (exit 0)
  cpm-diff fixtures/tiny/ckpt fixtures/tiny/ckpt-mp1 --values
      the same model saved over 2 and over 1 model-parallel ranks: equal
  cpm-diff fixtures/families/megatron-v0/iter_0000100 fixtures/families/nanogpt-compiled/ckpt.pt \
      --values --vocab-size 1000 --dtype-insensitive
      one model saved by Megatron-LM (fp16, padded vocabulary) and by nanoGPT (fp32): equal
  cpm-diff old.pt new.pt --values --atol 1e-3 --json
      which tensors moved by more than 1e-3, as one JSON object
  cpm-diff fixtures/tiny/ckpt fixtures/tiny/ckpt-legacy --raw
      the weights as stored, rank file by rank file (names prefixed mp_rank_XX:)

A and B are anything cpm-convert reads, of any GPT-2 family it knows (each detected unless
--from or --mapping says). Both are mapped to canonical GPT-2 names and layout first (exactly
what cpm-convert would write, dtype kept), so the same model saved by another family or in
another layout compares equal; --raw compares the names as stored.

The report lists the tensors only in A, only in B, and those whose shape or dtype differ; with
--values, every common tensor of equal shape is also compared in f32 (f64 sums), one pair in
memory at a time, and each differing tensor shows its largest |a-b|, how many elements differ,
the first differing index, |A-B|/|A| and the cosine similarity. Equal means bit-for-bit after
widening to f32 (-0 differs from +0), or |a-b| <= X with --atol X; a NaN only equals a
bit-identical NaN.

With --json, stdout holds exactly one JSON object: the report, or {\"error\": \"...\",
\"warnings\": [...]}; stderr holds only warnings.

Exit codes: 0 equal; 1 different; 2 error (unreadable input, a checkpoint cpm-convert would
refuse, bad usage).";

#[derive(Parser, Debug)]
#[command(
    name = "cpm-diff",
    version,
    about = "Compare two GPT-2 checkpoints' tensor maps (and values), mapped to canonical GPT-2 names",
    after_help = AFTER_HELP
)]
struct Cli {
    /// First checkpoint (root, iteration directory, or .pt file).
    a: PathBuf,

    /// Second checkpoint.
    b: PathBuf,

    /// Compare the tensors' values too (reads every common tensor once).
    #[arg(long)]
    values: bool,

    /// Values within X of each other count as equal (0: bit-for-bit after widening to f32).
    #[arg(long, value_name = "X", default_value_t = 0.0, value_parser = parse_atol)]
    atol: f64,

    /// Do not report dtype differences (values are compared after widening to f32 anyway).
    #[arg(long)]
    dtype_insensitive: bool,

    /// Compare the weights as stored (each rank file's names, shapes, dtypes), not mapped.
    #[arg(long)]
    raw: bool,

    #[command(flatten)]
    model: ModelArgs,

    /// Machine-readable output: stdout holds one JSON object (the report, or {"error": "...",
    /// "warnings": [...]}), stderr only warnings.
    #[arg(long)]
    json: bool,
}

fn parse_atol(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(x) if x.is_finite() && x >= 0.0 => Ok(x),
        _ => Err(format!("expected a finite number >= 0, found {s:?}")),
    }
}

/// Warnings, printed as they happen and kept for the JSON object.
#[derive(Default)]
struct Ui {
    warnings: RefCell<Vec<String>>,
}

impl Progress for Ui {
    fn warn(&self, msg: &str) {
        eprintln!("cpm-diff: warning: {msg}");
        self.warnings.borrow_mut().push(msg.to_string());
    }
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return cli::usage_error_with_warnings("cpm-diff", e),
    };
    cli::report_bus_errors(cli.json, "cpm-diff", "comparing it");
    let ui = Ui::default();
    match run(&cli, &ui) {
        Ok(report) => {
            if cli.json {
                cli::emit_json(&report);
            } else {
                cli::emit_raw(&render(&report));
            }
            ExitCode::from(if report.equal { 0 } else { 1 })
        }
        Err(e) => {
            let msg = format!("{e:#}");
            if cli.json {
                cli::emit_json(&cli::JsonError {
                    error: &msg,
                    warnings: Some(ui.warnings.take()),
                });
            } else {
                eprintln!("cpm-diff: error: {msg}");
            }
            ExitCode::from(2)
        }
    }
}

fn run(cli: &Cli, ui: &Ui) -> anyhow::Result<Report> {
    let opts = Options {
        heads: cli.model.heads,
        vocab_size: cli.model.vocab_size,
        activation: cli.model.activation.clone(),
        family: cli.model.family(),
        raw: cli.raw,
        values: cli.values,
        atol: cli.atol,
        dtype_insensitive: cli.dtype_insensitive,
    };
    Ok(cpm_convert::diff::diff(&cli.a, &cli.b, &opts, ui)?)
}

fn shape(s: &[u64]) -> String {
    let dims: Vec<String> = s.iter().map(u64::to_string).collect();
    format!("[{}]", dims.join(", "))
}

/// The text report: one section per kind of difference (only those that occur), then the
/// one-line summary.
fn render(r: &Report) -> String {
    let mut t = String::new();
    let tensors = |t: &mut String, title: &str, list: &[Tensor]| {
        if !list.is_empty() {
            let _ = writeln!(t, "{title}:");
            for x in list {
                let _ = writeln!(t, "  {}  {}  {}", x.name, shape(&x.shape), x.dtype);
            }
        }
    };
    tensors(&mut t, "only in A", &r.only_in_a);
    tensors(&mut t, "only in B", &r.only_in_b);
    if !r.changed.is_empty() {
        let _ = writeln!(t, "changed (A -> B):");
        for c in &r.changed {
            let _ = match c {
                Change::Shape { name, a, b } => {
                    writeln!(t, "  {name}  shape {} -> {}", shape(a), shape(b))
                }
                Change::Dtype { name, a, b } => writeln!(t, "  {name}  dtype {a} -> {b}"),
            };
        }
    }
    if let Some(values) = r.values.as_deref().filter(|v| !v.is_empty()) {
        let _ = writeln!(t, "values differ:");
        for v in values {
            let _ = writeln!(t, "  {}", value_line(v));
        }
    }
    let _ = writeln!(t, "{}", summary_line(r));
    t
}

fn value_line(v: &Values) -> String {
    let opt = |x: Option<f64>, f: &dyn Fn(f64) -> String| x.map_or("n/a".into(), f);
    format!(
        "{}  {} of {} elements ({}) from {}; max |a-b| {}; |A-B|/|A| {}; cosine {}",
        v.name,
        v.differing,
        v.elements,
        percent(v.fraction),
        shape(&v.first_index),
        opt(v.max_abs_diff, &|x| format!("{x}")),
        opt(v.rel_diff, &|x| {
            if (1e-3..1e4).contains(&x) {
                format!("{x:.4}")
            } else {
                format!("{x:.3e}")
            }
        }),
        // Every digit: a cosine is interesting where it differs from 1 in the 9th place.
        opt(v.cosine, &|x| format!("{x}")),
    )
}

/// A fraction as a percentage that does not round a single element of millions to 0.
fn percent(f: f64) -> String {
    let p = f * 100.0;
    if p >= 0.01 {
        format!("{p:.2}%")
    } else {
        format!("{p:.2e}%")
    }
}

fn summary_line(r: &Report) -> String {
    let s = &r.summary;
    let mut line = format!(
        "A {} tensors, B {}: {} common, {} only in A, {} only in B, {} changed",
        s.tensors_a, s.tensors_b, s.common, s.only_in_a, s.only_in_b, s.changed
    );
    if let (Some(same), Some(differ)) = (s.identical, s.differing) {
        let _ = write!(line, "; values: {same} identical, {differ} differ");
    }
    line.push_str(if r.equal { ": equal" } else { ": different" });
    line
}
