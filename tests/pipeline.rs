//! End-to-end tests of the `cdp` binary on the embedded bus: the demo drains and reports
//! accuracy, poison input lands in the DLQ with reasons while everything else flows, profiles
//! can be looked up, and a restart resumes without redoing work.

mod support;

use serde_json::Value;
use std::io::Write;
use std::process::Output;
use support::{ok as cdp, read_topic};

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn report_value(report: &str, label: &str) -> f64 {
    report
        .lines()
        .find_map(|l| l.strip_prefix(label).filter(|rest| rest.starts_with(' ')))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {label} in report:\n{report}"))
}

#[test]
fn demo_drains_and_reports_accuracy() {
    let dir = tempfile::tempdir().unwrap();
    let out = cdp(dir.path(), &["demo", "--profiles", "300", "--seed", "7"]);
    let report = stdout(&out);
    for section in [
        "== pipeline",
        "== identity ==",
        "== cohorts ==",
        "== accuracy",
    ] {
        assert!(report.contains(section), "missing {section} in:\n{report}");
    }
    assert!(report_value(&report, "profiles") > 0.0);
    assert!(report_value(&report, "merges") > 0.0);
    assert!(
        report_value(&report, "refused merges") > 0.0,
        "shared devices must be refused:\n{report}"
    );
    assert!(report_value(&report, "entered") > 0.0);
    let f1 = report_value(&report, "F1");
    assert!(f1 >= 0.9, "F1 {f1} on the generated workload:\n{report}");
}

#[test]
fn poison_records_go_to_the_dlq_and_the_pipeline_keeps_running() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in");
    support::generate_seeded(&input, 40, 3);
    let good_lines = std::fs::read_to_string(input.join("web.jsonl"))
        .unwrap()
        .lines()
        .count();
    let mut web = std::fs::OpenOptions::new()
        .append(true)
        .open(input.join("web.jsonl"))
        .unwrap();
    writeln!(web, "{{this is not json").unwrap();
    writeln!(
        web,
        r#"{{"type":"track","event":"No Ids","messageId":"poison-1"}}"#
    )
    .unwrap();
    writeln!(web, r#"[1,2,3]"#).unwrap();
    drop(web);

    let data = dir.path().join("state");
    support::run_until_drained(&data, &input);

    let dlq = read_topic(&data, "cdp.dlq");
    let poison: Vec<&Value> = dlq
        .iter()
        .filter(|r| {
            let v = r["value"].to_string();
            v.contains("this is not json")
                || v.contains("poison-1")
                || r["value"] == serde_json::json!([1, 2, 3])
        })
        .collect();
    assert_eq!(
        poison.len(),
        3,
        "every poison record is dead-lettered once: {dlq:#?}"
    );
    for r in &poison {
        let h = &r["headers"];
        assert_eq!(h["cdp.error.stage"], "ingest");
        assert_eq!(h["cdp.source.topic"], "cdp.raw.web");
        assert!(h["cdp.error.code"].as_str().is_some_and(|c| !c.is_empty()));
        assert!(h["cdp.source.offset"].as_str().is_some());
    }
    // Everything else flowed: a signal or a DLQ record for every raw record.
    let signals = read_topic(&data, "cdp.signals");
    assert!(signals.len() + dlq.len() >= good_lines);
    let profiles = read_topic(&data, "cdp.profiles");
    assert!(!profiles.is_empty());

    // A profile can be looked up by an identifier of any signal.
    let first = &signals[0]["value"]["identifiers"][0];
    let id = format!(
        "{}:{}",
        first["kind"].as_str().unwrap(),
        first["value"].as_str().unwrap()
    );
    let profile: Value =
        serde_json::from_str(&stdout(&cdp(&data, &["profile", "get", &id]))).unwrap();
    assert!(profile["canonical_id"]
        .as_str()
        .unwrap()
        .starts_with("cdp_"));
    assert!(profile["identifiers"]
        .as_array()
        .unwrap()
        .iter()
        .any(|i| i["value"] == first["value"]));

    // A restart with nothing new does no work and changes nothing.
    let before = read_topic(&data, "cdp.profiles").len();
    cdp(&data, &["run", "--until-drained"]);
    assert_eq!(read_topic(&data, "cdp.profiles").len(), before);
}

#[test]
fn raw_emails_are_never_on_any_topic() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in");
    support::generate_seeded(&input, 20, 5);
    let data = dir.path().join("state");
    support::run_until_drained(&data, &input);
    for topic in [
        "cdp.signals",
        "cdp.profiles",
        "cdp.identity.changes",
        "cdp.cohorts",
    ] {
        for r in read_topic(&data, topic) {
            let mut strings = Vec::new();
            collect_strings(&r["value"], &mut strings);
            for s in strings {
                assert!(!looks_like_email(&s), "{topic} carries a raw email: {s}");
            }
        }
    }
}

fn collect_strings(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::String(s) => out.push(s.clone()),
        Value::Array(a) => a.iter().for_each(|x| collect_strings(x, out)),
        Value::Object(o) => o.iter().for_each(|(k, x)| {
            out.push(k.clone());
            collect_strings(x, out)
        }),
        _ => {}
    }
}

/// `local@domain.tld` with an alphabetic top-level domain.
fn looks_like_email(s: &str) -> bool {
    let Some((local, domain)) = s.trim().rsplit_once('@') else {
        return false;
    };
    let tld = domain.rsplit('.').next().unwrap_or("");
    !local.is_empty()
        && domain.contains('.')
        && tld.len() >= 2
        && tld.chars().all(|c| c.is_ascii_alphabetic())
}

#[test]
fn topic_list_shows_every_topic() {
    let dir = tempfile::tempdir().unwrap();
    cdp(dir.path(), &["run", "--until-drained"]);
    let list = stdout(&cdp(dir.path(), &["topic", "list"]));
    for t in [
        "cdp.raw.web",
        "cdp.signals",
        "cdp.dlq",
        "cdp.profiles",
        "cdp.identity.changes",
        "cdp.cohorts",
        "cdp.cohorts.membership",
    ] {
        assert!(
            list.lines().any(|l| l.starts_with(&format!("{t}\t"))),
            "{t} missing from:\n{list}"
        );
    }
}

#[test]
fn print_default_config_is_the_documented_template() {
    let dir = tempfile::tempdir().unwrap();
    let text = stdout(&cdp(dir.path(), &["config", "--print-default"]));
    assert!(text.contains("[resolver.policy.max_per_kind]"));
    let path = dir.path().join("cdp.toml");
    std::fs::write(&path, &text).unwrap();
    cdp(dir.path(), &["--config", path.to_str().unwrap(), "config"]);
}

#[test]
fn eval_scores_a_drained_run_against_truth() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in");
    support::generate(&input, 150);
    let run = support::run_until_drained(dir.path(), &input);
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(
        stderr.lines().any(|l| l.starts_with("resolver ")),
        "a drained run prints its stage table:\n{stderr}"
    );
    // The input is fed while the stages run (thousands of records, written a thousand at a
    // time): drained means after the last of it, not when the stages first catch up.
    let lines = support::records_in(&input) as usize;
    assert!(lines > 2000, "{lines} records");
    let ingested = stderr
        .lines()
        .find_map(|l| l.strip_prefix("ingest "))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|n| n.parse::<usize>().ok());
    assert_eq!(ingested, Some(lines), "{stderr}");

    let truth = input.join("truth.csv");
    let records = std::fs::read_to_string(&truth).unwrap().lines().count() - 1;
    let eval = |truth: &std::path::Path| -> Value {
        let out = cdp(
            dir.path(),
            &["eval", "--truth", truth.to_str().unwrap(), "--json"],
        );
        serde_json::from_slice(&out.stdout).expect("eval prints JSON")
    };
    let scores = eval(&truth);
    assert_eq!(scores["pairwise"]["records"], records as u64);
    assert!(scores["pairwise"]["precision"].as_f64().unwrap() > 0.95);
    assert!(scores["clusters"]["bcubed_f1"].as_f64().unwrap() > 0.8);
    let profiles = scores["clusters"]["profiles"].as_u64().unwrap();
    let people = scores["clusters"]["people"].as_u64().unwrap();
    assert!(profiles >= people && people > 100, "{scores}");

    // A truth where everyone is one person: nothing cdp joined is wrong, most of it is missed.
    let one = dir.path().join("one-person.csv");
    let mut text = String::from("source,record,person\n");
    for line in std::fs::read_to_string(&truth).unwrap().lines().skip(1) {
        let (source_record, _) = line.rsplit_once(',').unwrap();
        text.push_str(&format!("{source_record},everyone\n"));
    }
    std::fs::write(&one, text).unwrap();
    let lumped = eval(&one);
    assert_eq!(lumped["pairwise"]["precision"], 1.0);
    assert!(lumped["pairwise"]["recall"].as_f64().unwrap() < 0.1);
    assert_eq!(lumped["clusters"]["people"], 1);
    assert_eq!(lumped["clusters"]["under_merged_people"], 1);
}
