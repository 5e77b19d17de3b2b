//! TLS for `https://` and `wss://` URLs, through rustls (with the `ring` provider).
//!
//! Servers are verified against the Mozilla root certificates bundled in `webpki-roots`
//! (the same on every machine, nothing read from the OS), plus any [`Certificate`] the
//! application adds: a private CA, or the self-signed certificate of a proxy in front of
//! the broker.

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;

/// Why a certificate or a TLS setup was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TlsError {
    /// The file could not be read.
    #[error("reading {path}: {message}")]
    Read {
        /// The file.
        path: String,
        /// The I/O error.
        message: String,
    },
    /// The PEM text is broken or holds no `CERTIFICATE` block.
    #[error("bad PEM certificate: {0}")]
    Pem(String),
    /// rustls refused the certificate or the configuration.
    #[error("bad certificate: {0}")]
    Invalid(String),
}

/// A root certificate to trust besides the bundled ones, as DER bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Certificate {
    der: Vec<u8>,
}

impl Certificate {
    /// A certificate from its DER bytes (checked when a client is built).
    pub fn from_der(der: impl Into<Vec<u8>>) -> Certificate {
        Certificate { der: der.into() }
    }

    /// Every `-----BEGIN CERTIFICATE-----` block of PEM text; at least one is required.
    pub fn from_pem(pem: &[u8]) -> Result<Vec<Certificate>, TlsError> {
        let certs = CertificateDer::pem_slice_iter(pem)
            .map(|c| {
                c.map(|c| Certificate::from_der(c.as_ref()))
                    .map_err(|e| TlsError::Pem(e.to_string()))
            })
            .collect::<Result<Vec<_>, _>>()?;
        if certs.is_empty() {
            return Err(TlsError::Pem("no CERTIFICATE block".into()));
        }
        Ok(certs)
    }

    /// Every certificate of a PEM file (what `--ca-cert FILE` reads).
    pub fn from_pem_file(path: impl AsRef<Path>) -> Result<Vec<Certificate>, TlsError> {
        let path = path.as_ref();
        let pem = std::fs::read(path).map_err(|e| TlsError::Read {
            path: path.display().to_string(),
            message: e.to_string(),
        })?;
        Certificate::from_pem(&pem)
    }

    /// The DER bytes.
    pub fn der(&self) -> &[u8] {
        &self.der
    }
}

/// A rustls client configuration trusting the bundled roots and `extra`.
pub(crate) fn client_config(extra: &[Certificate]) -> Result<Arc<rustls::ClientConfig>, TlsError> {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    for cert in extra {
        roots
            .add(CertificateDer::from(cert.der.clone()))
            .map_err(|e| TlsError::Invalid(e.to_string()))?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Invalid(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pem_without_a_certificate_is_refused() {
        assert!(matches!(
            Certificate::from_pem(b"hello"),
            Err(TlsError::Pem(_))
        ));
        assert!(matches!(
            Certificate::from_pem_file("/nonexistent/ca.pem"),
            Err(TlsError::Read { .. })
        ));
    }

    #[test]
    fn der_that_is_not_a_certificate_is_refused_when_building() {
        assert!(client_config(&[]).is_ok());
        assert!(matches!(
            client_config(&[Certificate::from_der(vec![1, 2, 3])]),
            Err(TlsError::Invalid(_))
        ));
    }
}
