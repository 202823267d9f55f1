//! Shared by the integration tests: a throwaway cluster CA, node certificates in the
//! layout of region-node's `ca create` / `ca issue`, and a TLS server on loopback.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use starling_proto::tls::{client_tls, TlsFiles, SERVER_NAME};
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::transport::server::Router;
use tonic::transport::{Channel, Endpoint};

/// Generous enough for a busy 2-core machine, short enough that a refused handshake
/// that hangs instead of failing shows up as a failure rather than a stuck run.
const DEADLINE: Duration = Duration::from_secs(10);

/// Writes `ca.pem` and `ca.key` into `dir`, as `region-node ca create` does.
pub fn create_ca(dir: &Path) {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params
        .distinguished_name
        .push(DnType::CommonName, "Starling test CA");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];

    let key = KeyPair::generate().unwrap();
    let cert = params.self_signed(&key).unwrap();
    std::fs::write(dir.join("ca.pem"), cert.pem()).unwrap();
    std::fs::write(dir.join("ca.key"), key.serialize_pem()).unwrap();
}

/// Issues `<name>.pem` / `<name>.key` into `dir` under the CA in `dir`, with the SANs
/// region-node gives node certificates: the shared server name plus the node's name.
pub fn issue(dir: &Path, name: &str) -> TlsFiles {
    let ca_pem = std::fs::read_to_string(dir.join("ca.pem")).unwrap();
    let ca_key = KeyPair::from_pem(&std::fs::read_to_string(dir.join("ca.key")).unwrap()).unwrap();
    let issuer = Issuer::from_ca_cert_pem(&ca_pem, ca_key).unwrap();

    let mut params = CertificateParams::new(vec![SERVER_NAME.to_owned(), name.to_owned()]).unwrap();
    params.distinguished_name.push(DnType::CommonName, name);
    let key = KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, &issuer).unwrap();

    let files = TlsFiles {
        ca_cert: dir.join("ca.pem"),
        cert: dir.join(format!("{name}.pem")),
        key: dir.join(format!("{name}.key")),
    };
    std::fs::write(&files.cert, cert.pem()).unwrap();
    std::fs::write(&files.key, key.serialize_pem()).unwrap();
    files
}

/// A fresh CA in a temporary directory, dropped (and deleted) with the test.
pub fn new_ca() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    create_ca(dir.path());
    dir
}

/// Serves `router` on 127.0.0.1 with a system-chosen port until the test's runtime
/// shuts down, and returns the bound address.
pub async fn spawn(router: Router) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(router.serve_with_incoming(TcpListenerStream::new(listener)));
    addr
}

/// Dials `addr` over mutual TLS with `files`, verifying the server as a cluster member.
pub async fn connect(
    addr: SocketAddr,
    files: &TlsFiles,
) -> Result<Channel, tonic::transport::Error> {
    endpoint(addr)
        .tls_config(client_tls(files, SERVER_NAME).unwrap())?
        .connect()
        .await
}

/// An endpoint for `addr` with deadlines, before any TLS is configured.
pub fn endpoint(addr: SocketAddr) -> Endpoint {
    Endpoint::from_shared(format!("https://{addr}"))
        .unwrap()
        .connect_timeout(DEADLINE)
        .timeout(DEADLINE)
}
