//! The 20 cohorts of the activation benches: the 4 defaults and 16 more of the kinds marketing
//! teams run (lifecycle, windowed counters, channels, consent, recency).

use cdp_activation::config::{ActivationConfig, CohortConfig};

/// The 16 cohorts added to the 4 defaults.
pub const COHORTS: [(&str, &str); 16] = [
    (
        "mqls",
        r#"profile.lifecycle_stage == "marketingqualifiedlead""#,
    ),
    (
        "webinar_leads",
        r#"profile.lifecycle_stage == "lead" && profile.traits["lead_source"] == "Webinar""#,
    ),
    (
        "nurture_subscribers",
        r#"profile.lifecycle_stage == "subscriber" && profile.consent["email"] == true"#,
    ),
    (
        "engaged_browsers",
        r#"profile.counts["Product Viewed"].last_7d >= 3"#,
    ),
    (
        "daily_app_users",
        r#"profile.counts["Application Opened"].last_1d >= 1"#,
    ),
    (
        "installed_not_registered",
        r#"profile.counts["install"].total >= 1 && !("af_complete_registration" in profile.counts)"#,
    ),
    (
        "cart_intent",
        r#"profile.counts["Product Viewed"].last_7d >= 2 && !("Order Completed" in profile.counts)"#,
    ),
    (
        "repeat_buyers",
        r#"profile.counts["Order Completed"].total >= 2"#,
    ),
    (
        "lapsed_customers",
        r#"profile.lifecycle_stage == "customer" && profile.days_since_last_engagement >= 14"#,
    ),
    (
        "ad_responders",
        r#"profile.counts["Ad Clicked"].last_30d >= 1 && profile.consent["advertising"] == true"#,
    ),
    (
        "email_reachable",
        r#"profile.consent["email"] == true && profile.identifiers["email_sha256"] >= 1"#,
    ),
    (
        "sms_reachable",
        r#"profile.consent["phone"] == true && profile.identifiers["phone_sha256"] >= 1"#,
    ),
    ("omnichannel", "size(profile.channels_active) >= 3"),
    ("web_only", r#"profile.channels_active == ["web"]"#),
    ("power_users", "profile.total_touchpoints >= 25"),
    (
        "newsletter_not_signed_up",
        r#"profile.counts["Newsletter Subscribed"].total >= 1 && !("Signed Up" in profile.counts)"#,
    ),
];

pub fn config() -> ActivationConfig {
    let mut config = ActivationConfig::default();
    for (key, expression) in COHORTS {
        config.cohorts.push(CohortConfig {
            key: key.into(),
            description: String::new(),
            expression: expression.into(),
            priority: 0,
            identifiers: vec!["email_sha256".into()],
            destinations: vec!["audience_topic".into()],
        });
    }
    config
}
