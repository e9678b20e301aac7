//! Port sets of `to` entries: a list of ports and `"lo-hi"` ranges, or `"*"`.

use std::fmt;

use serde::de::{self, Deserializer, SeqAccess, Visitor};
use serde::Deserialize;

/// The ports a `to` entry allows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PortSet {
    Any,
    /// Inclusive ranges, as written.
    Ranges(Vec<(u16, u16)>),
}

impl PortSet {
    pub fn contains(&self, port: u16) -> bool {
        match self {
            PortSet::Any => true,
            PortSet::Ranges(r) => r.iter().any(|&(lo, hi)| lo <= port && port <= hi),
        }
    }
}

fn port_number(v: u64) -> Result<u16, String> {
    match u16::try_from(v) {
        Ok(p) if p != 0 => Ok(p),
        _ => Err(format!("port {v} is out of range 1-65535")),
    }
}

fn parse_port_item(s: &str) -> Result<(u16, u16), String> {
    let num = |t: &str| -> Result<u16, String> {
        let t = t.trim();
        if t.is_empty() || !t.bytes().all(|b| b.is_ascii_digit()) {
            return Err(format!(
                "invalid port {s:?}: use a number, \"lo-hi\" or \"*\""
            ));
        }
        port_number(
            t.parse::<u64>()
                .map_err(|_| format!("port {t} is out of range 1-65535"))?,
        )
    };
    match s.split_once('-') {
        Some((lo, hi)) => {
            let (lo, hi) = (num(lo)?, num(hi)?);
            if lo > hi {
                return Err(format!("port range {s:?} is empty: {lo} > {hi}"));
            }
            Ok((lo, hi))
        }
        None => {
            let p = num(s)?;
            Ok((p, p))
        }
    }
}

impl<'de> Deserialize<'de> for PortSet {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct PortsVisitor;
        impl<'de> Visitor<'de> for PortsVisitor {
            type Value = PortSet;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a list of ports and \"lo-hi\" ranges, or \"*\"")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<PortSet, E> {
                if v == "*" {
                    Ok(PortSet::Any)
                } else {
                    Err(E::custom(format!(
                        "ports must be a list or \"*\", not {v:?} (write [{v}])"
                    )))
                }
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<PortSet, A::Error> {
                let mut ranges = Vec::new();
                let mut any = false;
                while let Some(item) = seq.next_element::<PortItem>()? {
                    match item {
                        PortItem::Any => any = true,
                        PortItem::Range(lo, hi) => ranges.push((lo, hi)),
                    }
                }
                if any {
                    return Ok(PortSet::Any);
                }
                if ranges.is_empty() {
                    return Err(de::Error::custom("ports must not be empty"));
                }
                Ok(PortSet::Ranges(ranges))
            }
        }
        d.deserialize_any(PortsVisitor)
    }
}

enum PortItem {
    Any,
    Range(u16, u16),
}

impl<'de> Deserialize<'de> for PortItem {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct ItemVisitor;
        impl Visitor<'_> for ItemVisitor {
            type Value = PortItem;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a port number, a \"lo-hi\" range or \"*\"")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<PortItem, E> {
                port_number(v)
                    .map(|p| PortItem::Range(p, p))
                    .map_err(E::custom)
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<PortItem, E> {
                match u64::try_from(v) {
                    Ok(v) => self.visit_u64(v),
                    Err(_) => Err(E::custom(format!("port {v} is out of range 1-65535"))),
                }
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<PortItem, E> {
                if v == "*" {
                    return Ok(PortItem::Any);
                }
                parse_port_item(v)
                    .map(|(lo, hi)| PortItem::Range(lo, hi))
                    .map_err(E::custom)
            }
        }
        d.deserialize_any(ItemVisitor)
    }
}

impl fmt::Display for PortSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PortSet::Any => f.write_str("*"),
            PortSet::Ranges(r) => {
                for (i, (lo, hi)) in r.iter().enumerate() {
                    if i > 0 {
                        f.write_str(",")?;
                    }
                    if lo == hi {
                        write!(f, "{lo}")?;
                    } else {
                        write!(f, "{lo}-{hi}")?;
                    }
                }
                Ok(())
            }
        }
    }
}
