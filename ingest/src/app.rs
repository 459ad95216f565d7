//! The app source, `cdp.raw.app`, in two shapes:
//!
//! - **Segment mobile** (analytics-ios, analytics-android, analytics-react-native): everything of
//!   [`crate::segment`], plus `context.device.advertisingId` (IDFA/GAID) and `context.device.id`
//!   (IDFV / Android id) as `device_id`s. When `context.device.adTrackingEnabled` is `false` the
//!   advertising id is not used (the user said no; it is counted as dropped, reason
//!   `ad_tracking_disabled`); all-zero ids are dropped by normalisation. `context.app` and
//!   `context.os` name and version become `app_name`, `app_version`, `os_name`, `os_version`
//!   properties.
//! - **Firebase / GA4 export rows**: `event_name`, `event_timestamp` (microseconds),
//!   `user_pseudo_id` or `app_instance_id` (an `anonymous_id`), `user_id`,
//!   `device.advertising_id` (unless `device.is_limited_ad_tracking`), `device.vendor_id`,
//!   `event_params` (BigQuery `[{key, value: {string_value | int_value | ...}}]` or a plain
//!   object). GA4 rows carry no id, so the event id is built from what identifies the row:
//!   `ga4:{instance id}:{event_timestamp micros}:{event_name}`.

use crate::consent::{self, GOOGLE_CONSENT_TYPES};
use crate::dropped::AD_TRACKING_DISABLED;
use crate::fields::{id_value, insert_absent, is_contact_key, Fields, Object};
use crate::identifiers::IdentifierSet;
use crate::json::{Json, Obj};
use crate::links::event_rule;
use crate::normalize::{event, Context, Draft};
use crate::rejection::{self, missing, wrong_type};
use crate::timestamp::{epoch_field, Epoch};
use cdp_proto::dlq::Rejection;
use cdp_proto::{Consent, IdentifierKind, Signal, Timestamp};
use serde_json::Value;

/// Parses an app record that is not a Segment message (those are [`crate::segment`]'s).
pub(crate) fn parse(obj: &Obj<'_>, cx: &mut Context<'_>) -> Result<Vec<Signal>, Rejection> {
    if obj.contains_key("event_name")
        && (obj.contains_key("user_pseudo_id") || obj.contains_key("app_instance_id"))
    {
        cx.check_message_size()?;
        return Ok(vec![parse_ga4(Fields::root(obj), cx)?]);
    }
    Err(Rejection::new(
        rejection::UNKNOWN_SHAPE,
        "app payload is neither a Segment message or batch nor a Firebase/GA4 event row",
    ))
}

/// Device ids and app/OS descriptors from a Segment mobile `context`.
pub(crate) fn device(
    context: Option<Fields<'_>>,
    ids: &mut IdentifierSet<'_>,
    properties: &mut Object,
) -> Result<(), Rejection> {
    let Some(c) = context else {
        return Ok(());
    };
    if let Some(d) = c.child("device", "context.device")? {
        let tracking = d.flag("adTrackingEnabled")?;
        if let Some(ad_id) = d.str("advertisingId")? {
            advertising_id(ids, ad_id, tracking);
        }
        if let Some(vendor_id) = d.id_text("id")? {
            ids.add(IdentifierKind::DeviceId, &vendor_id);
        }
    }
    let descriptors = [
        ("app", "context.app", "app_name", "app_version"),
        ("os", "context.os", "os_name", "os_version"),
    ];
    for (key, path, name_prop, version_prop) in descriptors {
        if let Some(o) = c.child(key, path)? {
            if let Some(v) = o.get("name") {
                insert_absent(properties, name_prop, v.to_value());
            }
            if let Some(v) = o.get("version") {
                insert_absent(properties, version_prop, v.to_value());
            }
        }
    }
    Ok(())
}

/// Adds an advertising id unless the user limited ad tracking (`tracking == Some(false)`).
pub(crate) fn advertising_id(ids: &mut IdentifierSet<'_>, raw: &str, tracking: Option<bool>) {
    if raw.trim().is_empty() {
        return;
    }
    if tracking == Some(false) {
        ids.refuse(&IdentifierKind::DeviceId, AD_TRACKING_DISABLED);
    } else {
        ids.add(IdentifierKind::DeviceId, raw);
    }
}

/// The event id of a Firebase/GA4 row (see the module docs).
pub fn ga4_event_id(instance_id: &str, event_time: Timestamp, event_name: &str) -> String {
    format!(
        "ga4:{}:{}:{event_name}",
        instance_id.trim(),
        event_time.timestamp_micros()
    )
}

fn parse_ga4(f: Fields<'_>, cx: &mut Context<'_>) -> Result<Signal, Rejection> {
    let name = f.required_str("event_name")?.to_string();
    let (instance_key, instance) = match f.id_text("app_instance_id")? {
        Some(v) => ("app_instance_id", v),
        None => (
            "user_pseudo_id",
            f.id_text("user_pseudo_id")?
                .ok_or_else(|| missing("app_instance_id"))?,
        ),
    };
    if instance.trim().is_empty() {
        return Err(missing(instance_key));
    }
    let event_time = epoch_field(&f, "event_timestamp", Epoch::Micros)?
        .ok_or_else(|| missing("event_timestamp"))?;
    let event_id = ga4_event_id(&instance, event_time, &name);
    if event_id.len() > crate::fields::MAX_RECORD_ID_BYTES {
        return Err(Rejection::new(
            rejection::OVERSIZE,
            "event id built from `app_instance_id`, `event_timestamp` and `event_name` is too long",
        ));
    }

    let mut properties = ga4_params(f)?;
    let mut ids = cx.identifiers();
    if let Some(user) = f.id_text("user_id")? {
        ids.add(IdentifierKind::UserId, &user);
    }
    ids.add(IdentifierKind::AnonymousId, &instance);
    if let Some(d) = f.child("device", "device")? {
        let limited = d.flag("is_limited_ad_tracking")?;
        if let Some(ad_id) = d.str("advertising_id")? {
            advertising_id(&mut ids, ad_id, limited.map(|l| !l));
        }
        if let Some(vendor_id) = d.id_text("vendor_id")? {
            ids.add(IdentifierKind::DeviceId, &vendor_id);
        }
        for (key, prop) in [
            ("operating_system", "os_name"),
            ("operating_system_version", "os_version"),
        ] {
            if let Some(v) = d.get(key) {
                insert_absent(&mut properties, prop, v.to_value());
            }
        }
    }
    if let Some(app) = f.child("app_info", "app_info")? {
        for (key, prop) in [("id", "app_id"), ("version", "app_version")] {
            if let Some(v) = app.get(key) {
                insert_absent(&mut properties, prop, v.to_value());
            }
        }
    }
    let identifiers = ids.into_vec();
    let consent = ga4_consent(f)?;
    Draft {
        event_id,
        event_time,
        identifiers,
        event: Some(event("track", Some(name), properties)),
        traits: Object::new(),
        consent,
    }
    .into_signal(cx, |ids, c, o| event_rule(&ids[c].kind, &ids[o].kind, true))
}

/// Consent of a GA4 row: a Measurement Protocol `consent` object (`ad_user_data`,
/// `ad_personalization`: `GRANTED`/`DENIED`) and a BigQuery export's `privacy_info`
/// (`analytics_storage`, `ads_storage`: `Yes`/`No`, stored as Consent Mode's `ad_storage`).
fn ga4_consent(f: Fields<'_>) -> Result<Consent, Rejection> {
    let mut out = Consent::default();
    if let Some(c) = f.child("consent", "consent")? {
        for purpose in GOOGLE_CONSENT_TYPES {
            if let Some(v) = c.get(purpose) {
                let state = consent::state(v)
                    .map_err(|()| wrong_type(&c.name(purpose), "\"GRANTED\" or \"DENIED\""))?;
                if let Some(b) = state {
                    out.0.insert(purpose.to_string(), b);
                }
            }
        }
    }
    if let Some(p) = f.child("privacy_info", "privacy_info")? {
        for (key, purpose) in [
            ("analytics_storage", "analytics_storage"),
            ("ads_storage", "ad_storage"),
        ] {
            if let Some(b) = p.flag(key)? {
                out.0.insert(purpose.to_string(), b);
            }
        }
    }
    Ok(out)
}

/// GA4 event parameters as properties. BigQuery rows hold typed values
/// (`{"key": "currency", "value": {"string_value": "USD"}}`); Measurement Protocol sends an object.
/// Contact fields are left out: GA4 forbids PII in parameters, and ingest does not pass it on.
fn ga4_params(f: Fields<'_>) -> Result<Object, Rejection> {
    let mut out = Object::new();
    match f.get("event_params") {
        None => {}
        Some(Json::Object(obj)) => {
            for (k, v) in obj.entries() {
                if !is_contact_key(k) {
                    out.insert(k.to_string(), v.to_value());
                }
            }
        }
        Some(Json::Array(params)) => {
            for param in params {
                let param = match param {
                    Json::Object(p) => Some(p),
                    _ => None,
                };
                let Some(key) = param.and_then(|p| p.get("key")).and_then(id_value) else {
                    return Err(wrong_type("event_params[].key", "a string"));
                };
                if is_contact_key(&key) {
                    continue;
                }
                let value = param
                    .and_then(|p| match p.get("value") {
                        Some(Json::Object(v)) => Some(v),
                        _ => None,
                    })
                    .and_then(|v| {
                        ["string_value", "int_value", "double_value", "float_value"]
                            .iter()
                            .find_map(|t| v.get(t).filter(|x| !x.is_null()))
                    })
                    .map_or(Value::Null, Json::to_value);
                out.insert(key.into_owned(), value);
            }
        }
        Some(_) => return Err(wrong_type("event_params", "an array or an object")),
    }
    Ok(out)
}
