//! Atomic file replacement: a temp file in the destination's own directory, written,
//! fsynced, given its mode, renamed over the destination, then the directory fsynced.
//!
//! A process that is executing (or reading) the old file keeps its inode, so a running
//! `iotlan` is never broken, and a new exec sees either the whole old or the whole new file.

use std::fs::{self, File};
use std::io::{self, Read};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
#[error("{op} {path}: {source}")]
pub struct FileError {
    pub op: &'static str,
    pub path: PathBuf,
    #[source]
    pub source: io::Error,
}

fn err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> FileError + 'a {
    move |source| FileError {
        op,
        path: path.to_owned(),
        source,
    }
}

/// Prefix of our temp files, so a crash's leftovers can be recognised and removed.
pub const TEMP_PREFIX: &str = iotlan_ipam::durable::TEMP_PREFIX;

/// Writes `contents` to `dest` atomically and durably with permission bits `mode`
/// ([`iotlan_ipam::durable::write_atomic`]).
pub fn write_atomic(dest: &Path, contents: &[u8], mode: u32) -> Result<(), FileError> {
    iotlan_ipam::durable::write_atomic(dest, contents, mode).map_err(err("write atomically", dest))
}

/// Copies `src` over `dest` atomically (mode 0755) unless `dest` already has the same bytes
/// and mode. Returns whether it wrote.
pub fn install_binary(src: &Path, dest: &Path) -> Result<bool, FileError> {
    let new = fs::read(src).map_err(err("read", src))?;
    if same_contents(dest, &new, 0o755) {
        return Ok(false);
    }
    write_atomic(dest, &new, 0o755)?;
    Ok(true)
}

/// Makes `dest` a hard link of `target` (same directory), atomically: a temp link renamed over
/// `dest`, so a new exec sees the old or the new file, never none. Where the file system refuses
/// hard links, `dest` becomes an atomic copy instead. Returns whether it changed anything.
pub fn install_link(target: &Path, dest: &Path) -> Result<bool, FileError> {
    use std::os::unix::fs::MetadataExt;
    let want = fs::metadata(target).map_err(err("stat", target))?;
    if fs::symlink_metadata(dest).is_ok_and(|m| m.dev() == want.dev() && m.ino() == want.ino()) {
        return Ok(false);
    }
    let dir = dest
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = dest
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!("{TEMP_PREFIX}{name}.{}.link", std::process::id()));
    let _ = fs::remove_file(&tmp);
    if let Err(e) = fs::hard_link(target, &tmp) {
        tracing::debug!(error = %e, dest = %dest.display(), "no hard link here; copying");
        return install_binary(target, dest);
    }
    let result = fs::rename(&tmp, dest)
        .map_err(err("rename into place", dest))
        .and_then(|()| {
            File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(err("fsync", dir))
        });
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result.map(|()| true)
}

/// True when `path` is a regular file holding exactly `want` with permission bits `mode`.
pub fn same_contents(path: &Path, want: &[u8], mode: u32) -> bool {
    let Ok(mut f) = File::open(path) else {
        return false;
    };
    let Ok(meta) = f.metadata() else { return false };
    if !meta.is_file()
        || meta.len() != want.len() as u64
        || meta.permissions().mode() & 0o7777 != mode
    {
        return false;
    }
    let mut have = Vec::with_capacity(want.len());
    f.read_to_end(&mut have).is_ok() && have == want
}

/// Makes `dest` hold exactly `contents` with permission bits `mode`, written atomically, unless it
/// does already; its directory is created (mode `dir_mode`) and cleared of stale temp files first.
/// Returns whether it wrote.
pub fn replace_if_changed(
    dest: &Path,
    contents: &[u8],
    mode: u32,
    dir_mode: u32,
) -> Result<bool, FileError> {
    if same_contents(dest, contents, mode) {
        return Ok(false);
    }
    if let Some(dir) = dest.parent().filter(|d| !d.as_os_str().is_empty()) {
        ensure_dir(dir, dir_mode)?;
        remove_stale_temps(dir);
    }
    write_atomic(dest, contents, mode)?;
    Ok(true)
}

/// Removes temp files left in `dir` by an installer that was killed mid-write
/// ([`iotlan_ipam::durable::remove_stale_temps`]).
pub fn remove_stale_temps(dir: &Path) {
    iotlan_ipam::durable::remove_stale_temps(dir, TEMP_PREFIX);
}

/// Creates `dir` (and parents) and sets its mode exactly.
pub fn ensure_dir(dir: &Path, mode: u32) -> Result<(), FileError> {
    fs::create_dir_all(dir).map_err(err("create dir", dir))?;
    fs::set_permissions(dir, fs::Permissions::from_mode(mode)).map_err(err("chmod", dir))
}
