//! One whole generation as `cpm-generate` runs it: the model and its eos ids, the prompt read
//! and encoded, the tokenizer, the decoding loop, and the continuation as text, handed on as
//! it becomes final and cut before a stop text. The binary maps its flags onto a [`Job`] and
//! prints what [`run`] returns.

use std::path::PathBuf;

use cpm_gpt2::forward::resolve_threads;
use cpm_gpt2::model::Model;
use cpm_gpt2::Device;
use cpm_tokenizer::CpmTokenizer;

use crate::error::{Error, Result};
use crate::prompt::{parse_ids, Prompt};
use crate::{Output, Settings, Stop, Strategy};

/// What to generate, from where, and how.
#[derive(Debug, Clone)]
pub struct Job {
    /// The converted model's directory.
    pub model_dir: PathBuf,
    /// The sentencepiece model; `None`: `model_dir/spiece.model`, if it is there and needed.
    pub tokenizer: Option<PathBuf>,
    /// The prompt.
    pub prompt: Prompt,
    /// Stop when the continuation contains this text (cut before it); not empty.
    pub stop: Option<String>,
    /// The most new tokens.
    pub max_new_tokens: usize,
    /// eos is suppressed until this many new tokens.
    pub min_new_tokens: usize,
    /// How tokens are chosen.
    pub strategy: Strategy,
    /// Where the forward pass runs.
    pub device: Device,
    /// Threads for every pool (`None`: RAYON_NUM_THREADS, else all cores).
    pub threads: Option<usize>,
    /// The text is handed on as it is made (so a tokenizer is needed even for ids).
    pub stream: bool,
}

/// What a job produced.
#[derive(Debug, Clone)]
pub struct Finished {
    /// The new ids and the timings.
    pub output: Output,
    /// How many tokens the prompt was.
    pub prompt_tokens: usize,
    /// The continuation as text (without the eos, cut before the stop text); `None` when no
    /// tokenizer was needed and none was there.
    pub text: Option<String>,
    /// What has already been handed to `on_text` (a prefix of `text` unless a later decode
    /// changed earlier text).
    pub streamed: String,
    /// Why it stopped (the stop text also when only the final decode finds it).
    pub stop: Stop,
}

impl Job {
    /// The sentencepiece model's path: `--tokenizer`, else `model_dir/spiece.model`.
    fn tokenizer_path(&self) -> PathBuf {
        self.tokenizer
            .clone()
            .unwrap_or_else(|| self.model_dir.join("spiece.model"))
    }
}

/// Runs `job`; `on_text` gets each new piece of final text (when `job.stream`), `warnings`
/// what the caller should say on stderr.
pub fn run(
    job: &Job,
    warnings: &mut Vec<String>,
    on_text: &mut dyn FnMut(&str),
) -> Result<Finished> {
    if job.stop.as_deref() == Some("") {
        return Err(Error::Options(
            "--stop \"\": the stop text must not be empty (it would match before any token)".into(),
        ));
    }
    let model = Model::open(&job.model_dir)?;
    let eos = crate::eos::eos_ids_within(&job.model_dir, model.config.vocab_size)?;
    let text_prompt = job.prompt.read_text()?;
    let need_tok = text_prompt.is_some() || job.stream || job.stop.is_some();
    let tok = open_tokenizer(job, need_tok)?;
    let text = Text {
        tok: tok.as_ref(),
        path: job.tokenizer_path(),
        eos: &eos,
        stop: job.stop.as_deref(),
    };
    let prompt = match (&text_prompt, &job.prompt) {
        (Some(t), _) => text.encode(t)?,
        (None, Prompt::Ids(ids)) => parse_ids(ids)?,
        (None, _) => return Err(Error::Internal("a prompt without text or ids".into())),
    };
    let settings = Settings {
        max_new_tokens: job.max_new_tokens,
        min_new_tokens: job.min_new_tokens,
        strategy: job.strategy,
        eos: eos.clone(),
        device: job.device,
        threads: resolve_threads(job.threads, warnings),
    };
    let mut streamed = String::new();
    let mut on_token = |ids: &[u32]| -> Result<bool> {
        let Some(full) = text.decode(ids)? else {
            return Ok(true);
        };
        let (end, hit) = cut(&full, text.stop);
        if job.stream && full.starts_with(streamed.as_str()) && end > streamed.len() {
            if let Some(new) = full.get(streamed.len()..end) {
                on_text(new);
                streamed.push_str(new);
            }
        }
        Ok(!hit)
    };
    let output = crate::generate(&model, &prompt, &settings, &mut on_token)?;
    let (text, hit) = match text.decode(&output.ids)? {
        Some(full) => {
            let (end, hit) = cut(&full, text.stop);
            (Some(full.get(..end).unwrap_or(&full).to_string()), hit)
        }
        None => (None, false),
    };
    let stop = if hit { Stop::StopText } else { output.stop };
    Ok(Finished {
        output,
        prompt_tokens: prompt.len(),
        text,
        streamed,
        stop,
    })
}

/// The tokenizer, or `None` when it is not needed and not there.
fn open_tokenizer(job: &Job, needed: bool) -> Result<Option<CpmTokenizer>> {
    let path = job.tokenizer_path();
    if !needed && job.tokenizer.is_none() && !path.exists() {
        return Ok(None);
    }
    if !path.exists() {
        // Ids in and nothing to cut at a --stop: only the printing of text wants the tokenizer.
        if matches!(job.prompt, Prompt::Ids(_)) && job.stop.is_none() {
            return Err(Error::NoTokenizerForText { path });
        }
        return Err(Error::NoTokenizer { path });
    }
    let tok = CpmTokenizer::open(&path).map_err(|err| Error::Tokenizer { path, err })?;
    Ok(Some(tok))
}

/// The text side of a job: the tokenizer (if any), its path for errors, the eos ids and the
/// stop text.
struct Text<'a> {
    tok: Option<&'a CpmTokenizer>,
    path: PathBuf,
    eos: &'a [u32],
    stop: Option<&'a str>,
}

impl Text<'_> {
    fn err(&self, err: cpm_tokenizer::Error) -> Error {
        Error::Tokenizer {
            path: self.path.clone(),
            err,
        }
    }

    /// The prompt's ids.
    fn encode(&self, prompt: &str) -> Result<Vec<u32>> {
        let tok = self
            .tok
            .ok_or_else(|| Error::Internal("a text prompt without a tokenizer".into()))?;
        tok.encode(prompt).map_err(|e| self.err(e))
    }

    /// The new ids as text, without the eos; `None` without a tokenizer.
    fn decode(&self, ids: &[u32]) -> Result<Option<String>> {
        let Some(tok) = self.tok else { return Ok(None) };
        let kept: Vec<u32> = ids
            .iter()
            .copied()
            .filter(|i| !self.eos.contains(i))
            .collect();
        tok.decode(&kept).map(Some).map_err(|e| self.err(e))
    }
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
