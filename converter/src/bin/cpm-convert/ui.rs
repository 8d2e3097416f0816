//! The user interface the library reports to: progress bar, warnings (printed and kept for the
//! JSON object), and the stop request set by SIGINT/SIGTERM.

use std::cell::RefCell;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use cpm_convert::Progress;

use crate::signals;

pub struct Ui {
    pub bar: ProgressBar,
    json: bool,
    pub warnings: RefCell<Vec<String>>,
    #[cfg(feature = "test-hooks")]
    pause: Option<crate::test_hooks::Pause>,
}

impl Ui {
    pub fn new(show_bar: bool, json: bool) -> Ui {
        let bar = if show_bar {
            let b = ProgressBar::with_draw_target(Some(0), ProgressDrawTarget::stderr());
            b.set_style(
                ProgressStyle::with_template(
                    "{bar:40} {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
            );
            b
        } else {
            ProgressBar::hidden()
        };
        Ui {
            bar,
            json,
            warnings: RefCell::new(Vec::new()),
            #[cfg(feature = "test-hooks")]
            pause: crate::test_hooks::Pause::from_env(),
        }
    }
}

impl Progress for Ui {
    fn begin(&self, total: u64) {
        self.bar.set_length(total);
    }
    fn advance(&self, bytes: u64) {
        self.bar.inc(bytes);
        #[cfg(feature = "test-hooks")]
        if let Some(p) = &self.pause {
            p.after_tensor(&|| self.cancelled());
        }
    }
    fn warn(&self, msg: &str) {
        self.bar
            .suspend(|| eprintln!("cpm-convert: warning: {msg}"));
        self.warnings.borrow_mut().push(msg.to_string());
    }
    fn note(&self, msg: &str) {
        // --json keeps stderr for warnings; the object says the same (`tokenizer.found`).
        if !self.json {
            self.bar.suspend(|| eprintln!("cpm-convert: note: {msg}"));
        }
    }
    fn cancelled(&self) -> bool {
        signals::stop_signal().is_some()
    }
    fn writing(&self) {
        signals::defer();
    }
}
