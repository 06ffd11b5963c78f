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

/// A minimal, well-formed TLS ClientHello (one handshake record) for `sni`, with an outer
/// `encrypted_client_hello` (0xfe0d) extension when `ech` is set. Only for feeding the proxy's
/// ClientHello check: no handshake can follow it.
pub fn client_hello(sni: &str, ech: bool) -> Vec<u8> {
    fn ext(out: &mut Vec<u8>, ty: u16, data: &[u8]) {
        out.extend_from_slice(&ty.to_be_bytes());
        out.extend_from_slice(&(data.len() as u16).to_be_bytes());
        out.extend_from_slice(data);
    }
    let n = sni.as_bytes();
    let mut server_name = ((n.len() + 3) as u16).to_be_bytes().to_vec();
    server_name.push(0);
    server_name.extend_from_slice(&(n.len() as u16).to_be_bytes());
    server_name.extend_from_slice(n);
    let mut exts = Vec::new();
    ext(&mut exts, 0x0000, &server_name);
    ext(&mut exts, 0x000d, &[0, 4, 0x04, 0x03, 0x08, 0x04]);
    if ech {
        // Outer ECH: HPKE KDF/AEAD, config id, 32-byte enc, 16-byte payload.
        let mut d = vec![0x00, 0x00, 0x01, 0x00, 0x01, 0x05, 0x00, 0x20];
        d.extend_from_slice(&[9u8; 32]);
        d.extend_from_slice(&[0x00, 0x10]);
        d.extend_from_slice(&[3u8; 16]);
        ext(&mut exts, 0xfe0d, &d);
    }
    let mut body = vec![0x03, 0x03];
    body.extend_from_slice(&[7u8; 32]);
    body.push(0);
    body.extend_from_slice(&[0x00, 0x04, 0x13, 0x01, 0xc0, 0x2f, 0x01, 0x00]);
    body.extend_from_slice(&(exts.len() as u16).to_be_bytes());
    body.extend_from_slice(&exts);
    let mut hs = vec![0x01];
    hs.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
    hs.extend_from_slice(&body);
    let mut rec = vec![0x16, 0x03, 0x01];
    rec.extend_from_slice(&(hs.len() as u16).to_be_bytes());
    rec.extend_from_slice(&hs);
    rec
}
