//! The `cpm-inspect` command: flags, text or JSON output, exit codes. The report is built by
//! `cpm_convert::inspect`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use serde::Serialize;

use cpm_cli::{emit_json, emit_raw, usage_error_with_warnings, JsonError};
use cpm_convert::cli::ModelArgs;
use cpm_convert::inspect::{self, Report};

const AFTER_HELP: &str = "\
Examples:
  cpm-inspect fixtures/tiny/ckpt
      every tensor as stored (name, dtype, shape, bytes, file), then the family and model sizes
  cpm-inspect CPM-large --mapped
      the GPT-2 tensors a conversion would write, and which stored tensors feed each
  cpm-inspect CPM-large/80000/mp_rank_00_model_states.pt --tree
      also the training state beside the weights (args, iteration, optimizer, RNG states)
  cpm-inspect CPM-large --json | jq '.sizes'
      the same as one JSON object

PATH is what cpm-convert accepts: a checkpoint root holding latest_checkpointed_iteration.txt,
an iteration directory holding mp_rank_XX_model_states.pt files, or one .pt file.

Only the checkpoint's structure is read, never tensor data, so a 5 GB checkpoint answers at
once. When the tensors form no GPT-2 model the mapping knows, they are still listed and the
reason is a warning (exit 0); --mapped needs that plan and fails without it.

With --json, stdout holds exactly one JSON object: {files, tensors, family, family_from, sizes,
warnings}, plus mapped (--mapped) and tree (--tree); or {\"error\": \"...\", \"warnings\": [...]}.
stderr holds only warnings.

Exit codes: 0 shown; 2 error (the input cannot be read, or --mapped without a plan).";

#[derive(Parser, Debug)]
#[command(
    name = "cpm-inspect",
    version,
    about = "Show what a checkpoint holds: its tensors as stored, the GPT-2 model they form, its training state",
    after_help = AFTER_HELP
)]
struct Cli {
    /// Checkpoint root, iteration directory, or single .pt file.
    path: PathBuf,

    /// Show the GPT-2 tensors a conversion would write (target, merged shape, dtype, sources,
    /// split, transpose, rank shapes) instead of the stored ones; fails when no plan can be built.
    #[arg(long)]
    mapped: bool,

    /// Also show each file's other values (args, iteration, optimizer and RNG state) as a tree,
    /// cut to a bounded size.
    #[arg(long)]
    tree: bool,

    #[command(flatten)]
    model: ModelArgs,

    /// Machine-readable output: stdout holds one JSON object (errors as {"error": "...",
    /// "warnings": [...]}), stderr only warnings.
    #[arg(long)]
    json: bool,
}

/// `--json`'s result: the report and the warnings it printed.
#[derive(Serialize)]
struct JsonReport<'a> {
    #[serde(flatten)]
    report: &'a Report,
    warnings: &'a [String],
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return usage_error_with_warnings("cpm-inspect", e),
    };
    cpm_cli::report_bus_errors(cli.json, "cpm-inspect", "inspecting it");
    let opts = inspect::Options {
        input: cli.path.clone(),
        family: cli.model.family(),
        hints: cli.model.hints(),
        mapped: cli.mapped,
        tree: cli.tree,
    };
    let mut warnings = Vec::new();
    let result = inspect::inspect(&opts, &mut warnings);
    for w in &warnings {
        say(&format!("warning: {w}"));
    }
    match result {
        Ok(report) if cli.json => emit_json(&JsonReport {
            report: &report,
            warnings: &warnings,
        }),
        Ok(report) => emit_raw(&inspect::text(&report)),
        Err(e) => {
            let msg = e.to_string();
            if cli.json {
                emit_json(&JsonError {
                    error: &msg,
                    warnings: Some(warnings),
                });
            } else {
                say(&format!("error: {msg}"));
            }
            return ExitCode::from(2);
        }
    }
    ExitCode::SUCCESS
}

/// A line on stderr; a closed stderr loses it instead of panicking as `eprintln!` would.
fn say(msg: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr().lock(), "cpm-inspect: {msg}");
}
