//! Errors that stop the ingest stage. Bad input never does: it becomes a DLQ record.

/// Why the ingest stage could not start or had to stop.
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error("invalid ingest config: `{field}` {reason}")]
    Config { field: &'static str, reason: String },
    #[error(transparent)]
    Bus(#[from] cdp_bus::BusError),
    #[error("cannot encode a signal as JSON: {0}")]
    Encode(#[from] serde_json::Error),
}
