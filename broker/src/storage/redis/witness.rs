//! What this node has seen of each namespace's incarnations, so that Redis going back in
//! time never makes it hand out an `(epoch, offset)` pair twice (`docs/cluster.md`,
//! "Nodes are witnesses").
//!
//! Redis can come back older than what the nodes saw: a restart from an RDB snapshot, a
//! failover to a replica without the tail, the same snapshot restored twice. The instance
//! marker cannot tell (the snapshot holds the marker too), and nothing kept in Redis can:
//! it goes back with the rest. The nodes remember instead, per namespace, the epoch they
//! follow, the highest `next` they saw under it, and the epochs they saw replaced. When
//! Redis shows a lower `next` under the epoch a node follows, or an epoch the node saw
//! replaced, the node gives the namespace a fresh epoch in Redis (a compare-and-set
//! script: only if Redis still shows what the node judged), so offsets handed out before
//! are never handed out again under the same epoch, and resuming clients are told
//! (`truncated`, reason `epoch`).
//!
//! A node's memory is only as long as its life: a restore seen by no running node is not
//! caught (`docs/cluster.md`).

use std::collections::HashMap;

/// Epochs remembered as replaced, per namespace (the newest ones).
const RETIRED: usize = 8;

/// What Redis shows against what this node saw.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Verdict {
    /// Nothing went back.
    Fine,
    /// Redis went back: `epoch` must be replaced if Redis still shows it with a `next`
    /// below `min_next` (`u64::MAX`: whatever its `next`).
    Regressed { epoch: String, min_next: u64 },
}

#[derive(Debug, Default)]
struct Seen {
    epoch: String,
    next: u64,
    retired: Vec<String>,
    /// Deleted, or already reported lost: not owed a re-creation, so not in `names`
    /// (its epochs are still remembered) until it is seen live again.
    gone: bool,
}

/// Per namespace: the epoch followed, its highest `next` seen, the epochs seen replaced.
#[derive(Debug, Default)]
pub(super) struct Witness {
    seen: HashMap<String, Seen>,
}

impl Witness {
    /// Every namespace name seen live and not gone since, sorted.
    pub(super) fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .seen
            .iter()
            .filter(|(_, s)| !s.gone)
            .map(|(name, _)| name.clone())
            .collect();
        names.sort();
        names
    }

    /// Notes that `ns` was deleted, or that its loss was reported: until seen live again
    /// it is left out of [`Witness::names`] (a deleted namespace is not owed a
    /// re-creation, and a loss is reported once), its epochs still remembered.
    pub(super) fn gone(&mut self, ns: &str) {
        if let Some(seen) = self.seen.get_mut(ns) {
            seen.gone = true;
        }
    }

    /// Records that Redis shows `epoch` with `next` for `ns`, and judges it.
    pub(super) fn observe(&mut self, ns: &str, epoch: &str, next: u64) -> Verdict {
        let seen = self.seen.entry(ns.to_owned()).or_default();
        seen.gone = false;
        if seen.epoch.is_empty() {
            seen.epoch = epoch.to_owned();
            seen.next = next;
            return Verdict::Fine;
        }
        if seen.epoch == epoch {
            if next < seen.next {
                return Verdict::Regressed {
                    epoch: epoch.to_owned(),
                    min_next: seen.next,
                };
            }
            seen.next = next;
            return Verdict::Fine;
        }
        if seen.retired.iter().any(|e| e == epoch) {
            return Verdict::Regressed {
                epoch: epoch.to_owned(),
                min_next: u64::MAX,
            };
        }
        let old = std::mem::replace(&mut seen.epoch, epoch.to_owned());
        seen.retired.push(old);
        if seen.retired.len() > RETIRED {
            seen.retired.remove(0);
        }
        seen.next = next;
        Verdict::Fine
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lower_next_or_a_replaced_epoch_is_a_regression_and_the_rest_is_not() {
        let mut w = Witness::default();
        assert_eq!(w.observe("x", "e1", 5), Verdict::Fine);
        assert_eq!(w.observe("x", "e1", 10), Verdict::Fine);
        assert_eq!(
            w.observe("x", "e1", 5),
            Verdict::Regressed {
                epoch: "e1".into(),
                min_next: 10
            }
        );
        assert_eq!(w.observe("x", "e2", 5), Verdict::Fine);
        assert_eq!(w.observe("x", "e2", 8), Verdict::Fine);
        assert_eq!(
            w.observe("x", "e1", 5),
            Verdict::Regressed {
                epoch: "e1".into(),
                min_next: u64::MAX
            }
        );
        // A new incarnation may start lower: another epoch, not a regression.
        assert_eq!(w.observe("x", "e3", 0), Verdict::Fine);
        assert_eq!(w.observe("y", "e1", 0), Verdict::Fine);
        for i in 0..=RETIRED {
            assert_eq!(w.observe("z", &format!("z{i}"), 0), Verdict::Fine);
        }
        assert!(matches!(w.observe("z", "z1", 0), Verdict::Regressed { .. }));
    }
}
