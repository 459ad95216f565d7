//! Activation: evaluates cohorts on every profile change and publishes who entered and exited.
//!
//! Cohorts are CEL expressions over a [`view::ProfileView`] ([`cohort`]). Membership lives in
//! RocksDB ([`membership`]); each batch of profile updates and identity changes is applied with
//! its outputs (an outbox) and input offsets in one atomic write ([`stage`]), so a restart neither
//! loses nor repeats a cohort change.

pub mod cohort;
pub mod config;
pub mod membership;
pub mod stage;
pub mod view;

pub use cohort::{Cohort, CohortError, Cohorts};
pub use config::{ActivationConfig, CohortConfig};

#[derive(Debug, thiserror::Error)]
pub enum ActivationError {
    #[error("storage: {0}")]
    Storage(String),
    #[error("corrupt state: {0}")]
    Corrupt(String),
    #[error(transparent)]
    Cohort(#[from] CohortError),
    #[error(transparent)]
    Bus(#[from] cdp_bus::BusError),
}

pub type Result<T, E = ActivationError> = std::result::Result<T, E>;
