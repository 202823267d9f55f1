//! The cluster CA and member (or operator) certificates, in the same layout as
//! `region-node ca create` / `ca issue`, so one CA serves the mesh, raft, the Control
//! API and the bridges.

use std::path::Path;

use anyhow::{bail, Context};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use starling_proto::tls::{TlsFiles, SERVER_NAME};

use crate::files::atomic_write;

const CA_CERT: &str = "ca.pem";
const CA_KEY: &str = "ca.key";

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

/// Issues a certificate for `name` (a member such as `gm-1`, or `operator`) under the
/// CA in `ca_dir`, writing `<name>.pem` and `<name>.key` into `out`. The certificate
/// names [`SERVER_NAME`], which every client verifies, and `name`.
pub fn issue(ca_dir: &Path, name: &str, out: &Path) -> anyhow::Result<TlsFiles> {
    let ca_pem = std::fs::read_to_string(ca_dir.join(CA_CERT))
        .with_context(|| format!("reading {}", ca_dir.join(CA_CERT).display()))?;
    let ca_key = std::fs::read_to_string(ca_dir.join(CA_KEY))
        .with_context(|| format!("reading {}", ca_dir.join(CA_KEY).display()))?;
    let issuer = Issuer::from_ca_cert_pem(&ca_pem, KeyPair::from_pem(&ca_key)?)?;

    let mut params = CertificateParams::new(vec![SERVER_NAME.to_owned(), name.to_owned()])?;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ca_issues_certificates_the_grpc_configurations_accept() {
        let dir = tempfile::tempdir().unwrap();
        create_ca(dir.path()).unwrap();
        assert!(create_ca(dir.path()).is_err(), "a CA was overwritten");
        let files = issue(dir.path(), "gm-1", dir.path()).unwrap();
        starling_proto::tls::server_tls(&files).unwrap();
        starling_proto::tls::client_tls(&files, SERVER_NAME).unwrap();
    }
}
