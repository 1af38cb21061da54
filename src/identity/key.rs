//! The mesh key: a 32-byte shared secret, its text form, and where it is kept.

use std::fs;
use std::path::{Path, PathBuf};

use ring::hkdf;
use ring::rand::{SecureRandom, SystemRandom};

use crate::secret_file::{SecretFileError, read_secret, write_new};

/// Prefix of the text form, so a key is recognisable (and greppable by secret scanners).
const PREFIX: &str = "ambk1-";
const KEY_LEN: usize = 32;

/// The shared secret of a mesh. `Debug` and `Display` print a mask, never the key.
#[derive(Clone, PartialEq, Eq)]
pub struct MeshKey([u8; KEY_LEN]);

impl std::fmt::Debug for MeshKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MeshKey(***)")
    }
}

/// Where the key in use came from (for `mesh show` and logs; never the key itself).
#[derive(Debug, Clone)]
pub enum MeshKeySource {
    /// `--mesh-key` or `AMBASSADOR_MESH_KEY`.
    Inline,
    /// A key file given explicitly.
    File(PathBuf),
    /// The per-user default file, created on first use.
    Default(PathBuf),
}

impl std::fmt::Display for MeshKeySource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            MeshKeySource::Inline => f.write_str("--mesh-key / AMBASSADOR_MESH_KEY"),
            MeshKeySource::File(p) => write!(f, "{}", p.display()),
            MeshKeySource::Default(p) => write!(f, "{} (default)", p.display()),
        }
    }
}

/// Errors loading or storing a key. Messages never contain the key.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The text is not a mesh key.
    #[error(
        "not a mesh key: expected {PREFIX} followed by 64 hex digits (make one with `ambassador mesh new`)"
    )]
    Malformed,
    /// The file could not be read.
    #[error(
        "cannot read mesh key file {path}: {source} (copy the mesh's key there, or make one with `ambassador mesh new --out {path}`)"
    )]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file could not be written.
    #[error("cannot write mesh key file {path}: {source}")]
    Write {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is readable by group or others.
    #[error(
        "mesh key file {path} is readable by others (mode {mode:03o}): run `chmod 600 {path}` or pass --insecure-key-permissions"
    )]
    Permissions {
        /// The file.
        path: PathBuf,
        /// Its mode bits.
        mode: u32,
    },
    /// The operating system's random source failed.
    #[error("the system random source failed")]
    Random,
    /// No home or config directory to keep the default key in.
    #[error(
        "no place for the default mesh key: set XDG_CONFIG_HOME or HOME, or pass --mesh-key-file"
    )]
    NoConfigDir,
}

struct Len32;
impl hkdf::KeyType for Len32 {
    fn len(&self) -> usize {
        32
    }
}

impl MeshKey {
    /// A fresh random key.
    pub fn generate() -> Result<Self, KeyError> {
        let mut bytes = [0u8; KEY_LEN];
        SystemRandom::new()
            .fill(&mut bytes)
            .map_err(|_| KeyError::Random)?;
        Ok(Self(bytes))
    }

    /// Parses the text form (surrounding whitespace ignored).
    pub fn parse(text: &str) -> Result<Self, KeyError> {
        let hex_part = text
            .trim()
            .strip_prefix(PREFIX)
            .ok_or(KeyError::Malformed)?;
        let bytes = hex::decode(hex_part).map_err(|_| KeyError::Malformed)?;
        let bytes: [u8; KEY_LEN] = bytes.try_into().map_err(|_| KeyError::Malformed)?;
        Ok(Self(bytes))
    }

    /// The text form, for `mesh new` / `mesh show` and key files only.
    pub fn to_text(&self) -> String {
        format!("{PREFIX}{}", hex::encode(self.0))
    }

    /// Reads a key file, refusing one that group or others can read unless `insecure` is set.
    pub fn read_file(path: &Path, insecure: bool) -> Result<Self, KeyError> {
        let text = read_secret(path, insecure).map_err(|e| match e {
            SecretFileError::Read(source) => KeyError::Read {
                path: path.to_path_buf(),
                source,
            },
            SecretFileError::Permissions(mode) => KeyError::Permissions {
                path: path.to_path_buf(),
                mode,
            },
        })?;
        Self::parse(&text)
    }

    /// Writes the key to a new file with mode 0600 (fails if the file exists).
    pub fn write_new_file(&self, path: &Path) -> Result<(), KeyError> {
        let write_err = |source| KeyError::Write {
            path: path.to_path_buf(),
            source,
        };
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        fs::create_dir_all(dir).map_err(write_err)?;
        // Written whole under a temporary name, then linked into place (which fails if the
        // name exists): a process that reads the key meanwhile (two nodes started at once on
        // a fresh host) sees no file or the whole key, never an empty one.
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
        let text = format!("{}\n", self.to_text());
        let written = write_new(&tmp, &text, 0o600).and_then(|()| fs::hard_link(&tmp, path));
        let _ = fs::remove_file(&tmp);
        match written {
            // A file system without hard links: create the file in place instead.
            Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => {
                write_new(path, &text, 0o600).map_err(write_err)
            }
            other => other.map_err(write_err),
        }
    }

    /// The 32-byte seed of the mesh root's Ed25519 key.
    pub(crate) fn derive_root_seed(&self) -> [u8; 32] {
        let salt = hkdf::Salt::new(hkdf::HKDF_SHA256, b"ambassador mesh v1");
        let prk = salt.extract(&self.0);
        let mut seed = [0u8; 32];
        // HKDF-SHA256 can expand to 255*32 bytes: 32 bytes never fail (invariant).
        #[allow(clippy::expect_used)]
        prk.expand(&[b"root ed25519 seed"], Len32)
            .and_then(|okm| okm.fill(&mut seed))
            .expect("HKDF expand of 32 bytes cannot fail");
        seed
    }
}

/// `$XDG_CONFIG_HOME/ambassador/mesh.key`, or `~/.config/ambassador/mesh.key`.
pub fn default_key_path() -> Result<PathBuf, KeyError> {
    let base = match std::env::var_os("XDG_CONFIG_HOME").filter(|v| !v.is_empty()) {
        Some(dir) => PathBuf::from(dir),
        None => {
            let home = std::env::var_os("HOME")
                .filter(|v| !v.is_empty())
                .ok_or(KeyError::NoConfigDir)?;
            PathBuf::from(home).join(".config")
        }
    };
    Ok(base.join("ambassador").join("mesh.key"))
}

/// Loads the default key, creating it (mode 0600) on first use. Returns the key and whether it
/// was created now.
pub fn load_or_create_default(insecure: bool) -> Result<(MeshKey, PathBuf, bool), KeyError> {
    let path = default_key_path()?;
    match MeshKey::read_file(&path, insecure) {
        Ok(key) => Ok((key, path, false)),
        Err(KeyError::Read { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
            let key = MeshKey::generate()?;
            match key.write_new_file(&path) {
                Ok(()) => Ok((key, path, true)),
                // Another process on this host created it first: use theirs.
                Err(KeyError::Write { source, .. })
                    if source.kind() == std::io::ErrorKind::AlreadyExists =>
                {
                    Ok((MeshKey::read_file(&path, insecure)?, path, false))
                }
                Err(e) => Err(e),
            }
        }
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn text_round_trip_and_mask() {
        let key = MeshKey::generate().unwrap();
        assert_eq!(
            MeshKey::parse(&format!("  {}\n", key.to_text())).unwrap(),
            key
        );
        assert_eq!(format!("{key:?}"), "MeshKey(***)");
        assert!(MeshKey::parse("ambk1-00").is_err());
        assert!(MeshKey::parse("hello").is_err());
    }

    #[test]
    fn a_key_being_written_is_never_read_half_written() {
        let dir = tempfile::tempdir().unwrap();
        for i in 0..50 {
            let path = dir.path().join(format!("k{i}"));
            let reader = {
                let path = path.clone();
                std::thread::spawn(move || {
                    loop {
                        match MeshKey::read_file(&path, false) {
                            Ok(k) => return k,
                            Err(KeyError::Read { source, .. })
                                if source.kind() == std::io::ErrorKind::NotFound =>
                            {
                                std::thread::yield_now()
                            }
                            Err(e) => panic!("read a key being written: {e}"),
                        }
                    }
                })
            };
            let key = MeshKey::generate().unwrap();
            key.write_new_file(&path).unwrap();
            assert_eq!(reader.join().unwrap(), key);
            // A second writer finds the name taken and leaves the key alone.
            let other = MeshKey::generate().unwrap();
            assert!(matches!(
                other.write_new_file(&path),
                Err(KeyError::Write { source, .. }) if source.kind() == std::io::ErrorKind::AlreadyExists
            ));
            assert_eq!(MeshKey::read_file(&path, false).unwrap(), key);
        }
        // No temporary file is left behind.
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 50);
    }

    #[test]
    fn key_file_permissions() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k");
        let key = MeshKey::generate().unwrap();
        key.write_new_file(&path).unwrap();
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(MeshKey::read_file(&path, false).unwrap(), key);
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        let err = MeshKey::read_file(&path, false).unwrap_err().to_string();
        assert!(err.contains("chmod 600"), "{err}");
        assert!(!err.contains(&key.to_text()));
        assert_eq!(MeshKey::read_file(&path, true).unwrap(), key);
    }
}
