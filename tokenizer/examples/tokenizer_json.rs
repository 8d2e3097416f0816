//! Prints the Hugging Face `tokenizer.json` of a sentencepiece model (the unigram part):
//! `cargo run --release -p cpm-tokenizer --example tokenizer_json -- MODEL > tokenizer.json`.

use std::path::PathBuf;

fn main() -> anyhow::Result<()> {
    let path: PathBuf = std::env::args_os()
        .nth(1)
        .ok_or_else(|| anyhow::anyhow!("usage: tokenizer_json MODEL"))?
        .into();
    let model = cpm_tokenizer::SpModel::open(&path)?;
    println!("{}", model.to_tokenizer_json()?);
    Ok(())
}
