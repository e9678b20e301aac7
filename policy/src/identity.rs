//! Who is calling: the identity handed to a decision, and the SPIFFE ID patterns that select it.

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;

/// How the gateway learned who the caller is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum IdentitySource {
    /// A SPIFFE ID from the caller's verified client certificate.
    Mtls,
    /// The Pod that owns the caller's source IP, from the Kubernetes API.
    Kubernetes,
    /// The `identity.static` table of the gateway config (workloads outside Kubernetes).
    Static,
    /// Nothing is known: only `cidr` selectors can match.
    None,
}

impl IdentitySource {
    pub fn as_str(self) -> &'static str {
        match self {
            IdentitySource::Mtls => "mtls",
            IdentitySource::Kubernetes => "kubernetes",
            IdentitySource::Static => "static",
            IdentitySource::None => "none",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "mtls" => Some(IdentitySource::Mtls),
            "kubernetes" => Some(IdentitySource::Kubernetes),
            "static" => Some(IdentitySource::Static),
            _ => None,
        }
    }
}

impl fmt::Display for IdentitySource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The caller of one connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    pub source: IdentitySource,
    /// The caller's source address; `cidr` selectors match it.
    pub address: Option<IpAddr>,
    pub spiffe: Option<String>,
    pub namespace: Option<String>,
    pub service_account: Option<String>,
    /// Pod labels; only identities from the Pod cache carry them.
    pub labels: BTreeMap<String, String>,
    /// The Pod name, for the audit line.
    pub pod: Option<String>,
}

impl Identity {
    /// A caller nobody vouches for.
    pub fn anonymous(address: Option<IpAddr>) -> Self {
        Identity {
            source: IdentitySource::None,
            address,
            spiffe: None,
            namespace: None,
            service_account: None,
            labels: BTreeMap::new(),
            pod: None,
        }
    }

    /// A caller known by SPIFFE ID. An ID of the form `spiffe://TD/ns/NS/sa/SA` also gives the
    /// namespace and the service account, so namespace selectors work for it too.
    pub fn from_spiffe(source: IdentitySource, spiffe: &str, address: Option<IpAddr>) -> Self {
        let (namespace, service_account) = match namespace_and_service_account(spiffe) {
            Some((ns, sa)) => (Some(ns.to_owned()), Some(sa.to_owned())),
            None => (None, None),
        };
        Identity {
            source,
            address,
            spiffe: Some(spiffe.to_owned()),
            namespace,
            service_account,
            labels: BTreeMap::new(),
            pod: None,
        }
    }
}

fn namespace_and_service_account(spiffe: &str) -> Option<(&str, &str)> {
    let rest = spiffe.strip_prefix("spiffe://")?;
    let (_, path) = rest.split_once('/')?;
    let mut seg = path.split('/');
    match (seg.next(), seg.next(), seg.next(), seg.next(), seg.next()) {
        (Some("ns"), Some(ns), Some("sa"), Some(sa), None) if !ns.is_empty() && !sa.is_empty() => {
            Some((ns, sa))
        }
        _ => None,
    }
}

/// A `spiffe` selector: an exact SPIFFE ID, or one in which `*` stands for one whole path segment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SpiffePattern {
    text: String,
    /// Prefix `spiffe://td` then one entry per path segment; `None` is a `*` segment.
    segments: Vec<Option<String>>,
    trust_domain: String,
}

impl SpiffePattern {
    pub fn parse(input: &str) -> Result<Self, String> {
        let rest = input.strip_prefix("spiffe://").ok_or_else(|| {
            format!("{input:?} is not a SPIFFE ID: it must start with 'spiffe://'")
        })?;
        let (td, path) = match rest.split_once('/') {
            Some((td, path)) => (td, Some(path)),
            None => (rest, None),
        };
        if td.is_empty()
            || !td.bytes().all(|b| {
                b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'_' | b'-')
            })
        {
            return Err(format!(
                "invalid trust domain {td:?} in {input:?}: use lower-case letters, digits, '.', '_' and '-'"
            ));
        }
        let mut segments = Vec::new();
        if let Some(path) = path {
            for seg in path.split('/') {
                if seg == "*" {
                    segments.push(None);
                    continue;
                }
                let ok = !seg.is_empty()
                    && seg != "."
                    && seg != ".."
                    && seg
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
                if !ok {
                    return Err(format!(
                        "invalid path segment {seg:?} in {input:?}: segments are non-empty, not '.' or '..', of letters, digits, '.', '_', '-', or a whole '*'"
                    ));
                }
                segments.push(Some(seg.to_owned()));
            }
        }
        Ok(SpiffePattern {
            text: input.to_owned(),
            segments,
            trust_domain: td.to_owned(),
        })
    }

    /// The exact ID this pattern matches, when it has no `*`.
    pub fn exact(&self) -> Option<&str> {
        self.segments
            .iter()
            .all(Option::is_some)
            .then_some(self.text.as_str())
    }

    pub fn matches(&self, id: &str) -> bool {
        if let Some(exact) = self.exact() {
            return exact == id;
        }
        let Some(rest) = id.strip_prefix("spiffe://") else {
            return false;
        };
        let Some((td, path)) = rest.split_once('/') else {
            return false;
        };
        if td != self.trust_domain {
            return false;
        }
        let mut segs = path.split('/');
        for want in &self.segments {
            match (want, segs.next()) {
                (_, None) => return false,
                (None, Some(got)) if !got.is_empty() => {}
                (None, Some(_)) => return false,
                (Some(w), Some(got)) if w == got => {}
                _ => return false,
            }
        }
        segs.next().is_none()
    }
}

impl fmt::Display for SpiffePattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spiffe_ids_of_the_ns_sa_form_give_namespace_and_service_account() {
        let id = Identity::from_spiffe(
            IdentitySource::Mtls,
            "spiffe://td/ns/payments/sa/checkout",
            None,
        );
        assert_eq!(id.namespace.as_deref(), Some("payments"));
        assert_eq!(id.service_account.as_deref(), Some("checkout"));
        let other = Identity::from_spiffe(IdentitySource::Mtls, "spiffe://td/vm/batch", None);
        assert_eq!(other.namespace, None);
        let longer = Identity::from_spiffe(IdentitySource::Mtls, "spiffe://td/ns/a/sa/b/c", None);
        assert_eq!(longer.namespace, None);
    }

    #[test]
    fn star_stands_for_exactly_one_whole_segment() {
        let p = SpiffePattern::parse("spiffe://td/ns/*/sa/default").expect("valid");
        assert!(p.matches("spiffe://td/ns/a/sa/default"));
        assert!(!p.matches("spiffe://td/ns/a/b/sa/default"));
        assert!(!p.matches("spiffe://td/ns//sa/default"));
        assert!(!p.matches("spiffe://other/ns/a/sa/default"));
        assert!(!p.matches("spiffe://td/ns/a/sa/default/x"));
    }

    #[test]
    fn malformed_patterns_are_refused() {
        for s in [
            "spiffe://TD/x",
            "SPIFFE://td/x",
            "spiffe://td/a//b",
            "spiffe://td/a/../b",
            "spiffe://td/a*",
            "spiffe://td/%2f",
            "spiffe:///x",
            "http://td/x",
        ] {
            assert!(SpiffePattern::parse(s).is_err(), "{s:?} must be refused");
        }
    }
}
