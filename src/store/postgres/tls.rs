//! TLS to PostgreSQL as libpq's `sslmode` describes it, with rustls and the ring provider Ponte
//! uses everywhere. `sslrootcert` names the only CA trusted for the database; without it the
//! verifying modes trust the public web roots.

use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio_postgres_rustls::MakeRustlsConnect;

use crate::config::postgres::{PostgresUrl, SslMode};
use crate::store::StoreError;

/// The TLS connector the URL asks for.
pub(super) fn connector(url: &PostgresUrl) -> Result<MakeRustlsConnect, StoreError> {
    let config = match (url.ssl_mode, &url.root_cert) {
        // The driver never starts TLS in `disable` mode; any config will do.
        (SslMode::Disable, _) => crate::tls::insecure_client_config(&[]),
        // libpq's `prefer` and `require` only encrypt; `require` with a root certificate checks
        // the chain like `verify-ca`.
        (SslMode::Prefer, _) | (SslMode::Require, None) => crate::tls::insecure_client_config(&[]),
        (SslMode::Require | SslMode::VerifyCa, _) => chain_only(roots(url)?),
        (SslMode::VerifyFull, _) => full(roots(url)?),
    }
    .map_err(|e| StoreError::Unavailable(format!("{url}: cannot set up TLS for PostgreSQL: {e:#}")))?;
    let mut config = config;
    // What PostgreSQL 17's direct TLS negotiation expects; earlier servers ignore it.
    config.alpn_protocols = vec![b"postgresql".to_vec()];
    Ok(MakeRustlsConnect::new(config))
}

fn roots(url: &PostgresUrl) -> Result<RootCertStore, StoreError> {
    let Some(path) = &url.root_cert else {
        let mut roots = RootCertStore::empty();
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        return Ok(roots);
    };
    let fail = |e: String| {
        StoreError::Unavailable(format!(
            "{url}: sslrootcert {}: {e}; point sslrootcert at the PEM file of the CA that signed the database's certificate",
            path.display()
        ))
    };
    let mut roots = RootCertStore::empty();
    for cert in crate::tls::load_certs(path).map_err(|e| fail(format!("{e:#}")))? {
        roots
            .add(cert)
            .map_err(|e| fail(format!("not a usable CA certificate ({e})")))?;
    }
    Ok(roots)
}

fn full(roots: RootCertStore) -> anyhow::Result<ClientConfig> {
    Ok(ClientConfig::builder_with_provider(crate::tls::provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

fn chain_only(roots: RootCertStore) -> anyhow::Result<ClientConfig> {
    let inner =
        WebPkiServerVerifier::builder_with_provider(Arc::new(roots), crate::tls::provider()).build()?;
    Ok(ClientConfig::builder_with_provider(crate::tls::provider())
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(ChainOnly(inner)))
        .with_no_client_auth())
}

/// `verify-ca`: the chain must lead to a trusted CA; the name in the certificate is not checked
/// (for databases reached by an address their certificate does not list).
#[derive(Debug)]
struct ChainOnly(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
        {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}
