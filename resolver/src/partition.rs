//! Recomputing a partition from the link log: an in-memory union-find (union by size, path
//! halving) that replays links in log order under a merge policy, deciding each one afresh.
//! `unmerge` runs it over one component ([`replay`]), `rebuild` streams a whole tenant's log
//! through a [`Replay`]. Nodes are dense indexes and the per-kind counts the limits need live
//! only at the roots of sets of more than one node, so a replay costs a few machine words per
//! node and nothing per link: a tenant of ten million identifiers fits in a few hundred MiB.

use crate::component::NodeLink;
use crate::hub::Reaches;
use crate::link::LinkDecision;
use crate::policy::{MergePolicy, Refusal};
use crate::txn::NodeId;
use cdp_proto::{Identifier, IdentifierKind};
use std::collections::{BTreeMap, BTreeSet, HashMap};

/// The sets the links form and what the policy decides about each link now.
#[derive(Debug, Default)]
pub struct Replayed {
    /// Sets of nodes, each sorted, ordered by their smallest node.
    pub sets: Vec<BTreeSet<NodeId>>,
    /// Link id -> decision, for every link replayed.
    pub decisions: BTreeMap<u64, LinkDecision>,
    /// When each hub-limited node's links reached other profiles (see [`crate::hub`]).
    pub reached: HashMap<NodeId, Reaches>,
    /// Links that joined two sets (accepted links whose ends were already together are not).
    pub joined: BTreeSet<u64>,
}

/// "No node", "no slot".
const NONE: u32 = u32::MAX;

/// What a replay decided about one link.
#[derive(Debug, Clone, PartialEq)]
pub enum Decided {
    Candidate,
    /// `joined`: the link joined two sets (rather than confirming one).
    Accepted {
        joined: bool,
    },
    Refused(Refusal),
}

impl Decided {
    pub fn decision(&self) -> LinkDecision {
        match self {
            Decided::Candidate => LinkDecision::Candidate,
            Decided::Accepted { .. } => LinkDecision::Accepted,
            Decided::Refused(r) => LinkDecision::Refused(r.code()),
        }
    }
}

/// The times each node's links reached other profiles, as hub detection keeps them (sorted,
/// newest `limit + 1` only), in one arena: a node's list is a span that moves to the end,
/// twice as long, when it fills. Most nodes reach one or two profiles, so a list per node
/// would cost an allocation each.
#[derive(Default)]
struct ReachLog {
    start: Vec<u32>,
    len: Vec<u32>,
    arena: Vec<i64>,
}

impl ReachLog {
    fn push_node(&mut self) {
        self.start.push(0);
        self.len.push(0);
    }

    fn of(&self, n: u32) -> &[i64] {
        let (s, l) = (
            self.start[n as usize] as usize,
            self.len[n as usize] as usize,
        );
        &self.arena[s..s + l]
    }

    /// [`crate::hub::observe`]'s record: inserts `at` in order, keeps the newest `keep`.
    fn record(&mut self, n: u32, at: i64, keep: usize) {
        let i = n as usize;
        let (s, l) = (self.start[i] as usize, self.len[i] as usize);
        // Spans are allocated in powers of two, so a full one has a power-of-two length.
        if l == 0 || l.is_power_of_two() {
            let new = self.arena.len();
            self.arena.extend_from_within(s..s + l);
            self.arena.resize(new + (l * 2).max(1), 0);
            self.start[i] = u32::try_from(new).expect("hub reaches fit the arena");
        }
        let s = self.start[i] as usize;
        let list = &mut self.arena[s..s + l + 1];
        let pos = list[..l].partition_point(|t| *t <= at);
        list.copy_within(pos..l, pos + 1);
        list[pos] = at;
        let mut l = l + 1;
        if l > keep {
            let excess = l - keep;
            list.copy_within(excess..l, 0);
            l = keep;
        }
        self.len[i] = l as u32;
    }

    /// How many of `n`'s reaches are at or after `from`.
    fn since(&self, n: u32, from: i64) -> u64 {
        let list = self.of(n);
        (list.len() - list.partition_point(|t| *t < from)) as u64
    }
}

/// A replay in progress: nodes are added first (dense indexes from 0, each with the index of
/// its kind in the kinds the replay was made with), then links are decided in log order.
pub struct Replay<'p> {
    policy: &'p MergePolicy,
    kinds: Vec<IdentifierKind>,
    /// Per kind: its most distinct profiles (hub detection), if limited.
    hub_limit: Vec<Option<usize>>,
    /// Per kind: its position among the limited kinds, if limited.
    limited_at: Vec<Option<usize>>,
    /// Kinds with a per-profile maximum, in the order limits are checked (the kinds' order),
    /// with that maximum.
    limited: Vec<(u16, usize)>,
    window_ms: Option<i64>,
    kind: Vec<u16>,
    parent: Vec<u32>,
    /// Per root of a set of more than one node: where its counts are in `counts`.
    slot: Vec<u32>,
    /// Per slot: the set's size, then its count of each limited kind.
    counts: Vec<u32>,
    free: Vec<u32>,
    reaches: ReachLog,
}

impl<'p> Replay<'p> {
    pub fn new(policy: &'p MergePolicy, kinds: Vec<IdentifierKind>) -> Self {
        let max_per_kind = &policy.config().max_per_kind;
        let mut limited: Vec<(u16, usize)> = kinds
            .iter()
            .enumerate()
            .filter_map(|(i, k)| Some((i as u16, *max_per_kind.get(k.as_str())?)))
            .collect();
        limited.sort_by(|(a, _), (b, _)| kinds[*a as usize].cmp(&kinds[*b as usize]));
        let mut limited_at = vec![None; kinds.len()];
        for (pos, (k, _)) in limited.iter().enumerate() {
            limited_at[*k as usize] = Some(pos);
        }
        Self {
            policy,
            hub_limit: kinds.iter().map(|k| policy.hub_limit(k)).collect(),
            kinds,
            limited_at,
            limited,
            window_ms: policy.hub_window_ms(),
            kind: Vec::new(),
            parent: Vec::new(),
            slot: Vec::new(),
            counts: Vec::new(),
            free: Vec::new(),
            reaches: ReachLog::default(),
        }
    }

    /// Adds a node of kind `kind` (an index into the kinds) as a set of its own.
    pub fn add_node(&mut self, kind: u16) -> u32 {
        let n = u32::try_from(self.kind.len())
            .ok()
            .filter(|n| *n != NONE)
            .expect("fewer than 2^32 - 1 nodes in one replay");
        self.kind.push(kind);
        self.parent.push(n);
        self.slot.push(NONE);
        self.reaches.push_node();
        n
    }

    pub fn len(&self) -> usize {
        self.kind.len()
    }

    pub fn is_empty(&self) -> bool {
        self.kind.is_empty()
    }

    /// The root of `n`'s set (halving the path on the way).
    pub fn find(&mut self, mut n: u32) -> u32 {
        loop {
            let p = self.parent[n as usize];
            if p == n {
                return n;
            }
            let grand = self.parent[p as usize];
            self.parent[n as usize] = grand;
            n = grand;
        }
    }

    /// When `n`'s links reached other profiles (Unix millis, ascending), as hub state keeps it.
    pub fn reaches(&self, n: u32) -> &[i64] {
        self.reaches.of(n)
    }

    /// Decides a link between `a` and `b` (`None`: an end outside the replayed nodes), of
    /// `strong` enough confidence to merge or not, observed at `at` (Unix millis, read only if
    /// hub detection needs it). A link with an end outside decides nothing, but if it is strong
    /// it still reached another profile from its inside end.
    pub fn link<E>(
        &mut self,
        a: Option<u32>,
        b: Option<u32>,
        strong: bool,
        at: impl FnOnce() -> Result<i64, E>,
    ) -> Result<Option<Decided>, E> {
        let (a, b) = match (a, b) {
            (Some(a), Some(b)) => (a, b),
            (Some(n), None) | (None, Some(n)) if strong => {
                let _ = self.reach(n, at()?);
                return Ok(None);
            }
            _ => return Ok(None),
        };
        if !strong {
            return Ok(Some(Decided::Candidate));
        }
        let (ra, rb) = (self.find(a), self.find(b));
        if ra == rb {
            return Ok(Some(Decided::Accepted { joined: false }));
        }
        let at = at()?;
        // Both ends record the reach, whichever refuses.
        let (ha, hb) = (self.reach(a, at), self.reach(b, at));
        if let Err(refusal) = ha.and(hb) {
            return Ok(Some(Decided::Refused(refusal)));
        }
        if let Err(refusal) = self.check(ra, rb) {
            return Ok(Some(Decided::Refused(refusal)));
        }
        self.union(ra, rb);
        Ok(Some(Decided::Accepted { joined: true }))
    }

    /// [`crate::hub::observe`] for a node of a hub-limited kind.
    fn reach(&mut self, n: u32, at: i64) -> Result<(), Refusal> {
        let kind = self.kind[n as usize] as usize;
        let Some(max) = self.hub_limit[kind] else {
            return Ok(());
        };
        self.reaches.record(n, at, max.saturating_add(1));
        let from = self.window_ms.map_or(i64::MIN, |w| at.saturating_sub(w));
        self.policy
            .check_hub(&self.kinds[kind], self.reaches.since(n, from))
    }

    fn total(&self, root: u32) -> usize {
        match self.slot[root as usize] {
            NONE => 1,
            s => self.counts[s as usize * self.stride()] as usize,
        }
    }

    /// How many identifiers of the limited kind at `pos` the set rooted at `root` holds.
    fn count(&self, root: u32, pos: usize) -> usize {
        match self.slot[root as usize] {
            NONE => usize::from(self.limited_at[self.kind[root as usize] as usize] == Some(pos)),
            s => self.counts[s as usize * self.stride() + 1 + pos] as usize,
        }
    }

    fn stride(&self) -> usize {
        self.limited.len() + 1
    }

    /// [`MergePolicy::check_tallies`] over the counts of two roots.
    fn check(&self, ra: u32, rb: u32) -> Result<(), Refusal> {
        if self.total(ra) + self.total(rb) > self.policy.config().max_profile_identifiers {
            return Err(Refusal::ProfileSize);
        }
        for (pos, (kind, max)) in self.limited.iter().enumerate() {
            if self.count(ra, pos) + self.count(rb, pos) > *max {
                return Err(Refusal::KindLimit(
                    self.kinds[*kind as usize].as_str().to_string(),
                ));
            }
        }
        Ok(())
    }

    fn union(&mut self, ra: u32, rb: u32) {
        let (big, small) = if self.total(ra) >= self.total(rb) {
            (ra, rb)
        } else {
            (rb, ra)
        };
        let stride = self.stride();
        let slot = match self.slot[big as usize] {
            NONE => self.new_slot(big),
            s => s,
        } as usize;
        let at = slot * stride;
        match self.slot[small as usize] {
            NONE => {
                self.counts[at] += 1;
                if let Some(pos) = self.limited_at[self.kind[small as usize] as usize] {
                    self.counts[at + 1 + pos] += 1;
                }
            }
            s => {
                let from = s as usize * stride;
                for i in 0..stride {
                    self.counts[at + i] += self.counts[from + i];
                }
                self.free.push(s);
                self.slot[small as usize] = NONE;
            }
        }
        self.parent[small as usize] = big;
    }

    /// Counts for `root`, a set of one node until now.
    fn new_slot(&mut self, root: u32) -> u32 {
        let stride = self.stride();
        let slot = match self.free.pop() {
            Some(s) => {
                let at = s as usize * stride;
                self.counts[at..at + stride].fill(0);
                s
            }
            None => {
                let s = (self.counts.len() / stride) as u32;
                self.counts.resize(self.counts.len() + stride, 0);
                s
            }
        };
        let at = slot as usize * stride;
        self.counts[at] = 1;
        if let Some(pos) = self.limited_at[self.kind[root as usize] as usize] {
            self.counts[at + 1 + pos] = 1;
        }
        self.slot[root as usize] = slot;
        slot
    }
}

/// Replays `links` (in log order) over `nodes` under `policy`. Links with an end outside `nodes`
/// and links an operator removed are left out.
pub fn replay(
    policy: &MergePolicy,
    nodes: &BTreeMap<NodeId, Identifier>,
    links: &[NodeLink],
) -> Replayed {
    let mut kinds: Vec<IdentifierKind> = Vec::new();
    let mut kind_of: Vec<u16> = Vec::with_capacity(nodes.len());
    for id in nodes.values() {
        let k = match kinds.iter().position(|k| *k == id.kind) {
            Some(k) => k,
            None => {
                kinds.push(id.kind.clone());
                kinds.len() - 1
            }
        };
        kind_of.push(k as u16);
    }
    let mut r = Replay::new(policy, kinds);
    // Dense indexes in node order.
    let index: HashMap<NodeId, u32> = nodes
        .keys()
        .zip(kind_of)
        .map(|(n, k)| (*n, r.add_node(k)))
        .collect();
    let ids: Vec<NodeId> = nodes.keys().copied().collect();
    let mut ordered: Vec<&NodeLink> = links.iter().collect();
    ordered.sort_by_key(|l| l.link.id);
    let mut decisions = BTreeMap::new();
    let mut joined = BTreeSet::new();
    for l in ordered {
        if matches!(l.link.decision, LinkDecision::Removed(_)) {
            continue;
        }
        let strong = policy.merges(&l.link.rule, l.link.confidence);
        let at = || Ok::<_, std::convert::Infallible>(l.link.observed_at.timestamp_millis());
        let decided = match r.link(
            index.get(&l.a).copied(),
            index.get(&l.b).copied(),
            strong,
            at,
        ) {
            Ok(Some(decided)) => decided,
            Ok(None) => continue,
            Err(never) => match never {},
        };
        if decided == (Decided::Accepted { joined: true }) {
            joined.insert(l.link.id);
        }
        decisions.insert(l.link.id, decided.decision());
    }
    let mut by_root: BTreeMap<u32, BTreeSet<NodeId>> = BTreeMap::new();
    let mut reached = HashMap::new();
    for (i, node) in ids.iter().enumerate() {
        let i = i as u32;
        let root = r.find(i);
        by_root.entry(root).or_default().insert(*node);
        if r.hub_limit[r.kind[i as usize] as usize].is_some() && !r.reaches(i).is_empty() {
            reached.insert(*node, reaches_of(r.reaches(i)));
        }
    }
    let mut sets: Vec<BTreeSet<NodeId>> = by_root.into_values().collect();
    sets.sort_by_key(|s| s.first().copied());
    Replayed {
        sets,
        decisions,
        reached,
        joined,
    }
}

/// Hub state holding `times`.
pub fn reaches_of(times: &[i64]) -> Reaches {
    let bytes: Vec<u8> = times.iter().flat_map(|t| t.to_be_bytes()).collect();
    Reaches::decode(&bytes).expect("whole 8-byte times decode")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hub;
    use crate::link::Link;
    use crate::policy::{PolicyConfig, Tally};
    use cdp_proto::time::from_millis;
    use proptest::prelude::*;

    /// The replay as first written, over tallies and hub state per node: the model the
    /// compact one must equal.
    fn model(
        policy: &MergePolicy,
        nodes: &BTreeMap<NodeId, Identifier>,
        links: &[NodeLink],
    ) -> Replayed {
        let mut parent: HashMap<NodeId, NodeId> = nodes.keys().map(|n| (*n, *n)).collect();
        let mut tally: HashMap<NodeId, Tally> = nodes
            .iter()
            .map(|(n, id)| {
                let mut t = Tally::default();
                t.add(&id.kind);
                (*n, t)
            })
            .collect();
        let find = |parent: &mut HashMap<NodeId, NodeId>, mut n: NodeId| {
            while parent[&n] != n {
                n = parent[&n];
            }
            n
        };
        let mut decisions = BTreeMap::new();
        let mut joined = BTreeSet::new();
        let mut reached: HashMap<NodeId, Reaches> = HashMap::new();
        let mut reach = |node: NodeId, at| -> Result<(), Refusal> {
            let kind = &nodes[&node].kind;
            if policy.hub_limit(kind).is_none() {
                return Ok(());
            }
            hub::observe(policy, kind, reached.entry(node).or_default(), at, true)
        };
        let mut ordered: Vec<&NodeLink> = links.iter().collect();
        ordered.sort_by_key(|l| l.link.id);
        for l in ordered {
            if matches!(l.link.decision, LinkDecision::Removed(_)) {
                continue;
            }
            let strong = policy.merges(&l.link.rule, l.link.confidence);
            match (nodes.contains_key(&l.a), nodes.contains_key(&l.b)) {
                (true, true) => {}
                (true, false) if strong => {
                    let _ = reach(l.a, l.link.observed_at);
                    continue;
                }
                (false, true) if strong => {
                    let _ = reach(l.b, l.link.observed_at);
                    continue;
                }
                _ => continue,
            }
            let decision = if !strong {
                LinkDecision::Candidate
            } else {
                let (ra, rb) = (find(&mut parent, l.a), find(&mut parent, l.b));
                if ra == rb {
                    LinkDecision::Accepted
                } else if let Err(refusal) =
                    reach(l.a, l.link.observed_at).and(reach(l.b, l.link.observed_at))
                {
                    LinkDecision::Refused(refusal.code())
                } else {
                    match policy.check_tallies(&tally[&ra], &tally[&rb]) {
                        Err(refusal) => LinkDecision::Refused(refusal.code()),
                        Ok(()) => {
                            let moved = tally.remove(&rb).unwrap_or_default();
                            tally.entry(ra).or_default().absorb(&moved);
                            parent.insert(rb, ra);
                            joined.insert(l.link.id);
                            LinkDecision::Accepted
                        }
                    }
                }
            };
            decisions.insert(l.link.id, decision);
        }
        let mut by_root: BTreeMap<NodeId, BTreeSet<NodeId>> = BTreeMap::new();
        for n in nodes.keys() {
            by_root.entry(find(&mut parent, *n)).or_default().insert(*n);
        }
        let mut sets: Vec<BTreeSet<NodeId>> = by_root.into_values().collect();
        sets.sort_by_key(|s| s.first().copied());
        Replayed {
            sets,
            decisions,
            reached,
            joined,
        }
    }

    const KINDS: [IdentifierKind; 4] = [
        IdentifierKind::UserId,
        IdentifierKind::EmailSha256,
        IdentifierKind::DeviceId,
        IdentifierKind::CookieId,
    ];

    proptest! {
        #![proptest_config(ProptestConfig { cases: 256, .. ProptestConfig::default() })]

        /// The compact replay decides every link, forms every set and keeps every hub state as
        /// the replay over tallies and `hub::observe` does, under random limits, hub limits,
        /// windows and link logs (some links weak, some removed, some leaving the nodes).
        #[test]
        fn compact_replay_equals_the_model(
            kinds in prop::collection::vec(0usize..4, 2..20),
            links in prop::collection::vec(
                (0usize..22, 0usize..22, 0u8..10, 0i64..40), 0..60),
            limits in (1usize..3, 1usize..4, 1usize..4, 0usize..4, 0usize..4, 2usize..12, 0u64..3),
        ) {
            let mut config = PolicyConfig::default();
            config.max_per_kind.insert("user_id".into(), limits.0);
            config.max_per_kind.insert("email_sha256".into(), limits.1);
            config.max_per_kind.remove("device_id");
            config.max_per_kind.insert("cookie_id".into(), limits.2);
            config.hub_max_profiles_per_kind.insert("device_id".into(), limits.3);
            config.hub_max_profiles_per_kind.insert("cookie_id".into(), limits.4);
            config.hub_max_profiles = 3;
            config.max_profile_identifiers = limits.5;
            config.hub_window_days = limits.6;
            let policy = MergePolicy::new(config);
            // Node ids with gaps; indexes 20 and 21 are outside the nodes.
            let nodes: BTreeMap<NodeId, Identifier> = kinds
                .iter()
                .enumerate()
                .map(|(i, k)| (3 * i as u64 + 1, Identifier::new(KINDS[*k].clone(), format!("v{i}"))))
                .collect();
            let node = |i: usize| 3 * i as u64 + 1;
            let logged: Vec<NodeLink> = links
                .iter()
                .enumerate()
                .filter(|(_, (a, b, _, _))| a != b)
                .map(|(id, (a, b, strength, day))| {
                    let decision = if *strength == 0 {
                        LinkDecision::Removed("unmerge".into())
                    } else {
                        LinkDecision::Accepted
                    };
                    NodeLink {
                        a: node(*a),
                        b: node(*b),
                        link: Link {
                            // Log order is not id order.
                            id: (id as u64 * 7) % 61,
                            tenant: "t".into(),
                            a: Identifier::new(IdentifierKind::UserId, "x"),
                            b: Identifier::new(IdentifierKind::UserId, "y"),
                            rule: "r".into(),
                            confidence: f64::from(*strength) / 10.0,
                            observed_at: from_millis(1_700_000_000_000 + day * 86_400_000),
                            signal_id: "s".into(),
                            decision,
                            evidence: None,
                        },
                    }
                })
                .collect();
            let compact = replay(&policy, &nodes, &logged);
            let expected = model(&policy, &nodes, &logged);
            prop_assert_eq!(&compact.sets, &expected.sets);
            prop_assert_eq!(&compact.decisions, &expected.decisions);
            prop_assert_eq!(&compact.joined, &expected.joined);
            prop_assert_eq!(&compact.reached, &expected.reached);
        }
    }

    #[test]
    fn spans_grow_and_keep_the_newest() {
        let mut log = ReachLog::default();
        log.push_node();
        log.push_node();
        for t in [5, 1, 9, 3, 7, 2] {
            log.record(0, t, 4);
            log.record(1, -t, 100);
        }
        assert_eq!(log.of(0), &[3, 5, 7, 9]);
        assert_eq!(log.of(1), &[-9, -7, -5, -3, -2, -1]);
        assert_eq!(log.since(0, 6), 2);
    }
}
