//! The `cpm-convert` command: flags, progress bar, messages, exit codes. The work is in the
//! library.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, ValueEnum};

use cpm_cli::usage_error_with_warnings;
use cpm_convert::cli::ModelArgs;
use cpm_convert::export::{Export, Target};
use cpm_convert::tokenizer_files::Choice;
use cpm_convert::{Options, OutDir, OutDtype, Request};

mod print;
mod signals;
#[cfg(feature = "test-hooks")]
mod test_hooks;
mod ui;

use ui::Ui;

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
    cpm_convert::write::shards::parse_size(s).map_err(|e| e.to_string())
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

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return usage_error_with_warnings("cpm-convert", e),
    };
    // A dry run writes nothing and reads only structure: the default ^C is the right one there.
    let show_bar = !cli.quiet && !cli.json && std::io::stderr().is_terminal();
    signals::install(cli.json, !cli.dry_run, show_bar);
    let ui = Ui::new(show_bar, cli.json);
    match run(&cli, &ui) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => print::failure(&e, &ui, cli.json),
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

/// What to read and how to plan it, from the flags: the same for a conversion and a dry run.
fn request(cli: &Cli) -> anyhow::Result<Request> {
    Ok(Request {
        input: cli.input.clone(),
        family: cli.model.family(),
        dtype: match cli.dtype {
            DtypeArg::Keep => OutDtype::Keep,
            DtypeArg::F16 => OutDtype::F16,
            DtypeArg::Bf16 => OutDtype::BF16,
            DtypeArg::F32 => OutDtype::F32,
        },
        hints: cli.model.hints(),
        tokenizer: match (&cli.tokenizer, cli.no_tokenizer) {
            (Some(p), _) => Choice::Given(p.clone()),
            (None, true) => Choice::Off,
            (None, false) => Choice::Discover,
        },
        export: export_choice(cli)?,
    })
}

fn run(cli: &Cli, ui: &Ui) -> anyhow::Result<()> {
    let request = request(cli)?;
    if cli.dry_run {
        return dry_run(cli, ui, &request);
    }
    let path = cli
        .output
        .clone()
        .ok_or_else(|| anyhow::anyhow!("-o OUT_DIR is required unless --dry-run"))?;
    let opts = Options {
        request,
        out: OutDir {
            path,
            force: cli.force,
        },
        strict: cli.strict,
        max_shard_size: cli.max_shard_size,
    };
    #[cfg(feature = "test-hooks")]
    let _ = test_hooks::Pause::block_while_loading();
    let summary = cpm_convert::convert(&opts, ui)?;
    ui.bar.finish_and_clear();
    print::summary(&summary, cli.json, cli.quiet, ui.warnings.take());
    Ok(())
}

/// `--dry-run`: what a conversion would check and write, from the checkpoint's structure alone
/// (the tokenizer read and checked as a conversion would); its warnings are printed with the
/// plan.
fn dry_run(cli: &Cli, ui: &Ui, request: &Request) -> anyhow::Result<()> {
    let mut warnings = Vec::new();
    let p = cpm_convert::prepare(request, None, ui, &mut |w| warnings.push(w))?;
    print::dry_run(
        print::DryRun {
            plan: &p.plan,
            model_file_bytes: p.model_file_bytes()?,
            export: p.format.map(|_| &request.export),
            tokenizer: p.tokenizer.map(|t| t.report(p.plan.vocab)),
            warnings,
        },
        cli.json,
    );
    Ok(())
}
