//! Storing a private key in a file the app chooses, safely.

use rand::RngCore;
use rand::rngs::OsRng;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use zeroize::Zeroizing;

use crate::error::{Error, Result};

/// Reads the key at `path`, or stores the one `create` makes there and returns it.
pub(crate) fn load_or_create(
    path: &Path,
    create: impl FnOnce() -> Result<Zeroizing<Vec<u8>>>,
) -> Result<Zeroizing<Vec<u8>>> {
    match read_private(path) {
        Ok(bytes) => return Ok(bytes),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(file_error(path, e)),
    }
    let bytes = create()?;
    let tmp = temp_path(path);
    let stored = write_private(&tmp, &bytes).and_then(|()| {
        // A hard link never replaces an existing file: if another process created the key
        // between our read and now, we keep its key rather than silently forking the device.
        match fs::hard_link(&tmp, path) {
            Ok(()) => Ok(None),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => read_private(path).map(Some),
            // Some filesystems have no hard links; a rename is still atomic, last writer wins.
            Err(_) => fs::rename(&tmp, path).map(|()| None),
        }
    });
    let _ = fs::remove_file(&tmp);
    match stored {
        Ok(Some(theirs)) => Ok(theirs),
        Ok(None) => {
            sync_parent(path);
            Ok(bytes)
        }
        Err(e) => Err(file_error(path, e)),
    }
}

fn file_error(path: &Path, e: io::Error) -> Error {
    Error::device_key(format!("device key file {}: {e}", path.display()))
}

/// A name in the same directory, so the final link or rename stays on one filesystem.
pub(crate) fn temp_path(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map_or_else(|| "device-key".into(), |n| n.to_string_lossy());
    let mut suffix = [0u8; 8];
    OsRng.fill_bytes(&mut suffix);
    let suffix: String = suffix.iter().map(|b| format!("{b:02x}")).collect();
    path.with_file_name(format!(".{name}.{suffix}.tmp"))
}

pub(crate) fn write_private(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let mut options = OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(path)?;
    file.write_all(bytes)?;
    file.sync_all()
}

pub(crate) fn read_private(path: &Path) -> io::Result<Zeroizing<Vec<u8>>> {
    let mut file = File::open(path)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = file.metadata()?.permissions().mode();
        if mode & 0o077 != 0 {
            return Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                format!("permissions {:o} are too open; expected 0600", mode & 0o777),
            ));
        }
    }
    let mut bytes = Zeroizing::new(Vec::new());
    file.read_to_end(&mut bytes)?;
    Ok(bytes)
}

/// Makes the new directory entry durable; best effort, as not every platform can open a
/// directory.
pub(crate) fn sync_parent(path: &Path) {
    if let Some(parent) = path.parent() {
        let parent = if parent.as_os_str().is_empty() {
            Path::new(".")
        } else {
            parent
        };
        if let Ok(dir) = File::open(parent) {
            let _ = dir.sync_all();
        }
    }
}
