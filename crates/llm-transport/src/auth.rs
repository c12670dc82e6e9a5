//! API keys: `Authorization: Bearer KEY`, `x-api-key: KEY`, or `?api_key=KEY` for browsers,
//! whose `EventSource` and `WebSocket` cannot set headers.
//!
//! Keys come from `--api-key` flags (named `key-1`, `key-2`, ...) and from an API keys file
//! (TOML), where each key has a name, its own rate limits and, optionally, the models it may
//! use. The file is read again on [`Server::reload_keys`](crate::Server::reload_keys) (SIGHUP
//! in the server binary); a file that does not read leaves the table in force unchanged.
//!
//! Keys are kept as SHA-256 digests (the file may hold the digest instead of the key) and
//! compared in constant time (`subtle`) against every configured key, so neither the position
//! of the first differing byte nor the key's length nor which key matched shows in the
//! response time.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use http::{header, HeaderMap};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use subtle::{Choice, ConditionallySelectable, ConstantTimeEq};

use crate::config::RateLimits;
use crate::error::{Error, Result};

/// One API key: who it is, what it may spend, and which models it may use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct KeyEntry {
    /// Its name in logs, metrics and rate-limit state.
    pub(crate) name: String,
    digest: [u8; 32],
    /// Its limits: its own where the file sets them, the server's defaults otherwise.
    pub(crate) limits: RateLimits,
    /// The models it may use; `None` for any.
    pub(crate) models: Option<Vec<String>>,
}

impl KeyEntry {
    /// Whether the key may use the model named `model`.
    pub(crate) fn may_use(&self, model: &str) -> bool {
        self.models
            .as_ref()
            .is_none_or(|models| models.iter().any(|allowed| allowed == model))
    }
}

/// The configured keys, hashed.
#[derive(Debug, Clone, Default)]
pub(crate) struct ApiKeys {
    entries: Vec<Arc<KeyEntry>>,
    /// Set when keys are required even though none is configured: a keys file with no keys
    /// refuses every request rather than leaving the API open.
    closed: bool,
}

/// Why an API keys file was not taken.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeysFileError {
    /// The file could not be read.
    #[error("could not read the API keys file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not valid TOML of the expected shape, or holds a contradiction.
    #[error("the API keys file {path} is not valid: {message}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong, and where.
        message: String,
    },
}

/// The file's shape: `[[keys]]` tables.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct KeysFile {
    #[serde(default)]
    keys: Vec<FileKey>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileKey {
    name: String,
    /// The key itself, or
    key: Option<String>,
    /// its SHA-256 digest in hex, so that the file holds no secret.
    sha256: Option<String>,
    requests_per_minute: Option<FileLimit>,
    tokens_per_minute: Option<FileLimit>,
    concurrency: Option<FileLimit>,
    models: Option<Vec<String>>,
}

/// A limit in the file: a positive number, or `"unlimited"` to lift a server default.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum FileLimit {
    Count(i64),
    Word(String),
}

impl FileLimit {
    fn resolve(
        value: Option<&Self>,
        default: Option<u32>,
        what: &str,
    ) -> Result<Option<u32>, String> {
        match value {
            None => Ok(default),
            Some(Self::Word(word)) if word == "unlimited" => Ok(None),
            Some(Self::Count(count)) => u32::try_from(*count)
                .ok()
                .filter(|count| *count > 0)
                .map(Some)
                .ok_or_else(|| {
                    format!("`{what}` must be a positive number or \"unlimited\", got {count}")
                }),
            Some(Self::Word(word)) => Err(format!(
                "`{what}` must be a positive number or \"unlimited\", got \"{word}\""
            )),
        }
    }
}

impl ApiKeys {
    /// The keys of `--api-key` flags, named `key-1`, `key-2`, ..., with the default limits.
    pub(crate) fn new(keys: &[String], limits: RateLimits) -> Self {
        let entries = (1..)
            .zip(keys)
            .map(|(number, key)| {
                Arc::new(KeyEntry {
                    name: format!("key-{number}"),
                    digest: digest(key),
                    limits,
                    models: None,
                })
            })
            .collect();
        Self {
            entries,
            closed: false,
        }
    }

    /// The flags' keys and those of the keys file at `path`, whose limits default to
    /// `limits`.
    ///
    /// # Errors
    /// [`KeysFileError`] when the file cannot be read, is not valid, names a key twice, or
    /// holds a key the flags hold too.
    pub(crate) fn with_file(
        keys: &[String],
        limits: RateLimits,
        path: &Path,
    ) -> std::result::Result<Self, KeysFileError> {
        let text = std::fs::read_to_string(path).map_err(|source| KeysFileError::Read {
            path: path.to_owned(),
            source,
        })?;
        let invalid = |message: String| KeysFileError::Invalid {
            path: path.to_owned(),
            message,
        };
        let file: KeysFile = toml::from_str(&text).map_err(|error| invalid(error.to_string()))?;
        let mut table = Self::new(keys, limits);
        let mut names: HashSet<String> = table.entries.iter().map(|e| e.name.clone()).collect();
        let mut digests: HashSet<[u8; 32]> = table.entries.iter().map(|e| e.digest).collect();
        for (index, key) in file.keys.into_iter().enumerate() {
            let entry = file_entry(key, limits)
                .map_err(|message| invalid(format!("keys[{index}]: {message}")))?;
            if !names.insert(entry.name.clone()) {
                return Err(invalid(format!(
                    "keys[{index}]: the name `{}` is used twice",
                    entry.name
                )));
            }
            if !digests.insert(entry.digest) {
                return Err(invalid(format!(
                    "keys[{index}] (`{}`): the same key is listed twice",
                    entry.name
                )));
            }
            table.entries.push(Arc::new(entry));
        }
        table.closed = table.entries.is_empty();
        Ok(table)
    }

    /// How many keys there are.
    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    /// Checks the request's credentials when keys are required: the key it presented, or
    /// `None` when the API is open.
    pub(crate) fn check(
        &self,
        headers: &HeaderMap,
        query: Option<&str>,
    ) -> Result<Option<Arc<KeyEntry>>> {
        if self.entries.is_empty() && !self.closed {
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
        for (index, entry) in (0u64..).zip(&self.entries) {
            let hit = entry.digest.ct_eq(&presented);
            which.conditional_assign(&index, hit);
            matched |= hit;
        }
        if bool::from(matched) {
            let index = usize::try_from(which).unwrap_or_default();
            Ok(self.entries.get(index).cloned())
        } else {
            Err(Error::Unauthorized("the API key is not valid"))
        }
    }
}

/// One `[[keys]]` table as an entry, its limits resolved against the defaults.
fn file_entry(key: FileKey, defaults: RateLimits) -> Result<KeyEntry, String> {
    let name = key.name.trim().to_owned();
    if name.is_empty() || name.len() > 64 || name.chars().any(|c| c.is_control() || c == ' ') {
        return Err(format!(
            "`name` must be 1 to 64 characters without spaces, got {:?}",
            key.name
        ));
    }
    let digest = match (key.key, key.sha256) {
        (Some(key), None) if !key.trim().is_empty() => digest(key.trim()),
        (None, Some(hex)) => parse_digest(&hex)
            .ok_or_else(|| format!("`sha256` must be 64 hex digits, got {hex:?}"))?,
        (Some(_), Some(_)) => return Err("give `key` or `sha256`, not both".to_owned()),
        _ => return Err("`key` (or its `sha256`) is missing or empty".to_owned()),
    };
    let limits = RateLimits {
        requests_per_minute: FileLimit::resolve(
            key.requests_per_minute.as_ref(),
            defaults.requests_per_minute,
            "requests_per_minute",
        )?,
        tokens_per_minute: FileLimit::resolve(
            key.tokens_per_minute.as_ref(),
            defaults.tokens_per_minute,
            "tokens_per_minute",
        )?,
        concurrency: FileLimit::resolve(
            key.concurrency.as_ref(),
            defaults.concurrency,
            "concurrency",
        )?,
    };
    if key.models.as_ref().is_some_and(Vec::is_empty) {
        return Err("`models` is empty: leave it out to allow every model".to_owned());
    }
    Ok(KeyEntry {
        name,
        digest,
        limits,
        models: key.models,
    })
}

fn parse_digest(hex: &str) -> Option<[u8; 32]> {
    let hex = hex.trim().as_bytes();
    if hex.len() != 64 {
        return None;
    }
    let mut digest = [0u8; 32];
    for (byte, pair) in digest.iter_mut().zip(hex.chunks(2)) {
        let text = std::str::from_utf8(pair).ok()?;
        *byte = u8::from_str_radix(text, 16).ok()?;
    }
    Some(digest)
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

    fn flags(keys: &[&str]) -> ApiKeys {
        let keys: Vec<String> = keys.iter().map(|key| (*key).to_owned()).collect();
        ApiKeys::new(&keys, RateLimits::default())
    }

    fn name(keys: &ApiKeys, authorization: &str) -> Option<String> {
        keys.check(&headers(Some(authorization)), None)
            .ok()
            .flatten()
            .map(|entry| entry.name.clone())
    }

    #[test]
    fn keys_from_header_or_query() {
        let keys = flags(&["alpha", "beta key"]);
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
        assert_eq!(flags(&[]).check(&headers(None), None).ok(), Some(None));
        assert_eq!(name(&keys, "Bearer beta key").as_deref(), Some("key-2"));
    }

    #[test]
    fn anthropic_clients_send_the_key_as_x_api_key() {
        let keys = flags(&["alpha"]);
        let check = |value: &str| {
            let mut headers = HeaderMap::new();
            headers.insert("x-api-key", value.parse().expect("a valid header value"));
            keys.check(&headers, None)
        };
        assert!(check("alpha").is_ok());
        assert!(matches!(check("beta"), Err(Error::Unauthorized(_))));
    }

    /// Writes `text` as a keys file and reads it with the flag key `flag` and `defaults`.
    fn file(text: &str, defaults: RateLimits) -> std::result::Result<ApiKeys, KeysFileError> {
        let dir = std::env::temp_dir().join(format!(
            "llm-stream-keys-{}-{}",
            std::process::id(),
            fastrand::u64(..)
        ));
        std::fs::create_dir_all(&dir).expect("a temporary folder");
        let path = dir.join("keys.toml");
        std::fs::write(&path, text).expect("the file is written");
        let keys = ApiKeys::with_file(&["flag".to_owned()], defaults, &path);
        let _ = std::fs::remove_dir_all(&dir);
        keys
    }

    #[test]
    fn a_keys_file_names_keys_and_sets_their_own_limits_and_models() {
        let defaults = RateLimits {
            requests_per_minute: Some(60),
            tokens_per_minute: Some(10_000),
            concurrency: None,
        };
        // The digest of "bravo", so that the file holds no secret.
        let bravo = hex(&digest("bravo"));
        let keys = file(
            &format!(
                r#"
                [[keys]]
                name = "alice"
                key = "alpha"
                requests_per_minute = 3
                concurrency = 2
                models = ["smol"]

                [[keys]]
                name = "bob"
                sha256 = "{bravo}"
                tokens_per_minute = "unlimited"
                "#
            ),
            defaults,
        )
        .expect("a valid file");
        assert_eq!(keys.len(), 3);
        let entry = |auth: &str| {
            keys.check(&headers(Some(auth)), None)
                .expect("a valid key")
                .expect("keys are on")
        };
        let alice = entry("Bearer alpha");
        assert_eq!(alice.name, "alice");
        assert_eq!(
            alice.limits,
            RateLimits {
                requests_per_minute: Some(3),
                tokens_per_minute: Some(10_000),
                concurrency: Some(2),
            }
        );
        assert!(alice.may_use("smol") && !alice.may_use("other"));
        let bob = entry("Bearer bravo");
        assert_eq!(bob.name, "bob");
        assert_eq!(bob.limits.tokens_per_minute, None);
        assert_eq!(bob.limits.requests_per_minute, Some(60));
        assert!(bob.may_use("anything"));
        assert_eq!(entry("Bearer flag").name, "key-1");
    }

    #[test]
    fn a_bad_keys_file_says_what_is_wrong() {
        let defaults = RateLimits::default();
        for (text, expected) in [
            (
                "[[keys]]\nname = \"a\"\n",
                "`key` (or its `sha256`) is missing",
            ),
            (
                "[[keys]]\nname = \"a\"\nkey = \"x\"\nsha256 = \"00\"\n",
                "not both",
            ),
            (
                "[[keys]]\nname = \"a\"\nsha256 = \"abc\"\n",
                "64 hex digits",
            ),
            (
                "[[keys]]\nname = \"a\"\nkey = \"x\"\nconcurrency = 0\n",
                "positive number",
            ),
            (
                "[[keys]]\nname = \"a\"\nkey = \"x\"\nconcurrency = \"lots\"\n",
                "\"lots\"",
            ),
            (
                "[[keys]]\nname = \"a\"\nkey = \"x\"\nmodels = []\n",
                "`models` is empty",
            ),
            ("[[keys]]\nname = \"a b\"\nkey = \"x\"\n", "without spaces"),
            (
                "[[keys]]\nname = \"a\"\nkey = \"x\"\n[[keys]]\nname = \"a\"\nkey = \"y\"\n",
                "used twice",
            ),
            ("[[keys]]\nname = \"a\"\nkey = \"flag\"\n", "listed twice"),
            ("[[keys]]\nname = \"a\"\nkey = \"x\"\nrpm = 3\n", "rpm"),
            ("keys = 3", "keys"),
        ] {
            let error = file(text, defaults).expect_err(text).to_string();
            assert!(error.contains(expected), "{text:?}: {error}");
        }
        let missing = ApiKeys::with_file(&[], defaults, Path::new("/nonexistent/keys.toml"))
            .expect_err("no such file");
        assert!(matches!(missing, KeysFileError::Read { .. }));
    }

    #[test]
    fn an_empty_keys_file_closes_the_api() {
        let empty = ApiKeys::with_file(&[], RateLimits::default(), Path::new("/dev/null"))
            .expect("an empty file reads");
        assert!(empty.check(&headers(Some("Bearer x")), None).is_err());
    }

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|byte| format!("{byte:02x}")).collect()
    }
}
