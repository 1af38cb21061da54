//! The etcd registry's settings: `--registry etcd://H:P[,H:P]` and its `--registry-*` flags,
//! or the file's `[registry]` table (flags win, key by key). Certificates, keys and the
//! password are read here, as the configuration is checked; secrets only from files that no
//! one else can read, or from `AMBASSADOR_REGISTRY_PASSWORD`, and never logged.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::cli::Common;
use crate::discovery::etcd::{RegistryConfig, RegistryTls, Secret, parse_endpoints};
use crate::error::Failure;
use crate::secret_file::{SecretFileError, read_secret};

/// The variable that holds the registry password itself (instead of a file).
pub const PASSWORD_ENV: &str = "AMBASSADOR_REGISTRY_PASSWORD";

/// The `[registry]` table.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FileRegistry {
    /// The etcd endpoints, each `etcd://HOST:PORT`.
    pub endpoints: Vec<String>,
    /// CA certificate (PEM) etcd's certificate chains to: TLS on.
    pub ca_file: Option<PathBuf>,
    /// Client certificate (PEM), when etcd asks for one.
    pub cert_file: Option<PathBuf>,
    /// The client certificate's key (PEM, mode 0600).
    pub key_file: Option<PathBuf>,
    /// User name, when etcd has authentication on.
    pub user: Option<String>,
    /// File holding the user's password (mode 0600).
    pub password_file: Option<PathBuf>,
}

/// The endpoints form, for errors.
const ENDPOINTS_FORM: &str = "etcd://HOST:PORT[,HOST:PORT...] (e.g. etcd://10.0.0.5:2379)";

/// The registry that the flags and the file's table give, checked and read; `None` without
/// endpoints (then no other registry setting may be given).
pub(super) fn registry_config(
    common: &Common,
    file: Option<&FileRegistry>,
) -> Result<Option<RegistryConfig>, Failure> {
    let empty = FileRegistry::default();
    let file = file.unwrap_or(&empty);
    let endpoints = match &common.registry {
        Some(text) => parse_endpoints(text).ok_or_else(|| {
            Failure::usage(format!(
                "bad --registry {text:?}: expected {ENDPOINTS_FORM}"
            ))
        })?,
        None => file_endpoints(&file.endpoints)?,
    };
    let pick = |flag: &Option<PathBuf>, key: &Option<PathBuf>| flag.clone().or(key.clone());
    let ca = pick(&common.registry_ca_file, &file.ca_file);
    let cert = pick(&common.registry_cert_file, &file.cert_file);
    let key = pick(&common.registry_key_file, &file.key_file);
    let user = common.registry_user.clone().or(file.user.clone());
    let password_file = pick(&common.registry_password_file, &file.password_file);
    let others = ca.is_some() || cert.is_some() || key.is_some() || user.is_some();
    if endpoints.is_empty() {
        if others || password_file.is_some() {
            return Err(Failure::usage(format!(
                "the registry's TLS or user settings need its endpoints: give --registry {ENDPOINTS_FORM} (or [registry] endpoints)"
            )));
        }
        return Ok(None);
    }
    let insecure = common.insecure_key_permissions;
    Ok(Some(RegistryConfig {
        endpoints,
        tls: tls(ca.as_deref(), cert.as_deref(), key.as_deref(), insecure)?,
        user: login(user, password_file.as_deref(), insecure)?,
    }))
}

/// The file's `endpoints`, each `etcd://HOST:PORT`.
fn file_endpoints(list: &[String]) -> Result<Vec<String>, Failure> {
    let mut out = Vec::new();
    for e in list {
        out.extend(parse_endpoints(e).ok_or_else(|| {
            Failure::usage(format!(
                "[registry] endpoints: bad {e:?}: expected {ENDPOINTS_FORM}"
            ))
        })?);
    }
    Ok(out)
}

/// TLS settings from the files given (none: plain HTTP/2).
fn tls(
    ca: Option<&Path>,
    cert: Option<&Path>,
    key: Option<&Path>,
    insecure: bool,
) -> Result<Option<RegistryTls>, Failure> {
    let read = |p: &Path| {
        std::fs::read_to_string(p)
            .map_err(|e| Failure::usage(format!("cannot read {}: {e}", p.display())))
    };
    let identity = match (cert, key) {
        (None, None) => None,
        (Some(c), Some(k)) => Some((read(c)?, Secret(secret(k, insecure)?))),
        _ => {
            return Err(Failure::usage(
                "a registry client certificate needs its key: give both --registry-cert-file and --registry-key-file (cert_file and key_file)",
            ));
        }
    };
    let ca = ca.map(read).transpose()?;
    if ca.is_none() && identity.is_none() {
        return Ok(None);
    }
    Ok(Some(RegistryTls { ca, identity }))
}

/// A secret file's text, refused when others can read it (unless `insecure`).
fn secret(path: &Path, insecure: bool) -> Result<String, Failure> {
    let shown = path.display();
    read_secret(path, insecure).map_err(|e| match e {
        SecretFileError::Read(e) => Failure::usage(format!("cannot read {shown}: {e}")),
        SecretFileError::Permissions(mode) => Failure::usage(format!(
            "{shown} is readable by others (mode {mode:o}): chmod 600 it, or give --insecure-key-permissions"
        )),
    })
}

/// The user and password: the password from its file, else from [`PASSWORD_ENV`].
fn login(
    user: Option<String>,
    password_file: Option<&Path>,
    insecure: bool,
) -> Result<Option<(String, Secret)>, Failure> {
    let password = match password_file {
        Some(p) => Some(
            secret(p, insecure)?
                .trim_end_matches(['\r', '\n'])
                .to_string(),
        ),
        None => std::env::var(PASSWORD_ENV).ok().filter(|p| !p.is_empty()),
    };
    match (user, password) {
        (None, None) => Ok(None),
        (Some(u), Some(p)) if !u.is_empty() && !p.is_empty() => Ok(Some((u, Secret(p)))),
        (Some(_), _) => Err(Failure::usage(format!(
            "the registry user needs a password: give --registry-password-file FILE (password_file) or {PASSWORD_ENV}"
        ))),
        (None, Some(_)) => Err(Failure::usage(
            "a registry password needs its user: give --registry-user NAME (user)",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_win_and_lone_settings_are_refused() {
        let file = FileRegistry {
            endpoints: vec!["etcd://10.0.0.5:2379".into()],
            ..FileRegistry::default()
        };
        let none = Common::default();
        let cfg = registry_config(&none, Some(&file)).unwrap().unwrap();
        assert_eq!(cfg.endpoints, ["10.0.0.5:2379"]);
        let flag = Common {
            registry: Some("etcd://127.0.0.1:2379,127.0.0.2:2379".into()),
            ..Common::default()
        };
        let cfg = registry_config(&flag, Some(&file)).unwrap().unwrap();
        assert_eq!(cfg.endpoints, ["127.0.0.1:2379", "127.0.0.2:2379"]);
        assert!(registry_config(&none, None).unwrap().is_none());
        let lone = FileRegistry {
            ca_file: Some("/nonexistent".into()),
            ..FileRegistry::default()
        };
        assert!(registry_config(&none, Some(&lone)).is_err());
        let bad = Common {
            registry: Some("http://h:1".into()),
            ..Common::default()
        };
        let e = registry_config(&bad, None).unwrap_err().to_string();
        assert!(
            e.starts_with("bad --registry \"http://h:1\": expected etcd://"),
            "{e}"
        );
    }

    #[test]
    fn a_password_file_must_be_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pw");
        std::fs::write(&path, "s3cret\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = login(Some("me".into()), Some(&path), false).unwrap_err();
        assert!(!e.to_string().contains("s3cret"));
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        let (user, pw) = login(Some("me".into()), Some(&path), false)
            .unwrap()
            .unwrap();
        assert_eq!((user.as_str(), pw.0.as_str()), ("me", "s3cret"));
        assert!(
            login(Some("me".into()), None, false).is_err() || std::env::var(PASSWORD_ENV).is_ok()
        );
    }
}
