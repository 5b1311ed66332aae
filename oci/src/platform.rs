//! Platforms (`os/arch[/variant]`) and choosing one entry of an image index.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::spec::{Descriptor, Index};

/// Errors from parsing a platform or selecting one.
#[derive(Debug, thiserror::Error)]
pub enum PlatformError {
    /// Not `os/arch[/variant]`.
    #[error("invalid platform {0:?} (expected os/arch[/variant], e.g. linux/amd64)")]
    Invalid(String),
    /// The index has no entry for the platform.
    #[error("no image for platform {wanted} (available: {available})")]
    NotFound {
        /// The requested platform.
        wanted: Platform,
        /// What the index offers.
        available: String,
    },
}

/// A target platform.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Platform {
    /// Operating system (`linux`).
    pub os: String,
    /// CPU architecture in GOARCH spelling (`amd64`, `arm64`).
    pub architecture: String,
    /// CPU variant (`v8`), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
}

impl Default for Platform {
    fn default() -> Platform {
        Platform {
            os: "linux".into(),
            architecture: "amd64".into(),
            variant: None,
        }
    }
}

impl FromStr for Platform {
    type Err = PlatformError;

    fn from_str(s: &str) -> Result<Platform, PlatformError> {
        let parts: Vec<&str> = s.split('/').collect();
        let ok = (2..=3).contains(&parts.len())
            && parts.iter().all(|p| {
                !p.is_empty()
                    && p.bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
            });
        if !ok {
            return Err(PlatformError::Invalid(s.to_string()));
        }
        Ok(Platform {
            os: parts[0].into(),
            architecture: parts[1].into(),
            variant: parts.get(2).map(|v| v.to_string()),
        })
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

impl Platform {
    /// Picks the index entry for this platform: os and architecture must match; a requested
    /// variant must match too, otherwise an entry without a variant (or arm64's v8) wins.
    pub fn select<'a>(&self, index: &'a Index) -> Result<&'a Descriptor, PlatformError> {
        let candidates = index.manifests.iter().filter(|d| {
            d.platform
                .as_ref()
                .is_some_and(|p| p.os == self.os && p.architecture == self.architecture)
        });
        let mut best: Option<(&Descriptor, u8)> = None;
        for d in candidates {
            let v = d.platform.as_ref().and_then(|p| p.variant.as_deref());
            let score = match (&self.variant, v) {
                (Some(want), Some(have)) if want == have => 3,
                (Some(_), _) => continue,
                (None, None) => 2,
                (None, Some("v8")) if self.architecture == "arm64" => 2,
                (None, Some(_)) => 1,
            };
            if best.is_none_or(|(_, s)| score > s) {
                best = Some((d, score));
            }
        }
        best.map(|(d, _)| d).ok_or_else(|| PlatformError::NotFound {
            wanted: self.clone(),
            available: index
                .manifests
                .iter()
                .filter_map(|d| d.platform.as_ref().map(|p| p.to_string()))
                .collect::<Vec<_>>()
                .join(", "),
        })
    }
}
