//! A checker for cluster scenarios: records every publish the broker acknowledged and every
//! delivery, and asserts the promises of DESIGN.md §1.1–1.2 afterwards:
//!
//! - nothing acknowledged is missing at a persistent subscriber (QoS 1 may duplicate);
//! - a QoS 2 message is delivered exactly once;
//! - per publisher and topic, messages arrive in publish order (a redelivery of an earlier one
//!   may come again later; what counts is the order of first arrivals);
//! - a retained message read back equals the last acknowledged value of its topic.
//!
//! Payloads are `"<publisher>:<n>"`, `n` counting up per publisher from 0.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Mutex;

/// One message: (publisher, topic, n).
pub type Key = (String, String, u64);

#[derive(Default)]
struct State {
    /// Acknowledged publishes with their QoS, in acknowledgement order.
    acked: Vec<(Key, u8)>,
    /// Last acknowledged retained value per topic (`None`: deleted).
    retained: HashMap<String, Option<String>>,
    /// Per subscriber: deliveries in arrival order, with the QoS they arrived with.
    delivered: HashMap<String, Vec<(Key, u8)>>,
}

#[derive(Default)]
pub struct Checker {
    state: Mutex<State>,
}

/// The payload of message `n` of `publisher`.
pub fn payload(publisher: &str, n: u64) -> String {
    format!("{publisher}:{n}")
}

fn parse(payload: &[u8]) -> Option<(String, u64)> {
    let text = std::str::from_utf8(payload).ok()?;
    let (publisher, n) = text.rsplit_once(':')?;
    Some((publisher.to_owned(), n.parse().ok()?))
}

/// Whether MQTT filter `filter` matches `topic` (enough for tests: `+` and `#`).
pub fn matches(filter: &str, topic: &str) -> bool {
    let mut f = filter.split('/');
    let mut t = topic.split('/');
    loop {
        match (f.next(), t.next()) {
            (Some("#"), _) => return true,
            (Some("+"), Some(_)) => {}
            (Some(a), Some(b)) if a == b => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

impl Checker {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The broker acknowledged (PUBACK / PUBCOMP) message `n` of `publisher` on `topic`.
    pub fn acked(&self, publisher: &str, topic: &str, n: u64, qos: u8, retain: bool) {
        let mut s = self.lock();
        s.acked.push(((publisher.into(), topic.into(), n), qos));
        if retain {
            s.retained.insert(topic.into(), Some(payload(publisher, n)));
        }
    }

    /// `subscriber` received a PUBLISH on `topic` with this payload and QoS. Payloads not made
    /// by [`payload`] (probes) are ignored.
    pub fn delivered(&self, subscriber: &str, topic: &str, payload: &[u8], qos: u8) {
        if let Some((publisher, n)) = parse(payload) {
            self.lock()
                .delivered
                .entry(subscriber.into())
                .or_default()
                .push(((publisher, topic.into(), n), qos));
        }
    }

    /// How many of `publisher`'s messages `subscriber` has received (probes included).
    pub fn delivered_from(&self, subscriber: &str, publisher: &str) -> usize {
        self.lock()
            .delivered
            .get(subscriber)
            .map_or(0, |d| d.iter().filter(|((p, _, _), _)| p == publisher).count())
    }

    /// How many publishes were acknowledged so far.
    pub fn acked_count(&self) -> usize {
        self.lock().acked.len()
    }

    /// The acknowledged messages matching `filter` that `subscriber` has not received.
    pub fn missing(&self, subscriber: &str, filter: &str) -> Vec<Key> {
        self.missing_among_first(subscriber, filter, usize::MAX)
    }

    /// [`Checker::missing`] among the first `n` acknowledged publishes.
    pub fn missing_among_first(&self, subscriber: &str, filter: &str, n: usize) -> Vec<Key> {
        let s = self.lock();
        let got: HashSet<&Key> = s
            .delivered
            .get(subscriber)
            .map(|d| d.iter().map(|(k, _)| k).collect())
            .unwrap_or_default();
        s.acked
            .iter()
            .take(n)
            .filter(|((_, topic, _), _)| matches(filter, topic))
            .filter(|(k, _)| !got.contains(k))
            .map(|(k, _)| k.clone())
            .collect()
    }

    /// Asserts that none of the first `n` acknowledged messages matching `filter` is missing at
    /// `subscriber`.
    fn assert_none_missing(&self, subscriber: &str, filter: &str, n: usize) {
        let missing = self.missing_among_first(subscriber, filter, n);
        assert!(
            missing.is_empty(),
            "{subscriber}: {} acknowledged message(s) never arrived, first {:?}",
            missing.len(),
            &missing[..missing.len().min(10)]
        );
    }

    /// Asserts every promise for `subscriber` (a persistent subscriber of `filter` since before
    /// the first publish): nothing acknowledged missing, QoS 2 exactly once, order per
    /// publisher and topic. Returns the number of deliveries and of duplicates.
    pub fn check_subscriber(&self, subscriber: &str, filter: &str) -> (usize, usize) {
        self.check_subscriber_up_to(subscriber, filter, usize::MAX)
    }

    /// [`Checker::check_subscriber`], with only the first `n` acknowledged publishes required.
    pub fn check_subscriber_up_to(&self, subscriber: &str, filter: &str, n: usize) -> (usize, usize) {
        self.assert_none_missing(subscriber, filter, n);
        let s = self.lock();
        let deliveries = s.delivered.get(subscriber).cloned().unwrap_or_default();
        let mut seen: HashSet<&Key> = HashSet::new();
        let mut last: BTreeMap<(&str, &str), u64> = BTreeMap::new();
        let mut duplicates = 0;
        for (key, qos) in &deliveries {
            if !seen.insert(key) {
                assert!(*qos < 2, "{subscriber}: QoS 2 message {key:?} delivered twice");
                duplicates += 1;
                continue;
            }
            let (publisher, topic, n) = key;
            if let Some(prev) = last.insert((publisher, topic), *n) {
                assert!(
                    *n > prev,
                    "{subscriber}: {publisher}'s message {n} on {topic} arrived after {prev}"
                );
            }
        }
        (deliveries.len(), duplicates)
    }

    /// Only the first promise of [`Checker::check_subscriber`], nothing acknowledged missing:
    /// for a subscriber whose session's copies were merged after a node failure, where order and
    /// QoS 2 exactly once are not promised. Returns the number of deliveries and of duplicates.
    pub fn check_nothing_missing(&self, subscriber: &str, filter: &str) -> (usize, usize) {
        self.assert_none_missing(subscriber, filter, usize::MAX);
        let s = self.lock();
        let deliveries = s.delivered.get(subscriber).cloned().unwrap_or_default();
        let distinct: HashSet<&Key> = deliveries.iter().map(|(k, _)| k).collect();
        (deliveries.len(), deliveries.len() - distinct.len())
    }

    /// How many of `publisher`'s publishes were acknowledged so far.
    pub fn acked_from(&self, publisher: &str) -> usize {
        self.lock().acked.iter().filter(|((p, _, _), _)| p == publisher).count()
    }

    /// Asserts that the retained message read on `topic` (`None`: none) is the last one
    /// acknowledged there.
    pub fn check_retained(&self, topic: &str, read: Option<&[u8]>) {
        let s = self.lock();
        let expected = s.retained.get(topic).cloned().flatten();
        let read = read.map(|r| String::from_utf8_lossy(r).into_owned());
        assert_eq!(read, expected, "retained message of {topic}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_checker_accepts_duplicates_and_catches_gaps_and_reordering() {
        assert!(matches("rep/#", "rep/a/b") && matches("a/+/c", "a/b/c") && !matches("a/+", "a/b/c"));
        let c = Checker::default();
        for n in 0..3 {
            c.acked("p", "t", n, 1, false);
        }
        for n in [0, 1, 0, 1, 2] {
            c.delivered("s", "t", payload("p", n).as_bytes(), 1);
        }
        assert_eq!(c.check_subscriber("s", "#"), (5, 2));
        assert_eq!(c.missing("other", "t").len(), 3);
        c.delivered("r", "t", payload("p", 1).as_bytes(), 1);
        c.delivered("r", "t", payload("p", 0).as_bytes(), 1);
        c.delivered("r", "t", payload("p", 2).as_bytes(), 1);
        let reordered = std::panic::catch_unwind(|| c.check_subscriber("r", "t"));
        assert!(reordered.is_err());
    }
}
