//! Files that hold secrets (mesh keys, CA and node keys, credentials): read only when no one
//! but their owner can read them (like ssh), and written new, whole, with a chosen mode.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

/// Why a secret file was not read.
#[derive(Debug)]
pub(crate) enum SecretFileError {
    /// It could not be read.
    Read(std::io::Error),
    /// Group or others may read it (its mode), and insecure permissions were not allowed.
    Permissions(u32),
}

/// Reads a secret file, refusing one that group or others can read unless `insecure`.
pub(crate) fn read_secret(path: &Path, insecure: bool) -> Result<String, SecretFileError> {
    let meta = fs::metadata(path).map_err(SecretFileError::Read)?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 && !insecure {
        return Err(SecretFileError::Permissions(mode));
    }
    fs::read_to_string(path).map_err(SecretFileError::Read)
}

/// Writes `text` to a new file (fails if it exists) with `mode`, and syncs it.
pub(crate) fn write_new(path: &Path, text: &str, mode: u32) -> std::io::Result<()> {
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)?;
    file.write_all(text.as_bytes())?;
    file.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_files_are_written_new_and_read_only_when_private() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secret");
        write_new(&path, "s3cret\n", 0o600).unwrap();
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert!(
            write_new(&path, "other", 0o600).is_err(),
            "never overwrites"
        );
        assert_eq!(read_secret(&path, false).unwrap(), "s3cret\n");
        fs::set_permissions(&path, fs::Permissions::from_mode(0o640)).unwrap();
        assert!(matches!(
            read_secret(&path, false),
            Err(SecretFileError::Permissions(0o640))
        ));
        assert_eq!(read_secret(&path, true).unwrap(), "s3cret\n");
        assert!(matches!(
            read_secret(&dir.path().join("none"), false),
            Err(SecretFileError::Read(_))
        ));
    }
}
