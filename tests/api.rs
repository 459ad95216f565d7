//! The HTTP API as an application uses it, on a running pipeline: profile lookups by raw
//! identifier and canonical id, retired ids redirecting, explain and history, tenant isolation by
//! API key, erasure that needs its scope and leaves the person gone; cohorts and their members
//! paged per tenant; and the OpenAPI document agreeing with what the listener answers.

mod support;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use support::{crm_emails, encode, generate, generate_seeded, request, Running};

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

/// Every member of `cohort` the key `token` sees, a page of `limit` at a time, with the number
/// of pages. Checks each page on the way: at most `limit`, ids strictly after the previous ones.
fn all_members(addr: SocketAddr, token: &str, cohort: &str, limit: usize) -> (Vec<String>, usize) {
    let mut ids: Vec<String> = Vec::new();
    let mut after: Option<String> = None;
    for pages in 1.. {
        let cursor = after
            .as_deref()
            .map(|a| format!("&after={a}"))
            .unwrap_or_default();
        let path = format!("/v1/cohorts/{cohort}/members?limit={limit}{cursor}");
        let r = request(addr, "GET", &path, Some(token));
        assert_eq!(r.status, 200, "{path}: {}", r.body);
        let page = r.json();
        assert_eq!(page["cohort"], cohort);
        let members = page["members"].as_array().unwrap();
        assert!(members.len() <= limit, "{page}");
        for m in members {
            let id = m["canonical_id"].as_str().unwrap().to_string();
            assert!(
                m["entered_at"].is_string() && m["version"].as_u64() >= Some(1),
                "{m}"
            );
            assert!(
                ids.last().is_none_or(|last| *last < id),
                "out of order: {id}"
            );
            ids.push(id);
        }
        match page["next_after"].as_str() {
            Some(next) => {
                assert_eq!(members.len(), limit, "a full page before the next");
                assert_eq!(Some(next), ids.last().map(String::as_str));
                after = Some(next.to_string());
            }
            None => return (ids, pages),
        }
    }
    unreachable!("the loop returns on the last page")
}

#[test]
fn cohorts_members_paging_tenancy_and_the_openapi_document() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let config_file = dir.path().join("cdp.toml");
    std::fs::write(&config_file, config()).unwrap();
    let config_arg = config_file.to_str().unwrap();

    // Tenant "other" first, with people of its own, run until drained.
    let other_input = dir.path().join("other-workload");
    generate_seeded(&other_input, 80, 7);
    let status = support::cdp(&data)
        .env("CDP_INGEST__DEFAULT_TENANT", "other")
        .args(["--config", config_arg, "run", "--until-drained", "--input"])
        .arg(&other_input)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(status.success());
    // Then the default tenant's, served.
    let input = dir.path().join("workload");
    generate(&input, 150);
    let run = Running::start(&data, &["--config", config_arg], &input);
    run.wait_ready();
    let addr = run.addr;

    // The configured cohorts, in config order.
    assert_eq!(request(addr, "GET", "/v1/cohorts", None).status, 401);
    let r = request(addr, "GET", "/v1/cohorts", Some(READER));
    assert_eq!(r.status, 200, "{}", r.body);
    let listed = r.json();
    let cohorts: Vec<&str> = listed["cohorts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["key"].as_str().unwrap())
        .collect();
    assert_eq!(
        cohorts,
        ["high_intent", "recent_buyers", "cross_channel", "customers"]
    );
    let first = &listed["cohorts"][0];
    assert!(first["expression"]
        .as_str()
        .unwrap()
        .contains("Pricing Viewed"));
    assert_eq!(first["priority"], 30);
    assert_eq!(first["destinations"][0], "audience_topic");

    // Paging returns exactly what one big page does: no duplicates, no gaps.
    let mut mine = BTreeSet::new();
    let mut paged = false;
    for cohort in &cohorts {
        let (ids, pages) = all_members(addr, READER, cohort, 7);
        let (whole, one) = all_members(addr, READER, cohort, 1000);
        assert_eq!(one, 1);
        assert_eq!(ids, whole, "{cohort}: paged and whole listings differ");
        paged |= pages > 2;
        mine.extend(ids);
    }
    assert!(paged, "some cohort spans several pages of 7");

    // Each tenant sees its own members only, and they are its people.
    let mut theirs = BTreeSet::new();
    for cohort in &cohorts {
        theirs.extend(all_members(addr, OTHER_TENANT, cohort, 1000).0);
    }
    assert!(!theirs.is_empty(), "tenant other has cohort members");
    assert!(
        mine.is_disjoint(&theirs),
        "a member listed for both tenants"
    );
    let profile =
        |id: &str, token| request(addr, "GET", &format!("/v1/profiles/{id}"), Some(token));
    let sample = mine.iter().next().unwrap();
    assert_eq!(profile(sample, READER).status, 200);
    assert_eq!(profile(sample, OTHER_TENANT).status, 404);
    let sample = theirs.iter().next().unwrap();
    assert_eq!(profile(sample, OTHER_TENANT).status, 200);
    assert_eq!(profile(sample, READER).status, 404);

    // Bad requests name the problem.
    let error = |path: &str| {
        let r = request(addr, "GET", path, Some(READER));
        (
            r.status,
            r.json()["error"]["code"].as_str().unwrap().to_string(),
        )
    };
    assert_eq!(
        error("/v1/cohorts/no_such_cohort/members"),
        (404, "cohort_not_found".into())
    );
    for limit in ["0", "1001", "-1", "many"] {
        let path = format!("/v1/cohorts/customers/members?limit={limit}");
        assert_eq!(error(&path), (400, "invalid_limit".into()), "{limit}");
    }
    assert_eq!(
        error("/v1/cohorts/customers/members?after=someone"),
        (400, "invalid_cursor".into())
    );
    assert_eq!(error("/v1/nothing/here"), (404, "unknown_route".into()));

    // The document describes what the listener answers: each documented operation answers with
    // a documented status (never 405), every other method is 405, error codes are listed.
    let r = request(addr, "GET", "/openapi.json", None);
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("application/json"));
    let doc = r.json();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3.1."));
    let codes: BTreeSet<&str> = doc["components"]["schemas"]["Error"]["properties"]["error"]
        ["properties"]["code"]["enum"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap())
        .collect();
    let example = |param: &str| match param {
        "canonical_id" => "cdp_0000000000".to_string(),
        "kind" => "email_sha256".into(),
        "value" => encode("nobody@example.com"),
        "key" => "customers".into(),
        "command_id" => "cmd-0".into(),
        other => panic!("no example for path parameter {other}"),
    };
    for (template, item) in doc["paths"].as_object().unwrap() {
        let path: Vec<String> = template
            .split('/')
            .map(
                |s| match s.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
                    Some(param) => example(param),
                    None => s.to_string(),
                },
            )
            .collect();
        let path = path.join("/");
        for method in ["get", "post", "put", "patch", "delete"] {
            let r = request(addr, &method.to_uppercase(), &path, Some(READER));
            let Some(op) = item.get(method) else {
                assert_eq!(r.status, 405, "{method} {path}: {}", r.body);
                assert_eq!(r.json()["error"]["code"], "method_not_allowed");
                continue;
            };
            let status = r.status.to_string();
            assert!(
                op["responses"].get(&status).is_some(),
                "{method} {template} answered undocumented {status}: {}",
                r.body
            );
            if r.status >= 400 {
                let code = r.json()["error"]["code"].as_str().unwrap().to_string();
                assert!(codes.contains(code.as_str()), "{code} is not documented");
            }
        }
    }

    // The routes serve the definitions activation runs: a reload changes them.
    let reloaded = format!(
        "{}\n[[activation.cohorts]]\nkey = \"customers\"\n\
         expression = 'profile.lifecycle_stage == \"customer\"'\n\
         destinations = [\"audience_topic\"]\n",
        config()
    );
    std::fs::write(&config_file, reloaded).unwrap();
    run.signal("HUP");
    run.wait_line("reloaded activation");
    let r = request(addr, "GET", "/v1/cohorts", Some(READER));
    assert_eq!(
        r.json()["cohorts"].as_array().unwrap().len(),
        1,
        "{}",
        r.body
    );
    assert_eq!(
        error("/v1/cohorts/high_intent/members"),
        (404, "cohort_not_found".into())
    );
}
