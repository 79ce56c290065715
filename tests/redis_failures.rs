//! How `RedisStore` fails: errors told apart by what they mean, the
//! cool-down and its probe, Cluster redirects, a master's failover, and a
//! Sentinel failover, against real `redis-server` processes on 127.0.0.1.
//! Every fault is bounded in time and undone by the test itself.
#![cfg(feature = "redis")]

mod support;

use std::time::{Duration, Instant};

use support::{RedisServer, fresh_key, runtime};
use tower_ratelimit::key::Key;
use tower_ratelimit::store::{Check, RedisStore, Store};
use tower_ratelimit::{Policy, PolicySet, Quota, StoreErrorKind};

fn per_minute(n: u64) -> PolicySet {
    PolicySet::new(vec![Policy::new("p", Quota::per_minute(n))]).unwrap()
}

#[test]
fn a_wrongtype_key_fails_that_request_only_and_never_trips_the_cool_down() {
    let server = RedisServer::start();
    runtime().block_on(async {
        let store = RedisStore::builder()
            .timeout(Duration::from_secs(2))
            .cool_down(2, Duration::from_secs(60))
            .connect(&server.url())
            .await
            .unwrap();
        let set = per_minute(100);
        let bad = fresh_key("wrongtype");
        // Someone else's list where the limiter's state would be.
        let name = store.redis_key(&bad, &set, 0);
        assert!(server.command(&format!("RPUSH {name} x")).starts_with(':'));
        for _ in 0..10 {
            let e = store.decide(Check::new(&bad, &set, 1)).await.unwrap_err();
            assert_eq!(e.kind(), StoreErrorKind::Data, "{e}");
        }
        // Ten data errors with a threshold of two: every other key is
        // decided still.
        for _ in 0..5 {
            let d = store.decide(Check::new(&fresh_key("good"), &set, 1)).await;
            assert!(d.unwrap().is_allowed());
        }
    });
}

#[test]
fn an_endless_cool_down_opens_for_good_without_overflowing() {
    let server = RedisServer::start();
    runtime().block_on(async {
        let store = RedisStore::builder()
            .timeout(Duration::from_millis(200))
            .cool_down(2, Duration::MAX)
            .connect(&server.url())
            .await
            .unwrap();
        let set = per_minute(100);
        let key = fresh_key("endless");
        assert!(store.decide(Check::new(&key, &set, 1)).await.is_ok());
        let stopped = server.stop();
        for _ in 0..2 {
            let e = store.decide(Check::new(&key, &set, 1)).await.unwrap_err();
            assert_eq!(e.kind(), StoreErrorKind::Timeout);
        }
        drop(stopped);
        // Redis is back, but a cool-down of Duration::MAX never ends.
        tokio::time::sleep(Duration::from_millis(100)).await;
        for _ in 0..3 {
            let started = Instant::now();
            let e = store.decide(Check::new(&key, &set, 1)).await.unwrap_err();
            assert_eq!(e.kind(), StoreErrorKind::Unavailable);
            assert!(e.to_string().contains("cooling down"), "{e}");
            // Skipped: a call that went would take the deadline.
            assert!(started.elapsed() < Duration::from_millis(100));
        }
    });
}

#[test]
fn when_the_cool_down_ends_one_request_probes_before_traffic_returns() {
    let server = RedisServer::start();
    runtime().block_on(async {
        let store = RedisStore::builder()
            .timeout(Duration::from_millis(100))
            .cool_down(2, Duration::from_millis(300))
            .connect(&server.url())
            .await
            .unwrap();
        let set = per_minute(100);
        assert!(
            store
                .decide(Check::new(&fresh_key("w"), &set, 1))
                .await
                .is_ok()
        );
        let stopped = server.stop();
        for _ in 0..2 {
            let e = store.decide(Check::new(&fresh_key("t"), &set, 1)).await;
            assert_eq!(e.unwrap_err().kind(), StoreErrorKind::Timeout);
        }
        tokio::time::sleep(Duration::from_millis(350)).await;
        // The cool-down is over and Redis is still stopped: one request
        // probes (and times out), the others are skipped meanwhile.
        let probes: Vec<_> = (0..8)
            .map(|_| {
                let (store, set) = (store.clone(), set.clone());
                tokio::spawn(async move {
                    let started = Instant::now();
                    let r = store.decide(Check::new(&fresh_key("p"), &set, 1)).await;
                    (r.map(|_| ()).map_err(|e| e.kind()), started.elapsed())
                })
            })
            .collect();
        let mut kinds = Vec::new();
        for p in probes {
            kinds.push(p.await.unwrap());
        }
        let timeouts = kinds
            .iter()
            .filter(|(r, _)| *r == Err(StoreErrorKind::Timeout))
            .count();
        assert_eq!(timeouts, 1, "one probe: {kinds:?}");
        assert!(
            kinds
                .iter()
                .filter(|(r, _)| *r == Err(StoreErrorKind::Unavailable))
                .all(|(_, t)| *t < Duration::from_millis(50)),
            "the others fail at once: {kinds:?}"
        );
        // The failed probe opened it again.
        let e = store.decide(Check::new(&fresh_key("t"), &set, 1)).await;
        assert_eq!(e.unwrap_err().kind(), StoreErrorKind::Unavailable);
        drop(stopped);
        tokio::time::sleep(Duration::from_millis(350)).await;
        // Redis answers the next probe, and everything goes again.
        for _ in 0..5 {
            let d = store.decide(Check::new(&fresh_key("after"), &set, 1)).await;
            assert!(d.unwrap().is_allowed());
        }
    });
}

#[cfg(feature = "redis-cluster")]
mod cluster {
    use super::*;
    use support::RedisCluster;

    async fn cluster_store(cluster: &RedisCluster, timeout: Duration) -> RedisStore {
        RedisStore::builder()
            .timeout(timeout)
            .connect_cluster(cluster.urls())
            .await
            .unwrap()
    }

    fn node_id(cluster: &RedisCluster, i: usize) -> String {
        cluster.cli(i, &["CLUSTER", "MYID"])
    }

    #[test]
    fn ask_during_a_slot_migration_and_moved_after_it_are_followed_once_counting_once() {
        let cluster = RedisCluster::start();
        let rt = runtime();
        rt.block_on(async {
            let store = cluster_store(&cluster, Duration::from_secs(2)).await;
            let set = per_minute(5);
            let key = fresh_key("migrating");
            let name = store.redis_key(&key, &set, 0);
            let slot = cluster.slot_of(&name);
            let from = cluster.owner_of_slot(slot).unwrap();
            let to = cluster.masters().into_iter().find(|&i| i != from).unwrap();
            let (from_id, to_id) = (node_id(&cluster, from), node_id(&cluster, to));
            let mut admitted = 0;
            let decide = async |set: &PolicySet| {
                let d = store.decide(Check::new(&key, set, 1)).await.unwrap();
                usize::from(d.is_allowed())
            };
            admitted += decide(&set).await;
            // Migrating: the key is still on `from`.
            let s = slot.to_string();
            assert_eq!(
                cluster.cli(to, &["CLUSTER", "SETSLOT", &s, "IMPORTING", &from_id]),
                "OK"
            );
            assert_eq!(
                cluster.cli(from, &["CLUSTER", "SETSLOT", &s, "MIGRATING", &to_id]),
                "OK"
            );
            admitted += decide(&set).await;
            // Moved to `to`: `from` answers ASK.
            let to_port = cluster.nodes[to].port().to_string();
            let migrated = cluster.cli(
                from,
                &[
                    "MIGRATE",
                    "127.0.0.1",
                    &to_port,
                    "",
                    "0",
                    "5000",
                    "KEYS",
                    &name,
                ],
            );
            assert_eq!(migrated, "OK");
            admitted += decide(&set).await;
            admitted += decide(&set).await;
            // A policy whose key is not on `from` yet: ASK too.
            let other = PolicySet::new(vec![Policy::new("other", Quota::per_minute(5))]).unwrap();
            assert_eq!(decide(&other).await, 1);
            // The slot is `to`'s now: `from` answers MOVED.
            for i in cluster.masters() {
                assert_eq!(
                    cluster.cli(i, &["CLUSTER", "SETSLOT", &s, "NODE", &to_id]),
                    "OK"
                );
            }
            for _ in 0..3 {
                admitted += decide(&set).await;
            }
            assert_eq!(
                admitted, 5,
                "7 requests, 5 admitted: none counted twice or lost"
            );
            assert_eq!(cluster.cli(to, &["EXISTS", &name]), "1");
            assert!(cluster.cli(from, &["EXISTS", &name]).starts_with("MOVED"));
            // The calls went to `to` after ASKING, as ASK asks.
            let stats = cluster.cli(to, &["INFO", "commandstats"]);
            assert!(stats.contains("cmdstat_asking:calls="), "{stats}");
        });
    }

    /// A key of `set` on each master, by node index.
    fn key_per_master(
        cluster: &RedisCluster,
        store: &RedisStore,
        set: &PolicySet,
    ) -> Vec<(usize, Key)> {
        let mut keys: Vec<(usize, Key)> = Vec::new();
        let masters = cluster.masters();
        while keys.len() < masters.len() {
            let key = fresh_key("node");
            let slot = cluster.slot_of(&store.redis_key(&key, set, 0));
            let owner = cluster.owner_of_slot(slot).unwrap();
            if !keys.iter().any(|(o, _)| *o == owner) {
                keys.push((owner, key));
            }
        }
        keys
    }

    #[test]
    fn a_stalled_master_cools_down_its_own_keys_only() {
        let cluster = RedisCluster::start();
        let rt = runtime();
        rt.block_on(async {
            let store = RedisStore::builder()
                .timeout(Duration::from_millis(100))
                .cool_down(3, Duration::from_secs(30))
                .connect_cluster(cluster.urls())
                .await
                .unwrap();
            let set = per_minute(1_000);
            let keys = key_per_master(&cluster, &store, &set);
            for (_, k) in &keys {
                assert!(store.decide(Check::new(k, &set, 1)).await.is_ok());
            }
            let (stalled, stalled_key) = keys[0].clone();
            let _stopped = cluster.nodes[stalled].stop();
            for _ in 0..3 {
                let e = store.decide(Check::new(&stalled_key, &set, 1)).await;
                assert_eq!(e.unwrap_err().kind(), StoreErrorKind::Timeout);
            }
            let started = Instant::now();
            let e = store.decide(Check::new(&stalled_key, &set, 1)).await;
            assert_eq!(e.unwrap_err().kind(), StoreErrorKind::Unavailable);
            assert!(started.elapsed() < Duration::from_millis(50), "skipped");
            // The other masters' keys are decided, many times over the
            // stalled master's threshold.
            for _ in 0..10 {
                for (_, k) in &keys[1..] {
                    let d = store.decide(Check::new(k, &set, 1)).await;
                    assert!(d.unwrap().is_allowed());
                }
            }
        });
    }

    /// What a key saw while a master failed: its errors' times since `t0`,
    /// and when it was first decided after the last error.
    #[derive(Debug, Default)]
    struct Seen {
        errors: Vec<Duration>,
        ok_after_last_error: Option<Duration>,
    }

    /// Decides every key every 10 ms from `t0` until `until` says stop (it
    /// is asked with what each key saw), at most `limit`.
    async fn watch(
        store: &RedisStore,
        set: &PolicySet,
        keys: &[(usize, Key)],
        t0: Instant,
        limit: Duration,
        until: impl Fn(&[Seen]) -> bool,
    ) -> Vec<Seen> {
        let mut seen: Vec<Seen> = keys.iter().map(|_| Seen::default()).collect();
        while t0.elapsed() < limit && !until(&seen) {
            for ((_, k), s) in keys.iter().zip(&mut seen) {
                let at = t0.elapsed();
                match store.decide(Check::new(k, set, 1)).await {
                    Ok(_) if s.ok_after_last_error.is_none() && !s.errors.is_empty() => {
                        s.ok_after_last_error = Some(at);
                    }
                    Ok(_) => {}
                    Err(_) => {
                        s.errors.push(at);
                        s.ok_after_last_error = None;
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        seen
    }

    /// The replica of master `master`.
    fn replica_of(cluster: &RedisCluster, master: usize) -> usize {
        let master_id = node_id(cluster, master);
        (0..cluster.nodes.len())
            .find(|&i| {
                cluster.nodes[i].command("ROLE").contains("slave")
                    && cluster
                        .cli(i, &["CLUSTER", "NODES"])
                        .lines()
                        .any(|l| l.contains("myself") && l.contains(&master_id))
            })
            .expect("the master's replica")
    }

    /// When, since `t0`, the server on `port` says it is a master: polled
    /// every 2 ms on a thread of its own, for at most `limit`.
    fn promotion(
        port: u16,
        t0: Instant,
        limit: Duration,
    ) -> tokio::task::JoinHandle<Option<Duration>> {
        tokio::task::spawn_blocking(move || {
            while t0.elapsed() < limit {
                if support::command_on(port, "ROLE").contains("master") {
                    return Some(t0.elapsed());
                }
                std::thread::sleep(Duration::from_millis(2));
            }
            None
        })
    }

    /// A store for the failover tests. Its deadline is well above a call's
    /// time on a loaded machine, and no run of timeouts opens a cool-down:
    /// these tests measure how soon the store follows a promoted replica,
    /// and the cool-down has tests of its own.
    async fn failover_store(cluster: &RedisCluster) -> RedisStore {
        RedisStore::builder()
            .timeout(Duration::from_millis(250))
            .cool_down(u32::MAX, Duration::from_secs(1))
            .connect_cluster(cluster.urls())
            .await
            .unwrap()
    }

    /// How soon after its promotion a key is decided again.
    const FOLLOWS_WITHIN: Duration = Duration::from_millis(1_000);

    #[test]
    fn a_killed_master_is_replaced_by_its_replica_and_other_masters_never_stop() {
        let mut cluster = RedisCluster::start_with_replicas(1_000);
        let rt = runtime();
        let (seen, killed, promoted) = rt.block_on(async {
            let store = failover_store(&cluster).await;
            let set = PolicySet::new(vec![Policy::new("p", Quota::per_second(10_000))]).unwrap();
            let keys = key_per_master(&cluster, &store, &set);
            for (_, k) in &keys {
                assert!(store.decide(Check::new(k, &set, 1)).await.is_ok());
            }
            let killed = keys[0].0;
            let replica = cluster.nodes[replica_of(&cluster, killed)].port();
            let t0 = Instant::now();
            cluster.nodes[killed].kill();
            let promoted = promotion(replica, t0, Duration::from_secs(15));
            // Until the killed master's key has been decided for 1 s on.
            let seen = watch(&store, &set, &keys, t0, Duration::from_secs(15), |seen| {
                seen[0]
                    .ok_after_last_error
                    .is_some_and(|t| t0.elapsed() > t + Duration::from_secs(1))
            })
            .await;
            (seen, killed, promoted.await.unwrap())
        });
        let promoted = promoted.expect("Redis promoted the replica within 15 s");
        let resumed = seen[0].ok_after_last_error.expect("decisions resumed");
        eprintln!(
            "killed master: {} errors, replica promoted {promoted:?} and decisions resumed \
             {resumed:?} after the kill; others: {:?}",
            seen[0].errors.len(),
            seen[1..].iter().map(|s| s.errors.len()).collect::<Vec<_>>()
        );
        assert!(
            cluster.masters().len() == 3 && !cluster.masters().contains(&killed),
            "a replica was promoted"
        );
        // Redis's own failover (node-timeout 1 s, then the replica's
        // election) is Redis's; the store follows it within a second.
        assert!(
            resumed < promoted + FOLLOWS_WITHIN,
            "promoted after {promoted:?}, resumed after {resumed:?}"
        );
        for s in &seen[1..] {
            assert!(s.errors.is_empty(), "a healthy master's key failed: {s:?}");
        }
    }

    #[test]
    fn a_graceful_cluster_failover_costs_only_the_write_pause() {
        let cluster = RedisCluster::start_with_replicas(1_000);
        let rt = runtime();
        rt.block_on(async {
            let store = failover_store(&cluster).await;
            let set = PolicySet::new(vec![Policy::new("p", Quota::per_second(10_000))]).unwrap();
            let keys = key_per_master(&cluster, &store, &set);
            let replica = replica_of(&cluster, keys[0].0);
            for (_, k) in &keys {
                assert!(store.decide(Check::new(k, &set, 1)).await.is_ok());
            }
            let t0 = Instant::now();
            assert_eq!(cluster.cli(replica, &["CLUSTER", "FAILOVER"]), "OK");
            let promoted = promotion(cluster.nodes[replica].port(), t0, Duration::from_secs(10));
            let seen = watch(&store, &set, &keys, t0, Duration::from_secs(4), |_| false).await;
            let promoted = promoted
                .await
                .unwrap()
                .expect("the replica was promoted within 10 s");
            let errors: Vec<&Duration> = seen.iter().flat_map(|s| &s.errors).collect();
            eprintln!("graceful failover: promoted after {promoted:?}, errors at {errors:?}");
            // The old master holds writes until its replica takes over;
            // calls made in that pause may time out. Past it the store
            // follows the redirect: no call made later than
            // FOLLOWS_WITHIN after the promotion fails.
            let last = seen[0].errors.last().copied();
            assert!(
                last.is_none_or(|last| last < promoted + FOLLOWS_WITHIN),
                "promoted after {promoted:?}; the failed-over master's key: {:?}",
                seen[0]
            );
            assert!(
                seen[0].errors.is_empty() || seen[0].ok_after_last_error.is_some(),
                "decided again after the failover: {:?}",
                seen[0]
            );
            for s in &seen[1..] {
                assert!(s.errors.is_empty(), "{s:?}");
            }
        });
    }
}

#[cfg(feature = "redis-sentinel")]
mod sentinel {
    use super::*;
    use support::RedisSentinels;

    /// Connections the master has accepted so far (counting the one that
    /// asks).
    fn accepted(server: &RedisServer) -> u64 {
        let info = server.command("INFO stats");
        info.lines()
            .find_map(|l| l.strip_prefix("total_connections_received:"))
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or_else(|| panic!("no total_connections_received in {info:?}"))
    }

    #[test]
    fn calls_given_up_on_keep_the_connection_and_one_search_outlives_deadlines() {
        // A down-after far beyond the pause below: no failover.
        let redis = RedisSentinels::start(30_000);
        let rt = runtime();
        rt.block_on(async {
            let store = RedisStore::builder()
                .timeout(Duration::from_millis(100))
                .cool_down(u32::MAX, Duration::from_secs(1))
                .connect_timeout(Duration::from_secs(5))
                .connect_sentinel(redis.urls(), "mymaster")
                .await
                .unwrap();
            let set = per_minute(1_000);
            let key = fresh_key("sentinel-cancel");
            assert!(store.decide(Check::new(&key, &set, 1)).await.is_ok());

            // Callers that go away while their call is in flight (a client
            // disconnecting): the connection stays.
            let before = accepted(&redis.master);
            for _ in 0..20 {
                let mut call = std::pin::pin!(store.decide(Check::new(&key, &set, 1)));
                // Polled once (the call is sent), then dropped unanswered.
                let polled =
                    std::future::poll_fn(|cx| std::task::Poll::Ready(call.as_mut().poll(cx))).await;
                assert!(polled.is_pending(), "given up on before Redis answered");
            }
            assert!(store.decide(Check::new(&key, &set, 1)).await.is_ok());
            assert_eq!(
                accepted(&redis.master) - before,
                1,
                "no new connection but the one that counts them"
            );

            // The master stalls for 1.5 s: the call in flight misses its
            // deadline and drops the connection. Finding the master again
            // (its `ROLE` check) stalls as long: one search, in a task
            // of its own, outlives the deadlines of the calls that wait
            // for it, instead of one search per call, each cut short.
            let before = accepted(&redis.master);
            assert!(
                redis
                    .master
                    .command("CLIENT PAUSE 1500 ALL")
                    .starts_with("+OK")
            );
            let t0 = Instant::now();
            let mut errors = 0;
            let resumed = loop {
                assert!(t0.elapsed() < Duration::from_secs(10), "decisions resumed");
                match store.decide(Check::new(&key, &set, 1)).await {
                    Ok(_) => break t0.elapsed(),
                    Err(_) => errors += 1,
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            };
            let made = accepted(&redis.master) - before;
            eprintln!(
                "paused master: {errors} failed calls, resumed after {resumed:?}, \
                 {made} connections accepted"
            );
            assert!(
                errors >= 5,
                "calls failed while the master stalled: {errors}"
            );
            // This test's two commands, the search's `ROLE` check and its
            // connection, and again if a call that waited for the
            // search missed its deadline as it ended. One search per call
            // would open one a call.
            assert!(made <= 8, "{made} connections for {errors} failed calls");
            assert!(resumed < Duration::from_secs(3), "{resumed:?}");
        });
    }

    #[test]
    fn a_killed_master_is_replaced_through_the_sentinels() {
        let mut redis = RedisSentinels::start(1_000);
        let rt = runtime();
        rt.block_on(async {
            let store = RedisStore::builder()
                .timeout(Duration::from_millis(100))
                .cool_down(5, Duration::from_millis(200))
                .connect_sentinel(redis.urls(), "mymaster")
                .await
                .unwrap();
            let set = per_minute(3);
            let key = fresh_key("sentinel");
            assert!(
                store
                    .decide(Check::new(&key, &set, 1))
                    .await
                    .unwrap()
                    .is_allowed()
            );
            // The write reached the replica before the master dies.
            let deadline = Instant::now() + Duration::from_secs(5);
            while redis.replica.command("DBSIZE").trim() != ":1" {
                assert!(Instant::now() < deadline, "replicated");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            let t0 = Instant::now();
            redis.master.kill();
            let mut last_error = None;
            let mut resumed = None;
            while t0.elapsed() < Duration::from_secs(20) {
                match store.decide(Check::new(&key, &set, 1)).await {
                    Ok(d) => {
                        let at = t0.elapsed();
                        resumed.get_or_insert(at);
                        // The count went on from the replicated state.
                        assert!(d.is_allowed(), "the second of 3");
                        break;
                    }
                    Err(_) => last_error = Some(t0.elapsed()),
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            let resumed = resumed.expect("decisions resumed on the promoted replica");
            eprintln!(
                "sentinel failover: resumed {resumed:?} after the kill (last error {last_error:?})"
            );
            assert!(redis.replica.command("ROLE").contains("master"));
            // down-after 1 s, then the sentinels' vote and promotion.
            assert!(resumed < Duration::from_secs(8), "{resumed:?}");
            let d = store.decide(Check::new(&key, &set, 1)).await.unwrap();
            assert!(d.is_allowed());
            let d = store.decide(Check::new(&key, &set, 1)).await.unwrap();
            assert!(!d.is_allowed(), "3 per minute, across the failover");
        });
    }
}
