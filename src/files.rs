//! Output files that appear whole or not at all.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

/// Calls `write` on a temporary path beside `path`, then renames it to `path`. On error the
/// temporary file is removed and `path` is left as it was.
pub fn write_atomic(path: &Path, write: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    let name = path
        .file_name()
        .with_context(|| format!("{}: not a file path", path.display()))?;
    let tmp: PathBuf = path.with_file_name(format!(".{}.partial", name.to_string_lossy()));
    let result = write(&tmp).and_then(|()| {
        std::fs::rename(&tmp, path)
            .with_context(|| format!("{}: cannot rename into place", path.display()))
    });
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.with_context(|| format!("{}: cannot write", path.display()))
}
