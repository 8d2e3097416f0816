//! The `cpm-convert` command: flags, progress bar, messages, exit codes. The work is in the
//! library.

use std::cell::RefCell;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, ValueEnum};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::Serialize;

use cpm_convert::cli::{emit, emit_json, usage_error, JsonError, ModelArgs};
use cpm_convert::export::{Export, Target};
use cpm_convert::table;
use cpm_convert::tokenizer_files::Choice;
use cpm_convert::write::OutputFile;
use cpm_convert::{Options, OutDtype, Plan, Progress};

const AFTER_HELP: &str = "\
Examples:
  cpm-convert CPM-Generate/model/CPM-large -o cpm-lm-hf
      convert the released checkpoint (root with latest_checkpointed_iteration.txt)
  cpm-convert ckpt/80000 -o out --heads 32 --dtype f16
      convert one iteration directory holding mp_rank_XX_model_states.pt
  cpm-convert megatron/ckpt -o gpt2-hf --vocab-size 50257
      a Megatron-LM checkpoint (any version, tensor- and pipeline-parallel), padding cut
  cpm-convert out/ckpt.pt -o gpt2-hf
      a nanoGPT checkpoint
  cpm-convert model.pt --dry-run
      show what would be written, reading only the checkpoint's structure
  cpm-convert CPM-large -o CPM-large-mp1 --to cpm --tp 1
      re-shard to one rank in CPM-Generate's layout (what its change_mp.py does)
  cpm-convert CPM-large -o cpm-megatron --to megatron --tp 2 --pp 2
      export to Megatron-LM (checkpoint_version 3.0), vocabulary padded to 128 x tp

INPUT is a checkpoint root holding latest_checkpointed_iteration.txt, an iteration directory
(80000/, iter_0000100/, release/) holding mp_rank_XX[_YYY] rank files, a Hugging Face directory,
or one file. Its family (cpm-lm, megatron-gpt2, megatron-core-gpt, nanogpt, hf-gpt2) is
recognised from its structure; --from names it.

OUT_DIR receives model.safetensors, config.json and SHA256SUMS (check with
`cd OUT_DIR && sha256sum -c SHA256SUMS`). It is written in a temporary directory beside it
and renamed into place only when complete; a failed run leaves nothing behind.

With --to cpm|megatron, OUT_DIR receives latest_checkpointed_iteration.txt, the rank files
(read by torch.load(weights_only=True)) and SHA256SUMS, and no tokenizer or config.json.

With a tokenizer (--tokenizer, or a spiece.model or chinese_vocab.model found in INPUT or its
parent; --no-tokenizer for none), OUT_DIR also receives spiece.model, tokenizer.json,
tokenizer_config.json, tokenization_cpm_jieba.py and generation_config.json; load it with
AutoTokenizer.from_pretrained(OUT_DIR, trust_remote_code=True) (needs jieba, sentencepiece).

OUT_DIR may not be, contain or lie inside INPUT, a rank file, the mapping file or the tokenizer.

With --json, stdout holds exactly one JSON object: the summary (or the plan with --dry-run), or
{\"error\": \"...\", \"warnings\": [...]}; stderr holds only warnings.

Exit codes: 0 success; 2 error (bad input, inconsistent ranks, refused output directory);
130 interrupted by SIGINT, 143 by SIGTERM (nothing written, OUT_DIR as it was); 135 an input
file was truncated while being read (SIGBUS).";

#[derive(Parser, Debug)]
#[command(
    name = "cpm-convert",
    version,
    about = "Port GPT-2-family training checkpoints (CPM-LM, Megatron-LM, Megatron-core, nanoGPT, Hugging Face) to Hugging Face GPT-2 safetensors",
    after_help = AFTER_HELP
)]
struct Cli {
    /// Checkpoint root, iteration directory, Hugging Face directory, or single file.
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

    /// Replace a non-empty OUT_DIR whole.
    #[arg(long)]
    force: bool,

    /// Treat NaN/Inf values in the weights as an error instead of a warning.
    #[arg(long)]
    strict: bool,

    /// Print the conversion plan on stdout and write nothing (reads no tensor data).
    #[arg(long)]
    dry_run: bool,

    #[command(flatten)]
    model: ModelArgs,

    /// Machine-readable output: stdout holds one JSON object (the plan with --dry-run, else a
    /// summary of the files written; errors as {"error": "...", "warnings": [...]}), stderr
    /// only warnings.
    #[arg(long)]
    json: bool,

    /// No progress bar and no summary line (warnings and errors are still printed).
    #[arg(short, long)]
    quiet: bool,

    /// The model's sentencepiece tokenizer (CPM-Generate's bpe_3w_new/chinese_vocab.model):
    /// OUT_DIR also gets spiece.model, tokenizer.json, tokenizer_config.json, the Python
    /// tokenizer and generation_config.json, and config.json's bos/eos become the id of <eod>.
    /// A directory holding one is taken too. Without it, a spiece.model or chinese_vocab.model in
    /// INPUT or INPUT's parent is used.
    #[arg(long, value_name = "PATH", conflicts_with = "no_tokenizer")]
    tokenizer: Option<PathBuf>,

    /// Write no tokenizer files, even if a tokenizer lies beside INPUT.
    #[arg(long)]
    no_tokenizer: bool,

    /// Output layout: hf (a Hugging Face GPT-2 directory), cpm (CPM-Generate's
    /// ITERATION/mp_rank_XX_model_states.pt, what change_mp.py writes) or megatron (Megatron-LM's
    /// iter_NNNNNNN/mp_rank_TT[_PPP]/model_optim_rng.pt, checkpoint_version 3.0).
    #[arg(long, value_enum, default_value_t = ToArg::Hf)]
    to: ToArg,

    /// Tensor-parallel ranks to write (--to cpm|megatron): heads, FFN width and vocabulary must
    /// divide by it.
    #[arg(long, value_name = "N", default_value_t = 1,
          value_parser = clap::value_parser!(u64).range(1..=512))]
    tp: u64,

    /// Pipeline stages to write (--to megatron; at most the layer count).
    #[arg(long, value_name = "M", default_value_t = 1,
          value_parser = clap::value_parser!(u64).range(1..=512))]
    pp: u64,

    /// --to megatron pads the vocabulary with zero rows to a multiple of this times --tp
    /// (Megatron's --make-vocab-size-divisible-by).
    #[arg(long, value_name = "N", default_value_t = 128,
          value_parser = clap::value_parser!(u64).range(1..=1 << 20))]
    pad_vocab_multiple: u64,

    /// --to hf: split the model into model-0000K-of-0000N.safetensors files of at most SIZE
    /// (2GB, 500MB: decimal units, or bytes) and model.safetensors.index.json, as transformers'
    /// save_pretrained(max_shard_size=...) does. Default: one model.safetensors.
    #[arg(long, value_name = "SIZE", value_parser = parse_shard_size)]
    max_shard_size: Option<u64>,
}

fn parse_shard_size(s: &str) -> Result<u64, String> {
    cpm_convert::shards::parse_size(s).map_err(|e| e.to_string())
}

#[derive(Copy, Clone, Debug, ValueEnum)]
enum ToArg {
    Hf,
    Cpm,
    Megatron,
}

#[derive(Copy, Clone, Debug, ValueEnum)]
enum DtypeArg {
    Keep,
    F16,
    Bf16,
    F32,
}

/// The user interface the library reports to: progress bar, warnings (printed and kept for the
/// JSON object), and the stop request set by SIGINT/SIGTERM.
struct Ui {
    bar: ProgressBar,
    json: bool,
    warnings: RefCell<Vec<String>>,
    #[cfg(feature = "test-hooks")]
    pause: Option<test_hooks::Pause>,
}

impl Ui {
    fn new(show_bar: bool, json: bool) -> Ui {
        let bar = if show_bar {
            let b = ProgressBar::with_draw_target(Some(0), ProgressDrawTarget::stderr());
            b.set_style(
                ProgressStyle::with_template(
                    "{bar:40} {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
            );
            b
        } else {
            ProgressBar::hidden()
        };
        Ui {
            bar,
            json,
            warnings: RefCell::new(Vec::new()),
            #[cfg(feature = "test-hooks")]
            pause: test_hooks::Pause::from_env(),
        }
    }
}

impl Progress for Ui {
    fn begin(&self, total: u64) {
        self.bar.set_length(total);
    }
    fn advance(&self, bytes: u64) {
        self.bar.inc(bytes);
        #[cfg(feature = "test-hooks")]
        if let Some(p) = &self.pause {
            p.after_tensor(&|| self.cancelled());
        }
    }
    fn warn(&self, msg: &str) {
        self.bar
            .suspend(|| eprintln!("cpm-convert: warning: {msg}"));
        self.warnings.borrow_mut().push(msg.to_string());
    }
    fn note(&self, msg: &str) {
        // --json keeps stderr for warnings; the object says the same (`tokenizer.found`).
        if !self.json {
            self.bar.suspend(|| eprintln!("cpm-convert: note: {msg}"));
        }
    }
    fn cancelled(&self) -> bool {
        signals::stop_signal().is_some()
    }
    fn writing(&self) {
        signals::defer();
    }
}

/// `--json`'s result of a conversion: what was written, never the plan.
#[derive(Serialize)]
struct JsonSummary<'a> {
    /// OUT_DIR as given (a non-UTF-8 name lossily: the object must always encode).
    output: String,
    /// model.safetensors, config.json, the tokenizer files if any, SHA256SUMS.
    files: &'a [OutputFile],
    /// The tokenizer the port got (null: none given or found).
    tokenizer: Option<&'a cpm_convert::tokenizer_files::Report>,
    tensors: usize,
    /// The tensors' data alone.
    tensor_bytes: u64,
    /// model.safetensors' size, header included.
    model_file_bytes: u64,
    seconds: f64,
    /// The input's family, and how it was chosen (detected, --from, --mapping).
    variant: &'a str,
    family_from: &'a str,
    /// config.json's activation_function and why.
    activation: &'a cpm_convert::plan::Activation,
    model_parallel: usize,
    warnings: Vec<String>,
}

/// `--dry-run --json`: the plan, and the sizes the writer would produce.
#[derive(Serialize)]
struct JsonPlan<'a> {
    #[serde(flatten)]
    plan: &'a Plan,
    tensor_bytes: u64,
    model_file_bytes: u64,
    /// The tokenizer a conversion would ship (null: none).
    tokenizer: Option<&'a cpm_convert::tokenizer_files::Report>,
    warnings: Vec<String>,
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return usage_error("cpm-convert", e),
    };
    // A dry run writes nothing and reads only structure: the default ^C is the right one there.
    let show_bar = !cli.quiet && !cli.json && std::io::stderr().is_terminal();
    signals::install(cli.json, !cli.dry_run, show_bar);
    let ui = Ui::new(show_bar, cli.json);
    match run(&cli, &ui) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(&cli, &ui, &e),
    }
}

/// Report a failure: exit 2, or 128 + the signal number when a signal stopped the conversion.
fn fail(cli: &Cli, ui: &Ui, e: &anyhow::Error) -> ExitCode {
    ui.bar.finish_and_clear();
    let interrupted = matches!(
        e.downcast_ref::<cpm_convert::Error>(),
        Some(cpm_convert::Error::Interrupted)
    );
    let msg = format!("{e:#}");
    if cli.json {
        emit_json(&JsonError {
            error: &msg,
            warnings: ui.warnings.take(),
        });
    } else if interrupted {
        eprintln!("cpm-convert: {msg}");
    } else {
        eprintln!("cpm-convert: error: {msg}");
    }
    if interrupted {
        let sig = signals::stop_signal().unwrap_or(libc::SIGINT);
        ExitCode::from(u8::try_from(128 + sig).unwrap_or(130))
    } else {
        ExitCode::from(2)
    }
}

/// `--to`, `--tp`, `--pp`: a grid other than 1 x 1 needs a model-parallel layout.
fn export_choice(cli: &Cli) -> anyhow::Result<Export> {
    let target = match cli.to {
        ToArg::Hf => Target::Hf,
        ToArg::Cpm => Target::Cpm,
        ToArg::Megatron => Target::Megatron,
    };
    if target == Target::Hf && (cli.tp > 1 || cli.pp > 1) {
        anyhow::bail!("--tp and --pp above 1 need --to cpm or --to megatron");
    }
    if target != Target::Hf && cli.max_shard_size.is_some() {
        anyhow::bail!("--max-shard-size applies to --to hf only");
    }
    if target != Target::Hf && cli.tokenizer.is_some() {
        anyhow::bail!("--tokenizer applies to --to hf only: model-parallel layouts carry none");
    }
    Ok(Export {
        target,
        tp: cli.tp as usize,
        pp: cli.pp as usize,
        pad_vocab_multiple: cli.pad_vocab_multiple,
    })
}

fn run(cli: &Cli, ui: &Ui) -> anyhow::Result<()> {
    let dtype = match cli.dtype {
        DtypeArg::Keep => OutDtype::Keep,
        DtypeArg::F16 => OutDtype::F16,
        DtypeArg::Bf16 => OutDtype::BF16,
        DtypeArg::F32 => OutDtype::F32,
    };
    if cli.dry_run {
        return dry_run(cli, ui, dtype);
    }
    let output = cli
        .output
        .clone()
        .ok_or_else(|| anyhow::anyhow!("-o OUT_DIR is required unless --dry-run"))?;
    let opts = Options {
        input: cli.input.clone(),
        output,
        dtype,
        heads: cli.model.heads,
        vocab_size: cli.model.vocab_size,
        activation: cli.model.activation.clone(),
        force: cli.force,
        strict: cli.strict,
        family: cli.model.family(),
        tokenizer: tokenizer_choice(cli),
        export: export_choice(cli)?,
        max_shard_size: cli.max_shard_size,
    };
    #[cfg(feature = "test-hooks")]
    let _ = test_hooks::Pause::block_while_loading();
    let summary = cpm_convert::convert(&opts, ui)?;
    ui.bar.finish_and_clear();
    if cli.json {
        emit_json(&JsonSummary {
            output: summary.output.to_string_lossy().into_owned(),
            files: &summary.files,
            tokenizer: summary.tokenizer.as_ref(),
            tensors: summary.tensors,
            tensor_bytes: summary.tensor_bytes,
            model_file_bytes: summary.model_file_bytes,
            seconds: summary.seconds,
            variant: &summary.variant,
            family_from: &summary.family_from,
            activation: &summary.activation,
            model_parallel: summary.model_parallel,
            warnings: ui.warnings.take(),
        });
    } else if !cli.quiet {
        let tokenizer = summary.tokenizer.as_ref().map_or(String::new(), |t| {
            format!(
                ", with the tokenizer {} ({} pieces)",
                t.path.display(),
                t.pieces
            )
        });
        eprintln!(
            "cpm-convert: wrote {} tensors, {} to {}{tokenizer} in {:.2} s{}",
            summary.tensors,
            human_bytes(summary.model_file_bytes),
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

fn tokenizer_choice(cli: &Cli) -> Choice {
    match (&cli.tokenizer, cli.no_tokenizer) {
        (Some(p), _) => Choice::Given(p.clone()),
        (None, true) => Choice::Off,
        (None, false) => Choice::Discover,
    }
}

/// `--dry-run`: the plan and the sizes, from the checkpoint's structure alone, and the tokenizer
/// read and checked as a conversion would.
fn dry_run(cli: &Cli, ui: &Ui, dtype: OutDtype) -> anyhow::Result<()> {
    let src = cpm_convert::open(&cli.input, &cli.model.family())?;
    let plan = cpm_convert::plan(&src, cli.model.hints(), dtype)?;
    // The header the writer would produce, so the sizes agree with a real run's summary.
    let metadata = cpm_convert::write::model_metadata(&src.ranks, &plan);
    let header = cpm_convert::write::safetensors_header(&plan, &metadata)?;
    let tensor_bytes = plan.total_bytes();
    let model_file_bytes = tensor_bytes + header.len() as u64;
    let mut warnings = plan.notes.clone();
    // A model-parallel target: the same size checks a real run makes before writing, and no
    // tokenizer (those layouts carry none).
    let export = export_choice(cli)?;
    let located = match export.target.format() {
        Some(fmt) => {
            cpm_convert::export::place(&plan, &export, fmt)?;
            warnings.extend(cpm_convert::export::notes(&plan, &export));
            None
        }
        None => cpm_convert::tokenizer_files::locate(&cli.input, &tokenizer_choice(cli)),
    };
    let tokenizer = cpm_convert::read_tokenizer(located, &cli.input, &src, &plan, ui, &mut |w| {
        warnings.push(w)
    })?
    .map(|t| t.report(plan.vocab));
    if cli.json {
        emit_json(&JsonPlan {
            plan: &plan,
            tensor_bytes,
            model_file_bytes,
            tokenizer: tokenizer.as_ref(),
            warnings,
        });
    } else {
        for n in &warnings {
            eprintln!("cpm-convert: warning: {n}");
        }
        print_plan(&plan, model_file_bytes);
        if export.target.format().is_some() {
            emit(&format!(
                "--to {:?} --tp {} --pp {}: the tensors above, split into {} rank file(s); \
                 every size divides\n",
                export.target,
                export.tp,
                export.pp,
                export.tp * export.pp
            ));
        }
        if let Some(t) = &tokenizer {
            emit(&format!(
                "tokenizer {}: {} pieces, <eod> = {}; adds spiece.model, tokenizer.json, \
                 tokenizer_config.json, tokenization_cpm_jieba.py, generation_config.json\n",
                t.path.display(),
                t.pieces,
                t.eod_id.map_or_else(|| "none".into(), |i| i.to_string())
            ));
        }
    }
    Ok(())
}

mod signals;

/// Test-only pause, compiled in only with the `test-hooks` feature, which only the crate's own
/// tests enable (through a dev-dependency on itself): a release build ignores these variables.
///
/// `CPM_CONVERT_TEST_PAUSE_AFTER=N`: after the N-th tensor, create `paused` in the directory
/// `CPM_CONVERT_TEST_PAUSE_DIR` (if set), then wait until `resume` appears there, a stop signal
/// arrives, or 60 s pass. `CPM_CONVERT_TEST_PAUSE_LOADING=1`: before the input is opened,
/// create `paused` there and wait for `resume` or 60 s, ignoring stop requests (a blocked read).
#[cfg(feature = "test-hooks")]
mod test_hooks {
    use std::cell::Cell;
    use std::path::PathBuf;
    use std::time::{Duration, Instant};

    pub struct Pause {
        after: usize,
        dir: Option<PathBuf>,
        done: Cell<usize>,
    }

    impl Pause {
        pub fn from_env() -> Option<Pause> {
            let after = std::env::var("CPM_CONVERT_TEST_PAUSE_AFTER")
                .ok()?
                .parse()
                .ok()?;
            let dir = std::env::var_os("CPM_CONVERT_TEST_PAUSE_DIR").map(PathBuf::from);
            Some(Pause {
                after,
                dir,
                done: Cell::new(0),
            })
        }

        /// Stands for a read that blocks while loading (a slow disk, a network file system):
        /// creates `paused` and waits for `resume` or 60 s, deaf to stop requests as a blocked
        /// read is.
        pub fn block_while_loading() -> Option<()> {
            std::env::var_os("CPM_CONVERT_TEST_PAUSE_LOADING")?;
            let dir = PathBuf::from(std::env::var_os("CPM_CONVERT_TEST_PAUSE_DIR")?);
            let _ = std::fs::write(dir.join("paused"), b"");
            let start = Instant::now();
            while start.elapsed() < Duration::from_secs(60) && !dir.join("resume").exists() {
                std::thread::sleep(Duration::from_millis(5));
            }
            Some(())
        }

        /// Called after each tensor.
        pub fn after_tensor(&self, cancelled: &dyn Fn() -> bool) {
            self.done.set(self.done.get() + 1);
            if self.done.get() != self.after {
                return;
            }
            if let Some(d) = &self.dir {
                let _ = std::fs::write(d.join("paused"), b"");
            }
            let start = Instant::now();
            while start.elapsed() < Duration::from_secs(60) && !cancelled() {
                if self.dir.as_ref().is_some_and(|d| d.join("resume").exists()) {
                    return;
                }
                std::thread::sleep(Duration::from_millis(5));
            }
        }
    }
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

fn print_plan(plan: &Plan, model_file_bytes: u64) {
    emit(&format!(
        "{}\n{}{} tensors: {} bytes of tensor data; model.safetensors will be {} bytes (header \
         included)\n",
        table::plan_summary(plan),
        table::plan_table(plan),
        plan.entries.len(),
        plan.total_bytes(),
        model_file_bytes
    ));
}

#[cfg(test)]
mod tests {
    /// The signal handlers' fixed messages: the JSON one is valid JSON saying what the text says.
    #[test]
    fn signal_messages_agree_and_the_json_ones_parse() {
        use super::signals::{AGAIN_JSON, AGAIN_TEXT, BUS_JSON, BUS_TEXT};
        use super::signals::{LOADING_JSON, LOADING_TEXT};
        for (text, json, prefix) in [
            (AGAIN_TEXT, AGAIN_JSON, "cpm-convert: "),
            (LOADING_TEXT, LOADING_JSON, "cpm-convert: "),
            (BUS_TEXT, BUS_JSON, "cpm-convert: error: "),
        ] {
            let text = std::str::from_utf8(text).unwrap();
            let v: serde_json::Value = serde_json::from_slice(json).unwrap();
            assert_eq!(v["warnings"], serde_json::json!([]));
            assert_eq!(
                text.strip_prefix(prefix).unwrap(),
                format!("{}\n", v["error"].as_str().unwrap())
            );
            assert_eq!(text.lines().count(), 1);
        }
    }
}
