//! Loading certificate chains, private keys and trust bundles from PEM files, with errors that
//! name the file and what is wrong with it. Key material never appears in an error or a log.

use std::path::{Path, PathBuf};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::RootCertStore;

/// Why TLS material could not be loaded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CertError {
    #[error("{path}: cannot read: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: not PEM, or a damaged PEM block: {message}")]
    BadPem { path: PathBuf, message: String },
    #[error("{path}: no CERTIFICATE block")]
    NoCertificate { path: PathBuf },
    #[error("{path}: no private key (PKCS#8, SEC1/EC or RSA PEM block)")]
    NoKey { path: PathBuf },
    #[error("{path}: certificate {index} is not a usable CA: {message}")]
    BadCa {
        path: PathBuf,
        index: usize,
        message: String,
    },
}

fn pem_error(path: &Path, e: rustls::pki_types::pem::Error) -> CertError {
    match e {
        rustls::pki_types::pem::Error::Io(source) => CertError::Read {
            path: path.to_owned(),
            source,
        },
        rustls::pki_types::pem::Error::NoItemsFound => CertError::NoCertificate {
            path: path.to_owned(),
        },
        other => CertError::BadPem {
            path: path.to_owned(),
            message: other.to_string(),
        },
    }
}

/// A certificate chain, leaf first.
pub fn load_chain(path: &Path) -> Result<Vec<CertificateDer<'static>>, CertError> {
    let chain = CertificateDer::pem_file_iter(path)
        .map_err(|e| pem_error(path, e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_error(path, e))?;
    if chain.is_empty() {
        return Err(CertError::NoCertificate {
            path: path.to_owned(),
        });
    }
    Ok(chain)
}

/// The first private key in a PEM file: PKCS#8, SEC1 (EC) or PKCS#1 (RSA).
pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, CertError> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| match e {
        rustls::pki_types::pem::Error::NoItemsFound => CertError::NoKey {
            path: path.to_owned(),
        },
        other => pem_error(path, other),
    })
}

/// One or more trust bundles (each a file of one or more CA certificates, of any trust domain).
pub fn load_bundle(paths: &[PathBuf]) -> Result<RootCertStore, CertError> {
    let mut roots = RootCertStore::empty();
    for path in paths {
        for (index, cert) in load_chain(path)?.into_iter().enumerate() {
            roots.add(cert).map_err(|e| CertError::BadCa {
                path: path.clone(),
                index,
                message: e.to_string(),
            })?;
        }
    }
    Ok(roots)
}
