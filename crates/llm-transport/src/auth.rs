//! API keys: `Authorization: Bearer KEY`, or `?api_key=KEY` for browsers, whose `EventSource`
//! and `WebSocket` cannot set headers.
//!
//! Keys are kept as SHA-256 digests and compared in constant time (`subtle`) against every
//! configured key, so neither the position of the first differing byte nor the key's length nor which key
//! matched shows in the response time.

use http::{header, HeaderMap};
use sha2::{Digest, Sha256};
use subtle::{Choice, ConditionallySelectable, ConstantTimeEq};

use crate::error::{Error, Result};

/// The configured keys, hashed.
#[derive(Debug, Clone, Default)]
pub(crate) struct ApiKeys {
    digests: Vec<[u8; 32]>,
}

impl ApiKeys {
    pub(crate) fn new(keys: &[String]) -> Self {
        Self {
            digests: keys.iter().map(|key| digest(key)).collect(),
        }
    }

    /// Checks the request's credentials when keys are configured: which key it presented
    /// (its position among the configured keys), or `None` when no keys are configured.
    pub(crate) fn check(&self, headers: &HeaderMap, query: Option<&str>) -> Result<Option<usize>> {
        if self.digests.is_empty() {
            return Ok(None);
        }
        let presented = bearer(headers)
            .or_else(|| x_api_key(headers))
            .or_else(|| query.and_then(query_key));
        let Some(presented) = presented else {
            return Err(Error::Unauthorized(
                "no API key: send `Authorization: Bearer KEY` or `x-api-key: KEY` (browsers: \
                 `?api_key=KEY`)",
            ));
        };
        let presented = digest(&presented);
        let mut matched = Choice::from(0);
        let mut which = 0u64;
        for (index, key) in (0u64..).zip(&self.digests) {
            let hit = key.ct_eq(&presented);
            which.conditional_assign(&index, hit);
            matched |= hit;
        }
        if bool::from(matched) {
            Ok(Some(usize::try_from(which).unwrap_or_default()))
        } else {
            Err(Error::Unauthorized("the API key is not valid"))
        }
    }
}

fn digest(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

fn bearer(headers: &HeaderMap) -> Option<String> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim().to_owned())
}

/// Anthropic's header, which its SDK sends.
fn x_api_key(headers: &HeaderMap) -> Option<String> {
    let value = headers.get("x-api-key")?.to_str().ok()?;
    Some(value.trim().to_owned())
}

fn query_key(query: &str) -> Option<String> {
    form_urlencoded::parse(query.as_bytes())
        .find(|(name, _)| name == "api_key")
        .map(|(_, value)| value.into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(authorization: Option<&str>) -> HeaderMap {
        let mut headers = HeaderMap::new();
        if let Some(value) = authorization {
            headers.insert(
                header::AUTHORIZATION,
                value.parse().expect("a valid header value"),
            );
        }
        headers
    }

    #[test]
    fn keys_from_header_or_query() {
        let keys = ApiKeys::new(&["alpha".to_owned(), "beta key".to_owned()]);
        let ok =
            |auth: Option<&str>, query: Option<&str>| keys.check(&headers(auth), query).is_ok();
        assert!(ok(Some("Bearer alpha"), None));
        assert!(ok(Some("bearer beta key"), None));
        assert!(ok(None, Some("q=hi&api_key=beta%20key")));
        assert!(!ok(Some("Bearer alph"), None));
        assert!(!ok(Some("Basic alpha"), None));
        assert!(!ok(Some("alpha"), None));
        assert!(!ok(None, Some("key=alpha")));
        assert!(!ok(None, None));
        assert_eq!(
            ApiKeys::new(&[]).check(&headers(None), None).ok(),
            Some(None)
        );
        assert_eq!(
            keys.check(&headers(Some("Bearer beta key")), None).ok(),
            Some(Some(1))
        );
    }

    #[test]
    fn anthropic_clients_send_the_key_as_x_api_key() {
        let keys = ApiKeys::new(&["alpha".to_owned()]);
        let check = |value: &str| {
            let mut headers = HeaderMap::new();
            headers.insert("x-api-key", value.parse().expect("a valid header value"));
            keys.check(&headers, None)
        };
        assert!(check("alpha").is_ok());
        assert!(matches!(check("beta"), Err(Error::Unauthorized(_))));
    }
}
