//! What every REST answer looks like: the format the client asked for, the Ably error
//! shape, and the `envelope` wrapper browsers use (protocol.md §7.1).
//!
//! ably-js parses an error body only when the content type is exactly
//! `application/json` or `application/x-msgpack`, so no charset suffix is ever added,
//! and the error code travels in `X-Ably-ErrorCode` / `X-Ably-ErrorMessage` as well.

use std::convert::Infallible;

use axum::extract::FromRequestParts;
use axum::http::header::{ACCEPT, CONTENT_TYPE, LINK};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use tracing::{debug, warn};

use super::request::Params;
use crate::error::AblyError;
use crate::protocol::{codec, ErrorInfo, Format};

pub const ERROR_CODE: HeaderName = HeaderName::from_static("x-ably-errorcode");
pub const ERROR_MESSAGE: HeaderName = HeaderName::from_static("x-ably-errormessage");

/// Longest error message copied into a header; the body carries the whole text.
const MAX_HEADER_MESSAGE: usize = 512;

/// How a request wants to be answered.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Negotiation {
    /// From `Accept`: MessagePack when the client lists it, JSON otherwise.
    pub format: Format,
    /// From `?envelope=`: wrap successful bodies, encoded in this format.
    pub envelope: Option<Format>,
}

/// A successful answer before encoding.
#[derive(Debug)]
pub struct Reply<T> {
    pub status: StatusCode,
    pub body: T,
    /// A ready `Link` header value, for paginated answers.
    pub link: Option<String>,
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    error: &'a ErrorInfo,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Envelope<'a, T> {
    status_code: u16,
    response: &'a T,
    headers: EnvelopeHeaders<'a>,
}

#[derive(Serialize)]
struct EnvelopeHeaders<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    link: Option<&'a str>,
}

impl<T> Reply<T> {
    pub fn ok(body: T) -> Self {
        Self {
            status: StatusCode::OK,
            body,
            link: None,
        }
    }

    pub fn created(body: T) -> Self {
        Self {
            status: StatusCode::CREATED,
            ..Self::ok(body)
        }
    }

    pub fn with_link(self, link: Option<String>) -> Self {
        Self { link, ..self }
    }
}

impl Negotiation {
    pub fn new(headers: &HeaderMap, params: &Params) -> Self {
        let accepts_msgpack = headers
            .get_all(ACCEPT)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .any(|v| v.contains(Format::Msgpack.content_type()));
        Self {
            format: if accepts_msgpack {
                Format::Msgpack
            } else {
                Format::Json
            },
            envelope: params
                .get("envelope")
                .map(|value| Format::from_query(Some(value))),
        }
    }

    /// The format a successful body is encoded in: the envelope's, when there is one,
    /// since the client decodes the whole envelope with it.
    pub fn body_format(&self) -> Format {
        self.envelope.unwrap_or(self.format)
    }

    pub fn respond<T: Serialize>(&self, result: Result<Reply<T>, AblyError>) -> Response {
        match result {
            Ok(reply) => self.success(reply),
            Err(error) => error_response(self.format, &error),
        }
    }

    fn success<T: Serialize>(&self, reply: Reply<T>) -> Response {
        if reply.status == StatusCode::NO_CONTENT {
            return StatusCode::NO_CONTENT.into_response();
        }

        let Some(format) = self.envelope else {
            let mut response = encoded(reply.status, self.format, &reply.body);
            if let Some(link) = reply.link.as_deref().and_then(header_value) {
                response.headers_mut().insert(LINK, link);
            }
            return response;
        };

        // Browsers cannot read the status or Link header of a cross-origin answer, so
        // both travel inside a body that always arrives with 200.
        let envelope = Envelope {
            status_code: reply.status.as_u16(),
            response: &reply.body,
            headers: EnvelopeHeaders {
                link: reply.link.as_deref(),
            },
        };
        encoded(StatusCode::OK, format, &envelope)
    }
}

/// Never fails: a request that states no preference is answered in JSON.
impl<S: Send + Sync> FromRequestParts<S> for Negotiation {
    type Rejection = Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Infallible> {
        let params = Params::parse(parts.uri.query());
        Ok(Self::new(&parts.headers, &params))
    }
}

/// An error in Ably's REST shape. Errors are never enveloped: ably-js reads them from
/// the real status either way, and only a real 401 makes it renew a token.
pub fn error_response(format: Format, error: &AblyError) -> Response {
    let info = error.to_info();
    let status = StatusCode::from_u16(error.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    // The message may quote what the client sent, a token perhaps; the log must not.
    let logged = crate::redact::quoted(&info.message);
    if status.is_server_error() {
        warn!(error.code = info.code, error.message = %logged, "rest request failed");
    } else {
        debug!(error.code = info.code, error.message = %logged, "rest request refused");
    }

    let mut response = encoded(status, format, &ErrorBody { error: &info });
    let headers = response.headers_mut();
    headers.insert(ERROR_CODE, HeaderValue::from(info.code));
    if let Some(message) = header_value(&header_safe(&info.message)) {
        headers.insert(ERROR_MESSAGE, message);
    }
    response
}

/// A body in `format` with the exact content type ably-js compares against.
pub fn encoded<T: Serialize + ?Sized>(status: StatusCode, format: Format, body: &T) -> Response {
    let bytes = codec::encode_value(body, format);
    let content_type = HeaderValue::from_static(format.content_type());
    (status, [(CONTENT_TYPE, content_type)], bytes).into_response()
}

/// Error text reduced to what every HTTP stack accepts in a header: printable ASCII.
fn header_safe(message: &str) -> String {
    message
        .chars()
        .take(MAX_HEADER_MESSAGE)
        .map(|c| {
            if c == ' ' || c.is_ascii_graphic() {
                c
            } else {
                '?'
            }
        })
        .collect()
}

fn header_value(text: &str) -> Option<HeaderValue> {
    HeaderValue::from_str(text).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn negotiate(accept: Option<&str>, query: Option<&str>) -> Negotiation {
        let mut headers = HeaderMap::new();
        if let Some(accept) = accept {
            headers.insert(ACCEPT, HeaderValue::from_str(accept).unwrap());
        }
        Negotiation::new(&headers, &Params::parse(query))
    }

    #[test]
    fn msgpack_only_when_the_client_accepts_it() {
        assert_eq!(negotiate(None, None).format, Format::Json);
        assert_eq!(negotiate(Some("*/*"), None).format, Format::Json);
        assert_eq!(
            negotiate(Some("application/json"), None).format,
            Format::Json
        );
        assert_eq!(
            negotiate(Some("application/x-msgpack"), None).format,
            Format::Msgpack
        );
        assert_eq!(
            negotiate(Some("application/json, application/x-msgpack;q=0.5"), None).format,
            Format::Msgpack
        );
    }

    #[test]
    fn the_envelope_decides_the_body_format() {
        let n = negotiate(Some("application/x-msgpack"), Some("envelope=json"));
        assert_eq!(n.envelope, Some(Format::Json));
        assert_eq!(n.body_format(), Format::Json);
        assert_eq!(
            negotiate(None, Some("envelope=msgpack")).body_format(),
            Format::Msgpack
        );
        assert_eq!(negotiate(None, Some("limit=1")).envelope, None);
    }

    #[test]
    fn header_messages_are_printable_ascii() {
        assert_eq!(header_safe("bad \"név\"\n"), "bad \"n?v\"?");
        assert_eq!(header_safe(&"x".repeat(2000)).len(), MAX_HEADER_MESSAGE);
    }

    #[test]
    fn errors_carry_the_code_in_body_and_headers() {
        let response = error_response(Format::Json, &AblyError::NoCredentials);
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
        let headers = response.headers();
        assert_eq!(headers[CONTENT_TYPE], "application/json");
        assert_eq!(headers[ERROR_CODE], "40101");
        assert_eq!(headers[ERROR_MESSAGE], "no credentials given");
    }
}
