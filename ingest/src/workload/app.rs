//! App sessions as the Segment mobile SDKs send them (and, for some Android installs, as
//! Firebase/GA4 rows), with the MMP postbacks each install and in-app conversion triggers.
//! Shared installs (one device, several logged-in people) send Segment messages only.

use super::person::{Device, Person, Platform, SharedDevice};
use super::segment::{to_json, Body, Library, Message};
use super::values::{self, pick, Rand};
use super::{media, rfc3339, schedule, Lines};
use crate::app::ga4_event_id;
use cdp_proto::{time, Source};
use rand::Rng;
use serde::Serialize;
use serde_json::{json, Value};

const HOUR_MS: i64 = 3_600_000;

/// Writes every install of `p`: install postback, sessions, in-app postbacks.
pub(super) fn emit(rng: &mut Rand, p: &Person, now_ms: i64, out: &mut Lines) {
    for device in &p.devices {
        media::install(rng, p, device, out);
        let count = rng.gen_range(2..=6);
        let sessions = schedule(rng, count, device.installed_ms + 60_000, now_ms, HOUR_MS);
        let mut registered = false;
        for start in sessions {
            let logged_in = p.logged_in_by(start) && rng.gen_bool(0.85);
            let mut s = AppSession::new(rng, p, device, start, logged_in);
            if logged_in && !registered {
                registered = true;
                s.identify(rng, p);
                media::in_app(
                    rng,
                    p,
                    device,
                    "af_complete_registration",
                    s.user_id(),
                    s.t,
                    None,
                    out,
                );
            }
            s.browse(rng);
            if logged_in && p.buys && rng.gen_bool(0.2) {
                let price = s.order(rng);
                media::in_app(
                    rng,
                    p,
                    device,
                    "af_purchase",
                    s.user_id(),
                    s.t,
                    Some(price),
                    out,
                );
            }
            s.write(out);
        }
    }
}

/// Writes the sessions of each member of a shared install: always logged in, each member's
/// first session on it starting with an identify.
pub(super) fn emit_shared(
    rng: &mut Rand,
    shared: &SharedDevice,
    people: &[Person],
    now_ms: i64,
    out: &mut Lines,
) {
    for &member in &shared.members {
        let p = &people[member];
        let from = shared
            .device
            .installed_ms
            .max(p.converted_ms.unwrap_or(shared.device.installed_ms))
            + 60_000;
        let count = rng.gen_range(1..=3);
        for (k, start) in schedule(rng, count, from, now_ms, HOUR_MS)
            .into_iter()
            .enumerate()
        {
            let mut s = AppSession::new(rng, p, &shared.device, start, true);
            s.ga4 = false;
            if k == 0 {
                s.identify(rng, p);
            }
            s.browse(rng);
            s.write(out);
        }
    }
}

struct AppSession<'a> {
    person: &'a Person,
    device: &'a Device,
    user_id: Option<String>,
    ga4: bool,
    t: i64,
    skew_ms: i64,
    delay_ms: i64,
    /// Each line, its record id and its true time.
    lines: Vec<(String, String, i64)>,
}

impl<'a> AppSession<'a> {
    fn new(
        rng: &mut Rand,
        person: &'a Person,
        device: &'a Device,
        start: i64,
        logged_in: bool,
    ) -> Self {
        Self {
            person,
            device,
            user_id: if logged_in {
                person.user_id.clone()
            } else {
                None
            },
            ga4: device.ga4,
            t: start,
            skew_ms: if rng.gen_bool(0.05) {
                rng.gen_range(-3_600_000..3_600_000)
            } else {
                0
            },
            // Mobile SDKs flush in batches: messages wait longer than on the web.
            delay_ms: rng.gen_range(1_000..60_000),
            lines: Vec::new(),
        }
    }

    fn user_id(&self) -> Option<&str> {
        self.user_id.as_deref()
    }

    /// Adds one event: `kind`/`name` for Segment, `ga4_name` for a GA4 row.
    fn event(
        &mut self,
        rng: &mut Rand,
        kind: &str,
        name: Option<&str>,
        ga4_name: &str,
        properties: Value,
    ) {
        if self.ga4 {
            self.ga4_row(ga4_name, &properties);
        } else {
            self.segment(rng, kind, name, properties);
        }
        // At least two seconds apart: MMP event ids have second resolution.
        self.t += rng.gen_range(2_000..60_000);
    }

    fn segment(&mut self, rng: &mut Rand, kind: &str, name: Option<&str>, extra: Value) {
        let d = self.device;
        let message_id = values::uuid(rng);
        let (os, os_version, library, manufacturer, model) = match d.platform {
            Platform::Ios => ("iOS", "17.4", "analytics-swift", "Apple", "iPhone15,2"),
            Platform::Android => ("Android", "14", "analytics-kotlin", "Google", "Pixel 8"),
        };
        let original = self.t + self.skew_ms;
        let (timestamp, original_timestamp) = (rfc3339(self.t), rfc3339(original));
        let sent_at = rfc3339(original + self.delay_ms);
        let received_at = rfc3339(self.t + self.delay_ms + 80);
        let body = match kind {
            "identify" => Body {
                traits: Some(extra),
                ..Body::default()
            },
            "screen" => Body {
                name,
                properties: Some(extra),
                ..Body::default()
            },
            _ => Body {
                event: name,
                properties: Some(extra),
                ..Body::default()
            },
        };
        let message = Message {
            kind,
            message_id: &message_id,
            anonymous_id: &d.anonymous_id,
            user_id: self.user_id.as_deref(),
            body,
            context: MobileContext {
                device: DeviceContext {
                    id: &d.vendor_id,
                    advertising_id: &d.ad_id,
                    ad_tracking_enabled: d.tracking,
                    manufacturer,
                    model,
                    kind: if d.platform == Platform::Ios {
                        "ios"
                    } else {
                        "android"
                    },
                },
                app: AppContext {
                    name: "Northwind",
                    version: "5.2.1",
                    build: "521",
                    namespace: "com.northwind.app",
                },
                os: OsContext {
                    name: os,
                    version: os_version,
                },
                library: Library {
                    name: library,
                    version: "1.5.11",
                },
                locale: "en-US",
                timezone: "America/New_York",
            },
            timestamp: &timestamp,
            original_timestamp: &original_timestamp,
            sent_at: &sent_at,
            received_at: &received_at,
        };
        self.lines.push((to_json(&message), message_id, self.t));
    }

    fn ga4_row(&mut self, name: &str, properties: &Value) {
        let d = self.device;
        let micros = self.t * 1_000;
        let params: Vec<Value> = properties
            .as_object()
            .map(|o| {
                o.iter()
                    .map(|(k, v)| {
                        let typed = match v {
                            Value::Number(n) if n.is_f64() => json!({"double_value": n}),
                            Value::Number(n) => json!({"int_value": n.to_string()}),
                            other => json!({"string_value": other.as_str().map_or_else(|| other.to_string(), str::to_string)}),
                        };
                        json!({"key": k, "value": typed})
                    })
                    .collect()
            })
            .unwrap_or_default();
        let mut row = json!({
            "event_date": time::from_millis(self.t).format("%Y%m%d").to_string(),
            "event_timestamp": micros.to_string(),
            "event_name": name,
            "event_params": params,
            "user_pseudo_id": d.anonymous_id,
            "device": {
                "category": "mobile",
                "operating_system": "Android",
                "operating_system_version": "Android 14",
                "advertising_id": d.ad_id,
                "is_limited_ad_tracking": if d.tracking { "No" } else { "Yes" },
            },
            "app_info": {"id": "com.northwind.app", "version": "5.2.1"},
            "platform": "ANDROID",
        });
        if let Some(user) = &self.user_id {
            row["user_id"] = json!(user);
        }
        let record_id = ga4_event_id(&d.anonymous_id, time::from_millis(self.t), name);
        self.lines.push((row.to_string(), record_id, self.t));
    }

    fn identify(&mut self, rng: &mut Rand, p: &Person) {
        if self.ga4 {
            // GA4 forbids PII in event parameters: a GA4 login only carries the user id.
            self.event(
                rng,
                "identify",
                None,
                "login",
                json!({"method": "password"}),
            );
            return;
        }
        let traits = json!({
            "email": values::email_variant(rng, &p.emails[0]),
            "firstName": p.first,
            "lastName": p.last,
        });
        self.event(rng, "identify", None, "login", traits);
    }

    fn browse(&mut self, rng: &mut Rand) {
        let from_background = rng.gen_bool(0.5);
        self.event(
            rng,
            "track",
            Some("Application Opened"),
            "app_open",
            json!({"from_background": from_background}),
        );
        for _ in 0..rng.gen_range(1..=3) {
            if rng.gen_bool(0.5) {
                self.event(
                    rng,
                    "screen",
                    Some("Home"),
                    "screen_view",
                    json!({"screen_class": "HomeViewController"}),
                );
            } else {
                let product = pick(rng, &["sku-1001", "sku-1002", "sku-2001", "sku-3001"]);
                self.event(
                    rng,
                    "screen",
                    Some("Product Detail"),
                    "screen_view",
                    json!({"product_id": product}),
                );
                self.event(
                    rng,
                    "track",
                    Some("Product Viewed"),
                    "view_item",
                    json!({"product_id": product, "currency": "USD"}),
                );
            }
        }
    }

    /// An in-app order; returns its revenue for the MMP postback.
    fn order(&mut self, rng: &mut Rand) -> f64 {
        let revenue = pick(rng, &[29.0, 49.0, 99.0, 199.0]);
        let order_id = format!("ord_{}", values::hex(rng, 10));
        self.event(
            rng,
            "track",
            Some("Order Completed"),
            "purchase",
            json!({"order_id": order_id, "revenue": revenue, "currency": "USD"}),
        );
        revenue
    }

    fn write(self, out: &mut Lines) {
        let person = self.person.index;
        for (line, record_id, t) in self.lines {
            out.push(Source::App, t, line, vec![(record_id, person)]);
        }
    }
}

/// The Segment mobile libraries' `context`.
#[derive(Serialize)]
struct MobileContext<'a> {
    device: DeviceContext<'a>,
    app: AppContext,
    os: OsContext,
    library: Library,
    locale: &'static str,
    timezone: &'static str,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct DeviceContext<'a> {
    id: &'a str,
    advertising_id: &'a str,
    ad_tracking_enabled: bool,
    manufacturer: &'static str,
    model: &'static str,
    #[serde(rename = "type")]
    kind: &'static str,
}

#[derive(Serialize)]
struct AppContext {
    name: &'static str,
    version: &'static str,
    build: &'static str,
    namespace: &'static str,
}

#[derive(Serialize)]
struct OsContext {
    name: &'static str,
    version: &'static str,
}
