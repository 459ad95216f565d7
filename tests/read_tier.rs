//! The profile API's read tier (`http.read_tier_mb`) as an application sees it, on a running
//! `cdp run --collect`: a profile asked for again is answered byte for byte as the store answered
//! it, and once the resolver has committed a merge or an erasure (seen through routes that
//! always read the store: history, command outcomes) the very next lookup shows it, by every
//! identifier and canonical id the tier had kept. Unmerge is covered where the stage applies it
//! (`cdp_resolver::lookup`'s tests): a running process takes graph commands only over the API.

mod support;

use base64::Engine;
use serde_json::{json, Value};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};
use support::{encode, request, Response, Running};

const READER: &str = "tier-reader";
const ERASER: &str = "tier-eraser";
const WRITE_KEY: &str = "tier-write-key";

fn sha256(text: &str) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(text.as_bytes()))
}

/// `cdp run --collect` with the API keys and a write key of the default tenant; returns the
/// process (its `addr` is the collector's) and the API's address.
fn start(dir: &std::path::Path) -> (Running, SocketAddr) {
    let config = dir.join("cdp.toml");
    let text = format!(
        "[http]\nread_tier_mb = 8\n\n\
         [[http.api_keys]]\ntenant = \"default\"\ntoken_sha256 = \"{}\"\n\n\
         [[http.api_keys]]\ntenant = \"default\"\ntoken_sha256 = \"{}\"\nscopes = [\"read\", \"erase\"]\n\n\
         [[collect.write_keys]]\ntenant = \"default\"\nkey_sha256 = \"{}\"\n",
        sha256(READER),
        sha256(ERASER),
        sha256(WRITE_KEY)
    );
    std::fs::write(&config, text).unwrap();
    let mut c = support::cdp(&dir.join("data"));
    c.env("CDP_COLLECT__LISTEN", "127.0.0.1:0")
        .arg("--config")
        .arg(&config)
        .args(["run", "--collect"]);
    // The collector is announced first, then the API's listener.
    let run = Running::spawn(c, "collect listening on ", Duration::from_secs(120));
    let api = run
        .wait_line("http listening on ")
        .trim_start_matches("http listening on ")
        .parse()
        .expect("an address");
    (run, api)
}

/// Posts Segment messages to the collector.
fn collect(addr: SocketAddr, batch: Value) {
    let body = json!({ "batch": batch }).to_string();
    let key = base64::engine::general_purpose::STANDARD.encode(format!("{WRITE_KEY}:"));
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    write!(
        stream,
        "POST /v1/batch HTTP/1.1\r\nHost: localhost\r\nAuthorization: Basic {key}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut raw = String::new();
    stream.read_to_string(&mut raw).expect("a response");
    let r = support::parse_response(&raw);
    assert_eq!(r.status, 200, "{}", r.body);
}

fn get(api: SocketAddr, path: &str) -> Response {
    request(api, "GET", path, Some(READER))
}

fn by(api: SocketAddr, kind: &str, value: &str) -> Response {
    get(api, &format!("/v1/profiles/{kind}/{}", encode(value)))
}

/// Polls `path` until `done` holds for its answer (the pipeline works in the background).
fn until(api: SocketAddr, path: &str, what: &str, done: impl Fn(&Response) -> bool) -> Response {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let r = get(api, path);
        if done(&r) {
            return r;
        }
        assert!(Instant::now() < deadline, "{what}: {} {}", r.status, r.body);
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn holds(profile: &Value, kind: &str, value: &str) -> bool {
    profile["identifiers"]
        .as_array()
        .unwrap()
        .iter()
        .any(|i| i["kind"] == kind && i["value"] == value)
}

#[test]
fn kept_answers_equal_the_store_s_and_never_outlive_a_merge_or_an_erasure() {
    let dir = tempfile::tempdir().unwrap();
    let (run, api) = start(dir.path());

    // Two people, one after the other (the older profile survives a merge).
    collect(
        run.addr,
        json!([{"type": "track", "messageId": "t-1", "anonymousId": "anon-old", "event": "Viewed"}]),
    );
    let old = until(api, "/v1/profiles/anonymous_id/anon-old", "old", |r| {
        r.status == 200
    });
    collect(
        run.addr,
        json!([{"type": "identify", "messageId": "i-1", "anonymousId": "anon-new", "userId": "ada"}]),
    );
    let new = until(api, "/v1/profiles/user_id/ada", "new", |r| r.status == 200);
    let old_id = old.json()["canonical_id"].as_str().unwrap().to_string();
    let new_id = new.json()["canonical_id"].as_str().unwrap().to_string();
    assert_ne!(old_id, new_id);

    // Asked again and again: the same bytes the first (store) answer had, by every route.
    for _ in 0..3 {
        let again = by(api, "anonymous_id", "anon-old");
        assert_eq!((again.status, &again.body), (200, &old.body));
        assert_eq!(by(api, "user_id", "ada").body, new.body);
        let canonical = get(api, &format!("/v1/profiles/{new_id}"));
        assert_eq!((canonical.status, &canonical.body), (200, &new.body));
        assert_eq!(by(api, "anonymous_id", "anon-new").body, new.body);
    }
    assert_eq!(
        new.header("content-type"),
        by(api, "user_id", "ada").header("content-type")
    );

    // Merge: the new person turns out to use the old person's device.
    collect(
        run.addr,
        json!([{"type": "identify", "messageId": "i-2", "anonymousId": "anon-old", "userId": "ada"}]),
    );
    // History reads the store: once it shows the merge, the resolver has committed it.
    until(
        api,
        &format!("/v1/profiles/{old_id}/history"),
        "the merge",
        |r| r.status == 200 && r.json()["aliases"].to_string().contains(&new_id),
    );
    // From then on, nothing the tier kept from before is served.
    let merged = by(api, "user_id", "ada");
    assert_eq!(merged.status, 200, "{}", merged.body);
    let profile = merged.json();
    assert_eq!(profile["canonical_id"], old_id.as_str());
    assert!(holds(&profile, "anonymous_id", "anon-old"), "{profile}");
    assert!(holds(&profile, "anonymous_id", "anon-new"), "{profile}");
    assert_eq!(by(api, "anonymous_id", "anon-new").body, merged.body);
    assert_eq!(by(api, "anonymous_id", "anon-old").body, merged.body);
    assert_eq!(
        get(api, &format!("/v1/profiles/{old_id}")).body,
        merged.body
    );
    let retired = get(api, &format!("/v1/profiles/{new_id}"));
    assert_eq!(retired.status, 308, "{}", retired.body);

    // Erasure: once the command is applied, the person is gone by every identifier and id.
    let r = request(api, "DELETE", "/v1/profiles/user_id/ada", Some(ERASER));
    assert_eq!(r.status, 202, "{}", r.body);
    let command = r.json()["command_id"].as_str().unwrap().to_string();
    let outcome = until(
        api,
        &format!("/v1/commands/{command}"),
        "the erasure",
        |r| r.status == 200,
    );
    assert_eq!(outcome.json()["status"], "applied", "{}", outcome.body);
    for path in [
        "/v1/profiles/user_id/ada".to_string(),
        "/v1/profiles/anonymous_id/anon-old".to_string(),
        "/v1/profiles/anonymous_id/anon-new".to_string(),
        format!("/v1/profiles/{old_id}"),
    ] {
        let r = get(api, &path);
        assert_eq!(r.status, 404, "{path}: {}", r.body);
        assert_eq!(r.json()["error"]["code"], "profile_not_found");
    }
}
