//! What cpm-convert prints: a conversion's summary, a dry run's plan, or the failure (and its
//! exit code), as text or as the one `--json` object.

use std::process::ExitCode;

use serde::Serialize;

use cpm_cli::{emit_json, emit_raw, JsonError};
use cpm_convert::export::Export;
use cpm_convert::tokenizer_files::Report;
use cpm_convert::write::OutputFile;
use cpm_convert::{table, Plan, Summary};

use crate::signals;
use crate::ui::Ui;

/// `--json`'s result of a conversion: what was written, never the plan.
#[derive(Serialize)]
struct JsonSummary<'a> {
    /// OUT_DIR as given (a non-UTF-8 name lossily: the object must always encode).
    output: String,
    /// model.safetensors, config.json, the tokenizer files if any, SHA256SUMS.
    files: &'a [OutputFile],
    /// The tokenizer the port got (null: none given or found).
    tokenizer: Option<&'a Report>,
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
    tokenizer: Option<&'a Report>,
    warnings: Vec<String>,
}

/// A finished conversion: the JSON object (with the warnings the UI kept), or one line on
/// stderr unless `quiet`.
pub fn summary(summary: &Summary, json: bool, quiet: bool, warnings: Vec<String>) {
    if json {
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
            warnings,
        });
    } else if !quiet {
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
}

/// What a dry run found: the plan, the sizes, the export grid and the tokenizer, as the JSON
/// object or as the warnings on stderr and the table on stdout.
pub struct DryRun<'a> {
    pub plan: &'a Plan,
    pub model_file_bytes: u64,
    /// A model-parallel export's grid (`None`: Hugging Face output).
    pub export: Option<&'a Export>,
    pub tokenizer: Option<Report>,
    pub warnings: Vec<String>,
}

pub fn dry_run(d: DryRun, json: bool) {
    let plan = d.plan;
    if json {
        emit_json(&JsonPlan {
            plan,
            tensor_bytes: plan.total_bytes(),
            model_file_bytes: d.model_file_bytes,
            tokenizer: d.tokenizer.as_ref(),
            warnings: d.warnings,
        });
        return;
    }
    for n in &d.warnings {
        eprintln!("cpm-convert: warning: {n}");
    }
    emit_raw(&format!(
        "{}\n{}{} tensors: {} bytes of tensor data; model.safetensors will be {} bytes (header \
         included)\n",
        table::plan_summary(plan),
        table::plan_table(plan),
        plan.entries.len(),
        plan.total_bytes(),
        d.model_file_bytes
    ));
    if let Some(export) = d.export {
        emit_raw(&format!(
            "--to {:?} --tp {} --pp {}: the tensors above, split into {} rank file(s); \
             every size divides\n",
            export.target,
            export.tp,
            export.pp,
            export.tp * export.pp
        ));
    }
    if let Some(t) = &d.tokenizer {
        emit_raw(&format!(
            "tokenizer {}: {} pieces, <eod> = {}; adds spiece.model, tokenizer.json, \
             tokenizer_config.json, tokenization_cpm_jieba.py, generation_config.json\n",
            t.path.display(),
            t.pieces,
            t.eod_id.map_or_else(|| "none".into(), |i| i.to_string())
        ));
    }
}

/// Report a failure: exit 2, or 128 + the signal number when a signal stopped the conversion.
pub fn failure(e: &anyhow::Error, ui: &Ui, json: bool) -> ExitCode {
    ui.bar.finish_and_clear();
    let interrupted = matches!(
        e.downcast_ref::<cpm_convert::Error>(),
        Some(cpm_convert::Error::Interrupted)
    );
    let msg = format!("{e:#}");
    if json {
        emit_json(&JsonError {
            error: &msg,
            warnings: Some(ui.warnings.take()),
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
