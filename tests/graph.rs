//! End-to-end tests of `cdp graph` on the embedded bus: explain prints a profile's component,
//! forget erases a person so that replaying the whole input does not bring them back, unmerge
//! takes a link out, and a command refuses clearly while another process holds the data.

mod support;

use serde_json::Value;
use std::path::Path;
use std::process::Output;
use std::time::Duration;
use support::{crm_emails, ok as cdp, output as cdp_raw, read_topic};

fn json(out: &Output) -> Value {
    serde_json::from_slice(&out.stdout).expect("prints JSON")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn run_input(data: &Path, input: &Path) {
    support::run_until_drained(data, input);
}

#[test]
fn explain_forget_replay_and_unmerge_through_the_cli() {
    let dir = tempfile::tempdir().unwrap();
    let (data, input) = (dir.path().join("data"), dir.path().join("input"));
    support::generate_at(&input, 60, 11, "2026-11-01T00:00:00Z");
    run_input(&data, &input);
    let emails = crm_emails(&input);
    assert!(
        emails.len() >= 2,
        "the workload has CRM records with emails"
    );

    // Raw emails are normalised as ingest does, whatever their case.
    let target = format!("email_sha256:{}", emails[0].to_uppercase());
    let explained = json(&cdp(&data, &["graph", "explain", &target]));
    let canonical = explained["canonical_id"].as_str().unwrap().to_string();
    assert!(!explained["identifiers"].as_array().unwrap().is_empty());
    let crm = explained["identifiers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["kind"] == "crm_id")
        .map(|i| format!("crm_id:{}", i["value"].as_str().unwrap()))
        .expect("a CRM person holds a crm_id");
    for key in ["links", "refused", "candidates", "merges"] {
        assert!(explained[key].is_array(), "explain lists {key}");
    }

    let forgotten = json(&cdp(&data, &["graph", "forget", &target]));
    assert_eq!(forgotten["status"], "applied");
    assert_eq!(forgotten["changes"][0]["kind"], "deleted");
    assert_eq!(forgotten["changes"][0]["canonical_id"], canonical.as_str());

    // The whole input once more: the person must stay gone.
    run_input(&data, &input);
    for who in [target.as_str(), crm.as_str(), canonical.as_str()] {
        let out = cdp_raw(&data, &["graph", "explain", who]);
        assert!(!out.status.success(), "{who} came back");
        assert!(
            stderr(&out).contains("no profile holds"),
            "{}",
            stderr(&out)
        );
        assert!(!cdp_raw(&data, &["profile", "get", who]).status.success());
    }
    let other = format!("email_sha256:{}", emails[1]);
    let before = json(&cdp(&data, &["graph", "explain", &other]));

    // Unmerge one of the other person's links, by the id explain shows.
    let link = before["links"][0].clone();
    let id = link["id"]
        .as_u64()
        .expect("a CRM record links its id and email")
        .to_string();
    let owner = before["canonical_id"].as_str().unwrap();
    let done = json(&cdp(&data, &["graph", "unmerge", owner, "--link", &id]));
    assert_eq!(done["status"], "applied", "{done}");
    assert_eq!(done["links_removed"], 1);
    assert_eq!(done["profiles"][0], owner, "the older part keeps the id");
    let after = json(&cdp(&data, &["graph", "explain", owner]));
    assert!(after["removed"]
        .as_array()
        .unwrap()
        .iter()
        .any(|l| l["id"] == link["id"] && l["decision"] == "removed"));
    // Rebuilding under the same policy finds the graph as it is (the unmerged link stays out).
    let same = json(&cdp(&data, &["graph", "rebuild"]));
    assert_eq!(
        (&same["splits"], &same["merges"], &same["links_changed"]),
        (&Value::from(0), &Value::from(0), &Value::from(0)),
        "{same}"
    );
    // A tighter policy: preview, apply (changes published), and nothing is left to do.
    let tight = dir.path().join("tight.toml");
    std::fs::write(
        &tight,
        "[resolver.policy.max_per_kind]\nemail_sha256 = 1\nanonymous_id = 1\ncrm_id = 1\n",
    )
    .unwrap();
    let tight = tight.to_str().unwrap();
    let preview = json(&cdp(&data, &["--config", tight, "graph", "rebuild"]));
    let splits = preview["splits"].as_u64().unwrap();
    assert!(splits > 0, "{preview}");
    assert_eq!(preview["applied"], false);
    let applied = json(&cdp(
        &data,
        &["--config", tight, "graph", "rebuild", "--apply"],
    ));
    assert_eq!(
        (applied["splits"].as_u64(), &applied["applied"]),
        (Some(splits), &Value::from(true))
    );
    let again = json(&cdp(&data, &["--config", tight, "graph", "rebuild"]));
    assert_eq!(again["splits"], 0);
    let changes = cdp(
        &data,
        &[
            "topic",
            "read",
            "cdp.identity.changes",
            "--from-beginning",
            "--idle-ms",
            "300",
        ],
    );
    let rebuilt = String::from_utf8_lossy(&changes.stdout)
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|r| r["value"]["kind"] == "split" && r["value"]["rule"] == "rebuild")
        .count() as u64;
    assert_eq!(rebuilt, splits);

    let wrong = cdp_raw(&data, &["graph", "unmerge", "cdp_nobody", "--link", "1"]);
    assert!(!wrong.status.success());
    assert!(
        stderr(&wrong).contains("unmerge found nothing"),
        "{}",
        stderr(&wrong)
    );
}

/// Erasure reaches activation: a cohort member that is forgotten exits its cohorts.
#[test]
fn forgetting_a_cohort_member_makes_them_exit() {
    let dir = tempfile::tempdir().unwrap();
    let (data, input) = (dir.path().join("data"), dir.path().join("input"));
    support::generate_at(&input, 60, 5, "2026-11-01T00:00:00Z");
    let run = support::run_until_drained(&data, &input);
    // Current members: the last record per key of the compacted membership topic, if not a
    // tombstone (records of one key share a partition, so their order is kept).
    let mut current: std::collections::BTreeMap<String, Value> = Default::default();
    let records = read_topic(&data, "cdp.cohorts.membership");
    let read = records.len();
    for r in records {
        let key = r["key"].as_str().unwrap().to_string();
        if r["value"].is_null() {
            current.remove(&key);
        } else {
            current.insert(key, r["value"].clone());
        }
    }
    // If no member's profile can be read, say why: how many members there were and what the
    // reads answered.
    let mut refusals = Vec::new();
    let members = current.len();
    let member = current
        .into_values()
        .find(|v| {
            let id = format!("canonical_id:{}", v["canonical_id"].as_str().unwrap());
            let out = cdp_raw(&data, &["profile", "get", &id]);
            if !out.status.success() {
                refusals.push(format!("{id}: {}", stderr(&out).trim()));
            }
            out.status.success()
        })
        .unwrap_or_else(|| {
            panic!(
                "no cohort member with a profile among {members} ({read} membership records \
                 read): {refusals:#?}\nthe run printed:\n{}{}",
                String::from_utf8_lossy(&run.stdout),
                String::from_utf8_lossy(&run.stderr)
            )
        });
    let who = member["canonical_id"].as_str().unwrap();
    let done = json(&cdp(&data, &["graph", "forget", who]));
    assert_eq!(done["status"], "applied");
    let exits = |records: &[Value]| {
        records
            .iter()
            .filter(|r| r["value"]["canonical_id"] == who && r["value"]["type"] == "exited")
            .count()
    };
    let before = exits(&read_topic(&data, "cdp.cohorts"));
    // Activation picks up the `deleted` change when the pipeline next runs.
    cdp(&data, &["run", "--until-drained"]);
    let after = read_topic(&data, "cdp.cohorts");
    assert!(exits(&after) > before, "no exit for {who}");
}

#[test]
fn commands_say_so_when_another_process_holds_the_data() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    // The listener is announced only after the stages have opened their stores, so from then
    // on the data directory is held.
    let mut run = support::cdp(&data);
    run.arg("run");
    let _pipeline = support::Running::spawn(run, "http listening on ", Duration::from_secs(120));
    let out = cdp_raw(&data, &["graph", "forget", "user_id:nobody"]);
    assert!(!out.status.success(), "forget ran beside the pipeline");
    let message = stderr(&out);
    assert!(
        message.contains("in use by another cdp process"),
        "{message}"
    );
}
