//! `cpm-verify`: flags, output and exit codes; the work is in the `cpm_verify` library.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use cpm_cli::{emit, json_error, usage_error};
use cpm_verify::{compare::Figures, Device, Options, Report};

const AFTER_HELP: &str = "\
Examples (the fixtures ship with the repository):
  cpm-verify fixtures/tiny/hf fixtures/tiny/reference
  cpm-verify fixtures/tiny/hf fixtures/tiny/reference-megatron --json > verify.json
  cpm-verify fixtures/tiny/hf fixtures/tiny/reference --device cuda --atol 2e-3 --threads 8

Tolerance: an element passes when |ours - ref| <= atol + rtol * |ref|; the run passes when every
element does and the argmax agrees at every position (except where the reference's two largest
logits are within tolerance of each other). Values come from the flags, else fixture.json, else
atol = rtol = 1e-3.

Exit codes:
  0  the logits match the reference
  1  mismatch: the port is wrong (or the tolerance too tight)
  2  error: missing or invalid files, model and fixture disagree, device unavailable";

/// Check a Hugging Face GPT-2 port against logits recorded from the original implementation.
#[derive(Parser, Debug)]
#[command(
    name = "cpm-verify",
    version,
    after_help = AFTER_HELP,
    override_usage = "cpm-verify MODEL_DIR FIXTURE_DIR [--atol X] [--rtol X] [--json] \
                      [--device cpu|cuda|cuda:N] [--threads N]"
)]
struct Cli {
    /// Model directory: config.json plus model.safetensors or model.safetensors.index.json.
    model_dir: PathBuf,
    /// Fixture directory: input_ids.npy, logits.npy and optionally fixture.json.
    fixture_dir: PathBuf,
    /// Absolute tolerance (overrides fixture.json).
    #[arg(long)]
    atol: Option<f64>,
    /// Relative tolerance (overrides fixture.json).
    #[arg(long)]
    rtol: Option<f64>,
    /// Print one JSON object on stdout instead of the table.
    #[arg(long)]
    json: bool,
    /// Where to run the forward pass: cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu")]
    device: Device,
    /// CPU threads for the whole forward pass (products, widening, attention) [default:
    /// RAYON_NUM_THREADS when set, else all cores].
    #[arg(long)]
    threads: Option<usize>,
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return usage_error("cpm-verify", e),
    };
    let mut opts = Options {
        device: cli.device,
        atol: cli.atol,
        rtol: cli.rtol,
        ..Options::default()
    };
    if let Some(t) = cli.threads {
        opts.threads = t;
    }
    match cpm_verify::verify(&cli.model_dir, &cli.fixture_dir, &opts) {
        Ok(report) => {
            for w in &report.warnings {
                eprintln!("cpm-verify: warning: {w}");
            }
            if cli.json {
                match serde_json::to_string_pretty(&report) {
                    Ok(s) => emit(&s),
                    Err(e) => return json_error(&format!("encoding the report: {e}")),
                }
            } else {
                emit(&table(&cli, &report));
            }
            ExitCode::from(if report.pass() { 0 } else { 1 })
        }
        Err(e) => {
            let msg = format!("{:#}", anyhow::Error::new(e));
            if cli.json {
                return json_error(&msg);
            }
            eprintln!("cpm-verify: error: {msg}");
            ExitCode::from(2)
        }
    }
}

fn row_line(label: &str, f: &Figures) -> String {
    // Undefined when every reference in the row is zero.
    let rel = f
        .max_rel_diff
        .map_or_else(|| "n/a".to_string(), |r| format!("{r:.3e}"));
    format!(
        "{label:<5} {:>10.3e} {:>10.3e} {:>10} {:>7.1}% {:>10.3e} {:>10.3e} {:>8} {}",
        f.max_abs_diff,
        f.mean_abs_diff,
        rel,
        100.0 * f.top1_agreement,
        f.kl_mean,
        f.kl_max,
        f.out_of_tolerance,
        if f.pass { "ok" } else { "MISMATCH" }
    )
}

/// The human report. Writing to a String cannot fail, hence the ignored results.
fn table(cli: &Cli, r: &Report) -> String {
    let mut t = String::new();
    let _ = writeln!(
        t,
        "cpm-verify: {}  model {}  fixture {}",
        if r.pass() { "PASS" } else { "MISMATCH" },
        cli.model_dir.display(),
        cli.fixture_dir.display()
    );
    if let Some(d) = &r.description {
        let _ = writeln!(t, "  {d}");
    }
    let _ = writeln!(
        t,
        "  {} x {} tokens, vocab {}, device {} ({} threads), forward {:.3} s, atol {:e} rtol {:e}",
        r.batch, r.seq, r.vocab, r.run.device, r.run.threads, r.run.forward_seconds, r.atol, r.rtol
    );
    let _ = writeln!(
        t,
        "{:<5} {:>10} {:>10} {:>10} {:>8} {:>10} {:>10} {:>8}",
        "row", "max|diff|", "mean|diff|", "max rel", "top-1", "KL mean", "KL max", "out-tol"
    );
    for row in &r.rows {
        let _ = writeln!(t, "{}", row_line(&row.row.to_string(), &row.figures));
    }
    let _ = writeln!(t, "{}", row_line("all", &r.overall));
    if let Some(w) = &r.overall.worst {
        let _ = writeln!(
            t,
            "  largest difference: row {} position {} logit {}: ours {} reference {}",
            w.row, w.position, w.token, w.ours, w.reference
        );
    }
    if r.overall.top1_mismatches > 0 || r.overall.top1_ties_excused > 0 {
        let _ = writeln!(
            t,
            "  top-1 disagreements: {} (plus {} excused near-ties)",
            r.overall.top1_mismatches, r.overall.top1_ties_excused
        );
    }
    if r.overall.non_finite > 0 {
        let _ = writeln!(
            t,
            "  {} of our logits are NaN or infinite",
            r.overall.non_finite
        );
    }
    t
}
