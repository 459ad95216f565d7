//! The JSON tree the parsers read a raw payload into: like `serde_json::Value`, but strings
//! borrow from the payload (only strings with escapes are copied) and objects are vectors of
//! entries, so parsing a record allocates one vector per object or array and nothing per key or
//! string. Only what a signal keeps (properties, traits) is converted to `Value`.
//!
//! It reads exactly what `Value` reads, with the same errors (the same serde_json parser drives
//! both), and answers lookups the way `Value`'s sorted map does: the last of duplicate keys
//! wins, and [`Obj::entries`] lists keys in sorted order.

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::ser::{Serialize, SerializeMap, SerializeSeq, Serializer};
use serde_json::{Map, Number, Value};
use std::borrow::Cow;
use std::fmt;

/// A JSON value borrowing its strings from the payload.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Json<'a> {
    Null,
    Bool(bool),
    /// An integer >= 0, as serde_json stores it.
    U64(u64),
    /// A negative integer.
    I64(i64),
    F64(f64),
    Str(Cow<'a, str>),
    Array(Vec<Json<'a>>),
    Object(Obj<'a>),
}

/// A JSON object: entries in payload order, duplicates kept (lookups take the last).
#[derive(Debug, Clone, PartialEq, Default)]
pub(crate) struct Obj<'a>(Vec<(Cow<'a, str>, Json<'a>)>);

impl<'a> Json<'a> {
    pub(crate) fn is_null(&self) -> bool {
        matches!(self, Json::Null)
    }

    /// The value as a signed integer, when it is an integer that fits.
    pub(crate) fn as_i64(&self) -> Option<i64> {
        match self {
            Json::U64(u) => i64::try_from(*u).ok(),
            Json::I64(i) => Some(*i),
            _ => None,
        }
    }

    /// The `Value` serde_json would have read.
    pub(crate) fn to_value(&self) -> Value {
        match self {
            Json::Null => Value::Null,
            Json::Bool(b) => Value::Bool(*b),
            Json::U64(u) => Value::Number(Number::from(*u)),
            Json::I64(i) => Value::Number(Number::from(*i)),
            Json::F64(f) => Number::from_f64(*f).map_or(Value::Null, Value::Number),
            Json::Str(s) => Value::String(s.to_string()),
            Json::Array(items) => Value::Array(items.iter().map(Json::to_value).collect()),
            Json::Object(obj) => Value::Object(obj.to_map()),
        }
    }
}

impl<'a> Obj<'a> {
    /// The value of `key` (the last one, when the payload repeats it).
    pub(crate) fn get(&self, key: &str) -> Option<&Json<'a>> {
        self.0.iter().rev().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    pub(crate) fn contains_key(&self, key: &str) -> bool {
        self.0.iter().any(|(k, _)| k == key)
    }

    /// Entries sorted by key, the last of duplicates kept: the order `Value`'s map iterates in.
    pub(crate) fn entries(&self) -> Vec<(&str, &Json<'a>)> {
        let mut out: Vec<(&str, &Json<'a>)> = Vec::with_capacity(self.0.len());
        out.extend(self.0.iter().map(|(k, v)| (k.as_ref(), v)));
        // Stable: among equal keys the payload order stays, so the last is the one to keep.
        out.sort_by(|a, b| a.0.cmp(b.0));
        let mut deduped: Vec<(&str, &Json<'a>)> = Vec::with_capacity(out.len());
        for entry in out {
            match deduped.last_mut() {
                Some(last) if last.0 == entry.0 => *last = entry,
                _ => deduped.push(entry),
            }
        }
        deduped
    }

    /// The map serde_json would have read.
    pub(crate) fn to_map(&self) -> Map<String, Value> {
        let mut map = Map::new();
        for (k, v) in &self.0 {
            map.insert(k.to_string(), v.to_value());
        }
        map
    }
}

/// Keys of a Segment message's `context` that some parser reads, each with the keys of it that
/// are read (`None`: all of them). The rest (`library`, `userAgent`, `ip`, `locale`, `screen`,
/// a device's `model` or `token`, a page's `referrer`, ...) is parsed and checked like everything
/// else, but not kept: most of a mobile or browser context is never used. A parser that reads
/// another key of the context must add it here.
const SEGMENT_CONTEXT: [(&str, Option<&[&str]>); 7] = [
    // Every trait becomes a signal trait; every consent purpose may be stated.
    ("traits", None),
    ("consent", None),
    ("page", Some(&["url"])),
    (
        "campaign",
        Some(&["source", "medium", "name", "term", "content"]),
    ),
    (
        "device",
        Some(&["adTrackingEnabled", "advertisingId", "id"]),
    ),
    ("app", Some(&["name", "version"])),
    ("os", Some(&["name", "version"])),
];

/// Bytes of `v` as compact JSON, counted without building them: the measure of the
/// per-message limit where the original byte span is no longer known.
pub(crate) fn compact_len<T: Serialize + ?Sized>(v: &T) -> usize {
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 += buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut count = Count(0);
    // Writing into a sink that never fails cannot fail.
    let _ = serde_json::to_writer(&mut count, v);
    count.0
}

/// Delegates every visit but `visit_seq` and `visit_map` to [`JsonVisitor`].
macro_rules! delegate_scalars {
    () => {
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("any valid JSON value")
        }
        fn visit_bool<E: de::Error>(self, v: bool) -> Result<Json<'de>, E> {
            JsonVisitor.visit_bool(v)
        }
        fn visit_i64<E: de::Error>(self, v: i64) -> Result<Json<'de>, E> {
            JsonVisitor.visit_i64(v)
        }
        fn visit_u64<E: de::Error>(self, v: u64) -> Result<Json<'de>, E> {
            JsonVisitor.visit_u64(v)
        }
        fn visit_f64<E: de::Error>(self, v: f64) -> Result<Json<'de>, E> {
            JsonVisitor.visit_f64(v)
        }
        fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Json<'de>, E> {
            JsonVisitor.visit_borrowed_str(v)
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<Json<'de>, E> {
            JsonVisitor.visit_str(v)
        }
        fn visit_string<E: de::Error>(self, v: String) -> Result<Json<'de>, E> {
            JsonVisitor.visit_string(v)
        }
        fn visit_none<E: de::Error>(self) -> Result<Json<'de>, E> {
            JsonVisitor.visit_none()
        }
        fn visit_unit<E: de::Error>(self) -> Result<Json<'de>, E> {
            JsonVisitor.visit_unit()
        }
        fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Json<'de>, D::Error> {
            JsonVisitor.visit_some(d)
        }
    };
}

/// A message's `context`: an object keeps only what [`SEGMENT_CONTEXT`] lists; anything else is
/// read as it is (the parser rejects a context that is not an object).
pub(crate) struct Context;

impl<'de> de::DeserializeSeed<'de> for Context {
    type Value = Json<'de>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Json<'de>, D::Error> {
        d.deserialize_any(ContextVisitor)
    }
}

struct ContextVisitor;

impl<'de> Visitor<'de> for ContextVisitor {
    type Value = Json<'de>;

    delegate_scalars!();

    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Json<'de>, A::Error> {
        JsonVisitor.visit_seq(seq)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Json<'de>, A::Error> {
        let mut entries = Vec::new();
        while let Some(Key(k)) = map.next_key()? {
            match SEGMENT_CONTEXT.iter().find(|(key, _)| *key == k.as_ref()) {
                Some((_, None)) => entries.push((k, map.next_value()?)),
                Some((_, Some(keys))) => entries.push((k, map.next_value_seed(Only(keys))?)),
                None => {
                    map.next_value::<Unkept>()?;
                }
            }
        }
        Ok(Json::Object(Obj(entries)))
    }
}

/// A value of which an object keeps only the listed keys (the others are read as [`Unkept`]);
/// anything else is read as it is.
struct Only(&'static [&'static str]);

impl<'de> de::DeserializeSeed<'de> for Only {
    type Value = Json<'de>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Json<'de>, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Only {
    type Value = Json<'de>;

    delegate_scalars!();

    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Json<'de>, A::Error> {
        JsonVisitor.visit_seq(seq)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Json<'de>, A::Error> {
        let mut entries = Vec::new();
        while let Some(Key(k)) = map.next_key()? {
            if self.0.contains(&k.as_ref()) {
                entries.push((k, map.next_value()?));
            } else {
                map.next_value::<Unkept>()?;
            }
        }
        Ok(Json::Object(Obj(entries)))
    }
}

/// A value read through exactly the parser calls [`Json`] makes (so it is checked the same way:
/// escapes, number range, nesting depth), of which nothing is kept.
pub(crate) struct Unkept;

impl<'de> Deserialize<'de> for Unkept {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(UnkeptVisitor)
    }
}

struct UnkeptVisitor;

impl<'de> Visitor<'de> for UnkeptVisitor {
    type Value = Unkept;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any valid JSON value")
    }
    fn visit_bool<E>(self, _: bool) -> Result<Unkept, E> {
        Ok(Unkept)
    }
    fn visit_i64<E>(self, _: i64) -> Result<Unkept, E> {
        Ok(Unkept)
    }
    fn visit_u64<E>(self, _: u64) -> Result<Unkept, E> {
        Ok(Unkept)
    }
    fn visit_f64<E>(self, _: f64) -> Result<Unkept, E> {
        Ok(Unkept)
    }
    fn visit_borrowed_str<E>(self, _: &'de str) -> Result<Unkept, E> {
        Ok(Unkept)
    }
    fn visit_str<E>(self, _: &str) -> Result<Unkept, E> {
        Ok(Unkept)
    }
    fn visit_none<E>(self) -> Result<Unkept, E> {
        Ok(Unkept)
    }
    fn visit_unit<E>(self) -> Result<Unkept, E> {
        Ok(Unkept)
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Unkept, D::Error> {
        Unkept::deserialize(d)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Unkept, A::Error> {
        while seq.next_element::<Unkept>()?.is_some() {}
        Ok(Unkept)
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Unkept, A::Error> {
        // Keys are read as strings, as `Json` reads them.
        while let Some(Key(_)) = map.next_key()? {
            map.next_value::<Unkept>()?;
        }
        Ok(Unkept)
    }
}

impl<'de> Deserialize<'de> for Json<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(JsonVisitor)
    }
}

struct JsonVisitor;

impl<'de> Visitor<'de> for JsonVisitor {
    type Value = Json<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any valid JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Json<'de>, E> {
        Ok(Json::Bool(v))
    }

    // serde_json's `Value` stores non-negative integers as unsigned, whichever visit it gets.
    fn visit_i64<E>(self, v: i64) -> Result<Json<'de>, E> {
        Ok(match u64::try_from(v) {
            Ok(u) => Json::U64(u),
            Err(_) => Json::I64(v),
        })
    }

    fn visit_u64<E>(self, v: u64) -> Result<Json<'de>, E> {
        Ok(Json::U64(v))
    }

    fn visit_f64<E>(self, v: f64) -> Result<Json<'de>, E> {
        Ok(if v.is_finite() {
            Json::F64(v)
        } else {
            Json::Null
        })
    }

    fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Json<'de>, E> {
        Ok(Json::Str(Cow::Borrowed(v)))
    }

    fn visit_str<E>(self, v: &str) -> Result<Json<'de>, E> {
        Ok(Json::Str(Cow::Owned(v.to_string())))
    }

    fn visit_string<E>(self, v: String) -> Result<Json<'de>, E> {
        Ok(Json::Str(Cow::Owned(v)))
    }

    fn visit_none<E>(self) -> Result<Json<'de>, E> {
        Ok(Json::Null)
    }

    fn visit_unit<E>(self) -> Result<Json<'de>, E> {
        Ok(Json::Null)
    }

    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Json<'de>, D::Error> {
        Json::deserialize(d)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Json<'de>, A::Error> {
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(64));
        while let Some(item) = seq.next_element()? {
            items.push(item);
        }
        Ok(Json::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Json<'de>, A::Error> {
        let mut entries = Vec::with_capacity(map.size_hint().unwrap_or(0).min(64));
        while let Some(Key(k)) = map.next_key()? {
            entries.push((k, map.next_value()?));
        }
        Ok(Json::Object(Obj(entries)))
    }
}

/// An object key, borrowed from the payload when it has no escapes (serde's `Cow<str>` always
/// copies).
pub(crate) struct Key<'a>(pub(crate) Cow<'a, str>);

impl<'de> Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl<'de> Visitor<'de> for KeyVisitor {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string key")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(v.to_string())))
            }
            fn visit_string<E>(self, v: String) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(v)))
            }
        }
        d.deserialize_str(KeyVisitor)
    }
}

/// Serialises as the `Value` it stands for would (sorted keys, the last of duplicates), so that
/// sizes measured on it are the sizes of `Value`'s compact JSON.
impl Serialize for Json<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Json::Null => s.serialize_unit(),
            Json::Bool(b) => s.serialize_bool(*b),
            Json::U64(u) => s.serialize_u64(*u),
            Json::I64(i) => s.serialize_i64(*i),
            Json::F64(f) => s.serialize_f64(*f),
            Json::Str(v) => s.serialize_str(v),
            Json::Array(items) => {
                let mut seq = s.serialize_seq(Some(items.len()))?;
                for item in items {
                    seq.serialize_element(item)?;
                }
                seq.end()
            }
            Json::Object(obj) => {
                let entries = obj.entries();
                let mut map = s.serialize_map(Some(entries.len()))?;
                for (k, v) in entries {
                    map.serialize_entry(k, v)?;
                }
                map.end()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = r#"{"b":1,"a":[true,null,-2,3.5,1e300,"x\"y"],"b":{"k":"v"},
        "n":18446744073709551615,"m":-9223372036854775808,"e":"caf\u00e9","":{}}"#;

    #[test]
    fn reads_what_value_reads() {
        let ours: Json = serde_json::from_str(SAMPLE).unwrap();
        let theirs: Value = serde_json::from_str(SAMPLE).unwrap();
        assert_eq!(ours.to_value(), theirs);
        assert_eq!(
            serde_json::to_string(&ours).unwrap(),
            serde_json::to_string(&theirs).unwrap()
        );
    }

    #[test]
    fn strings_without_escapes_borrow_and_the_last_duplicate_wins() {
        let Json::Object(obj) = serde_json::from_str::<Json>(SAMPLE).unwrap() else {
            panic!("an object");
        };
        assert!(matches!(obj.get("b"), Some(Json::Object(_))));
        let keys: Vec<&str> = obj.entries().iter().map(|(k, _)| *k).collect();
        assert_eq!(keys, ["", "a", "b", "e", "m", "n"]);
        let Some(Json::Object(inner)) = obj.get("b") else {
            panic!("b is an object");
        };
        assert!(matches!(
            inner.get("k"),
            Some(Json::Str(Cow::Borrowed("v")))
        ));
        assert!(matches!(obj.get("e"), Some(Json::Str(Cow::Owned(_)))));
        assert_eq!(obj.get("m").and_then(Json::as_i64), Some(i64::MIN));
        assert_eq!(obj.get("n").and_then(Json::as_i64), None);
    }

    /// A message's `context` read through [`Context`], as [`crate::message`] reads it.
    fn context(text: &str) -> serde_json::Result<Json<'_>> {
        let mut de = serde_json::Deserializer::from_str(text);
        let value = de::DeserializeSeed::deserialize(Context, &mut de)?;
        de.end()?;
        Ok(value)
    }

    #[test]
    fn context_leaves_out_only_what_no_parser_reads() {
        let text = r#"{"library":{"name":"a"},"userAgent":"M","page":{"url":"u","x":[1]},
            "ip":"1.2.3.4","os":{"name":"iOS","build":"21A"},"traits":{"email":"e","x":{"y":1}},
            "locale":"en","device":{"id":"d","model":"iPhone","token":"t"},"app":"Shop"}"#;
        let full: Json = serde_json::from_str(text).unwrap();
        let (Json::Object(lean), Json::Object(full)) = (context(text).unwrap(), full) else {
            panic!("objects")
        };
        let keys: Vec<&str> = lean.entries().iter().map(|(k, _)| *k).collect();
        assert_eq!(keys, ["app", "device", "os", "page", "traits"]);
        // Traits are kept whole, as is a value that is not an object; of the others, the keys
        // some parser reads.
        for key in ["traits", "app"] {
            assert_eq!(lean.get(key), full.get(key), "{key}");
        }
        let kept = |key: &str| -> Vec<String> {
            let Some(Json::Object(o)) = lean.get(key) else {
                panic!("{key} is an object")
            };
            o.entries().iter().map(|(k, _)| k.to_string()).collect()
        };
        assert_eq!(kept("page"), ["url"]);
        assert_eq!(kept("device"), ["id"]);
        assert_eq!(kept("os"), ["name"]);
        // A context that is not an object is read as it is, for the parser to reject.
        assert_eq!(
            context("[1,\"a\"]").unwrap(),
            serde_json::from_str("[1,\"a\"]").unwrap()
        );
    }

    #[test]
    fn context_rejects_what_value_rejects_in_left_out_fields() {
        let deep = format!(r#"{{"library":{}1{}}}"#, "[".repeat(200), "]".repeat(200));
        for bad in [
            r#"{"device":{"model":"\ud800"}}"#.to_string(),
            r#"{"page":{"referrer":1e400,"url":"u"}}"#.to_string(),
            r#"{"library":"\ud800"}"#.to_string(),
            r#"{"screen":{"width":1e400}}"#.to_string(),
            r#"{"ip":"a\x"}"#.to_string(),
            r#"{"ip":tru}"#.to_string(),
            r#"{"ip":"a",}"#.to_string(),
            deep,
        ] {
            let ours = context(&bad).map(|_| ()).map_err(|e| e.to_string());
            let theirs = serde_json::from_str::<Value>(&bad)
                .map(|_| ())
                .map_err(|e| e.to_string());
            assert_eq!(ours, theirs, "{bad}");
            assert!(ours.is_err(), "{bad}");
        }
    }

    #[test]
    fn rejects_what_value_rejects() {
        for bad in [
            &b"{\"a\":\"\\ud800\"}"[..],
            b"{\"a\":\"\xff\"}",
            b"{\"a\":1,}",
            b"[",
        ] {
            let ours = serde_json::from_slice::<Json>(bad)
                .map(|_| ())
                .map_err(|e| e.to_string());
            let theirs = serde_json::from_slice::<Value>(bad)
                .map(|_| ())
                .map_err(|e| e.to_string());
            assert_eq!(ours, theirs, "{}", String::from_utf8_lossy(bad));
            assert!(ours.is_err());
        }
        let deep = "[".repeat(200) + &"]".repeat(200);
        assert!(
            serde_json::from_str::<Json>(&deep).is_err(),
            "depth is limited"
        );
    }
}
