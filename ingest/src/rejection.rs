//! Why ingest rejects a record: the stable codes that go into the `cdp.error.code` DLQ header, and
//! constructors that keep messages free of values. A message names the field and what was wrong
//! with it, never what the field contained, because the content may be an email or a phone number.

use cdp_proto::dlq::Rejection;

/// The payload is not JSON (or not UTF-8, or nested too deeply).
pub const INVALID_JSON: &str = "invalid_json";
/// The payload, or a message inside a batch, is JSON but not an object.
pub const NOT_AN_OBJECT: &str = "not_an_object";
/// A required field is absent, null or empty.
pub const MISSING_FIELD: &str = "missing_field";
/// A field has a JSON type the source never sends there.
pub const WRONG_TYPE: &str = "wrong_type";
/// The object matches none of the shapes this source accepts.
pub const UNKNOWN_SHAPE: &str = "unknown_shape";
/// The record or one of its messages is larger than the configured limit.
pub const OVERSIZE: &str = "oversize";
/// Every identifier of the event was absent, blocked or invalid.
pub const NO_IDENTIFIERS: &str = "no_identifiers";
/// A timestamp field could not be read as an instant.
pub const INVALID_TIMESTAMP: &str = "invalid_timestamp";
/// The `cdp.tenant` header is not `[a-z0-9_-]{1,64}`. Falling back to the default tenant would
/// file one tenant's people under another's, so such records go to the DLQ instead.
pub const INVALID_TENANT: &str = "invalid_tenant";

/// Every code ingest can put in a DLQ header, for metrics pre-registration and docs.
pub const ALL_CODES: [&str; 9] = [
    INVALID_JSON,
    NOT_AN_OBJECT,
    MISSING_FIELD,
    WRONG_TYPE,
    UNKNOWN_SHAPE,
    OVERSIZE,
    NO_IDENTIFIERS,
    INVALID_TIMESTAMP,
    INVALID_TENANT,
];

pub(crate) fn missing(field: &str) -> Rejection {
    Rejection::new(MISSING_FIELD, format!("field `{field}` is required"))
}

pub(crate) fn wrong_type(field: &str, expected: &str) -> Rejection {
    Rejection::new(WRONG_TYPE, format!("field `{field}` must be {expected}"))
}

pub(crate) fn invalid_timestamp(field: &str) -> Rejection {
    Rejection::new(
        INVALID_TIMESTAMP,
        format!("field `{field}` is not a valid timestamp"),
    )
}

pub(crate) fn oversize(what: &str, size: usize, limit: usize) -> Rejection {
    Rejection::new(
        OVERSIZE,
        format!("{what} is {size} bytes, more than the limit of {limit}"),
    )
}

pub(crate) fn not_an_object(what: &str) -> Rejection {
    Rejection::new(NOT_AN_OBJECT, format!("{what} is not a JSON object"))
}

pub(crate) fn no_identifiers(source: &str) -> Rejection {
    Rejection::new(
        NO_IDENTIFIERS,
        format!("{source} event has no usable identifier (all absent, blocked or invalid)"),
    )
}

/// A rejection for JSON that does not parse. serde_json's syntax messages describe positions and
/// grammar, not content, so they are safe to pass on; anything else gets a generic message.
pub(crate) fn invalid_json(err: &serde_json::Error) -> Rejection {
    use serde_json::error::Category;
    let message = match err.classify() {
        Category::Syntax | Category::Eof => format!("payload is not valid JSON: {err}"),
        Category::Io | Category::Data => format!(
            "payload is not valid JSON (line {}, column {})",
            err.line(),
            err.column()
        ),
    };
    Rejection::new(INVALID_JSON, message)
}

/// Adds the position of a message inside a batch envelope to a rejection's message.
pub(crate) fn in_batch(index: usize, rejection: Rejection) -> Rejection {
    Rejection::new(
        rejection.code,
        format!("batch[{index}]: {}", rejection.message),
    )
}
