//! Conflict resolution between competing cohorts. Cohorts of one `exclusive_groups` entry
//! compete for each person on each destination they feed: the destination is sent the person in
//! the highest-`priority` cohort of the group they are a member of (equal priorities: the
//! smaller key), and in no other cohort of the group. A decision is a function of the stored
//! memberships alone, so replaying the same input after a restart decides the same.

use crate::cohort::Cohorts;
use crate::config::ExclusiveGroupConfig;
use std::collections::BTreeMap;

/// Each cohort's group and rank.
#[derive(Debug, Clone, Default)]
pub struct Priority {
    /// Per cohort (same index as `Cohorts::list`): its group's index, if it has one.
    group: Vec<Option<usize>>,
    /// Per cohort: its position when cohorts are ordered best first (priority descending, then
    /// key ascending); lower wins.
    rank: Vec<usize>,
}

impl Priority {
    /// From validated groups: each names existing cohorts, each cohort in one group at most.
    pub fn compile(cohorts: &Cohorts, groups: &[ExclusiveGroupConfig]) -> Self {
        let group = cohorts
            .list
            .iter()
            .map(|c| {
                groups
                    .iter()
                    .position(|g| g.cohorts.contains(&c.config.key))
            })
            .collect();
        let mut order: Vec<usize> = (0..cohorts.list.len()).collect();
        order.sort_by(|a, b| {
            let (a, b) = (&cohorts.list[*a].config, &cohorts.list[*b].config);
            b.priority.cmp(&a.priority).then_with(|| a.key.cmp(&b.key))
        });
        let mut rank = vec![0; order.len()];
        for (position, cohort) in order.into_iter().enumerate() {
            rank[cohort] = position;
        }
        Self { group, rank }
    }

    /// Whether any cohort competes at all.
    pub fn any_groups(&self) -> bool {
        self.group.iter().any(Option::is_some)
    }

    /// For each cohort of `fed` (the cohorts feeding one destination), whether the destination
    /// should hold the person in it: they are a member (`members`, indexed by cohort) and no
    /// better-ranked cohort of its group in `fed` holds them as a member too.
    pub fn winners(&self, fed: &[usize], members: &[bool]) -> Vec<bool> {
        let mut best: BTreeMap<usize, usize> = BTreeMap::new();
        for &c in fed {
            if let (true, Some(g)) = (members[c], self.group[c]) {
                let b = best.entry(g).or_insert(c);
                if self.rank[c] < self.rank[*b] {
                    *b = c;
                }
            }
        }
        fed.iter()
            .map(|&c| members[c] && self.group[c].is_none_or(|g| best.get(&g) == Some(&c)))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::CohortConfig;

    fn cohort(key: &str, priority: i32) -> CohortConfig {
        CohortConfig {
            key: key.into(),
            description: String::new(),
            expression: "true".into(),
            priority,
            identifiers: vec![],
            destinations: vec![],
        }
    }

    fn group(key: &str, cohorts: &[&str]) -> ExclusiveGroupConfig {
        ExclusiveGroupConfig {
            key: key.into(),
            cohorts: cohorts.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn the_best_member_of_each_group_wins_and_ungrouped_cohorts_always_do() {
        let cohorts = Cohorts::compile(&[
            cohort("nurture", 10),
            cohort("high_intent", 30),
            cohort("winback", 30),
            cohort("newsletter", 0),
            cohort("vip", 1),
        ])
        .unwrap();
        let groups = [
            group("lifecycle", &["nurture", "high_intent", "winback"]),
            group("tier", &["vip"]),
        ];
        let p = Priority::compile(&cohorts, &groups);
        assert!(p.any_groups());
        let all = [0, 1, 2, 3, 4];
        assert_eq!(
            p.winners(&all, &[true, true, true, true, true]),
            [false, true, false, true, true],
            "equal priorities: the smaller key wins"
        );
        assert_eq!(
            p.winners(&all, &[true, false, true, true, false]),
            [false, false, true, true, false]
        );
        assert_eq!(
            p.winners(&all, &[true, false, false, false, false]),
            [true, false, false, false, false]
        );
        // A cohort that does not feed the destination does not compete there.
        assert_eq!(
            p.winners(&[0, 3], &[true, true, true, true, true]),
            [true, true]
        );
    }
}
