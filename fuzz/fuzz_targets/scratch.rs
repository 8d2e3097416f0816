//! A per-process scratch directory on tmpfs for the verifier targets, whose readers take paths.

use std::path::PathBuf;
use std::sync::OnceLock;

pub fn dir(tag: &str) -> &'static PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let base = if std::path::Path::new("/dev/shm").is_dir() {
            PathBuf::from("/dev/shm")
        } else {
            std::env::temp_dir()
        };
        let d = base.join(format!("cpm-fuzz-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&d).expect("scratch directory");
        d
    })
}
