//! The hash ring that places each channel's master and its copies on the region's
//! live nodes.
//!
//! It wraps the `hashring` crate, which has neither virtual nodes nor distinct replica
//! owners: each node is added as many virtual nodes, and `owners` walks the ring past
//! repeats of the same node. The crate's hasher is SipHash with fixed keys, so every
//! node computes the same placement independently.

use std::collections::BTreeSet;

use hashring::HashRing;

/// Virtual nodes per node: enough to spread channels within a few percent on small
/// regions, few enough that a lookup stays cheap.
pub const DEFAULT_VNODES: u32 = 64;

#[derive(Debug, Clone, Hash, PartialEq, Eq)]
struct VNode {
    node: String,
    index: u32,
}

#[derive(Debug, Clone)]
pub struct Ring {
    ring: HashRing<VNode>,
    nodes: BTreeSet<String>,
    vnodes: u32,
}

impl Ring {
    pub fn new(vnodes: u32) -> Self {
        Self {
            ring: HashRing::new(),
            nodes: BTreeSet::new(),
            vnodes,
        }
    }

    /// A ring over exactly these nodes.
    pub fn with_nodes<'a>(nodes: impl IntoIterator<Item = &'a String>, vnodes: u32) -> Self {
        let mut ring = Self::new(vnodes);
        for node in nodes {
            ring.add(node);
        }
        ring
    }

    pub fn add(&mut self, node: &str) {
        if !self.nodes.insert(node.to_owned()) {
            return;
        }
        let vnodes = (0..self.vnodes)
            .map(|index| VNode {
                node: node.to_owned(),
                index,
            })
            .collect();
        self.ring.batch_add(vnodes);
    }

    pub fn remove(&mut self, node: &str) {
        if !self.nodes.remove(node) {
            return;
        }
        for index in 0..self.vnodes {
            self.ring.remove(&VNode {
                node: node.to_owned(),
                index,
            });
        }
    }

    pub fn nodes(&self) -> &BTreeSet<String> {
        &self.nodes
    }

    /// The master of `key`.
    pub fn owner(&self, key: &str) -> Option<&str> {
        self.ring.get(&key).map(|v| v.node.as_str())
    }

    /// Up to `count` distinct nodes for `key`: the master first, then the next
    /// distinct nodes along the ring, which hold its copies.
    pub fn owners(&self, key: &str, count: usize) -> Vec<String> {
        let wanted = count.min(self.nodes.len());
        let mut owners: Vec<String> = Vec::with_capacity(wanted);
        if wanted == 0 {
            return owners;
        }

        // The crate returns the primary plus `r` following vnodes; walking the whole
        // ring is the only way past repeats of one node.
        let all = self
            .ring
            .get_with_replicas(&key, self.ring.len() - 1)
            .unwrap_or_default();
        for vnode in all {
            if !owners.contains(&vnode.node) {
                owners.push(vnode.node);
                if owners.len() == wanted {
                    break;
                }
            }
        }
        owners
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ring(nodes: &[&str]) -> Ring {
        let names: Vec<String> = nodes.iter().map(|n| n.to_string()).collect();
        Ring::with_nodes(&names, DEFAULT_VNODES)
    }

    #[test]
    fn owners_are_distinct_and_start_with_the_master() {
        let r = ring(&["a", "b", "c"]);
        for i in 0..200 {
            let key = format!("channel-{i}");
            let owners = r.owners(&key, 2);
            assert_eq!(owners.len(), 2);
            assert_ne!(owners[0], owners[1]);
            assert_eq!(Some(owners[0].as_str()), r.owner(&key));
        }
        assert_eq!(r.owners("x", 5).len(), 3, "never more owners than nodes");
    }

    #[test]
    fn placement_is_the_same_whatever_the_order_nodes_were_added() {
        let a = ring(&["a", "b", "c"]);
        let b = ring(&["c", "a", "b"]);
        for i in 0..100 {
            let key = format!("k{i}");
            assert_eq!(a.owners(&key, 3), b.owners(&key, 3));
        }
    }

    #[test]
    fn removing_a_node_moves_only_its_channels() {
        let before = ring(&["a", "b", "c", "d"]);
        let mut after = before.clone();
        after.remove("d");

        let mut moved = 0;
        for i in 0..1000 {
            let key = format!("k{i}");
            let (was, now) = (before.owner(&key).unwrap(), after.owner(&key).unwrap());
            if was != "d" {
                assert_eq!(was, now, "{key} moved although its owner stayed");
            } else {
                moved += 1;
            }
        }
        assert!(
            (150..350).contains(&moved),
            "about a quarter moves, got {moved}"
        );
    }

    #[test]
    fn spread_is_roughly_even() {
        let r = ring(&["a", "b", "c"]);
        let mut counts = std::collections::HashMap::new();
        for i in 0..3000 {
            *counts
                .entry(r.owner(&format!("k{i}")).unwrap().to_owned())
                .or_insert(0) += 1;
        }
        for (node, count) in counts {
            assert!((600..1400).contains(&count), "{node} owns {count} of 3000");
        }
    }
}
