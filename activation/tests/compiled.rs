//! Cohorts compiled to native code give the interpreter's results, errors included: random
//! profiles against the default cohorts, the cohorts marketing teams run, and generated
//! expressions that mix every construct (wrong types, missing keys and what only the
//! interpreter runs among them).

use cdp_activation::config::{ActivationConfig, CohortConfig};
use cdp_activation::view::ProfileView;
use cdp_activation::{Cohorts, Compilation};
use cdp_proto::time::from_millis;
use cdp_proto::{EventCounter, Identifier, IdentifierKind, Profile, Source, Timestamp};
use proptest::prelude::*;
use serde_json::{json, Value as Json};

const DAY_MS: i64 = 86_400_000;

/// Cohorts of the kinds marketing teams run (the activation bench's).
const TEAM_COHORTS: [&str; 16] = [
    r#"profile.lifecycle_stage == "marketingqualifiedlead""#,
    r#"profile.lifecycle_stage == "lead" && profile.traits["lead_source"] == "Webinar""#,
    r#"profile.lifecycle_stage == "subscriber" && profile.consent["email"] == true"#,
    r#"profile.counts["Product Viewed"].last_7d >= 3"#,
    r#"profile.counts["Application Opened"].last_1d >= 1"#,
    r#"profile.counts["install"].total >= 1 && !("af_complete_registration" in profile.counts)"#,
    r#"profile.counts["Product Viewed"].last_7d >= 2 && !("Order Completed" in profile.counts)"#,
    r#"profile.counts["Order Completed"].total >= 2"#,
    r#"profile.lifecycle_stage == "customer" && profile.days_since_last_engagement >= 14"#,
    r#"profile.counts["Ad Clicked"].last_30d >= 1 && profile.consent["advertising"] == true"#,
    r#"profile.consent["email"] == true && profile.identifiers["email_sha256"] >= 1"#,
    r#"profile.consent["phone"] == true && profile.identifiers["phone_sha256"] >= 1"#,
    "size(profile.channels_active) >= 3",
    r#"profile.channels_active == ["web"]"#,
    "profile.total_touchpoints >= 25",
    r#"profile.counts["Newsletter Subscribed"].total >= 1 && !("Signed Up" in profile.counts)"#,
];

const EVENTS: [&str; 6] = [
    "Pricing Viewed",
    "Order Completed",
    "Product Viewed",
    "Ad Clicked",
    "install",
    "Signed Up",
];
const STAGES: [&str; 5] = [
    "lead",
    "customer",
    "subscriber",
    "marketingqualifiedlead",
    "",
];
const TRAITS: [&str; 6] = ["plan", "age", "lead_source", "tags", "address", "vip"];
const PURPOSES: [&str; 3] = ["email", "advertising", "phone"];

fn now() -> Timestamp {
    from_millis(1_700_000_000_000)
}

fn cohort(expression: &str) -> CohortConfig {
    CohortConfig {
        key: "c".into(),
        description: String::new(),
        expression: expression.into(),
        priority: 0,
        identifiers: vec![],
        destinations: vec![],
    }
}

fn json_value() -> impl Strategy<Value = Json> {
    let leaf = prop_oneof![
        Just(Json::Null),
        any::<bool>().prop_map(Json::Bool),
        (-3i64..60).prop_map(|n| json!(n)),
        Just(json!(u64::MAX)),
        prop_oneof![Just(0.5), Just(-2.5), Just(2.0), Just(1e300)].prop_map(|f| json!(f)),
        prop_oneof![
            Just("pro"),
            Just("free"),
            Just("Webinar"),
            Just(""),
            Just("lead")
        ]
        .prop_map(|s| json!(s)),
    ];
    leaf.prop_recursive(2, 8, 3, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..3).prop_map(Json::Array),
            prop::collection::vec(
                (prop::sample::select(vec!["city", "zip", "plan"]), inner),
                0..3
            )
            .prop_map(|entries| {
                Json::Object(
                    entries
                        .into_iter()
                        .map(|(k, v)| (k.to_string(), v))
                        .collect(),
                )
            }),
        ]
    })
}

fn counter() -> impl Strategy<Value = EventCounter> {
    (
        prop::collection::btree_map(-35i64..2, 1u64..4, 0..4),
        0u64..5,
    )
        .prop_map(|(days, extra)| {
            let today = now().timestamp_millis() / DAY_MS;
            let daily = days.into_iter().map(|(d, n)| (today + d, n)).collect();
            let mut c = EventCounter {
                daily,
                ..EventCounter::default()
            };
            c.total = c.daily.values().sum::<u64>() + extra;
            c
        })
}

fn profile() -> impl Strategy<Value = Profile> {
    (
        prop::option::of(prop::sample::select(STAGES.to_vec())),
        prop::option::of(prop::sample::select(vec!["smb", "enterprise"])),
        0u64..40,
        prop::collection::btree_set(prop::sample::select(Source::ALL.to_vec()), 0..4),
        prop::option::of(0i64..40),
        prop::collection::btree_map(prop::sample::select(EVENTS.to_vec()), counter(), 0..4),
        prop::collection::btree_map(prop::sample::select(TRAITS.to_vec()), json_value(), 0..4),
        prop::collection::btree_map(prop::sample::select(PURPOSES.to_vec()), any::<bool>(), 0..3),
        prop::collection::vec(
            prop::sample::select(vec![
                IdentifierKind::EmailSha256,
                IdentifierKind::PhoneSha256,
                IdentifierKind::CrmId,
                IdentifierKind::Custom("loyalty_card".into()),
            ]),
            0..4,
        ),
    )
        .prop_map(
            |(stage, segment, touchpoints, channels, days_ago, counts, traits, consent, kinds)| {
                let mut p = Profile::new("t", "cdp_1", vec![], now());
                p.identifiers = kinds
                    .into_iter()
                    .enumerate()
                    .map(|(i, k)| Identifier::new(k, format!("v{i}")))
                    .collect();
                p.identifiers.sort();
                let a = &mut p.attributes;
                a.lifecycle_stage = stage.map(String::from);
                a.segment = segment.map(String::from);
                a.total_touchpoints = touchpoints;
                a.channels_active = channels;
                a.last_engagement = days_ago.map(|d| now() - chrono::Duration::days(d));
                a.counts = counts
                    .into_iter()
                    .map(|(k, c)| (k.to_string(), c))
                    .collect();
                a.traits = traits
                    .into_iter()
                    .map(|(k, v)| (k.to_string(), v))
                    .collect();
                p.consent.0 = consent
                    .into_iter()
                    .map(|(k, v)| (k.to_string(), v))
                    .collect();
                p
            },
        )
}

/// Expressions over the profile: every construct the compiler knows, some it leaves to the
/// interpreter, of every type, present and missing keys.
fn expression() -> impl Strategy<Value = String> {
    let mut atoms: Vec<String> = [
        "profile.lifecycle_stage",
        "profile.segment",
        "profile.canonical_id",
        "profile.total_touchpoints",
        "profile.days_since_last_engagement",
        "profile.channels_active",
        "profile.counts",
        "profile.traits",
        "profile.consent",
        "profile.identifiers",
        "profile",
        "profile.no_such_field",
        "profile.traits.plan",
        "profile.traits.address.city",
        r#"profile.traits["tags"][0]"#,
        r#"profile.identifiers["email_sha256"]"#,
        r#"profile.identifiers["loyalty_card"]"#,
        "1",
        "0",
        "-1",
        "2u",
        "2.0",
        "0.5",
        "true",
        "false",
        "null",
        r#""lead""#,
        r#""web""#,
        r#""pro""#,
        r#""Pricing Viewed""#,
        r#""""#,
        r#"["web"]"#,
        r#"["web", "app"]"#,
        "[1, 2u, 3.0]",
        r#"{"plan": "pro"}"#,
        r#"profile.channels_active.exists(c, c == "web")"#,
        "int(profile.total_touchpoints)",
        "string(profile.total_touchpoints)",
        r#"b"x""#,
        "9223372036854775807",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    for e in EVENTS.iter().chain(["Nope"].iter()) {
        atoms.push(format!(r#""{e}""#));
        for w in ["total", "last_1d", "last_7d", "last_30d", "nope"] {
            atoms.push(format!(r#"profile.counts["{e}"].{w}"#));
        }
    }
    for t in TRAITS {
        atoms.push(format!(r#"profile.traits["{t}"]"#));
    }
    for p in PURPOSES {
        atoms.push(format!(r#"profile.consent["{p}"]"#));
    }
    let leaf = prop::sample::select(atoms);
    leaf.prop_recursive(4, 24, 3, |inner| {
        let binary = prop::sample::select(vec![
            "&&", "||", "==", "!=", "<", "<=", ">", ">=", "+", "-", "*", "/", "%", "in",
        ]);
        prop_oneof![
            3 => (inner.clone(), binary, inner.clone())
                .prop_map(|(a, op, b)| format!("({a}) {op} ({b})")),
            1 => inner.clone().prop_map(|a| format!("!({a})")),
            1 => inner.clone().prop_map(|a| format!("-({a})")),
            1 => inner.clone().prop_map(|a| format!("size({a})")),
            1 => inner.clone().prop_map(|a| format!("({a}).size()")),
            1 => inner.clone().prop_map(|a| format!("has(({a}).plan)")),
            1 => (inner.clone(), inner.clone()).prop_map(|(a, b)| format!("({a})[{b}]")),
            1 => (inner.clone(), inner.clone(), inner.clone())
                .prop_map(|(a, b, c)| format!("({a}) ? ({b}) : ({c})")),
            1 => (inner.clone(), prop::sample::select(vec!["contains", "startsWith", "endsWith"]), inner.clone())
                .prop_map(|(a, f, b)| format!("({a}).{f}({b})")),
            1 => (inner.clone(), inner).prop_map(|(a, b)| format!("[{a}, {b}]")),
        ]
    })
}

/// An error's text, in which the values printed after the first map or list are put in one
/// order: a map prints in hash order, which differs from one context to the next, and so does a
/// list made from a map's keys (`[] + profile.counts`).
fn error_text(e: cdp_activation::CohortError) -> String {
    let text = e.to_string();
    let first = ["Map(", "List("].iter().filter_map(|m| text.find(m)).min();
    match first {
        Some(i) => {
            let mut rest: Vec<char> = text[i..].chars().collect();
            rest.sort_unstable();
            format!("{}{}", &text[..i], rest.into_iter().collect::<String>())
        }
        None => text,
    }
}

/// Mostly well-typed conditions, as cohorts are written: comparisons of counters, fields and
/// traits joined by `&&`, `||`, `!` and `?:`, with a missing key or a wrong type now and then.
fn condition() -> impl Strategy<Value = String> {
    let mut ints: Vec<String> = [
        "profile.total_touchpoints",
        "profile.days_since_last_engagement",
        r#"profile.identifiers["email_sha256"]"#,
        r#"profile.traits["age"]"#,
        "size(profile.channels_active)",
        "profile.traits.size()",
        "size(profile.counts)",
        "1",
        "2",
        "0",
        "-1",
        "3u",
        "2.5",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    for e in EVENTS {
        for w in ["total", "last_1d", "last_7d", "last_30d"] {
            ints.push(format!(r#"profile.counts["{e}"].{w}"#));
        }
    }
    let strings: Vec<String> = [
        "profile.lifecycle_stage",
        "profile.segment",
        r#"profile.traits["plan"]"#,
        "profile.traits.lead_source",
        r#""lead""#,
        r#""customer""#,
        r#""pro""#,
        r#""Webinar""#,
        r#""""#,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let odd: Vec<String> = [
        "profile.no_such_field",
        r#"profile.counts["Nope"].total"#,
        r#"profile.traits["tags"]"#,
        r#"profile.traits["vip"]"#,
        "profile.traits.address.city",
        "null",
        r#"profile.channels_active.exists(c, c == "web")"#,
        "int(profile.total_touchpoints)",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let int = prop_oneof![
        6 => prop::sample::select(ints.clone()),
        1 => prop::sample::select(odd.clone()),
        2 => (
            prop::sample::select(ints.clone()),
            prop::sample::select(vec!["+", "-", "*", "/", "%"]),
            prop::sample::select(ints),
        )
            .prop_map(|(a, op, b)| format!("({a} {op} {b})")),
    ];
    let string = prop_oneof![
        6 => prop::sample::select(strings),
        1 => prop::sample::select(odd.clone()),
    ];
    let compare = prop::sample::select(vec!["==", "!=", "<", "<=", ">", ">="]);
    let leaf = prop_oneof![
        4 => (int.clone(), compare.clone(), int).prop_map(|(a, op, b)| format!("{a} {op} {b}")),
        2 => (string.clone(), compare, string.clone())
            .prop_map(|(a, op, b)| format!("{a} {op} {b}")),
        1 => (string.clone(), prop::sample::select(vec!["contains", "startsWith", "endsWith"]), string.clone())
            .prop_map(|(a, f, b)| format!("{a}.{f}({b})")),
        1 => string.clone().prop_map(|a| format!(r#"{a} in ["lead", "customer", ""]"#)),
        1 => prop::sample::select(vec!["web", "app", "crm", "media"])
            .prop_map(|c| format!(r#""{c}" in profile.channels_active"#)),
        1 => prop::sample::select(EVENTS.to_vec()).prop_map(|e| format!(r#""{e}" in profile.counts"#)),
        1 => prop::sample::select(TRAITS.to_vec()).prop_map(|t| format!("has(profile.traits.{t})")),
        1 => prop::sample::select(PURPOSES.to_vec())
            .prop_map(|p| format!(r#"profile.consent["{p}"] == true"#)),
        1 => prop::sample::select(PURPOSES.to_vec()).prop_map(|p| format!(r#"profile.consent["{p}"]"#)),
        1 => prop::sample::select(odd),
        1 => Just(r#"profile.channels_active == ["web"]"#.to_string()),
    ];
    leaf.prop_recursive(3, 16, 2, |inner| {
        prop_oneof![
            3 => (inner.clone(), prop::sample::select(vec!["&&", "||"]), inner.clone())
                .prop_map(|(a, op, b)| format!("({a}) {op} ({b})")),
            1 => inner.clone().prop_map(|a| format!("!({a})")),
            1 => (inner.clone(), inner.clone(), inner)
                .prop_map(|(a, b, c)| format!("({a}) ? ({b}) : ({c})")),
        ]
    })
}

/// The cohort's result computed natively and by the interpreter on the whole view.
fn both(cohorts: &Cohorts, p: &Profile) -> Vec<(Result<bool, String>, Result<bool, String>)> {
    let scope = cohorts.scope(p, now());
    let view = ProfileView::new(p, now());
    let ctx = cohorts.context(&view).expect("context");
    cohorts
        .list
        .iter()
        .map(|c| {
            (
                c.evaluate(&scope).map_err(error_text),
                c.matches(&ctx).map_err(error_text),
            )
        })
        .collect()
}

fn configured() -> Cohorts {
    let mut configs = ActivationConfig::default().cohorts;
    for (i, e) in TEAM_COHORTS.iter().enumerate() {
        configs.push(CohortConfig {
            key: format!("team_{i}"),
            ..cohort(e)
        });
    }
    Cohorts::compile(&configs).expect("cohorts compile")
}

#[test]
fn configured_cohorts_compile_natively() {
    for c in &configured().list {
        assert_eq!(c.compilation(), Compilation::Native, "{}", c.key());
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn configured_cohorts_equal_the_interpreter(p in profile()) {
        let cohorts = configured();
        for (i, (native, interpreted)) in both(&cohorts, &p).into_iter().enumerate() {
            prop_assert_eq!(native, interpreted, "{}", cohorts.list[i].config.expression);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn generated_expressions_equal_the_interpreter(e in expression(), p in profile()) {
        // Some generated text does not parse (e.g. `has()` of a non-field): not a cohort.
        let Ok(cohorts) = Cohorts::compile(&[cohort(&e)]) else {
            return Ok(());
        };
        for (native, interpreted) in both(&cohorts, &p) {
            prop_assert_eq!(native, interpreted, "{}", e);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn generated_conditions_equal_the_interpreter(e in condition(), p in profile()) {
        let cohorts = Cohorts::compile(&[cohort(&e)]).expect("conditions parse");
        for (native, interpreted) in both(&cohorts, &p) {
            prop_assert_eq!(native, interpreted, "{}", e);
        }
    }
}

#[test]
fn errors_are_absorbed_as_the_interpreter_absorbs_them() {
    let p = Profile::new("t", "cdp_1", vec![], now());
    for (e, expected) in [
        (r#"profile.counts["Nope"].total > 0 || true"#, Ok(true)),
        (r#"true || profile.counts["Nope"].total > 0"#, Ok(true)),
        (r#"profile.counts["Nope"].total > 0 && false"#, Ok(false)),
        (r#"profile.counts["Nope"].total > 0 || false"#, Ok(false)),
        (r#"1 + "a" == 2 || true"#, Ok(true)),
        (r#"1 + "a" == 2 && true"#, Err("evaluation failed")),
        ("profile.total_touchpoints", Err("not a bool")),
    ] {
        let cohorts = Cohorts::compile(&[cohort(e)]).unwrap();
        let scope = cohorts.scope(&p, now());
        let got = cohorts.list[0].evaluate(&scope).map_err(|e| e.to_string());
        match (got, expected) {
            (Ok(got), Ok(expected)) => assert_eq!(got, expected, "{e}"),
            (Err(got), Err(expected)) => assert!(got.contains(expected), "{e}: {got}"),
            (got, expected) => panic!("{e}: {got:?}, expected {expected:?}"),
        }
    }
}

#[test]
fn an_error_printing_a_maps_keys_is_compared_in_one_order() {
    // `[] + map` is the map's keys in hash order, and each context builds its own map, so the
    // two errors list the same keys in different orders.
    let mut p = Profile::new("t", "cdp_1", vec![], now());
    for e in EVENTS {
        p.attributes
            .counts
            .insert(e.into(), EventCounter::default());
    }
    let cohorts = Cohorts::compile(&[cohort("([] + profile.counts) - 1")]).unwrap();
    for (native, interpreted) in both(&cohorts, &p) {
        let native = native.expect_err("a list minus an int is an error");
        assert!(
            native.contains("Unsupported binary operator 'sub'"),
            "{native}"
        );
        assert_eq!(Err::<bool, _>(native), interpreted);
    }
}
