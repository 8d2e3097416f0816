//! Every file of OUT_DIR, written into the staging directory: the model (one file or shards),
//! config.json, the tokenizer's files, SHA256SUMS; or a model-parallel layout's rank files.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use super::{Log, Options, Prepared};
use crate::error::{Error, Result};
use crate::open::Source;
use crate::plan::{self, Plan};
use crate::write::{self, shards, OutputFile};
use crate::{export, gpt2_config, merge};

/// Every file of OUT_DIR into `dir`: the model, config.json (its special ids from the tokenizer,
/// else from the mapping), the tokenizer's files, SHA256SUMS last.
pub(super) fn write_all(
    prepared: &Prepared,
    opts: &Options,
    dir: &Path,
    log: &mut Log,
) -> Result<Vec<OutputFile>> {
    let Prepared {
        src,
        plan,
        format,
        tokenizer,
    } = prepared;
    let ids = match tokenizer {
        Some(t) => t.ids,
        None => gpt2_config::mapping_token_ids(plan, &src.mapping),
    };
    let mut files = match *format {
        Some(fmt) => {
            let job = export::Job {
                src,
                plan,
                opts: &opts.request.export,
                fmt,
                iteration: export::Iteration::of_input(&opts.request.input),
                strict: opts.strict,
            };
            let progress = log.progress;
            export::write(&job, dir, progress, &mut |w| log.warn(w))?
        }
        None => {
            let mut files = write_models(src, plan, opts, dir, log)?;
            files.push(write_config(src, plan, ids, dir, log)?);
            files
        }
    };
    if let Some(t) = tokenizer {
        files.extend(t.write(dir, plan.positions)?);
    }
    let sums = write::sha256sums(
        files
            .iter()
            .map(|f| (f.name.clone(), f.sha256.clone()))
            .collect(),
    );
    files.push(write_small(dir, "SHA256SUMS", sums.as_bytes())?);
    Ok(files)
}

/// `model.safetensors`, or with `--max-shard-size` the shards transformers would write and their
/// index (the copies a checkpoint keeps are checked once, after the last shard).
fn write_models(
    src: &Source,
    plan: &Plan,
    opts: &Options,
    dir: &Path,
    log: &mut Log,
) -> Result<Vec<OutputFile>> {
    let shards = match opts.max_shard_size {
        Some(max) => shards::split(&plan.entries, max),
        None => Vec::new(),
    };
    if shards.len() < 2 {
        return Ok(vec![write_model(
            src,
            plan,
            opts,
            dir,
            "model.safetensors",
            log,
        )?]);
    }
    log.progress.begin(plan.total_bytes());
    let mut files = Vec::with_capacity(shards.len() + 1);
    for (k, entries) in shards.iter().enumerate() {
        let mut part = plan.clone();
        part.entries = entries.clone();
        part.checks.clear();
        let name = shards::file_name(k, shards.len());
        files.push(write_model(src, &part, opts, dir, &name, log)?);
    }
    src.check_copies(plan)?;
    let index = shards::index(plan, &shards)?;
    files.push(write_small(
        dir,
        "model.safetensors.index.json",
        index.as_bytes(),
    )?);
    Ok(files)
}

/// Stream every merged tensor of `plan` into `dir/name`, one tensor at a time.
fn write_model(
    src: &Source,
    plan: &Plan,
    opts: &Options,
    dir: &Path,
    name: &str,
    log: &mut Log,
) -> Result<OutputFile> {
    let header = write::safetensors_header(plan, &write::model_metadata(&src.ranks, plan))?;
    if opts.max_shard_size.is_none() {
        log.progress.begin(plan.total_bytes());
    }
    let path = dir.join(name);
    // Tensors whose NaN/Inf the hasher counts as it hashes them (the data in cache then).
    let mut counted = Vec::new();
    let (sha256, bytes) = write::stream_model(&path, |sink| {
        sink.put(header.into())?;
        for e in &plan.entries {
            if log.progress.cancelled() {
                return Err(Error::Interrupted);
            }
            let spans = src.spans(e)?;
            let names = src.part_names(e);
            let alloc = &mut |n| sink.buffer(n);
            // One part (a global tensor) is read as the pieces it is stored in, uncopied.
            let merged = match (&e.sources[..], &spans[..]) {
                ([p], [s]) => {
                    let file = &src.ranks[p.rank].file;
                    file.prefetch(s);
                    let pieces = file.read_pieces(&e.source, &p.tensor, s)?;
                    merge::tensor_pieces(e, pieces, &names, (opts.strict, true), alloc)?
                }
                _ => merge::tensor(e, src.read(e, &spans)?, &names, opts.strict, alloc)?,
            };
            if merged.non_finite > 0 {
                log.warn(non_finite_warning(e, merged.non_finite));
            }
            if merged.uncounted {
                let counter = Arc::new(AtomicU64::new(0));
                sink.count(Some((e.source_dtype, counter.clone())))?;
                counted.push((e, counter));
            }
            for piece in merged.pieces {
                sink.put(piece)?;
            }
            if merged.uncounted {
                sink.count(None)?;
            }
            // Drop our view of the source pages once the writer and the hasher are past them.
            let pages: Vec<_> = e
                .sources
                .iter()
                .zip(&spans)
                .flat_map(|(p, s)| src.ranks[p.rank].file.pages_for(&e.source, &p.tensor, s))
                .collect();
            sink.after_written(Box::new(move || {
                pages.iter().for_each(|(p, s)| p.release(s))
            }))?;
            log.progress.advance(e.nbytes());
        }
        src.check_copies(plan)
    })?;
    for (e, counter) in counted {
        let n = counter.load(Ordering::Relaxed);
        if n > 0 {
            log.warn(non_finite_warning(e, n));
        }
    }
    Ok(OutputFile {
        name: name.into(),
        bytes,
        sha256,
    })
}

fn non_finite_warning(e: &plan::Entry, n: u64) -> String {
    format!(
        "tensor `{}` (-> `{}`) holds {n} NaN/Inf value(s) of {}",
        e.source,
        e.target,
        e.numel()
    )
}

/// `config.json`, its dtype taken from the tensors actually written.
fn write_config(
    src: &Source,
    plan: &Plan,
    ids: gpt2_config::TokenIds,
    dir: &Path,
    log: &mut Log,
) -> Result<OutputFile> {
    let dtype = gpt2_config::model_dtype(plan);
    if let Some(mixed) = gpt2_config::mixed_dtypes(plan) {
        log.warn(format!(
            "the written tensors mix dtypes ({mixed}); config.json says `{}`, the dtype of most \
             weights",
            dtype.torch_name()
        ));
    }
    let config = gpt2_config::config(plan, &src.mapping, dtype, ids);
    let mut text = serde_json::to_string_pretty(&config)
        .map_err(|e| Error::output(dir.join("config.json"), format!("cannot encode: {e}")))?;
    text.push('\n');
    write_small(dir, "config.json", text.as_bytes())
}

fn write_small(dir: &Path, name: &str, bytes: &[u8]) -> Result<OutputFile> {
    Ok(OutputFile {
        name: name.into(),
        bytes: bytes.len() as u64,
        sha256: write::small_file(&dir.join(name), bytes)?,
    })
}
