//! egress-policy: the identity-to-destination policy of egress-gateway.
//!
//! - [`Policy::from_yaml`] parses `policy.yaml`, validates it (every error as `line:column`), and
//!   compiles it into an index ([`index`]) whose lookups do not grow with the number of rules.
//! - [`Policy::decide`] answers "may this identity reach this destination?" with a [`Decision`]
//!   that names the rule and a reason code.
//! - [`Policy::decide_naive`] evaluates rule by rule; it is the reference the index is tested
//!   against.
//!
//! The crate is pure: no sockets, no async, no clock. Host names and IP literals are parsed by
//! [`host`], the single place that decides what counts as a name.

pub mod host;
pub mod identity;
mod index;
mod model;
pub mod ports;

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::sync::Arc;

use ipnet::IpNet;
use serde::Deserialize;

pub use host::{
    canonical_addr, canonical_ip, parse_host, parse_name, Host, HostError, HostName, HostPattern,
};
pub use identity::{Identity, IdentitySource, SpiffePattern};
pub use model::parse_cidr;
pub use ports::PortSet;

/// What a rule, or the policy's default, does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Allow,
    Deny,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Allow => "allow",
            Action::Deny => "deny",
        }
    }
}

/// `enforce` changes outcomes; `audit` only reports what would have happened.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    #[default]
    Enforce,
    Audit,
}

/// One `from` entry: every field present must match.
#[derive(Clone, Debug)]
pub struct CallerSelector {
    pub spiffe: Option<SpiffePattern>,
    /// `None` inside means `"*"`: any value, as long as the identity has one.
    pub namespace: Option<Option<String>>,
    pub service_account: Option<Option<String>>,
    pub pod_labels: Option<BTreeMap<String, String>>,
    pub cidr: Option<IpNet>,
    pub via: Option<Vec<IdentitySource>>,
}

fn matches_name(want: &Option<String>, got: Option<&String>) -> bool {
    match (want, got) {
        (_, None) => false,
        (None, Some(_)) => true,
        (Some(w), Some(g)) => w == g,
    }
}

impl CallerSelector {
    /// Whether this entry selects `id`. A caller with no identity matches only entries made of a
    /// `cidr` alone.
    pub fn matches(&self, id: &Identity) -> bool {
        if id.source == IdentitySource::None
            && (self.spiffe.is_some()
                || self.namespace.is_some()
                || self.service_account.is_some()
                || self.pod_labels.is_some()
                || self.via.is_some())
        {
            return false;
        }
        if let Some(via) = &self.via {
            if !via.contains(&id.source) {
                return false;
            }
        }
        if let Some(p) = &self.spiffe {
            match &id.spiffe {
                Some(s) if p.matches(s) => {}
                _ => return false,
            }
        }
        if let Some(ns) = &self.namespace {
            if !matches_name(ns, id.namespace.as_ref()) {
                return false;
            }
        }
        if let Some(sa) = &self.service_account {
            if !matches_name(sa, id.service_account.as_ref()) {
                return false;
            }
        }
        if let Some(labels) = &self.pod_labels {
            if id.source != IdentitySource::Kubernetes
                || !labels.iter().all(|(k, v)| id.labels.get(k) == Some(v))
            {
                return false;
            }
        }
        if let Some(net) = &self.cidr {
            match id.address {
                Some(a) if net.contains(&canonical_ip(a)) => {}
                _ => return false,
            }
        }
        true
    }
}

/// Where a `to` entry points.
#[derive(Clone, Debug)]
pub enum Target {
    Host(HostPattern),
    Cidr(IpNet),
}

/// One `to` entry.
#[derive(Clone, Debug)]
pub struct DestinationSelector {
    pub target: Target,
    pub ports: PortSet,
    pub allow_private_addresses: bool,
}

impl DestinationSelector {
    /// A `host` entry matches only names; a `cidr` entry matches only addresses.
    pub fn matches(&self, dest: &Destination) -> bool {
        let target = match (&self.target, &dest.host) {
            (Target::Host(p), Host::Name(n)) => p.matches(n),
            (Target::Cidr(net), Host::Ip(ip)) => net.contains(&canonical_ip(*ip)),
            _ => false,
        };
        target && self.ports.contains(dest.port)
    }
}

/// One rule of the policy.
#[derive(Clone, Debug)]
pub struct Rule {
    pub name: Arc<str>,
    pub action: Action,
    pub mode: Mode,
    pub from: Vec<CallerSelector>,
    pub to: Vec<DestinationSelector>,
}

/// The result of matching one rule: `Some` when it matches, carrying whether a matched `host`
/// entry lets the name resolve to private addresses.
type RuleMatch = Option<bool>;

impl Rule {
    fn matches(&self, id: &Identity, dest: &Destination) -> RuleMatch {
        if !self.from.iter().any(|f| f.matches(id)) {
            return None;
        }
        let mut hit = false;
        let mut private = false;
        for to in self.to.iter().filter(|t| t.matches(dest)) {
            hit = true;
            private |= to.allow_private_addresses;
        }
        hit.then_some(private)
    }
}

/// A host and port that a caller wants to reach.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Destination {
    pub host: Host,
    pub port: u16,
}

impl fmt::Display for Destination {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.host, self.port)
    }
}

/// The outcome for the connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Allow,
    Deny,
    /// The policy is in `mode: audit` and lets through what enforce mode would deny.
    AuditAllow,
}

impl Verdict {
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Allow => "allow",
            Verdict::Deny => "deny",
            Verdict::AuditAllow => "audit_allow",
        }
    }

    pub fn lets_through(self) -> bool {
        !matches!(self, Verdict::Deny)
    }
}

/// Why the policy decided as it did; `as_str` gives the wire names of the design.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PolicyReason {
    AllowedByRule,
    DefaultAllow,
    DeniedByRule,
    NoMatchingRule,
    /// No identity, and no rule could allow an anonymous caller.
    UnknownIdentity,
}

impl PolicyReason {
    pub fn as_str(self) -> &'static str {
        match self {
            PolicyReason::AllowedByRule => "allowed_by_rule",
            PolicyReason::DefaultAllow => "default_allow",
            PolicyReason::DeniedByRule => "denied_by_rule",
            PolicyReason::NoMatchingRule => "no_matching_rule",
            PolicyReason::UnknownIdentity => "unknown_identity",
        }
    }
}

/// A rule in `mode: audit` that matched: reported, never acted on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShadowHit {
    pub rule: Arc<str>,
    pub rule_index: usize,
    pub action: Action,
}

/// The answer of [`Policy::decide`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decision {
    pub verdict: Verdict,
    pub reason: PolicyReason,
    /// The deciding rule; `None` when the default decided.
    pub rule: Option<Arc<str>>,
    pub rule_index: Option<usize>,
    /// A matched `host` entry of the deciding allow rule says `allowPrivateAddresses: true`.
    pub allow_private_addresses: bool,
    pub shadow: Vec<ShadowHit>,
}

impl Decision {
    /// Whether an enforce-mode rule (not the default) allowed this destination.
    pub fn allowed_by_rule(&self) -> bool {
        self.reason == PolicyReason::AllowedByRule
    }

    /// Whether an enforce-mode deny rule matched (whatever the policy mode did with it).
    pub fn denied_by_rule(&self) -> bool {
        self.reason == PolicyReason::DeniedByRule
    }
}

/// A compiled, immutable policy.
#[derive(Debug)]
pub struct Policy {
    pub mode: Mode,
    pub default: Action,
    rules: Vec<Rule>,
    index: index::Index,
}

/// One problem in a policy file, with its position.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PolicyError {
    pub line: u64,
    pub column: u64,
    pub message: String,
}

/// All problems found in a policy file; displays as `file:line:column: message` lines.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub struct PolicyErrors {
    pub file: String,
    pub errors: Vec<PolicyError>,
}

impl fmt::Display for PolicyErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.errors.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{}:{}:{}: {}", self.file, e.line, e.column, e.message)?;
        }
        Ok(())
    }
}

fn located(loc: &serde_saphyr::Location, message: impl Into<String>) -> PolicyError {
    PolicyError {
        line: loc.line(),
        column: loc.column(),
        message: message.into(),
    }
}

/// Turns a YAML deserialisation error into a located error for `file`.
pub fn yaml_error(file: &str, err: &serde_saphyr::Error) -> PolicyErrors {
    let (line, column) = err.location().map_or((1, 1), |l| (l.line(), l.column()));
    PolicyErrors {
        file: file.to_owned(),
        errors: vec![PolicyError {
            line,
            column,
            message: plain_message(err),
        }],
    }
}

/// Removes serde-saphyr's own "at line X column Y" suffix: the position is printed in front.
fn plain_message(err: &serde_saphyr::Error) -> String {
    let text = err.without_snippet().to_string();
    let first = text.lines().next().unwrap_or_default().trim();
    match first.rfind(" at line ") {
        Some(i) => first[..i].to_owned(),
        None => first.to_owned(),
    }
}

impl Policy {
    /// A policy that denies everything: what the gateway enforces before any policy file exists.
    pub fn deny_all() -> Self {
        Policy::compile(Mode::Enforce, Action::Deny, Vec::new())
    }

    /// Parses, validates and compiles a policy. `file` names the source in error messages.
    pub fn from_yaml(text: &str, file: &str) -> Result<Self, PolicyErrors> {
        let fail = |errors| PolicyErrors {
            file: file.to_owned(),
            errors,
        };
        let raw: model::RawPolicy =
            serde_saphyr::from_str(text).map_err(|e| yaml_error(file, &e))?;
        let mut errors = Vec::new();
        if raw.version.value != 1 {
            errors.push(located(
                &raw.version.referenced,
                format!(
                    "unsupported policy version {}: expected 1",
                    raw.version.value
                ),
            ));
        }
        let mut names = HashSet::new();
        let mut rules = Vec::with_capacity(raw.rules.len());
        for r in raw.rules {
            let name = r.name.value.trim();
            if name.is_empty() {
                errors.push(located(&r.name.referenced, "rule name must not be empty"));
            } else if !names.insert(name.to_owned()) {
                errors.push(located(
                    &r.name.referenced,
                    format!("duplicate rule name {name:?}"),
                ));
            }
            if r.from.value.is_empty() {
                errors.push(located(
                    &r.from.referenced,
                    format!("rule {name:?}: 'from' must not be empty"),
                ));
            }
            if r.to.value.is_empty() {
                errors.push(located(
                    &r.to.referenced,
                    format!("rule {name:?}: 'to' must not be empty"),
                ));
            }
            let from = r
                .from
                .value
                .into_iter()
                .filter_map(|f| caller_selector(f, &mut errors))
                .collect();
            let to =
                r.to.value
                    .into_iter()
                    .filter_map(|t| destination_selector(t, &mut errors))
                    .collect();
            rules.push(Rule {
                name: Arc::from(name),
                action: r.action,
                mode: r.mode,
                from,
                to,
            });
        }
        if !errors.is_empty() {
            errors.sort_by_key(|e| (e.line, e.column));
            return Err(fail(errors));
        }
        Ok(Policy::compile(raw.mode, raw.default, rules))
    }

    /// Builds a policy from rules already in typed form (used by tests and benchmarks).
    pub fn compile(mode: Mode, default: Action, rules: Vec<Rule>) -> Self {
        let index = index::Index::build(&rules);
        Policy {
            mode,
            default,
            rules,
            index,
        }
    }

    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    /// Decides whether `id` may reach `dest`, using the compiled index.
    pub fn decide(&self, id: &Identity, dest: &Destination) -> Decision {
        let candidates = self.index.candidates(id, dest);
        self.conclude(
            id,
            candidates
                .into_iter()
                .filter_map(|i| self.rules[i].matches(id, dest).map(|p| (i, p))),
        )
    }

    /// Decides rule by rule, without the index: the reference for [`Policy::decide`].
    pub fn decide_naive(&self, id: &Identity, dest: &Destination) -> Decision {
        self.conclude(
            id,
            self.rules
                .iter()
                .enumerate()
                .filter_map(|(i, r)| r.matches(id, dest).map(|p| (i, p))),
        )
    }

    /// Turns the matching rules, in file order, into a decision: a matching deny rule denies;
    /// else a matching allow rule allows; else the default. Audit-mode rules are only reported.
    fn conclude(&self, id: &Identity, hits: impl Iterator<Item = (usize, bool)>) -> Decision {
        let mut deny = None;
        let mut allow = None;
        let mut shadow = Vec::new();
        for (i, private) in hits {
            let rule = &self.rules[i];
            match (rule.mode, rule.action) {
                (Mode::Audit, action) => shadow.push(ShadowHit {
                    rule: rule.name.clone(),
                    rule_index: i,
                    action,
                }),
                (Mode::Enforce, Action::Deny) => {
                    deny.get_or_insert(i);
                }
                (Mode::Enforce, Action::Allow) => {
                    allow.get_or_insert((i, private));
                }
            }
        }
        let (verdict, reason, rule, private) = if let Some(i) = deny {
            (Action::Deny, PolicyReason::DeniedByRule, Some(i), false)
        } else if let Some((i, private)) = allow {
            (Action::Allow, PolicyReason::AllowedByRule, Some(i), private)
        } else if self.default == Action::Allow {
            (Action::Allow, PolicyReason::DefaultAllow, None, false)
        } else if id.source == IdentitySource::None {
            (Action::Deny, PolicyReason::UnknownIdentity, None, false)
        } else {
            (Action::Deny, PolicyReason::NoMatchingRule, None, false)
        };
        let verdict = match (verdict, self.mode) {
            (Action::Allow, _) => Verdict::Allow,
            (Action::Deny, Mode::Enforce) => Verdict::Deny,
            (Action::Deny, Mode::Audit) => Verdict::AuditAllow,
        };
        Decision {
            verdict,
            reason,
            rule: rule.map(|i| self.rules[i].name.clone()),
            rule_index: rule,
            allow_private_addresses: private,
            shadow,
        }
    }
}

fn caller_selector(
    raw: serde_saphyr::Spanned<model::RawFrom>,
    errors: &mut Vec<PolicyError>,
) -> Option<CallerSelector> {
    let loc = raw.referenced;
    let f = raw.value;
    let star = |v: String| if v == "*" { None } else { Some(v) };
    let sel = CallerSelector {
        spiffe: f.spiffe.map(|s| s.0),
        namespace: f.namespace.map(star),
        service_account: f.service_account.map(star),
        pod_labels: f.pod_labels,
        cidr: f.cidr.map(|c| c.0),
        via: f.via.map(|v| v.value.into_iter().map(|x| x.0).collect()),
    };
    if sel.spiffe.is_none()
        && sel.namespace.is_none()
        && sel.service_account.is_none()
        && sel.pod_labels.is_none()
        && sel.cidr.is_none()
    {
        errors.push(located(
            &loc,
            "a 'from' entry needs at least one of spiffe, namespace, serviceAccount, podLabels, cidr (an empty selector would match every caller)",
        ));
        return None;
    }
    if matches!(&sel.via, Some(v) if v.is_empty()) {
        errors.push(located(&loc, "'via' must not be empty"));
        return None;
    }
    Some(sel)
}

fn destination_selector(
    raw: serde_saphyr::Spanned<model::RawTo>,
    errors: &mut Vec<PolicyError>,
) -> Option<DestinationSelector> {
    let loc = raw.referenced;
    let t = raw.value;
    let target = match (t.host, t.cidr) {
        (Some(h), None) => Target::Host(h.0),
        (None, Some(c)) => {
            if t.allow_private_addresses {
                errors.push(located(
                    &loc,
                    "allowPrivateAddresses applies to host entries; a cidr entry already allows its own addresses",
                ));
                return None;
            }
            Target::Cidr(c.0)
        }
        _ => {
            errors.push(located(
                &loc,
                "a 'to' entry needs exactly one of host or cidr",
            ));
            return None;
        }
    };
    let Some(ports) = t.ports else {
        errors.push(located(
            &loc,
            "a 'to' entry needs 'ports' (a list, or \"*\")",
        ));
        return None;
    };
    Some(DestinationSelector {
        target,
        ports,
        allow_private_addresses: t.allow_private_addresses,
    })
}
