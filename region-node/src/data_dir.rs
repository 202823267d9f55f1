//! The node's data directory: small files that must survive a restart, written
//! atomically (temporary file, then rename) and readable by the owner only.

use std::io::Write;
use std::path::{Path, PathBuf};

use rand::distr::Alphanumeric;
use rand::Rng;
use serde::{Deserialize, Serialize};

/// Writes `bytes` to `path` so that readers see the old file or the new one, never a
/// torn one, with mode 0600 since these files hold secrets.
pub fn atomic_write(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;

    // tempfile creates the file with mode 0600 already.
    let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
    tmp.write_all(bytes)?;
    tmp.as_file().sync_all()?;
    tmp.persist(path).map_err(|e| e.error)?;
    Ok(())
}

/// A random alphanumeric string, for ids and secrets.
pub fn random_string(len: usize) -> String {
    rand::rng()
        .sample_iter(&Alphanumeric)
        .take(len)
        .map(char::from)
        .collect()
}

/// Secrets a node generates for itself on first start and keeps afterwards.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeSecrets {
    pub admin_token: String,
    pub cluster_secret: String,
}

pub struct DataDir {
    root: PathBuf,
}

impl DataDir {
    pub fn open(root: &Path) -> std::io::Result<Self> {
        std::fs::create_dir_all(root)?;
        Ok(Self {
            root: root.to_owned(),
        })
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.root.join(name)
    }

    /// The node's secrets, generated and stored on first use.
    pub fn secrets(&self) -> anyhow::Result<NodeSecrets> {
        let path = self.path("secrets.json");
        if path.exists() {
            return Ok(serde_json::from_slice(&std::fs::read(&path)?)?);
        }

        let secrets = NodeSecrets {
            admin_token: random_string(40),
            cluster_secret: random_string(48),
        };
        atomic_write(&path, &serde_json::to_vec_pretty(&secrets)?)?;
        Ok(secrets)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_generated_once_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        let first = DataDir::open(dir.path()).unwrap().secrets().unwrap();
        let second = DataDir::open(dir.path()).unwrap().secrets().unwrap();
        assert_eq!(first.admin_token, second.admin_token);
        assert_eq!(first.cluster_secret.len(), 48);

        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join("secrets.json"))
            .unwrap()
            .permissions();
        assert_eq!(mode.mode() & 0o777, 0o600);
    }
}
