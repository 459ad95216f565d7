//! cdp-ingest: raw source payloads to normalised [`Signal`](cdp_proto::Signal)s.
//!
//! Records arrive on `cdp.raw.{web,app,crm,media}` as the sources send them. Each is parsed by
//! its source's module ([`web`], [`app`], [`crm`], [`media`]), its identifiers normalised and
//! hashed through [`cdp_proto::normalize`] (raw emails and phones never leave this crate, nor
//! appear in logs or rejection messages), and its identity assertions made explicit as links
//! ([`links`] has the rule table). A record that cannot be used goes to the DLQ with a stable
//! code ([`rejection`]); an identifier value that cannot be used is dropped and counted
//! ([`DroppedIdentifiers`]) while the event is kept. Segment payloads are read into typed,
//! borrowed messages (`message`), other payloads into a borrowed JSON tree (`json`), never
//! `serde_json::Value`, so a record costs few allocations. Consent statements
//! land in the signal, and an event that denies identity consent asserts no links ([`consent`]).
//! [`stage`] runs this over the bus, dropping retried events ([`dedup`]) and counting what it
//! did ([`metrics`]); [`workload`] writes a realistic raw data set with its ground truth.

pub mod app;
pub mod collect;
pub mod config;
pub mod consent;
pub mod crm;
pub mod dedup;
pub mod dropped;
pub mod error;
mod fields;
mod identifiers;
mod json;
pub mod links;
pub mod media;
mod message;
pub mod metrics;
pub mod normalize;
mod query;
pub mod rejection;
mod segment;
pub mod stage;
mod timestamp;
pub mod web;
pub mod workload;

pub use config::IngestConfig;
pub use dedup::{DedupOptions, Deduplicator};
pub use dropped::DroppedIdentifiers;
pub use error::IngestError;
pub use links::LinkRule;
pub use metrics::IngestMetrics;
pub use normalize::{normalize_payload, normalize_payload_counted, NormalizeOptions};
pub use stage::{process_batch, process_batch_with, run, run_with_metrics, BatchOutput};
pub use workload::{generate, generate_with, WorkloadOptions, WorkloadSummary};
