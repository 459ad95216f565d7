//! The profile API as an application uses it, on a running pipeline: lookups by raw identifier
//! and canonical id, retired ids redirecting, explain and history, tenant isolation by API key,
//! and erasure that needs its scope and leaves the person gone.

mod support;

use serde_json::Value;
use std::time::{Duration, Instant};
use support::{encode, generate, request, Running};

const READER: &str = "reader-token";
const ERASER: &str = "eraser-token";
const OTHER_TENANT: &str = "other-tenant-token";

fn sha256(text: &str) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(text.as_bytes()))
}

fn config() -> String {
    format!(
        r#"
[[http.api_keys]]
tenant = "default"
token_sha256 = "{}"

[[http.api_keys]]
tenant = "default"
token_sha256 = "{}"
scopes = ["read", "erase"]

[[http.api_keys]]
tenant = "other"
token_sha256 = "{}"
scopes = ["read", "erase"]
"#,
        sha256(READER),
        sha256(ERASER),
        sha256(OTHER_TENANT)
    )
}

/// Raw e-mail addresses exactly as the CRM sent them (with their noise: case, spaces).
fn crm_emails(input: &std::path::Path) -> Vec<String> {
    std::fs::read_to_string(input.join("crm.jsonl"))
        .unwrap()
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter_map(|v| v["Email"].as_str().map(str::to_string))
        .filter(|e| e.contains('@'))
        .collect()
}

#[test]
fn lookups_explain_tenancy_and_erasure() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("workload");
    generate(&input, 150);
    let config_file = dir.path().join("cdp.toml");
    std::fs::write(&config_file, config()).unwrap();
    let run = Running::start(
        &dir.path().join("data"),
        &["--config", config_file.to_str().unwrap()],
        &input,
    );
    run.wait_ready();
    let addr = run.addr;

    let emails = crm_emails(&input);
    assert!(emails.len() > 10);
    let by_email = |email: &str, token| {
        request(
            addr,
            "GET",
            &format!("/v1/profiles/email_sha256/{}", encode(email)),
            token,
        )
    };

    // Without a key: 401 with a stable code.
    let r = by_email(&emails[0], None);
    assert_eq!(r.status, 401, "{}", r.body);
    assert_eq!(r.json()["error"]["code"], "unauthorized");
    assert_eq!(by_email(&emails[0], Some("wrong")).status, 401);

    // A raw, noisy address finds the profile holding its normalised hash.
    let r = by_email(&emails[0], Some(READER));
    assert_eq!(r.status, 200, "{}", r.body);
    let profile = r.json();
    let hashed = sha256(&emails[0].trim().to_lowercase());
    assert!(
        profile["identifiers"]
            .as_array()
            .unwrap()
            .iter()
            .any(|i| i["kind"] == "email_sha256" && i["value"] == hashed.as_str()),
        "{profile}"
    );
    let canonical = profile["canonical_id"].as_str().unwrap().to_string();
    let r = request(
        addr,
        "GET",
        &format!("/v1/profiles/{canonical}"),
        Some(READER),
    );
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["canonical_id"], canonical.as_str());

    let r = request(
        addr,
        "GET",
        &format!("/v1/profiles/{canonical}/explain"),
        Some(READER),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let explained = r.json();
    assert_eq!(explained["canonical_id"], canonical.as_str());
    assert!(!explained["identifiers"].as_array().unwrap().is_empty());
    let r = request(
        addr,
        "GET",
        &format!("/v1/profiles/{canonical}/history"),
        Some(READER),
    );
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["merge_history"], profile["merge_history"]);

    // A retired canonical id redirects to the profile that absorbed it.
    let (survivor, retired) = emails
        .iter()
        .filter_map(|e| {
            let p = by_email(e, Some(READER));
            (p.status == 200).then(|| p.json())
        })
        .find_map(|p| {
            let alias = p["aliases"].as_array()?.first()?.as_str()?.to_string();
            Some((p["canonical_id"].as_str()?.to_string(), alias))
        })
        .expect("some CRM person was merged across sources");
    let r = request(
        addr,
        "GET",
        &format!("/v1/profiles/{retired}"),
        Some(READER),
    );
    assert_eq!(r.status, 308, "{}", r.body);
    assert_eq!(
        r.header("location"),
        Some(format!("/v1/profiles/{survivor}").as_str())
    );

    // Another tenant's key sees nothing of this tenant.
    let r = by_email(&emails[0], Some(OTHER_TENANT));
    assert_eq!(r.status, 404);
    assert_eq!(r.json()["error"]["code"], "profile_not_found");
    let r = request(
        addr,
        "GET",
        &format!("/v1/profiles/{canonical}"),
        Some(OTHER_TENANT),
    );
    assert_eq!(r.status, 404);

    // Bad input is a 400 naming the problem.
    let r = request(addr, "GET", "/v1/profiles/Shoe-Size/42", Some(READER));
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["error"]["code"], "invalid_identifier_kind");
    let r = request(addr, "GET", "/v1/profiles/email_sha256/null", Some(READER));
    assert_eq!(r.status, 400, "{}", r.body);
    assert_eq!(r.json()["error"]["code"], "invalid_identifier");

    // Erasure needs the scope; then the person is gone, by any of their identifiers.
    let path = format!("/v1/profiles/email_sha256/{}", encode(&emails[0]));
    let r = request(addr, "DELETE", &path, Some(READER));
    assert_eq!(r.status, 403);
    assert_eq!(r.json()["error"]["code"], "forbidden");
    let r = request(addr, "DELETE", &path, Some(ERASER));
    assert_eq!(r.status, 202, "{}", r.body);
    let command = r.json()["command_id"].as_str().unwrap().to_string();
    let deadline = Instant::now() + Duration::from_secs(60);
    let outcome = loop {
        let r = request(
            addr,
            "GET",
            &format!("/v1/commands/{command}"),
            Some(ERASER),
        );
        let body = r.json();
        if r.status == 200 {
            break body;
        }
        assert_eq!(body["status"], "pending");
        assert!(Instant::now() < deadline, "command never applied");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(outcome["status"], "applied", "{outcome}");
    // The other tenant cannot read this tenant's command outcome.
    let r = request(
        addr,
        "GET",
        &format!("/v1/commands/{command}"),
        Some(OTHER_TENANT),
    );
    assert_eq!(r.json()["status"], "pending");
    assert_eq!(by_email(&emails[0], Some(READER)).status, 404);
    let r = request(
        addr,
        "GET",
        &format!("/v1/profiles/{canonical}"),
        Some(READER),
    );
    assert_eq!(r.status, 404);
}
