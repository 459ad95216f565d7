//! No input makes a parser panic, and whatever they return keeps the crate's promises: accepted
//! records have identifiers and links among them; rejected ones carry a documented code.

use cdp_ingest::rejection::ALL_CODES;
use cdp_ingest::{normalize_payload, NormalizeOptions};
use cdp_proto::{Signal, Source};
use proptest::prelude::*;
use serde_json::{Map, Value};

fn check(source: Source, payload: &[u8]) -> Result<(), TestCaseError> {
    let received = cdp_proto::time::from_millis(1_717_200_000_000);
    match normalize_payload(source, "t", payload, received, &NormalizeOptions::default()) {
        Ok(signals) => {
            prop_assert!(!signals.is_empty());
            for s in &signals {
                check_signal(s)?;
            }
        }
        Err(r) => prop_assert!(ALL_CODES.contains(&r.code), "undocumented code {}", r.code),
    }
    Ok(())
}

fn check_signal(s: &Signal) -> Result<(), TestCaseError> {
    prop_assert!(!s.identifiers.is_empty());
    prop_assert!(!s.event_id.trim().is_empty());
    prop_assert_eq!(s.links.len(), s.identifiers.len() - 1);
    for l in &s.links {
        prop_assert!(s.identifiers.contains(&l.a) && s.identifiers.contains(&l.b));
        prop_assert!(l.confidence > 0.0 && l.confidence <= 1.0);
    }
    // Serialising what ingest produces never fails.
    prop_assert!(serde_json::to_vec(s).is_ok());
    Ok(())
}

/// Field names of every shape, so that random objects reach deep into the parsers.
const KEYS: &[&str] = &[
    "type",
    "messageId",
    "userId",
    "anonymousId",
    "previousId",
    "groupId",
    "event",
    "name",
    "properties",
    "traits",
    "context",
    "page",
    "url",
    "device",
    "advertisingId",
    "adTrackingEnabled",
    "id",
    "consent",
    "categoryPreferences",
    "campaign",
    "app",
    "os",
    "timestamp",
    "originalTimestamp",
    "sentAt",
    "receivedAt",
    "batch",
    "email",
    "phone",
    "event_name",
    "event_timestamp",
    "user_pseudo_id",
    "app_instance_id",
    "user_id",
    "event_params",
    "key",
    "value",
    "string_value",
    "advertising_id",
    "is_limited_ad_tracking",
    "attributes",
    "Id",
    "Email",
    "Phone",
    "Status",
    "Lifecycle_Stage__c",
    "LastModifiedDate",
    "IsConverted",
    "ConvertedContactId",
    "HasOptedOutOfEmail",
    "hs_additional_emails",
    "lifecyclestage",
    "updatedAt",
    "appsflyer_id",
    "event_time",
    "customer_user_id",
    "idfa",
    "is_lat",
    "event_value",
    "adid",
    "activity_kind",
    "created_at",
    "click_id",
    "cookie_id",
    "ad_user_data",
    "ad_personalization",
    "privacy_info",
    "ads_storage",
];

fn scalar() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        prop_oneof![
            Just("track".to_string()),
            Just("identify".to_string()),
            Just("alias".to_string()),
            Just("Contact".to_string()),
            Just("Lead".to_string()),
            Just("install".to_string()),
            Just("2024-05-01T12:00:00Z".to_string()),
            Just("2024-05-01 12:00:00.000".to_string()),
            Just("00000000-0000-0000-0000-000000000000".to_string()),
            Just("{idfa}".to_string()),
            Just("a@b.example".to_string()),
            Just("denied".to_string()),
            Just("(415) 555-2671".to_string()),
            Just("https://x.example/?gclid=Cj0&utm_source=g".to_string()),
            ".{0,24}",
        ]
        .prop_map(Value::String),
    ]
}

fn json_value() -> impl Strategy<Value = Value> {
    scalar().prop_recursive(4, 64, 8, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::vec((prop::sample::select(KEYS), inner), 0..8).prop_map(|kv| {
                Value::Object(
                    kv.into_iter()
                        .map(|(k, v)| (k.to_string(), v))
                        .collect::<Map<_, _>>(),
                )
            }),
        ]
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        for source in Source::ALL {
            check(source, &bytes)?;
        }
    }

    #[test]
    fn arbitrary_json_in_known_shapes_never_panics(value in json_value()) {
        let bytes = value.to_string().into_bytes();
        for source in Source::ALL {
            check(source, &bytes)?;
        }
    }

    #[test]
    fn fixtures_with_a_field_replaced_never_panic(
        fixture in prop::sample::select(FIXTURES),
        key in prop::sample::select(KEYS),
        replacement in json_value(),
    ) {
        let (source, path) = fixture;
        let text = std::fs::read_to_string(
            std::path::PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("run by cargo")).join("tests/fixtures").join(path),
        ).unwrap();
        let mut value: Value = serde_json::from_str(&text).unwrap();
        replace_everywhere(&mut value, key, &replacement);
        check(source, value.to_string().as_bytes())?;
    }
}

const FIXTURES: &[(Source, &str)] = &[
    (Source::Web, "web/track_paid_landing.json"),
    (Source::Web, "web/identify.json"),
    (Source::Web, "web/page.json"),
    (Source::Web, "web/alias.json"),
    (Source::Web, "web/group.json"),
    (Source::Web, "web/batch.json"),
    (Source::App, "app/segment_ios_limited_tracking.json"),
    (Source::App, "app/segment_android_order.json"),
    (Source::App, "app/ga4_row.json"),
    (Source::Crm, "crm/salesforce_contact.json"),
    (Source::Crm, "crm/salesforce_lead_converted.json"),
    (Source::Crm, "crm/hubspot_contact.json"),
    (Source::Media, "media/appsflyer_install.json"),
    (Source::Media, "media/appsflyer_purchase.json"),
    (Source::Media, "media/adjust_install.json"),
    (Source::Media, "media/click_log.json"),
];

/// Sets `key` to `replacement` in every object of `value` that has it.
fn replace_everywhere(value: &mut Value, key: &str, replacement: &Value) {
    match value {
        Value::Object(map) => {
            for (k, v) in map.iter_mut() {
                if k == key {
                    *v = replacement.clone();
                } else {
                    replace_everywhere(v, key, replacement);
                }
            }
        }
        Value::Array(items) => {
            for v in items {
                replace_everywhere(v, key, replacement);
            }
        }
        _ => {}
    }
}
