//! Image references with docker's defaults (`alpine` is `docker.io/library/alpine:latest`),
//! plus the local sources `oci-layout:PATH[:TAG]`, `oci-archive:PATH`, `docker-archive:PATH`.

use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use crate::digest::Digest;

/// Docker Hub's canonical registry name.
pub const DOCKER_HUB: &str = "docker.io";
/// The tag used when a reference names neither tag nor digest.
pub const DEFAULT_TAG: &str = "latest";

/// Why a reference could not be parsed.
#[derive(Debug, thiserror::Error)]
pub enum ReferenceError {
    /// Anything wrong with the reference string, with the reason.
    #[error("invalid image reference {reference:?}: {reason}")]
    Invalid {
        /// The reference as given.
        reference: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A local path that cannot be made absolute.
    #[error("invalid image reference {0:?}: cannot resolve path: {1}")]
    Path(String, std::io::Error),
}

/// A reference to an image in a registry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RegistryRef {
    /// Registry host, with `:port` when given (`docker.io` for Docker Hub).
    pub registry: String,
    /// Repository path (`library/alpine`).
    pub repository: String,
    /// Tag, when given or defaulted.
    pub tag: Option<String>,
    /// Manifest digest, when pinned with `@sha256:...`.
    pub digest: Option<Digest>,
}

/// Any image source sm can read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ImageRef {
    /// An image in a registry.
    Registry(RegistryRef),
    /// An OCI image layout directory and an optional tag (`org.opencontainers.image.ref.name`).
    OciLayout {
        /// The layout directory (absolute).
        path: PathBuf,
        /// The tag to select; without it the layout must hold exactly one manifest.
        tag: Option<String>,
    },
    /// A tar archive of an OCI image layout.
    OciArchive(PathBuf),
    /// A `docker save` archive.
    DockerArchive(PathBuf),
}

impl ImageRef {
    /// Parses a registry reference or a transport-prefixed local source.
    pub fn parse(s: &str) -> Result<ImageRef, ReferenceError> {
        if let Some(rest) = s.strip_prefix("oci-layout:") {
            let (path, tag) = match rest.rsplit_once(':') {
                Some((p, t)) if !t.contains('/') && !p.is_empty() => (p, Some(t)),
                _ => (rest, None),
            };
            if let Some(t) = tag {
                check_tag(s, t)?;
            }
            return Ok(ImageRef::OciLayout {
                path: absolute(s, path)?,
                tag: tag.map(str::to_string),
            });
        }
        if let Some(rest) = s.strip_prefix("oci-archive:") {
            return Ok(ImageRef::OciArchive(absolute(s, rest)?));
        }
        if let Some(rest) = s.strip_prefix("docker-archive:") {
            return Ok(ImageRef::DockerArchive(absolute(s, rest)?));
        }
        let rest = s.strip_prefix("docker://").unwrap_or(s);
        RegistryRef::parse_named(s, rest).map(ImageRef::Registry)
    }

    /// The key this image is recorded under in the cache's refs index.
    pub fn key(&self) -> String {
        self.to_string()
    }
}

impl fmt::Display for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ImageRef::Registry(r) => r.fmt(f),
            ImageRef::OciLayout { path, tag: Some(t) } => {
                write!(f, "oci-layout:{}:{t}", path.display())
            }
            ImageRef::OciLayout { path, tag: None } => write!(f, "oci-layout:{}", path.display()),
            ImageRef::OciArchive(p) => write!(f, "oci-archive:{}", p.display()),
            ImageRef::DockerArchive(p) => write!(f, "docker-archive:{}", p.display()),
        }
    }
}

impl RegistryRef {
    /// Parses `[host[:port]/]path[:tag][@sha256:hex]` with docker's defaults.
    pub fn parse(s: &str) -> Result<RegistryRef, ReferenceError> {
        RegistryRef::parse_named(s, s)
    }

    fn parse_named(orig: &str, s: &str) -> Result<RegistryRef, ReferenceError> {
        let bad = |reason| ReferenceError::Invalid {
            reference: orig.to_string(),
            reason,
        };
        if s.is_empty() {
            return Err(bad("empty reference"));
        }
        let (name_tag, digest) = match s.split_once('@') {
            Some((n, d)) => (
                n,
                Some(
                    d.parse::<Digest>()
                        .map_err(|_| bad("digest must be sha256:<64 lowercase hex digits>"))?,
                ),
            ),
            None => (s, None),
        };
        let slash = name_tag.rfind('/').map_or(0, |i| i + 1);
        let (name, tag) = match name_tag[slash..].rfind(':') {
            Some(i) => (&name_tag[..slash + i], Some(&name_tag[slash + i + 1..])),
            None => (name_tag, None),
        };
        if let Some(t) = tag {
            check_tag(orig, t)?;
        }
        let (registry, mut repository) = match name.split_once('/') {
            Some((first, rest))
                if first.contains(['.', ':'])
                    || first == "localhost"
                    || first.chars().any(|c| c.is_ascii_uppercase()) =>
            {
                (first.to_string(), rest.to_string())
            }
            _ => (DOCKER_HUB.to_string(), name.to_string()),
        };
        check_registry(orig, &registry)?;
        let registry = if registry == "index.docker.io" || registry == "registry-1.docker.io" {
            DOCKER_HUB.to_string()
        } else {
            registry
        };
        if repository.chars().any(|c| c.is_ascii_uppercase()) {
            return Err(bad("repository name must be lowercase"));
        }
        if repository.is_empty() || !repository.split('/').all(valid_path_component) {
            return Err(bad("repository name must be lowercase letters, digits and separators (. _ __ -) between path components"));
        }
        if registry == DOCKER_HUB && !repository.contains('/') {
            repository = format!("library/{repository}");
        }
        if registry.len() + 1 + repository.len() > 255 {
            return Err(bad("repository name longer than 255 characters"));
        }
        let tag = match (tag, &digest) {
            (Some(t), _) => Some(t.to_string()),
            (None, None) => Some(DEFAULT_TAG.to_string()),
            (None, Some(_)) => None,
        };
        Ok(RegistryRef {
            registry,
            repository,
            tag,
            digest,
        })
    }

    /// True when the registry is on a loopback address (plain HTTP is then allowed).
    pub fn is_loopback(&self) -> bool {
        let host = match self.registry.rsplit_once(':') {
            Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) => h,
            _ => &self.registry,
        };
        let host = host.trim_start_matches('[').trim_end_matches(']');
        host == "localhost" || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
    }

    /// The same repository pinned to `digest`.
    pub fn with_digest(&self, digest: Digest) -> RegistryRef {
        RegistryRef {
            digest: Some(digest),
            ..self.clone()
        }
    }

    /// This reference as an `oci-client` reference.
    pub fn to_oci(&self) -> oci_client::Reference {
        match (&self.tag, &self.digest) {
            (_, Some(d)) => oci_client::Reference::with_digest(
                self.registry.clone(),
                self.repository.clone(),
                d.to_string(),
            ),
            (Some(t), None) => oci_client::Reference::with_tag(
                self.registry.clone(),
                self.repository.clone(),
                t.clone(),
            ),
            (None, None) => oci_client::Reference::with_tag(
                self.registry.clone(),
                self.repository.clone(),
                DEFAULT_TAG.into(),
            ),
        }
    }
}

impl fmt::Display for RegistryRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

fn check_tag(orig: &str, tag: &str) -> Result<(), ReferenceError> {
    let ok = !tag.is_empty()
        && tag.len() <= 128
        && tag.bytes().enumerate().all(|(i, b)| {
            b.is_ascii_alphanumeric() || b == b'_' || (i > 0 && (b == b'.' || b == b'-'))
        });
    if ok {
        Ok(())
    } else {
        Err(ReferenceError::Invalid {
            reference: orig.to_string(),
            reason: "tag must be 1-128 of [A-Za-z0-9_.-], not starting with . or -",
        })
    }
}

fn check_registry(orig: &str, registry: &str) -> Result<(), ReferenceError> {
    let (host, port) = if let Some(end) = registry.find(']').filter(|_| registry.starts_with('[')) {
        let rest = &registry[end + 1..];
        (
            &registry[..=end],
            if rest.is_empty() {
                None
            } else {
                rest.strip_prefix(':').or(Some(""))
            },
        )
    } else {
        match registry.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (registry, None),
        }
    };
    let port_ok = port.is_none_or(|p| p.parse::<u16>().is_ok_and(|n| n > 0));
    let host_ok = if host.starts_with('[') {
        host[1..host.len() - 1]
            .parse::<std::net::Ipv6Addr>()
            .is_ok()
    } else {
        !host.is_empty()
            && host.split('.').all(|l| {
                !l.is_empty()
                    && !l.starts_with('-')
                    && !l.ends_with('-')
                    && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            })
    };
    if port_ok && host_ok {
        Ok(())
    } else {
        Err(ReferenceError::Invalid {
            reference: orig.to_string(),
            reason: "registry must be a host name or address with an optional :port",
        })
    }
}

/// One path component: `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*`.
fn valid_path_component(c: &str) -> bool {
    let b = c.as_bytes();
    if b.is_empty() || !is_alnum(b[0]) || !is_alnum(b[b.len() - 1]) {
        return false;
    }
    let mut i = 0;
    while i < b.len() {
        if is_alnum(b[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < b.len() && !is_alnum(b[i]) {
            i += 1;
        }
        let sep = &c[start..i];
        if !(sep == "." || sep == "_" || sep == "__" || sep.bytes().all(|x| x == b'-')) {
            return false;
        }
    }
    true
}

fn is_alnum(b: u8) -> bool {
    b.is_ascii_lowercase() || b.is_ascii_digit()
}

fn absolute(orig: &str, p: &str) -> Result<PathBuf, ReferenceError> {
    if p.is_empty() {
        return Err(ReferenceError::Invalid {
            reference: orig.to_string(),
            reason: "missing path",
        });
    }
    std::path::absolute(Path::new(p)).map_err(|e| ReferenceError::Path(orig.to_string(), e))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reg(s: &str) -> RegistryRef {
        match ImageRef::parse(s).unwrap() {
            ImageRef::Registry(r) => r,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn docker_defaults() {
        assert_eq!(reg("alpine").to_string(), "docker.io/library/alpine:latest");
        assert_eq!(reg("user/app:1.0").to_string(), "docker.io/user/app:1.0");
        assert_eq!(
            reg("docker.io/alpine").to_string(),
            "docker.io/library/alpine:latest"
        );
        assert_eq!(
            reg("index.docker.io/library/alpine:3").to_string(),
            "docker.io/library/alpine:3"
        );
        assert_eq!(reg("ghcr.io/a/b/c").to_string(), "ghcr.io/a/b/c:latest");
        assert_eq!(reg("localhost/x").registry, "localhost");
        let r = reg("127.0.0.1:5000/img:v1");
        assert_eq!(
            (r.registry.as_str(), r.repository.as_str(), r.tag.as_deref()),
            ("127.0.0.1:5000", "img", Some("v1"))
        );
        assert!(r.is_loopback());
        assert!(!reg("quay.io/x").is_loopback());
        assert!(reg("localhost:5000/x").is_loopback());
        let d = format!("sha256:{}", "a".repeat(64));
        let r = reg(&format!("alpine@{d}"));
        assert_eq!(r.tag, None);
        assert_eq!(r.digest.unwrap().to_string(), d);
        let r = reg(&format!("alpine:3@{d}"));
        assert_eq!(r.tag.as_deref(), Some("3"));
        assert_eq!(reg("a__b/c-d.e_f---g").repository, "a__b/c-d.e_f---g");
    }

    #[test]
    fn rejects_bad_references() {
        for bad in [
            "",
            "Alpine",
            "docker.io/Library/x",
            "alpine:",
            "alpine:-x",
            "a//b",
            "a/",
            "/a",
            "a..b",
            "a@sha256:xyz",
            "alpine@md5:00",
            "host:99999/x",
            "-host.com/x",
            "a:b:c",
            "x_/y",
        ] {
            let e = ImageRef::parse(bad).expect_err(bad).to_string();
            assert!(e.starts_with("invalid image reference"), "{bad}: {e}");
        }
        assert!(ImageRef::parse("Alpine")
            .unwrap_err()
            .to_string()
            .contains("lowercase"));
    }

    #[test]
    fn local_sources() {
        assert_eq!(
            ImageRef::parse("oci-layout:/tmp/l:v1").unwrap(),
            ImageRef::OciLayout {
                path: "/tmp/l".into(),
                tag: Some("v1".into())
            }
        );
        assert_eq!(
            ImageRef::parse("oci-layout:/tmp/l").unwrap(),
            ImageRef::OciLayout {
                path: "/tmp/l".into(),
                tag: None
            }
        );
        assert_eq!(
            ImageRef::parse("oci-archive:/a.tar").unwrap(),
            ImageRef::OciArchive("/a.tar".into())
        );
        assert_eq!(
            ImageRef::parse("docker-archive:/a.tar").unwrap(),
            ImageRef::DockerArchive("/a.tar".into())
        );
        assert!(ImageRef::parse("oci-archive:").is_err());
    }
}
