//! The paid-media source, `cdp.raw.media`, in three shapes:
//!
//! - **AppsFlyer** push-API postbacks (`appsflyer_id`): install and in-app events. Ids:
//!   `appsflyer_id`, `advertising_id` (GAID) and `idfa` unless `is_lat`, `idfv` as `device_id`s;
//!   `customer_user_id` as `user_id`. Time: `event_time` (UTC, `YYYY-MM-DD HH:MM:SS.sss`), else
//!   `install_time`. Event id: `af:{appsflyer_id}:{event time, epoch ms}:{event_name}`
//!   (postbacks carry no id of their own).
//! - **Adjust** callbacks (`adid` with `activity_kind` or `created_at`): `adid`, `gps_adid` and
//!   `idfa` unless `tracking_limited`, `idfv` as `device_id`s; a `customer_user_id` callback
//!   parameter as `user_id`. Time: `created_at` (epoch seconds). Event id:
//!   `adj:{adid}:{created_at}:{activity_kind}:{event_token or event_name}`.
//! - **Ad-click logs** (`click_id`, `cookie_id`): an ad server's record of one click. Event id:
//!   `click:{click_id}`. Time: `timestamp` or `clicked_at`.
//!
//! Click ids (`click_id`, `gclid`, `fbclid`, `ttclid`, `msclkid`) are case-sensitive and never
//! hashed. Unfilled template macros (`{idfa}`) are dropped as placeholders. MMP links are
//! `mmp_attribution` (0.9); anything with a click id is `click_id_match` (0.8).

use crate::app::advertising_id;
use crate::fields::{is_contact_key, Fields, Object, MAX_RECORD_ID_BYTES};
use crate::identifiers::IdentifierSet;
use crate::json::{Json, Obj};
use crate::links::LinkRule;
use crate::normalize::{event, Context, Draft};
use crate::rejection::{self, missing};
use crate::timestamp::{epoch_field, text_field, Epoch};
use cdp_proto::dlq::Rejection;
use cdp_proto::{Consent, Identifier, IdentifierKind, Signal, Timestamp};
use serde_json::Value;

/// Fields of MMP postbacks that may hold an ad click id.
const CLICK_ID_FIELDS: [&str; 5] = ["click_id", "gclid", "fbclid", "ttclid", "msclkid"];

/// Parses one media record.
pub(crate) fn parse(obj: &Obj<'_>, cx: &mut Context<'_>) -> Result<Vec<Signal>, Rejection> {
    cx.check_message_size()?;
    let f = Fields::root(obj);
    let signal = if f.has("appsflyer_id") {
        appsflyer(f, cx)?
    } else if f.has("adid") && (f.has("activity_kind") || f.has("created_at")) {
        adjust(f, cx)?
    } else if f.has("click_id") {
        click_log(f, cx)?
    } else {
        return Err(Rejection::new(
            rejection::UNKNOWN_SHAPE,
            "media payload is neither an AppsFlyer postback (`appsflyer_id`), an Adjust callback (`adid`) nor a click log (`click_id`)",
        ));
    };
    Ok(vec![signal])
}

/// The event id of an AppsFlyer postback (see the module docs).
pub fn appsflyer_event_id(appsflyer_id: &str, event_time: Timestamp, event_name: &str) -> String {
    format!(
        "af:{}:{}:{event_name}",
        appsflyer_id.trim(),
        event_time.timestamp_millis()
    )
}

/// The event id of an Adjust callback (see the module docs).
pub fn adjust_event_id(
    adid: &str,
    created_at: Timestamp,
    activity_kind: &str,
    token: &str,
) -> String {
    format!(
        "adj:{}:{}:{activity_kind}:{token}",
        adid.trim(),
        created_at.timestamp()
    )
}

/// The event id of an ad-click log line.
pub fn click_event_id(click_id: &str) -> String {
    format!("click:{}", click_id.trim())
}

fn appsflyer(f: Fields<'_>, cx: &mut Context<'_>) -> Result<Signal, Rejection> {
    let appsflyer_id = f.record_id("appsflyer_id")?;
    let name = f.required_str("event_name")?.trim().to_string();
    let event_time = match text_field(&f, "event_time")? {
        Some(t) => t,
        None => text_field(&f, "install_time")?.ok_or_else(|| missing("event_time"))?,
    };
    let event_id = bounded(appsflyer_event_id(&appsflyer_id, event_time, &name))?;

    let identifiers =
        postback_identifiers(f, cx, &appsflyer_id, "is_lat", ["advertising_id", "idfa"])?;

    let mut properties = Object::new();
    for (key, prop) in [
        ("media_source", "media_source"),
        ("campaign", "campaign"),
        ("af_channel", "channel"),
        ("af_adset", "adset"),
        ("af_ad", "ad"),
        ("platform", "platform"),
        ("app_id", "app_id"),
        ("event_revenue", "revenue"),
        ("event_revenue_currency", "currency"),
    ] {
        copy(f, key, prop, &mut properties);
    }
    if let Some(v) = f.get("event_value") {
        event_value(v, &mut properties);
    }
    let kind = if name.eq_ignore_ascii_case("install") {
        "install"
    } else {
        "track"
    };
    Draft {
        event_id,
        event_time,
        identifiers,
        event: Some(event(kind, Some(name), properties)),
        traits: Object::new(),
        consent: Consent::default(),
    }
    .into_signal(cx, mmp_rule)
}

/// The identifiers of a mobile measurement postback: the customer user id, the MMP's own device
/// id, the advertising ids under `ad_id_keys` (not linked when the flag `limited_key` says
/// tracking is limited), the vendor id and click ids.
fn postback_identifiers(
    f: Fields<'_>,
    cx: &mut Context<'_>,
    mmp_device_id: &str,
    limited_key: &str,
    ad_id_keys: [&str; 2],
) -> Result<Vec<Identifier>, Rejection> {
    let mut ids = cx.identifiers();
    if let Some(user) = f.id_text("customer_user_id")? {
        ids.add(IdentifierKind::UserId, &user);
    }
    ids.add(IdentifierKind::DeviceId, mmp_device_id);
    let tracking = f.flag(limited_key)?.map(|limited| !limited);
    for key in ad_id_keys {
        if let Some(ad_id) = f.str(key)? {
            advertising_id(&mut ids, ad_id, tracking);
        }
    }
    if let Some(idfv) = f.str("idfv")? {
        ids.add(IdentifierKind::DeviceId, idfv);
    }
    click_ids(f, &mut ids)?;
    Ok(ids.into_vec())
}

fn adjust(f: Fields<'_>, cx: &mut Context<'_>) -> Result<Signal, Rejection> {
    let adid = f.record_id("adid")?;
    let activity = f
        .str("activity_kind")?
        .map(str::trim)
        .unwrap_or("event")
        .to_string();
    let created =
        epoch_field(&f, "created_at", Epoch::Seconds)?.ok_or_else(|| missing("created_at"))?;
    let token = f
        .str("event_token")?
        .or(f.str("event_name")?)
        .unwrap_or("")
        .trim();
    let event_id = bounded(adjust_event_id(&adid, created, &activity, token))?;

    let identifiers = postback_identifiers(f, cx, &adid, "tracking_limited", ["gps_adid", "idfa"])?;

    let mut properties = Object::new();
    for (key, prop) in [
        ("tracker_name", "tracker_name"),
        ("network_name", "media_source"),
        ("campaign_name", "campaign"),
        ("adgroup_name", "adset"),
        ("os_name", "platform"),
        ("app_id", "app_id"),
        ("revenue", "revenue"),
        ("currency", "currency"),
    ] {
        copy(f, key, prop, &mut properties);
    }
    let name = f
        .str("event_name")?
        .map(str::to_string)
        .unwrap_or_else(|| activity.clone());
    let kind = if activity == "install" {
        "install"
    } else {
        "track"
    };
    Draft {
        event_id,
        event_time: created,
        identifiers,
        event: Some(event(kind, Some(name), properties)),
        traits: Object::new(),
        consent: Consent::default(),
    }
    .into_signal(cx, mmp_rule)
}

fn click_log(f: Fields<'_>, cx: &mut Context<'_>) -> Result<Signal, Rejection> {
    let click_id = f.record_id("click_id")?;
    let event_time = match text_field(&f, "timestamp")? {
        Some(t) => t,
        None => text_field(&f, "clicked_at")?.unwrap_or(cx.received_at),
    };
    let event_id = bounded(click_event_id(&click_id))?;

    let mut ids = cx.identifiers();
    ids.add(IdentifierKind::ClickId, &click_id);
    if let Some(cookie) = f.id_text("cookie_id")? {
        ids.add(IdentifierKind::CookieId, &cookie);
    }
    let identifiers = ids.into_vec();

    let mut properties = Object::new();
    for key in ["network", "campaign", "ad_id", "placement", "url"] {
        copy(f, key, key, &mut properties);
    }
    Draft {
        event_id,
        event_time,
        identifiers,
        event: Some(event("click", Some("Ad Clicked".to_string()), properties)),
        traits: Object::new(),
        consent: Consent::default(),
    }
    .into_signal(cx, |_, _, _| LinkRule::ClickIdMatch)
}

fn mmp_rule(ids: &[Identifier], centre: usize, other: usize) -> LinkRule {
    let click = |i: usize| ids[i].kind == IdentifierKind::ClickId;
    if click(centre) || click(other) {
        LinkRule::ClickIdMatch
    } else {
        LinkRule::MmpAttribution
    }
}

fn click_ids(f: Fields<'_>, ids: &mut IdentifierSet<'_>) -> Result<(), Rejection> {
    for key in CLICK_ID_FIELDS {
        if let Some(v) = f.str(key)? {
            if !v.trim().is_empty() {
                ids.add(IdentifierKind::ClickId, v);
            }
        }
    }
    Ok(())
}

/// Copies a scalar field into the properties; contact fields never are.
fn copy(f: Fields<'_>, key: &str, prop: &str, properties: &mut Object) {
    if let Some(v) = f.get(key) {
        if !is_contact_key(key) && !matches!(v, Json::Object(_) | Json::Array(_)) {
            properties.insert(prop.to_string(), v.to_value());
        }
    }
}

/// AppsFlyer's `event_value` is the app's own event payload, JSON encoded in a string. Its fields
/// become properties (contact fields left out); text that is not a JSON object is kept as it is.
fn event_value(v: &Json<'_>, properties: &mut Object) {
    let parsed = match v {
        Json::Str(s) => serde_json::from_str::<Value>(s).ok(),
        other => Some(other.to_value()),
    };
    match parsed {
        Some(Value::Object(obj)) => {
            for (k, v) in obj {
                if !is_contact_key(&k) {
                    properties.entry(k).or_insert(v);
                }
            }
        }
        _ => {
            if let Json::Str(s) = v {
                if !s.is_empty() {
                    properties.insert("event_value".into(), Value::String(s.to_string()));
                }
            }
        }
    }
}

fn bounded(event_id: String) -> Result<String, Rejection> {
    if event_id.len() > MAX_RECORD_ID_BYTES {
        Err(Rejection::new(
            rejection::OVERSIZE,
            format!("event id built from the postback is longer than {MAX_RECORD_ID_BYTES} bytes"),
        ))
    } else {
        Ok(event_id)
    }
}
