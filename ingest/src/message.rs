//! A Segment message or batch envelope read straight from the payload into typed, borrowed
//! fields: the message's own keys are struct fields (scalars borrow from the payload),
//! `properties` and `traits` become the signal's property map without a tree in between, the
//! `context` keeps only what some parser reads ([`json::Context`]), and every other key is walked
//! for errors but not built ([`Unkept`]).
//!
//! Deserialising never judges types: a field of a type no source sends is kept as it came (or as
//! [`Slot::Other`]) and the parser rejects it in its own order, naming the field, as it does for
//! the tree ([`crate::json`]). What this reads and rejects as JSON is what the tree does: every
//! value goes through the same serde_json calls, and the last of duplicate keys wins.

use crate::fields::Object;
use crate::json::{self, Json, Key, Unkept};
use serde::de::value::{MapAccessDeserializer, SeqAccessDeserializer};
use serde::de::{Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use std::fmt;
use std::marker::PhantomData;

/// A payload: a message (or envelope) when it is a JSON object.
pub(crate) enum Payload<'a> {
    Message(Box<Message<'a>>),
    NotAnObject,
}

/// The keys of a Segment message that some parser reads. `None`: the key is absent; a JSON
/// `null` is kept (as `Json::Null` or [`Slot::Null`]) because a present key, even null, marks a
/// payload as Segment.
#[derive(Default)]
pub(crate) struct Message<'a> {
    pub(crate) kind: Option<Json<'a>>,
    pub(crate) message_id: Option<Json<'a>>,
    pub(crate) user_id: Option<Json<'a>>,
    pub(crate) anonymous_id: Option<Json<'a>>,
    pub(crate) previous_id: Option<Json<'a>>,
    pub(crate) group_id: Option<Json<'a>>,
    pub(crate) event: Option<Json<'a>>,
    pub(crate) name: Option<Json<'a>>,
    pub(crate) category: Option<Json<'a>>,
    pub(crate) timestamp: Option<Json<'a>>,
    pub(crate) original_timestamp: Option<Json<'a>>,
    pub(crate) sent_at: Option<Json<'a>>,
    pub(crate) received_at: Option<Json<'a>>,
    pub(crate) context: Option<Json<'a>>,
    pub(crate) properties: Option<Slot<Object>>,
    pub(crate) traits: Option<Slot<Object>>,
    pub(crate) batch: Option<Slot<Vec<Payload<'a>>>>,
}

impl Message<'_> {
    /// `true` when the object looks like Segment (see [`crate::segment::is_segment`]).
    pub(crate) fn is_segment(&self) -> bool {
        self.batch.is_some() || self.kind.is_some() || self.message_id.is_some()
    }
}

/// A value expected to be an object (or, for `batch`, an array).
pub(crate) enum Slot<T> {
    Null,
    Value(T),
    /// Any other JSON type: the parser rejects it when it reads the field.
    Other,
}

/// Parses `text` as a Segment payload.
pub(crate) fn parse(text: &str) -> serde_json::Result<Payload<'_>> {
    let mut de = serde_json::Deserializer::from_str(text);
    let payload = Payload::deserialize(&mut de)?;
    de.end()?;
    Ok(payload)
}

impl<'de> Deserialize<'de> for Payload<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(PayloadVisitor)
    }
}

/// Every visit of something other than an object answers `$other`, after walking it.
macro_rules! other_than {
    ($ty:ty, $other:expr, $expecting:literal) => {
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str($expecting)
        }
        fn visit_bool<E>(self, _: bool) -> Result<$ty, E> {
            Ok($other)
        }
        fn visit_i64<E>(self, _: i64) -> Result<$ty, E> {
            Ok($other)
        }
        fn visit_u64<E>(self, _: u64) -> Result<$ty, E> {
            Ok($other)
        }
        fn visit_f64<E>(self, _: f64) -> Result<$ty, E> {
            Ok($other)
        }
        fn visit_borrowed_str<E>(self, _: &'de str) -> Result<$ty, E> {
            Ok($other)
        }
        fn visit_str<E>(self, _: &str) -> Result<$ty, E> {
            Ok($other)
        }
    };
}

struct PayloadVisitor;

impl<'de> Visitor<'de> for PayloadVisitor {
    type Value = Payload<'de>;

    other_than!(Payload<'de>, Payload::NotAnObject, "any valid JSON value");

    fn visit_none<E>(self) -> Result<Payload<'de>, E> {
        Ok(Payload::NotAnObject)
    }
    fn visit_unit<E>(self) -> Result<Payload<'de>, E> {
        Ok(Payload::NotAnObject)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Payload<'de>, A::Error> {
        while seq.next_element::<Unkept>()?.is_some() {}
        Ok(Payload::NotAnObject)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Payload<'de>, A::Error> {
        let mut m = Message::default();
        while let Some(Key(k)) = map.next_key()? {
            match k.as_ref() {
                "type" => m.kind = Some(map.next_value()?),
                "messageId" => m.message_id = Some(map.next_value()?),
                "userId" => m.user_id = Some(map.next_value()?),
                "anonymousId" => m.anonymous_id = Some(map.next_value()?),
                "previousId" => m.previous_id = Some(map.next_value()?),
                "groupId" => m.group_id = Some(map.next_value()?),
                "event" => m.event = Some(map.next_value()?),
                "name" => m.name = Some(map.next_value()?),
                "category" => m.category = Some(map.next_value()?),
                "timestamp" => m.timestamp = Some(map.next_value()?),
                "originalTimestamp" => m.original_timestamp = Some(map.next_value()?),
                "sentAt" => m.sent_at = Some(map.next_value()?),
                "receivedAt" => m.received_at = Some(map.next_value()?),
                "context" => m.context = Some(map.next_value_seed(json::Context)?),
                "properties" => m.properties = Some(map.next_value()?),
                "traits" => m.traits = Some(map.next_value()?),
                "batch" => m.batch = Some(map.next_value()?),
                _ => {
                    map.next_value::<Unkept>()?;
                }
            }
        }
        Ok(Payload::Message(Box::new(m)))
    }
}

/// Whether a [`Slot`]'s value is read from a JSON object or from an array.
trait Shape<'de>: Deserialize<'de> {
    const FROM_OBJECT: bool;
}

impl<'de> Shape<'de> for Object {
    const FROM_OBJECT: bool = true;
}

impl<'de> Shape<'de> for Vec<Payload<'de>> {
    const FROM_OBJECT: bool = false;
}

impl<'de, T: Shape<'de>> Deserialize<'de> for Slot<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(SlotVisitor(PhantomData))
    }
}

struct SlotVisitor<T>(PhantomData<T>);

impl<'de, T: Shape<'de>> Visitor<'de> for SlotVisitor<T> {
    type Value = Slot<T>;

    other_than!(Slot<T>, Slot::Other, "any valid JSON value");

    fn visit_none<E>(self) -> Result<Slot<T>, E> {
        Ok(Slot::Null)
    }
    fn visit_unit<E>(self) -> Result<Slot<T>, E> {
        Ok(Slot::Null)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Slot<T>, A::Error> {
        if T::FROM_OBJECT {
            while seq.next_element::<Unkept>()?.is_some() {}
            Ok(Slot::Other)
        } else {
            T::deserialize(SeqAccessDeserializer::new(seq)).map(Slot::Value)
        }
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Slot<T>, A::Error> {
        if T::FROM_OBJECT {
            T::deserialize(MapAccessDeserializer::new(map)).map(Slot::Value)
        } else {
            while let Some(Key(_)) = map.next_key()? {
                map.next_value::<Unkept>()?;
            }
            Ok(Slot::Other)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    #[test]
    fn reads_known_keys_and_the_last_of_duplicates() {
        let text = r#"{"type":"track","event":"A","event":"B","properties":{"x":1,"x":2},
            "integrations":{"All":true},"context":{"ip":"1.2.3.4","page":{"url":"u"}},
            "traits":[1],"batch":null}"#;
        let Payload::Message(m) = parse(text).unwrap() else {
            panic!("an object")
        };
        assert_eq!(m.event, Some(Json::Str("B".into())));
        let Some(Slot::Value(p)) = &m.properties else {
            panic!("properties")
        };
        assert_eq!(p.get("x"), Some(&Value::from(2)));
        assert!(matches!(m.traits, Some(Slot::Other)));
        assert!(matches!(m.batch, Some(Slot::Null)));
        assert!(m.is_segment());
        let Some(Json::Object(context)) = &m.context else {
            panic!("context")
        };
        assert!(context.get("ip").is_none() && context.get("page").is_some());
    }

    /// Every value, kept or not, goes through the parser calls `Value` makes.
    #[test]
    fn rejects_what_value_rejects() {
        for bad in [
            r#"{"integrations":{"a":"\ud800"}}"#,
            r#"{"properties":{"n":1e400}}"#,
            r#"{"traits":[1e400]}"#,
            r#"{"batch":{"a":tru}}"#,
            r#"{"x":"a",}"#,
            r#"[{"a":1e400}]"#,
            r#"{"type":"track"} x"#,
            r#"{"context":{"library":"\ud800"}}"#,
            r#"{"context":{"screen":{"width":1e400}}}"#,
            r#"{"batch":[{"context":{"ip":tru}}]}"#,
        ] {
            let ours = parse(bad).map(|_| ()).map_err(|e| e.to_string());
            let value = serde_json::from_str::<Value>(bad)
                .map(|_| ())
                .map_err(|e| e.to_string());
            assert_eq!(ours, value, "{bad}");
            assert!(ours.is_err(), "{bad}");
        }
    }
}
