//! What a conversion, an export or a diff tells a user interface as it goes: the one trait the
//! binaries implement (progress bars, warnings, stop signals) and the library calls.

/// Hooks for a user interface; all optional.
pub trait Progress {
    /// Called once with the bytes the model file will receive.
    fn begin(&self, _total_bytes: u64) {}
    /// Called after each tensor is written.
    fn advance(&self, _bytes: u64) {}
    /// A problem that does not stop the conversion.
    fn warn(&self, msg: &str);
    /// Something the user should know that is not a problem (a tokenizer found by itself).
    fn note(&self, _msg: &str) {}
    /// Whether the user asked to stop (SIGINT/SIGTERM): checked before each tensor and before
    /// the result is moved into place, so a stop removes the staging directory.
    fn cancelled(&self) -> bool {
        false
    }
    /// Called once, just before the staging directory is created. Until then nothing exists
    /// to clean up (a UI may let a stop signal end the process at once, even in a blocked
    /// read); from then on a stop must come through [`Progress::cancelled`].
    fn writing(&self) {}
}
