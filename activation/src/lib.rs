//! Activation: evaluates cohorts on every profile change and publishes who entered and exited,
//! to the cohort topics and to the destinations each cohort feeds.
//!
//! Cohorts are CEL expressions over a [`view::ProfileView`] ([`cohort`]), run as native code
//! where they can ([`predicate`]); an update re-evaluates
//! only the cohorts whose inputs changed ([`inputs`]). Membership lives in
//! RocksDB ([`membership`]); each batch of profile updates and identity changes is applied with
//! its outputs (an outbox, whose entry holds both records of a cohort change ([`outbox`]), and
//! per-destination delivery queues) and input offsets in one atomic write ([`stage`]), so a
//! restart neither loses nor repeats a cohort change. Destinations
//! ([`destination`]) are Kafka topics or signed webhooks ([`webhook`]) drained by one thread each
//! ([`delivery`]); windows that expire without a new event are caught by a timer ([`timer`]).
//! Whether a destination is sent a member is decided in one place ([`rules`]): consent,
//! suppression lists ([`suppression`]), competing cohorts ([`priority`]) and frequency caps per
//! channel ([`frequency`]).
//! Updates are decoded with only the fields activation reads ([`update`]).
//! Definitions can be swapped while running ([`definitions::Activation::reload`]).

pub mod cohort;
pub mod config;
pub mod definitions;
pub mod delivery;
pub mod destination;
pub mod frequency;
pub mod inputs;
pub mod membership;
pub mod outbox;
pub mod predicate;
pub mod priority;
pub mod rules;
pub mod stage;
pub mod standing;
pub mod suppression;
pub mod timer;
pub mod update;
pub mod view;
pub mod webhook;

pub use cohort::{Cohort, CohortError, Cohorts};
pub use config::{
    ActivationConfig, CohortConfig, DestinationConfig, DestinationKind, ExclusiveGroupConfig,
    FrequencyCapConfig, SuppressionListConfig,
};
pub use definitions::{Activation, Definitions, ReloadSummary};
pub use predicate::{Compilation, Scope};

#[derive(Debug, thiserror::Error)]
pub enum ActivationError {
    #[error("storage: {0}")]
    Storage(String),
    #[error("corrupt state: {0}")]
    Corrupt(String),
    #[error("config: {0}")]
    Config(String),
    #[error(transparent)]
    Cohort(#[from] CohortError),
    #[error(transparent)]
    Bus(#[from] cdp_bus::BusError),
}

pub type Result<T, E = ActivationError> = std::result::Result<T, E>;
