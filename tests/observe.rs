//! What an operator sees: a debug event per decision with the key hashed
//! unless asked otherwise (feature `tracing`), and counters by policy, the
//! store's latency and its skip state (feature `metrics`).

mod support;

#[cfg(feature = "tracing")]
mod tracing_events {
    use super::support::events::Events;
    use tower_ratelimit::{Policy, Quota, RateLimiter};

    #[test]
    fn every_decision_is_an_event_with_the_key_hashed_unless_asked() {
        let events = Events::install(tracing::Level::DEBUG);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let policies = || {
                vec![
                    Policy::new("second", Quota::per_second(1)),
                    Policy::new("hour", Quota::per_hour(100)),
                ]
            };
            let hashed = RateLimiter::builder().policies(policies()).build().unwrap();
            let raw = RateLimiter::builder()
                .policies(policies())
                .log_raw_keys(true)
                .build()
                .unwrap();
            hashed.try_acquire("sk-secret-1", 1).await.unwrap();
            hashed.try_acquire("sk-secret-1", 1).await.unwrap();
            hashed.try_acquire("sk-secret-2", 1).await.unwrap();
            // A check and a reset are not decisions.
            hashed.check("sk-secret-1", 1).await.unwrap();
            hashed.reset("sk-secret-1").await.unwrap();
            raw.try_acquire("sk-secret-1", 1).await.unwrap();
        });
        let got = events.seen();
        assert_eq!(got.len(), 4, "{got:#?}");
        let field = |i: usize, name: &str| got[i][name].clone();
        assert_eq!(field(0, "allowed"), "true");
        assert_eq!(field(1, "allowed"), "false");
        // The policy that refused; for an admission, the closest to its limit.
        assert_eq!(field(1, "policy"), "second");
        assert_eq!(field(0, "policy"), "second");
        let retry: u64 = field(1, "retry_after_ms").parse().unwrap();
        assert!((900..=1000).contains(&retry), "{retry}");
        assert_eq!(field(0, "cost"), "1");
        // In memory nothing is timed.
        assert!(!got[0].contains_key("latency_us"));
        // Hashed: never the key, the same for the same key, not for another.
        let (k1, k1_again, k2) = (field(0, "key"), field(1, "key"), field(2, "key"));
        assert!(!k1.contains("secret"), "{k1}");
        assert_eq!(k1, k1_again);
        assert_ne!(k1, k2);
        assert!(k1.starts_with('#') && k1.len() == 17, "{k1}");
        assert_eq!(field(3, "key"), "sk-secret-1", "logged raw when asked");
    }
}

#[cfg(feature = "metrics")]
mod metrics_recorded {
    use std::collections::BTreeMap;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::{Arc, Mutex};

    use metrics::{
        Counter, CounterFn, Gauge, GaugeFn, Histogram, HistogramFn, Key, KeyName, Metadata,
        Recorder, SharedString, Unit,
    };
    use tower_ratelimit::{FailurePolicy, Policy, Quota, RateLimiter};

    /// A metric's name and labels, as `name{k=v,..}`.
    fn id(key: &Key) -> String {
        let labels: Vec<String> = key
            .labels()
            .map(|l| format!("{}={}", l.key(), l.value()))
            .collect();
        format!("{}{{{}}}", key.name(), labels.join(","))
    }

    #[derive(Default)]
    struct Value(AtomicU64);

    impl CounterFn for Value {
        fn increment(&self, n: u64) {
            self.0.fetch_add(n, Ordering::Relaxed);
        }
        fn absolute(&self, n: u64) {
            self.0.store(n, Ordering::Relaxed);
        }
    }

    impl GaugeFn for Value {
        fn increment(&self, v: f64) {
            self.0.fetch_add(v as u64, Ordering::Relaxed);
        }
        fn decrement(&self, v: f64) {
            self.0.fetch_sub(v as u64, Ordering::Relaxed);
        }
        fn set(&self, v: f64) {
            self.0.store(v as u64, Ordering::Relaxed);
        }
    }

    impl HistogramFn for Value {
        fn record(&self, _: f64) {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Every metric by name and labels: counters' totals, gauges' values,
    /// histograms' sample counts.
    #[derive(Default, Clone)]
    struct Recorded(Arc<Mutex<BTreeMap<String, Arc<Value>>>>);

    impl Recorded {
        fn get(&self, key: &Key) -> Arc<Value> {
            Arc::clone(self.0.lock().unwrap().entry(id(key)).or_default())
        }

        fn value(&self, id: &str) -> Option<u64> {
            self.0
                .lock()
                .unwrap()
                .get(id)
                .map(|v| v.0.load(Ordering::Relaxed))
        }
    }

    impl Recorder for Recorded {
        fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
        fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
        fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
        fn register_counter(&self, key: &Key, _: &Metadata<'_>) -> Counter {
            Counter::from_arc(self.get(key))
        }
        fn register_gauge(&self, key: &Key, _: &Metadata<'_>) -> Gauge {
            Gauge::from_arc(self.get(key))
        }
        fn register_histogram(&self, key: &Key, _: &Metadata<'_>) -> Histogram {
            Histogram::from_arc(self.get(key))
        }
    }

    fn current_thread() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    }

    #[test]
    fn decisions_are_counted_by_policy_and_outcome_never_by_key() {
        let recorded = Recorded::default();
        metrics::with_local_recorder(&recorded, || {
            current_thread().block_on(async {
                let l = RateLimiter::builder()
                    .policy(Policy::new("second", Quota::per_second(2)))
                    .policy(Policy::new("hour", Quota::per_hour(100)))
                    .build()
                    .unwrap();
                for key in ["a", "a", "a", "b"] {
                    l.try_acquire(key, 1).await.unwrap();
                }
                l.check("a", 1).await.unwrap();
            });
        });
        let count = |id: &str| recorded.value(id);
        assert_eq!(
            count("ratelimit_decisions_total{policy=second,outcome=allowed}"),
            Some(3)
        );
        assert_eq!(
            count("ratelimit_decisions_total{policy=hour,outcome=allowed}"),
            Some(3)
        );
        assert_eq!(
            count("ratelimit_decisions_total{policy=second,outcome=rejected}"),
            Some(1)
        );
        // The hour admitted the refused request: not counted as refusing.
        assert_eq!(
            count("ratelimit_decisions_total{policy=hour,outcome=rejected}"),
            None
        );
        let ids: Vec<String> = recorded.0.lock().unwrap().keys().cloned().collect();
        let keyed = |id: &String| {
            ["a", "b"]
                .iter()
                .any(|k| id.contains(&format!("={k},")) || id.contains(&format!("={k}}}")))
        };
        assert!(!ids.iter().any(keyed), "{ids:?}");
    }

    #[cfg(feature = "redis")]
    #[test]
    fn redis_latency_failures_and_the_skip_gauge_are_recorded() {
        use std::time::Duration;
        let server = super::support::RedisServer::start();
        let recorded = Recorded::default();
        metrics::with_local_recorder(&recorded, || {
            current_thread().block_on(async {
                let store = tower_ratelimit::store::RedisStore::builder()
                    .timeout(Duration::from_millis(200))
                    .cool_down(2, Duration::from_secs(30))
                    .connect(&server.url())
                    .await
                    .unwrap();
                let l = RateLimiter::builder()
                    .store(store)
                    .policy(Policy::new("api", Quota::per_minute(10)))
                    .on_store_failure(FailurePolicy::Fallback { instances: 2 })
                    .build()
                    .unwrap();
                for _ in 0..3 {
                    assert!(!l.try_acquire("k", 1).await.unwrap().is_degraded());
                }
                assert_eq!(recorded.value("ratelimit_store_skipping{}"), Some(0));
                // Every call misses its deadline; after two Redis is skipped.
                assert!(server.command("CLIENT PAUSE 1000 ALL").starts_with("+OK"));
                for _ in 0..4 {
                    assert!(l.try_acquire("k", 1).await.unwrap().is_degraded());
                }
            });
        });
        assert_eq!(
            recorded.value("ratelimit_store_seconds{}"),
            Some(3),
            "three answered calls timed"
        );
        assert_eq!(
            recorded.value("ratelimit_decisions_total{policy=api,outcome=allowed}"),
            Some(3)
        );
        assert_eq!(
            recorded.value("ratelimit_decisions_total{policy=api,outcome=fallback}"),
            Some(4)
        );
        assert_eq!(recorded.value("ratelimit_store_skipping{}"), Some(1));
    }
}
