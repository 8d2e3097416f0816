//! The `cpm-convert` command: flags, progress bar, messages, exit codes. The work is in the
//! library.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, ValueEnum};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use cpm_convert::{Options, OutDtype, Progress};

const AFTER_HELP: &str = "\
Examples:
  cpm-convert CPM-Generate/model/CPM-large -o cpm-lm-hf
      convert the released checkpoint (root with latest_checkpointed_iteration.txt)
  cpm-convert ckpt/80000 -o out --heads 32 --dtype f16
      convert one iteration directory holding mp_rank_XX_model_states.pt
  cpm-convert model.pt --dry-run
      show what would be written, reading only the checkpoint's structure

INPUT is a checkpoint root holding latest_checkpointed_iteration.txt, an iteration directory
holding mp_rank_XX_model_states.pt files, or one .pt file (model-parallel size 1).

OUT_DIR receives model.safetensors, config.json and SHA256SUMS (check with
`cd OUT_DIR && sha256sum -c SHA256SUMS`). It is written in a temporary directory beside it
and renamed into place only when complete; a failed run leaves nothing behind.

Exit codes: 0 success; 2 error (bad input, inconsistent ranks, refused output directory).";

#[derive(Parser, Debug)]
#[command(
    name = "cpm-convert",
    version,
    about = "Port CPM-LM's model-parallel Megatron/DeepSpeed checkpoints to Hugging Face GPT-2 safetensors",
    after_help = AFTER_HELP
)]
struct Cli {
    /// Checkpoint root, iteration directory, or single .pt file.
    input: PathBuf,

    /// Output directory (must not exist or be empty, unless --force).
    #[arg(
        short,
        long,
        value_name = "OUT_DIR",
        required_unless_present = "dry_run"
    )]
    output: Option<PathBuf>,

    /// Element type of the written weights. Casts that overflow are errors.
    #[arg(long, value_enum, default_value_t = DtypeArg::Keep)]
    dtype: DtypeArg,

    /// Number of attention heads (needed when the checkpoint does not record it and the size
    /// is not a released CPM-LM size).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    heads: Option<u64>,

    /// Replace a non-empty OUT_DIR whole.
    #[arg(long)]
    force: bool,

    /// Treat NaN/Inf values in the weights as an error instead of a warning.
    #[arg(long)]
    strict: bool,

    /// Print the conversion plan on stdout and write nothing (reads no tensor data).
    #[arg(long)]
    dry_run: bool,

    /// Machine-readable output on stdout: the plan with --dry-run, else a summary; errors as
    /// {"error": "..."}.
    #[arg(long)]
    json: bool,

    /// No progress bar and no summary line (warnings and errors are still printed).
    #[arg(short, long)]
    quiet: bool,

    /// A mapping file to use instead of the built-in CPM-LM one (see mappings/).
    #[arg(long, value_name = "FILE")]
    mapping: Option<PathBuf>,
}

#[derive(Copy, Clone, Debug, ValueEnum)]
enum DtypeArg {
    Keep,
    F16,
    Bf16,
    F32,
}

struct Bar {
    bar: ProgressBar,
    /// Test hook: pause after this many tensors so a test can kill the process mid-conversion.
    pause_after: Option<u64>,
    tensors: std::sync::atomic::AtomicU64,
}

impl Progress for Bar {
    fn begin(&self, total: u64) {
        self.bar.set_length(total);
        if self.pause_after == Some(0) {
            std::thread::sleep(std::time::Duration::from_secs(60));
        }
    }
    fn advance(&self, bytes: u64) {
        self.bar.inc(bytes);
        let done = self
            .tensors
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            + 1;
        if self.pause_after == Some(done) {
            std::thread::sleep(std::time::Duration::from_secs(60));
        }
    }
    fn warn(&self, msg: &str) {
        self.bar
            .suspend(|| eprintln!("cpm-convert: warning: {msg}"));
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(&cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            if cli.json {
                emit(&format!(
                    "{}\n",
                    serde_json::json!({ "error": format!("{e:#}") })
                ));
            }
            eprintln!("cpm-convert: error: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn run(cli: &Cli) -> anyhow::Result<()> {
    let dtype = match cli.dtype {
        DtypeArg::Keep => OutDtype::Keep,
        DtypeArg::F16 => OutDtype::F16,
        DtypeArg::Bf16 => OutDtype::BF16,
        DtypeArg::F32 => OutDtype::F32,
    };
    if cli.dry_run {
        let src = cpm_convert::open(&cli.input, cli.mapping.as_deref())?;
        let plan = cpm_convert::plan(&src, cli.heads, dtype)?;
        if cli.json {
            emit(&format!("{}\n", serde_json::to_string_pretty(&plan)?));
        } else {
            print_plan(&plan);
        }
        return Ok(());
    }
    let output = cli
        .output
        .clone()
        .ok_or_else(|| anyhow::anyhow!("-o OUT_DIR is required unless --dry-run"))?;
    let opts = Options {
        input: cli.input.clone(),
        output,
        dtype,
        heads: cli.heads,
        force: cli.force,
        strict: cli.strict,
        mapping: cli.mapping.clone(),
    };
    let bar = if cli.quiet || !std::io::stderr().is_terminal() {
        ProgressBar::hidden()
    } else {
        let b = ProgressBar::with_draw_target(Some(0), ProgressDrawTarget::stderr());
        b.set_style(
            ProgressStyle::with_template(
                "{bar:40} {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        b
    };
    let progress = Bar {
        bar,
        pause_after: std::env::var("CPM_CONVERT_TEST_PAUSE_AFTER")
            .ok()
            .and_then(|v| v.parse().ok()),
        tensors: Default::default(),
    };
    let summary = cpm_convert::convert(&opts, &progress)?;
    progress.bar.finish_and_clear();
    if cli.json {
        emit(&format!("{}\n", serde_json::to_string_pretty(&summary)?));
    }
    if !cli.quiet {
        eprintln!(
            "cpm-convert: wrote {} tensors, {} to {} in {:.2} s{}",
            summary.tensors,
            human_bytes(summary.files.iter().map(|f| f.bytes).sum()),
            summary.output.display(),
            summary.seconds,
            if !summary.warnings.is_empty() {
                format!(" ({} warning(s))", summary.warnings.len())
            } else {
                String::new()
            }
        );
    }
    Ok(())
}

fn human_bytes(b: u64) -> String {
    let units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = b as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < units.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{b} B")
    } else {
        format!("{v:.1} {}", units[u])
    }
}

/// Write to stdout; a closed pipe (`| head`) ends the output quietly instead of panicking.
fn emit(text: &str) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(text.as_bytes()).and_then(|_| out.flush());
}

fn print_plan(plan: &cpm_convert::Plan) {
    let mut text = String::new();
    use std::fmt::Write as _;
    let _ = writeln!(
        text,
        "variant {}, model-parallel size {}, {} layers, hidden {}, {} heads ({}), vocab {}, {} positions, inner {}",
        plan.variant,
        plan.model_parallel,
        plan.layers,
        plan.hidden,
        plan.heads.count,
        plan.heads.source,
        plan.vocab,
        plan.positions,
        plan.inner
    );
    let shape = |s: &[u64]| {
        format!(
            "[{}]",
            s.iter().map(u64::to_string).collect::<Vec<_>>().join(", ")
        )
    };
    let rows: Vec<[String; 6]> = plan
        .entries
        .iter()
        .map(|e| {
            let ranks = e
                .rank_shapes
                .iter()
                .map(|s| shape(s))
                .collect::<Vec<_>>()
                .join(" ");
            [
                e.source.clone(),
                format!("{}{}", e.split.name(), if e.transpose { "+T" } else { "" }),
                ranks,
                e.target.clone(),
                shape(&e.shape),
                if e.dtype == e.source_dtype {
                    e.dtype.safetensors_name().to_string()
                } else {
                    format!(
                        "{}->{}",
                        e.source_dtype.safetensors_name(),
                        e.dtype.safetensors_name()
                    )
                },
            ]
        })
        .collect();
    let head = ["SOURCE", "SPLIT", "RANK SHAPES", "TARGET", "SHAPE", "DTYPE"].map(String::from);
    let mut w = [0usize; 6];
    for r in std::iter::once(&head).chain(&rows) {
        for (i, c) in r.iter().enumerate() {
            w[i] = w[i].max(c.chars().count());
        }
    }
    for r in std::iter::once(&head).chain(&rows) {
        let line: Vec<String> = r
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{c:<width$}", width = w[i]))
            .collect();
        let _ = writeln!(text, "{}", line.join("  ").trim_end());
    }
    let _ = writeln!(
        text,
        "{} tensors, {} bytes to write",
        plan.entries.len(),
        plan.total_bytes()
    );
    emit(&text);
}
