//! Dead-letter records: the original bytes plus headers that say where they came from and why they
//! were rejected (Kafka Connect style). The header names are a contract with operators' tooling.

pub const HEADER_STAGE: &str = "cdp.error.stage";
pub const HEADER_CODE: &str = "cdp.error.code";
pub const HEADER_MESSAGE: &str = "cdp.error.message";
pub const HEADER_SOURCE_TOPIC: &str = "cdp.source.topic";
pub const HEADER_SOURCE_PARTITION: &str = "cdp.source.partition";
pub const HEADER_SOURCE_OFFSET: &str = "cdp.source.offset";

/// Why a record was rejected, in a form that can be put in headers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    /// Stable, machine-readable code (`invalid_json`, `missing_field`, ...).
    pub code: &'static str,
    /// Human-readable detail. Never contains raw PII: callers describe fields, not values.
    pub message: String,
}

impl Rejection {
    pub fn new(code: &'static str, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }
}

impl std::fmt::Display for Rejection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}

/// Headers of a DLQ record for a rejection of the record at `topic/partition/offset` by `stage`.
pub fn headers(
    stage: &str,
    rejection: &Rejection,
    topic: &str,
    partition: i32,
    offset: i64,
) -> Vec<(String, Vec<u8>)> {
    vec![
        (HEADER_STAGE.into(), stage.as_bytes().to_vec()),
        (HEADER_CODE.into(), rejection.code.as_bytes().to_vec()),
        (HEADER_MESSAGE.into(), rejection.message.as_bytes().to_vec()),
        (HEADER_SOURCE_TOPIC.into(), topic.as_bytes().to_vec()),
        (
            HEADER_SOURCE_PARTITION.into(),
            partition.to_string().into_bytes(),
        ),
        (HEADER_SOURCE_OFFSET.into(), offset.to_string().into_bytes()),
    ]
}
