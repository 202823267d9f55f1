//! TLS for tests of the client TLS listener: a CA made here, server certificates it
//! issues for `localhost` and 127.0.0.1, and wss/https clients that trust only that CA
//! and report which certificate the server showed.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context};
use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, RootCertStore};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

use crate::{Client, Format, WAIT};

/// A certificate authority that lives for one test.
pub struct TestCa {
    issuer: Issuer<'static, KeyPair>,
    /// The CA certificate, PEM.
    pub pem: String,
}

/// A server certificate and its key, PEM.
pub struct ServerCert {
    pub cert_pem: String,
    pub key_pem: String,
}

impl TestCa {
    pub fn new(name: &str) -> anyhow::Result<TestCa> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let key = KeyPair::generate()?;
        let pem = params.self_signed(&key)?.pem();
        Ok(TestCa {
            issuer: Issuer::new(params, key),
            pem,
        })
    }

    /// A certificate for `localhost` and 127.0.0.1 named `common_name`, with a key of
    /// its own (so two issued certificates always differ).
    pub fn issue(&self, common_name: &str) -> anyhow::Result<ServerCert> {
        let names = vec!["localhost".to_owned(), "127.0.0.1".to_owned()];
        let mut params = CertificateParams::new(names)?;
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(ServerCert {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }

    /// A TLS connector that trusts this CA only.
    pub fn connector(&self) -> anyhow::Result<TlsConnector> {
        let mut roots = RootCertStore::empty();
        let der = CertificateDer::from_pem_slice(self.pem.as_bytes())?;
        roots.add(der)?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(TlsConnector::from(Arc::new(config)))
    }
}

impl ServerCert {
    /// The DER of the certificate, to compare with what a server presented.
    pub fn der(&self) -> anyhow::Result<Vec<u8>> {
        Ok(CertificateDer::from_pem_slice(self.cert_pem.as_bytes())?.to_vec())
    }

    /// Writes `cert.pem` and `key.pem` into `dir` as a certificate tool would: each
    /// to a temporary name, then renamed over the old file.
    pub fn install(&self, dir: &Path) -> anyhow::Result<(PathBuf, PathBuf)> {
        let cert = dir.join("cert.pem");
        let key = dir.join("key.pem");
        for (path, text) in [(&key, &self.key_pem), (&cert, &self.cert_pem)] {
            let temporary = path.with_extension("new");
            std::fs::write(&temporary, text)?;
            std::fs::rename(&temporary, path)?;
        }
        Ok((cert, key))
    }
}

/// A TLS connection to `addr` for `localhost`, and the certificate the server showed.
pub async fn connect(
    connector: &TlsConnector,
    addr: SocketAddr,
) -> anyhow::Result<(TlsStream<TcpStream>, Vec<u8>)> {
    let tcp = TcpStream::connect(addr)
        .await
        .with_context(|| format!("connecting to {addr}"))?;
    let name = ServerName::try_from("localhost")?;
    let tls = tokio::time::timeout(WAIT, connector.connect(name, tcp))
        .await
        .context("TLS handshake timed out")?
        .context("TLS handshake")?;
    let shown = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|chain| chain.first())
        .map(|cert| cert.to_vec())
        .context("the server showed no certificate")?;
    Ok((tls, shown))
}

/// `GET path` over https: the status and the body.
pub async fn https_get(
    connector: &TlsConnector,
    addr: SocketAddr,
    path: &str,
) -> anyhow::Result<(u16, String)> {
    let (tls, _) = connect(connector, addr).await?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tls)).await?;
    tokio::spawn(connection);
    let request = hyper::Request::get(path)
        .header("host", format!("localhost:{}", addr.port()))
        .body(Empty::<Bytes>::new())?;
    let response = tokio::time::timeout(WAIT, sender.send_request(request))
        .await
        .context("https request timed out")??;
    let status = response.status().as_u16();
    let body = response.into_body().collect().await?.to_bytes();
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

/// A wss connection with `key`, once CONNECTED.
pub async fn connect_wss(
    connector: &TlsConnector,
    addr: SocketAddr,
    key: &str,
    format: Format,
) -> anyhow::Result<Client> {
    let (tls, _) = connect(connector, addr).await?;
    let query = format!("key={}", crate::client::encode_component(key));
    let client = Client::open_over(Box::new(tls), "wss", addr, &query, format).await?;
    let client = client.until_connected().await?;
    if client.connection_id().is_empty() {
        bail!("CONNECTED without a connection id");
    }
    Ok(client)
}
