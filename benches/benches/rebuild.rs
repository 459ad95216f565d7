//! `graph rebuild` at scale: writes a RocksDB graph of N identifiers and about 1.6 N links
//! directly through the resolver's transaction API (a state the streaming stage would have
//! made: nodes, link log, pair and node indexes, parents, profiles, canonical ids, hub state),
//! then times the rebuild preview under the same policy (nothing may change), a preview under a
//! changed policy, and applying that change, against a plain in-memory union-find over the
//! same links in the same run. Peak RSS is measured per step (VmHWM, reset before each).
//!
//! The mix: people of 2 to 8 identifiers (user id, emails, devices, cookies, a CRM id) joined
//! in a star from their first identifier, confirmations between their identifiers (links
//! inside one profile), a few people of 50 to 60 identifiers whose extra cookies the
//! `cookie_id` limit refuses, family tablets shared by two logged-in people (refused:
//! `kind_limit:user_id`) and weak cross-person candidates.
//!
//! `cargo bench -p cdp-benches --bench rebuild` (identifiers: CDP_BENCH_REBUILD_SIZES, default
//! `100000,1000000`; where the stores go: CDP_BENCH_REBUILD_DIR, default the system temp dir;
//! CDP_BENCH_REBUILD_KEEP=1 writes and keeps the stores without timing the steps, and
//! CDP_BENCH_REBUILD_STORE=DIR CDP_BENCH_REBUILD_STEP=0..3 runs one step on a kept store).

use cdp_benches::{peak_rss_bytes, SplitMix64};
use cdp_proto::time::from_millis;
use cdp_proto::{Identifier, IdentifierKind, Profile, Timestamp};
use cdp_resolver::graph::canonical_id_for;
use cdp_resolver::hub::Reaches;
use cdp_resolver::link::{Link, LinkDecision};
use cdp_resolver::rebuild::{rebuild, RebuildOptions};
use cdp_resolver::txn::{NodeId, Txn};
use cdp_resolver::{Resolver, ResolverConfig, RocksStore};
use std::collections::{BTreeMap, HashSet};
use std::time::Instant;

const TENANT: &str = "acme";
/// People written per transaction (one RocksDB write batch each).
const PEOPLE_PER_TXN: usize = 20_000;
const T0: i64 = 1_700_000_000_000;

type Rng = SplitMix64;

/// True `percent` times in a hundred.
fn chance(rng: &mut Rng, percent: u64) -> bool {
    rng.below(1000) < percent * 10
}

/// One person's identifiers, the first being the one the star of links starts from.
fn person(rng: &mut Rng, n: u64, large: bool) -> Vec<Identifier> {
    let mut ids = Vec::new();
    let mut add = |kind: IdentifierKind, i: u64| {
        ids.push(Identifier::new(kind, format!("{n:x}-{i}")));
    };
    let logged_in = chance(rng, 70);
    if logged_in {
        add(IdentifierKind::UserId, 0);
    }
    let emails = if chance(rng, 20) { 2 } else { 1 };
    for i in 0..emails {
        add(IdentifierKind::EmailSha256, i);
    }
    if chance(rng, 10) {
        add(IdentifierKind::CrmId, 0);
    }
    let devices = if large { 8 } else { rng.below(2) + 1 };
    for i in 0..devices {
        add(IdentifierKind::DeviceId, i);
    }
    // The cookie limit is 50: a large person's cookies past it are refused, see `write_person`.
    let cookies = if large { 50 } else { rng.below(4) };
    for i in 0..cookies {
        add(IdentifierKind::CookieId, i);
    }
    ids
}

fn rule_of(kind: &IdentifierKind) -> (&'static str, f64) {
    match kind {
        IdentifierKind::EmailSha256 => ("email_match", 0.95),
        IdentifierKind::CrmId => ("crm_id_match", 0.95),
        IdentifierKind::DeviceId => ("device_match", 0.9),
        _ => ("deterministic_login", 1.0),
    }
}

/// What the generator wrote, for the in-memory baseline and the report.
#[derive(Default)]
struct Written {
    identifiers: u64,
    links: u64,
    refused: u64,
    candidates: u64,
    /// Every link's two ends, in log order (the baseline unions them all).
    edges: Vec<(u32, u32)>,
}

struct Writer<'s> {
    txn: Txn<'s>,
    /// Hub state: when each node's links joined it to another profile.
    reaches: BTreeMap<NodeId, Vec<i64>>,
    written: Written,
    clock: i64,
    /// Pairs logged in this transaction (a pair of people is only linked within one).
    pairs: HashSet<(NodeId, NodeId, &'static str)>,
}

impl Writer<'_> {
    fn link(
        &mut self,
        (a, na): (&Identifier, NodeId),
        (b, nb): (&Identifier, NodeId),
        rule: &str,
        confidence: f64,
        decision: LinkDecision,
    ) {
        self.clock += 1_000;
        let joins_two = !matches!(decision, LinkDecision::Candidate);
        if joins_two {
            for n in [na, nb] {
                self.reaches.entry(n).or_default().push(self.clock);
            }
        }
        match decision {
            LinkDecision::Refused(_) => self.written.refused += 1,
            LinkDecision::Candidate => self.written.candidates += 1,
            _ => {}
        }
        let id = self.txn.append_link(
            na,
            nb,
            Link {
                id: 0,
                tenant: TENANT.into(),
                a: a.clone(),
                b: b.clone(),
                rule: rule.into(),
                confidence,
                observed_at: from_millis(self.clock),
                signal_id: format!("evt-{}", self.written.links),
                decision,
                evidence: None,
            },
        );
        debug_assert!(id > 0);
        self.written.links += 1;
        self.written.edges.push((na as u32, nb as u32));
    }
}

/// A person as written: their identifiers and nodes, the star's centre first.
struct Person {
    nodes: Vec<(Identifier, NodeId)>,
}

fn write_person(w: &mut Writer, rng: &mut Rng, ids: Vec<Identifier>, at: Timestamp) -> Person {
    let nodes: Vec<(Identifier, NodeId)> = ids
        .into_iter()
        .map(|id| {
            let node = w.txn.create_node(TENANT, &id);
            (id, node)
        })
        .collect();
    w.written.identifiers += nodes.len() as u64;
    let (first, root) = (&nodes[0].0, nodes[0].1);
    let mut members = vec![first.clone()];
    for (id, node) in &nodes[1..] {
        let (rule, confidence) = rule_of(&id.kind);
        w.link(
            (first, root),
            (id, *node),
            rule,
            confidence,
            LinkDecision::Accepted,
        );
        w.txn.set_parent(*node, Some(root));
        members.push(id.clone());
    }
    // Confirmations: an email seen again with a device or cookie of the same person.
    let extra = nodes.len() + 4;
    for _ in 0..extra {
        let i = rng.below(nodes.len() as u64) as usize;
        let j = rng.below(nodes.len() as u64) as usize;
        if i == j {
            continue;
        }
        let (a, b) = (&nodes[i], &nodes[j]);
        let (rule, confidence) = rule_of(&b.0.kind);
        // Only unlogged (rule, pair) assertions: the log holds each once. The star logged
        // the pairs with the first identifier.
        let pair = (a.1.min(b.1), a.1.max(b.1), rule);
        if i == 0 || j == 0 || !w.pairs.insert(pair) {
            continue;
        }
        w.clock += 1_000;
        let id = w.txn.append_link(
            a.1,
            b.1,
            Link {
                id: 0,
                tenant: TENANT.into(),
                a: a.0.clone(),
                b: b.0.clone(),
                rule: rule.into(),
                confidence,
                observed_at: from_millis(w.clock),
                signal_id: format!("evt-{}", w.written.links),
                decision: LinkDecision::Accepted,
                evidence: None,
            },
        );
        debug_assert!(id > 0);
        w.written.links += 1;
        w.written.edges.push((a.1 as u32, b.1 as u32));
    }
    let canonical = canonical_id_for(TENANT, first);
    w.txn.set_canonical(TENANT, &canonical, Some(root));
    w.txn
        .put_profile(root, Some(Profile::new(TENANT, canonical, members, at)));
    Person { nodes }
}

/// Writes the graph of about `n` identifiers into `store`.
fn generate(store: &RocksStore, n: u64) -> Written {
    let mut rng = SplitMix64(n);
    let at = from_millis(T0);
    let mut written = Written::default();
    let mut clock = T0;
    let mut people = 0u64;
    while written.identifiers < n {
        let mut w = Writer {
            txn: Txn::begin(store).expect("txn"),
            reaches: BTreeMap::new(),
            written: std::mem::take(&mut written),
            clock,
            pairs: HashSet::new(),
        };
        // Logged-in people of this transaction, for shared tablets and candidates.
        let mut logged: Vec<Person> = Vec::new();
        for _ in 0..PEOPLE_PER_TXN {
            if w.written.identifiers >= n {
                break;
            }
            let large = rng.below(2000) == 0;
            let ids = person(&mut rng, people, large);
            people += 1;
            let p = write_person(&mut w, &mut rng, ids, at);
            if large {
                // A 51st cookie: the cookie limit refuses it.
                let cookie = Identifier::new(IdentifierKind::CookieId, format!("{people:x}-extra"));
                let node = w.txn.create_node(TENANT, &cookie);
                w.written.identifiers += 1;
                let canonical = canonical_id_for(TENANT, &cookie);
                w.txn.set_canonical(TENANT, &canonical, Some(node));
                w.txn.put_profile(
                    node,
                    Some(Profile::new(TENANT, canonical, vec![cookie.clone()], at)),
                );
                let first = p.nodes[0].clone();
                w.link(
                    (&first.0, first.1),
                    (&cookie, node),
                    "deterministic_login",
                    1.0,
                    LinkDecision::Refused("kind_limit:cookie_id".into()),
                );
            }
            if p.nodes[0].0.kind == IdentifierKind::UserId {
                logged.push(p);
            }
        }
        // Family tablets: a logged-in person signs in on another's device (refused), and weak
        // candidates between people (below the merge threshold).
        for _ in 0..logged.len() / 100 {
            let x = rng.below(logged.len() as u64) as usize;
            let y = rng.below(logged.len() as u64) as usize;
            if x == y {
                continue;
            }
            let (user, tablet) = (logged[x].nodes[0].clone(), logged[y].nodes.last().cloned());
            let Some(tablet) = tablet.filter(|t| t.0.kind == IdentifierKind::DeviceId) else {
                continue;
            };
            let pair = (user.1.min(tablet.1), user.1.max(tablet.1), "device_match");
            if !w.pairs.insert(pair) {
                continue;
            }
            w.link(
                (&user.0, user.1),
                (&tablet.0, tablet.1),
                "device_match",
                0.9,
                LinkDecision::Refused("kind_limit:user_id".into()),
            );
        }
        for _ in 0..logged.len() / 20 {
            let x = rng.below(logged.len() as u64) as usize;
            let y = rng.below(logged.len() as u64) as usize;
            if x == y {
                continue;
            }
            let (a, b) = (logged[x].nodes[0].clone(), logged[y].nodes[0].clone());
            if !w.pairs.insert((a.1.min(b.1), a.1.max(b.1), "email_match")) {
                continue;
            }
            w.link(
                (&a.0, a.1),
                (&b.0, b.1),
                "email_match",
                0.5,
                LinkDecision::Candidate,
            );
        }
        for (node, times) in std::mem::take(&mut w.reaches) {
            let bytes: Vec<u8> = times.iter().flat_map(|t| t.to_be_bytes()).collect();
            w.txn.set_hub_reaches(node, Reaches::decode(&bytes));
        }
        clock = w.clock;
        written = w.written;
        w.txn.commit().expect("commit");
    }
    written
}

/// The plain in-memory union-find (union by size, path halving) over every link: no policy, no
/// storage; the floor a rebuild is measured against.
fn union_find(nodes: usize, edges: &[(u32, u32)]) -> usize {
    let mut parent: Vec<u32> = (0..nodes as u32).collect();
    let mut size: Vec<u32> = vec![1; nodes];
    let find = |parent: &mut Vec<u32>, mut x: u32| {
        while parent[x as usize] != x {
            let grand = parent[parent[x as usize] as usize];
            parent[x as usize] = grand;
            x = grand;
        }
        x
    };
    let mut sets = nodes;
    for &(a, b) in edges {
        let (ra, rb) = (find(&mut parent, a), find(&mut parent, b));
        if ra == rb {
            continue;
        }
        let (big, small) = if size[ra as usize] >= size[rb as usize] {
            (ra, rb)
        } else {
            (rb, ra)
        };
        parent[small as usize] = big;
        size[big as usize] += size[small as usize];
        sets -= 1;
    }
    sets
}

/// The steps timed, each in a process of its own so that its peak RSS is its own.
const STEPS: [&str; 4] = [
    "preview, same policy",
    "preview, user_id 2",
    "apply, user_id 2",
    "preview after apply",
];

/// Runs step `step` of [`STEPS`] on the store in `dir` and prints its figures on one line.
fn child(dir: &std::path::Path, step: usize) {
    let store = RocksStore::open(dir).expect("rocksdb opens");
    let mut config = ResolverConfig::default();
    if step > 0 {
        // Two logged-in people per profile: the family tablets' refused links now merge.
        config.policy.max_per_kind.insert("user_id".into(), 2);
    }
    let resolver = Resolver::new(config.policy.clone());
    let options = RebuildOptions {
        tenant: TENANT.into(),
        apply: step == 2,
        examples: 3,
        at: from_millis(T0 + 86_400_000),
    };
    let (t, cpu) = (Instant::now(), cpu_secs());
    let report = rebuild(&store, &resolver, &config, &options).expect("rebuild");
    let secs = t.elapsed().as_secs_f64();
    let cpu = cpu_secs() - cpu;
    let changes = (report.splits, report.merges, report.links_changed);
    match step {
        0 | 3 => assert_eq!(
            (changes.0, changes.1),
            (0, 0),
            "the generated graph is what the policy decides"
        ),
        _ => assert!(
            changes.1 > 0,
            "shared tablets merge under the looser policy"
        ),
    }
    println!(
        "{secs} {cpu} {} {} {} {} {}",
        peak_rss_bytes().unwrap_or(0),
        changes.0,
        changes.1,
        changes.2,
        report.identifiers
    );
}

/// CPU seconds (user and system, every thread) this process has used, from `/proc/self/stat`:
/// on a shared machine wall time says little.
fn cpu_secs() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name start at its closing parenthesis; utime and stime are the
    // 14th and 15th fields, in clock ticks of 1/100 s.
    let rest = stat.rfind(')').map_or("", |i| &stat[i + 1..]);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|t| t.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12)) / 100.0
}

fn mib(bytes: u64) -> String {
    format!("{:.0}", bytes as f64 / (1024.0 * 1024.0))
}

fn main() {
    if let (Some(dir), Some(step)) = (
        std::env::var_os("CDP_BENCH_REBUILD_STORE"),
        std::env::var("CDP_BENCH_REBUILD_STEP").ok(),
    ) {
        child(
            std::path::Path::new(&dir),
            step.parse().expect("a step number"),
        );
        return;
    }
    let sizes: Vec<u64> = std::env::var("CDP_BENCH_REBUILD_SIZES")
        .unwrap_or_else(|_| "100000,1000000".into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    let base = std::env::var_os("CDP_BENCH_REBUILD_DIR").map(std::path::PathBuf::from);
    println!(
        "{:>10} {:>10} {:<22} {:>8} {:>8} {:>12} {:>9} {:>7} {:>7} {:>8} {:>7}",
        "ids",
        "links",
        "step",
        "secs",
        "cpu s",
        "links/cpu-s",
        "RSS MiB",
        "splits",
        "merges",
        "changed",
        "vs UF"
    );
    for n in sizes {
        let dir = match &base {
            Some(b) => tempfile::tempdir_in(b),
            None => tempfile::tempdir(),
        }
        .expect("tempdir");
        let store = RocksStore::open(dir.path()).expect("rocksdb opens");
        let (t, cpu) = (Instant::now(), cpu_secs());
        let written = generate(&store, n);
        let (generated, generated_cpu) = (t.elapsed().as_secs_f64(), cpu_secs() - cpu);
        // The steps open the store themselves; opening it once first moves what the last
        // writes left in the write-ahead log into table files, as a long-running store has it.
        drop(store);
        drop(RocksStore::open(dir.path()).expect("rocksdb reopens"));
        // Rates are per second of CPU the step used (all threads): on a shared machine wall
        // time depends on the neighbours.
        let row = |step: &str,
                   (secs, cpu): (f64, f64),
                   rss: String,
                   changes: [&str; 3],
                   ratio: String| {
            println!(
                "{:>10} {:>10} {step:<22} {secs:>8.2} {cpu:>8.2} {:>12.0} {rss:>9} {:>7} {:>7} {:>8} {ratio:>7}",
                written.identifiers,
                written.links,
                written.links as f64 / cpu,
                changes[0],
                changes[1],
                changes[2],
            );
        };
        row(
            "write store",
            (generated, generated_cpu),
            mib(peak_rss_bytes().unwrap_or(0)),
            [""; 3],
            String::new(),
        );
        println!(
            "{:>10} {:>10} (refused {}, candidates {}; store in {})",
            "",
            "",
            written.refused,
            written.candidates,
            dir.path().display()
        );
        let t = Instant::now();
        let max_node = written
            .edges
            .iter()
            .map(|(a, b)| (*a).max(*b))
            .max()
            .unwrap_or(0);
        let sets = union_find(max_node as usize + 1, &written.edges);
        let uf = t.elapsed().as_secs_f64();
        std::hint::black_box(sets);
        row(
            "in-memory union-find",
            (uf, uf),
            "-".into(),
            [""; 3],
            "1".into(),
        );
        if std::env::var_os("CDP_BENCH_REBUILD_KEEP").is_some() {
            // For profiling a step on its own: CDP_BENCH_REBUILD_STORE=DIR CDP_BENCH_REBUILD_STEP=N.
            println!("{:>21} kept: {}", "", dir.keep().display());
            continue;
        }
        for (step, name) in STEPS.iter().enumerate() {
            let out = std::process::Command::new(std::env::current_exe().expect("own path"))
                .env("CDP_BENCH_REBUILD_STORE", dir.path())
                .env("CDP_BENCH_REBUILD_STEP", step.to_string())
                .output()
                .expect("step runs");
            assert!(
                out.status.success(),
                "{name}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            let line = String::from_utf8_lossy(&out.stdout);
            let f: Vec<&str> = line.split_whitespace().collect();
            let secs: f64 = f[0].parse().expect("seconds");
            let cpu: f64 = f[1].parse().expect("cpu seconds");
            assert_eq!(
                f[6],
                written.identifiers.to_string(),
                "every identifier replayed"
            );
            row(
                name,
                (secs, cpu),
                mib(f[2].parse().expect("rss")),
                [f[3], f[4], f[5]],
                format!("{:.0}", cpu / uf),
            );
        }
    }
}
