//! Who is calling: API keys or tokens for the channel endpoints, the admin token for
//! the admin API.

use std::convert::Infallible;
use std::net::SocketAddr;

use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use axum::http::HeaderMap;
use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;

use super::request::Params;
use crate::auth::{key_identity, token_identity, Identity};
use crate::error::AblyError;
use crate::node::Node;

/// What a request presented, before it is checked.
#[derive(Debug, PartialEq, Eq)]
enum Credentials {
    /// A full key string `appId.keyId:secret`.
    Key(String),
    /// The token string itself (a Bearer header carries it base64-encoded).
    Token(String),
}

/// The address of the peer, when the server was started with connect info (tests that
/// call the router directly have none, and are treated as remote).
#[derive(Debug, Clone, Copy)]
pub struct Peer(pub Option<SocketAddr>);

impl<S: Send + Sync> FromRequestParts<S> for Peer {
    type Rejection = Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Infallible> {
        let addr = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|info| info.0);
        Ok(Self(addr))
    }
}

/// Authenticates a request by basic auth, a bearer token, `?key=` or
/// `?access_token=`. The clientId of a key's request is decided per endpoint.
pub fn authenticate(
    node: &Node,
    headers: &HeaderMap,
    params: &Params,
) -> Result<Identity, AblyError> {
    match credentials(headers, params)? {
        Credentials::Key(key) => key_identity(&node.apps, &key, None),
        Credentials::Token(token) => token_identity(node, &token, None),
    }
}

/// Checks the admin API's bearer token, or lets a loopback peer without credentials
/// through when the configuration allows it. A request that carries an `Origin`
/// comes from a web page, which is never trusted for being on loopback, and a wrong
/// token is refused wherever it comes from.
pub fn authorize_admin(node: &Node, headers: &HeaderMap, peer: Peer) -> Result<(), AblyError> {
    let presented = header_text(headers)
        .and_then(|value| strip_scheme(value, "Bearer"))
        .map(str::trim);
    let loopback = peer.0.is_some_and(|addr| addr.ip().is_loopback());
    let from_browser = headers.contains_key(axum::http::header::ORIGIN);
    if presented.is_none() && loopback && !from_browser && node.config.admin.loopback_without_token
    {
        return Ok(());
    }

    match presented {
        Some(token)
            if constant_time_eq::constant_time_eq(
                token.as_bytes(),
                node.admin_token.as_bytes(),
            ) =>
        {
            Ok(())
        }
        _ => Err(AblyError::AdminUnauthorized),
    }
}

/// The `Authorization` header wins over query parameters, as in Ably.
fn credentials(headers: &HeaderMap, params: &Params) -> Result<Credentials, AblyError> {
    if let Some(value) = header_text(headers) {
        if let Some(encoded) = strip_scheme(value, "Basic") {
            return decode_basic(encoded.trim()).map(Credentials::Key);
        }
        if let Some(token) = strip_scheme(value, "Bearer") {
            return Ok(Credentials::Token(decode_bearer(token.trim())));
        }
        return Err(AblyError::InvalidCredentials(
            "unsupported authorization scheme".into(),
        ));
    }

    if let Some(key) = params.get("key") {
        return Ok(Credentials::Key(key.to_owned()));
    }
    if let Some(token) = params.get("access_token") {
        return Ok(Credentials::Token(token.to_owned()));
    }
    Err(AblyError::NoCredentials)
}

fn header_text(headers: &HeaderMap) -> Option<&str> {
    headers.get(AUTHORIZATION).and_then(|v| v.to_str().ok())
}

/// The rest of `value` after `scheme` and a space; schemes are case-insensitive.
fn strip_scheme<'a>(value: &'a str, scheme: &str) -> Option<&'a str> {
    let (given, rest) = value.split_once(' ')?;
    given.eq_ignore_ascii_case(scheme).then_some(rest)
}

/// ably-js sends `Bearer base64(token)`; other clients send the token as is. Tokens
/// hold `.`, which base64 never does, so the two cannot be confused.
fn decode_bearer(value: &str) -> String {
    BASE64
        .decode(value)
        .ok()
        .and_then(|bytes| String::from_utf8(bytes).ok())
        .unwrap_or_else(|| value.to_owned())
}

fn decode_basic(encoded: &str) -> Result<String, AblyError> {
    let bad = || AblyError::InvalidCredentials("basic credentials are not valid base64".into());
    let bytes = BASE64.decode(encoded).map_err(|_| bad())?;
    String::from_utf8(bytes).map_err(|_| bad())
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn with_auth(value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(AUTHORIZATION, HeaderValue::from_str(value).unwrap());
        headers
    }

    #[test]
    fn basic_auth_carries_the_full_key() {
        let encoded = BASE64.encode("app.key:secret");
        let found = credentials(&with_auth(&format!("Basic {encoded}")), &Params::default());
        assert_eq!(found, Ok(Credentials::Key("app.key:secret".into())));

        let lower = credentials(&with_auth(&format!("basic {encoded}")), &Params::default());
        assert_eq!(lower, Ok(Credentials::Key("app.key:secret".into())));
    }

    #[test]
    fn the_key_param_works_without_a_header() {
        let params = Params::parse(Some("key=app.key%3Asecret"));
        let found = credentials(&HeaderMap::new(), &params);
        assert_eq!(found, Ok(Credentials::Key("app.key:secret".into())));
    }

    #[test]
    fn tokens_and_missing_or_broken_credentials() {
        let encoded = format!("Bearer {}", BASE64.encode("st1.abc.def"));
        let token = credentials(&with_auth(&encoded), &Params::default());
        assert_eq!(token, Ok(Credentials::Token("st1.abc.def".into())));
        let raw = credentials(&with_auth("Bearer a.b.c"), &Params::default());
        assert_eq!(raw, Ok(Credentials::Token("a.b.c".into())));
        let token = credentials(&HeaderMap::new(), &Params::parse(Some("access_token=x")));
        assert_eq!(token, Ok(Credentials::Token("x".into())));

        let none = credentials(&HeaderMap::new(), &Params::default()).unwrap_err();
        assert_eq!(none, AblyError::NoCredentials);
        let garbage = credentials(&with_auth("Basic !!!"), &Params::default()).unwrap_err();
        assert_eq!(garbage.code(), 40101);
        let scheme = credentials(&with_auth("Digest x"), &Params::default()).unwrap_err();
        assert_eq!(scheme.code(), 40101);
    }
}
