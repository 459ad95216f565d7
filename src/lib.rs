//! The `cdp` process: the pipeline `cdp run` runs, its HTTP surface (collector, profile API,
//! console, metrics), snapshots, and the configuration they share. The binary (src/main.rs) parses
//! the command line and calls into these modules; the benches in `benches/` call the same
//! modules, so they measure exactly what users run.

pub mod api;
pub mod collect;
pub mod config;
pub mod console;
pub mod demo;
pub mod env_override;
mod error_code;
pub mod eval;
pub mod graph;
pub mod http;
pub mod metrics;
pub mod pipeline;
pub mod priority;
pub mod read_tier;
pub mod retention;
pub mod snapshot;
pub mod snapshot_schedule;
pub mod topic;
