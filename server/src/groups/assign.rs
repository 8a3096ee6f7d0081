//! Target assignment of a group's partitions to its members.
//!
//! Sticky (the default): a partition stays with its current target owner as
//! long as that member is still in the group and subscribed to the topic;
//! members above their fair share give up their surplus; every free
//! partition goes to the eligible member holding the fewest. One member
//! joining or leaving therefore moves only the partitions it must.
//!
//! One such round is not idempotent when subscriptions differ: a member
//! that alone subscribes to a topic may end above the fair share, and the
//! next round, starting from that target, gives its surplus to others (x
//! has 4 partitions and y 3; a subscribes to x, b to both, c to y, d to
//! nothing; as they join one by one, single rounds leave b with 3 and c
//! with 1, and one more round moves one of b's to c).
//! Sticky therefore runs rounds until the target no longer changes, so the
//! target it returns is a fixpoint: computing it again from itself changes
//! nothing, and the coordinator need not recompute it until its inputs
//! change. Random groups settle within 4 rounds; [`STICKY_ROUNDS_MAX`]
//! bounds the loop all the same.
//! Range (as an option): per topic, subscribed members sorted by id take
//! contiguous ranges of partitions.

use std::collections::{BTreeMap, BTreeSet};

/// A topic partition.
pub type TopicPartition = (String, u32);

/// Most sticky rounds for one assignment (see the module doc).
pub const STICKY_ROUNDS_MAX: usize = 16;

/// How partitions are spread.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Assignor {
    /// Keep partitions where they are, balance the rest.
    Sticky,
    /// Contiguous ranges per topic.
    Range,
}

impl Assignor {
    /// Parses "sticky" (also the default for empty) or "range".
    pub fn parse(name: &str) -> Option<Assignor> {
        match name {
            "" | "sticky" => Some(Assignor::Sticky),
            "range" => Some(Assignor::Range),
            _ => None,
        }
    }

    /// The name.
    pub fn name(self) -> &'static str {
        match self {
            Assignor::Sticky => "sticky",
            Assignor::Range => "range",
        }
    }
}

/// Computes the target assignment: partition → member.
///
/// `members` maps each member to its subscribed topics; `partitions` gives
/// each topic's partition count (topics missing there have no partitions);
/// `previous` is the last target (used by the sticky assignor).
pub fn assign(
    assignor: Assignor,
    members: &BTreeMap<String, BTreeSet<String>>,
    partitions: &BTreeMap<String, u32>,
    previous: &BTreeMap<TopicPartition, String>,
) -> BTreeMap<TopicPartition, String> {
    match assignor {
        Assignor::Sticky => sticky(members, partitions, previous),
        Assignor::Range => range(members, partitions),
    }
}

fn subscribed_partitions(
    members: &BTreeMap<String, BTreeSet<String>>,
    partitions: &BTreeMap<String, u32>,
) -> Vec<TopicPartition> {
    let topics: BTreeSet<&String> = members.values().flatten().collect();
    topics
        .into_iter()
        .flat_map(|t| (0..partitions.get(t).copied().unwrap_or(0)).map(move |p| (t.clone(), p)))
        .collect()
}

fn sticky(
    members: &BTreeMap<String, BTreeSet<String>>,
    partitions: &BTreeMap<String, u32>,
    previous: &BTreeMap<TopicPartition, String>,
) -> BTreeMap<TopicPartition, String> {
    let mut target = sticky_round(members, partitions, previous);
    for _ in 1..STICKY_ROUNDS_MAX {
        let next = sticky_round(members, partitions, &target);
        if next == target {
            break;
        }
        target = next;
    }
    target
}

fn sticky_round(
    members: &BTreeMap<String, BTreeSet<String>>,
    partitions: &BTreeMap<String, u32>,
    previous: &BTreeMap<TopicPartition, String>,
) -> BTreeMap<TopicPartition, String> {
    let all = subscribed_partitions(members, partitions);
    if members.is_empty() {
        return BTreeMap::new();
    }
    let fair_share = all.len().div_ceil(members.len());
    let mut load: BTreeMap<&String, usize> = members.keys().map(|m| (m, 0)).collect();
    let mut target = BTreeMap::new();
    let mut free = Vec::new();
    for tp in &all {
        let keep = previous
            .get(tp)
            .filter(|m| members.get(*m).is_some_and(|topics| topics.contains(&tp.0)));
        match keep {
            Some(member) if load[member] < fair_share => {
                *load.get_mut(member).expect("members have a load") += 1;
                target.insert(tp.clone(), member.clone());
            }
            _ => free.push(tp.clone()),
        }
    }
    for tp in free {
        let eligible = members
            .iter()
            .filter(|(_, topics)| topics.contains(&tp.0))
            .map(|(m, _)| m);
        if let Some(member) = eligible.min_by_key(|m| (load[*m], (*m).clone())) {
            *load.get_mut(member).expect("members have a load") += 1;
            target.insert(tp, member.clone());
        }
    }
    target
}

fn range(
    members: &BTreeMap<String, BTreeSet<String>>,
    partitions: &BTreeMap<String, u32>,
) -> BTreeMap<TopicPartition, String> {
    let mut target = BTreeMap::new();
    let topics: BTreeSet<&String> = members.values().flatten().collect();
    for topic in topics {
        let count = partitions.get(topic).copied().unwrap_or(0) as usize;
        let subscribers: Vec<&String> = members
            .iter()
            .filter(|(_, t)| t.contains(topic))
            .map(|(m, _)| m)
            .collect();
        if subscribers.is_empty() {
            continue;
        }
        let (per, extra) = (count / subscribers.len(), count % subscribers.len());
        let mut next = 0usize;
        for (i, member) in subscribers.iter().enumerate() {
            let take = per + usize::from(i < extra);
            for p in next..next + take {
                target.insert((topic.clone(), p as u32), (*member).clone());
            }
            next += take;
        }
    }
    target
}

#[cfg(test)]
mod tests {
    use super::*;

    fn members(list: &[(&str, &[&str])]) -> BTreeMap<String, BTreeSet<String>> {
        list.iter()
            .map(|(m, t)| (m.to_string(), t.iter().map(|s| s.to_string()).collect()))
            .collect()
    }

    fn counts(target: &BTreeMap<TopicPartition, String>) -> BTreeMap<String, usize> {
        let mut out = BTreeMap::new();
        for member in target.values() {
            *out.entry(member.clone()).or_default() += 1;
        }
        out
    }

    #[test]
    fn sticky_balances_and_moves_only_what_it_must() {
        let partitions: BTreeMap<String, u32> = [("t".to_string(), 6)].into();
        let one = members(&[("a", &["t"])]);
        let first = assign(Assignor::Sticky, &one, &partitions, &BTreeMap::new());
        assert_eq!(counts(&first)["a"], 6);
        let two = members(&[("a", &["t"]), ("b", &["t"])]);
        let second = assign(Assignor::Sticky, &two, &partitions, &first);
        assert_eq!(
            counts(&second),
            [("a".to_string(), 3), ("b".to_string(), 3)].into()
        );
        let three = members(&[("a", &["t"]), ("b", &["t"]), ("c", &["t"])]);
        let third = assign(Assignor::Sticky, &three, &partitions, &second);
        assert_eq!(
            counts(&third).values().copied().collect::<Vec<_>>(),
            vec![2, 2, 2]
        );
        let moved = third
            .iter()
            .filter(|(tp, m)| second.get(*tp) != Some(*m))
            .count();
        assert_eq!(moved, 2, "only the new member's share moves");
        let left = members(&[("a", &["t"]), ("c", &["t"])]);
        let fourth = assign(Assignor::Sticky, &left, &partitions, &third);
        assert!(
            fourth
                .iter()
                .all(|(tp, m)| third.get(tp) == Some(m) || third.get(tp) == Some(&"b".to_string())),
            "only b's partitions move"
        );
    }

    #[test]
    fn members_get_only_topics_they_subscribe_to() {
        let partitions: BTreeMap<String, u32> = [("x".to_string(), 2), ("y".to_string(), 2)].into();
        let group = members(&[("a", &["x"]), ("b", &["x", "y"])]);
        for assignor in [Assignor::Sticky, Assignor::Range] {
            let target = assign(assignor, &group, &partitions, &BTreeMap::new());
            assert_eq!(target.len(), 4);
            assert!(target
                .iter()
                .all(|((topic, _), m)| group[m].contains(topic)));
        }
    }

    #[test]
    fn range_gives_contiguous_ranges() {
        let partitions: BTreeMap<String, u32> = [("t".to_string(), 5)].into();
        let target = assign(
            Assignor::Range,
            &members(&[("a", &["t"]), ("b", &["t"])]),
            &partitions,
            &BTreeMap::new(),
        );
        let a: Vec<u32> = target
            .iter()
            .filter(|(_, m)| *m == "a")
            .map(|((_, p), _)| *p)
            .collect();
        assert_eq!(a, vec![0, 1, 2]);
    }

    #[test]
    fn sticky_settles_where_one_round_would_not() {
        let partitions: BTreeMap<String, u32> = [("x".to_string(), 4), ("y".to_string(), 3)].into();
        let group = members(&[("a", &["x"]), ("b", &["x", "y"]), ("c", &["y"]), ("d", &[])]);
        let mut target = BTreeMap::new();
        for joined in 1..=group.len() {
            let so_far: BTreeMap<_, _> = group.clone().into_iter().take(joined).collect();
            target = assign(Assignor::Sticky, &so_far, &partitions, &target);
        }
        assert_eq!(
            counts(&target),
            [
                ("a".to_string(), 3),
                ("b".to_string(), 2),
                ("c".to_string(), 2)
            ]
            .into()
        );
        let one_round = sticky_round(&group, &partitions, &target);
        assert_eq!(one_round, target, "the target is a fixpoint");
    }

    #[test]
    fn sticky_returns_a_fixpoint_for_random_groups() {
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move |n: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % n
        };
        let topics = ["w", "x", "y", "z"];
        for round in 0..5_000 {
            let partitions: BTreeMap<String, u32> = topics
                .iter()
                .map(|t| (t.to_string(), next(9) as u32))
                .collect();
            let mut group = BTreeMap::new();
            for m in 0..1 + next(7) {
                let subscribed = topics
                    .iter()
                    .filter(|_| next(2) == 0)
                    .map(|t| t.to_string());
                group.insert(format!("m{m}"), subscribed.collect());
            }
            let mut previous = BTreeMap::new();
            for t in topics {
                for p in 0..next(9) as u32 {
                    previous.insert((t.to_string(), p), format!("m{}", next(9)));
                }
            }
            let target = assign(Assignor::Sticky, &group, &partitions, &previous);
            let again = sticky_round(&group, &partitions, &target);
            assert_eq!(
                again, target,
                "round {round}: {group:?} {partitions:?} {previous:?}"
            );
        }
    }
}
