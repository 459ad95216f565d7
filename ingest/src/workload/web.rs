//! Web sessions as analytics.js sends them: page calls and track events, the sign-up (or
//! newsletter) identify, logged-in sessions with orders, paid landings with click ids and UTM
//! parameters (and the ad server's click log), some sessions sent as one `batch` envelope.

use super::person::Person;
use super::segment::{to_json, Body, Library, Message};
use super::values::{self, pick, Rand};
use super::{media, rfc3339, Lines};
use cdp_proto::Source;
use rand::Rng;
use serde::Serialize;
use serde_json::{json, Map, Value};

const SITE: &str = "https://www.northwind.example";

const USER_AGENTS: [&str; 3] = [
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.4 Safari/605.1.15",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.4 Mobile/15E148 Safari/604.1",
];

const PRODUCTS: [(&str, &str, f64); 5] = [
    ("sku-1001", "Analytics Starter", 49.0),
    ("sku-1002", "Analytics Pro", 199.0),
    ("sku-2001", "Audience Builder", 99.0),
    ("sku-3001", "Data Connectors Pack", 29.0),
    ("sku-4001", "Onboarding Workshop", 499.0),
];

const CAMPAIGNS: [&str; 4] = [
    "spring_sale",
    "brand_search",
    "retargeting_q4",
    "webinar_cdp",
];

/// One browser session: the clock, identity and page state every message of it shares.
struct Session<'p> {
    person: &'p Person,
    anonymous_id: String,
    user_id: Option<String>,
    /// True time of the next message.
    t: i64,
    /// Device clock error and send delay: what Segment's time correction undoes.
    skew_ms: i64,
    delay_ms: i64,
    user_agent: &'static str,
    consent: Option<bool>,
    page: Page,
    context_traits: Option<Value>,
    messages: Vec<Sent>,
}

/// A message as written, with what the line and its truth row need.
struct Sent {
    json: String,
    message_id: String,
    t: i64,
    sent_at: String,
}

/// analytics.js's `context`.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Context<'a> {
    library: Library,
    locale: &'static str,
    user_agent: &'a str,
    page: &'a Page,
    #[serde(skip_serializing_if = "Option::is_none")]
    consent: Option<ConsentContext>,
    #[serde(skip_serializing_if = "Option::is_none")]
    traits: Option<&'a Value>,
}

#[derive(Serialize, Default)]
struct Page {
    path: String,
    url: String,
    title: String,
    referrer: String,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ConsentContext {
    category_preferences: CategoryPreferences,
}

#[derive(Serialize)]
struct CategoryPreferences {
    necessary: bool,
    analytics: bool,
    advertising: bool,
}

impl Session<'_> {
    fn message(&mut self, rng: &mut Rand, kind: &str, body: Body<'_>) {
        let message_id = format!("ajs-next-{}", values::uuid(rng));
        let original = self.t + self.skew_ms;
        let (timestamp, original_timestamp) = (rfc3339(self.t), rfc3339(original));
        let sent_at = rfc3339(original + self.delay_ms);
        let received_at = rfc3339(self.t + self.delay_ms + 40);
        let user_id = match &self.user_id {
            Some(user) => Some(user.as_str()),
            // Broken tag-manager setups send the string "null" for anonymous visitors.
            None if rng.gen_bool(0.03) => Some("null"),
            None => None,
        };
        let message = Message {
            kind,
            message_id: &message_id,
            anonymous_id: &self.anonymous_id,
            user_id,
            body,
            context: Context {
                library: Library {
                    name: "analytics.js",
                    version: "next-1.70.0",
                },
                locale: "en-US",
                user_agent: self.user_agent,
                page: &self.page,
                consent: self.consent.map(|advertising| ConsentContext {
                    category_preferences: CategoryPreferences {
                        necessary: true,
                        analytics: true,
                        advertising,
                    },
                }),
                traits: self.context_traits.as_ref(),
            },
            timestamp: &timestamp,
            original_timestamp: &original_timestamp,
            sent_at: &sent_at,
            received_at: &received_at,
        };
        let json = to_json(&message);
        self.messages.push(Sent {
            json,
            message_id,
            t: self.t,
            sent_at,
        });
        self.t += rng.gen_range(5_000..90_000);
    }

    fn page(&mut self, rng: &mut Rand, path: &str, name: &str, query: &str) {
        let url = format!("{SITE}{path}{query}");
        let title = format!("{name} | Northwind");
        let properties = json!({"path": path, "url": url, "title": title});
        self.page = Page {
            path: path.to_string(),
            url,
            title,
            referrer: if query.is_empty() {
                format!("{SITE}/")
            } else {
                "https://www.google.com/".to_string()
            },
        };
        let body = Body {
            name: Some(name),
            properties: Some(properties),
            ..Body::default()
        };
        self.message(rng, "page", body);
    }

    fn track(&mut self, rng: &mut Rand, event: &str, properties: Value) {
        let body = Body {
            event: Some(event),
            properties: Some(properties),
            ..Body::default()
        };
        self.message(rng, "track", body);
    }

    fn identify(&mut self, rng: &mut Rand, traits: Map<String, Value>) {
        let body = Body {
            traits: Some(Value::Object(traits)),
            ..Body::default()
        };
        self.message(rng, "identify", body);
    }
}

/// Writes the person's web sessions (and the click logs of their paid landings).
pub(super) fn emit(rng: &mut Rand, p: &Person, now_ms: i64, out: &mut Lines) {
    let last = p.sessions.len().saturating_sub(1);
    for (k, &start) in p.sessions.iter().enumerate() {
        let converting = p.convert_session == Some(k);
        // Before converting, people browse in their main browser: other browsers only show up
        // once they can be logged into.
        let before_conversion = p.convert_session.is_none_or(|c| k <= c);
        let cookie = if before_conversion || p.cookies.len() == 1 || rng.gen_bool(0.6) {
            &p.cookies[0]
        } else {
            &p.cookies[rng.gen_range(1..p.cookies.len())]
        };
        // The last session carries a second address, so it must be one where the person is known.
        let second_email = k == last && p.emails.len() > 1 && p.convert_session.is_some();
        let logged_in = p.logged_in_by(start) && (second_email || rng.gen_bool(0.85));
        let mut s = Session {
            person: p,
            anonymous_id: cookie.clone(),
            user_id: logged_in.then(|| p.user_id.clone()).flatten(),
            t: start,
            skew_ms: if rng.gen_bool(0.1) {
                rng.gen_range(-600_000..600_000)
            } else {
                0
            },
            delay_ms: rng.gen_range(100..3_000),
            user_agent: USER_AGENTS[rng.gen_range(0..USER_AGENTS.len())],
            consent: rng.gen_bool(0.7).then(|| rng.gen_bool(0.6)),
            page: Page::default(),
            context_traits: None,
            messages: Vec::new(),
        };
        if logged_in && rng.gen_bool(0.3) {
            s.context_traits = Some(json!({"email": values::email_variant(rng, &p.emails[0])}));
        }

        landing(rng, &mut s, k == 0, now_ms, out);
        for _ in 0..rng.gen_range(1..=3) {
            browse(rng, &mut s);
        }
        if converting {
            convert(rng, &mut s);
        }
        if s.user_id.is_some() && p.buys && rng.gen_bool(0.35) {
            order(rng, &mut s);
        }
        if second_email {
            let mut traits = Map::new();
            traits.insert(
                "email".into(),
                json!(values::email_variant(rng, &p.emails[1])),
            );
            s.identify(rng, traits);
        }
        write_session(rng, s, out);
    }
}

/// The first page of a session; a paid landing carries UTM parameters and a click id.
fn landing(rng: &mut Rand, s: &mut Session<'_>, first: bool, now_ms: i64, out: &mut Lines) {
    let paid = rng.gen_bool(if first { 0.4 } else { 0.2 });
    if !paid {
        let (path, name) = pick(
            rng,
            &[
                ("/", "Home"),
                ("/blog/what-is-a-cdp", "Blog"),
                ("/features", "Features"),
                ("/pricing", "Pricing"),
            ],
        );
        s.page(rng, path, name, "");
        return;
    }
    let (param, network, source) = pick(
        rng,
        &[
            ("gclid", "google_ads", "google"),
            ("gclid", "google_ads", "google"),
            ("fbclid", "meta", "facebook"),
            ("msclkid", "microsoft_ads", "bing"),
            ("ttclid", "tiktok", "tiktok"),
        ],
    );
    let campaign = pick(rng, &CAMPAIGNS);
    let click_id = values::click_id(rng, param);
    let query =
        format!("?utm_source={source}&utm_medium=cpc&utm_campaign={campaign}&{param}={click_id}");
    if rng.gen_bool(0.7) {
        let url = format!("{SITE}/lp/{campaign}{query}");
        let clicked = (s.t - rng.gen_range(1_000..8_000)).min(now_ms);
        media::click_log(
            rng, s.person, &click_id, network, campaign, &url, clicked, out,
        );
    }
    s.page(rng, &format!("/lp/{campaign}"), "Landing", &query);
}

/// One more page, and the track event that page fires.
fn browse(rng: &mut Rand, s: &mut Session<'_>) {
    match rng.gen_range(0..100) {
        0..=34 => {
            s.page(rng, "/pricing", "Pricing", "");
            let plan = pick(rng, &["starter", "pro", "enterprise"]);
            let billing = pick(rng, &["monthly", "annual"]);
            s.track(
                rng,
                "Pricing Viewed",
                json!({"plan": plan, "billing": billing}),
            );
        }
        35..=69 => {
            let (id, name, price) = pick(rng, &PRODUCTS);
            s.page(rng, &format!("/products/{id}"), "Product", "");
            s.track(
                rng,
                "Product Viewed",
                json!({"product_id": id, "name": name, "price": price, "currency": "USD"}),
            );
        }
        70..=84 => s.page(rng, "/features", "Features", ""),
        _ => s.page(rng, "/blog/identity-resolution", "Blog", ""),
    }
}

/// The sign-up (identify with a user id) or newsletter subscription (identify without one).
fn convert(rng: &mut Rand, s: &mut Session<'_>) {
    let p = s.person;
    let email = values::email_variant(rng, &p.emails[0]);
    let mut traits = Map::new();
    if let Some(user_id) = &p.user_id {
        s.page(rng, "/signup", "Sign Up", "");
        s.user_id = Some(user_id.clone());
        let typed = if p.test_email_at_signup {
            "test@test.com".to_string()
        } else {
            email.clone()
        };
        traits.insert("email".into(), json!(typed));
        traits.insert("firstName".into(), json!(p.first));
        traits.insert("lastName".into(), json!(p.last));
        traits.insert("company".into(), json!(p.company));
        traits.insert("createdAt".into(), json!(rfc3339(s.t)));
        if let Some(digits) = &p.phone {
            if rng.gen_bool(0.5) {
                traits.insert("phone".into(), json!(values::phone_format(rng, digits)));
            }
        }
        s.identify(rng, traits);
        let plan = pick(rng, &["starter", "pro"]);
        s.track(rng, "Signed Up", json!({"method": "email", "plan": plan}));
        if p.test_email_at_signup {
            // The confirmation step makes them give the real address.
            let mut fix = Map::new();
            fix.insert("email".into(), json!(email));
            s.identify(rng, fix);
        }
    } else {
        traits.insert("email".into(), json!(email));
        traits.insert("firstName".into(), json!(p.first));
        s.identify(rng, traits);
        s.track(
            rng,
            "Newsletter Subscribed",
            json!({"list": "weekly-digest"}),
        );
    }
}

fn order(rng: &mut Rand, s: &mut Session<'_>) {
    let (id, name, price) = pick(rng, &PRODUCTS);
    let quantity = rng.gen_range(1..=3);
    let order_id = format!("ord_{}", values::hex(rng, 10));
    s.page(rng, "/checkout", "Checkout", "");
    s.track(
        rng,
        "Order Completed",
        json!({
            "order_id": order_id,
            "revenue": price * f64::from(quantity),
            "currency": "USD",
            "products": [{"product_id": id, "name": name, "price": price, "quantity": quantity}],
        }),
    );
}

/// One line per message, or (for some sessions) one `batch` envelope for the whole session.
fn write_session(rng: &mut Rand, s: Session<'_>, out: &mut Lines) {
    let person = s.person.index;
    let (Some(first), Some(last)) = (s.messages.first(), s.messages.last()) else {
        return;
    };
    if s.messages.len() > 1 && rng.gen_bool(0.1) {
        // The messages are JSON objects already: the envelope is assembled around their text.
        let mut json = String::from("{\"batch\":[");
        for (i, m) in s.messages.iter().enumerate() {
            if i > 0 {
                json.push(',');
            }
            json.push_str(&m.json);
        }
        json.push_str("],\"sentAt\":\"");
        json.push_str(&last.sent_at);
        json.push_str("\"}");
        let start = first.t;
        let truth = s
            .messages
            .into_iter()
            .map(|m| (m.message_id, person))
            .collect();
        out.push(Source::Web, start, json, truth);
        return;
    }
    for m in s.messages {
        out.push(Source::Web, m.t, m.json, vec![(m.message_id, person)]);
    }
}
