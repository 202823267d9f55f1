//! Who is in the region, as this node sees it. A plain table: the transport tells it
//! about links, hellos, gossip and leaves, and asks it whom to dial and who is live.
//!
//! A member is live while this node holds a link to it: death is learned from the
//! link (keep-alives and idle timeouts), never from what others say. Gossip only
//! spreads who exists, so that every node dials every other.

use std::collections::{BTreeMap, HashMap};

use super::wire::MemberInfo;

/// The members this node is linked to, itself included, at a version that grows with
/// every change.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MeshView {
    pub version: u64,
    pub live: BTreeMap<String, MemberInfo>,
    /// Members this node knows of, live or not, that did not leave; itself included.
    /// Sequencing needs a strict majority of them live.
    pub known: usize,
    /// Whether this node has met the region: it is linked to a seed (when it has
    /// seeds), and every member it heard of has been linked at least once or has had a
    /// failure timeout to answer. Until then its ring may name it owner of channels
    /// that a member it has not met yet still sequences, so it must not take any over.
    pub settled: bool,
}

#[derive(Debug)]
struct Known {
    info: MemberInfo,
    linked: bool,
    left: bool,
    /// Linked at least once in this incarnation: a later loss is a death, learned
    /// from the link, not a member still to meet.
    ever_linked: bool,
    /// When this node first heard of this incarnation (ms).
    learned_ms: u64,
}

#[derive(Debug)]
pub struct Membership {
    me: MemberInfo,
    known: HashMap<String, Known>,
    version: u64,
    settled: bool,
}

impl Membership {
    pub fn new(me: MemberInfo) -> Self {
        Self {
            me,
            known: HashMap::new(),
            version: 1,
            settled: false,
        }
    }

    pub fn me(&self) -> &MemberInfo {
        &self.me
    }

    /// Records a member heard of through a hello or gossip. Older incarnations and
    /// members that left in that incarnation are ignored.
    pub fn learn(&mut self, info: MemberInfo, now_ms: u64) {
        if info.id == self.me.id {
            return;
        }
        match self.known.get_mut(&info.id) {
            Some(known) if info.incarnation <= known.info.incarnation => {}
            Some(known) => {
                known.info = info;
                known.left = false;
                known.ever_linked = false;
                known.learned_ms = now_ms;
            }
            None => {
                let id = info.id.clone();
                let known = Known {
                    info,
                    linked: false,
                    left: false,
                    ever_linked: false,
                    learned_ms: now_ms,
                };
                self.known.insert(id, known);
            }
        }
    }

    /// A link to `info` is up. Returns whether the live set changed.
    pub fn link_up(&mut self, info: MemberInfo, now_ms: u64) -> bool {
        self.learn(info.clone(), now_ms);
        let known = self.known.get_mut(&info.id).expect("learned above");
        known.info = info;
        known.left = false;
        known.ever_linked = true;
        let changed = !known.linked;
        known.linked = true;
        if changed {
            self.version += 1;
        }
        changed
    }

    /// The link to `id` is gone. Returns whether the live set changed.
    pub fn link_down(&mut self, id: &str) -> bool {
        let Some(known) = self.known.get_mut(id) else {
            return false;
        };
        let changed = known.linked;
        known.linked = false;
        if changed {
            self.version += 1;
        }
        changed
    }

    /// `id` announced it is leaving; it is not dialed again in this incarnation.
    pub fn left(&mut self, id: &str, incarnation: u64) -> bool {
        let Some(known) = self.known.get_mut(id) else {
            return false;
        };
        if known.info.incarnation != incarnation {
            return false;
        }
        known.left = true;
        self.link_down(id);
        // The known count shrank, which changes the quorum, so the view changed.
        self.version += 1;
        true
    }

    /// Recomputes whether this node has met the region (see [`MeshView::settled`]).
    /// Returns whether that changed.
    pub fn refresh_settled(&mut self, joined: bool, now_ms: u64, grace_ms: u64) -> bool {
        let met = |k: &Known| {
            k.left || k.linked || k.ever_linked || now_ms.saturating_sub(k.learned_ms) >= grace_ms
        };
        let settled = joined && self.known.values().all(met);
        let changed = settled != self.settled;
        if changed {
            self.settled = settled;
            self.version += 1;
        }
        changed
    }

    /// Members known but not linked, which the transport should keep dialing.
    pub fn to_dial(&self) -> Vec<MemberInfo> {
        self.known
            .values()
            .filter(|k| !k.linked && !k.left)
            .map(|k| k.info.clone())
            .collect()
    }

    /// Members to tell others about: this node and every member it is linked to.
    pub fn gossip(&self) -> Vec<MemberInfo> {
        self.view().live.into_values().collect()
    }

    pub fn view(&self) -> MeshView {
        let mut live: BTreeMap<_, _> = self
            .known
            .values()
            .filter(|k| k.linked)
            .map(|k| (k.info.id.clone(), k.info.clone()))
            .collect();
        live.insert(self.me.id.clone(), self.me.clone());
        let known = 1 + self.known.values().filter(|k| !k.left).count();
        MeshView {
            version: self.version,
            live,
            known,
            settled: self.settled,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(id: &str, incarnation: u64) -> MemberInfo {
        MemberInfo {
            id: id.into(),
            region: "r".into(),
            mesh: "127.0.0.1:1".parse().unwrap(),
            client: "127.0.0.1:2".parse().unwrap(),
            bridge: None,
            incarnation,
        }
    }

    #[test]
    fn live_set_follows_links_and_versions_grow() {
        let mut m = Membership::new(member("a", 1));
        let v0 = m.view().version;
        m.learn(member("b", 1), 0);
        assert_eq!(m.view().live.len(), 1, "heard of is not live");
        assert_eq!(m.to_dial().len(), 1);

        assert!(m.link_up(member("b", 1), 0));
        assert!(
            !m.link_up(member("b", 1), 0),
            "a second link changes nothing"
        );
        assert_eq!(m.view().live.keys().collect::<Vec<_>>(), ["a", "b"]);
        assert!(m.to_dial().is_empty());

        assert!(m.link_down("b"));
        assert!(m.view().version > v0 + 1);
        assert_eq!(m.to_dial().len(), 1, "a lost member is dialed again");
    }

    #[test]
    fn settled_waits_for_members_heard_of_until_met_or_timed_out() {
        let mut m = Membership::new(member("a", 1));
        assert!(
            !m.refresh_settled(false, 0, 1000) && !m.view().settled,
            "not joined yet"
        );
        assert!(m.refresh_settled(true, 0, 1000) && m.view().settled);

        m.learn(member("c", 1), 100);
        assert!(
            m.refresh_settled(true, 100, 1000) && !m.view().settled,
            "c not met yet"
        );
        m.link_up(member("c", 1), 200);
        assert!(m.refresh_settled(true, 200, 1000) && m.view().settled);
        m.link_down("c");
        assert!(
            !m.refresh_settled(true, 300, 1000),
            "a lost member was met: a death"
        );

        m.learn(member("d", 1), 400);
        assert!(m.refresh_settled(true, 400, 1000) && !m.view().settled);
        assert!(
            m.refresh_settled(true, 1400, 1000) && m.view().settled,
            "d had its time"
        );
    }

    #[test]
    fn a_member_that_left_is_not_dialed_until_it_restarts() {
        let mut m = Membership::new(member("a", 1));
        m.link_up(member("b", 5), 0);
        assert!(m.left("b", 5));
        assert!(m.to_dial().is_empty());

        m.learn(member("b", 4), 0);
        assert!(m.to_dial().is_empty(), "old news is ignored");
        m.learn(member("b", 6), 0);
        assert_eq!(m.to_dial().len(), 1, "a new incarnation is welcome");
    }
}
