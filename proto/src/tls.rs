//! Mutual TLS for the gRPC services (raft, control API, bridges) under the cluster CA.
//!
//! These reuse the material the QUIC mesh already uses: the cluster CA certificate and a
//! node certificate issued by `region-node ca issue` (or `global-master`'s equivalent),
//! all PEM files. Both directions authenticate: a server only accepts clients whose
//! certificate the cluster CA signed, and a client only trusts a server the same CA
//! signed, so a process without a certificate from the cluster CA cannot take part.
//!
//! Crypto provider: tonic's client side uses ring (its `tls-ring` feature) unless a
//! process-default provider is installed, but its server side always asks rustls for the
//! process default. rustls infers that default only when exactly one provider is
//! compiled in, which holds while the workspace keeps aws-lc-rs out (`cargo tree -i
//! aws-lc-rs` finds nothing). If a dependency ever brings it in, a server binary must
//! call `rustls::crypto::ring::default_provider().install_default()` before serving, or
//! building the listener panics.

use std::path::{Path, PathBuf};

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tonic::transport::{Certificate, ClientTlsConfig, Identity, ServerTlsConfig};

/// The name every node certificate carries beside the node's own name, and the name
/// clients verify servers against. Servers are told apart by address and by the ids in
/// the protocol; the certificate proves cluster membership. Equal to the mesh's
/// `MESH_SERVER_NAME` so one certificate serves the mesh, raft and bridges.
pub const SERVER_NAME: &str = "starling.mesh";

/// Paths of a node's TLS material, in the layout of region-node's `ca issue`.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    /// The cluster CA certificate, the only root trusted in either direction.
    pub ca_cert: PathBuf,
    /// This process's certificate (chain), signed by the cluster CA.
    pub cert: PathBuf,
    /// The private key of `cert`.
    pub key: PathBuf,
}

/// Why TLS material could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("reading {what} {}: {source}", path.display())]
    Read {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{what} {} holds no usable PEM {expected}", path.display())]
    NoPem {
        what: &'static str,
        path: PathBuf,
        expected: &'static str,
    },
}

/// The server side: presents this node's certificate and requires every client to
/// present one signed by the cluster CA.
pub fn server_tls(files: &TlsFiles) -> Result<ServerTlsConfig, TlsError> {
    let ca = read_ca(&files.ca_cert)?;
    let identity = read_identity(files)?;

    // tonic requires client certificates once a client CA root is set
    // (`client_auth_optional` defaults to false), which is what keeps strangers out.
    Ok(ServerTlsConfig::new().identity(identity).client_ca_root(ca))
}

/// The client side: trusts only the cluster CA, verifies the server as `domain` (use
/// [`SERVER_NAME`] for Starling's own servers) and presents this node's certificate.
pub fn client_tls(files: &TlsFiles, domain: &str) -> Result<ClientTlsConfig, TlsError> {
    let ca = read_ca(&files.ca_cert)?;
    let identity = read_identity(files)?;

    // Only the CA given here is trusted: tonic adds the system's or webpki's public roots
    // only when asked (`with_native_roots` and friends), which this never does.
    Ok(ClientTlsConfig::new()
        .ca_certificate(ca)
        .identity(identity)
        .domain_name(domain))
}

fn read_ca(path: &Path) -> Result<Certificate, TlsError> {
    let pem = read("CA certificate", path)?;
    require_certificate("CA certificate", path, &pem)?;
    Ok(Certificate::from_pem(pem))
}

fn read_identity(files: &TlsFiles) -> Result<Identity, TlsError> {
    let cert = read("certificate", &files.cert)?;
    require_certificate("certificate", &files.cert, &cert)?;

    let key = read("private key", &files.key)?;
    if PrivateKeyDer::from_pem_slice(&key).is_err() {
        return Err(TlsError::NoPem {
            what: "private key",
            path: files.key.clone(),
            expected: "private key",
        });
    }
    Ok(Identity::from_pem(cert, key))
}

fn read(what: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        what,
        path: path.to_owned(),
        source,
    })
}

/// tonic parses PEM only when a listener or channel is built, and a wrong file then
/// surfaces as a vague transport error; checking here names the file at startup.
fn require_certificate(what: &'static str, path: &Path, pem: &[u8]) -> Result<(), TlsError> {
    let mut certs = CertificateDer::pem_slice_iter(pem);
    match certs.next() {
        Some(Ok(_)) => Ok(()),
        _ => Err(TlsError::NoPem {
            what,
            path: path.to_owned(),
            expected: "certificate",
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_or_malformed_files_are_named_in_the_error() {
        let dir = tempfile::tempdir().unwrap();
        let not_pem = dir.path().join("not.pem");
        std::fs::write(&not_pem, "hello").unwrap();

        let missing = TlsFiles {
            ca_cert: dir.path().join("absent.pem"),
            cert: not_pem.clone(),
            key: not_pem.clone(),
        };
        let err = server_tls(&missing).unwrap_err();
        assert!(matches!(
            err,
            TlsError::Read {
                what: "CA certificate",
                ..
            }
        ));
        assert!(err.to_string().contains("absent.pem"), "{err}");

        let malformed = TlsFiles {
            ca_cert: not_pem.clone(),
            ..missing
        };
        let err = client_tls(&malformed, SERVER_NAME).unwrap_err();
        assert!(matches!(
            err,
            TlsError::NoPem {
                what: "CA certificate",
                ..
            }
        ));
        assert!(err.to_string().contains("not.pem"), "{err}");
    }
}
