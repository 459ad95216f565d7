//! The identity console at `/console`: one self-contained page (inline CSS and vanilla JS, no
//! build step) that searches a profile by any identifier or canonical id and shows it with its
//! identity graph, merge history and cohorts, plus live pipeline rates from `/metrics`. It only
//! calls this process's JSON API, with the API key the user gives it, so it adds no access path.

use axum::http::header;
use axum::response::{IntoResponse, Response};

/// The page, compiled into the binary so a deployment has nothing else to ship.
pub const PAGE: &str = include_str!("console.html");

/// The page may run its own inline script and talk only to its own origin: data it renders
/// cannot pull anything in or send anything out, and no other site may frame it.
const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'unsafe-inline'; \
     style-src 'unsafe-inline'; connect-src 'self'; img-src 'self'; base-uri 'none'; \
     form-action 'none'; frame-ancestors 'none'";

/// `GET /console`.
pub async fn page() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY),
            (header::REFERRER_POLICY, "no-referrer"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        PAGE,
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Profile data is attacker-influenced (traits, identifiers): the page must build its DOM
    /// with textContent and attributes, never by parsing strings as HTML or code.
    #[test]
    fn the_page_never_turns_data_into_markup_or_code() {
        for sink in [
            "innerHTML",
            "outerHTML",
            "insertAdjacentHTML",
            "document.write",
            "eval(",
            "new Function",
            "setTimeout(\"",
        ] {
            assert!(!PAGE.contains(sink), "console.html uses {sink}");
        }
    }

    /// Every API path the page calls is one the listener routes.
    #[test]
    fn the_page_calls_only_routed_paths() {
        let routed: Vec<&str> = crate::http::ROUTES.iter().map(|r| r.path).collect();
        for path in [
            "/v1/profiles/{canonical_id}",
            "/v1/profiles/{kind}/{value}",
            "/v1/profiles/{canonical_id}/explain",
            "/v1/profiles/{canonical_id}/history",
            "/v1/profiles/{canonical_id}/cohorts",
            "/v1/cohorts",
            "/metrics",
        ] {
            assert!(routed.contains(&path), "{path} is not routed");
        }
        for call in [
            "\"/explain\"",
            "\"/history\"",
            "\"/cohorts\"",
            "\"/v1/cohorts\"",
            "\"/metrics\"",
        ] {
            assert!(PAGE.contains(call), "console.html no longer calls {call}");
        }
    }
}
