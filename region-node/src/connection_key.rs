//! Connection keys that prove themselves.
//!
//! A key names the connection, the region and node that issued it and when, and
//! carries an HMAC under the cluster secret. Any node holding the secret can check a
//! key presented on resume without asking the node that issued it, which may be dead.
//!
//! Shape: `<connectionId>!<region>.<node>.<issuedMs hex>.<mac>`, with the mac as
//! unpadded base64url of the first 16 bytes of HMAC-SHA256. Connection ids, regions and
//! node ids never contain `!` or `.`, so the key splits unambiguously.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

const MAC_LEN: usize = 16;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectionKey {
    pub connection_id: String,
    pub region: String,
    pub node: String,
    pub issued_ms: u64,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KeyError {
    #[error("connection key is malformed")]
    Malformed,
    #[error("connection key was not issued by this cluster")]
    BadMac,
}

pub struct KeySigner {
    secret: Vec<u8>,
}

impl KeySigner {
    pub fn new(secret: &str) -> Self {
        Self {
            secret: secret.as_bytes().to_vec(),
        }
    }

    pub fn issue(&self, key: &ConnectionKey) -> String {
        let body = body(key);
        let mac = URL_SAFE_NO_PAD.encode(self.mac(&body));
        format!("{body}.{mac}")
    }

    pub fn verify(&self, text: &str) -> Result<ConnectionKey, KeyError> {
        let (body, mac) = text.rsplit_once('.').ok_or(KeyError::Malformed)?;
        let mac = URL_SAFE_NO_PAD
            .decode(mac)
            .map_err(|_| KeyError::Malformed)?;
        let key = parse_body(body)?;
        if !constant_time_eq::constant_time_eq(&mac, &self.mac(body)) {
            return Err(KeyError::BadMac);
        }
        Ok(key)
    }

    fn mac(&self, body: &str) -> [u8; MAC_LEN] {
        let mut mac = HmacSha256::new_from_slice(&self.secret).expect("hmac takes any key length");
        mac.update(body.as_bytes());
        let full = mac.finalize().into_bytes();
        let mut out = [0u8; MAC_LEN];
        out.copy_from_slice(&full[..MAC_LEN]);
        out
    }
}

fn body(key: &ConnectionKey) -> String {
    format!(
        "{}!{}.{}.{:x}",
        key.connection_id, key.region, key.node, key.issued_ms
    )
}

fn parse_body(body: &str) -> Result<ConnectionKey, KeyError> {
    let (connection_id, rest) = body.split_once('!').ok_or(KeyError::Malformed)?;
    let mut parts = rest.split('.');
    let (Some(region), Some(node), Some(issued), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(KeyError::Malformed);
    };
    Ok(ConnectionKey {
        connection_id: connection_id.to_owned(),
        region: region.to_owned(),
        node: node.to_owned(),
        issued_ms: u64::from_str_radix(issued, 16).map_err(|_| KeyError::Malformed)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> ConnectionKey {
        ConnectionKey {
            connection_id: "AbC123".into(),
            region: "eu".into(),
            node: "node-1".into(),
            issued_ms: 1_700_000_000_000,
        }
    }

    #[test]
    fn issued_keys_verify_on_any_holder_of_the_secret() {
        let text = KeySigner::new("s3cret").issue(&key());
        assert!(text.starts_with("AbC123!"));
        assert_eq!(KeySigner::new("s3cret").verify(&text), Ok(key()));
    }

    #[test]
    fn forged_or_broken_keys_are_refused() {
        let text = KeySigner::new("s3cret").issue(&key());
        assert_eq!(KeySigner::new("other").verify(&text), Err(KeyError::BadMac));

        let tampered = text.replacen("AbC123", "AbC124", 1);
        assert_eq!(
            KeySigner::new("s3cret").verify(&tampered),
            Err(KeyError::BadMac)
        );
        assert_eq!(
            KeySigner::new("s3cret").verify("junk"),
            Err(KeyError::Malformed)
        );
        assert_eq!(
            KeySigner::new("s3cret").verify("_____!ablyjs_test_fake-key____"),
            Err(KeyError::Malformed)
        );
    }
}
