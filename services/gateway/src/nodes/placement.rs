//! Which nodes hold a new blob: weighted rendezvous hashing over the up
//! nodes with room, so placement is stable and spreads by free space.

use md5::{Digest, Md5};

use super::{NodeError, NodeSet, NodeState};

/// Rendezvous (highest random weight) hash of a node for a blob, as a
/// number in (0, 1): stable, and adding or removing a node only moves the
/// blobs that must move.
fn unit_hash(node: &str, blob: &str) -> f64 {
    let mut h = Md5::new();
    h.update(node.as_bytes());
    h.update([0]);
    h.update(blob.as_bytes());
    let d: [u8; 16] = h.finalize().into();
    let x = u64::from_be_bytes([d[0], d[1], d[2], d[3], d[4], d[5], d[6], d[7]]);
    (x as f64 + 1.0) / (u64::MAX as f64 + 2.0)
}

/// Weighted rendezvous score: nodes with more free space win
/// proportionally more blobs.
fn score(node: &str, blob: &str, weight: f64) -> f64 {
    -weight / unit_hash(node, blob).ln()
}

impl NodeSet {
    /// Whether `node` is up, has reported its space, and has room for
    /// `size` more bytes above the reserve every node keeps.
    pub fn has_room(&self, node: &str, size: u64) -> bool {
        self.snapshot()
            .into_iter()
            .any(|(id, s, st)| id == node && st == NodeState::Up && self.room(&s.usage, size))
    }

    fn room(&self, usage: &insitu_node_api::Usage, size: u64) -> bool {
        // A node that has not reported its space yet gets nothing:
        // "unmeasured" is no promise of room.
        usage.capacity_bytes > 0
            && usage.free_bytes > self.reserve_bytes
            && usage.free_bytes - self.reserve_bytes >= size
    }

    /// Chooses `replicas` distinct up nodes with room for `size` bytes.
    pub fn place(
        &self,
        blob_id: &str,
        replicas: usize,
        size: u64,
    ) -> Result<Vec<String>, NodeError> {
        self.place_excluding(blob_id, replicas, size, &[])
    }

    pub fn place_excluding(
        &self,
        blob_id: &str,
        replicas: usize,
        size: u64,
        exclude: &[String],
    ) -> Result<Vec<String>, NodeError> {
        let snapshot = self.snapshot();
        let up = snapshot
            .iter()
            .filter(|(_, _, st)| *st == NodeState::Up)
            .count();
        let mut candidates: Vec<(f64, String)> = snapshot
            .into_iter()
            .filter(|(id, s, st)| {
                *st == NodeState::Up && !exclude.contains(id) && self.room(&s.usage, size)
            })
            .map(|(id, s, _)| {
                let gib = (s.usage.free_bytes as f64 / (1u64 << 30) as f64).max(1.0 / 1024.0);
                (score(&id, blob_id, gib), id)
            })
            .collect();
        if candidates.len() < replicas || replicas == 0 {
            return Err(if up >= replicas {
                NodeError::NoRoom {
                    size,
                    with_room: candidates.len(),
                    needed: replicas,
                }
            } else {
                NodeError::NotEnoughNodes {
                    up,
                    needed: replicas.max(1),
                }
            });
        }
        candidates.sort_by(|a, b| b.0.partial_cmp(&a.0).unwrap_or(std::cmp::Ordering::Equal));
        Ok(candidates
            .into_iter()
            .take(replicas)
            .map(|(_, id)| id)
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::super::*;
    use insitu_node_api::Usage;

    #[test]
    fn placement_is_stable_and_distinct() {
        let n = NodeSet::new("s".into(), Liveness::default(), 0);
        let usage = Usage {
            capacity_bytes: 1 << 40,
            used_bytes: 0,
            free_bytes: 1 << 40,
            blob_count: 0,
        };
        for i in 0..4 {
            n.set_node(&format!("node-{i}"), "http://127.0.0.1:1");
        }
        // Nodes that have not reported their space get nothing.
        assert!(n.place("blob1", 1, 0).is_err());
        for i in 0..4 {
            n.record_health(&format!("node-{i}"), usage.clone(), vec![], 0);
        }
        let a = n.place("blob1", 2, 0).unwrap();
        assert_eq!(a.len(), 2);
        assert_ne!(a[0], a[1]);
        assert_eq!(a, n.place("blob1", 2, 0).unwrap());
        assert!(n.place("blob1", 5, 0).is_err());
        // Different blobs spread over the nodes.
        let firsts: std::collections::BTreeSet<_> = (0..64)
            .map(|i| n.place(&format!("b{i}"), 1, 0).unwrap()[0].clone())
            .collect();
        assert_eq!(firsts.len(), 4);
    }
}
