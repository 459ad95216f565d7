//! Typed access to the fields of a JSON object, with rejections that name the field's path.
//!
//! Sources send loosely typed JSON; the parsers decide per field what is acceptable. These
//! accessors keep that decision in one line at the call site and make every error message say
//! which field was wrong (`context.device.advertisingId must be a string`) without its value.

use crate::json::{Json, Obj};
use crate::rejection::{self, missing, wrong_type};
use cdp_proto::dlq::Rejection;
use serde_json::Value;
use std::borrow::Cow;
use std::collections::BTreeMap;

/// Properties and traits as a signal carries them (so a parser's map becomes the signal's as is).
pub(crate) type Object = BTreeMap<String, Value>;

/// A JSON object of the payload and its path from the root of the message (empty at the root).
#[derive(Clone, Copy)]
pub(crate) struct Fields<'a> {
    obj: &'a Obj<'a>,
    path: &'static str,
}

impl<'a> Fields<'a> {
    pub(crate) fn root(obj: &'a Obj<'a>) -> Self {
        Self { obj, path: "" }
    }

    /// An object found at `path` (a typed message's `context`).
    pub(crate) fn at(obj: &'a Obj<'a>, path: &'static str) -> Self {
        Self { obj, path }
    }

    /// The entries, sorted by key (see [`Obj::entries`]).
    pub(crate) fn entries(&self) -> Vec<(&'a str, &'a Json<'a>)> {
        self.obj.entries()
    }

    /// The dotted name of `key` in this object, for messages. Allocates only when called, which
    /// is only on the error path.
    pub(crate) fn name(&self, key: &str) -> String {
        if self.path.is_empty() {
            key.to_string()
        } else {
            format!("{}.{key}", self.path)
        }
    }

    /// The value of `key`; a JSON `null` counts as absent, as every source uses it that way.
    pub(crate) fn get(&self, key: &str) -> Option<&'a Json<'a>> {
        self.obj.get(key).filter(|v| !v.is_null())
    }

    pub(crate) fn has(&self, key: &str) -> bool {
        self.get(key).is_some()
    }

    /// A nested object at `key`, whose own path is `path` (spelled out by the caller so that no
    /// path is built on the success path).
    pub(crate) fn child(
        &self,
        key: &str,
        path: &'static str,
    ) -> Result<Option<Fields<'a>>, Rejection> {
        match self.get(key) {
            None => Ok(None),
            Some(Json::Object(obj)) => Ok(Some(Fields { obj, path })),
            Some(_) => Err(wrong_type(&self.name(key), "an object")),
        }
    }

    pub(crate) fn str(&self, key: &str) -> Result<Option<&'a str>, Rejection> {
        str_of(self.get(key), || self.name(key))
    }

    /// A string that must be present and not blank.
    pub(crate) fn required_str(&self, key: &str) -> Result<&'a str, Rejection> {
        required_str_of(self.get(key), || self.name(key))
    }

    /// An id-like value: a string, or an integer that a source sent unquoted (numeric user ids
    /// and phone numbers are common). Floats, booleans, arrays and objects are wrong.
    pub(crate) fn id_text(&self, key: &str) -> Result<Option<Cow<'a, str>>, Rejection> {
        id_text_of(self.get(key), || self.name(key))
    }

    /// A record id that becomes part of `Signal.event_id`: required, not blank, bounded.
    pub(crate) fn record_id(&self, key: &str) -> Result<Cow<'a, str>, Rejection> {
        record_id_of(self.get(key), || self.name(key))
    }

    /// A flag that sources send as a JSON boolean or as text (`"true"`, `"Yes"`, `"1"`).
    pub(crate) fn flag(&self, key: &str) -> Result<Option<bool>, Rejection> {
        let bad = || wrong_type(&self.name(key), "a boolean");
        match self.get(key) {
            None => Ok(None),
            Some(Json::Bool(b)) => Ok(Some(*b)),
            Some(n @ (Json::U64(_) | Json::I64(_) | Json::F64(_))) => match n.as_i64() {
                Some(0) => Ok(Some(false)),
                Some(1) => Ok(Some(true)),
                _ => Err(bad()),
            },
            Some(Json::Str(s)) => match s.trim().to_ascii_lowercase().as_str() {
                "true" | "yes" | "1" => Ok(Some(true)),
                "false" | "no" | "0" => Ok(Some(false)),
                "" => Ok(None),
                _ => Err(bad()),
            },
            Some(_) => Err(bad()),
        }
    }
}

/// The accessors of [`Fields`] for a value already looked up (`None` when absent or null), so
/// that typed messages ([`crate::message`]) check their fields exactly as [`Fields`] does.
/// `name` gives the field's dotted name, for the rejection only.
pub(crate) fn str_of<'a>(
    v: Option<&'a Json<'_>>,
    name: impl FnOnce() -> String,
) -> Result<Option<&'a str>, Rejection> {
    match v {
        None => Ok(None),
        Some(Json::Str(s)) => Ok(Some(s)),
        Some(_) => Err(wrong_type(&name(), "a string")),
    }
}

/// See [`Fields::required_str`].
pub(crate) fn required_str_of<'a>(
    v: Option<&'a Json<'_>>,
    name: impl Fn() -> String,
) -> Result<&'a str, Rejection> {
    match str_of(v, &name)? {
        Some(s) if !s.trim().is_empty() => Ok(s),
        _ => Err(missing(&name())),
    }
}

/// See [`Fields::id_text`].
pub(crate) fn id_text_of<'a>(
    v: Option<&'a Json<'_>>,
    name: impl FnOnce() -> String,
) -> Result<Option<Cow<'a, str>>, Rejection> {
    match v {
        None => Ok(None),
        Some(v) => id_value(v)
            .map(Some)
            .ok_or_else(|| wrong_type(&name(), "a string or an integer")),
    }
}

/// See [`Fields::record_id`].
pub(crate) fn record_id_of<'a>(
    v: Option<&'a Json<'_>>,
    name: impl Fn() -> String,
) -> Result<Cow<'a, str>, Rejection> {
    let id = id_text_of(v, &name)?.ok_or_else(|| missing(&name()))?;
    if id.trim().is_empty() {
        return Err(missing(&name()));
    }
    if id.len() > MAX_RECORD_ID_BYTES {
        return Err(Rejection::new(
            rejection::OVERSIZE,
            format!(
                "field `{}` is longer than {MAX_RECORD_ID_BYTES} bytes",
                name()
            ),
        ));
    }
    Ok(id)
}

/// Longest record id accepted into `Signal.event_id`.
pub(crate) const MAX_RECORD_ID_BYTES: usize = 256;

/// A string or integer JSON value as text.
pub(crate) fn id_value<'a>(v: &'a Json<'_>) -> Option<Cow<'a, str>> {
    match v {
        Json::Str(s) => Some(Cow::Borrowed(s)),
        Json::U64(u) => Some(Cow::Owned(u.to_string())),
        Json::I64(i) => Some(Cow::Owned(i.to_string())),
        _ => None,
    }
}

/// Keys that hold raw contact details. They are turned into hashed identifiers and must never be
/// copied into traits or properties.
pub(crate) fn is_contact_key(key: &str) -> bool {
    key.eq_ignore_ascii_case("email") || key.eq_ignore_ascii_case("phone")
}

/// Inserts `value` under `key` unless the map already has it: what the event said explicitly wins
/// over what ingest derived.
pub(crate) fn insert_absent(map: &mut Object, key: &str, value: Value) {
    if !map.contains_key(key) {
        map.insert(key.to_string(), value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn obj(v: Value) -> Obj<'static> {
        let text: &'static str = Box::leak(v.to_string().into_boxed_str());
        match serde_json::from_str(text).unwrap() {
            Json::Object(o) => o,
            _ => Obj::default(),
        }
    }

    #[test]
    fn null_is_absent_and_types_are_checked_with_paths() {
        let o = obj(json!({"a": null, "b": 5, "c": {"d": true}}));
        let f = Fields::root(&o);
        assert_eq!(f.str("a").unwrap(), None);
        assert_eq!(
            f.str("b").unwrap_err().message,
            "field `b` must be a string"
        );
        let c = f.child("c", "c").unwrap().unwrap();
        let err = c.str("d").unwrap_err();
        assert_eq!(err.code, rejection::WRONG_TYPE);
        assert_eq!(err.message, "field `c.d` must be a string");
        assert_eq!(
            f.required_str("zz").unwrap_err().code,
            rejection::MISSING_FIELD
        );
    }

    #[test]
    fn ids_accept_integers_but_not_floats() {
        let o = obj(json!({"n": 42, "f": 1.5, "s": "x", "blank": "  "}));
        let f = Fields::root(&o);
        assert_eq!(f.id_text("n").unwrap().as_deref(), Some("42"));
        assert_eq!(f.id_text("f").unwrap_err().code, rejection::WRONG_TYPE);
        assert_eq!(f.record_id("s").unwrap(), "x");
        assert_eq!(
            f.record_id("blank").unwrap_err().code,
            rejection::MISSING_FIELD
        );
    }

    #[test]
    fn flags_accept_text_forms() {
        let o = obj(json!({"a": "Yes", "b": "0", "c": false, "d": "maybe"}));
        let f = Fields::root(&o);
        assert_eq!(f.flag("a").unwrap(), Some(true));
        assert_eq!(f.flag("b").unwrap(), Some(false));
        assert_eq!(f.flag("c").unwrap(), Some(false));
        assert!(f.flag("d").is_err());
        assert_eq!(f.flag("missing").unwrap(), None);
    }
}
