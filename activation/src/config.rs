//! Activation configuration: topics, and the cohorts with their CEL expressions.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ActivationConfig {
    pub group: String,
    pub profiles_topic: String,
    pub changes_topic: String,
    pub cohorts_topic: String,
    pub membership_topic: String,
    pub dlq_topic: String,
    pub batch_size: usize,
    pub poll_timeout_ms: u64,
    pub cohorts: Vec<CohortConfig>,
}

/// One cohort: who is in it, and what its change events carry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CohortConfig {
    /// Stable key: `[a-z0-9_]`, used in topic keys and APIs.
    pub key: String,
    #[serde(default)]
    pub description: String,
    /// CEL over `profile` (see the profile view in the README). A missing attribute makes it false.
    pub expression: String,
    /// Higher wins when cohorts compete for one person.
    #[serde(default)]
    pub priority: i32,
    /// Identifier kinds included in this cohort's change events (none: canonical id only).
    #[serde(default)]
    pub identifiers: Vec<String>,
}

impl Default for ActivationConfig {
    fn default() -> Self {
        let cohort =
            |key: &str, description: &str, expression: &str, priority, ids: &[&str]| CohortConfig {
                key: key.into(),
                description: description.into(),
                expression: expression.into(),
                priority,
                identifiers: ids.iter().map(|s| s.to_string()).collect(),
            };
        Self {
            group: "cdp-activation".into(),
            profiles_topic: cdp_proto::topics::PROFILES.into(),
            changes_topic: cdp_proto::topics::IDENTITY_CHANGES.into(),
            cohorts_topic: cdp_proto::topics::COHORTS.into(),
            membership_topic: cdp_proto::topics::COHORT_MEMBERSHIP.into(),
            dlq_topic: cdp_proto::topics::DLQ.into(),
            batch_size: 2000,
            poll_timeout_ms: 100,
            cohorts: vec![
                cohort(
                    "high_intent",
                    "Leads who looked at pricing at least twice this week",
                    r#"profile.lifecycle_stage == "lead" && profile.counts["Pricing Viewed"].last_7d >= 2"#,
                    30,
                    &["email_sha256", "crm_id"],
                ),
                cohort(
                    "recent_buyers",
                    "Completed an order in the last 30 days",
                    r#"profile.counts["Order Completed"].last_30d >= 1"#,
                    20,
                    &["email_sha256", "device_id"],
                ),
                cohort(
                    "cross_channel",
                    "Active on web and in the app",
                    r#""web" in profile.channels_active && "app" in profile.channels_active"#,
                    10,
                    &["email_sha256"],
                ),
                cohort(
                    "customers",
                    "Lifecycle stage customer",
                    r#"profile.lifecycle_stage == "customer""#,
                    5,
                    &["crm_id"],
                ),
            ],
        }
    }
}
