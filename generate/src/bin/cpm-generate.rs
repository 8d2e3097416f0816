//! `cpm-generate`: flags, streaming output and exit codes; the decoding loop is in the
//! `cpm_generate` library, the forward pass in `cpm_gpt2`.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context};
use clap::Parser;
use cpm_cli::{json_error, usage_error};
use cpm_generate::{Sampling, Settings, Stop, Strategy};
use cpm_gpt2::forward::resolve_threads;
use cpm_gpt2::model::Model;
use cpm_gpt2::Device;
use cpm_tokenizer::CpmTokenizer;

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

/// The most prompt bytes read from a file or stdin (far more than n_positions tokens).
const MAX_PROMPT_BYTES: u64 = 16 << 20;

fn read_prompt(cli: &Cli) -> anyhow::Result<Option<String>> {
    if cli.prompt_ids.is_some() {
        return Ok(None);
    }
    if let Some(p) = &cli.prompt {
        return Ok(Some(p.clone()));
    }
    let (bytes, what) = match &cli.prompt_file {
        // A regular file only (a FIFO or a device is refused at once), read under the cap.
        Some(path) => (
            cpm_files::read_capped(path, MAX_PROMPT_BYTES).map_err(cpm_generate::Error::File)?,
            path.display().to_string(),
        ),
        None => {
            let mut bytes = Vec::new();
            std::io::stdin()
                .take(MAX_PROMPT_BYTES + 1)
                .read_to_end(&mut bytes)
                .context("reading the prompt from stdin")?;
            if bytes.len() as u64 > MAX_PROMPT_BYTES {
                bail!("stdin: the prompt is larger than {MAX_PROMPT_BYTES} bytes");
            }
            (bytes, "stdin".to_string())
        }
    };
    let text = String::from_utf8(bytes).with_context(|| format!("{what}: not UTF-8"))?;
    Ok(Some(text))
}

fn parse_ids(s: &str) -> anyhow::Result<Vec<u32>> {
    s.split_whitespace()
        .map(|t| {
            t.parse()
                .with_context(|| format!("--prompt-ids: \"{t}\" is not a token id"))
        })
        .collect()
}

fn open_tokenizer(cli: &Cli, needed: bool) -> anyhow::Result<Option<CpmTokenizer>> {
    let path = cli
        .tokenizer
        .clone()
        .unwrap_or_else(|| cli.model_dir.join("spiece.model"));
    if !needed && cli.tokenizer.is_none() && !path.exists() {
        return Ok(None);
    }
    if !path.exists() {
        // Ids in and nothing to cut at a --stop: only the printing of text wants the tokenizer.
        if cli.prompt_ids.is_some() && cli.stop.is_none() {
            return Err(cpm_generate::Error::NoTokenizerForText { path }.into());
        }
        return Err(cpm_generate::Error::NoTokenizer { path }.into());
    }
    let tok =
        CpmTokenizer::open(&path).map_err(|err| cpm_generate::Error::Tokenizer { path, err })?;
    Ok(Some(tok))
}

/// Decodes the new ids without the eos; an error names the tokenizer.
fn decode(
    tok: &CpmTokenizer,
    ids: &[u32],
    eos: &[u32],
    path: &Path,
) -> cpm_generate::Result<String> {
    let kept: Vec<u32> = ids.iter().copied().filter(|i| !eos.contains(i)).collect();
    tok.decode(&kept)
        .map_err(|err| cpm_generate::Error::Tokenizer {
            path: path.to_path_buf(),
            err,
        })
}

/// Where the continuation text ends: before `stop` when it is there (true), else before any tail
/// that could still grow into `stop` (so that no part of it is printed early).
fn cut(text: &str, stop: Option<&str>) -> (usize, bool) {
    let Some(stop) = stop.filter(|s| !s.is_empty()) else {
        return (text.len(), false);
    };
    if let Some(i) = text.find(stop) {
        return (i, true);
    }
    let held = (1..stop.len())
        .rev()
        .filter(|&n| stop.is_char_boundary(n))
        .find(|&n| text.ends_with(&stop[..n]))
        .unwrap_or(0);
    (text.len() - held, false)
}

fn run(cli: &Cli) -> anyhow::Result<()> {
    if cli.stop.as_deref() == Some("") {
        bail!("--stop \"\": the stop text must not be empty (it would match before any token)");
    }
    let mut warnings = Vec::new();
    let strategy = strategy(cli, &mut warnings)?;
    let model = Model::open(&cli.model_dir)?;
    let eos = cpm_generate::eos::eos_ids_within(&cli.model_dir, model.config.vocab_size)?;
    let text_prompt = read_prompt(cli)?;
    let stream = !cli.ids && !cli.json;
    let need_tok = text_prompt.is_some() || stream || cli.stop.is_some();
    let tok = open_tokenizer(cli, need_tok)?;
    let tok_path = cli
        .tokenizer
        .clone()
        .unwrap_or_else(|| cli.model_dir.join("spiece.model"));
    let prompt = match (&text_prompt, &tok, &cli.prompt_ids) {
        (Some(text), Some(t), _) => {
            t.encode(text)
                .map_err(|err| cpm_generate::Error::Tokenizer {
                    path: tok_path.clone(),
                    err,
                })?
        }
        (None, _, Some(ids)) => parse_ids(ids)?,
        _ => bail!("internal: a text prompt without a tokenizer"),
    };
    let settings = Settings {
        max_new_tokens: cli.max_new_tokens,
        min_new_tokens: cli.min_new_tokens,
        strategy,
        eos: eos.clone(),
        device: cli.device,
        threads: resolve_threads(cli.threads, &mut warnings),
    };
    let stop_text = cli.stop.as_deref();
    let mut printed = String::new();
    let mut stdout = std::io::stdout().lock();
    let mut on_token = |ids: &[u32]| -> cpm_generate::Result<bool> {
        let Some(t) = &tok else { return Ok(true) };
        let text = decode(t, ids, &eos, &tok_path)?;
        let (end, hit) = cut(&text, stop_text);
        if stream && text.starts_with(printed.as_str()) && end > printed.len() {
            if let Some(new) = text.get(printed.len()..end) {
                // A closed stdout (a pager quit) ends the output, not the program with a panic.
                let _ = stdout.write_all(new.as_bytes());
                let _ = stdout.flush();
                printed.push_str(new);
            }
        }
        Ok(!hit)
    };
    let out = cpm_generate::generate(&model, &prompt, &settings, &mut on_token)?;
    let (text, hit) = match &tok {
        Some(t) => {
            let full = decode(t, &out.ids, &eos, &tok_path)?;
            let (end, hit) = cut(&full, stop_text);
            (Some(full.get(..end).unwrap_or(&full).to_string()), hit)
        }
        None => (None, false),
    };
    let stop = if hit { Stop::StopText } else { out.stop };
    report(cli, &out, prompt.len(), text, printed, stop, warnings)
}

fn report(
    cli: &Cli,
    out: &cpm_generate::Output,
    prompt_tokens: usize,
    text: Option<String>,
    printed: String,
    stop: Stop,
    warnings: Vec<String>,
) -> anyhow::Result<()> {
    for w in &warnings {
        eprintln!("cpm-generate: warning: {w}");
    }
    let mut stdout = std::io::stdout().lock();
    if cli.json {
        let after_first = out.ids.len().saturating_sub(1);
        let r = Report {
            text,
            ids: out.ids.clone(),
            prompt_tokens,
            new_tokens: out.ids.len(),
            prefill_seconds: out.prefill_seconds,
            decode_seconds: out.decode_seconds,
            tokens_per_second: (after_first > 0 && out.decode_seconds > 0.0)
                .then(|| after_first as f64 / out.decode_seconds),
            stop,
            warnings,
        };
        writeln!(stdout, "{}", serde_json::to_string_pretty(&r)?)?;
    } else if cli.ids {
        let line: Vec<String> = out.ids.iter().map(u32::to_string).collect();
        writeln!(stdout, "{}", line.join(" "))?;
    } else {
        // Whatever the stream held back (a decode that changed earlier text) comes now.
        let text = text.unwrap_or_default();
        let rest = text.strip_prefix(printed.as_str()).unwrap_or("");
        write!(stdout, "{rest}")?;
        writeln!(stdout)?;
    }
    Ok(())
}
