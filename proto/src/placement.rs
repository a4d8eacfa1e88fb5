//! Placement: which chunkservers hold a block. A pure function of the block id and the
//! cluster map that every client and server computes the same way; nobody stores it.
//!
//! Weighted rendezvous hashing: every placeable node draws a pseudo-random score from
//! (block, node); the score is scaled by the node's capacity so bigger nodes win
//! proportionally more often. Adding or removing one node only moves the blocks that node
//! wins or held (about 1/N of them). Zone spread: the list takes the best node of each zone
//! first, in score order, then the remaining nodes in score order, so the first copies land
//! in distinct failure domains and the tail of the list is the fallback order.

use std::collections::BTreeSet;

use crate::cluster::{ClusterMap, NodeInfo};
use crate::ids::{BlockId, NodeId};

/// The first `n` nodes (at most every placeable node) that should hold `block`, best first.
/// Pass `usize::MAX` for the whole fallback order.
pub fn placement(block: &BlockId, map: &ClusterMap, n: usize) -> Vec<NodeId> {
    let mut scored: Vec<(f64, &NodeInfo)> = map
        .placeable()
        .map(|node| (rank_key(block, node), node))
        .collect();
    // Lower key wins; the node id breaks exact ties so the order is total.
    scored.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.id.cmp(&b.1.id)));

    let mut order = Vec::with_capacity(scored.len().min(n));
    let mut zones = BTreeSet::new();
    let mut rest = Vec::new();
    for (_, node) in &scored {
        if zones.insert(&node.zone) {
            order.push(node.id);
        } else {
            rest.push(node.id);
        }
    }
    order.extend(rest);
    order.truncate(n);
    order
}

/// The weighted rendezvous key of `node` for `block`: -ln(u) / capacity, with u uniform in
/// (0, 1) drawn from blake3(block, node). The smallest key wins; the key of a node with
/// weight w is exponentially distributed with rate w, so P(node wins) = w / sum(w).
fn rank_key(block: &BlockId, node: &NodeInfo) -> f64 {
    let mut h = blake3::Hasher::new();
    h.update(block.as_bytes());
    h.update(&node.id.0.to_le_bytes());
    let digest = h.finalize();
    let bits = u64::from_le_bytes(digest.as_bytes()[..8].try_into().expect("8 bytes"));
    // 53 random bits, offset by half a step so u is never 0 nor 1.
    let u = ((bits >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
    -u.ln() / node.capacity as f64
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::NodeState;
    use crate::ids::{RegionId, ZoneId};
    use proptest::prelude::*;
    use std::collections::HashMap;

    fn node(id: u64, zone: &str, capacity: u64) -> NodeInfo {
        NodeInfo {
            id: NodeId(id),
            zone: ZoneId::from(zone),
            address: format!("127.0.0.1:{}", 7000 + id),
            range_address: String::new(),
            capacity,
            state: NodeState::Up,
        }
    }

    fn map(nodes: Vec<NodeInfo>) -> ClusterMap {
        ClusterMap::new(1, RegionId(1), nodes).unwrap()
    }

    fn blocks(count: u64) -> impl Iterator<Item = BlockId> {
        (0..count).map(|i| BlockId::of(&i.to_le_bytes()))
    }

    /// Ten equal nodes, two in each of five zones.
    fn ten_nodes() -> ClusterMap {
        let zones = ["a", "b", "c", "d", "e"];
        map((0..10)
            .map(|i| node(i, zones[(i % 5) as usize], 1 << 40))
            .collect())
    }

    #[test]
    fn placement_is_deterministic_and_ignores_node_order() {
        let nodes: Vec<_> = (0..6)
            .map(|i| node(i, ["a", "b", "c"][i as usize % 3], 100))
            .collect();
        let mut reversed = nodes.clone();
        reversed.reverse();
        let (m1, m2) = (map(nodes), map(reversed));
        for b in blocks(500) {
            let p = placement(&b, &m1, 3);
            assert_eq!(p.len(), 3);
            assert_eq!(p, placement(&b, &m2, 3));
            assert_eq!(p, placement(&b, &m1, 3));
        }
    }

    #[test]
    fn first_copies_go_to_distinct_zones() {
        let m = ten_nodes();
        for b in blocks(2000) {
            let full = placement(&b, &m, usize::MAX);
            assert_eq!(
                full.len(),
                10,
                "every placeable node appears in the fallback order"
            );
            let zones: BTreeSet<_> = full[..5]
                .iter()
                .map(|id| m.node(*id).unwrap().zone.clone())
                .collect();
            assert_eq!(zones.len(), 5, "the first five copies cover all five zones");
            assert_eq!(
                placement(&b, &m, 3),
                full[..3].to_vec(),
                "a prefix of the full order"
            );
        }
    }

    #[test]
    fn only_placeable_nodes_are_chosen() {
        let mut nodes: Vec<_> = (0..4).map(|i| node(i, "a", 100)).collect();
        nodes[1].state = NodeState::Down;
        nodes[2].state = NodeState::Draining;
        let m = map(nodes);
        for b in blocks(200) {
            let p = placement(&b, &m, usize::MAX);
            assert_eq!(p.len(), 2);
            assert!(p.iter().all(|id| *id == NodeId(0) || *id == NodeId(3)));
        }
        assert!(placement(&BlockId::of(b"x"), &ClusterMap::default(), 3).is_empty());
    }

    #[test]
    fn load_is_balanced_within_ten_percent_over_100k_blocks() {
        let m = ten_nodes();
        let mut primary: HashMap<NodeId, u64> = HashMap::new();
        let mut copies: HashMap<NodeId, u64> = HashMap::new();
        for b in blocks(100_000) {
            let p = placement(&b, &m, 3);
            *primary.entry(p[0]).or_default() += 1;
            for id in p {
                *copies.entry(id).or_default() += 1;
            }
        }
        for n in &m.nodes {
            let (p, c) = (primary[&n.id] as f64, copies[&n.id] as f64);
            assert!(
                (p - 10_000.0).abs() <= 1_000.0,
                "{} has {p} primaries, want 10000 ± 10%",
                n.id
            );
            assert!(
                (c - 30_000.0).abs() <= 3_000.0,
                "{} has {c} copies, want 30000 ± 10%",
                n.id
            );
        }
    }

    #[test]
    fn capacity_weights_the_share() {
        let m = map(vec![
            node(1, "a", 100),
            node(2, "b", 200),
            node(3, "c", 100),
        ]);
        let mut primary: HashMap<NodeId, u64> = HashMap::new();
        for b in blocks(40_000) {
            *primary.entry(placement(&b, &m, 1)[0]).or_default() += 1;
        }
        let big = primary[&NodeId(2)] as f64;
        assert!(
            (big - 20_000.0).abs() <= 2_000.0,
            "double capacity wins half: got {big}"
        );
    }

    fn arb_map() -> impl Strategy<Value = ClusterMap> {
        proptest::collection::vec((0u8..4, 1u64..4), 3..12).prop_map(|spec| {
            map(spec
                .into_iter()
                .enumerate()
                .map(|(i, (zone, cap))| {
                    node(i as u64, ["a", "b", "c", "d"][zone as usize], cap * 1000)
                })
                .collect())
        })
    }

    /// Fraction of `n`-copy placements that change between two maps.
    fn moved_fraction(before: &ClusterMap, after: &ClusterMap, n: usize, count: u64) -> f64 {
        let mut moved = 0usize;
        for b in blocks(count) {
            let old: BTreeSet<_> = placement(&b, before, n).into_iter().collect();
            let new: BTreeSet<_> = placement(&b, after, n).into_iter().collect();
            moved += new.difference(&old).count();
        }
        moved as f64 / (count as f64 * n as f64)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]

        #[test]
        fn a_joining_node_moves_about_its_share(m in arb_map(), zone in 0u8..4, cap in 1u64..4) {
            let mut nodes = m.nodes.clone();
            let joiner = node(100, ["a", "b", "c", "d"][zone as usize], cap * 1000);
            nodes.push(joiner.clone());
            let total: u64 = nodes.iter().map(|n| n.capacity).sum();
            let share = joiner.capacity as f64 / total as f64;
            let after = map(nodes);
            // Primaries move only to the newcomer, and only its share of them.
            let moved = moved_fraction(&m, &after, 1, 3000);
            prop_assert!(moved <= share * 1.25 + 0.02, "moved {moved:.3}, share {share:.3}");
            for b in blocks(500) {
                let (old, new) = (placement(&b, &m, 1), placement(&b, &after, 1));
                prop_assert!(old == new || new[0] == joiner.id);
            }
        }

        #[test]
        fn a_leaving_node_moves_only_its_blocks(m in arb_map(), pick in any::<prop::sample::Index>()) {
            let gone = m.nodes[pick.index(m.nodes.len())].id;
            let after = map(m.nodes.iter().filter(|n| n.id != gone).cloned().collect());
            let share = m.node(gone).unwrap().capacity as f64
                / m.nodes.iter().map(|n| n.capacity).sum::<u64>() as f64;
            for b in blocks(1000) {
                let (old, new) = (placement(&b, &m, 1), placement(&b, &after, 1));
                prop_assert!(old == new || old[0] == gone, "a block not on {gone} moved");
            }
            let moved = moved_fraction(&m, &after, 1, 3000);
            prop_assert!(moved <= share * 1.25 + 0.02, "moved {moved:.3}, share {share:.3}");
        }
    }
}
