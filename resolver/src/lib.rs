//! The resolver: merges identifiers into canonical profiles.
//!
//! Every identifier is a node in a union-find persisted in RocksDB ([`store`]); every assertion
//! that two identifiers belong together is an immutable [`link::Link`]; the [`policy`] decides
//! whether a link may union two profiles. One input batch is applied in one [`txn::Txn`] whose
//! writes, outputs (an outbox) and input offsets are committed in a single atomic write, so a
//! crash resumes exactly where the last batch ended ([`stage`]).
//!
//! The graph is explainable ([`explain`]) and reversible: operator [`command`]s erase a person
//! for good ([`forget`], with [`tombstone`]s) or take a wrong link out ([`unmerge`]), and a
//! policy change is previewed and applied over the whole link log ([`rebuild`]). Identifiers
//! linked to too many profiles are quarantined ([`hub`]). Person records without a shared
//! identifier are joined by probabilistic [`matching`] (Fellegi–Sunter), within the same policy.

pub mod codec;
pub mod command;
pub mod component;
pub mod config;
pub mod explain;
pub mod export;
pub mod fold;
pub mod forget;
pub mod graph;
pub mod held;
pub mod hub;
pub mod link;
pub mod lookup;
pub mod matching;
pub mod outbox;
pub mod overlay;
pub mod pacer;
pub mod partition;
pub mod pipelined;
pub mod policy;
pub mod rebuild;
pub mod stage;
pub mod state_cache;
pub mod store;
pub mod tombstone;
pub mod txn;
pub mod unmerge;
pub mod varint;

pub use config::ResolverConfig;
pub use graph::{BatchOutput, Resolver};
pub use store::{GraphStore, MemStore, RocksStore};

#[derive(Debug, thiserror::Error)]
pub enum ResolverError {
    #[error("storage: {0}")]
    Storage(String),
    #[error("corrupt state in {cf}: {detail}")]
    Corrupt { cf: &'static str, detail: String },
    #[error(transparent)]
    Bus(#[from] cdp_bus::BusError),
    #[error(transparent)]
    Model(#[from] matching::model::ModelError),
}

pub type Result<T, E = ResolverError> = std::result::Result<T, E>;
