//! Where a generation's prompt comes from, and reading it: text given directly, from a file or
//! from stdin (UTF-8, at most [`MAX_PROMPT_BYTES`]), or token ids.

use std::io::Read;
use std::path::PathBuf;

use crate::error::{Error, Result};

/// The most prompt bytes read from a file or stdin (far more than n_positions tokens).
pub const MAX_PROMPT_BYTES: u64 = 16 << 20;

/// A prompt, as given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Prompt {
    /// The text itself.
    Text(String),
    /// A file holding the text (a regular file only).
    File(PathBuf),
    /// The text on stdin.
    Stdin,
    /// Token ids, whitespace separated (no tokenizer needed to encode them).
    Ids(String),
}

impl Prompt {
    /// The prompt's text, read now; `None` for ids.
    pub fn read_text(&self) -> Result<Option<String>> {
        let (bytes, what) = match self {
            Prompt::Ids(_) => return Ok(None),
            Prompt::Text(t) => return Ok(Some(t.clone())),
            // A regular file only (a FIFO or a device is refused at once), read under the cap.
            Prompt::File(path) => (
                cpm_files::read_capped(path, MAX_PROMPT_BYTES).map_err(Error::File)?,
                path.display().to_string(),
            ),
            Prompt::Stdin => (read_stdin()?, "stdin".to_string()),
        };
        String::from_utf8(bytes)
            .map(Some)
            .map_err(|e| Error::Prompt(format!("{what}: not UTF-8: {e}")))
    }
}

fn read_stdin() -> Result<Vec<u8>> {
    let mut bytes = Vec::new();
    std::io::stdin()
        .take(MAX_PROMPT_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| Error::Prompt(format!("reading the prompt from stdin: {e}")))?;
    if bytes.len() as u64 > MAX_PROMPT_BYTES {
        return Err(Error::Prompt(format!(
            "stdin: the prompt is larger than {MAX_PROMPT_BYTES} bytes"
        )));
    }
    Ok(bytes)
}

/// The ids of `--prompt-ids`: whitespace-separated token ids.
pub fn parse_ids(s: &str) -> Result<Vec<u32>> {
    s.split_whitespace()
        .map(|t| {
            t.parse()
                .map_err(|e| Error::Prompt(format!("--prompt-ids: \"{t}\" is not a token id: {e}")))
        })
        .collect()
}
