//! TLS for every connection the fleet opens: PostgreSQL, Redis, RabbitMQ
//! and merchant webhooks all go through rustls with one crypto provider
//! (ring), trust the platform's roots, and add the CA named by `tls_ca_file`.

use std::{path::Path, sync::Arc};

use rustls::pki_types::{CertificateDer, pem::PemObject};

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("reading {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path} holds no PEM certificate")]
    NoCertificate { path: String },
    #[error("{path}: {reason}")]
    Invalid { path: String, reason: String },
}

/// Installs ring as the process's rustls crypto provider. Idempotent; every
/// TLS client the fleet builds uses the process default, so this runs before
/// the first connection (rustls 0.23 refuses to choose when it cannot tell).
pub fn install_crypto_provider() {
    // Err means a provider is installed already, which is what we want.
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// The extra trust anchors of `tls_ca_file`: PEM certificates trusted for
/// every outgoing TLS connection beside the platform's roots.
#[derive(Clone, Debug, Default)]
pub struct ExtraCa {
    pem: Option<Arc<str>>,
}

impl ExtraCa {
    /// None when `path` is not set. The file must hold at least one
    /// certificate, each well formed.
    pub fn load(path: Option<&Path>) -> Result<Self, TlsError> {
        let Some(path) = path else {
            return Ok(Self::default());
        };
        let shown = path.display().to_string();
        let pem = std::fs::read_to_string(path).map_err(|source| TlsError::Read {
            path: shown.clone(),
            source,
        })?;
        let certificates = CertificateDer::pem_slice_iter(pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| TlsError::Invalid {
                path: shown.clone(),
                reason: e.to_string(),
            })?;
        if certificates.is_empty() {
            return Err(TlsError::NoCertificate { path: shown });
        }
        let mut roots = rustls::RootCertStore::empty();
        for certificate in certificates {
            roots.add(certificate).map_err(|e| TlsError::Invalid {
                path: shown.clone(),
                reason: e.to_string(),
            })?;
        }
        Ok(Self {
            pem: Some(pem.into()),
        })
    }

    /// The certificates, PEM encoded; None when no extra CA is set.
    pub fn pem(&self) -> Option<&str> {
        self.pem.as_deref()
    }

    /// An HTTP client builder trusting the extra CA beside the platform's roots.
    pub fn trusted_by(
        &self,
        builder: reqwest::ClientBuilder,
    ) -> reqwest::Result<reqwest::ClientBuilder> {
        install_crypto_provider();
        let Some(pem) = self.pem() else {
            return Ok(builder);
        };
        Ok(reqwest::Certificate::from_pem_bundle(pem.as_bytes())?
            .into_iter()
            .fold(builder, reqwest::ClientBuilder::add_root_certificate))
    }

    /// RabbitMQ (`amqps://`): the extra CA is added to the platform's roots.
    pub fn amqp(&self) -> lapin::tcp::OwnedTLSConfig {
        lapin::tcp::OwnedTLSConfig {
            identity: None,
            cert_chain: self.pem().map(str::to_owned),
        }
    }
}
