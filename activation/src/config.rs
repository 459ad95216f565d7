//! Activation configuration: topics, cohorts with their CEL expressions, and the destinations
//! cohorts are delivered to. The file is parsed into a raw shape, then validated: an invalid
//! destination or a cohort naming an unknown destination fails at load, naming the field.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "RawActivationConfig")]
pub struct ActivationConfig {
    pub group: String,
    pub profiles_topic: String,
    pub changes_topic: String,
    pub cohorts_topic: String,
    pub membership_topic: String,
    pub dlq_topic: String,
    pub batch_size: usize,
    pub poll_timeout_ms: u64,
    /// How often profiles whose windows expire are re-evaluated without a new event.
    pub timer_interval_ms: u64,
    pub cohorts: Vec<CohortConfig>,
    pub destinations: Vec<DestinationConfig>,
    /// Identifiers that must never be sent to some (or every) destination.
    pub suppression_lists: Vec<SuppressionListConfig>,
    /// Most `Audience Entered` deliveries one person gets on a channel within a window.
    pub frequency_caps: Vec<FrequencyCapConfig>,
    /// Cohorts that compete for a person: each destination gets them in the best one only.
    pub exclusive_groups: Vec<ExclusiveGroupConfig>,
}

impl ActivationConfig {
    /// What activation consumes, in one group: profile updates and identity changes.
    pub fn input_topics(&self) -> [&str; 2] {
        [self.profiles_topic.as_str(), self.changes_topic.as_str()]
    }
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
    /// Identifier kinds included in this cohort's events on `cohorts_topic` (none: canonical id only).
    #[serde(default)]
    pub identifiers: Vec<String>,
    /// Keys of the destinations this cohort's changes are delivered to.
    #[serde(default)]
    pub destinations: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DestinationKind {
    /// Records on a topic of the bus.
    Kafka,
    /// Signed HTTP POSTs (Standard Webhooks).
    Webhook,
}

/// A downstream channel: what it receives, and who may be sent to it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DestinationConfig {
    /// Stable key: `[a-z0-9_]`, referenced by cohorts.
    pub key: String,
    pub kind: DestinationKind,
    /// `kafka`: the topic written to.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub topic: String,
    /// `webhook`: the `http://` or `https://` URL posted to.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub url: String,
    /// Identifier kinds this destination receives (none: canonical id only).
    #[serde(default)]
    pub identifiers: Vec<String>,
    /// Consent purposes that must be granted explicitly; anyone else is never sent here.
    #[serde(default)]
    pub consent: Vec<String>,
    /// The channel it reaches people on (`email`, `ads`, `sms`, `crm`...), which
    /// `frequency_caps` limit. Empty: no cap applies.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub channel: String,
    /// `webhook`: signing secret `whsec_<base64>`. Prefer `secret_env`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub secret: String,
    /// `webhook`: name of the environment variable holding the signing secret.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub secret_env: String,
    /// `webhook`: most events in one request.
    #[serde(default = "defaults::batch_size")]
    pub batch_size: usize,
    /// `webhook`: limit for one request, connect to last byte.
    #[serde(default = "defaults::timeout_ms")]
    pub timeout_ms: u64,
    /// `webhook`: attempts per batch before it goes to `dlq_topic`.
    #[serde(default = "defaults::max_attempts")]
    pub max_attempts: u32,
    /// `webhook`: first retry delay; doubles per attempt, with jitter, up to `max_backoff_ms`.
    #[serde(default = "defaults::initial_backoff_ms")]
    pub initial_backoff_ms: u64,
    #[serde(default = "defaults::max_backoff_ms")]
    pub max_backoff_ms: u64,
    /// Where undeliverable events go, with reason headers.
    #[serde(default = "defaults::dlq_topic")]
    pub dlq_topic: String,
}

/// A list of identifiers that must never be sent to its destinations.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SuppressionListConfig {
    /// Stable key: `[a-z0-9_]`, named in errors.
    pub key: String,
    /// Identifier kind of every value (`email_sha256`, `phone_sha256`, `crm_id`...).
    pub kind: String,
    /// A file of values, one per line (blank lines and `#` comments skipped), read at start and
    /// on every reload.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub file: String,
    /// Values listed inline.
    #[serde(default)]
    pub values: Vec<String>,
    /// Destinations it applies to; empty: every destination.
    #[serde(default)]
    pub destinations: Vec<String>,
    /// Region for phone numbers written without a country code (ISO 3166 alpha-2).
    #[serde(default = "defaults::phone_region")]
    pub phone_region: String,
}

/// Cohorts that compete: on each destination they feed, a person is delivered only in the
/// highest-`priority` cohort of the group they are a member of (equal priorities: the smaller
/// key).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExclusiveGroupConfig {
    /// Stable key: `[a-z0-9_]`, named in errors.
    pub key: String,
    /// Keys of the competing cohorts; a cohort is in at most one group.
    pub cohorts: Vec<String>,
}

/// At most `max` `Audience Entered` deliveries per person on `channel` within `window`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FrequencyCapConfig {
    pub channel: String,
    pub max: u32,
    /// A number and a unit: `s`, `m`, `h`, `d` or `w` (`"7d"`, `"24h"`).
    pub window: String,
}

impl FrequencyCapConfig {
    /// The window in milliseconds, or why it cannot be read.
    pub fn window_ms(&self) -> Result<u64, String> {
        parse_window(&self.window)
    }
}

fn parse_window(text: &str) -> Result<u64, String> {
    let bad = || format!("{text:?} is not a window like \"7d\" (units s, m, h, d, w)");
    let t = text.trim();
    let unit = t.chars().last().ok_or_else(bad)?;
    let n: u64 = t[..t.len() - unit.len_utf8()].parse().map_err(|_| bad())?;
    let ms = match unit {
        's' => 1_000,
        'm' => 60_000,
        'h' => 3_600_000,
        'd' => 86_400_000,
        'w' => 7 * 86_400_000,
        _ => return Err(bad()),
    };
    match n.checked_mul(ms) {
        Some(0) => Err(format!("{text:?} must be longer than zero")),
        Some(v) => Ok(v),
        None => Err(bad()),
    }
}

mod defaults {
    pub fn phone_region() -> String {
        "US".into()
    }
    pub fn batch_size() -> usize {
        100
    }
    pub fn timeout_ms() -> u64 {
        10_000
    }
    pub fn max_attempts() -> u32 {
        8
    }
    pub fn initial_backoff_ms() -> u64 {
        500
    }
    pub fn max_backoff_ms() -> u64 {
        60_000
    }
    pub fn dlq_topic() -> String {
        cdp_proto::topics::DLQ.into()
    }
}

impl DestinationConfig {
    /// A Kafka-topic destination with the delivery defaults.
    pub fn kafka(key: &str, topic: &str) -> Self {
        Self::new(key, DestinationKind::Kafka, topic, "")
    }

    /// A webhook destination with the delivery defaults.
    pub fn webhook(key: &str, url: &str) -> Self {
        Self::new(key, DestinationKind::Webhook, "", url)
    }

    fn new(key: &str, kind: DestinationKind, topic: &str, url: &str) -> Self {
        Self {
            key: key.into(),
            kind,
            topic: topic.into(),
            url: url.into(),
            identifiers: Vec::new(),
            consent: Vec::new(),
            channel: String::new(),
            secret: String::new(),
            secret_env: String::new(),
            batch_size: defaults::batch_size(),
            timeout_ms: defaults::timeout_ms(),
            max_attempts: defaults::max_attempts(),
            initial_backoff_ms: defaults::initial_backoff_ms(),
            max_backoff_ms: defaults::max_backoff_ms(),
            dlq_topic: defaults::dlq_topic(),
        }
    }
}

/// A config that does not hold together; the message names the field and the entry.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("activation.{field}: {message}")]
pub struct ConfigError {
    pub field: String,
    pub message: String,
}

fn invalid(field: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError {
        field: field.into(),
        message: message.into(),
    }
}

pub(crate) fn valid_key(key: &str) -> bool {
    !key.is_empty()
        && key.len() <= 64
        && key
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

impl ActivationConfig {
    /// Checks destinations and the cohorts' references to them. CEL expressions are checked by
    /// [`crate::Cohorts::compile`], which the stage and the config loader both run.
    pub fn validate(&self) -> Result<(), ConfigError> {
        for (name, v) in [
            ("batch_size", self.batch_size as u64),
            ("poll_timeout_ms", self.poll_timeout_ms),
            ("timer_interval_ms", self.timer_interval_ms),
        ] {
            if v == 0 {
                return Err(invalid(name, "must be at least 1"));
            }
        }
        let mut seen = std::collections::BTreeSet::new();
        for d in &self.destinations {
            let field = |f: &str| format!("destinations[{}].{f}", d.key);
            if !valid_key(&d.key) {
                return Err(invalid(
                    "destinations.key",
                    format!("{:?} must be 1-64 of [a-z0-9_]", d.key),
                ));
            }
            if !seen.insert(d.key.as_str()) {
                return Err(invalid(
                    "destinations.key",
                    format!("{:?} is declared twice", d.key),
                ));
            }
            match d.kind {
                DestinationKind::Kafka => {
                    cdp_bus::validate_topic_name(&d.topic)
                        .map_err(|e| invalid(field("topic"), e.to_string()))?;
                    if !d.url.is_empty() || !d.secret.is_empty() || !d.secret_env.is_empty() {
                        return Err(invalid(
                            field("kind"),
                            "url, secret and secret_env are for kind = \"webhook\"",
                        ));
                    }
                }
                DestinationKind::Webhook => {
                    if !d.topic.is_empty() {
                        return Err(invalid(field("topic"), "is for kind = \"kafka\""));
                    }
                    let scheme_ok = d.url.starts_with("http://") || d.url.starts_with("https://");
                    if !scheme_ok || d.url.contains(char::is_whitespace) {
                        return Err(invalid(field("url"), "must be an http:// or https:// URL"));
                    }
                    match (d.secret.is_empty(), d.secret_env.is_empty()) {
                        (true, true) => {
                            return Err(invalid(field("secret_env"), "a webhook needs a secret"))
                        }
                        (false, false) => {
                            return Err(invalid(
                                field("secret"),
                                "set secret or secret_env, not both",
                            ))
                        }
                        (false, true) => crate::webhook::Secret::parse(&d.secret)
                            .map(|_| ())
                            .map_err(|e| invalid(field("secret"), e))?,
                        (true, false) => {}
                    }
                    for (name, v) in [
                        ("batch_size", d.batch_size as u64),
                        ("timeout_ms", d.timeout_ms),
                        ("max_attempts", d.max_attempts as u64),
                        ("initial_backoff_ms", d.initial_backoff_ms),
                    ] {
                        if v == 0 {
                            return Err(invalid(field(name), "must be at least 1"));
                        }
                    }
                    if d.max_backoff_ms < d.initial_backoff_ms {
                        return Err(invalid(
                            field("max_backoff_ms"),
                            "must not be below initial_backoff_ms",
                        ));
                    }
                }
            }
            cdp_bus::validate_topic_name(&d.dlq_topic)
                .map_err(|e| invalid(field("dlq_topic"), e.to_string()))?;
            for (name, list) in [("identifiers", &d.identifiers), ("consent", &d.consent)] {
                if list.iter().any(|s| s.trim().is_empty()) {
                    return Err(invalid(field(name), "entries must not be empty"));
                }
            }
            if !d.channel.is_empty() && !valid_key(&d.channel) {
                return Err(invalid(field("channel"), "must be 1-64 of [a-z0-9_]"));
            }
        }
        for c in &self.cohorts {
            for d in &c.destinations {
                if !seen.contains(d.as_str()) {
                    return Err(invalid(
                        format!("cohorts[{}].destinations", c.key),
                        format!("no destination with key {d:?}"),
                    ));
                }
            }
        }
        self.validate_suppression_lists(&seen)?;
        self.validate_frequency_caps()?;
        self.validate_exclusive_groups()
    }

    fn validate_exclusive_groups(&self) -> Result<(), ConfigError> {
        let mut keys = std::collections::BTreeSet::new();
        let mut grouped = std::collections::BTreeMap::new();
        for g in &self.exclusive_groups {
            if !valid_key(&g.key) {
                return Err(invalid(
                    "exclusive_groups.key",
                    format!("{:?} must be 1-64 of [a-z0-9_]", g.key),
                ));
            }
            if !keys.insert(g.key.as_str()) {
                return Err(invalid(
                    "exclusive_groups.key",
                    format!("{:?} is declared twice", g.key),
                ));
            }
            let field = format!("exclusive_groups[{}].cohorts", g.key);
            for c in &g.cohorts {
                if !self.cohorts.iter().any(|k| &k.key == c) {
                    return Err(invalid(field, format!("no cohort with key {c:?}")));
                }
                if let Some(other) = grouped.insert(c.as_str(), g.key.as_str()) {
                    return Err(invalid(
                        field,
                        format!("cohort {c:?} is already in group {other:?}"),
                    ));
                }
            }
        }
        Ok(())
    }

    fn validate_suppression_lists(
        &self,
        destinations: &std::collections::BTreeSet<&str>,
    ) -> Result<(), ConfigError> {
        let mut seen = std::collections::BTreeSet::new();
        for l in &self.suppression_lists {
            let field = |f: &str| format!("suppression_lists[{}].{f}", l.key);
            if !valid_key(&l.key) {
                return Err(invalid(
                    "suppression_lists.key",
                    format!("{:?} must be 1-64 of [a-z0-9_]", l.key),
                ));
            }
            if !seen.insert(l.key.as_str()) {
                return Err(invalid(
                    "suppression_lists.key",
                    format!("{:?} is declared twice", l.key),
                ));
            }
            for d in &l.destinations {
                if !destinations.contains(d.as_str()) {
                    return Err(invalid(
                        field("destinations"),
                        format!("no destination with key {d:?}"),
                    ));
                }
            }
            if l.file.is_empty() && l.values.is_empty() {
                return Err(invalid(field("file"), "set a file, values, or both"));
            }
            // Inline values are checked here; the file is read when the definitions compile.
            let normalizer = crate::suppression::Normalizer::new(l)
                .map_err(|(name, message)| invalid(field(name), message))?;
            for (i, v) in l.values.iter().enumerate() {
                normalizer
                    .normalize(v)
                    .map_err(|code| invalid(field(&format!("values[{i}]")), code))?;
            }
        }
        Ok(())
    }

    fn validate_frequency_caps(&self) -> Result<(), ConfigError> {
        for cap in &self.frequency_caps {
            let field = |f: &str| format!("frequency_caps[{}].{f}", cap.channel);
            if !valid_key(&cap.channel) {
                return Err(invalid(
                    "frequency_caps.channel",
                    format!("{:?} must be 1-64 of [a-z0-9_]", cap.channel),
                ));
            }
            if !self.destinations.iter().any(|d| d.channel == cap.channel) {
                return Err(invalid(
                    field("channel"),
                    format!("no destination has channel {:?}", cap.channel),
                ));
            }
            if cap.max == 0 {
                return Err(invalid(field("max"), "must be at least 1"));
            }
            cap.window_ms().map_err(|e| invalid(field("window"), e))?;
        }
        Ok(())
    }
}

/// The file's shape, before validation.
#[derive(Deserialize)]
#[serde(default, deny_unknown_fields)]
struct RawActivationConfig {
    group: String,
    profiles_topic: String,
    changes_topic: String,
    cohorts_topic: String,
    membership_topic: String,
    dlq_topic: String,
    batch_size: usize,
    poll_timeout_ms: u64,
    timer_interval_ms: u64,
    cohorts: Vec<CohortConfig>,
    destinations: Vec<DestinationConfig>,
    suppression_lists: Vec<SuppressionListConfig>,
    frequency_caps: Vec<FrequencyCapConfig>,
    exclusive_groups: Vec<ExclusiveGroupConfig>,
}

impl Default for RawActivationConfig {
    fn default() -> Self {
        let d = ActivationConfig::default();
        Self {
            group: d.group,
            profiles_topic: d.profiles_topic,
            changes_topic: d.changes_topic,
            cohorts_topic: d.cohorts_topic,
            membership_topic: d.membership_topic,
            dlq_topic: d.dlq_topic,
            batch_size: d.batch_size,
            poll_timeout_ms: d.poll_timeout_ms,
            timer_interval_ms: d.timer_interval_ms,
            cohorts: d.cohorts,
            destinations: d.destinations,
            suppression_lists: d.suppression_lists,
            frequency_caps: d.frequency_caps,
            exclusive_groups: d.exclusive_groups,
        }
    }
}

impl TryFrom<RawActivationConfig> for ActivationConfig {
    type Error = ConfigError;

    fn try_from(r: RawActivationConfig) -> Result<Self, ConfigError> {
        let config = Self {
            group: r.group,
            profiles_topic: r.profiles_topic,
            changes_topic: r.changes_topic,
            cohorts_topic: r.cohorts_topic,
            membership_topic: r.membership_topic,
            dlq_topic: r.dlq_topic,
            batch_size: r.batch_size,
            poll_timeout_ms: r.poll_timeout_ms,
            timer_interval_ms: r.timer_interval_ms,
            cohorts: r.cohorts,
            destinations: r.destinations,
            suppression_lists: r.suppression_lists,
            frequency_caps: r.frequency_caps,
            exclusive_groups: r.exclusive_groups,
        };
        config.validate()?;
        Ok(config)
    }
}

/// Key of the default Kafka-topic destination the example cohorts feed.
pub const DEFAULT_AUDIENCE_DESTINATION: &str = "audience_topic";

impl Default for ActivationConfig {
    fn default() -> Self {
        let cohort =
            |key: &str, description: &str, expression: &str, priority, ids: &[&str]| CohortConfig {
                key: key.into(),
                description: description.into(),
                expression: expression.into(),
                priority,
                identifiers: ids.iter().map(|s| s.to_string()).collect(),
                destinations: vec![DEFAULT_AUDIENCE_DESTINATION.into()],
            };
        let mut audiences =
            DestinationConfig::kafka(DEFAULT_AUDIENCE_DESTINATION, "cdp.activation.audiences");
        audiences.identifiers = vec!["email_sha256".into(), "device_id".into()];
        audiences.consent = vec!["ad_personalization".into()];
        Self {
            group: "cdp-activation".into(),
            profiles_topic: cdp_proto::topics::PROFILES.into(),
            changes_topic: cdp_proto::topics::IDENTITY_CHANGES.into(),
            cohorts_topic: cdp_proto::topics::COHORTS.into(),
            membership_topic: cdp_proto::topics::COHORT_MEMBERSHIP.into(),
            dlq_topic: cdp_proto::topics::DLQ.into(),
            batch_size: 2000,
            poll_timeout_ms: 20,
            timer_interval_ms: 1000,
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
            destinations: vec![audiences],
            suppression_lists: Vec::new(),
            frequency_caps: Vec::new(),
            exclusive_groups: Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Deserialize)]
    struct File {
        activation: ActivationConfig,
    }

    fn parse(text: &str) -> Result<ActivationConfig, String> {
        toml::from_str::<File>(text)
            .map(|f| f.activation)
            .map_err(|e| e.to_string())
    }

    const WEBHOOK: &str = r#"
[activation]
[[activation.destinations]]
key = "crm"
kind = "webhook"
url = "https://crm.example.com/hooks/cdp"
secret_env = "CDP_CRM_WEBHOOK_SECRET"
identifiers = ["crm_id"]

[[activation.cohorts]]
key = "vip"
expression = "profile.total_touchpoints > 10"
destinations = ["crm"]
"#;

    #[test]
    fn defaults_are_valid_and_feed_the_topic_destination() {
        let d = ActivationConfig::default();
        d.validate().unwrap();
        assert!(d
            .cohorts
            .iter()
            .all(|c| c.destinations == [DEFAULT_AUDIENCE_DESTINATION]));
        assert_eq!(d.destinations[0].kind, DestinationKind::Kafka);
        assert_eq!(parse("[activation]\n").unwrap(), d);
    }

    #[test]
    fn a_webhook_destination_parses_with_delivery_defaults() {
        let c = parse(WEBHOOK).unwrap();
        let d = &c.destinations[0];
        assert_eq!(d.kind, DestinationKind::Webhook);
        assert_eq!(d.max_attempts, 8);
        assert_eq!(d.dlq_topic, "cdp.dlq");
        assert_eq!(c.cohorts[0].destinations, ["crm"]);
    }

    const RULES: &str = r#"
[activation]
[[activation.destinations]]
key = "esp"
kind = "kafka"
topic = "t.esp"
channel = "email"

[[activation.cohorts]]
key = "nurture"
expression = "true"
priority = 10
destinations = ["esp"]

[[activation.cohorts]]
key = "high_intent"
expression = "true"
priority = 30
destinations = ["esp"]

[[activation.suppression_lists]]
key = "optouts"
kind = "email_sha256"
values = ["Jane@Example.com"]
destinations = ["esp"]

[[activation.frequency_caps]]
channel = "email"
max = 3
window = "7d"

[[activation.exclusive_groups]]
key = "lifecycle"
cohorts = ["nurture", "high_intent"]
"#;

    #[test]
    fn orchestration_rules_parse_and_invalid_ones_name_the_entry() {
        let c = parse(RULES).unwrap();
        assert_eq!(c.destinations[0].channel, "email");
        assert_eq!(c.suppression_lists[0].phone_region, "US");
        assert_eq!(c.frequency_caps[0].window_ms(), Ok(7 * 86_400_000));
        assert_eq!(c.exclusive_groups[0].cohorts, ["nurture", "high_intent"]);
        let cases = [
            (
                RULES.replace("window = \"7d\"", "window = \"7 days\""),
                "frequency_caps[email].window",
            ),
            (
                RULES.replace("window = \"7d\"", "window = \"0h\""),
                "frequency_caps[email].window",
            ),
            (
                RULES.replace("max = 3", "max = 0"),
                "frequency_caps[email].max",
            ),
            (
                RULES.replace("channel = \"email\"\nmax", "channel = \"sms\"\nmax"),
                "frequency_caps[sms].channel",
            ),
            (
                RULES.replace("channel = \"email\"\n\n", "channel = \"E-mail\"\n\n"),
                "destinations[esp].channel",
            ),
            (
                RULES.replace("\"Jane@Example.com\"", "\"jane\""),
                "suppression_lists[optouts].values[0]",
            ),
            (
                RULES.replace("destinations = [\"esp\"]\n\n[[activation.frequency", "destinations = [\"sms\"]\n\n[[activation.frequency"),
                "suppression_lists[optouts].destinations",
            ),
            (
                RULES.replace("values = [\"Jane@Example.com\"]\n", ""),
                "suppression_lists[optouts].file",
            ),
            (
                RULES.replace("cohorts = [\"nurture\", \"high_intent\"]", "cohorts = [\"nurture\", \"vip\"]"),
                "exclusive_groups[lifecycle].cohorts",
            ),
            (
                format!(
                    "{RULES}\n[[activation.exclusive_groups]]\nkey = \"other\"\ncohorts = [\"nurture\"]\n"
                ),
                "exclusive_groups[other].cohorts",
            ),
        ];
        for (text, field) in cases {
            let err = parse(&text).unwrap_err();
            assert!(err.contains(field), "expected {field} in: {err}");
        }
    }

    #[test]
    fn invalid_destinations_name_the_field() {
        let cases = [
            (
                WEBHOOK.replace(r#"destinations = ["crm"]"#, r#"destinations = ["ads"]"#),
                "cohorts[vip].destinations",
            ),
            (
                WEBHOOK.replace("https://crm.example.com/hooks/cdp", "ftp://x"),
                "destinations[crm].url",
            ),
            (
                WEBHOOK.replace("secret_env = \"CDP_CRM_WEBHOOK_SECRET\"\n", ""),
                "destinations[crm].secret_env",
            ),
            (
                WEBHOOK.replace(
                    "secret_env = \"CDP_CRM_WEBHOOK_SECRET\"",
                    "secret = \"whsec_%%%\"",
                ),
                "destinations[crm].secret",
            ),
            (
                WEBHOOK.replace("kind = \"webhook\"", "kind = \"kafka\""),
                "destinations[crm].topic",
            ),
            (
                WEBHOOK.replace("kind = \"webhook\"", "kind = \"ftp\""),
                "unknown variant",
            ),
            (
                WEBHOOK.replace("key = \"crm\"", "key = \"CRM\""),
                "destinations.key",
            ),
            (
                WEBHOOK.replace("identifiers = [\"crm_id\"]", "identifers = [\"crm_id\"]"),
                "identifers",
            ),
            (
                WEBHOOK.replace("identifiers = [\"crm_id\"]", "max_attempts = 0"),
                "destinations[crm].max_attempts",
            ),
        ];
        for (text, field) in cases {
            let err = parse(&text).unwrap_err();
            assert!(err.contains(field), "expected {field} in: {err}");
        }
    }
}
