//! Registry credentials from docker's `config.json` (`$DOCKER_CONFIG/config.json` or
//! `~/.docker/config.json`, `auths.<host>.auth` = base64 of `user:password`).

use std::collections::HashMap;
use std::path::PathBuf;

use base64::Engine as _;
use serde::Deserialize;

/// Errors from reading docker credentials.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// The config file exists but cannot be read.
    #[error("cannot read {0}: {1}")]
    Read(PathBuf, std::io::Error),
    /// The config file is not valid JSON.
    #[error("malformed docker config {0}: {1}")]
    Json(PathBuf, serde_json::Error),
    /// An `auth` entry that is not base64 of `user:password`.
    #[error("malformed credentials for {host} in {path} (auth must be base64 of user:password)")]
    Entry {
        /// The config file.
        path: PathBuf,
        /// The registry entry.
        host: String,
    },
}

/// A user name and password for HTTP basic auth (or a token exchange).
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    /// User name.
    pub username: String,
    /// Password or token.
    pub password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Credentials({}, <redacted>)", self.username)
    }
}

#[derive(Deserialize)]
struct DockerConfig {
    #[serde(default)]
    auths: HashMap<String, AuthEntry>,
}

#[derive(Deserialize)]
struct AuthEntry {
    #[serde(default)]
    auth: Option<String>,
}

/// The docker config file in effect.
pub fn config_path() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("DOCKER_CONFIG") {
        return Some(PathBuf::from(dir).join("config.json"));
    }
    std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".docker/config.json"))
}

/// Credentials for `registry` (host[:port]; `docker.io` also matches Docker Hub's legacy
/// keys), or `None` for anonymous access.
pub fn lookup(registry: &str) -> Result<Option<Credentials>, AuthError> {
    let Some(path) = config_path() else {
        return Ok(None);
    };
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(AuthError::Read(path, e)),
    };
    let cfg: DockerConfig =
        serde_json::from_slice(&bytes).map_err(|e| AuthError::Json(path.clone(), e))?;
    let wanted: &[&str] = if registry == "docker.io" {
        &["docker.io", "index.docker.io", "registry-1.docker.io"]
    } else {
        &[registry]
    };
    for (key, entry) in &cfg.auths {
        let host = key
            .trim_start_matches("https://")
            .trim_start_matches("http://");
        let host = host.split('/').next().unwrap_or(host);
        if !wanted.contains(&host) {
            continue;
        }
        let Some(auth) = entry.auth.as_deref().filter(|a| !a.is_empty()) else {
            continue;
        };
        let bad = || AuthError::Entry {
            path: path.clone(),
            host: key.clone(),
        };
        let raw = base64::engine::general_purpose::STANDARD
            .decode(auth.trim())
            .map_err(|_| bad())?;
        let text = String::from_utf8(raw).map_err(|_| bad())?;
        let (u, p) = text.split_once(':').ok_or_else(bad)?;
        return Ok(Some(Credentials {
            username: u.to_string(),
            password: p.to_string(),
        }));
    }
    Ok(None)
}
