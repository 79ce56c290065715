//! One breaker per Redis, or per Cluster node: a key's calls are skipped
//! only while the node serving its slot is failing, so one master's
//! failover leaves every other master's keys decided.
//!
//! On Cluster the store keeps its own map of slots to masters, read with
//! `CLUSTER SLOTS` when the store starts, after a `MOVED`, and every 200 ms
//! while a node's breaker is open: once a replica is promoted, the map
//! names it and its slots' keys go to it, with a breaker of its own,
//! without waiting for the failed node's cool-down.

use std::sync::Arc;
use std::time::Duration;

use super::breaker::Breaker;

/// The breakers of a store.
pub(crate) struct Breakers {
    #[cfg(feature = "redis-cluster")]
    threshold: u32,
    #[cfg(feature = "redis-cluster")]
    cool_down: Duration,
    /// Standalone and Sentinel: the one breaker. Cluster: for slots whose
    /// master the map does not know yet.
    one: Arc<Breaker>,
    #[cfg(feature = "redis-cluster")]
    cluster: Option<cluster::Nodes>,
}

impl Breakers {
    pub(crate) fn new(threshold: u32, cool_down: Duration, cluster: bool) -> Self {
        let _ = cluster;
        Self {
            #[cfg(feature = "redis-cluster")]
            threshold,
            #[cfg(feature = "redis-cluster")]
            cool_down,
            one: Arc::new(Breaker::new(threshold, cool_down)),
            #[cfg(feature = "redis-cluster")]
            cluster: cluster.then(cluster::Nodes::default),
        }
    }

    /// The breaker for keys of `slot` (for `None`, or off Cluster, the one
    /// breaker).
    pub(crate) fn get(&self, slot: Option<u16>) -> Arc<Breaker> {
        #[cfg(feature = "redis-cluster")]
        if let (Some(nodes), Some(slot)) = (&self.cluster, slot) {
            if let Some(b) = nodes.breaker(slot) {
                return b;
            }
        }
        let _ = slot;
        Arc::clone(&self.one)
    }

    /// Whether breakers are per node (the store is on Cluster).
    pub(crate) fn per_node(&self) -> bool {
        #[cfg(feature = "redis-cluster")]
        return self.cluster.is_some();
        #[cfg(not(feature = "redis-cluster"))]
        false
    }

    #[cfg(feature = "redis-cluster")]
    pub(crate) fn nodes(&self) -> Option<&cluster::Nodes> {
        self.cluster.as_ref()
    }

    #[cfg(feature = "redis-cluster")]
    pub(crate) fn make(&self) -> Breaker {
        Breaker::new(self.threshold, self.cool_down)
    }
}

/// The Redis Cluster hash slot of a key whose hash tag is `tag`.
pub(crate) fn slot(tag: &[u8]) -> u16 {
    crc16(tag) & 0x3fff
}

/// CRC-16/XMODEM, as Redis Cluster hashes keys.
fn crc16(bytes: &[u8]) -> u16 {
    const TABLE: [u16; 256] = {
        let mut table = [0_u16; 256];
        let mut i = 0;
        while i < 256 {
            let mut crc = (i as u16) << 8;
            let mut bit = 0;
            while bit < 8 {
                crc = if crc & 0x8000 != 0 {
                    (crc << 1) ^ 0x1021
                } else {
                    crc << 1
                };
                bit += 1;
            }
            table[i] = crc;
            i += 1;
        }
        table
    };
    bytes.iter().fold(0_u16, |crc, &b| {
        (crc << 8) ^ TABLE[usize::from((crc >> 8) as u8 ^ b)]
    })
}

#[cfg(feature = "redis-cluster")]
pub(crate) mod cluster {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, PoisonError, RwLock, Weak};
    use std::time::Duration;

    use redis::Value;
    use redis::cluster_routing::{RoutingInfo, SingleNodeRoutingInfo};

    use super::super::Inner;
    use super::super::breaker::Breaker;

    const SLOTS: usize = 16_384;
    const UNKNOWN: u16 = u16::MAX;
    /// How often the map is read again while a node's breaker is open.
    const REFRESH_EVERY: Duration = Duration::from_millis(200);

    /// The map of slots to masters, and each master's breaker.
    pub(crate) struct Nodes {
        map: RwLock<Map>,
        refreshing: AtomicBool,
    }

    impl Default for Nodes {
        fn default() -> Self {
            Self {
                map: RwLock::new(Map {
                    slots: vec![UNKNOWN; SLOTS],
                    nodes: Vec::new(),
                }),
                refreshing: AtomicBool::new(false),
            }
        }
    }

    struct Map {
        /// Each slot's master, an index into `nodes`.
        slots: Vec<u16>,
        /// Every master seen, `host:port`, with its breaker. A master that
        /// left keeps its entry: few ever come and go.
        nodes: Vec<(String, Arc<Breaker>)>,
    }

    impl Nodes {
        pub(super) fn breaker(&self, slot: u16) -> Option<Arc<Breaker>> {
            let map = self.map.read().unwrap_or_else(PoisonError::into_inner);
            let i = *map.slots.get(usize::from(slot))?;
            map.nodes.get(usize::from(i)).map(|(_, b)| Arc::clone(b))
        }

        /// The address of the master the map names for `slot`.
        #[allow(dead_code)]
        pub(crate) fn owner(&self, slot: u16) -> Option<String> {
            let map = self.map.read().unwrap_or_else(PoisonError::into_inner);
            let i = *map.slots.get(usize::from(slot))?;
            map.nodes.get(usize::from(i)).map(|(a, _)| a.clone())
        }

        fn known(&self) -> bool {
            let map = self.map.read().unwrap_or_else(PoisonError::into_inner);
            !map.nodes.is_empty()
        }

        fn any_open(&self) -> bool {
            let map = self.map.read().unwrap_or_else(PoisonError::into_inner);
            map.nodes.iter().any(|(_, b)| b.is_open())
        }

        /// Takes in a `CLUSTER SLOTS` reply; a master already known keeps
        /// its breaker.
        fn update(&self, reply: &Value, make: impl Fn() -> Breaker) {
            let Value::Array(ranges) = reply else { return };
            let mut map = self.map.write().unwrap_or_else(PoisonError::into_inner);
            let mut slots = vec![UNKNOWN; SLOTS];
            for range in ranges {
                let Value::Array(fields) = range else {
                    continue;
                };
                let (Some(Value::Int(start)), Some(Value::Int(end)), Some(Value::Array(master))) =
                    (fields.first(), fields.get(1), fields.get(2))
                else {
                    continue;
                };
                let host = match master.first() {
                    Some(Value::BulkString(b)) => String::from_utf8_lossy(b).into_owned(),
                    Some(Value::SimpleString(s)) => s.clone(),
                    _ => continue,
                };
                let Some(Value::Int(port)) = master.get(1) else {
                    continue;
                };
                let addr = format!("{host}:{port}");
                let i = match map.nodes.iter().position(|(a, _)| *a == addr) {
                    Some(i) => i,
                    None => {
                        map.nodes.push((addr, Arc::new(make())));
                        map.nodes.len() - 1
                    }
                };
                let Ok(i) = u16::try_from(i) else { continue };
                let (Ok(start), Ok(end)) = (usize::try_from(*start), usize::try_from(*end)) else {
                    continue;
                };
                for s in slots.iter_mut().take(end.min(SLOTS - 1) + 1).skip(start) {
                    *s = i;
                }
            }
            map.slots = slots;
        }
    }

    /// Reads the map again, in a task of its own, unless one is at it;
    /// and again every [`REFRESH_EVERY`] while a breaker is open.
    pub(crate) fn refresh(inner: &Inner, conn: &redis::cluster_async::ClusterConnection) {
        let Some(nodes) = inner.breakers.nodes() else {
            return;
        };
        if nodes.refreshing.swap(true, Ordering::AcqRel) {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            nodes.refreshing.store(false, Ordering::Release);
            return;
        };
        let weak: Weak<Inner> = inner.me.clone();
        let mut conn = conn.clone();
        runtime.spawn(async move {
            loop {
                let Some(inner) = weak.upgrade() else { return };
                let Some(nodes) = inner.breakers.nodes() else {
                    return;
                };
                let ask = conn.route_command(
                    redis::cmd("CLUSTER").arg("SLOTS").clone(),
                    RoutingInfo::SingleNode(SingleNodeRoutingInfo::Random),
                );
                if let Ok(Ok(reply)) = tokio::time::timeout(Duration::from_secs(1), ask).await {
                    nodes.update(&reply, || inner.breakers.make());
                }
                if nodes.known() && !nodes.any_open() {
                    nodes.refreshing.store(false, Ordering::Release);
                    return;
                }
                drop(inner);
                tokio::time::sleep(REFRESH_EVERY).await;
            }
        });
    }

    /// Whether the map was never read.
    pub(crate) fn unknown(inner: &Inner) -> bool {
        inner.breakers.nodes().is_some_and(|n| !n.known())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_redis_clusters() {
        // CLUSTER KEYSLOT answers.
        assert_eq!(slot(b"123456789"), 12_739);
        assert_eq!(slot(b"foo"), 12_182);
        assert_eq!(slot(b"a"), 15_495);
        assert_eq!(slot(b""), 0);
    }
}
