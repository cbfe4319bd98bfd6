//! rustls set-up for both ends. One crypto provider (ring: it cross-compiles to Windows with only
//! mingw), the public web roots plus an optional extra CA for the agent, and PEM loading with
//! errors that name the file.

use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, bail};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{ClientConfig, RootCertStore, ServerConfig};

/// The crypto provider every config in Ponte uses: ring's, with AES-128-GCM offered before
/// AES-256-GCM (as browsers and Go do). Every byte of the tunnel is sealed by the agent and opened
/// by the relay, and 10 AES rounds instead of 14 make that a little cheaper (about 5 % of relay
/// and agent CPU per 1 MiB response, within this machine's noise: README, Performance).
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    use rustls::CipherSuite::{
        TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256, TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
        TLS13_AES_128_GCM_SHA256,
    };
    let mut provider = rustls::crypto::ring::default_provider();
    // A stable sort: TLS 1.3 suites stay ahead of TLS 1.2 ones, and only the AES key size moves.
    provider.cipher_suites.sort_by_key(|s| {
        let aes128 = matches!(
            s.suite(),
            TLS13_AES_128_GCM_SHA256
                | TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256
                | TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256
        );
        (s.version().version != rustls::ProtocolVersion::TLSv1_3, !aes128)
    });
    Arc::new(provider)
}

/// Server config for the relay's public listener: TLS 1.2 and 1.3, ALPN h2 then http/1.1 (agents
/// ask for http/1.1 because their handshake is an HTTP/1.1 Upgrade).
pub fn server_config(cert: &Path, key: &Path) -> anyhow::Result<Arc<ServerConfig>> {
    let certs = load_certs(cert)?;
    let key = PrivateKeyDer::from_pem_file(key).with_context(|| {
        format!(
            "{}: no usable private key (expected a PEM `PRIVATE KEY`, `RSA PRIVATE KEY` or `EC PRIVATE KEY`)",
            key.display()
        )
    })?;
    let mut cfg = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .context("TLS provider")?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .with_context(|| format!("{}: the key does not match the certificate", cert.display()))?;
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

/// Read every certificate of a PEM file.
pub fn load_certs(path: &Path) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let certs: Vec<_> = CertificateDer::pem_file_iter(path)
        .with_context(|| format!("{}: cannot read the certificate file", path.display()))?
        .collect::<Result<_, _>>()
        .with_context(|| format!("{}: not a valid PEM certificate file", path.display()))?;
    if certs.is_empty() {
        bail!("{}: contains no `CERTIFICATE` block", path.display());
    }
    Ok(certs)
}

/// Trust store: the public web roots, plus the certificates in `extra_ca` if given.
pub fn root_store(extra_ca: Option<&Path>) -> anyhow::Result<RootCertStore> {
    let mut roots = RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(path) = extra_ca {
        for cert in load_certs(path)? {
            roots
                .add(cert)
                .with_context(|| format!("{}: not a usable CA certificate", path.display()))?;
        }
    }
    Ok(roots)
}

/// Client config for dialing the relay or an https upstream.
pub fn client_config(extra_ca: Option<&Path>, alpn: &[&[u8]]) -> anyhow::Result<ClientConfig> {
    let mut cfg = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .context("TLS provider")?
        .with_root_certificates(root_store(extra_ca)?)
        .with_no_client_auth();
    cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(cfg)
}

/// Client config that accepts any server certificate. Only for upstreams the user explicitly
/// marked `danger_accept_invalid_certs` (a self-signed server on the same machine).
pub fn insecure_client_config(alpn: &[&[u8]]) -> anyhow::Result<ClientConfig> {
    let mut cfg = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .context("TLS provider")?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAnyCert(provider())))
        .with_no_client_auth();
    cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(cfg)
}

#[derive(Debug)]
struct AcceptAnyCert(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AcceptAnyCert {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use rustls::{CipherSuite, ProtocolVersion};

    #[test]
    fn aes_128_gcm_is_offered_first_and_tls13_stays_ahead() {
        let suites = super::provider().cipher_suites.clone();
        let names: Vec<CipherSuite> = suites.iter().map(|s| s.suite()).collect();
        assert_eq!(names[0], CipherSuite::TLS13_AES_128_GCM_SHA256, "{names:?}");
        assert_eq!(names[1], CipherSuite::TLS13_AES_256_GCM_SHA384, "{names:?}");
        let first_tls12 = suites
            .iter()
            .position(|s| s.version().version == ProtocolVersion::TLSv1_2)
            .expect("TLS 1.2 suites are kept");
        assert!(
            suites[first_tls12..]
                .iter()
                .all(|s| s.version().version == ProtocolVersion::TLSv1_2),
            "{names:?}"
        );
        assert!(
            format!("{:?}", names[first_tls12]).contains("AES_128_GCM"),
            "{names:?}"
        );
        // Nothing dropped: the same suites as ring's own default.
        assert_eq!(
            suites.len(),
            rustls::crypto::ring::default_provider().cipher_suites.len()
        );
    }
}
