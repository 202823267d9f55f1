//! The optional TLS listener for clients (wss and https): a rustls acceptor in front of
//! the same router as the plain listener, with a certificate that is read again from
//! its files while the node runs.
//!
//! Handshakes run in their own tasks, so a client that stalls mid-handshake holds up
//! nobody; only finished handshakes reach the server. The certificate is picked per
//! handshake from a slot the reload task swaps: connections already open keep the
//! session they negotiated, later handshakes see the new certificate.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use parking_lot::RwLock;
use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;
use tracing::{debug, info, warn};

use crate::config::ClientTlsConfig;

/// A client that has not finished its handshake by then is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Finished handshakes waiting for the server to take them.
const ACCEPTED_BACKLOG: usize = 128;

/// The bound TLS listener: what `axum::serve` accepts connections from.
pub struct TlsListener {
    local: SocketAddr,
    accepted: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
}

/// Binds the TLS listener, loads the certificate (a missing or bad one is a startup
/// error naming the file) and starts the tasks that accept, handshake and reload.
pub async fn bind(config: &ClientTlsConfig, listen: SocketAddr) -> anyhow::Result<TlsListener> {
    let (cert, key) = match (&config.cert, &config.key) {
        (Some(cert), Some(key)) => (cert.clone(), key.clone()),
        _ => anyhow::bail!("client_tls.listen needs client_tls.cert and client_tls.key"),
    };
    let files = CertFiles { cert, key };
    let (loaded, contents) = files
        .load()
        .context("loading the client TLS certificate (client_tls.cert, client_tls.key)")?;
    let slot = Arc::new(CertSlot(RwLock::new(Arc::new(loaded))));

    let tcp = TcpListener::bind(listen)
        .await
        .with_context(|| format!("binding client TLS listener {listen}"))?;
    let local = tcp.local_addr()?;
    let acceptor = TlsAcceptor::from(server_config(slot.clone())?);
    let (tx, accepted) = mpsc::channel(ACCEPTED_BACKLOG);
    tokio::spawn(accept_loop(tcp, acceptor, tx));

    let every = Duration::from_millis(config.reload_check_ms);
    tokio::spawn(reload_loop(files, contents, slot, every));
    Ok(TlsListener { local, accepted })
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.accepted.recv().await {
            Some(accepted) => accepted,
            // The accept loop only ends with the runtime.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local)
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn server_config(slot: Arc<CertSlot>) -> anyhow::Result<Arc<ServerConfig>> {
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .context("client TLS protocol versions")?
        .with_no_client_auth()
        .with_cert_resolver(slot);
    // WebSockets need HTTP/1.1 (an h2 WebSocket needs extended CONNECT); REST works
    // over it just as well.
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

async fn accept_loop(
    tcp: TcpListener,
    acceptor: TlsAcceptor,
    accepted: mpsc::Sender<(TlsStream<TcpStream>, SocketAddr)>,
) {
    loop {
        let (stream, peer) = match tcp.accept().await {
            Ok(connection) => connection,
            Err(error) => {
                // Out of file descriptors and the like: back off instead of spinning.
                warn!(%error, "client TLS accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let acceptor = acceptor.clone();
        let accepted = accepted.clone();
        tokio::spawn(async move {
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                Ok(Ok(tls)) => {
                    let _ = accepted.send((tls, peer)).await;
                }
                Ok(Err(error)) => debug!(%peer, %error, "client TLS handshake failed"),
                Err(_) => debug!(%peer, "client TLS handshake timed out"),
            }
        });
    }
}

/// The certificate every new handshake gets.
#[derive(Debug)]
struct CertSlot(RwLock<Arc<CertifiedKey>>);

impl ResolvesServerCert for CertSlot {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.read().clone())
    }
}

struct CertFiles {
    cert: PathBuf,
    key: PathBuf,
}

/// Whether `cert` and `key` load as a certificate and its key, as the listener will
/// load them (for `--check-config` and the checks before startup).
pub fn check(cert: &Path, key: &Path) -> anyhow::Result<()> {
    let files = CertFiles {
        cert: cert.to_owned(),
        key: key.to_owned(),
    };
    files.load().map(drop)
}

/// The raw bytes of both files, to tell a change from a reread.
type Contents = (Vec<u8>, Vec<u8>);

impl CertFiles {
    fn read(&self) -> anyhow::Result<Contents> {
        let read = |path: &Path| {
            std::fs::read(path).with_context(|| format!("reading {}", path.display()))
        };
        Ok((read(&self.cert)?, read(&self.key)?))
    }

    fn load(&self) -> anyhow::Result<(CertifiedKey, Contents)> {
        let contents = self.read()?;
        let certified = self.parse(&contents)?;
        Ok((certified, contents))
    }

    fn parse(&self, (cert, key): &Contents) -> anyhow::Result<CertifiedKey> {
        let chain = CertificateDer::pem_slice_iter(cert)
            .collect::<Result<Vec<_>, _>>()
            .with_context(|| format!("parsing certificates in {}", self.cert.display()))?;
        if chain.is_empty() {
            anyhow::bail!("{} holds no PEM certificate", self.cert.display());
        }
        let key = PrivateKeyDer::from_pem_slice(key)
            .with_context(|| format!("parsing the private key in {}", self.key.display()))?;
        CertifiedKey::from_der(chain, key, &provider()).with_context(|| {
            format!(
                "{} and {} are not a usable certificate and key",
                self.cert.display(),
                self.key.display()
            )
        })
    }
}

/// Rereads the files every `every`; contents that changed and load become the
/// certificate. Files that don't load (say, the certificate is replaced but its key
/// not yet) leave the old certificate in place and are tried again next time.
async fn reload_loop(files: CertFiles, mut loaded: Contents, slot: Arc<CertSlot>, every: Duration) {
    let mut refused: Option<Contents> = None;
    let mut ticker = tokio::time::interval(every);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let contents = match files.read() {
            Ok(contents) => contents,
            Err(error) => {
                debug!(error = %format!("{error:#}"), "client TLS files unreadable; keeping the certificate");
                continue;
            }
        };
        if contents == loaded || refused.as_ref() == Some(&contents) {
            continue;
        }
        match files.parse(&contents) {
            Ok(certified) => {
                *slot.0.write() = Arc::new(certified);
                loaded = contents;
                refused = None;
                info!(cert = %files.cert.display(), "client TLS certificate reloaded");
            }
            Err(error) => {
                warn!(error = %format!("{error:#}"), "client TLS files changed but do not load; keeping the certificate");
                refused = Some(contents);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files(dir: &Path, cert: &str, key: &str) -> CertFiles {
        let files = CertFiles {
            cert: dir.join("cert.pem"),
            key: dir.join("key.pem"),
        };
        std::fs::write(&files.cert, cert).unwrap();
        std::fs::write(&files.key, key).unwrap();
        files
    }

    #[test]
    fn a_matching_pair_loads_and_bad_files_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let one = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        let two = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        let good = files(
            dir.path(),
            &one.cert.pem(),
            &one.signing_key.serialize_pem(),
        );
        assert!(good.load().is_ok());

        let mismatched = files(
            dir.path(),
            &one.cert.pem(),
            &two.signing_key.serialize_pem(),
        );
        assert!(mismatched.load().is_err());

        let garbage = files(dir.path(), "not a certificate", "not a key");
        let error = format!("{:#}", garbage.load().err().unwrap());
        assert!(error.contains("cert.pem"), "{error}");

        let missing = CertFiles {
            cert: dir.path().join("absent.pem"),
            key: dir.path().join("key.pem"),
        };
        let error = format!("{:#}", missing.load().err().unwrap());
        assert!(error.contains("absent.pem"), "{error}");
    }
}
