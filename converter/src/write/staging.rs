//! The output directory protocol: the result is staged beside OUT_DIR and renamed into place
//! whole, an existing OUT_DIR is replaced only with --force, stale staging directories of killed
//! runs are cleaned up, and no output path may overlap an input.

use std::fs::File;
use std::path::{Component, Path, PathBuf};

use crate::error::{Error, Result};

/// Prefix of the staging directory beside OUT_DIR: `.<name>.cpm-convert-tmp.<pid>`.
const TMP_TAG: &str = ".cpm-convert-tmp.";
const OLD_TAG: &str = ".cpm-convert-old.";

/// The output directory protocol: everything goes into a staging directory beside OUT_DIR,
/// which replaces OUT_DIR in one rename when complete. Dropping an uncommitted `Staging`
/// removes the staging directory, so a failed run leaves nothing behind.
pub struct Staging {
    tmp: PathBuf,
    out: PathBuf,
    force: bool,
    committed: bool,
    /// Stale staging directories of killed runs that were removed, for a notice.
    pub removed_stale: Vec<PathBuf>,
}

impl Staging {
    /// Check OUT_DIR and create the staging directory.
    pub fn new(out: &Path, force: bool) -> Result<Staging> {
        check_target(out, force)?;
        let name = out
            .file_name()
            .ok_or_else(|| {
                Error::usage(format!(
                    "{}: not a usable output directory name",
                    out.display()
                ))
            })?
            .to_string_lossy()
            .into_owned();
        let parent = match out.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        std::fs::create_dir_all(&parent).map_err(|e| Error::io(&parent, "cannot create", e))?;
        let removed_stale = remove_stale(&parent, &name, out);
        let tmp = parent.join(format!(".{name}{TMP_TAG}{}", std::process::id()));
        if tmp.exists() {
            std::fs::remove_dir_all(&tmp).map_err(|e| Error::io(&tmp, "cannot remove", e))?;
        }
        std::fs::create_dir(&tmp).map_err(|e| Error::io(&tmp, "cannot create", e))?;
        Ok(Staging {
            tmp,
            out: out.to_path_buf(),
            force,
            committed: false,
            removed_stale,
        })
    }

    pub fn path(&self) -> &Path {
        &self.tmp
    }

    /// Move the finished staging directory to OUT_DIR, replacing an old one under `--force`.
    pub fn commit(mut self) -> Result<()> {
        check_target(&self.out, self.force)?;
        let mut old = None;
        if self.out.exists() {
            if dir_is_empty(&self.out)? {
                std::fs::remove_dir(&self.out)
                    .map_err(|e| Error::io(&self.out, "cannot replace", e))?;
            } else {
                let name = self
                    .out
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default();
                let aside = self
                    .tmp
                    .with_file_name(format!(".{name}{OLD_TAG}{}", std::process::id()));
                std::fs::rename(&self.out, &aside)
                    .map_err(|e| Error::io(&self.out, "cannot move aside", e))?;
                old = Some(aside);
            }
        }
        if let Err(e) = std::fs::rename(&self.tmp, &self.out) {
            // Put the old directory back so a failed replace loses nothing.
            if let Some(o) = &old {
                let _ = std::fs::rename(o, &self.out);
            }
            return Err(Error::io(&self.out, "cannot move the result into place", e));
        }
        self.committed = true;
        if let Some(parent) = self.out.parent().filter(|p| !p.as_os_str().is_empty()) {
            if let Ok(d) = File::open(parent) {
                let _ = d.sync_all();
            }
        }
        if let Some(o) = old {
            std::fs::remove_dir_all(&o)
                .map_err(|e| Error::io(&o, "cannot remove the replaced directory", e))?;
        }
        Ok(())
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        if !self.committed {
            let _ = std::fs::remove_dir_all(&self.tmp);
        }
    }
}

/// OUT_DIR must not exist, be an empty directory, or (with `--force`) be a directory.
pub fn check_target(out: &Path, force: bool) -> Result<()> {
    match std::fs::symlink_metadata(out) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io(out, "cannot inspect the output directory", e)),
        Ok(m) if !m.is_dir() => Err(Error::usage(format!(
            "{}: exists and is not a directory; choose another output path",
            out.display()
        ))),
        Ok(_) if force || dir_is_empty(out)? => Ok(()),
        Ok(_) => Err(Error::usage(format!(
            "{}: output directory is not empty; pass --force to replace it, or choose another path",
            out.display()
        ))),
    }
}

fn dir_is_empty(p: &Path) -> Result<bool> {
    let mut it = std::fs::read_dir(p).map_err(|e| Error::io(p, "cannot list", e))?;
    Ok(it.next().is_none())
}

/// Remove `.<name>.cpm-convert-{tmp,old}.<pid>` directories whose process is gone. An `old`
/// directory is a previous OUT_DIR that a killed `--force` run had moved aside: if OUT_DIR is
/// missing it is put back instead.
fn remove_stale(parent: &Path, name: &str, out: &Path) -> Vec<PathBuf> {
    let mut removed = Vec::new();
    let Ok(entries) = std::fs::read_dir(parent) else {
        return removed;
    };
    let prefix = format!(".{name}");
    for e in entries.flatten() {
        let fname = e.file_name().to_string_lossy().into_owned();
        let Some(rest) = fname.strip_prefix(&prefix) else {
            continue;
        };
        let (pid, is_old) = match (rest.strip_prefix(TMP_TAG), rest.strip_prefix(OLD_TAG)) {
            (Some(p), _) => (p, false),
            (_, Some(p)) => (p, true),
            _ => continue,
        };
        let Ok(pid) = pid.parse::<u32>() else {
            continue;
        };
        if pid == std::process::id() || process_alive(pid) {
            continue;
        }
        if is_old && !out.exists() {
            let _ = std::fs::rename(e.path(), out);
        } else if std::fs::remove_dir_all(e.path()).is_ok() {
            removed.push(e.path());
        }
    }
    removed
}

fn process_alive(pid: u32) -> bool {
    if cfg!(target_os = "linux") {
        Path::new(&format!("/proc/{pid}")).exists()
    } else {
        // Without /proc we cannot tell: leave it alone.
        true
    }
}

/// Refuse an OUT_DIR that is, contains or lies inside an input (INPUT itself, each rank file,
/// each directory between them such as the iteration directory, the mapping file and the
/// tokenizer), with or without `--force`: replacing OUT_DIR moves it aside and deletes it, and
/// the staging directory is made beside it, so an overlap would move or delete an input.
/// `extra` are the input files beside the checkpoint (mapping file, tokenizer). Paths are compared
/// resolved (absolute, `..` and symlinks followed), so `-o .`, `-o ckpt/80000/..` and a
/// symlinked spelling are all caught. Called before anything is created or moved.
pub fn check_outside_inputs(out: &Path, input: &Path, extra: &[&Path]) -> Result<()> {
    let out_resolved = resolve(out)?;
    for p in input_paths(input, extra)? {
        let p_resolved = resolve(&p)?;
        let relation = if p_resolved == out_resolved {
            "is"
        } else if p_resolved.starts_with(&out_resolved) {
            "contains"
        } else if out_resolved.starts_with(&p_resolved) {
            "lies inside"
        } else {
            continue;
        };
        return Err(Error::usage(format!(
            "refusing to write to {} (resolved: {}): it {relation} the input {} (resolved: {}); \
             choose an output directory outside the checkpoint (nothing was changed)",
            out.display(),
            out_resolved.display(),
            p.display(),
            p_resolved.display()
        )));
    }
    Ok(())
}

/// Every input path: INPUT, the `extra` files, each rank file and each directory between a rank
/// file and INPUT (any of which may be a symlink to somewhere else).
fn input_paths(input: &Path, extra: &[&Path]) -> Result<Vec<PathBuf>> {
    let mut paths = vec![input.to_path_buf()];
    paths.extend(extra.iter().map(|p| p.to_path_buf()));
    let layout = crate::open::discover(input)?;
    paths.extend(layout.config);
    for rank in layout.shards.into_iter().map(|s| s.path) {
        let mut dir = rank.parent();
        while let Some(d) = dir.filter(|d| *d != input && d.starts_with(input)) {
            paths.push(d.to_path_buf());
            dir = d.parent();
        }
        paths.push(rank);
    }
    Ok(paths)
}

/// `p` as an absolute path with `.`, `..` and symlinks resolved. A path that does not exist
/// (yet) is resolved through its deepest existing ancestor, with the rest appended.
fn resolve(p: &Path) -> Result<PathBuf> {
    let abs = if p.is_absolute() {
        p.to_path_buf()
    } else {
        std::env::current_dir()
            .map_err(|e| Error::io(".", "cannot find the current directory", e))?
            .join(p)
    };
    let parts: Vec<Component> = abs.components().collect();
    for k in (1..=parts.len()).rev() {
        let Ok(mut found) = std::fs::canonicalize(parts[..k].iter().collect::<PathBuf>()) else {
            continue;
        };
        for c in &parts[k..] {
            match c {
                Component::ParentDir => {
                    found.pop();
                }
                Component::Normal(n) => found.push(n),
                _ => {}
            }
        }
        return Ok(found);
    }
    // Not even the root resolves: compare the absolute path as written.
    Ok(abs)
}
