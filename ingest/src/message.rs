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
    use crate::normalize::{normalize_read, NormalizeOptions};
    use crate::DroppedIdentifiers;
    use cdp_proto::Source;
    use proptest::prelude::*;
    use serde_json::{json, Value};

    /// A value for a field: usually one a source sends there, sometimes null or a wrong type.
    fn field(good: Vec<Value>) -> impl Strategy<Value = Value> {
        prop_oneof![
            6 => prop::sample::select(good),
            1 => Just(Value::Null),
            1 => prop_oneof![
                any::<bool>().prop_map(Value::from),
                any::<i32>().prop_map(Value::from),
                Just(json!(1.5)),
                Just(json!([1, "a"])),
                Just(json!({"k": "v"})),
                "[a-z ]{0,6}".prop_map(Value::from),
            ],
        ]
    }

    fn text(values: &[&str]) -> Vec<Value> {
        values.iter().map(|v| Value::from(*v)).collect()
    }

    /// An object of some of `fields`; a key may repeat, as JSON allows.
    fn object(fields: Vec<(&'static str, BoxedStrategy<Value>)>) -> BoxedStrategy<String> {
        let entries: Vec<_> = fields
            .into_iter()
            .map(|(k, v)| (any::<u8>(), v).prop_map(move |(pick, v)| (pick, k, v)))
            .collect();
        entries
            .prop_map(|entries| {
                let body: Vec<String> = entries
                    .into_iter()
                    .filter(|(pick, _, _)| pick % 3 != 0)
                    .flat_map(|(pick, k, v)| {
                        let one = format!("{}:{}", Value::from(k), v);
                        // Now and then a key twice, with another value first.
                        if pick % 17 == 1 {
                            vec![format!("{}:null", Value::from(k)), one]
                        } else {
                            vec![one]
                        }
                    })
                    .collect();
                format!("{{{}}}", body.join(","))
            })
            .boxed()
    }

    fn raw(s: BoxedStrategy<String>) -> BoxedStrategy<Value> {
        s.prop_map(|t| serde_json::from_str::<Value>(&t).unwrap_or(Value::Null))
            .boxed()
    }

    fn times() -> BoxedStrategy<Value> {
        field(text(&[
            "2024-05-01T12:00:00.000Z",
            "2024-05-01T13:00:02Z",
            "2024-05-01T14:00:00+02:00",
            "2024-05-01 12:00:00.000",
            "",
            "yesterday",
        ]))
        .boxed()
    }

    fn context() -> BoxedStrategy<String> {
        let urls = text(&[
            "https://shop.example/p?gclid=Cj0KCQ&utm_source=google&utm_campaign=spring",
            "https://shop.example/?fbclid=IwAR1&msclkid=m1&utm_medium=cpc",
            "https://shop.example/plain",
        ]);
        let page = object(vec![
            ("url", field(urls).boxed()),
            ("path", field(text(&["/p"])).boxed()),
            ("title", field(text(&["T\u{e9}"])).boxed()),
        ]);
        let traits = object(vec![
            (
                "email",
                field(text(&["Maria@Example.com", "test@test.com", "x"])).boxed(),
            ),
            ("Email", field(text(&["b@corp.example"])).boxed()),
            (
                "phone",
                field(vec![json!("(415) 555-2671"), json!(4155552671u64)]).boxed(),
            ),
            ("plan", field(text(&["pro"])).boxed()),
        ]);
        let campaign = object(vec![
            ("source", field(text(&["newsletter"])).boxed()),
            ("name", field(text(&["spring"])).boxed()),
            ("medium", field(text(&["email"])).boxed()),
        ]);
        let prefs = object(vec![
            (
                "advertising",
                field(vec![json!(true), json!(false)]).boxed(),
            ),
            (
                "identity",
                field(vec![json!(false), json!("denied")]).boxed(),
            ),
        ]);
        let consent = object(vec![
            ("categoryPreferences", raw(prefs)),
            (
                "ad_user_data",
                field(text(&["granted", "denied", "DENIED"])).boxed(),
            ),
        ]);
        let device = object(vec![
            (
                "advertisingId",
                field(text(&[
                    "6D92078A-8246-4BA4-AE5B-76104861E7DC",
                    "00000000-0000-0000-0000-000000000000",
                ]))
                .boxed(),
            ),
            (
                "adTrackingEnabled",
                field(vec![json!(true), json!(false), json!("0")]).boxed(),
            ),
            (
                "id",
                field(vec![
                    json!("B4A5C6D7-1111-2222-3333-444455556666"),
                    json!(7),
                ])
                .boxed(),
            ),
            ("model", field(text(&["iPhone15,2"])).boxed()),
        ]);
        let named = || {
            raw(object(vec![
                ("name", field(vec![json!("Shop"), json!(3)]).boxed()),
                ("version", field(vec![json!("1.2"), json!(12)]).boxed()),
                ("build", field(text(&["99"])).boxed()),
            ]))
        };
        object(vec![
            ("page", raw(page)),
            ("traits", raw(traits)),
            ("campaign", raw(campaign)),
            ("consent", raw(consent)),
            ("device", raw(device)),
            ("app", named()),
            ("os", named()),
            (
                "library",
                field(vec![json!({"name": "analytics.js"})]).boxed(),
            ),
            ("userAgent", field(text(&["Mozilla/5.0"])).boxed()),
        ])
    }

    fn message() -> BoxedStrategy<String> {
        let kinds = text(&[
            "track", "page", "screen", "identify", "alias", "group", "Track ", "x",
        ]);
        let ids = vec![
            json!("u-1"),
            json!("null"),
            json!(42),
            json!("  "),
            json!("a-2"),
        ];
        let properties = object(vec![
            (
                "url",
                field(text(&["https://shop.example/?ttclid=t1&utm_term=shoes"])).boxed(),
            ),
            ("email", field(text(&["Form@Example.com"])).boxed()),
            (
                "Phone",
                field(vec![json!("+44 20 7946 0018"), json!(-5)]).boxed(),
            ),
            ("plan", field(text(&["pro"])).boxed()),
            ("name", field(text(&["Own name"])).boxed()),
            ("revenue", field(vec![json!(9.99)]).boxed()),
        ]);
        let traits = object(vec![
            ("email", field(text(&["Jane@Corp.Example"])).boxed()),
            (
                "phone",
                field(vec![json!("415-555-0000"), json!(4155550000u64)]).boxed(),
            ),
            ("name", field(text(&["Acme"])).boxed()),
        ]);
        object(vec![
            ("type", field(kinds).boxed()),
            ("messageId", field(text(&["m-1", "m-2", ""])).boxed()),
            ("userId", field(ids.clone()).boxed()),
            ("anonymousId", field(ids.clone()).boxed()),
            ("previousId", field(ids.clone()).boxed()),
            ("groupId", field(ids).boxed()),
            ("event", field(text(&["Order Completed", ""])).boxed()),
            ("name", field(text(&["Pricing"])).boxed()),
            ("category", field(text(&["Docs"])).boxed()),
            ("timestamp", times()),
            ("originalTimestamp", times()),
            ("sentAt", times()),
            ("receivedAt", times()),
            ("context", raw(context())),
            ("properties", raw(properties)),
            ("traits", raw(traits)),
            ("integrations", field(vec![json!({"All": true})]).boxed()),
        ])
    }

    fn payload() -> BoxedStrategy<String> {
        prop_oneof![
            3 => message(),
            1 => (
                prop::collection::vec(
                    prop_oneof![8 => message(), 1 => Just("7".to_string())],
                    0..4,
                ),
                times(),
            )
                .prop_map(|(messages, sent_at)| {
                    format!(r#"{{"batch":[{}],"sentAt":{sent_at}}}"#, messages.join(","))
                }),
        ]
        .boxed()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(1024))]

        /// The typed reader yields what the tree it replaced yields: the same signals, the same
        /// dropped identifiers, or the same rejection.
        #[test]
        fn typed_messages_read_as_the_tree_does(text in payload(), app in any::<bool>()) {
            let source = if app { Source::App } else { Source::Web };
            let opts = NormalizeOptions::default();
            let received = cdp_proto::time::from_millis(1_714_564_800_000);
            let run = |typed| {
                let mut dropped = DroppedIdentifiers::default();
                let out = normalize_read(
                    source, "t", text.as_bytes(), received, &opts, &mut dropped, typed,
                );
                (out, dropped)
            };
            let (typed, tree) = (run(true), run(false));
            prop_assert_eq!(&typed, &tree, "{}", text);
        }
    }

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

    #[test]
    fn rejects_what_the_tree_rejects() {
        for bad in [
            r#"{"integrations":{"a":"\ud800"}}"#,
            r#"{"properties":{"n":1e400}}"#,
            r#"{"traits":[1e400]}"#,
            r#"{"batch":{"a":tru}}"#,
            r#"{"x":"a",}"#,
            r#"[{"a":1e400}]"#,
            r#"{"type":"track"} x"#,
        ] {
            let ours = parse(bad).map(|_| ()).map_err(|e| e.to_string());
            let tree = json::parse_segment(bad)
                .map(|_| ())
                .map_err(|e| e.to_string());
            assert_eq!(ours, tree, "{bad}");
            assert!(ours.is_err(), "{bad}");
        }
    }
}
