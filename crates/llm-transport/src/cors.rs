//! Cross-origin requests from browsers: the allowed origins, preflight answers, and the headers
//! added to every response to an allowed origin.

use http::{header, HeaderMap, HeaderValue, Response, StatusCode};

use crate::body::ResponseBody;

/// Request headers a browser may send: auth, JSON bodies, resume ids and request ids.
const ALLOW_HEADERS: &str = "authorization, content-type, last-event-id, x-request-id, \
                             x-api-key, anthropic-version, anthropic-beta, \
                             anthropic-dangerous-direct-browser-access";
const ALLOW_METHODS: &str = "GET, POST, OPTIONS";
/// Response headers scripts may read.
const EXPOSE_HEADERS: &str = "x-request-id, retry-after, x-ignored-fields, \
    x-ratelimit-limit-requests, x-ratelimit-remaining-requests, x-ratelimit-reset-requests, \
    x-ratelimit-limit-tokens, x-ratelimit-remaining-tokens, x-ratelimit-reset-tokens";

/// The configured origins.
#[derive(Debug, Clone, Default)]
pub(crate) struct Cors {
    any: bool,
    origins: Vec<String>,
}

impl Cors {
    pub(crate) fn new(origins: &[String]) -> Self {
        Self {
            any: origins.iter().any(|origin| origin == "*"),
            origins: origins
                .iter()
                .map(|origin| origin.trim_end_matches('/').to_ascii_lowercase())
                .collect(),
        }
    }

    /// The request's origin when it is allowed.
    pub(crate) fn allowed_origin(&self, headers: &HeaderMap) -> Option<HeaderValue> {
        let origin = headers.get(header::ORIGIN)?;
        let text = origin.to_str().ok()?;
        (self.any || self.origins.iter().any(|o| o.eq_ignore_ascii_case(text)))
            .then(|| origin.clone())
    }

    /// Whether a request is a preflight (`OPTIONS` with `Access-Control-Request-Method`).
    pub(crate) fn is_preflight(method: &http::Method, headers: &HeaderMap) -> bool {
        method == http::Method::OPTIONS
            && headers.contains_key(header::ACCESS_CONTROL_REQUEST_METHOD)
    }

    /// The answer to a preflight: 204, with the permissions when the origin is allowed (without
    /// them the browser refuses the real request).
    pub(crate) fn preflight(&self, headers: &HeaderMap) -> Response<ResponseBody> {
        let mut response = Response::new(ResponseBody::full(Vec::new()));
        *response.status_mut() = StatusCode::NO_CONTENT;
        if let Some(origin) = self.allowed_origin(headers) {
            let out = response.headers_mut();
            out.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
            out.insert(
                header::ACCESS_CONTROL_ALLOW_METHODS,
                HeaderValue::from_static(ALLOW_METHODS),
            );
            out.insert(
                header::ACCESS_CONTROL_ALLOW_HEADERS,
                HeaderValue::from_static(ALLOW_HEADERS),
            );
            out.insert(
                header::ACCESS_CONTROL_MAX_AGE,
                HeaderValue::from_static("86400"),
            );
            out.insert(header::VARY, HeaderValue::from_static("origin"));
        }
        response
    }

    /// Adds the CORS headers of an actual (non-preflight) response.
    pub(crate) fn decorate(&self, origin: Option<HeaderValue>, out: &mut HeaderMap) {
        let Some(origin) = origin else { return };
        out.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
        out.insert(
            header::ACCESS_CONTROL_EXPOSE_HEADERS,
            HeaderValue::from_static(EXPOSE_HEADERS),
        );
        out.append(header::VARY, HeaderValue::from_static("origin"));
    }
}
