//! `cpm-generate`: flags, streaming output and exit codes; the decoding loop is in the
//! `cpm_generate` library, the forward pass in `cpm_gpt2`.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use cpm_cli::{json_error, usage_error};
use cpm_generate::job::{Finished, Job};
use cpm_generate::prompt::Prompt;
use cpm_generate::{Sampling, Stop, Strategy};
use cpm_gpt2::Device;

const AFTER_HELP: &str = "\
Decoding (the first that applies):
  --beams N (N > 1)     beam search, transformers' semantics (length_penalty 1, early_stopping
                        false); --beams 1 is greedy
  --sample, or any of --temperature/--top-k/--top-p
                        sampling: temperature, then top-k, then top-p, then a draw from the
                        softmax, from a ChaCha8 generator seeded with --seed (same seed, same
                        text; without --seed a seed from the clock, reported as a warning)
  otherwise             greedy (transformers' default when generation_config.json has no
                        sampling keys; we read only eos_token_id from it)

Defaults, ours vs CPM-Generate's (the original scripts):
  ours:          greedy; with --sample temperature 1.0, no top-k, no top-p
  transformers:  greedy; when sampling temperature 1.0, top-k 50, top-p 1.0 (--top-k 50)
  CPM-Generate:  sampling, temperature 0.9, top-k 0 and top-p 0 (off): plain sampling; to
                 match it: --sample --temperature 0.9

Stops at eos_token_id (generation_config.json, else config.json; the eos is included in --ids
and never printed), at --stop TEXT (looked for in the decoded continuation, which is printed
cut before it; with --beams it only cuts the result), or after --max-new-tokens. An
eos_token_id outside the model's vocabulary is an error.

Speed: on the CPU a KV cache holds every layer's keys and values, so each step runs one token
per beam; fp16/bf16 weights are read directly by the decode steps (no f32 copy). With
--device cuda there is no KV cache: each step recomputes the whole sequence through the
verifier's CUDA forward pass (correct, slower).

Exit codes: 0 done, 2 error (bad flags, files, a prompt too long for n_positions, ...);
SIGINT/SIGTERM end it at once (a shell reports 130/143). Every file read must be a regular
file: --prompt-file up to 16 MiB, the tokenizer up to 64 MiB, the JSON files up to 1 MiB.

Examples:
  cpm-generate MODEL_DIR --prompt '清华大学' --max-new-tokens 50
  cpm-generate MODEL_DIR --prompt-file p.txt --sample --temperature 0.9 --seed 7 --json
  echo '今天天气' | cpm-generate MODEL_DIR --beams 4 --ids";

/// Generate text with a converted CPM-LM (a Hugging Face GPT-2 directory).
#[derive(Parser, Debug)]
#[command(name = "cpm-generate", version, after_help = AFTER_HELP)]
struct Cli {
    /// Model directory: config.json plus model.safetensors (or an index), optionally
    /// generation_config.json and spiece.model.
    model_dir: PathBuf,
    /// The prompt text (else --prompt-file, --prompt-ids, or stdin).
    #[arg(long, conflicts_with_all = ["prompt_file", "prompt_ids"])]
    prompt: Option<String>,
    /// Read the prompt text from a file (UTF-8).
    #[arg(long, conflicts_with = "prompt_ids")]
    prompt_file: Option<PathBuf>,
    /// The prompt as token ids, space separated (no tokenizer needed for it).
    #[arg(long)]
    prompt_ids: Option<String>,
    /// The sentencepiece model [default: MODEL_DIR/spiece.model].
    #[arg(long)]
    tokenizer: Option<PathBuf>,
    /// The most new tokens.
    #[arg(long, default_value_t = 64)]
    max_new_tokens: usize,
    /// eos is suppressed until this many new tokens (MinNewTokensLengthLogitsProcessor); at
    /// most --max-new-tokens.
    #[arg(long, default_value_t = 0)]
    min_new_tokens: usize,
    /// Greedy decoding (the default).
    #[arg(long, conflicts_with_all = ["sample", "beams"])]
    greedy: bool,
    /// Sample (see below for the defaults).
    #[arg(long)]
    sample: bool,
    /// Sampling temperature, > 0 (implies --sample) [default: 1.0]. Logits are divided in
    /// double precision, so any positive value works: a tiny one draws greedily (ties shared),
    /// a huge one uniformly among the tokens top-k/top-p keep.
    #[arg(long)]
    temperature: Option<f32>,
    /// Keep only the k most likely tokens (implies --sample; 0 = off).
    #[arg(long)]
    top_k: Option<usize>,
    /// Keep the most likely tokens up to probability p (implies --sample; 1 = off).
    #[arg(long)]
    top_p: Option<f32>,
    /// Seed for sampling (ChaCha8).
    #[arg(long)]
    seed: Option<u64>,
    /// Beam search with N beams (1..=64).
    #[arg(long, conflicts_with_all = ["sample", "temperature", "top_k", "top_p"])]
    beams: Option<usize>,
    /// Stop when the continuation contains this text (which is not printed); not empty.
    #[arg(long)]
    stop: Option<String>,
    /// Print the new token ids (space separated, one line) instead of the text.
    #[arg(long, conflicts_with = "json")]
    ids: bool,
    /// Print one JSON object: text, ids, prompt_tokens, new_tokens, timings, warnings.
    #[arg(long)]
    json: bool,
    /// Threads for every pool [default: RAYON_NUM_THREADS, else all cores].
    #[arg(long)]
    threads: Option<usize>,
    /// cpu, cuda or cuda:N (CUDA recomputes the whole sequence each step: no KV cache there).
    #[arg(long, default_value = "cpu")]
    device: Device,
}

/// The `--json` document.
#[derive(serde::Serialize)]
struct Report {
    text: Option<String>,
    ids: Vec<u32>,
    prompt_tokens: usize,
    new_tokens: usize,
    prefill_seconds: f64,
    decode_seconds: f64,
    tokens_per_second: Option<f64>,
    stop: Stop,
    warnings: Vec<String>,
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return usage_error("cpm-generate", e),
    };
    match run(&cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let msg = format!("{e:#}");
            if cli.json {
                return json_error(&msg);
            }
            eprintln!("cpm-generate: error: {msg}");
            ExitCode::from(2)
        }
    }
}

fn strategy(cli: &Cli, warnings: &mut Vec<String>) -> anyhow::Result<Strategy> {
    if let Some(n) = cli.beams {
        return Ok(Strategy::Beam(n));
    }
    let sampling =
        cli.sample || cli.temperature.is_some() || cli.top_k.is_some() || cli.top_p.is_some();
    if !sampling {
        if cli.seed.is_some() {
            warnings.push("--seed has no effect without sampling".into());
        }
        return Ok(Strategy::Greedy);
    }
    let seed = cli.seed.unwrap_or_else(|| {
        let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH);
        let s = t.map_or(0, |d| d.as_nanos() as u64);
        warnings.push(format!(
            "sampling with seed {s} (pass --seed {s} to repeat)"
        ));
        s
    });
    Ok(Strategy::Sample(Sampling {
        temperature: cli.temperature.unwrap_or(1.0),
        top_k: cli.top_k,
        top_p: cli.top_p,
        seed,
    }))
}

/// The flags as a library job.
fn job(cli: &Cli, strategy: Strategy) -> Job {
    let prompt = match (&cli.prompt, &cli.prompt_file, &cli.prompt_ids) {
        (_, _, Some(ids)) => Prompt::Ids(ids.clone()),
        (Some(text), _, _) => Prompt::Text(text.clone()),
        (_, Some(path), _) => Prompt::File(path.clone()),
        (None, None, None) => Prompt::Stdin,
    };
    Job {
        model_dir: cli.model_dir.clone(),
        tokenizer: cli.tokenizer.clone(),
        prompt,
        stop: cli.stop.clone(),
        max_new_tokens: cli.max_new_tokens,
        min_new_tokens: cli.min_new_tokens,
        strategy,
        device: cli.device,
        threads: cli.threads,
        stream: !cli.ids && !cli.json,
    }
}

fn run(cli: &Cli) -> anyhow::Result<()> {
    let mut warnings = Vec::new();
    let strategy = strategy(cli, &mut warnings)?;
    let mut stdout = std::io::stdout().lock();
    let mut on_text = |new: &str| {
        // A closed stdout (a pager quit) ends the output, not the program with a panic.
        let _ = stdout.write_all(new.as_bytes());
        let _ = stdout.flush();
    };
    let done = cpm_generate::job::run(&job(cli, strategy), &mut warnings, &mut on_text)?;
    report(cli, done, warnings)
}

fn report(cli: &Cli, done: Finished, warnings: Vec<String>) -> anyhow::Result<()> {
    for w in &warnings {
        eprintln!("cpm-generate: warning: {w}");
    }
    let out = &done.output;
    let mut stdout = std::io::stdout().lock();
    if cli.json {
        let after_first = out.ids.len().saturating_sub(1);
        let r = Report {
            text: done.text,
            ids: out.ids.clone(),
            prompt_tokens: done.prompt_tokens,
            new_tokens: out.ids.len(),
            prefill_seconds: out.prefill_seconds,
            decode_seconds: out.decode_seconds,
            tokens_per_second: (after_first > 0 && out.decode_seconds > 0.0)
                .then(|| after_first as f64 / out.decode_seconds),
            stop: done.stop,
            warnings,
        };
        writeln!(stdout, "{}", serde_json::to_string_pretty(&r)?)?;
    } else if cli.ids {
        let line: Vec<String> = out.ids.iter().map(u32::to_string).collect();
        writeln!(stdout, "{}", line.join(" "))?;
    } else {
        // Whatever the stream held back (a decode that changed earlier text) comes now.
        let text = done.text.unwrap_or_default();
        let rest = text.strip_prefix(done.streamed.as_str()).unwrap_or("");
        write!(stdout, "{rest}")?;
        writeln!(stdout)?;
    }
    Ok(())
}
