//! The CRM source, `cdp.raw.crm`: one person record per payload, as the CRM's REST API returns it.
//!
//! - **Salesforce** Contact or Lead (`attributes.type`): `Id` becomes `crm_id` `sf:{18-char id}`
//!   (15-character ids are widened to their case-safe 18-character form, so both spellings of one
//!   record are one identifier); `Email`, `Phone`, `MobilePhone` are hashed; a converted Lead's
//!   `ConvertedContactId` is the same person's Contact and is linked too. The lifecycle stage comes
//!   from the custom field `Lifecycle_Stage__c`, else from a Lead's `Status`. `HasOptedOutOfEmail`
//!   and `DoNotCall` become the `email` and `phone` consent purposes. Time: `LastModifiedDate`,
//!   else `SystemModstamp`, else `CreatedDate`. The address (a Contact's `Mailing*` fields, a
//!   Lead's `Street`, `City`, `PostalCode`) and `Birthdate` become the traits `street`, `city`,
//!   `postal_code` and `birth_date`, which the resolver's probabilistic matching compares.
//! - **HubSpot** v3 contact (`id`, `properties`): `crm_id` `hs:{id}`; `properties.email`, every
//!   address of `hs_additional_emails` (`;`-separated), `phone`, `mobilephone`;
//!   `lifecyclestage`; `hs_email_optout`; `address`, `city`, `zip`, `date_of_birth` as the
//!   matching traits above. Time: `updatedAt`, else `properties.lastmodifieddate`, else
//!   `createdAt`.
//!
//! `traits.lifecycle_stage` is always HubSpot's vocabulary (`subscriber`, `lead`,
//! `marketingqualifiedlead`, `salesqualifiedlead`, `opportunity`, `customer`, `evangelist`,
//! `other`), whatever the CRM calls it. A Salesforce Contact with neither field has none.
//!
//! Event id: `{crm_id}@{record time, RFC 3339 ms}` (`sf:0035g00000XyZ12AAB@2024-05-01T12:34:56.000Z`),
//! or the bare `crm_id` when the record has no time: one id per version of a record.

use crate::fields::{Fields, Object};
use crate::json::Obj;
use crate::links::LinkRule;
use crate::normalize::{event, Context, Draft};
use crate::rejection::{self, missing};
use crate::timestamp::{id_form, text_field};
use cdp_proto::dlq::Rejection;
use cdp_proto::{Consent, IdentifierKind, Signal, Timestamp};
use serde_json::Value;
use std::borrow::Cow;

/// Parses one CRM record.
pub(crate) fn parse(obj: &Obj<'_>, cx: &mut Context<'_>) -> Result<Vec<Signal>, Rejection> {
    let f = Fields::root(obj);
    if f.has("attributes") {
        return Ok(vec![salesforce(f, cx)?]);
    }
    if f.has("properties") && f.has("id") {
        return Ok(vec![hubspot(f, cx)?]);
    }
    Err(Rejection::new(
        rejection::UNKNOWN_SHAPE,
        "CRM payload is neither a Salesforce record (`attributes`) nor a HubSpot contact (`id`, `properties`)",
    ))
}

/// The `crm_id` value of a Salesforce record id.
pub fn salesforce_crm_id(id: &str) -> String {
    format!("sf:{}", salesforce_id18(id.trim()))
}

/// The `crm_id` value of a HubSpot contact id.
pub fn hubspot_crm_id(id: &str) -> String {
    format!("hs:{}", id.trim())
}

/// The event id of a CRM record version (see the module docs).
pub fn record_event_id(crm_id: &str, modified: Option<Timestamp>) -> String {
    match modified {
        Some(t) => format!("{crm_id}@{}", id_form(t)),
        None => crm_id.to_string(),
    }
}

/// Salesforce's case-safe 18-character form of a 15-character record id: three suffix characters
/// encode, five characters at a time, which characters are upper-case. Other ids are unchanged.
pub fn salesforce_id18(id: &str) -> Cow<'_, str> {
    if id.len() != 15 || !id.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return Cow::Borrowed(id);
    }
    const ALPHABET: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ012345";
    let mut out = String::with_capacity(18);
    out.push_str(id);
    for chunk in id.as_bytes().chunks(5) {
        let bits = chunk
            .iter()
            .enumerate()
            .filter(|(_, b)| b.is_ascii_uppercase())
            .fold(0usize, |acc, (i, _)| acc | 1 << i);
        out.push(char::from(ALPHABET[bits]));
    }
    Cow::Owned(out)
}

/// Maps a CRM's lifecycle or lead-status value to HubSpot's lifecycle vocabulary. Unknown values
/// are `other`, HubSpot's own bucket, so cohorts never see a stage outside the list.
pub fn lifecycle_stage(raw: &str) -> &'static str {
    let key: String = raw
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .map(|c| c.to_ascii_lowercase())
        .collect();
    match key.as_str() {
        "subscriber" | "newslettersubscriber" => "subscriber",
        "lead" | "new" | "open" | "opennotcontacted" | "working" | "workingcontacted"
        | "contacted" | "nurturing" | "nurture" => "lead",
        "marketingqualifiedlead" | "marketingqualified" | "mql" => "marketingqualifiedlead",
        "salesqualifiedlead" | "salesqualified" | "sql" | "qualified" => "salesqualifiedlead",
        "opportunity" | "closedconverted" | "converted" => "opportunity",
        "customer" | "closedwon" | "won" => "customer",
        "evangelist" | "advocate" | "promoter" => "evangelist",
        _ => "other",
    }
}

fn salesforce(f: Fields<'_>, cx: &mut Context<'_>) -> Result<Signal, Rejection> {
    let attributes = f
        .child("attributes", "attributes")?
        .ok_or_else(|| missing("attributes"))?;
    let object = attributes.required_str("type")?.trim();
    let is_lead = if object.eq_ignore_ascii_case("lead") {
        true
    } else if object.eq_ignore_ascii_case("contact") {
        false
    } else {
        return Err(Rejection::new(
            rejection::UNKNOWN_SHAPE,
            "Salesforce `attributes.type` is neither Contact nor Lead",
        ));
    };
    let crm_id = salesforce_crm_id(&f.record_id("Id")?);
    let modified = first_time(f, &["LastModifiedDate", "SystemModstamp", "CreatedDate"])?;

    let mut ids = cx.identifiers();
    ids.add(IdentifierKind::CrmId, &crm_id);
    if let Some(email) = f.str("Email")? {
        ids.add(IdentifierKind::EmailSha256, email);
    }
    for key in ["Phone", "MobilePhone"] {
        if let Some(phone) = f.id_text(key)? {
            ids.add(IdentifierKind::PhoneSha256, &phone);
        }
    }
    if is_lead && f.flag("IsConverted")? != Some(false) {
        if let Some(contact) = f.id_text("ConvertedContactId")? {
            ids.add(IdentifierKind::CrmId, &salesforce_crm_id(&contact));
        }
    }
    let identifiers = ids.into_vec();

    let mut traits = Object::new();
    for (key, trait_name) in [
        ("FirstName", "first_name"),
        ("LastName", "last_name"),
        ("Company", "company"),
        ("AccountId", "account_id"),
        ("Title", "title"),
        ("LeadSource", "lead_source"),
        // A Contact's mailing address, a Lead's address: the fields matching compares.
        ("MailingStreet", "street"),
        ("MailingCity", "city"),
        ("MailingPostalCode", "postal_code"),
        ("Street", "street"),
        ("City", "city"),
        ("PostalCode", "postal_code"),
        ("Birthdate", "birth_date"),
    ] {
        copy_text(f, key, trait_name, &mut traits)?;
    }
    let status = if is_lead { f.str("Status")? } else { None };
    if let Some(s) = status {
        traits.insert("lead_status".into(), Value::String(s.to_string()));
    }
    if let Some(stage) = f.str("Lifecycle_Stage__c")?.or(status) {
        traits.insert(
            "lifecycle_stage".into(),
            Value::String(lifecycle_stage(stage).into()),
        );
    }

    let mut consent = Consent::default();
    if let Some(out) = f.flag("HasOptedOutOfEmail")? {
        consent.0.insert("email".into(), !out);
    }
    if let Some(out) = f.flag("DoNotCall")? {
        consent.0.insert("phone".into(), !out);
    }

    let object_name = if is_lead { "Lead" } else { "Contact" };
    let properties = record_properties("salesforce", object_name);
    Draft {
        event_id: record_event_id(&crm_id, modified),
        event_time: modified.unwrap_or(cx.received_at),
        identifiers,
        event: Some(event("record", Some(object_name.to_string()), properties)),
        traits,
        consent,
    }
    .into_signal(cx, |_, _, _| LinkRule::CrmRecord)
}

fn hubspot(f: Fields<'_>, cx: &mut Context<'_>) -> Result<Signal, Rejection> {
    let crm_id = hubspot_crm_id(&f.record_id("id")?);
    let props = f
        .child("properties", "properties")?
        .ok_or_else(|| missing("properties"))?;
    let modified = match first_time(f, &["updatedAt"])? {
        Some(t) => Some(t),
        None => match first_time(props, &["lastmodifieddate"])? {
            Some(t) => Some(t),
            None => first_time(f, &["createdAt"])?,
        },
    };

    let mut ids = cx.identifiers();
    ids.add(IdentifierKind::CrmId, &crm_id);
    if let Some(email) = props.str("email")? {
        ids.add(IdentifierKind::EmailSha256, email);
    }
    if let Some(more) = props.str("hs_additional_emails")? {
        for email in more.split(';').filter(|e| !e.trim().is_empty()) {
            ids.add(IdentifierKind::EmailSha256, email);
        }
    }
    for key in ["phone", "mobilephone"] {
        if let Some(phone) = props.id_text(key)? {
            ids.add(IdentifierKind::PhoneSha256, &phone);
        }
    }
    let identifiers = ids.into_vec();

    let mut traits = Object::new();
    for (key, trait_name) in [
        ("firstname", "first_name"),
        ("lastname", "last_name"),
        ("company", "company"),
        ("jobtitle", "title"),
        ("hs_lead_status", "lead_status"),
        ("hs_analytics_source", "lead_source"),
        ("address", "street"),
        ("city", "city"),
        ("zip", "postal_code"),
        ("date_of_birth", "birth_date"),
    ] {
        copy_text(props, key, trait_name, &mut traits)?;
    }
    if let Some(stage) = props.str("lifecyclestage")? {
        if !stage.trim().is_empty() {
            traits.insert(
                "lifecycle_stage".into(),
                Value::String(lifecycle_stage(stage).into()),
            );
        }
    }
    let mut consent = Consent::default();
    if let Some(out) = props.flag("hs_email_optout")? {
        consent.0.insert("email".into(), !out);
    }
    let mut properties = record_properties("hubspot", "Contact");
    if let Some(archived) = f.flag("archived")? {
        properties.insert("archived".into(), Value::Bool(archived));
    }
    Draft {
        event_id: record_event_id(&crm_id, modified),
        event_time: modified.unwrap_or(cx.received_at),
        identifiers,
        event: Some(event("record", Some("Contact".to_string()), properties)),
        traits,
        consent,
    }
    .into_signal(cx, |_, _, _| LinkRule::CrmRecord)
}

/// The first of `keys` that holds a time. A present but unreadable time rejects the record.
fn first_time(f: Fields<'_>, keys: &[&str]) -> Result<Option<Timestamp>, Rejection> {
    for key in keys {
        if let Some(t) = text_field(&f, key)? {
            return Ok(Some(t));
        }
    }
    Ok(None)
}

fn copy_text(f: Fields<'_>, key: &str, name: &str, traits: &mut Object) -> Result<(), Rejection> {
    if let Some(v) = f.str(key)? {
        if !v.trim().is_empty() {
            traits.insert(name.to_string(), Value::String(v.to_string()));
        }
    }
    Ok(())
}

fn record_properties(system: &str, object: &str) -> Object {
    let mut p = Object::new();
    p.insert("crm_system".into(), Value::String(system.into()));
    p.insert("object".into(), Value::String(object.into()));
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn salesforce_ids_widen_to_18_characters() {
        assert_eq!(salesforce_id18("0015000000VALDt"), "0015000000VALDtAAP");
        assert_eq!(salesforce_id18("0015000000VALDtAAP"), "0015000000VALDtAAP");
        // Ids differing only in case are different records, and stay different once widened.
        assert_ne!(
            salesforce_id18("0015000000valdt"),
            salesforce_id18("0015000000VALDt")
        );
        assert_eq!(salesforce_id18("not-an-id"), "not-an-id");
    }

    #[test]
    fn address_and_birth_date_become_matching_traits() {
        use crate::normalize::{normalize_payload, NormalizeOptions};
        let received = cdp_proto::time::from_millis(1_717_000_000_000);
        let parse = |payload: Value| {
            let bytes = serde_json::to_vec(&payload).unwrap();
            let mut signals = normalize_payload(
                cdp_proto::Source::Crm,
                "acme",
                &bytes,
                received,
                &NormalizeOptions::default(),
            )
            .unwrap();
            assert_eq!(signals.len(), 1);
            signals.remove(0).traits
        };
        let contact = parse(serde_json::json!({
            "attributes": {"type": "Contact"},
            "Id": "0035g00000XyZ12AAF",
            "FirstName": "Maria", "LastName": "Garcia",
            "MailingStreet": "1 Market St", "MailingCity": "San Francisco",
            "MailingPostalCode": "94105", "Birthdate": "1984-03-07",
            "LastModifiedDate": "2024-05-01T12:34:56.000+0000"
        }));
        let lead = parse(serde_json::json!({
            "attributes": {"type": "Lead"},
            "Id": "00Q5g00000AbCdEEAZ",
            "LastName": "Garcya", "Street": "1 Market Street", "City": "San Francisco",
            "PostalCode": "94105", "Status": "Open"
        }));
        let hubspot = parse(serde_json::json!({
            "id": "51234",
            "properties": {"firstname": "Maria", "address": "1 Market St", "city": "San Francisco",
                           "zip": "94105", "date_of_birth": "1984-03-07"}
        }));
        for (traits, street) in [
            (&contact, "1 Market St"),
            (&lead, "1 Market Street"),
            (&hubspot, "1 Market St"),
        ] {
            assert_eq!(traits["street"], Value::from(street));
            assert_eq!(traits["city"], Value::from("San Francisco"));
            assert_eq!(traits["postal_code"], Value::from("94105"));
        }
        assert_eq!(contact["birth_date"], Value::from("1984-03-07"));
        assert_eq!(hubspot["birth_date"], Value::from("1984-03-07"));
        assert!(!lead.contains_key("birth_date"), "a Lead has no birth date");
    }

    #[test]
    fn lifecycle_values_map_to_hubspot_vocabulary() {
        assert_eq!(
            lifecycle_stage("Marketing Qualified Lead"),
            "marketingqualifiedlead"
        );
        assert_eq!(lifecycle_stage("MQL"), "marketingqualifiedlead");
        assert_eq!(lifecycle_stage("Working - Contacted"), "lead");
        assert_eq!(lifecycle_stage("Closed - Converted"), "opportunity");
        assert_eq!(lifecycle_stage("customer"), "customer");
        assert_eq!(lifecycle_stage("Something Custom"), "other");
    }
}
