//! The vocabulary of cdp: identifiers and their normalisation, signals, profiles, and the change
//! records every stage writes to its topics. Pure data and pure functions: no I/O lives here.

pub mod change;
pub mod dlq;
pub mod identifier;
pub mod json;
pub mod normalize;
pub mod profile;
mod render;
pub mod rfc3339;
pub mod signal;
pub mod time;
pub mod topics;

pub use change::{
    CohortChange, CohortChangeKind, IdentityChange, IdentityChangeKind, ProfileUpdate,
};
pub use identifier::{Identifier, IdentifierKind, ParseIdentifierError};
pub use normalize::{normalize, NormalizeError, NormalizeOptions};
pub use profile::{Attributes, EventCounter, MergeRecord, Profile};
pub use signal::{Consent, EventInfo, IdentityLink, Signal, Source};
pub use time::Timestamp;
