//! Reason codes: the one enum from which status codes, `Proxy-Status` headers, metric labels and
//! audit lines are all derived.

use egress_policy::PolicyReason;

/// Why a connection ended the way it did. `as_str` is the wire name of the design.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Reason {
    AllowedByRule,
    DefaultAllow,
    BadRequest,
    DeniedByRule,
    NoMatchingRule,
    BlockedAddress,
    UnknownIdentity,
    HeaderTimeout,
    HeaderTooLarge,
    DnsFailure,
    UpstreamRefused,
    Overloaded,
    UpstreamTimeout,
}

impl Reason {
    pub const ALL: [Reason; 13] = [
        Reason::AllowedByRule,
        Reason::DefaultAllow,
        Reason::BadRequest,
        Reason::DeniedByRule,
        Reason::NoMatchingRule,
        Reason::BlockedAddress,
        Reason::UnknownIdentity,
        Reason::HeaderTimeout,
        Reason::HeaderTooLarge,
        Reason::DnsFailure,
        Reason::UpstreamRefused,
        Reason::Overloaded,
        Reason::UpstreamTimeout,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Reason::AllowedByRule => "allowed_by_rule",
            Reason::DefaultAllow => "default_allow",
            Reason::BadRequest => "bad_request",
            Reason::DeniedByRule => "denied_by_rule",
            Reason::NoMatchingRule => "no_matching_rule",
            Reason::BlockedAddress => "blocked_address",
            Reason::UnknownIdentity => "unknown_identity",
            Reason::HeaderTimeout => "header_timeout",
            Reason::HeaderTooLarge => "header_too_large",
            Reason::DnsFailure => "dns_failure",
            Reason::UpstreamRefused => "upstream_refused",
            Reason::Overloaded => "overloaded",
            Reason::UpstreamTimeout => "upstream_timeout",
        }
    }

    /// The HTTP status a `connect` listener answers with.
    pub fn status(self) -> (u16, &'static str) {
        match self {
            Reason::AllowedByRule | Reason::DefaultAllow => (200, "Connection Established"),
            Reason::BadRequest => (400, "Bad Request"),
            Reason::DeniedByRule | Reason::NoMatchingRule | Reason::BlockedAddress => {
                (403, "Forbidden")
            }
            Reason::UnknownIdentity => (407, "Proxy Authentication Required"),
            Reason::HeaderTimeout => (408, "Request Timeout"),
            Reason::HeaderTooLarge => (431, "Request Header Fields Too Large"),
            Reason::DnsFailure | Reason::UpstreamRefused => (502, "Bad Gateway"),
            Reason::Overloaded => (503, "Service Unavailable"),
            Reason::UpstreamTimeout => (504, "Gateway Timeout"),
        }
    }

    pub fn index(self) -> usize {
        self as usize
    }
}

impl From<PolicyReason> for Reason {
    fn from(r: PolicyReason) -> Self {
        match r {
            PolicyReason::AllowedByRule => Reason::AllowedByRule,
            PolicyReason::DefaultAllow => Reason::DefaultAllow,
            PolicyReason::DeniedByRule => Reason::DeniedByRule,
            PolicyReason::NoMatchingRule => Reason::NoMatchingRule,
            PolicyReason::UnknownIdentity => Reason::UnknownIdentity,
        }
    }
}

/// A rejection: one reason code and the detail a person needs (a rule name, a range, an error).
#[derive(Clone, Debug)]
pub struct Reject {
    pub reason: Reason,
    pub details: String,
}

impl Reject {
    pub fn new(reason: Reason, details: impl Into<String>) -> Self {
        Reject {
            reason,
            details: details.into(),
        }
    }

    /// The full HTTP/1.1 response for a `connect` listener: status, `Proxy-Status`, one-line body.
    pub fn http_response(&self) -> Vec<u8> {
        let (code, phrase) = self.reason.status();
        let details = sanitize(&self.details);
        let body = format!("{} {}: {}\n", code, self.reason.as_str(), details);
        let mut out = format!(
            "HTTP/1.1 {code} {phrase}\r\nProxy-Status: egress-gateway; error={}; details=\"{}\"\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n",
            self.reason.as_str(),
            details,
            body.len()
        );
        if self.reason == Reason::UnknownIdentity {
            // RFC 9110 requires a challenge with 407; no scheme is offered, identity is not a password.
            out.push_str("Proxy-Authenticate: egress-identity\r\n");
        }
        out.push_str("\r\n");
        out.push_str(&body);
        out.into_bytes()
    }
}

/// Keeps details safe inside a quoted header value: printable ASCII, no quotes or backslashes,
/// bounded length. Details can echo parts of a hostile request.
fn sanitize(s: &str) -> String {
    s.chars()
        .filter(|c| c.is_ascii_graphic() || *c == ' ')
        .map(|c| if c == '"' || c == '\\' { '\'' } else { c })
        .take(200)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn responses_carry_status_proxy_status_and_a_one_line_body() {
        let r = Reject::new(Reason::DeniedByRule, "block-\"evil\"\r\nX: y").http_response();
        let text = String::from_utf8(r).expect("ascii");
        assert!(text.starts_with("HTTP/1.1 403 Forbidden\r\n"));
        assert!(text.contains("Proxy-Status: egress-gateway; error=denied_by_rule; details=\"block-'evil'X: y\"\r\n"), "{text}");
        assert!(text.ends_with("403 denied_by_rule: block-'evil'X: y\n"));
    }

    #[test]
    fn indices_follow_the_all_table() {
        for (i, r) in Reason::ALL.iter().enumerate() {
            assert_eq!(r.index(), i);
        }
    }
}
