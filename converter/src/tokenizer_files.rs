//! The tokenizer files of a port (`--tokenizer`, or a `chinese_vocab.model`/`spiece.model`
//! found beside the input): `spiece.model`, `tokenizer.json`, `tokenizer_config.json`,
//! `tokenization_cpm_jieba.py` and `generation_config.json`, and the special ids `config.json`
//! takes from the tokenizer. docs/tokenizer.md, "Tokenizer files in a port".

use std::path::{Path, PathBuf};

use cpm_tokenizer::{PieceType, SpModel};
use serde_json::{json, Map, Value};

use crate::error::{Error, Result};
use crate::gpt2_config::TokenIds;
use crate::write::OutputFile;

/// File names looked for, in this order, in INPUT (a directory) and in INPUT's parent: the
/// Hugging Face name (a port's own), then the released CPM-Generate one; the order
/// `SpModel::open` uses for a directory.
pub(crate) const NAMES: [&str; 2] = ["spiece.model", "chinese_vocab.model"];

/// The Python tokenizer the port names in `tokenizer_config.json`'s `auto_map`.
const PY_NAME: &str = "tokenization_cpm_jieba.py";
const PY_SOURCE: &str = include_str!("tokenization_cpm_jieba.py");
const PY_CLASS: &str = "CpmJiebaTokenizer";

/// The piece CPM ends a document with; generation stops on it.
const EOD: &str = "<eod>";
const PAD: &str = "<pad>";

/// Where the tokenizer comes from.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Choice {
    /// Look for one beside the input.
    #[default]
    Discover,
    /// `--tokenizer PATH`.
    Given(PathBuf),
    /// `--no-tokenizer`.
    Off,
}

/// A tokenizer file to use, and how it was chosen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Located {
    /// The sentencepiece model file.
    pub path: PathBuf,
    /// `"given"` or `"auto"`.
    pub found: &'static str,
}

/// The tokenizer file `choice` points at, if any. Discovery looks in INPUT (when a directory)
/// and then in its parent; nothing found is not an error.
pub(crate) fn locate(input: &Path, choice: &Choice) -> Option<Located> {
    match choice {
        Choice::Off => None,
        Choice::Given(p) => Some(Located {
            path: p.clone(),
            found: "given",
        }),
        Choice::Discover => discover(input).map(|path| Located {
            path,
            found: "auto",
        }),
    }
}

fn discover(input: &Path) -> Option<PathBuf> {
    // Resolved, so that `.` and a relative INPUT have a parent.
    let input = std::fs::canonicalize(input).ok()?;
    let mut dirs = Vec::new();
    if input.is_dir() {
        dirs.push(input.clone());
    }
    dirs.extend(input.parent().map(Path::to_path_buf));
    dirs.iter()
        .flat_map(|d| NAMES.iter().map(move |n| d.join(n)))
        .find(|p| p.is_file())
}

/// A tokenizer read and checked against the model it is ported with.
pub struct Tokenizer {
    /// Its file, and how it was chosen.
    pub(crate) located: Located,
    model: SpModel,
    /// The special ids taken from it.
    pub(crate) ids: TokenIds,
    /// The id of `<pad>`, if it has that piece.
    pub(crate) pad: Option<u64>,
    /// The id of `<eod>`, if it has that piece.
    pub(crate) eod: Option<u64>,
}

/// What the summary says about the tokenizer.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Report {
    /// The sentencepiece model file read.
    pub path: PathBuf,
    /// `"given"` (`--tokenizer`) or `"auto"` (found beside the input).
    pub found: &'static str,
    /// Pieces in its vocabulary.
    pub pieces: usize,
    /// The embedding's rows (the converted model's vocab_size).
    pub embedding_rows: u64,
    /// The id of `<eod>`, if the tokenizer has that piece.
    pub eod_id: Option<u64>,
    /// The beginning-of-text id config.json and generation_config.json record.
    pub bos_token_id: Option<u64>,
    /// The end-of-text id they record.
    pub eos_token_id: Option<u64>,
    /// The padding id generation_config.json records.
    pub pad_token_id: Option<u64>,
}

/// Read the tokenizer at `located` and check it against the embedding of `(rows, INPUT)`: more
/// pieces than rows is an error, fewer a warning (padding). `fallback` are the ids config.json
/// keeps when the tokenizer has no `<eod>`. Warnings go to `warn`.
pub fn load(
    located: Located,
    embedding: (u64, &Path),
    fallback: TokenIds,
    warn: &mut dyn FnMut(String),
) -> Result<Tokenizer> {
    let auto = located.found == "auto";
    checked(located, embedding, fallback, warn).map_err(|e| match e {
        // The user did not name this file: say where it came from and how to leave it out.
        Error::Tokenizer { path, msg } if auto => Error::Tokenizer {
            path,
            msg: format!("{msg} (found beside the input; --no-tokenizer ignores it)"),
        },
        e => e,
    })
}

fn checked(
    located: Located,
    (rows, input): (u64, &Path),
    fallback: TokenIds,
    warn: &mut dyn FnMut(String),
) -> Result<Tokenizer> {
    let path = &located.path;
    let model = SpModel::open(path).map_err(|e| from_reader(path, &e))?;
    let pieces = model.len() as u64;
    if pieces > rows {
        return Err(Error::tokenizer(
            path,
            format!(
                "{pieces} pieces, but the embedding of {} has only {rows} rows (the converted \
                 vocab_size): ids from {rows} on would index past it; pass the tokenizer the \
                 model was trained with, or --no-tokenizer (nothing was written)",
                input.display()
            ),
        ));
    }
    if pieces < rows {
        warn(format!(
            "tokenizer {}: {pieces} pieces for the {rows}-row embedding of {}: rows \
             {pieces}..{} are never produced by the tokenizer (padding, normal for Megatron)",
            path.display(),
            input.display(),
            rows - 1
        ));
    }
    let eod = find(&model, EOD);
    let pad = find(&model, PAD);
    let ids = match eod {
        Some(id) => TokenIds {
            bos: Some(id),
            eos: Some(id),
        },
        None => {
            warn(format!(
                "tokenizer {}: no `{EOD}` piece: config.json keeps bos_token_id {} and \
                 eos_token_id {} (from the mapping)",
                path.display(),
                show(fallback.bos),
                show(fallback.eos)
            ));
            fallback
        }
    };
    Ok(Tokenizer {
        located,
        model,
        ids,
        pad,
        eod,
    })
}

/// The reader's message, without the path it starts with (ours names it already).
fn from_reader(path: &Path, e: &cpm_tokenizer::Error) -> Error {
    let msg = e.to_string();
    let prefix = format!("{}: ", path.display());
    Error::tokenizer(path, msg.strip_prefix(&prefix).unwrap_or(&msg))
}

fn show(id: Option<u64>) -> String {
    id.map_or_else(|| "null".into(), |i| i.to_string())
}

/// The id of `piece`, when the model has exactly that piece.
fn find(model: &SpModel, piece: &str) -> Option<u64> {
    model
        .piece_to_id(piece)
        .filter(|&id| model.id_to_piece(id) == Some(piece))
        .map(u64::from)
}

/// The piece sentencepiece gives unknown text.
fn unk_piece(model: &SpModel) -> Option<String> {
    (0..u32::try_from(model.len()).unwrap_or(u32::MAX))
        .find(|&id| model.piece_type(id) == Some(PieceType::Unknown))
        .and_then(|id| model.id_to_piece(id))
        .map(str::to_string)
}

impl Tokenizer {
    /// The summary's view of it.
    pub fn report(&self, rows: u64) -> Report {
        Report {
            path: self.located.path.clone(),
            found: self.located.found,
            pieces: self.model.len(),
            embedding_rows: rows,
            eod_id: self.eod,
            bos_token_id: self.ids.bos,
            eos_token_id: self.ids.eos,
            pad_token_id: self.pad,
        }
    }

    /// Write the five files into `dir` (the staging directory). `positions` is the model's
    /// context length (`model_max_length`).
    pub fn write(&self, dir: &Path, positions: u64) -> Result<Vec<OutputFile>> {
        let json = self
            .model
            .to_tokenizer_json()
            .map_err(|e| from_reader(&self.located.path, &e))?;
        let mut out = vec![
            small(dir, "spiece.model", self.model.bytes())?,
            small(dir, "tokenizer.json", json.as_bytes())?,
        ];
        let config = pretty(
            dir,
            "tokenizer_config.json",
            &self.tokenizer_config(positions),
        )?;
        out.push(small(dir, "tokenizer_config.json", config.as_bytes())?);
        out.push(small(dir, PY_NAME, PY_SOURCE.as_bytes())?);
        let generation = pretty(dir, "generation_config.json", &self.generation_config())?;
        out.push(small(dir, "generation_config.json", generation.as_bytes())?);
        Ok(out)
    }

    /// Names the Python tokenizer (the jieba pipeline), no special tokens appended.
    fn tokenizer_config(&self, positions: u64) -> Value {
        let mut c = Map::new();
        c.insert("tokenizer_class".into(), json!(PY_CLASS));
        c.insert(
            "auto_map".into(),
            json!({"AutoTokenizer": [format!("tokenization_cpm_jieba.{PY_CLASS}"), null]}),
        );
        c.insert("model_max_length".into(), json!(positions));
        c.insert("add_bos_token".into(), json!(false));
        c.insert("add_eos_token".into(), json!(false));
        c.insert("clean_up_tokenization_spaces".into(), json!(false));
        if let Some(unk) = unk_piece(&self.model) {
            c.insert("unk_token".into(), json!(unk));
        }
        if self.eod.is_some() {
            c.insert("bos_token".into(), json!(EOD));
            c.insert("eos_token".into(), json!(EOD));
        }
        if self.pad.is_some() {
            c.insert("pad_token".into(), json!(PAD));
        }
        Value::Object(c)
    }

    /// Only the special ids: CPM's own sampling settings are the user's choice, not the port's.
    fn generation_config(&self) -> Value {
        let mut c = Map::new();
        for (k, v) in [
            ("bos_token_id", self.ids.bos),
            ("eos_token_id", self.ids.eos),
            ("pad_token_id", self.pad),
        ] {
            if let Some(id) = v {
                c.insert(k.into(), json!(id));
            }
        }
        Value::Object(c)
    }
}

fn pretty(dir: &Path, name: &str, v: &Value) -> Result<String> {
    let mut text = serde_json::to_string_pretty(v)
        .map_err(|e| Error::output(dir.join(name), format!("cannot encode: {e}")))?;
    text.push('\n');
    Ok(text)
}

fn small(dir: &Path, name: &str, bytes: &[u8]) -> Result<OutputFile> {
    Ok(OutputFile {
        name: name.into(),
        bytes: bytes.len() as u64,
        sha256: crate::write::small_file(&dir.join(name), bytes)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// INPUT's own file wins over its parent's; the Hugging Face name over the released one.
    #[test]
    fn discovery_prefers_input_then_parent_and_spiece_model() {
        let tmp = tempfile::tempdir().unwrap();
        let input = tmp.path().join("ckpt");
        std::fs::create_dir(&input).unwrap();
        assert_eq!(locate(&input, &Choice::Discover), None);
        std::fs::write(tmp.path().join("chinese_vocab.model"), b"x").unwrap();
        let found = locate(&input, &Choice::Discover).unwrap();
        assert_eq!(found.found, "auto");
        assert!(found.path.ends_with("chinese_vocab.model"));
        std::fs::write(input.join("spiece.model"), b"x").unwrap();
        std::fs::write(input.join("chinese_vocab.model"), b"x").unwrap();
        let found = locate(&input, &Choice::Discover).unwrap();
        assert_eq!(
            found.path,
            input.canonicalize().unwrap().join("spiece.model")
        );
        assert_eq!(locate(&input, &Choice::Off), None);
        let given = locate(&input, &Choice::Given("t.model".into())).unwrap();
        assert_eq!((given.path, given.found), ("t.model".into(), "given"));
    }

    /// A directory named like a tokenizer is not one.
    #[test]
    fn discovery_takes_only_regular_files() {
        let tmp = tempfile::tempdir().unwrap();
        let input = tmp.path().join("model.pt");
        std::fs::write(&input, b"x").unwrap();
        std::fs::create_dir(tmp.path().join("spiece.model")).unwrap();
        assert_eq!(locate(&input, &Choice::Discover), None);
    }
}
