//! `egress-gateway certs dev`: a development CA, a gateway certificate and workload SVIDs, so that
//! mTLS can be tried in two commands. Never for production: the keys are written unencrypted and
//! the certificates are long-lived.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};

use crate::spiffe::SpiffeId;

/// Why the development certificates could not be issued.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DevError {
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("issuing {what}: {message}")]
    Issue { what: String, message: String },
    #[error("two workloads would both be written as {0}.crt: their IDs end in the same segment")]
    DuplicateName(String),
}

fn issue_err(what: &str) -> impl Fn(rcgen::Error) -> DevError + '_ {
    move |e| DevError::Issue {
        what: what.to_owned(),
        message: e.to_string(),
    }
}

/// The file stem a workload's certificate is written under: the last path segment of its ID
/// (`spiffe://td/ns/payments/sa/checkout` → `checkout`), or the trust domain for a bare ID.
pub fn workload_file_stem(id: &SpiffeId) -> String {
    let s = id.as_str();
    let path = &s["spiffe://".len() + id.trust_domain().len()..];
    match path.rsplit('/').next() {
        Some(seg) if !seg.is_empty() => seg.to_owned(),
        _ => id.trust_domain().to_owned(),
    }
}

/// Writes `ca.crt`, `ca.key`, `gateway.crt`, `gateway.key` and a `<name>.crt`/`<name>.key` pair
/// per workload into `out`. Returns the files written.
pub fn issue(
    out: &Path,
    trust_domain: &str,
    workloads: &[SpiffeId],
) -> Result<Vec<PathBuf>, DevError> {
    let mut names: Vec<String> = Vec::new();
    for w in workloads {
        let stem = workload_file_stem(w);
        if stem == "ca" || stem == "gateway" || names.contains(&stem) {
            return Err(DevError::DuplicateName(stem));
        }
        names.push(stem);
    }
    std::fs::create_dir_all(out).map_err(|source| DevError::Write {
        path: out.to_owned(),
        source,
    })?;

    let ca_key = KeyPair::generate().map_err(issue_err("the CA key"))?;
    let mut ca = CertificateParams::default();
    // A distinct name per CA: two dev CAs with one name would make each other's certificates
    // fail as bad signatures instead of as unknown issuers.
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    ca.distinguished_name.push(
        DnType::CommonName,
        format!("egress-gateway dev CA ({trust_domain}) {stamp:x}"),
    );
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_cert = ca.self_signed(&ca_key).map_err(issue_err("the CA"))?;
    let issuer = Issuer::from_params(&ca, &ca_key);

    let mut written = Vec::new();
    let mut write = |name: &str, pem: String, secret: bool| -> Result<(), DevError> {
        let path = out.join(name);
        write_file(&path, pem.as_bytes(), secret)?;
        written.push(path);
        Ok(())
    };
    write("ca.crt", ca_cert.pem(), false)?;
    write("ca.key", ca_key.serialize_pem(), true)?;

    let gw_key = KeyPair::generate().map_err(issue_err("the gateway key"))?;
    let mut gw = CertificateParams::new(vec!["localhost".to_owned(), "egress-gateway".to_owned()])
        .map_err(issue_err("the gateway certificate"))?;
    gw.distinguished_name
        .push(DnType::CommonName, "egress-gateway");
    gw.subject_alt_names
        .push(SanType::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST)));
    gw.subject_alt_names
        .push(SanType::IpAddress(IpAddr::V6(Ipv6Addr::LOCALHOST)));
    gw.is_ca = IsCa::ExplicitNoCa;
    gw.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    gw.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let gw_cert = gw
        .signed_by(&gw_key, &issuer)
        .map_err(issue_err("the gateway certificate"))?;
    write("gateway.crt", gw_cert.pem(), false)?;
    write("gateway.key", gw_key.serialize_pem(), true)?;

    for (id, stem) in workloads.iter().zip(&names) {
        let what = format!("the certificate of {id}");
        let key = KeyPair::generate().map_err(issue_err(&what))?;
        let mut p = CertificateParams::default();
        p.distinguished_name.push(DnType::CommonName, stem.as_str());
        let uri = rcgen::string::Ia5String::try_from(id.as_str()).map_err(issue_err(&what))?;
        p.subject_alt_names = vec![SanType::URI(uri)];
        p.is_ca = IsCa::ExplicitNoCa;
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let cert = p.signed_by(&key, &issuer).map_err(issue_err(&what))?;
        write(&format!("{stem}.crt"), cert.pem(), false)?;
        write(&format!("{stem}.key"), key.serialize_pem(), true)?;
    }
    Ok(written)
}

fn write_file(path: &Path, data: &[u8], secret: bool) -> Result<(), DevError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let err = |source| DevError::Write {
        path: path.to_owned(),
        source,
    };
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(if secret { 0o600 } else { 0o644 })
        .open(path)
        .map_err(err)?;
    f.write_all(data).map_err(err)
}
