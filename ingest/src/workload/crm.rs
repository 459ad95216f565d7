//! CRM records as the Salesforce and HubSpot REST APIs return them: each person's record in a few
//! versions as sales works it (lifecycle stage moving forward, customers ending as `customer`),
//! and for some people the classic duplicate, a Lead next to a Contact (sometimes converted).
//! Records carry date of birth and postal address; some people also have a list-import Contact
//! that someone else typed (see `noise`), which shares no identifier with their other records.

use super::noise;
use super::person::{CrmPlan, Person};
use super::values::{self, pick, Rand, COMPANIES};
use super::{rfc3339, Lines};
use crate::crm::{hubspot_crm_id, record_event_id, salesforce_crm_id, salesforce_id18};
use cdp_proto::{time, Source};
use rand::Rng;
use serde_json::{json, Value};

const HOUR_MS: i64 = 3_600_000;
const DAY_MS: i64 = 24 * HOUR_MS;

/// Salesforce's timestamp format: ISO 8601 with a `+0000` offset.
fn salesforce_time(ms: i64) -> String {
    time::from_millis(ms)
        .format("%Y-%m-%dT%H:%M:%S%.3f+0000")
        .to_string()
}

/// Writes the person's CRM records, if the CRM knows them.
pub(super) fn emit(rng: &mut Rand, p: &Person, now_ms: i64, out: &mut Lines) {
    let (Some(plan), Some(converted)) = (&p.crm, p.converted_ms) else {
        return;
    };
    let created = (converted + rng.gen_range(600_000..6 * HOUR_MS)).min(now_ms - 60_000);
    let stages = stages(rng, p);
    match plan {
        CrmPlan::Salesforce {
            contact,
            lead,
            converted: lead_converted,
        } => {
            let mut t = created;
            if let Some(lead_id) = lead {
                let versions = rng.gen_range(1..=2);
                let times = versions_at(rng, t, versions, now_ms);
                let last = times.len() - 1;
                for (v, &at) in times.iter().enumerate() {
                    let converting = *lead_converted && v == last;
                    let line = salesforce_lead(
                        rng,
                        p,
                        lead_id,
                        v,
                        converting.then_some(contact.as_deref()).flatten(),
                        created,
                        at,
                    );
                    push(out, p, salesforce_crm_id(lead_id), at, &line);
                }
                t = times[last] + rng.gen_range(HOUR_MS..DAY_MS);
            }
            if let Some(contact_id) = contact {
                let start = t.min(now_ms - 30_000);
                for (v, at) in versions_at(rng, start, stages.len(), now_ms)
                    .into_iter()
                    .enumerate()
                {
                    let line = salesforce_contact(rng, p, contact_id, stages[v], start, at);
                    push(out, p, salesforce_crm_id(contact_id), at, &line);
                }
            }
            if let Some(import_id) = &p.list_import {
                let at = rng.gen_range(created..now_ms.max(created + 1));
                let line = list_import_contact(rng, p, import_id, at);
                push(out, p, salesforce_crm_id(import_id), at, &line);
            }
        }
        CrmPlan::HubSpot { id } => {
            for (v, at) in versions_at(rng, created, stages.len(), now_ms)
                .into_iter()
                .enumerate()
            {
                let line = hubspot_contact(rng, p, *id, stages[v], created, at);
                push(out, p, hubspot_crm_id(&id.to_string()), at, &line);
            }
        }
    }
}

fn push(out: &mut Lines, p: &Person, crm_id: String, at: i64, line: &Value) {
    let record_id = record_event_id(&crm_id, Some(time::from_millis(at)));
    out.push(
        Source::Crm,
        at,
        line.to_string(),
        vec![(record_id, p.index)],
    );
}

/// The lifecycle stages of the person's record versions, in order (HubSpot vocabulary).
fn stages(rng: &mut Rand, p: &Person) -> Vec<&'static str> {
    let path: &[&'static str] = if p.user_id.is_some() {
        &[
            "lead",
            "marketingqualifiedlead",
            "salesqualifiedlead",
            "opportunity",
        ]
    } else {
        &["subscriber", "lead", "marketingqualifiedlead"]
    };
    let n = rng.gen_range(1..=3).min(path.len());
    let mut out = path[..n].to_vec();
    if p.buys {
        out.push("customer");
    }
    out
}

/// `n` version times from `start`, 1-5 days apart, none after `now_ms` (at least one).
fn versions_at(rng: &mut Rand, start: i64, n: usize, now_ms: i64) -> Vec<i64> {
    let mut times = vec![start];
    let mut t = start;
    for _ in 1..n {
        t += rng.gen_range(DAY_MS..5 * DAY_MS);
        if t >= now_ms {
            break;
        }
        times.push(t);
    }
    times
}

fn salesforce_label(stage: &str) -> &'static str {
    match stage {
        "subscriber" => "Subscriber",
        "lead" => "Lead",
        "marketingqualifiedlead" => "Marketing Qualified Lead",
        "salesqualifiedlead" => "SQL",
        "opportunity" => "Opportunity",
        _ => "Customer",
    }
}

fn account_id(p: &Person) -> String {
    let n = COMPANIES.iter().position(|c| *c == p.company).unwrap_or(0);
    salesforce_id18(&format!("0015g00000Ac{n:03}")).into_owned()
}

/// The address a CRM record holds: the main one, or (when they have one) often the work one.
fn crm_email(rng: &mut Rand, p: &Person) -> String {
    let email = match p.emails.get(1) {
        Some(work) if rng.gen_bool(0.5) => work,
        _ => &p.emails[0],
    };
    values::email_variant(rng, email)
}

fn phone(rng: &mut Rand, p: &Person) -> Value {
    match &p.phone {
        Some(digits) => json!(values::phone_format(rng, digits)),
        None => Value::Null,
    }
}

fn salesforce_contact(
    rng: &mut Rand,
    p: &Person,
    id: &str,
    stage: &str,
    created: i64,
    at: i64,
) -> Value {
    json!({
        "attributes": {"type": "Contact", "url": format!("/services/data/v59.0/sobjects/Contact/{id}")},
        "Id": id,
        "FirstName": p.first,
        "LastName": p.last,
        "Email": crm_email(rng, p),
        "Phone": phone(rng, p),
        "MobilePhone": Value::Null,
        "AccountId": account_id(p),
        "Birthdate": p.birth_date,
        "MailingStreet": p.address.street,
        "MailingCity": p.address.city,
        "MailingPostalCode": p.address.postal_code,
        "Title": pick(rng, &["Marketing Manager", "Data Engineer", "VP Growth", "Analyst", "Founder"]),
        "LeadSource": pick(rng, &["Web", "Advertisement", "Partner Referral", "Webinar"]),
        "Lifecycle_Stage__c": salesforce_label(stage),
        "HasOptedOutOfEmail": rng.gen_bool(0.08),
        "DoNotCall": false,
        "CreatedDate": salesforce_time(created),
        "LastModifiedDate": salesforce_time(at),
        "SystemModstamp": salesforce_time(at),
    })
}

/// A Contact created by a list import (an event's attendee list, a purchased list): the
/// person's details as someone else typed them, under a record id of its own.
fn list_import_contact(rng: &mut Rand, p: &Person, id: &str, at: i64) -> Value {
    let n = noise::typed_by_someone_else(rng, p);
    json!({
        "attributes": {"type": "Contact", "url": format!("/services/data/v59.0/sobjects/Contact/{id}")},
        "Id": id,
        "FirstName": n.first,
        "LastName": n.last,
        "Email": n.email,
        "Birthdate": n.birth_date,
        "MailingStreet": n.address.street,
        "MailingCity": n.address.city,
        "MailingPostalCode": n.address.postal_code,
        "LeadSource": "List Import",
        "CreatedDate": salesforce_time(at),
        "LastModifiedDate": salesforce_time(at),
        "SystemModstamp": salesforce_time(at),
    })
}

fn salesforce_lead(
    rng: &mut Rand,
    p: &Person,
    id: &str,
    version: usize,
    converted_into: Option<&str>,
    created: i64,
    at: i64,
) -> Value {
    let status = match (converted_into, version) {
        (Some(_), _) => "Closed - Converted",
        (None, 0) => "Open - Not Contacted",
        (None, _) => "Working - Contacted",
    };
    json!({
        "attributes": {"type": "Lead", "url": format!("/services/data/v59.0/sobjects/Lead/{id}")},
        "Id": id,
        "FirstName": p.first,
        "LastName": p.last,
        "Company": p.company,
        "Email": values::email_variant(rng, &p.emails[0]),
        "Phone": phone(rng, p),
        "Street": p.address.street,
        "City": p.address.city,
        "PostalCode": p.address.postal_code,
        "LeadSource": pick(rng, &["Web", "Advertisement", "Trade Show"]),
        "Status": status,
        "IsConverted": converted_into.is_some(),
        "ConvertedContactId": converted_into,
        "CreatedDate": salesforce_time(created),
        "LastModifiedDate": salesforce_time(at),
    })
}

fn hubspot_contact(
    rng: &mut Rand,
    p: &Person,
    id: u64,
    stage: &str,
    created: i64,
    at: i64,
) -> Value {
    let mut properties = json!({
        "email": values::email_variant(rng, &p.emails[0]),
        "firstname": p.first,
        "lastname": p.last,
        "company": p.company,
        "phone": phone(rng, p),
        "date_of_birth": p.birth_date,
        "address": p.address.street,
        "city": p.address.city,
        "zip": p.address.postal_code,
        "lifecyclestage": stage,
        "hs_email_optout": if rng.gen_bool(0.05) { "true" } else { "false" },
        "createdate": rfc3339(created),
        "lastmodifieddate": rfc3339(at),
        "hs_object_id": id.to_string(),
    });
    if let Some(work) = p.emails.get(1) {
        properties["hs_additional_emails"] = json!(values::email_variant(rng, work).trim());
    }
    json!({
        "id": id.to_string(),
        "properties": properties,
        "createdAt": rfc3339(created),
        "updatedAt": rfc3339(at),
        "archived": false,
    })
}
