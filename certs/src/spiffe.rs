//! SPIFFE IDs and their extraction from X.509-SVIDs.
//!
//! A certificate yields an identity only when it follows the X.509-SVID rules: exactly one URI
//! SAN, whose scheme is `spiffe` (lower case); a leaf that is not a CA and may not sign
//! certificates; a well-formed SPIFFE ID. A DNS or e-mail SAN is never read as a SPIFFE ID, however
//! it is spelled. Anything else is not an identity, and says why.

use std::fmt;
use std::str::FromStr;

use x509_parser::extensions::{GeneralName, ParsedExtension};
use x509_parser::prelude::{FromDer, X509Certificate};

/// Longest SPIFFE ID accepted, in bytes (SPIFFE ID specification, section 2.3).
pub const MAX_ID_LEN: usize = 2048;

/// A valid SPIFFE ID: `spiffe://trust-domain/path`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct SpiffeId {
    id: String,
    td_len: usize,
}

/// Why a string is not a SPIFFE ID.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SpiffeIdError {
    #[error("scheme must be 'spiffe://' in lower case")]
    Scheme,
    #[error("longer than {MAX_ID_LEN} bytes")]
    TooLong,
    #[error("empty trust domain")]
    EmptyTrustDomain,
    #[error("trust domain may contain only a-z, 0-9, '.', '_' and '-' (no port, no userinfo, no upper case)")]
    TrustDomainChars,
    #[error("query, fragment and percent-encoding are not allowed")]
    Forbidden,
    #[error("empty path segment (or a trailing '/')")]
    EmptySegment,
    #[error("'.' and '..' path segments are not allowed")]
    DotSegment,
    #[error("path segments may contain only letters, digits, '.', '_' and '-'")]
    SegmentChars,
}

impl FromStr for SpiffeId {
    type Err = SpiffeIdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.len() > MAX_ID_LEN {
            return Err(SpiffeIdError::TooLong);
        }
        let rest = s.strip_prefix("spiffe://").ok_or(SpiffeIdError::Scheme)?;
        if rest.contains(['?', '#', '%']) {
            return Err(SpiffeIdError::Forbidden);
        }
        let (td, path) = match rest.find('/') {
            Some(i) => (&rest[..i], Some(&rest[i + 1..])),
            None => (rest, None),
        };
        if td.is_empty() {
            return Err(SpiffeIdError::EmptyTrustDomain);
        }
        if !td.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'_' | b'-')
        }) {
            return Err(SpiffeIdError::TrustDomainChars);
        }
        if let Some(path) = path {
            for seg in path.split('/') {
                match seg {
                    "" => return Err(SpiffeIdError::EmptySegment),
                    "." | ".." => return Err(SpiffeIdError::DotSegment),
                    _ if !seg
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-')) =>
                    {
                        return Err(SpiffeIdError::SegmentChars)
                    }
                    _ => {}
                }
            }
        }
        Ok(SpiffeId {
            id: s.to_owned(),
            td_len: td.len(),
        })
    }
}

impl SpiffeId {
    pub fn as_str(&self) -> &str {
        &self.id
    }

    pub fn trust_domain(&self) -> &str {
        &self.id["spiffe://".len().."spiffe://".len() + self.td_len]
    }
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.id)
    }
}

/// Why a certificate carries no identity.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum NotAnIdentity {
    #[error("certificate does not parse: {0}")]
    Unparsable(String),
    #[error("no URI SAN")]
    NoUriSan,
    #[error("{0} URI SANs; an X.509-SVID has exactly one")]
    SeveralUriSans(usize),
    #[error("the leaf is a CA")]
    CaLeaf,
    #[error("the leaf may sign certificates (keyCertSign)")]
    CertSigner,
    #[error("invalid SPIFFE ID: {0}")]
    BadId(#[from] SpiffeIdError),
}

/// The SPIFFE ID of a leaf certificate (DER), following the X.509-SVID rules.
pub fn spiffe_id_of(leaf_der: &[u8]) -> Result<SpiffeId, NotAnIdentity> {
    let (_, cert) = X509Certificate::from_der(leaf_der)
        .map_err(|e| NotAnIdentity::Unparsable(e.to_string()))?;
    let mut uris = Vec::new();
    for ext in cert.extensions() {
        match ext.parsed_extension() {
            ParsedExtension::SubjectAlternativeName(san) => {
                for name in &san.general_names {
                    if let GeneralName::URI(uri) = name {
                        uris.push(*uri);
                    }
                }
            }
            ParsedExtension::BasicConstraints(bc) if bc.ca => return Err(NotAnIdentity::CaLeaf),
            ParsedExtension::KeyUsage(ku) if ku.key_cert_sign() => {
                return Err(NotAnIdentity::CertSigner)
            }
            _ => {}
        }
    }
    match uris.as_slice() {
        [] => Err(NotAnIdentity::NoUriSan),
        [uri] => Ok(uri.parse::<SpiffeId>()?),
        many => Err(NotAnIdentity::SeveralUriSans(many.len())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn valid_ids_parse_and_keep_their_trust_domain() {
        let id: SpiffeId = "spiffe://cluster.local/ns/payments/sa/checkout"
            .parse()
            .expect("valid");
        assert_eq!(id.trust_domain(), "cluster.local");
        let bare: SpiffeId = "spiffe://corp.example".parse().expect("valid");
        assert_eq!(bare.trust_domain(), "corp.example");
    }

    #[test]
    fn malformed_ids_are_refused_with_their_reason() {
        use SpiffeIdError::*;
        for (s, want) in [
            ("SPIFFE://td/x", Scheme),
            ("spiffe:/td/x", Scheme),
            ("https://td/x", Scheme),
            ("spiffe:///x", EmptyTrustDomain),
            ("spiffe://TD/x", TrustDomainChars),
            ("spiffe://td:443/x", TrustDomainChars),
            ("spiffe://user@td/x", TrustDomainChars),
            ("spiffe://td/a/../b", DotSegment),
            ("spiffe://td/./b", DotSegment),
            ("spiffe://td/a%2fb", Forbidden),
            ("spiffe://td/a?b", Forbidden),
            ("spiffe://td/a#b", Forbidden),
            ("spiffe://td/a//b", EmptySegment),
            ("spiffe://td/a/", EmptySegment),
            ("spiffe://td/a b", SegmentChars),
        ] {
            assert_eq!(s.parse::<SpiffeId>(), Err(want), "{s}");
        }
        let long = format!("spiffe://td/{}", "a".repeat(MAX_ID_LEN));
        assert_eq!(long.parse::<SpiffeId>(), Err(TooLong));
    }
}
