//! Segment message fields shared by the web and app emitters. Messages are serialised straight
//! from these structs rather than through `serde_json::Value`: building a `Value` tree per
//! message was most of the cost of generating 10,000 people.

use serde::Serialize;
use serde_json::Value;

/// A Segment message with a source-specific `context`.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct Message<'a, C: Serialize> {
    #[serde(rename = "type")]
    pub(super) kind: &'a str,
    pub(super) message_id: &'a str,
    pub(super) anonymous_id: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) user_id: Option<&'a str>,
    #[serde(flatten)]
    pub(super) body: Body<'a>,
    pub(super) context: C,
    pub(super) timestamp: &'a str,
    pub(super) original_timestamp: &'a str,
    pub(super) sent_at: &'a str,
    pub(super) received_at: &'a str,
}

/// What differs between message types.
#[derive(Serialize, Default)]
pub(super) struct Body<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) event: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) name: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) properties: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) traits: Option<Value>,
}

#[derive(Serialize)]
pub(super) struct Library {
    pub(super) name: &'static str,
    pub(super) version: &'static str,
}

/// Compact JSON of a generated record. Serialising these types cannot fail: every map key is
/// a string.
pub(super) fn to_json<T: Serialize>(value: &T) -> String {
    serde_json::to_string(value).unwrap_or_default()
}
