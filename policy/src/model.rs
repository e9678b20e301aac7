//! The policy file as written: serde structs that mirror `policy.yaml` key for key, with
//! `deny_unknown_fields`. Values that can be checked alone (hosts, CIDRs, ports, SPIFFE IDs) are
//! parsed into typed values while deserialising, so their errors carry the line and column of the
//! value. Checks that span several values (empty lists, duplicate names) use the spans kept here.

use std::collections::BTreeMap;

use ipnet::IpNet;
use serde::Deserialize;
use serde_saphyr::Spanned;

use crate::host::HostPattern;
use crate::identity::{IdentitySource, SpiffePattern};
use crate::ports::PortSet;
use crate::{Action, Mode};

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(crate) struct RawPolicy {
    pub version: Spanned<u32>,
    #[serde(default)]
    pub mode: Mode,
    #[serde(default = "default_action")]
    pub default: Action,
    #[serde(default)]
    pub rules: Vec<RawRule>,
}

fn default_action() -> Action {
    Action::Deny
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(crate) struct RawRule {
    pub name: Spanned<String>,
    pub action: Action,
    #[serde(default)]
    pub mode: Mode,
    pub from: Spanned<Vec<Spanned<RawFrom>>>,
    pub to: Spanned<Vec<Spanned<RawTo>>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(crate) struct RawFrom {
    pub spiffe: Option<SpiffeField>,
    pub namespace: Option<String>,
    pub service_account: Option<String>,
    pub pod_labels: Option<BTreeMap<String, String>>,
    pub cidr: Option<CidrField>,
    pub via: Option<Spanned<Vec<ViaField>>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(crate) struct RawTo {
    pub host: Option<HostField>,
    pub cidr: Option<CidrField>,
    pub ports: Option<PortSet>,
    #[serde(default)]
    pub allow_private_addresses: bool,
}

#[derive(Deserialize)]
#[serde(try_from = "String")]
pub(crate) struct SpiffeField(pub SpiffePattern);

impl TryFrom<String> for SpiffeField {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        SpiffePattern::parse(&s).map(SpiffeField)
    }
}

#[derive(Deserialize)]
#[serde(try_from = "String")]
pub(crate) struct HostField(pub HostPattern);

impl TryFrom<String> for HostField {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        HostPattern::parse(&s).map(HostField)
    }
}

#[derive(Deserialize)]
#[serde(try_from = "String")]
pub(crate) struct ViaField(pub IdentitySource);

impl TryFrom<String> for ViaField {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        IdentitySource::parse(&s).map(ViaField).ok_or_else(|| {
            format!("unknown identity source {s:?}: expected mtls, kubernetes or static")
        })
    }
}

/// A CIDR as policies write it. A bare address means that one address. Host bits must be zero,
/// and IPv4-mapped IPv6 ranges are refused: addresses are matched in their IPv4 form.
#[derive(Deserialize)]
#[serde(try_from = "String")]
pub(crate) struct CidrField(pub IpNet);

impl TryFrom<String> for CidrField {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        parse_cidr(&s).map(CidrField)
    }
}

/// Parses a CIDR for a policy or the gateway config (see [`CidrField`]).
pub fn parse_cidr(s: &str) -> Result<IpNet, String> {
    let net = if s.contains('/') {
        s.parse::<IpNet>().map_err(|_| {
            format!("invalid CIDR {s:?}: expected ADDRESS/PREFIX such as 10.0.0.0/8")
        })?
    } else {
        let ip = s.parse::<std::net::IpAddr>().map_err(|_| {
            format!("invalid CIDR {s:?}: expected ADDRESS/PREFIX such as 10.0.0.0/8")
        })?;
        IpNet::from(ip)
    };
    if net.trunc() != net {
        return Err(format!(
            "CIDR {s:?} has host bits set: did you mean {}?",
            net.trunc()
        ));
    }
    if let IpNet::V6(v6) = net {
        let mapped: ipnet::Ipv6Net = "::ffff:0:0/96".parse().expect("constant CIDR is valid");
        if mapped.contains(&v6.network()) && v6.prefix_len() >= 96 {
            return Err(format!(
                "CIDR {s:?} is an IPv4-mapped range: write it as an IPv4 CIDR"
            ));
        }
    }
    Ok(net)
}
