//! What every dialect's request parser shares: JSON in with errors that name the field, and the
//! checks of ranges and lists.

use serde::de::{DeserializeOwned, DeserializeSeed, Error as _};
use serde::{Deserialize, Deserializer};

use crate::error::{Error, Result};

/// The most choices (`n`) a request may ask for, as in OpenAI's API.
pub const MAX_CHOICES: u32 = 128;

/// Parses a request body as `T`. A wrong type or a missing field is an
/// [`Error::InvalidRequest`] whose `param` is the field's path (`messages[2].role`), and whose
/// message says what was expected.
pub(crate) fn from_json<T: DeserializeOwned>(body: &[u8]) -> Result<T> {
    let mut json = serde_json::Deserializer::from_slice(body);
    let value: T = serde_path_to_error::deserialize(&mut json).map_err(|error| {
        let path = error.path().to_string();
        let inner = error.into_inner();
        let detail = strip_position(&inner);
        // A missing field is named by its own path, not its parent's.
        let missing = detail
            .strip_prefix("missing field `")
            .and_then(|rest| rest.strip_suffix('`'));
        if let (".", Some(field)) = (path.as_str(), missing) {
            Error::invalid_param(field.to_owned(), format!("`{field}` is required"))
        } else if path != "."
            && inner.is_syntax()
            && serde_json::from_slice::<serde::de::IgnoredAny>(body).is_ok()
        {
            // serde_json reports some wrong types (a number where an enum's name belongs)
            // as syntax errors; in a body that is valid JSON they are the field's fault.
            Error::invalid_param(path.clone(), format!("`{path}` has an invalid value"))
        } else if inner.is_syntax() || inner.is_eof() || path == "." {
            let message = if inner.is_data() {
                format!("invalid request body: {inner}")
            } else {
                format!("request body is not valid JSON: {inner}")
            };
            Error::InvalidRequest {
                param: None,
                message,
            }
        } else {
            let path = match missing {
                Some(field) => format!("{path}.{field}"),
                None => path,
            };
            Error::invalid_param(path.clone(), format!("`{path}`: {detail}"))
        }
    })?;
    json.end().map_err(|inner| Error::InvalidRequest {
        param: None,
        message: format!("request body is not valid JSON: {inner}"),
    })?;
    Ok(value)
}

/// serde_json appends " at line L column C" to data errors; the field path says more.
fn strip_position(error: &serde_json::Error) -> String {
    let text = error.to_string();
    match text.rfind(" at line ") {
        Some(cut) => text[..cut].to_owned(),
        None => text,
    }
}

/// A string or an array of strings, as an array.
pub(crate) fn one_or_many<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<Vec<String>>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    match Option::<serde_json::Value>::deserialize(deserializer)? {
        None | Some(serde_json::Value::Null) => Ok(None),
        Some(value) => match OneOrMany::deserialize(value) {
            Ok(OneOrMany::One(one)) => Ok(Some(vec![one])),
            Ok(OneOrMany::Many(many)) => Ok(Some(many)),
            Err(_) => Err(D::Error::custom("expected a string or an array of strings")),
        },
    }
}

/// `null` read as the type's default.
pub(crate) fn null_as_default<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de> + Default,
{
    Ok(Option::<T>::deserialize(deserializer)?.unwrap_or_default())
}

/// `value`, when present, lies in `min..=max`.
pub(crate) fn check_range(name: &str, value: Option<f64>, min: f64, max: f64) -> Result<()> {
    match value {
        Some(value) if !(min..=max).contains(&value) => Err(Error::invalid_param(
            name,
            format!("`{name}` must be between {min} and {max}, got {value}"),
        )),
        _ => Ok(()),
    }
}

/// A token limit, when present, is at least 1.
pub(crate) fn check_token_limit(name: &str, value: Option<u32>) -> Result<()> {
    if value == Some(0) {
        return Err(Error::invalid_param(
            name,
            format!("`{name}` must be at least 1"),
        ));
    }
    Ok(())
}

/// At most `max` stop sequences, none empty.
pub(crate) fn check_stops(name: &str, stops: &[String], max: usize) -> Result<()> {
    if stops.len() > max {
        return Err(Error::invalid_param(
            name,
            format!(
                "`{name}` may hold at most {max} sequences, got {}",
                stops.len()
            ),
        ));
    }
    if let Some(index) = stops.iter().position(String::is_empty) {
        return Err(Error::invalid_param(
            format!("{name}[{index}]"),
            "stop sequences must not be empty",
        ));
    }
    Ok(())
}

/// `n`, when present, is between 1 and [`MAX_CHOICES`].
pub(crate) fn check_choices(n: Option<u32>) -> Result<()> {
    match n {
        Some(n) if !(1..=MAX_CHOICES).contains(&n) => Err(Error::invalid_param(
            "n",
            format!("`n` must be between 1 and {MAX_CHOICES}, got {n}"),
        )),
        _ => Ok(()),
    }
}

/// `resumable` (the extension every dialect shares) only with `stream`.
pub(crate) fn check_resumable(resumable: bool, stream: bool) -> Result<()> {
    if resumable && !stream {
        return Err(Error::invalid_param(
            "resumable",
            "`resumable` applies to streams only; set `stream` to true",
        ));
    }
    Ok(())
}

/// The sampling ranges every OpenAI dialect shares.
pub(crate) fn check_sampling(
    temperature: Option<f64>,
    top_p: Option<f64>,
    presence_penalty: Option<f64>,
    frequency_penalty: Option<f64>,
) -> Result<()> {
    check_range("temperature", temperature, 0.0, 2.0)?;
    check_range("top_p", top_p, 0.0, 1.0)?;
    check_range("presence_penalty", presence_penalty, -2.0, 2.0)?;
    check_range("frequency_penalty", frequency_penalty, -2.0, 2.0)
}

/// Text given as a string, or as an array of parts `{"type": KIND, "text": "..."}` whose
/// kind is one of `kinds`, joined. Another kind is an error naming it, at the part's path.
pub(crate) fn joined_text<'de, D: Deserializer<'de>>(
    deserializer: D,
    kinds: &'static [&'static str],
) -> Result<String, D::Error> {
    struct Visitor(&'static [&'static str]);
    impl<'de> serde::de::Visitor<'de> for Visitor {
        type Value = String;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "a string or an array of `{}` parts", self.0.join("`/`"))
        }
        fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<Self::Value, E> {
            Ok(text.to_owned())
        }
        fn visit_seq<A: serde::de::SeqAccess<'de>>(
            self,
            mut seq: A,
        ) -> Result<Self::Value, A::Error> {
            let mut text = String::new();
            while let Some(part) = seq.next_element_seed(Part(self.0))? {
                text.push_str(&part);
            }
            Ok(text)
        }
    }
    deserializer.deserialize_any(Visitor(kinds))
}

/// One text part of one of the kinds.
struct Part(&'static [&'static str]);

impl<'de> DeserializeSeed<'de> for Part {
    type Value = String;
    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<String, D::Error> {
        #[derive(Deserialize)]
        struct Raw {
            #[serde(rename = "type")]
            kind: String,
            text: Option<String>,
        }
        let raw = Raw::deserialize(deserializer)?;
        match (self.0.contains(&raw.kind.as_str()), raw.text) {
            (true, Some(text)) => Ok(text),
            (true, None) => Err(D::Error::missing_field("text")),
            (false, _) => Err(D::Error::custom(format!(
                "parts of type `{}` are not supported; only `{}` parts are",
                raw.kind,
                self.0.join("` and `")
            ))),
        }
    }
}
