//! `cpm-tokenize`: CPM-LM's tokenizer on stdin; the work is in `cpm_tokenizer::stream`.

use std::io::ErrorKind;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use cpm_tokenizer::{stream, CpmTokenizer, Error};

const AFTER_HELP: &str = "\
Examples:
  echo '今天天气不错' | cpm-tokenize fixtures/tokenizer/chinese_vocab.model
      837 259 497 788
  echo '837 259 497 788' | cpm-tokenize --decode out/cpm-hf
  cpm-tokenize out/cpm-hf --jsonl --threads 4 < texts.jsonl > ids.jsonl

The pipeline is the original's: Python jieba 0.42.1's cut (HMM on), spaces to U+2582 and
newlines to U+2583 inside segments, segments joined with spaces, sentencepiece. Plain lines lose
their final \"\\n\" only (a \"\\r\" stays part of the text); use --jsonl for texts with newlines.
Output order is input order for any --threads.

Exit codes:
  0  done (also when the reader of stdout goes away)
  2  error: unreadable model, or a bad input line (reported as `cpm-tokenize: error: stdin line N: ...`)";

/// Tokenize text (or decode ids) with CPM-LM's tokenizer, one line at a time.
#[derive(Parser, Debug)]
#[command(name = "cpm-tokenize", version, after_help = AFTER_HELP)]
struct Cli {
    /// A converted model directory (spiece.model inside, else chinese_vocab.model) or a .model file.
    source: PathBuf,
    /// Each input line is a JSON string (decode: a JSON array of ids); each output line JSON too.
    #[arg(long)]
    jsonl: bool,
    /// Ids in (space-separated, or JSON arrays with --jsonl), text out.
    #[arg(long, conflicts_with = "pieces")]
    decode: bool,
    /// Print pieces instead of ids.
    #[arg(long)]
    pieces: bool,
    /// Worker threads [default: all cores, at most 8].
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..=256))]
    threads: Option<u16>,
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        // Help and version on stdout, exit 0.
        Err(e) if !e.use_stderr() => e.exit(),
        Err(e) => {
            // clap's text starts with `error:`, as ours do after the tool's name.
            eprint!("cpm-tokenize: {}", e.render());
            return ExitCode::from(2);
        }
    };
    match run(&cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if is_broken_pipe(&e) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("cpm-tokenize: error: {}", message(&e));
            ExitCode::from(2)
        }
    }
}

/// The error and its causes, each said once: a message that already ends with its cause's text
/// (the reader's `PATH: cannot read: OS ERROR`) does not repeat it.
fn message(e: &anyhow::Error) -> String {
    let mut msg = e.to_string();
    for cause in e.chain().skip(1) {
        let cause = cause.to_string();
        if !msg.ends_with(&cause) {
            msg = format!("{msg}: {cause}");
        }
    }
    msg
}

fn is_broken_pipe(e: &anyhow::Error) -> bool {
    matches!(e.downcast_ref::<Error>(), Some(Error::Output(io)) if io.kind() == ErrorKind::BrokenPipe)
}

fn run(cli: &Cli) -> anyhow::Result<()> {
    let tok = CpmTokenizer::open(&cli.source)?; // the error names the file
    let threads = match cli.threads {
        Some(n) => usize::from(n),
        None => std::thread::available_parallelism().map_or(1, |n| n.get().min(8)),
    };
    let opts = stream::Options {
        jsonl: cli.jsonl,
        decode: cli.decode,
        pieces: cli.pieces,
        threads,
    };
    let stdin = std::io::stdin().lock();
    let stdout = std::io::stdout().lock();
    stream::run(&tok, stdin, stdout, &opts)?;
    Ok(())
}
