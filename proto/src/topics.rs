//! Default topic names. Every name is configurable; these are what `cdp demo` and the Helm chart use.

pub const RAW_WEB: &str = "cdp.raw.web";
pub const RAW_APP: &str = "cdp.raw.app";
pub const RAW_CRM: &str = "cdp.raw.crm";
pub const RAW_MEDIA: &str = "cdp.raw.media";
pub const SIGNALS: &str = "cdp.signals";
pub const DLQ: &str = "cdp.dlq";
pub const IDENTITY_CHANGES: &str = "cdp.identity.changes";
pub const PROFILES: &str = "cdp.profiles";
pub const COHORTS: &str = "cdp.cohorts";
pub const COHORT_MEMBERSHIP: &str = "cdp.cohorts.membership";

/// Every default topic, in pipeline order.
pub const ALL: [&str; 10] = [
    RAW_WEB,
    RAW_APP,
    RAW_CRM,
    RAW_MEDIA,
    SIGNALS,
    DLQ,
    IDENTITY_CHANGES,
    PROFILES,
    COHORTS,
    COHORT_MEMBERSHIP,
];
