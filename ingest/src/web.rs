//! The web source: Segment Spec messages from analytics.js (or any server library) on
//! `cdp.raw.web`. Besides what [`crate::segment`] reads, the landing page's URL
//! (`context.page.url`, or a page call's `properties.url`) gives ad click ids (`gclid`, `gbraid`,
//! `wbraid`, `fbclid`, `ttclid`, `msclkid`, kept byte for byte) and UTM parameters, which become
//! event properties unless the event already has them. `context.campaign` (Segment's own parse of
//! the UTM parameters) fills the UTM properties the URL did not give.

use crate::fields::{insert_absent, Fields, Object};
use crate::identifiers::IdentifierSet;
use crate::query::{self, CLICK_ID_PARAMS, UTM_PARAMS};
use crate::rejection;
use cdp_proto::dlq::Rejection;
use cdp_proto::IdentifierKind;
use serde_json::Value;

/// The rejection of a web payload that is not Segment (read by [`crate::segment`]).
pub(crate) fn not_segment() -> Rejection {
    Rejection::new(
        rejection::UNKNOWN_SHAPE,
        "web payload is neither a Segment message (`type`, `messageId`) nor a `batch` envelope",
    )
}

/// `context.page.url`, the landing page's address when the browser library sent it.
pub(crate) fn page_url<'a>(context: Option<Fields<'a>>) -> Result<Option<&'a str>, Rejection> {
    match context {
        Some(c) => match c.child("page", "context.page")? {
            Some(page) => page.str("url"),
            None => Ok(None),
        },
        None => Ok(None),
    }
}

/// Click ids and campaign parameters of the page the event happened on: `url` is
/// [`page_url`], else the message's `properties.url`.
pub(crate) fn landing_page(
    url: Option<&str>,
    context: Option<Fields<'_>>,
    ids: &mut IdentifierSet<'_>,
    properties: &mut Object,
) -> Result<(), Rejection> {
    if let Some(url) = url {
        for (key, value) in query::pairs(url) {
            if value.is_empty() {
                continue;
            }
            if CLICK_ID_PARAMS.iter().any(|p| key.eq_ignore_ascii_case(p)) {
                ids.add(IdentifierKind::ClickId, &value);
            } else if let Some(utm) = UTM_PARAMS.iter().find(|p| key.eq_ignore_ascii_case(p)) {
                insert_absent(properties, utm, Value::String(value.into_owned()));
            }
        }
    }
    if let Some(campaign) = context
        .map(|c| c.child("campaign", "context.campaign"))
        .transpose()?
        .flatten()
    {
        let fields = [
            ("source", "utm_source"),
            ("medium", "utm_medium"),
            ("name", "utm_campaign"),
            ("term", "utm_term"),
            ("content", "utm_content"),
        ];
        for (field, utm) in fields {
            if let Some(v) = campaign.str(field)? {
                insert_absent(properties, utm, Value::String(v.to_string()));
            }
        }
    }
    Ok(())
}
