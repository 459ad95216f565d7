//! Paid-media records: AppsFlyer and Adjust postbacks for app installs and in-app conversions,
//! and the ad server's log of clicks on paid landing pages.

use super::person::{Device, Mmp, Person, Platform};
use super::values::{pick, Rand};
use super::{rfc3339, Lines};
use crate::media::{adjust_event_id, appsflyer_event_id, click_event_id};
use cdp_proto::{time, Source};
use rand::Rng;
use serde_json::{json, Value};

const SOURCES: [(&str, &str, &str); 5] = [
    ("organic", "Organic", ""),
    ("googleadwords_int", "Google Ads", "app_install_q4"),
    ("Facebook Ads", "Facebook Installs", "lookalike_buyers"),
    ("tiktokglobal_int", "TikTok for Business", "creator_push"),
    ("Apple Search Ads", "Apple Search Ads", "brand_keywords"),
];

/// AppsFlyer's time format: UTC without a zone.
fn appsflyer_time(ms: i64) -> String {
    time::from_millis(ms)
        .format("%Y-%m-%d %H:%M:%S%.3f")
        .to_string()
}

/// The install postback of `device`.
pub(super) fn install(rng: &mut Rand, p: &Person, device: &Device, out: &mut Lines) {
    let t = device.installed_ms;
    let (media_source, network, campaign) = pick(rng, &SOURCES);
    let (line, record_id) = match &device.mmp {
        Mmp::AppsFlyer { appsflyer_id } => {
            let mut v = appsflyer_base(device, appsflyer_id, "install", t);
            v["install_time"] = json!(appsflyer_time(t));
            v["media_source"] = json!(media_source);
            if !campaign.is_empty() {
                v["campaign"] = json!(campaign);
                v["af_channel"] = json!("paid");
            }
            let id = appsflyer_event_id(appsflyer_id, time::from_millis(t), "install");
            (v, id)
        }
        Mmp::Adjust { adid } => {
            let mut v = adjust_base(device, adid, "install", t);
            v["installed_at"] = json!((t / 1_000).to_string());
            v["network_name"] = json!(network);
            v["tracker_name"] = json!(if campaign.is_empty() {
                network.to_string()
            } else {
                format!("{network}::{campaign}")
            });
            if !campaign.is_empty() {
                v["campaign_name"] = json!(campaign);
            }
            let id = adjust_event_id(adid, time::from_millis(t), "install", "");
            (v, id)
        }
    };
    out.push(
        Source::Media,
        t,
        line.to_string(),
        vec![(record_id, p.index)],
    );
}

/// An in-app event postback; `user_id` is the customer user id the app set after login.
#[allow(clippy::too_many_arguments)]
pub(super) fn in_app(
    rng: &mut Rand,
    p: &Person,
    device: &Device,
    name: &str,
    user_id: Option<&str>,
    t: i64,
    revenue: Option<f64>,
    out: &mut Lines,
) {
    let (line, record_id) = match &device.mmp {
        Mmp::AppsFlyer { appsflyer_id } => {
            let mut v = appsflyer_base(device, appsflyer_id, name, t);
            v["customer_user_id"] = json!(user_id);
            if let Some(r) = revenue {
                v["event_revenue"] = json!(r.to_string());
                v["event_revenue_currency"] = json!("USD");
                v["event_value"] = json!(format!(
                    "{{\"af_revenue\":\"{r}\",\"af_currency\":\"USD\",\"af_quantity\":\"{}\"}}",
                    rng.gen_range(1..=3)
                ));
            } else {
                v["event_value"] = json!("{}");
            }
            let id = appsflyer_event_id(appsflyer_id, time::from_millis(t), name);
            (v, id)
        }
        Mmp::Adjust { adid } => {
            let token = match name {
                "af_complete_registration" => "k7r2fs",
                "af_purchase" => "p9x4qa",
                _ => "c1v8mz",
            };
            let mut v = adjust_base(device, adid, "event", t);
            v["event_token"] = json!(token);
            v["event_name"] = json!(name.trim_start_matches("af_"));
            v["customer_user_id"] = json!(user_id);
            if let Some(r) = revenue {
                v["revenue"] = json!(r.to_string());
                v["currency"] = json!("USD");
            }
            let id = adjust_event_id(adid, time::from_millis(t), "event", token);
            (v, id)
        }
    };
    out.push(
        Source::Media,
        t,
        line.to_string(),
        vec![(record_id, p.index)],
    );
}

/// The ad server's record of a click that landed on the site with `click_id`.
#[allow(clippy::too_many_arguments)]
pub(super) fn click_log(
    rng: &mut Rand,
    p: &Person,
    click_id: &str,
    network: &str,
    campaign: &str,
    url: &str,
    t: i64,
    out: &mut Lines,
) {
    let line = json!({
        "click_id": click_id,
        "cookie_id": p.ad_cookie,
        "timestamp": rfc3339(t),
        "network": network,
        "campaign": campaign,
        "ad_id": format!("ad_{}", rng.gen_range(10_000..99_999)),
        "placement": pick(rng, &["search", "feed", "display", "video"]),
        "url": url,
    });
    out.push(
        Source::Media,
        t,
        line.to_string(),
        vec![(click_event_id(click_id), p.index)],
    );
}

fn appsflyer_base(device: &Device, appsflyer_id: &str, event_name: &str, t: i64) -> Value {
    let mut v = json!({
        "appsflyer_id": appsflyer_id,
        "event_name": event_name,
        "event_time": appsflyer_time(t),
        "is_lat": (!device.tracking).to_string(),
    });
    match device.platform {
        Platform::Ios => {
            v["platform"] = json!("ios");
            v["app_id"] = json!("id1459920001");
            v["idfa"] = json!(device.ad_id);
            v["idfv"] = json!(device.vendor_id);
        }
        Platform::Android => {
            v["platform"] = json!("android");
            v["app_id"] = json!("com.northwind.app");
            v["advertising_id"] = json!(device.ad_id);
        }
    }
    v
}

fn adjust_base(device: &Device, adid: &str, activity_kind: &str, t: i64) -> Value {
    let mut v = json!({
        "adid": adid,
        "activity_kind": activity_kind,
        "created_at": (t / 1_000).to_string(),
        "app_id": "com.northwind.app",
        "tracking_limited": if device.tracking { "0" } else { "1" },
    });
    // Adjust fills only the placeholders of the device's platform; the others arrive as written.
    match device.platform {
        Platform::Ios => {
            v["os_name"] = json!("ios");
            v["idfa"] = json!(device.ad_id);
            v["idfv"] = json!(device.vendor_id);
            v["gps_adid"] = json!("{gps_adid}");
        }
        Platform::Android => {
            v["os_name"] = json!("android");
            v["gps_adid"] = json!(device.ad_id);
            v["idfa"] = json!("{idfa}");
        }
    }
    v
}
