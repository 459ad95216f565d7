//! The parsers on documentation-style examples of every source shape (`tests/fixtures/`), and on
//! the ways payloads go wrong.

use cdp_ingest::rejection;
use cdp_ingest::{
    normalize_payload, normalize_payload_counted, DroppedIdentifiers, NormalizeOptions,
};
use cdp_proto::normalize::sha256_hex;
use cdp_proto::{Identifier, IdentifierKind, Signal, Source, Timestamp};
use serde_json::json;
use std::path::PathBuf;

fn fixture(path: &str) -> Vec<u8> {
    let p = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("run by cargo"))
        .join("tests/fixtures")
        .join(path);
    std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn at(s: &str) -> Timestamp {
    chrono::DateTime::parse_from_rfc3339(s)
        .unwrap()
        .with_timezone(&chrono::Utc)
}

fn received() -> Timestamp {
    at("2024-06-01T00:00:00Z")
}

fn parse(source: Source, path: &str) -> (Vec<Signal>, DroppedIdentifiers) {
    let mut dropped = DroppedIdentifiers::default();
    let signals = normalize_payload_counted(
        source,
        "acme",
        &fixture(path),
        received(),
        &NormalizeOptions::default(),
        &mut dropped,
    )
    .unwrap_or_else(|r| panic!("{path}: {r}"));
    (signals, dropped)
}

fn one(source: Source, path: &str) -> (Signal, DroppedIdentifiers) {
    let (mut signals, dropped) = parse(source, path);
    assert_eq!(signals.len(), 1, "{path}");
    (signals.remove(0), dropped)
}

fn reject(source: Source, payload: &[u8]) -> cdp_proto::dlq::Rejection {
    match normalize_payload(
        source,
        "acme",
        payload,
        received(),
        &NormalizeOptions::default(),
    ) {
        Ok(s) => panic!("accepted {}: {s:?}", String::from_utf8_lossy(payload)),
        Err(r) => r,
    }
}

fn id(kind: IdentifierKind, value: &str) -> Identifier {
    Identifier::new(kind, value)
}

fn email(raw: &str) -> Identifier {
    id(
        IdentifierKind::EmailSha256,
        &sha256_hex(&raw.trim().to_lowercase()),
    )
}

fn phone(e164: &str) -> Identifier {
    id(IdentifierKind::PhoneSha256, &sha256_hex(e164))
}

fn has(s: &Signal, want: &Identifier) -> bool {
    s.identifiers.contains(want)
}

/// `(a, b, rule, confidence)` of every link, as text.
fn links(s: &Signal) -> Vec<(String, String, String, f64)> {
    s.links
        .iter()
        .map(|l| {
            (
                l.a.to_string(),
                l.b.to_string(),
                l.rule.clone(),
                l.confidence,
            )
        })
        .collect()
}

/// Links must connect identifiers of the signal itself, and all of them.
fn assert_links_span_identifiers(s: &Signal) {
    for l in &s.links {
        assert!(has(s, &l.a) && has(s, &l.b), "{l:?}");
    }
    assert_eq!(
        s.links.len(),
        s.identifiers.len() - 1,
        "a star over {:?}",
        s.identifiers
    );
}

/// Raw contact details must not survive anywhere in the serialised signal.
fn assert_no_raw(s: &Signal, needles: &[&str]) {
    let json = serde_json::to_string(s).unwrap().to_lowercase();
    for n in needles {
        assert!(!json.contains(&n.to_lowercase()), "{n} leaked into {json}");
    }
}

#[test]
fn web_track_reads_landing_page_consent_traits_and_corrects_clock_skew() {
    let (s, _) = one(Source::Web, "web/track_paid_landing.json");
    assert_eq!(s.tenant, "acme");
    assert_eq!(s.source, Source::Web);
    assert_eq!(s.event_id, "ajs-next-69b3f1f2-4e0f-4f7e-9a4c-1d2b3c4d5e6f");
    // The device clock is an hour fast: receivedAt - (sentAt - originalTimestamp).
    assert_eq!(s.event_time, at("2024-05-01T12:00:08Z"));
    assert_eq!(s.received_at, received());
    let anon = id(
        IdentifierKind::AnonymousId,
        "507f191e-810c-4f9a-a2bc-92d7a1c3e4f5",
    );
    let click = id(IdentifierKind::ClickId, "Cj0KCQjw8J2xBhCdARIsABC-DefGhIjK");
    assert!(has(&s, &anon));
    assert!(has(&s, &click), "click ids keep their case");
    assert!(has(&s, &email("maria.garcia@example.com")));
    assert_eq!(s.identifiers.len(), 3);
    assert_links_span_identifiers(&s);
    let rules: Vec<String> = links(&s).into_iter().map(|l| l.2).collect();
    assert!(rules.contains(&"same_event".to_string()));
    assert!(rules.contains(&"click_id_match".to_string()));

    let event = s.event.as_ref().unwrap();
    assert_eq!(event.kind, "track");
    assert_eq!(event.name.as_deref(), Some("Pricing Viewed"));
    assert_eq!(event.properties["plan"], json!("pro"));
    assert_eq!(event.properties["utm_source"], json!("google"));
    assert_eq!(event.properties["utm_campaign"], json!("spring_sale"));
    assert_eq!(s.traits.get("plan"), Some(&json!("trial")));
    assert!(!s.traits.contains_key("email"));
    assert_eq!(s.consent.purpose("advertising"), Some(false));
    assert_eq!(s.consent.purpose("analytics"), Some(true));
    assert_no_raw(&s, &["maria.garcia@example.com"]);
}

#[test]
fn web_identify_hashes_email_and_phone_and_links_by_login() {
    let (s, _) = one(Source::Web, "web/identify.json");
    assert_eq!(s.event_time, at("2024-05-01T12:05:01.250Z"));
    let user = id(IdentifierKind::UserId, "usr_9f2c41d7a3b8e610");
    assert!(has(&s, &user));
    assert!(has(&s, &email("person@example.com")));
    assert_eq!(
        email("person@example.com").value,
        "542d240129883c019e106e3b1b2d3f3cb3537c43c425364de8e951d5a3083345"
    );
    assert!(has(&s, &phone("+14155552671")));
    assert_eq!(s.identifiers.len(), 4);
    assert_links_span_identifiers(&s);
    for (a, _, rule, confidence) in links(&s) {
        assert_eq!(a, user.to_string(), "the user id is the star's centre");
        assert_eq!((rule.as_str(), confidence), ("deterministic_login", 1.0));
    }
    assert_eq!(s.traits.get("firstName"), Some(&json!("Maria")));
    assert!(!s.traits.contains_key("email") && !s.traits.contains_key("phone"));
    assert_eq!(s.event.as_ref().unwrap().kind, "identify");
    assert_no_raw(&s, &["person@example.com", "555-2671", "4155552671"]);
}

#[test]
fn web_page_drops_null_user_id_and_uses_campaign_context() {
    let (s, dropped) = one(Source::Web, "web/page.json");
    assert_eq!(dropped.get("user_id", "blocked"), 1);
    assert!(s
        .identifiers
        .iter()
        .all(|i| i.kind != IdentifierKind::UserId));
    assert!(has(&s, &id(IdentifierKind::ClickId, "IwAR2xYz_AbC")));
    // No sentAt: the device's own timestamp is used.
    assert_eq!(s.event_time, at("2024-05-02T08:30:00Z"));
    let event = s.event.unwrap();
    assert_eq!(event.kind, "page");
    assert_eq!(event.name.as_deref(), Some("Page Viewed"));
    assert_eq!(event.properties["name"], json!("Home"));
    assert_eq!(event.properties["utm_source"], json!("facebook"));
    assert_eq!(event.properties["utm_medium"], json!("paid_social"));
}

#[test]
fn web_alias_links_previous_id_by_alias_call() {
    let (s, _) = one(Source::Web, "web/alias.json");
    assert_eq!(
        links(&s),
        vec![(
            "user_id:usr_9f2c41d7a3b8e610".to_string(),
            "anonymous_id:507f191e-810c-4f9a-a2bc-92d7a1c3e4f5".to_string(),
            "alias_call".to_string(),
            1.0
        )]
    );
    assert!(s.event.unwrap().name.is_none());
}

#[test]
fn web_group_traits_describe_the_account_not_the_person() {
    let (s, _) = one(Source::Web, "web/group.json");
    assert_eq!(
        s.identifiers,
        vec![id(IdentifierKind::UserId, "usr_9f2c41d7a3b8e610")]
    );
    assert!(s.traits.is_empty());
    let event = s.event.as_ref().unwrap();
    assert_eq!(event.properties["group_id"], json!("acct_4821"));
    assert_eq!(event.properties["industry"], json!("Retail"));
    assert!(!event.properties.contains_key("email"));
    assert_no_raw(&s, &["billing@northwind.example"]);
}

#[test]
fn web_batch_yields_one_signal_per_message_using_envelope_sent_at() {
    let (signals, _) = parse(Source::Web, "web/batch.json");
    let ids: Vec<&str> = signals.iter().map(|s| s.event_id.as_str()).collect();
    assert_eq!(ids, ["ajs-next-batch-0001", "ajs-next-batch-0002"]);
    // originalTimestamp and the envelope's sentAt are there, receivedAt is the record's time.
    assert_eq!(
        signals[1].event_time,
        received() - (at("2024-05-01T12:05:03Z") - at("2024-05-01T12:05:00Z"))
    );
    assert_eq!(signals[1].links[0].rule, "deterministic_login");
}

#[test]
fn app_ios_with_tracking_off_keeps_vendor_id_only() {
    let (s, dropped) = one(Source::App, "app/segment_ios_limited_tracking.json");
    assert_eq!(dropped.get("device_id", "ad_tracking_disabled"), 1);
    assert_eq!(
        s.identifiers,
        vec![
            id(
                IdentifierKind::AnonymousId,
                "0f9e8d7c-6b5a-4493-8271-605f4e3d2c1b"
            ),
            id(
                IdentifierKind::DeviceId,
                "b14a6f2e-4c3d-4e5f-8a9b-0c1d2e3f4a5b"
            ),
        ]
    );
    assert_eq!(links(&s)[0].2, "device_match");
    assert_eq!(links(&s)[0].3, 0.9);
    let event = s.event.unwrap();
    assert_eq!(event.kind, "screen");
    assert_eq!(event.name.as_deref(), Some("Screen Viewed"));
    assert_eq!(event.properties["name"], json!("Product Detail"));
    assert_eq!(event.properties["app_version"], json!("5.2.1"));
    assert_eq!(event.properties["os_name"], json!("iOS"));
    assert_eq!(s.event_time, at("2024-05-03T19:12:44.570Z"));
}

#[test]
fn app_android_uses_advertising_and_vendor_ids() {
    let (s, dropped) = one(Source::App, "app/segment_android_order.json");
    assert!(dropped.is_empty());
    assert!(has(
        &s,
        &id(
            IdentifierKind::DeviceId,
            "38400000-8cf0-11bd-b23e-10b96e40000d"
        )
    ));
    assert!(has(&s, &id(IdentifierKind::DeviceId, "9774d56d682e549c")));
    assert_eq!(s.identifiers.len(), 4);
    assert!(s.links.iter().all(|l| l.rule == "deterministic_login"));
}

#[test]
fn app_zero_advertising_id_with_tracking_on_is_dropped_by_normalisation() {
    let payload = json!({
        "type": "track", "event": "Application Opened", "messageId": "m-zero",
        "anonymousId": "a-1",
        "context": {"device": {"advertisingId": "00000000-0000-0000-0000-000000000000", "adTrackingEnabled": true}}
    });
    let mut dropped = DroppedIdentifiers::default();
    let s = normalize_payload_counted(
        Source::App,
        "acme",
        payload.to_string().as_bytes(),
        received(),
        &NormalizeOptions::default(),
        &mut dropped,
    )
    .unwrap();
    assert_eq!(
        s[0].identifiers,
        vec![id(IdentifierKind::AnonymousId, "a-1")]
    );
    assert_eq!(dropped.get("device_id", "zero_advertising_id"), 1);
}

#[test]
fn app_ga4_row_builds_its_event_id() {
    let (s, _) = one(Source::App, "app/ga4_row.json");
    assert_eq!(
        s.event_id,
        "ga4:5d8f7e6a4b3c2d1e0f9a8b7c6d5e4f3a:1714813200123456:purchase"
    );
    assert_eq!(s.event_time.timestamp_micros(), 1_714_813_200_123_456);
    assert!(has(&s, &id(IdentifierKind::UserId, "usr_9f2c41d7a3b8e610")));
    assert!(has(
        &s,
        &id(
            IdentifierKind::AnonymousId,
            "5d8f7e6a4b3c2d1e0f9a8b7c6d5e4f3a"
        )
    ));
    assert!(has(
        &s,
        &id(
            IdentifierKind::DeviceId,
            "38400000-8cf0-11bd-b23e-10b96e40000d"
        )
    ));
    let event = s.event.unwrap();
    assert_eq!(event.name.as_deref(), Some("purchase"));
    assert_eq!(event.properties["currency"], json!("USD"));
    assert_eq!(event.properties["value"], json!(49.0));
}

#[test]
fn salesforce_contact_is_a_record_with_namespaced_widened_id() {
    let (s, _) = one(Source::Crm, "crm/salesforce_contact.json");
    let crm = id(IdentifierKind::CrmId, "sf:0035g00000XyZ12AAF");
    assert!(has(&s, &crm));
    assert_eq!(s.event_id, "sf:0035g00000XyZ12AAF@2024-05-01T12:34:56.000Z");
    assert_eq!(s.event_time, at("2024-05-01T12:34:56Z"));
    assert!(has(&s, &email("maria.garcia@example.com")));
    assert!(has(&s, &phone("+14155552671")));
    assert_links_span_identifiers(&s);
    assert!(s
        .links
        .iter()
        .all(|l| l.rule == "crm_record" && l.confidence == 1.0 && l.a == crm));
    assert_eq!(s.traits["lifecycle_stage"], json!("marketingqualifiedlead"));
    assert_eq!(s.traits["first_name"], json!("Maria"));
    assert_eq!(s.traits["lead_source"], json!("Web"));
    assert_eq!(s.consent.purpose("email"), Some(false));
    assert_eq!(s.consent.purpose("phone"), Some(true));
    let event = s.event.as_ref().unwrap();
    assert_eq!(
        (event.kind.as_str(), event.name.as_deref()),
        ("record", Some("Contact"))
    );
    assert_eq!(event.properties["crm_system"], json!("salesforce"));
    assert_no_raw(&s, &["maria.garcia@example.com", "555-2671"]);
}

#[test]
fn converted_lead_links_to_its_contact() {
    let (s, _) = one(Source::Crm, "crm/salesforce_lead_converted.json");
    assert!(has(&s, &id(IdentifierKind::CrmId, "sf:00Q5g00000AbCdEFGH")));
    assert!(has(&s, &id(IdentifierKind::CrmId, "sf:0035g00000XyZ12AAF")));
    assert_eq!(s.traits["lifecycle_stage"], json!("opportunity"));
    assert_eq!(s.traits["lead_status"], json!("Closed - Converted"));
    assert_eq!(s.event.unwrap().name.as_deref(), Some("Lead"));
}

#[test]
fn hubspot_contact_reads_additional_emails() {
    let (s, dropped) = one(Source::Crm, "crm/hubspot_contact.json");
    assert_eq!(s.event_id, "hs:51234@2024-05-02T16:20:00.000Z");
    assert!(has(&s, &id(IdentifierKind::CrmId, "hs:51234")));
    for e in [
        "maria.garcia@example.com",
        "m.garcia@northwind.example",
        "maria@old-job.example",
    ] {
        assert!(has(&s, &email(e)), "{e}");
    }
    assert!(has(&s, &phone("+14155552671")));
    assert_eq!(s.identifiers.len(), 5);
    // The empty mobile phone is a dropped value, not a failure.
    assert_eq!(dropped.get("phone_sha256", "empty"), 1);
    assert_eq!(s.traits["lifecycle_stage"], json!("salesqualifiedlead"));
    assert_eq!(s.consent.purpose("email"), Some(true));
    assert_no_raw(&s, &["old-job.example", "northwind.example"]);
}

#[test]
fn appsflyer_install_and_purchase() {
    let (install, _) = one(Source::Media, "media/appsflyer_install.json");
    assert_eq!(
        install.event_id,
        "af:1714560000000-1234567890123456789:1714561200000:install"
    );
    assert_eq!(install.event.as_ref().unwrap().kind, "install");
    assert!(has(
        &install,
        &id(
            IdentifierKind::DeviceId,
            "6d92078a-8246-4ba4-ae5b-76104861e7dc"
        )
    ));
    assert!(install
        .links
        .iter()
        .all(|l| l.rule == "mmp_attribution" && l.confidence == 0.9));

    let (purchase, _) = one(Source::Media, "media/appsflyer_purchase.json");
    let user = id(IdentifierKind::UserId, "usr_9f2c41d7a3b8e610");
    assert!(has(&purchase, &user));
    assert!(purchase
        .links
        .iter()
        .all(|l| l.a == user && l.rule == "mmp_attribution"));
    let event = purchase.event.unwrap();
    assert_eq!(
        (event.kind.as_str(), event.name.as_deref()),
        ("track", Some("af_purchase"))
    );
    assert_eq!(event.properties["af_currency"], json!("USD"));
    assert_eq!(event.properties["revenue"], json!("199.0"));
}

#[test]
fn adjust_install_drops_unfilled_macros() {
    let (s, dropped) = one(Source::Media, "media/adjust_install.json");
    assert_eq!(
        s.event_id,
        "adj:a1b2c3d4e5f60718293a4b5c6d7e8f90:1714561200:install:"
    );
    assert_eq!(
        dropped.get("device_id", "blocked"),
        1,
        "{{idfa}} is a placeholder"
    );
    assert_eq!(s.identifiers.len(), 2);
    assert_eq!(
        s.event.unwrap().properties["media_source"],
        json!("Facebook Installs")
    );
}

#[test]
fn click_log_links_click_to_cookie() {
    let (s, _) = one(Source::Media, "media/click_log.json");
    assert_eq!(s.event_id, "click:Cj0KCQjw8J2xBhCdARIsABC-DefGhIjK");
    assert_eq!(
        links(&s),
        vec![(
            "cookie_id:ck.5f2a9b7c1d3e4f60718293a4".to_string(),
            "click_id:Cj0KCQjw8J2xBhCdARIsABC-DefGhIjK".to_string(),
            "click_id_match".to_string(),
            0.8
        )]
    );
    assert_eq!(s.event.unwrap().kind, "click");
}

#[test]
fn web_click_id_joins_the_click_log() {
    let (page, _) = one(Source::Web, "web/track_paid_landing.json");
    let (click, _) = one(Source::Media, "media/click_log.json");
    let shared: Vec<&Identifier> = page
        .identifiers
        .iter()
        .filter(|i| click.identifiers.contains(i))
        .collect();
    assert_eq!(shared.len(), 1);
    assert_eq!(shared[0].kind, IdentifierKind::ClickId);
}

#[test]
fn rejections_have_stable_codes_and_name_fields_not_values() {
    let cases: Vec<(Source, Vec<u8>, &str)> = vec![
        (Source::Web, b"{\"type\": \"track\",".to_vec(), rejection::INVALID_JSON),
        (Source::Web, b"\xff\xfe".to_vec(), rejection::INVALID_JSON),
        (Source::Web, b"[1,2]".to_vec(), rejection::NOT_AN_OBJECT),
        (Source::Web, br#"{"type":"track","event":"X","anonymousId":"a"}"#.to_vec(), rejection::MISSING_FIELD),
        (Source::Web, br#"{"type":"track","messageId":"m","anonymousId":"a"}"#.to_vec(), rejection::MISSING_FIELD),
        (Source::Web, br#"{"type":"track","event":"X","messageId":{"a":1},"anonymousId":"a"}"#.to_vec(), rejection::WRONG_TYPE),
        (Source::Web, br#"{"type":"track","event":"X","messageId":"m","userId":true}"#.to_vec(), rejection::WRONG_TYPE),
        (Source::Web, br#"{"type":"track","event":"X","messageId":"m","anonymousId":"a","properties":[1]}"#.to_vec(), rejection::WRONG_TYPE),
        (Source::Web, br#"{"type":"identify","messageId":"m","userId":"u","traits":{"email":42}}"#.to_vec(), rejection::WRONG_TYPE),
        (Source::Web, br#"{"type":"launch","messageId":"m","anonymousId":"a"}"#.to_vec(), rejection::UNKNOWN_SHAPE),
        (Source::Web, br#"{"hello":"world"}"#.to_vec(), rejection::UNKNOWN_SHAPE),
        (Source::Web, br#"{"type":"track","event":"X","messageId":"m","userId":"null","anonymousId":" "}"#.to_vec(), rejection::NO_IDENTIFIERS),
        (Source::Web, br#"{"type":"track","event":"X","messageId":"m","anonymousId":"a","timestamp":"yesterday"}"#.to_vec(), rejection::INVALID_TIMESTAMP),
        (Source::Web, br#"{"batch":[]}"#.to_vec(), rejection::MISSING_FIELD),
        (Source::Web, br#"{"batch":[{"type":"page","messageId":"m","anonymousId":"a"}, 7]}"#.to_vec(), rejection::NOT_AN_OBJECT),
        (Source::App, br#"{"event":"x"}"#.to_vec(), rejection::UNKNOWN_SHAPE),
        (Source::App, br#"{"event_name":"x","user_pseudo_id":"p"}"#.to_vec(), rejection::MISSING_FIELD),
        (Source::Crm, br#"{"attributes":{"type":"Account"},"Id":"001"}"#.to_vec(), rejection::UNKNOWN_SHAPE),
        (Source::Crm, br#"{"attributes":{"type":"Contact"},"Email":"a@b.example"}"#.to_vec(), rejection::MISSING_FIELD),
        (Source::Crm, br#"{"id":"1","properties":{"email":"a@b.example"},"updatedAt":"soon"}"#.to_vec(), rejection::INVALID_TIMESTAMP),
        (Source::Media, br#"{"appsflyer_id":"1-2","event_name":"install"}"#.to_vec(), rejection::MISSING_FIELD),
        (Source::Media, br#"{"adid":"abc","activity_kind":"install","created_at":"never"}"#.to_vec(), rejection::INVALID_TIMESTAMP),
        (Source::Media, br#"{"campaign":"x"}"#.to_vec(), rejection::UNKNOWN_SHAPE),
    ];
    for (source, payload, code) in cases {
        let r = reject(source, &payload);
        assert_eq!(
            r.code,
            code,
            "{source} {}: {r}",
            String::from_utf8_lossy(&payload)
        );
        assert!(!r.message.is_empty());
    }
    // The value of a bad field never appears in the message, only its name.
    let r = reject(
        Source::Web,
        br#"{"type":"identify","messageId":"m","userId":"u","traits":{"email":["jane@corp.example"]}}"#,
    );
    assert_eq!(r.message, "field `traits.email` must be a string");
    let r = reject(
        Source::Web,
        br#"{"batch":[{"type":"page","messageId":"m","anonymousId":"a"},{"type":"page","anonymousId":"a","traits":{"email":"jane@corp.example"}}]}"#,
    );
    assert_eq!(r.message, "batch[1]: field `messageId` is required");
}

#[test]
fn payload_limits_are_enforced_per_record_and_per_message() {
    let opts = NormalizeOptions {
        max_message_bytes: 300,
        max_record_bytes: 1_000,
        ..NormalizeOptions::default()
    };
    let small = json!({"type":"page","messageId":"m","anonymousId":"a"});
    let big = json!({"type":"page","messageId":"m2","anonymousId":"a","properties":{"pad":"x".repeat(400)}});
    let run = |v: serde_json::Value| {
        normalize_payload(
            Source::Web,
            "t",
            v.to_string().as_bytes(),
            received(),
            &opts,
        )
    };
    assert!(run(small.clone()).is_ok());
    assert_eq!(run(big.clone()).unwrap_err().code, rejection::OVERSIZE);
    let batch = json!({"batch": [small.clone(), big]});
    let err = run(batch).unwrap_err();
    assert_eq!(err.code, rejection::OVERSIZE);
    assert!(err.message.starts_with("batch[1]"), "{}", err.message);
    let many = json!({"batch": vec![small; 25]});
    assert_eq!(
        run(many).unwrap_err().code,
        rejection::OVERSIZE,
        "the record limit"
    );
}

#[test]
fn phone_region_comes_from_options() {
    let gb = NormalizeOptions {
        identifiers: cdp_proto::NormalizeOptions::with_region("GB").unwrap(),
        ..NormalizeOptions::default()
    };
    let payload = br#"{"id":"9","properties":{"phone":"020 7946 0018"}}"#;
    let s = normalize_payload(Source::Crm, "t", payload, received(), &gb).unwrap();
    assert!(has(&s[0], &phone("+442079460018")));
    // Without a time the record's own time is used and the event id is the bare crm id.
    assert_eq!(s[0].event_id, "hs:9");
    assert_eq!(s[0].event_time, received());
}

fn parse_with(
    source: Source,
    payload: serde_json::Value,
    opts: &NormalizeOptions,
) -> (Vec<Signal>, DroppedIdentifiers) {
    let mut dropped = DroppedIdentifiers::default();
    let signals = normalize_payload_counted(
        source,
        "acme",
        payload.to_string().as_bytes(),
        received(),
        opts,
        &mut dropped,
    )
    .unwrap_or_else(|r| panic!("{payload}: {r}"));
    (signals, dropped)
}

fn consented_track(consent: serde_json::Value) -> serde_json::Value {
    json!({
        "type": "identify", "messageId": "m-consent", "userId": "u-7", "anonymousId": "a-7",
        "traits": {"email": "jo@example.com"},
        "context": {"consent": consent}
    })
}

#[test]
fn consent_categories_and_consent_mode_land_in_the_signal() {
    let payload = consented_track(json!({
        "categoryPreferences": {"Advertising": true, "Analytics": "granted", "Functional": null},
        "ad_user_data": "GRANTED",
        "ad_personalization": "denied",
        "analytics_storage": true
    }));
    let (signals, dropped) = parse_with(Source::Web, payload, &NormalizeOptions::default());
    let c = &signals[0].consent;
    assert_eq!(c.purpose("Advertising"), Some(true));
    assert_eq!(c.purpose("Analytics"), Some(true));
    assert_eq!(c.purpose("Functional"), None);
    assert_eq!(c.purpose("ad_user_data"), Some(true));
    assert_eq!(c.purpose("ad_personalization"), Some(false));
    assert_eq!(c.purpose("analytics_storage"), Some(true));
    // Identity consent is not denied: the event links as usual.
    assert_eq!(signals[0].links.len(), 2);
    assert_eq!(dropped.unlinked(), 0);
}

#[test]
fn identifiers_without_identity_consent_are_kept_unlinked_by_default() {
    for consent in [
        json!({"ad_user_data": "denied"}),
        json!({"categoryPreferences": {"identity": false}}),
        json!({"categoryPreferences": {"ad_user_data": false}}),
    ] {
        let payload = consented_track(consent.clone());
        let (signals, dropped) =
            parse_with(Source::Web, payload.clone(), &NormalizeOptions::default());
        let s = &signals[0];
        assert_eq!(s.identifiers.len(), 3, "{consent}");
        assert!(s.links.is_empty(), "{consent}: {:?}", s.links);
        assert_eq!(dropped.unlinked(), 1);

        let linked = NormalizeOptions {
            identity_consent: cdp_ingest::consent::IdentityConsent {
                without: cdp_ingest::consent::WithoutIdentityConsent::Linked,
                ..Default::default()
            },
            ..NormalizeOptions::default()
        };
        let (signals, dropped) = parse_with(Source::Web, payload, &linked);
        assert_eq!(signals[0].links.len(), 2, "{consent}");
        assert_eq!(dropped.unlinked(), 0);
    }
    // Which purposes count is configurable.
    let advertising = NormalizeOptions {
        identity_consent: cdp_ingest::consent::IdentityConsent {
            purposes: vec!["advertising".into()],
            ..Default::default()
        },
        ..NormalizeOptions::default()
    };
    let (page, _) = one(Source::Web, "web/track_paid_landing.json");
    assert!(
        !page.links.is_empty(),
        "advertising is not an identity purpose by default"
    );
    let (signals, _) = parse_with(
        Source::Web,
        serde_json::from_slice(&fixture("web/track_paid_landing.json")).unwrap(),
        &advertising,
    );
    assert!(signals[0].links.is_empty());
}

#[test]
fn ga4_rows_carry_consent_mode_and_privacy_info() {
    let mut row: serde_json::Value = serde_json::from_slice(&fixture("app/ga4_row.json")).unwrap();
    row["consent"] = json!({"ad_user_data": "DENIED", "ad_personalization": "GRANTED"});
    row["privacy_info"] = json!({"analytics_storage": "Yes", "ads_storage": "No"});
    let (signals, dropped) = parse_with(Source::App, row, &NormalizeOptions::default());
    let s = &signals[0];
    assert_eq!(s.consent.purpose("ad_user_data"), Some(false));
    assert_eq!(s.consent.purpose("ad_personalization"), Some(true));
    assert_eq!(s.consent.purpose("analytics_storage"), Some(true));
    assert_eq!(s.consent.purpose("ad_storage"), Some(false));
    assert!(s.links.is_empty());
    assert_eq!(dropped.unlinked(), 1);
}

#[test]
fn malformed_consent_is_a_wrong_type_naming_the_field() {
    let r = reject(
        Source::Web,
        consented_track(json!({"categoryPreferences": {"ads": "maybe"}}))
            .to_string()
            .as_bytes(),
    );
    assert_eq!(r.code, rejection::WRONG_TYPE);
    assert_eq!(
        r.message,
        "field `context.consent.categoryPreferences.ads` must be a boolean"
    );
    let r = reject(
        Source::Web,
        consented_track(json!({"ad_user_data": 1}))
            .to_string()
            .as_bytes(),
    );
    assert_eq!(
        r.message,
        "field `context.consent.ad_user_data` must be \"granted\" or \"denied\""
    );
}

#[test]
fn event_time_corrects_skew_only_with_both_device_readings() {
    let base = json!({"type": "track", "event": "X", "messageId": "m-t", "anonymousId": "a"});
    let with = |fields: serde_json::Value| {
        let mut v = base.clone();
        for (k, x) in fields.as_object().unwrap() {
            v[k] = x.clone();
        }
        let (signals, _) = parse_with(Source::Web, v, &NormalizeOptions::default());
        signals[0].event_time
    };
    // The device clock is 10 minutes slow and the message waited 5 s in its queue.
    assert_eq!(
        with(json!({
            "originalTimestamp": "2024-05-31T23:49:55Z",
            "sentAt": "2024-05-31T23:50:00Z"
        })),
        received() - chrono::TimeDelta::seconds(5),
        "receivedAt defaults to the record's time"
    );
    assert_eq!(
        with(json!({
            "originalTimestamp": "2024-05-31T23:49:55Z",
            "sentAt": "2024-05-31T23:50:00Z",
            "receivedAt": "2024-05-31T23:59:59Z"
        })),
        at("2024-05-31T23:59:54Z")
    );
    // One reading alone cannot be corrected: the device's own time is used.
    assert_eq!(
        with(json!({"sentAt": "2024-05-31T23:50:00Z", "timestamp": "2024-05-31T23:49:00Z"})),
        at("2024-05-31T23:49:00Z")
    );
    assert_eq!(with(json!({})), received());
}
