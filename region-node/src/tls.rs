//! The cluster's certificate authority and the mutual-TLS configurations of the mesh.
//!
//! Every node holds a certificate issued by the cluster CA and trusts only that CA, in
//! both directions: a node whose certificate another CA signed cannot join, and a node
//! never dials into a mesh it cannot authenticate.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use rustls::server::WebPkiClientVerifier;
use rustls::RootCertStore;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::data_dir::atomic_write;

/// The name every node certificate carries and every node dials. Peers are told apart by
/// the node id in the mesh handshake; the certificate proves cluster membership.
pub const MESH_SERVER_NAME: &str = "starling.mesh";

/// ALPN of the mesh protocol, so a stray QUIC client is refused at the handshake.
pub const MESH_ALPN: &[u8] = b"starling-mesh/1";

const CA_CERT: &str = "ca.pem";
const CA_KEY: &str = "ca.key";

/// Paths of a node's TLS material.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub ca_cert: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Creates a cluster CA in `dir` (`ca.pem`, `ca.key`). Refuses to overwrite one.
pub fn create_ca(dir: &Path) -> anyhow::Result<()> {
    if dir.join(CA_KEY).exists() {
        bail!(
            "{} already holds a CA key; refusing to overwrite it",
            dir.display()
        );
    }

    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params
        .distinguished_name
        .push(DnType::CommonName, "Starling cluster CA");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];

    let key = KeyPair::generate()?;
    let cert = params.self_signed(&key)?;
    atomic_write(&dir.join(CA_CERT), cert.pem().as_bytes())?;
    atomic_write(&dir.join(CA_KEY), key.serialize_pem().as_bytes())?;
    Ok(())
}

/// Issues a certificate for `name` (a node id, or `operator`) under the CA in `ca_dir`,
/// writing `<name>.pem` and `<name>.key` into `out`.
pub fn issue(ca_dir: &Path, name: &str, out: &Path) -> anyhow::Result<TlsFiles> {
    let ca_pem = std::fs::read_to_string(ca_dir.join(CA_CERT))
        .with_context(|| format!("reading {}", ca_dir.join(CA_CERT).display()))?;
    let ca_key = KeyPair::from_pem(&std::fs::read_to_string(ca_dir.join(CA_KEY))?)?;
    let issuer = Issuer::from_ca_cert_pem(&ca_pem, ca_key)?;

    let mut params = CertificateParams::new(vec![MESH_SERVER_NAME.to_owned(), name.to_owned()])?;
    params.distinguished_name.push(DnType::CommonName, name);
    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, &issuer)?;

    let files = TlsFiles {
        ca_cert: ca_dir.join(CA_CERT),
        cert: out.join(format!("{name}.pem")),
        key: out.join(format!("{name}.key")),
    };
    atomic_write(&files.cert, cert.pem().as_bytes())?;
    atomic_write(&files.key, key.serialize_pem().as_bytes())?;
    Ok(files)
}

struct Loaded {
    roots: Arc<RootCertStore>,
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
}

fn load(files: &TlsFiles) -> anyhow::Result<Loaded> {
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(&files.ca_cert)
        .with_context(|| format!("reading CA {}", files.ca_cert.display()))?
    {
        roots.add(cert?)?;
    }
    let chain = CertificateDer::pem_file_iter(&files.cert)
        .with_context(|| format!("reading certificate {}", files.cert.display()))?
        .collect::<Result<Vec<_>, _>>()?;
    let key = PrivateKeyDer::from_pem_file(&files.key)
        .with_context(|| format!("reading key {}", files.key.display()))?;
    Ok(Loaded {
        roots: Arc::new(roots),
        chain,
        key,
    })
}

/// Whether the mesh's files load: a CA with at least one certificate, and this node's
/// certificate chain and key (for `--check-config` and the checks before startup).
pub fn check(files: &TlsFiles) -> anyhow::Result<()> {
    let loaded = load(files)?;
    if loaded.roots.is_empty() {
        anyhow::bail!("{} holds no PEM certificate", files.ca_cert.display());
    }
    if loaded.chain.is_empty() {
        anyhow::bail!("{} holds no PEM certificate", files.cert.display());
    }
    rustls::sign::CertifiedKey::from_der(loaded.chain, loaded.key, &provider())
        .map(drop)
        .with_context(|| {
            format!(
                "{} and {} are not a usable certificate and key",
                files.cert.display(),
                files.key.display()
            )
        })
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The QUIC server side of the mesh: presents this node's certificate and requires a
/// client certificate from the same CA.
pub fn mesh_server_config(files: &TlsFiles) -> anyhow::Result<quinn::ServerConfig> {
    let loaded = load(files)?;
    let verifier = WebPkiClientVerifier::builder_with_provider(loaded.roots, provider()).build()?;
    let mut tls = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_single_cert(loaded.chain, loaded.key)?;
    tls.alpn_protocols = vec![MESH_ALPN.to_vec()];

    let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls)?;
    Ok(quinn::ServerConfig::with_crypto(Arc::new(crypto)))
}

/// The QUIC client side of the mesh: trusts only the cluster CA and presents this
/// node's certificate.
pub fn mesh_client_config(files: &TlsFiles) -> anyhow::Result<quinn::ClientConfig> {
    let loaded = load(files)?;
    let mut tls = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(loaded.roots)
        .with_client_auth_cert(loaded.chain, loaded.key)?;
    tls.alpn_protocols = vec![MESH_ALPN.to_vec()];

    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls)?;
    Ok(quinn::ClientConfig::new(Arc::new(crypto)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ca_issues_certificates_that_load_into_both_mesh_configs() {
        let dir = tempfile::tempdir().unwrap();
        create_ca(dir.path()).unwrap();
        let files = issue(dir.path(), "node-1", dir.path()).unwrap();

        assert!(mesh_server_config(&files).is_ok());
        assert!(mesh_client_config(&files).is_ok());
        assert!(
            create_ca(dir.path()).is_err(),
            "an existing CA is never overwritten"
        );
    }
}
