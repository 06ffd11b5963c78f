//! Test PKI: an rcgen CA and leaf certificates for the project's own TLS origins.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

/// A throw-away certificate authority.
pub struct TestCa {
    issuer: Issuer<'static, KeyPair>,
    cert_der: CertificateDer<'static>,
    /// The CA certificate, PEM.
    pub pem: String,
}

/// A leaf certificate and its key.
pub struct Leaf {
    /// Certificate chain (leaf only).
    pub chain: Vec<CertificateDer<'static>>,
    /// Private key.
    pub key: PrivateKeyDer<'static>,
}

impl TestCa {
    /// Mint a new CA.
    pub fn new() -> anyhow::Result<TestCa> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "kennel test CA");
        let key = KeyPair::generate()?;
        let cert = params.self_signed(&key)?;
        let pem = cert.pem();
        let cert_der = cert.der().clone();
        Ok(TestCa {
            issuer: Issuer::new(params, key),
            cert_der,
            pem,
        })
    }

    /// Write the CA certificate to `dir/ca.pem` (for `curl --cacert`).
    pub fn write_pem(&self, dir: &Path) -> anyhow::Result<PathBuf> {
        let p = dir.join("ca.pem");
        std::fs::write(&p, &self.pem)?;
        Ok(p)
    }

    /// A leaf certificate for `names` (DNS names or IP literals).
    pub fn leaf(&self, names: &[&str]) -> anyhow::Result<Leaf> {
        let params =
            CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())?;
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(Leaf {
            chain: vec![cert.der().clone()],
            key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
        })
    }

    /// Root store trusting only this CA.
    pub fn roots(&self) -> anyhow::Result<rustls::RootCertStore> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.cert_der.clone())?;
        Ok(roots)
    }

    /// A TLS client config trusting only this CA (ring provider).
    pub fn client_config(&self) -> anyhow::Result<Arc<rustls::ClientConfig>> {
        let cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()?
        .with_root_certificates(self.roots()?)
        .with_no_client_auth();
        Ok(Arc::new(cfg))
    }
}

/// A TLS server config presenting `leaf` (ring provider).
pub fn server_config(leaf: Leaf) -> anyhow::Result<Arc<rustls::ServerConfig>> {
    let cfg = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_no_client_auth()
    .with_single_cert(leaf.chain, leaf.key)?;
    Ok(Arc::new(cfg))
}
