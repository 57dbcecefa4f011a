//! A hybrid logical clock (Kulkarni, Demirbas et al., "Logical Physical Clocks and Consistent
//! Snapshots in Globally Distributed Databases", 2014): versions for replicated writes.
//!
//! A [`Timestamp`] is the wall-clock millisecond the clock has reached, a logical counter that
//! orders events within (or beyond) that millisecond, and the node that made it. Timestamps are
//! totally ordered in that field order, so two different writes never tie and every node picks
//! the same winner.
//!
//! The clock does no I/O: the caller passes the wall time in. Its promises:
//! - [`Hlc::now`] is strictly greater than every timestamp this clock returned or observed
//!   before, even if the wall clock steps back;
//! - after [`Hlc::observe`] of a remote timestamp, the next [`Hlc::now`] is greater than it
//!   (causality: a write made after seeing another one wins over it);
//! - the physical part stays close to the wall clock: it is the maximum of the wall time and
//!   the physical parts seen, and only the counter grows while the wall clock lags.

use serde::{Deserialize, Serialize};

/// A version: compared by physical time, then counter, then node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize)]
pub struct Timestamp {
    /// Unix milliseconds (the largest wall time the clock has seen).
    pub physical_ms: u64,
    /// Orders events that share `physical_ms`.
    pub logical: u32,
    /// The node that made it ([`node_tag`] of its cluster id; 0 for a node that has none, and
    /// for versions read from data written before versions existed).
    pub node: u64,
}

impl Timestamp {
    /// The version of a value written before versions existed: its wall-clock creation time,
    /// counter 0, node 0 — older than anything made at or after that millisecond.
    pub fn legacy(created_ms: u64) -> Timestamp {
        Timestamp {
            physical_ms: created_ms,
            logical: 0,
            node: 0,
        }
    }
}

impl std::fmt::Display for Timestamp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}@{:016x}", self.physical_ms, self.logical, self.node)
    }
}

/// The tiebreak number of a node id: FNV-1a, stable across builds and platforms (it is kept on
/// disk and compared between nodes, so it must never depend on the std hasher). Two ids with
/// the same tag would only matter for two writes in the same millisecond with the same counter.
pub fn node_tag(node_id: &str) -> u64 {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    node_id
        .bytes()
        .fold(OFFSET, |h, b| (h ^ u64::from(b)).wrapping_mul(PRIME))
}

/// One node's clock.
#[derive(Debug, Clone)]
pub struct Hlc {
    node: u64,
    /// The last timestamp returned or observed (its node field unused).
    physical_ms: u64,
    logical: u32,
}

impl Hlc {
    pub fn new(node: u64) -> Hlc {
        Hlc {
            node,
            physical_ms: 0,
            logical: 0,
        }
    }

    /// The node tag stamped on new timestamps.
    pub fn node(&self) -> u64 {
        self.node
    }

    /// Changes the node tag (the node learned its cluster id); the clock keeps its position.
    pub fn set_node(&mut self, node: u64) {
        self.node = node;
    }

    /// A new timestamp for a local event (a send, in the paper's terms).
    pub fn now(&mut self, wall_ms: u64) -> Timestamp {
        if wall_ms > self.physical_ms {
            self.physical_ms = wall_ms;
            self.logical = 0;
        } else {
            self.tick();
        }
        self.stamp()
    }

    /// Takes in a timestamp received from another node (or read from disk), so that every
    /// later [`Hlc::now`] is greater than it. Returns by how many milliseconds `remote` is
    /// ahead of `wall_ms` (0 if it is not), for the caller to warn about a peer's clock.
    pub fn observe(&mut self, remote: Timestamp, wall_ms: u64) -> u64 {
        let lead = remote.physical_ms.saturating_sub(wall_ms);
        let physical = self.physical_ms.max(remote.physical_ms).max(wall_ms);
        let ours = physical == self.physical_ms;
        let theirs = physical == remote.physical_ms;
        match (ours, theirs) {
            (true, true) => {
                self.logical = self.logical.max(remote.logical);
                self.tick();
            }
            (true, false) => self.tick(),
            (false, true) => {
                self.physical_ms = physical;
                self.logical = remote.logical;
                self.tick();
            }
            (false, false) => {
                self.physical_ms = physical;
                self.logical = 0;
            }
        }
        lead
    }

    /// The counter is bounded: past its maximum, the clock moves to the next millisecond
    /// (still monotonic; the physical part then runs at most a few ms ahead of the wall).
    fn tick(&mut self) {
        match self.logical.checked_add(1) {
            Some(l) => self.logical = l,
            None => {
                self.physical_ms = self.physical_ms.saturating_add(1);
                self.logical = 0;
            }
        }
    }

    fn stamp(&self) -> Timestamp {
        Timestamp {
            physical_ms: self.physical_ms,
            logical: self.logical,
            node: self.node,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn monotonic_when_the_wall_clock_goes_backwards() {
        let mut clock = Hlc::new(1);
        let a = clock.now(10_000);
        let b = clock.now(10_000);
        let c = clock.now(9_000); // the wall clock stepped back a second
        let d = clock.now(9_500);
        let e = clock.now(10_001);
        assert!(a < b && b < c && c < d && d < e, "{a} {b} {c} {d} {e}");
        assert_eq!(c.physical_ms, 10_000, "the physical part does not follow the wall back");
        assert_eq!(
            (e.physical_ms, e.logical),
            (10_001, 0),
            "and resumes once the wall passes it"
        );
    }

    #[test]
    fn a_timestamp_made_after_observing_a_remote_is_greater() {
        let mut here = Hlc::new(1);
        let mut there = Hlc::new(2);
        // The remote clock runs ahead (another host, or a counter far up).
        let remote = there.now(50_000);
        let remote = Timestamp { logical: 7, ..remote };
        here.now(40_000);
        assert_eq!(here.observe(remote, 40_001), 9_999, "the lead is reported");
        let next = here.now(40_002);
        assert!(next > remote, "{next} > {remote}");
        assert_eq!(next.physical_ms, 50_000);
        // Observing an older remote still moves the counter, so causality holds too.
        let old = Timestamp::legacy(1);
        here.observe(old, 40_003);
        assert!(here.now(40_003) > next);
        // Equal physical parts: the larger counter wins, plus one.
        let mut a = Hlc::new(1);
        a.now(100);
        a.observe(
            Timestamp {
                physical_ms: 100,
                logical: 5,
                node: 2,
            },
            90,
        );
        assert_eq!(a.now(90).logical, 7);
        // A remote ahead of both our clock and the wall: its counter plus one.
        let mut b = Hlc::new(1);
        b.observe(
            Timestamp {
                physical_ms: 500,
                logical: 3,
                node: 2,
            },
            100,
        );
        assert_eq!(
            b.now(100),
            Timestamp {
                physical_ms: 500,
                logical: 5,
                node: 1
            }
        );
    }

    #[test]
    fn total_order_with_the_node_as_tiebreak() {
        let mut a = Hlc::new(node_tag("AAAAAAAAAA"));
        let mut b = Hlc::new(node_tag("BBBBBBBBBB"));
        let x = a.now(1_000);
        let y = b.now(1_000);
        assert_ne!(x, y, "the same millisecond on two nodes is not a tie");
        assert_eq!((x.physical_ms, x.logical), (y.physical_ms, y.logical));
        assert_eq!(x.cmp(&y), x.node.cmp(&y.node));
        // Physical first, then counter, then node.
        let t = |p, l, n| Timestamp {
            physical_ms: p,
            logical: l,
            node: n,
        };
        assert!(t(1, 9, 9) < t(2, 0, 0));
        assert!(t(2, 0, 9) < t(2, 1, 0));
        assert!(t(2, 1, 0) < t(2, 1, 1));
        assert!(
            Timestamp::legacy(2) < t(2, 0, 1),
            "a legacy version loses to a versioned one of its ms"
        );
    }

    #[test]
    fn node_tags_are_stable() {
        // FNV-1a 64 test vectors: the tag is part of stored and exchanged versions.
        assert_eq!(node_tag(""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(node_tag("a"), 0xaf63_dc4c_8601_ec8c);
        assert_ne!(node_tag("K7QX2M9RTP"), node_tag("K7QX2M9RTQ"));
    }

    #[test]
    fn counter_overflow_moves_to_the_next_millisecond() {
        let mut clock = Hlc::new(1);
        clock.observe(
            Timestamp {
                physical_ms: 10,
                logical: u32::MAX,
                node: 2,
            },
            5,
        );
        let t = clock.now(5);
        assert_eq!(t.physical_ms, 11);
        assert!(t.logical < 5, "the counter started again");
        assert!(clock.now(5) > t);
    }
}
