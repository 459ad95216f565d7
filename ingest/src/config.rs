//! `[ingest]` configuration: tenant and phone-region defaults, topic names, batching and limits.
//! Every field has a default that works for `cdp demo`.

use crate::consent::{default_identity_purposes, IdentityConsent, WithoutIdentityConsent};
use crate::dedup::DedupOptions;
use crate::error::IngestError;
use crate::normalize::{NormalizeOptions, DEFAULT_MAX_MESSAGE_BYTES, DEFAULT_MAX_RECORD_BYTES};
use cdp_proto::{topics, Source};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct IngestConfig {
    /// Tenant of records without a `cdp.tenant` header.
    pub default_tenant: String,
    /// ISO 3166 region for phone numbers written without a country code.
    pub default_phone_region: String,
    /// Consumer group of the raw topics.
    pub group: String,
    pub web_topic: String,
    pub app_topic: String,
    pub crm_topic: String,
    pub media_topic: String,
    pub signals_topic: String,
    pub dlq_topic: String,
    /// Most records read, normalised and committed as one batch.
    pub batch_size: usize,
    /// How long one poll waits for the first record.
    pub poll_timeout_ms: u64,
    /// Largest event: a non-batch web/app/media payload or one message of a batch.
    pub max_message_bytes: usize,
    /// Largest record of any source.
    pub max_record_bytes: usize,
    /// A repeated event id (Segment `messageId`, CRM record version, postback id) within this
    /// long of its first copy, by record time, is a retry and is dropped. 0 keeps every copy.
    pub dedup_window_ms: u64,
    /// Most event ids remembered per input partition for that; the oldest are forgotten first.
    pub dedup_max_ids_per_partition: usize,
    /// Consent purposes whose denial means no identity consent (Segment categories or Google
    /// Consent Mode types, e.g. `ad_user_data`).
    pub identity_consent_purposes: Vec<String>,
    /// What happens to the identifiers of an event without identity consent: `unlinked` (kept,
    /// no links asserted) or `linked` (consent is recorded only).
    pub without_identity_consent: WithoutIdentityConsent,
}

impl Default for IngestConfig {
    fn default() -> Self {
        Self {
            default_tenant: "default".into(),
            default_phone_region: "US".into(),
            group: "cdp-ingest".into(),
            web_topic: topics::RAW_WEB.into(),
            app_topic: topics::RAW_APP.into(),
            crm_topic: topics::RAW_CRM.into(),
            media_topic: topics::RAW_MEDIA.into(),
            signals_topic: topics::SIGNALS.into(),
            dlq_topic: topics::DLQ.into(),
            batch_size: 1000,
            poll_timeout_ms: 20,
            max_message_bytes: DEFAULT_MAX_MESSAGE_BYTES,
            max_record_bytes: DEFAULT_MAX_RECORD_BYTES,
            // Segment de-duplicates over 24 hours; libraries retry within minutes.
            dedup_window_ms: 24 * 60 * 60 * 1000,
            dedup_max_ids_per_partition: 100_000,
            identity_consent_purposes: default_identity_purposes(),
            without_identity_consent: WithoutIdentityConsent::Unlinked,
        }
    }
}

/// `true` for a tenant name ingest accepts: `[a-z0-9_-]{1,64}`. Tenants key topics and name
/// state, so they are restricted to characters that are safe everywhere.
pub fn is_valid_tenant(tenant: &str) -> bool {
    !tenant.is_empty()
        && tenant.len() <= 64
        && tenant
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

impl IngestConfig {
    /// Checks every field, naming the first that is wrong.
    pub fn validate(&self) -> Result<(), IngestError> {
        let bad = |field: &'static str, reason: &str| {
            Err(IngestError::Config {
                field,
                reason: reason.to_string(),
            })
        };
        if !is_valid_tenant(&self.default_tenant) {
            return bad("default_tenant", "must match [a-z0-9_-]{1,64}");
        }
        if cdp_proto::NormalizeOptions::with_region(&self.default_phone_region).is_err() {
            return bad(
                "default_phone_region",
                "must be an ISO 3166 alpha-2 region such as \"US\"",
            );
        }
        if self.group.is_empty() {
            return bad("group", "must not be empty");
        }
        let topic_fields = [
            ("web_topic", &self.web_topic),
            ("app_topic", &self.app_topic),
            ("crm_topic", &self.crm_topic),
            ("media_topic", &self.media_topic),
            ("signals_topic", &self.signals_topic),
            ("dlq_topic", &self.dlq_topic),
        ];
        for (field, name) in topic_fields {
            if cdp_bus::validate_topic_name(name).is_err() {
                return bad(
                    field,
                    "is not a valid topic name (letters, digits, '.', '_', '-')",
                );
            }
        }
        for (i, (field, name)) in topic_fields.iter().enumerate() {
            if topic_fields[..i].iter().any(|(_, other)| other == name) {
                return bad(field, "names the same topic as another ingest topic");
            }
        }
        if self.batch_size == 0 {
            return bad("batch_size", "must be at least 1");
        }
        if self.max_message_bytes == 0 {
            return bad("max_message_bytes", "must be at least 1");
        }
        if self.max_record_bytes < self.max_message_bytes {
            return bad("max_record_bytes", "must be at least max_message_bytes");
        }
        if self
            .identity_consent_purposes
            .iter()
            .any(|p| p.trim().is_empty())
        {
            return bad(
                "identity_consent_purposes",
                "must not hold an empty purpose",
            );
        }
        Ok(())
    }

    /// The normalisation options this config describes.
    pub fn normalize_options(&self) -> Result<NormalizeOptions, IngestError> {
        let identifiers = cdp_proto::NormalizeOptions::with_region(&self.default_phone_region)
            .map_err(|e| IngestError::Config {
                field: "default_phone_region",
                reason: e.to_string(),
            })?;
        Ok(NormalizeOptions {
            identifiers,
            max_message_bytes: self.max_message_bytes,
            max_record_bytes: self.max_record_bytes,
            identity_consent: IdentityConsent {
                purposes: self.identity_consent_purposes.clone(),
                without: self.without_identity_consent,
            },
        })
    }

    /// How retried events are recognised.
    pub fn dedup_options(&self) -> DedupOptions {
        DedupOptions {
            window_ms: self.dedup_window_ms,
            max_ids: self.dedup_max_ids_per_partition,
        }
    }

    /// The raw topics and the source each carries.
    pub fn raw_topics(&self) -> [(&str, Source); 4] {
        [
            (self.web_topic.as_str(), Source::Web),
            (self.app_topic.as_str(), Source::App),
            (self.crm_topic.as_str(), Source::Crm),
            (self.media_topic.as_str(), Source::Media),
        ]
    }

    /// The source whose raw topic is `topic`.
    pub fn source_of(&self, topic: &str) -> Option<Source> {
        self.raw_topics()
            .into_iter()
            .find(|(t, _)| *t == topic)
            .map(|(_, s)| s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_is_valid_and_uses_default_topics() {
        let c = IngestConfig::default();
        c.validate().unwrap();
        assert_eq!(c.source_of("cdp.raw.crm"), Some(Source::Crm));
        assert_eq!(c.source_of("cdp.signals"), None);
        assert!(c.normalize_options().is_ok());
    }

    #[test]
    fn toml_round_trip_and_unknown_fields_rejected() {
        let c = IngestConfig::default();
        let text = toml::to_string(&c).unwrap();
        let back: IngestConfig = toml::from_str(&text).unwrap();
        assert_eq!(back, c);
        let partial: IngestConfig = toml::from_str("batch_size = 10").unwrap();
        assert_eq!(partial.batch_size, 10);
        assert_eq!(partial.group, "cdp-ingest");
        assert!(toml::from_str::<IngestConfig>("batch_sise = 10").is_err());
    }

    #[test]
    fn validation_names_the_field() {
        type Edit = fn(&mut IngestConfig);
        let cases: [(Edit, &str); 7] = [
            (|c| c.default_tenant = "Acme Corp".into(), "default_tenant"),
            (
                |c| c.default_phone_region = "ZZ".into(),
                "default_phone_region",
            ),
            (|c| c.dlq_topic = "bad topic".into(), "dlq_topic"),
            (|c| c.signals_topic = c.web_topic.clone(), "signals_topic"),
            (|c| c.batch_size = 0, "batch_size"),
            (|c| c.max_record_bytes = 10, "max_record_bytes"),
            (
                |c| c.identity_consent_purposes = vec![" ".into()],
                "identity_consent_purposes",
            ),
        ];
        for (edit, field) in cases {
            let mut c = IngestConfig::default();
            edit(&mut c);
            match c.validate() {
                Err(IngestError::Config { field: f, .. }) => assert_eq!(f, field),
                other => panic!("{field}: {other:?}"),
            }
        }
    }

    #[test]
    fn tenant_names() {
        for ok in ["default", "acme-eu_1", &"a".repeat(64)] {
            assert!(is_valid_tenant(ok), "{ok}");
        }
        for bad in ["", "Acme", "a b", "a.b", &"a".repeat(65)] {
            assert!(!is_valid_tenant(bad), "{bad}");
        }
    }
}
