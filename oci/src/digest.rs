//! SHA-256 content digests (`sha256:<64 hex>`): parsing, hashing and verification.

use std::fmt;
use std::str::FromStr;

use sha2::{Digest as _, Sha256};

/// Errors from parsing or checking a digest.
#[derive(Debug, thiserror::Error)]
pub enum DigestError {
    /// The string is not `algorithm:hex`.
    #[error("malformed digest {0:?} (expected sha256:<64 lowercase hex digits>)")]
    Malformed(String),
    /// An algorithm other than sha256.
    #[error("unsupported digest algorithm in {0:?} (only sha256 is supported)")]
    Unsupported(String),
    /// Content does not hash to the expected digest.
    #[error("digest mismatch: expected {expected}, content hashes to {actual}")]
    Mismatch {
        /// The digest the content was supposed to have.
        expected: Digest,
        /// The digest the content actually has.
        actual: Digest,
    },
}

/// A sha256 content digest.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Digest {
    hex: String,
}

impl Digest {
    /// The digest of `bytes`.
    pub fn of(bytes: &[u8]) -> Digest {
        Digest::from_hasher(Sha256::new_with_prefix(bytes))
    }

    /// The digest a finished hasher computed.
    pub fn from_hasher(hasher: Sha256) -> Digest {
        Digest {
            hex: hex::encode(hasher.finalize()),
        }
    }

    /// Builds a digest from 64 lowercase hex digits.
    pub fn from_hex(hex: &str) -> Result<Digest, DigestError> {
        let ok = hex.len() == 64
            && hex
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        if !ok {
            return Err(DigestError::Malformed(format!("sha256:{hex}")));
        }
        Ok(Digest {
            hex: hex.to_string(),
        })
    }

    /// The 64 hex digits.
    pub fn hex(&self) -> &str {
        &self.hex
    }

    /// The first 12 hex digits, as `docker images` shows them.
    pub fn short(&self) -> &str {
        &self.hex[..12]
    }

    /// Checks that `bytes` hash to this digest.
    pub fn verify(&self, bytes: &[u8]) -> Result<(), DigestError> {
        self.check(Digest::of(bytes))
    }

    /// Checks that `actual` equals this digest.
    pub fn check(&self, actual: Digest) -> Result<(), DigestError> {
        if actual == *self {
            Ok(())
        } else {
            Err(DigestError::Mismatch {
                expected: self.clone(),
                actual,
            })
        }
    }
}

impl FromStr for Digest {
    type Err = DigestError;

    fn from_str(s: &str) -> Result<Digest, DigestError> {
        let (alg, hex) = s
            .split_once(':')
            .ok_or_else(|| DigestError::Malformed(s.to_string()))?;
        if alg != "sha256" {
            return Err(DigestError::Unsupported(s.to_string()));
        }
        Digest::from_hex(hex).map_err(|_| DigestError::Malformed(s.to_string()))
    }
}

impl TryFrom<String> for Digest {
    type Error = DigestError;

    fn try_from(s: String) -> Result<Digest, DigestError> {
        s.parse()
    }
}

impl From<Digest> for String {
    fn from(d: Digest) -> String {
        d.to_string()
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", self.hex)
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_verifies() {
        let d = Digest::of(b"hello");
        let parsed: Digest = d.to_string().parse().unwrap();
        assert_eq!(parsed, d);
        assert!(d.verify(b"hello").is_ok());
        assert!(matches!(
            d.verify(b"hellO"),
            Err(DigestError::Mismatch { .. })
        ));
        assert!("sha512:00".parse::<Digest>().is_err());
        assert!("sha256:ABC".parse::<Digest>().is_err());
    }
}
