//! Faults injected into real `redis-server` processes that each test
//! starts on 127.0.0.1 and ends itself (by PID): a crash, a restart with
//! empty caches, script and function flushes, a pause, killed connections,
//! a full memory, a slow Redis under a flood. Each test is bounded in time,
//! measures what it asserts and prints it (`--nocapture`); the README's
//! "Limits and guarantees" quotes the figures.
#![cfg(feature = "redis")]

mod support;

use std::convert::Infallible;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use http::{Request, Response, StatusCode};
use support::{RedisServer, runtime};
use tower::{Layer, ServiceExt, service_fn};
use tower_ratelimit::key::Header;
use tower_ratelimit::store::RedisStore;
use tower_ratelimit::{
    AcquireError, Decision, FailurePolicy, Policy, Quota, RateLimitLayer, RateLimiter,
    StoreErrorKind,
};

/// The store's deadline in these tests: its default.
const DEADLINE: Duration = Duration::from_millis(100);
/// What a two-core machine adds to a deadline: 2 ms idle, up to 150 ms
/// measured while other builds ran. A hang is seconds.
const MARGIN: Duration = Duration::from_millis(200);

/// One fault at a time: the latencies measured are the store's, not those
/// of another test's flood.
fn serial() -> MutexGuard<'static, ()> {
    static SERIAL: Mutex<()> = Mutex::new(());
    SERIAL.lock().unwrap_or_else(PoisonError::into_inner)
}

fn fresh_tag() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// `n` requests, and one more an hour: nothing refills during a test, so
/// what Redis counted is `n - remaining`.
fn no_refill(n: u64) -> Quota {
    Quota::new(n, Duration::from_secs(n * 3600))
}

async fn store(server: &RedisServer) -> RedisStore {
    RedisStore::builder()
        .timeout(DEADLINE)
        .connect(&server.url())
        .await
        .unwrap()
}

fn limiter(
    store: &RedisStore,
    name: &str,
    quota: Quota,
    failure: FailurePolicy,
) -> RateLimiter<RedisStore> {
    RateLimiter::builder()
        .store(store.clone())
        .policy(Policy::new(name, quota))
        .on_store_failure(failure)
        .build()
        .unwrap()
}

/// What one request got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    /// Decided by Redis.
    Redis { allowed: bool },
    /// Decided in memory by the fallback.
    Degraded,
    /// The store's error (fail-closed).
    Failed(StoreErrorKind),
}

/// One request: which key, when it was asked (since the load started),
/// how long it took, what it got.
#[derive(Debug, Clone, Copy)]
struct Answer {
    key: usize,
    at: Duration,
    took: Duration,
    outcome: Outcome,
}

impl Answer {
    fn by_redis(&self) -> bool {
        matches!(self.outcome, Outcome::Redis { .. })
    }

    fn end(&self) -> Duration {
        self.at + self.took
    }
}

/// `tasks` tasks asking `limiter` for one unit each, task `i` on key
/// `<tag>-<i % keys>`, one request after another, until `stop` is set (or,
/// should a test fail to, 10 s after `t0`).
fn load(
    rt: &tokio::runtime::Runtime,
    limiter: &RateLimiter<RedisStore>,
    tag: &str,
    keys: usize,
    tasks: usize,
    stop: &Arc<AtomicBool>,
    t0: Instant,
) -> tokio::task::JoinHandle<Vec<Answer>> {
    let limit = Duration::from_secs(10);
    let handles: Vec<_> = (0..tasks)
        .map(|i| {
            let (limiter, stop) = (limiter.clone(), Arc::clone(stop));
            let key = i % keys;
            let name = format!("{tag}-{key}");
            rt.spawn(async move {
                let mut answers = Vec::new();
                while !stop.load(Ordering::Relaxed) && t0.elapsed() < limit {
                    let at = t0.elapsed();
                    let outcome = match limiter.try_acquire(name.as_str(), 1).await {
                        Ok(d) if d.is_degraded() => Outcome::Degraded,
                        Ok(d) => Outcome::Redis {
                            allowed: d.is_allowed(),
                        },
                        Err(AcquireError::Store(e)) => {
                            eprintln!("request failed: {e}");
                            Outcome::Failed(e.kind())
                        }
                        Err(e) => panic!("{e}"),
                    };
                    answers.push(Answer {
                        key,
                        at,
                        took: t0.elapsed() - at,
                        outcome,
                    });
                    // An answer given at once (a skipped Redis) must not
                    // keep the other tasks off the worker.
                    tokio::task::yield_now().await;
                }
                answers
            })
        })
        .collect();
    rt.spawn(async move {
        let mut all = Vec::new();
        for h in handles {
            // A panic in a task fails the test here.
            all.extend(h.await.unwrap());
        }
        all.sort_by_key(|a| a.at);
        all
    })
}

/// A connection of the test's own, kept open: its `INFO` adds no
/// connection to what it reads.
struct Conn {
    out: TcpStream,
    input: BufReader<TcpStream>,
}

impl Conn {
    fn open(server: &RedisServer) -> Self {
        let out = TcpStream::connect(("127.0.0.1", server.port())).unwrap();
        out.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let input = BufReader::new(out.try_clone().unwrap());
        Self { out, input }
    }

    /// Sends `args` and returns the reply: a status, error or integer line
    /// as it is, a bulk string's contents.
    fn cmd(&mut self, args: &[&str]) -> String {
        let mut req = format!("*{}\r\n", args.len());
        for a in args {
            req.push_str(&format!("${}\r\n{a}\r\n", a.len()));
        }
        self.out.write_all(req.as_bytes()).unwrap();
        let mut line = String::new();
        self.input.read_line(&mut line).unwrap();
        match line.strip_prefix('$').map(|n| n.trim().parse::<usize>()) {
            Some(Ok(n)) => {
                let mut body = vec![0; n + 2];
                self.input.read_exact(&mut body).unwrap();
                body.truncate(n);
                String::from_utf8(body).unwrap()
            }
            _ => line.trim_end().to_owned(),
        }
    }

    /// A numeric field of `INFO <section>` (see [`info_field`]).
    fn info(&mut self, section: &str, field: &str) -> u64 {
        info_field(&self.cmd(&["INFO", section]), field)
    }
}

/// Field `name` of an `INFO` reply: `name:42`, or the calls of a
/// `cmdstat_<command>:calls=42,…` line; 0 when it is not there.
fn info_field(info: &str, name: &str) -> u64 {
    info.lines()
        .find_map(|l| {
            let v = l.strip_prefix(name)?.strip_prefix(':')?;
            let v = v.strip_prefix("calls=").unwrap_or(v);
            v.split(',').next()?.trim().parse().ok()
        })
        .unwrap_or(0)
}

#[test]
fn sigkill_under_load_answers_every_request_by_the_failure_policy_within_the_deadline() {
    let _serial = serial();
    for coalesce in [true, false] {
        let worst = sigkill_under_load(coalesce);
        // A request queued behind its key's call in flight has the deadline
        // for the place in flight that call may wait for, that call's, and
        // its own.
        let deadline = if coalesce { 3 * DEADLINE } else { DEADLINE };
        assert!(worst <= deadline + MARGIN, "worst latency {worst:?}");
    }
}

/// Kills Redis under 64 tasks on 16 keys through the layer (fail-open):
/// the worst latency of the requests in flight at the kill or sent after.
fn sigkill_under_load(coalesce: bool) -> Duration {
    let mut server = RedisServer::start();
    let rt = runtime();
    let store = rt
        .block_on(
            RedisStore::builder()
                .timeout(DEADLINE)
                .coalesce(coalesce)
                .connect(&server.url()),
        )
        .unwrap();
    // The layer's default policy, fail-open; the handler says who decided.
    let svc = RateLimitLayer::builder()
        .store(store)
        .key(Header::new("x-key"))
        .policy(Policy::new("p", no_refill(1_000_000)))
        .decision_in_extensions(true)
        .build()
        .unwrap()
        .layer(service_fn(|req: Request<String>| async move {
            let by = match req.extensions().get::<Decision>() {
                Some(d) if d.is_degraded() => "memory",
                Some(_) => "redis",
                None => "open",
            };
            let res = Response::builder().header("x-decided-by", by);
            Ok::<_, Infallible>(res.body(String::new()).unwrap())
        }));
    let tag = fresh_tag();
    // The library loaded before the load starts: no first call of a task
    // is near the deadline while Redis is up.
    let warm = Request::builder()
        .header("x-key", format!("kill-{tag}-warm"))
        .body(String::new())
        .unwrap();
    let res = rt.block_on(svc.clone().oneshot(warm)).unwrap();
    assert_eq!(res.headers()["x-decided-by"], "redis");
    let t0 = Instant::now();
    let until = t0 + Duration::from_millis(1200);
    let tasks: Vec<_> = (0..64)
        .map(|i| {
            let svc = svc.clone();
            rt.spawn(async move {
                let mut seen = Vec::new();
                while Instant::now() < until {
                    let req = Request::builder()
                        .header("x-key", format!("kill-{tag}-{}", i % 16))
                        .body(String::new())
                        .unwrap();
                    let at = t0.elapsed();
                    let res = svc.clone().oneshot(req).await.unwrap();
                    let by = res.headers()["x-decided-by"].to_str().unwrap().to_owned();
                    seen.push((at, t0.elapsed() - at, res.status(), by));
                    tokio::task::yield_now().await;
                }
                seen
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(400));
    let killed = t0.elapsed();
    server.kill();
    // Requests asked once the process is gone; between the two stamps a
    // request may still have been decided by Redis.
    let dead = t0.elapsed();
    let seen: Vec<_> = rt.block_on(async {
        let mut all = Vec::new();
        for t in tasks {
            all.extend(t.await.expect("no request panicked"));
        }
        all
    });
    assert!(
        seen.iter().all(|(_, _, s, _)| *s == StatusCode::OK),
        "fail-open lets every request through"
    );
    let before: Vec<_> = seen
        .iter()
        .filter(|(at, took, ..)| *at + *took < killed)
        .collect();
    assert!(before.len() > 100 && before.iter().all(|(.., by)| by == "redis"));
    let after: Vec<_> = seen.iter().filter(|(at, ..)| *at >= dead).collect();
    let open = after.iter().filter(|(.., by)| by == "open").count();
    assert_eq!(
        open,
        after.len(),
        "after the kill, every request is the policy's"
    );
    let worst = seen
        .iter()
        .filter(|(at, took, ..)| *at + *took >= killed)
        .map(|(_, took, ..)| *took)
        .max()
        .unwrap();
    eprintln!(
        "SIGKILL (coalesce {coalesce}): {} requests after the kill, all failed open; worst \
         latency {worst:?}",
        after.len()
    );
    worst
}

#[test]
fn a_restart_on_the_same_port_with_empty_caches_decides_from_redis_again_within_a_second() {
    let _serial = serial();
    let mut server = RedisServer::start();
    let rt = runtime();
    // The bound is the rest of the cool-down the crash opened (1 s by
    // default), then reconnecting (at most half a second): a shorter one.
    let cool_down = Duration::from_millis(250);
    let store = rt
        .block_on(
            RedisStore::builder()
                .timeout(DEADLINE)
                .cool_down(5, cool_down)
                .connect(&server.url()),
        )
        .unwrap();
    let limiter = limiter(
        &store,
        "p",
        no_refill(1_000_000),
        FailurePolicy::Fallback { instances: 1 },
    );
    // At once, and after long enough down for reconnecting to back off.
    for down in [Duration::ZERO, Duration::from_millis(1200)] {
        let stop = Arc::new(AtomicBool::new(false));
        let tag = format!("restart-{}", fresh_tag());
        let t0 = Instant::now();
        let answers = load(&rt, &limiter, &tag, 8, 32, &stop, t0);
        std::thread::sleep(Duration::from_millis(200));
        let killed = t0.elapsed();
        server.kill();
        std::thread::sleep(down);
        server.restart();
        let back = t0.elapsed();
        assert_eq!(info_field(&server.command("INFO keyspace"), "db0"), 0);
        assert!(!server.command("FUNCTION LIST").contains("tower_ratelimit"));
        std::thread::sleep(Duration::from_secs(1));
        stop.store(true, Ordering::Relaxed);
        let answers = rt.block_on(answers).unwrap();
        let resumed = answers
            .iter()
            .filter(|a| a.at > back && a.by_redis())
            .map(Answer::end)
            .min()
            .expect("decisions from Redis after the restart");
        let degraded = answers
            .iter()
            .filter(|a| a.outcome == Outcome::Degraded)
            .count();
        eprintln!(
            "restart: down {:?}, {degraded} decided in memory, from Redis again {:?} after \
             it was back",
            back - killed,
            resumed - back
        );
        assert!(
            resumed - back < Duration::from_secs(1),
            "{:?}",
            resumed - back
        );
        // The same store loaded its library into the new server, and
        // decided nothing after that but in Redis, once the calls sent on
        // the old connection have run out their deadline (a request
        // coalesced behind one of those waits for it).
        assert!(server.command("FUNCTION LIST").contains("tower_ratelimit"));
        let late: Vec<&Answer> = answers
            .iter()
            .filter(|a| a.at > resumed + 3 * DEADLINE + MARGIN && !a.by_redis())
            .collect();
        assert!(
            late.is_empty(),
            "decided without Redis after it was back: {late:?}"
        );
    }
}

/// Admitted, denied and failed requests of `answers` for key `key`.
fn tally(answers: &[Answer], key: usize) -> (u64, u64, u64) {
    let mut t = (0, 0, 0);
    for a in answers.iter().filter(|a| a.key == key) {
        match a.outcome {
            Outcome::Redis { allowed: true } => t.0 += 1,
            Outcome::Redis { allowed: false } => t.1 += 1,
            Outcome::Degraded | Outcome::Failed(_) => t.2 += 1,
        }
    }
    t
}

/// What `limiter` has counted for `key` in Redis: nothing refills.
fn counted(rt: &tokio::runtime::Runtime, limiter: &RateLimiter<RedisStore>, key: &str) -> u64 {
    let d = rt.block_on(limiter.check(key, 0)).unwrap();
    assert!(!d.is_degraded());
    d.policies()[0].limit() - d.remaining()
}

/// Flushes what `server` holds of the store's code every few ms under
/// load from two limiters: one whose keys fill up, one whose keys never
/// do.
fn flushes_under_load(server: &RedisServer, flushes: &[&str]) {
    const FILLED: u64 = 300;
    let rt = runtime();
    let store = rt
        .block_on(
            RedisStore::builder()
                // No failure is expected: a slow machine is not one.
                .timeout(Duration::from_secs(2))
                // Every request goes to Redis, even on a full key.
                .denied_cache(0, Duration::ZERO)
                .connect(&server.url()),
        )
        .unwrap();
    let fills = limiter(
        &store,
        "fills",
        no_refill(FILLED),
        FailurePolicy::FailClosed,
    );
    let open = limiter(
        &store,
        "open",
        no_refill(1_000_000),
        FailurePolicy::FailClosed,
    );
    let stop = Arc::new(AtomicBool::new(false));
    let tag = format!("flush-{}", fresh_tag());
    let t0 = Instant::now();
    let filling = load(&rt, &fills, &tag, 4, 16, &stop, t0);
    let unlimited = load(&rt, &open, &tag, 4, 16, &stop, t0);
    let mut conn = Conn::open(server);
    let mut done = 0;
    while t0.elapsed() < Duration::from_millis(1200) {
        std::thread::sleep(Duration::from_millis(10));
        let flush = flushes[done % flushes.len()];
        let args: Vec<&str> = flush.split(' ').collect();
        assert_eq!(conn.cmd(&args), "+OK");
        done += 1;
    }
    stop.store(true, Ordering::Relaxed);
    let filling = rt.block_on(filling).unwrap();
    let unlimited = rt.block_on(unlimited).unwrap();
    for key in 0..4 {
        let name = format!("{tag}-{key}");
        let (admitted, denied, failed) = tally(&filling, key);
        assert_eq!(failed, 0, "transparent: no request failed");
        assert!(denied > 0, "the key filled up during the flushes");
        assert_eq!(admitted, FILLED, "exactly the quota admitted");
        assert_eq!(counted(&rt, &fills, &name), FILLED);
        let (admitted, _, failed) = tally(&unlimited, key);
        assert_eq!(failed, 0);
        assert_eq!(
            counted(&rt, &open, &name),
            admitted,
            "each request counted once"
        );
    }
    let requests = filling.len() + unlimited.len();
    eprintln!(
        "{flushes:?}: {done} flushes under {requests} requests, none failed, each counted once"
    );
}

#[test]
fn script_flush_and_function_flush_under_load_are_transparent_and_count_each_request_once() {
    let _serial = serial();
    // Redis 7: functions, which `FUNCTION FLUSH` drops (and `SCRIPT FLUSH`
    // does not touch).
    let server = RedisServer::start();
    flushes_under_load(&server, &["FUNCTION FLUSH", "SCRIPT FLUSH"]);
    let loads = info_field(
        &server.command("INFO commandstats"),
        "cmdstat_function|load",
    );
    assert!(loads > 10, "the library was loaded again: {loads} loads");
    // Before Redis 7: `EVALSHA`, and `EVAL` once on `NOSCRIPT`.
    let server = RedisServer::start_without_functions();
    flushes_under_load(&server, &["SCRIPT FLUSH"]);
    let evals = info_field(&server.command("INFO commandstats"), "cmdstat_eval");
    assert!(evals > 10, "the script was sent again: {evals} EVALs");
}

#[test]
fn a_pause_longer_than_the_deadline_is_answered_by_the_policy_and_counts_nothing_twice() {
    let _serial = serial();
    let server = RedisServer::start();
    let rt = runtime();
    let store = rt.block_on(store(&server));
    let limiter = limiter(&store, "p", no_refill(100_000), FailurePolicy::FailClosed);
    let stop = Arc::new(AtomicBool::new(false));
    let tag = format!("pause-{}", fresh_tag());
    let t0 = Instant::now();
    let answers = load(&rt, &limiter, &tag, 8, 32, &stop, t0);
    let fcalls = info_field(&server.command("INFO commandstats"), "cmdstat_fcall");
    std::thread::sleep(Duration::from_millis(300));
    let stopped = server.stop();
    let paused = t0.elapsed();
    std::thread::sleep(Duration::from_millis(500));
    drop(stopped);
    let resumed = t0.elapsed();
    // The cool-down the pause opened ends, and decisions come back.
    std::thread::sleep(Duration::from_millis(1200));
    stop.store(true, Ordering::Relaxed);
    let answers = rt.block_on(answers).unwrap();
    let during: Vec<_> = answers
        .iter()
        .filter(|a| a.end() > paused && a.at < resumed)
        .collect();
    let worst = during.iter().map(|a| a.took).max().unwrap();
    let timeouts = during
        .iter()
        .filter(|a| a.outcome == Outcome::Failed(StoreErrorKind::Timeout))
        .count();
    let skipped = during
        .iter()
        .filter(|a| a.outcome == Outcome::Failed(StoreErrorKind::Unavailable))
        .count();
    assert!(timeouts > 0 && skipped > 0, "timed out, then cooled down");
    // A request coalesced behind its key's call waits at most three
    // deadlines.
    assert!(worst <= 3 * DEADLINE + MARGIN, "worst latency {worst:?}");
    let back = answers
        .iter()
        .filter(|a| a.at > resumed && a.by_redis())
        .map(Answer::end)
        .min()
        .expect("decided by Redis again")
        - resumed;
    // Redis counted every request it admitted, and at most those too whose
    // call timed out (it ran once Redis went on); nothing twice.
    let (mut admitted, mut timed_out, mut redis_count) = (0, 0, 0);
    for key in 0..8 {
        let (yes, _, _) = tally(&answers, key);
        let late = answers
            .iter()
            .filter(|a| a.key == key && a.outcome == Outcome::Failed(StoreErrorKind::Timeout))
            .count() as u64;
        let count = counted(&rt, &limiter, &format!("{tag}-{key}"));
        assert!(
            yes <= count && count <= yes + late,
            "key {key}: {yes} ≤ {count} ≤ {yes} + {late}"
        );
        (admitted, timed_out, redis_count) =
            (admitted + yes, timed_out + late, redis_count + count);
    }
    // Calls: at most one per request that may have reached Redis.
    let calls = info_field(&server.command("INFO commandstats"), "cmdstat_fcall") - fcalls;
    let sent = answers
        .iter()
        .filter(|a| a.by_redis() || a.outcome == Outcome::Failed(StoreErrorKind::Timeout))
        .count() as u64;
    assert!(calls <= sent + 1, "{calls} calls for {sent} requests sent");
    eprintln!(
        "pause 500 ms: worst latency {worst:?}, {timeouts} timed out then {skipped} skipped; \
         from Redis again {back:?} after SIGCONT; Redis counted {redis_count} = {admitted} \
         admitted + {} of {timed_out} timed out; {calls} calls for {sent} requests",
        redis_count - admitted
    );
}

/// The ids of the normal clients connected to `server` but `conn`.
fn client_ids(conn: &mut Conn) -> Vec<u64> {
    let me = conn.cmd(&["CLIENT", "ID"]);
    let me: u64 = me.trim_start_matches(':').parse().unwrap();
    conn.cmd(&["CLIENT", "LIST", "TYPE", "normal"])
        .lines()
        .filter_map(|l| l.strip_prefix("id=")?.split(' ').next()?.parse().ok())
        .filter(|id| *id != me)
        .collect()
}

#[test]
fn client_kill_of_the_stores_connection_reconnects_and_decides_from_redis_again_at_once() {
    let _serial = serial();
    let server = RedisServer::start();
    let rt = runtime();
    let store = rt.block_on(store(&server));
    let limiter = limiter(
        &store,
        "p",
        no_refill(1_000_000),
        FailurePolicy::Fallback { instances: 1 },
    );
    let mut conn = Conn::open(&server);
    let stop = Arc::new(AtomicBool::new(false));
    let tag = format!("client-kill-{}", fresh_tag());
    let t0 = Instant::now();
    let answers = load(&rt, &limiter, &tag, 16, 64, &stop, t0);
    std::thread::sleep(Duration::from_millis(300));
    let before = client_ids(&mut conn);
    assert_eq!(before.len(), 1, "the store has one connection: {before:?}");
    let killed_at = t0.elapsed();
    let killed = conn.cmd(&["CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes"]);
    assert_eq!(killed, ":1");
    std::thread::sleep(Duration::from_millis(1500));
    stop.store(true, Ordering::Relaxed);
    let answers = rt.block_on(answers).unwrap();
    let after = client_ids(&mut conn);
    assert!(
        after.len() == 1 && after != before,
        "one new connection: {after:?}"
    );
    // Only the requests in flight on the killed connection failed: it is
    // one failure, not one per call, so no cool-down began.
    let degraded: Vec<_> = answers
        .iter()
        .filter(|a| a.outcome == Outcome::Degraded)
        .collect();
    let outage = degraded
        .iter()
        .map(|a| a.end())
        .max()
        .map_or(Duration::ZERO, |end| end.saturating_sub(killed_at));
    let sent_after = answers.iter().filter(|a| a.at > killed_at).count();
    eprintln!(
        "CLIENT KILL: {} of {sent_after} requests after it decided in memory, the last \
         {outage:?} after the kill; every other by Redis",
        degraded.len()
    );
    assert!(
        degraded.len() <= 64,
        "the requests in flight, at most one per task"
    );
    // Reconnected at once: a cool-down (1 s) would have decided in memory
    // for a second. The bound leaves room for a call that a loaded machine
    // kept past its deadline.
    assert!(
        outage < 5 * DEADLINE,
        "from Redis again {outage:?} after the kill"
    );
    assert!(
        answers
            .iter()
            .filter(|a| a.at > killed_at + outage)
            .all(Answer::by_redis)
    );
}

#[test]
fn maxmemory_reached_with_noeviction_is_a_store_error_naming_it_and_the_policy_applies() {
    let _serial = serial();
    let server = RedisServer::start_with(&["--maxmemory-policy", "noeviction"]);
    let rt = runtime();
    let store = rt.block_on(store(&server));
    let closed = limiter(&store, "p", no_refill(100), FailurePolicy::FailClosed);
    let fallback = limiter(
        &store,
        "p",
        no_refill(100),
        FailurePolicy::Fallback { instances: 1 },
    );
    let key = format!("oom-{}", fresh_tag());
    rt.block_on(async {
        assert!(
            closed
                .try_acquire(key.as_str(), 1)
                .await
                .unwrap()
                .is_allowed()
        );
        // Any write now takes Redis over its memory: it refuses them all.
        assert_eq!(server.command("CONFIG SET maxmemory 1"), "+OK\r\n");
        let e = match closed.try_acquire(key.as_str(), 1).await {
            Err(AcquireError::Store(e)) => e,
            other => panic!("expected a store error, got {other:?}"),
        };
        eprintln!("maxmemory: {e}");
        assert_eq!(e.kind(), StoreErrorKind::Unavailable);
        assert!(
            e.to_string()
                .starts_with("Redis is out of memory and refuses writes (maxmemory"),
            "{e}"
        );
        let d = fallback.try_acquire(key.as_str(), 1).await.unwrap();
        assert!(d.is_allowed() && d.is_degraded(), "the fallback decides");
        assert_eq!(server.command("CONFIG SET maxmemory 0"), "+OK\r\n");
        // Fewer failures than the cool-down's threshold: Redis decides at
        // once, and counted nothing while it refused.
        let d = closed.try_acquire(key.as_str(), 1).await.unwrap();
        assert!(!d.is_degraded());
        assert_eq!(d.remaining(), 98);
    });
}

#[test]
fn a_slow_redis_under_a_flood_keeps_one_connection_and_few_calls_in_flight() {
    let _serial = serial();
    let server = RedisServer::start();
    let rt = runtime();
    let store = rt.block_on(store(&server));
    let limiter = limiter(
        &store,
        "p",
        no_refill(1_000_000),
        FailurePolicy::Fallback { instances: 1 },
    );
    const KEYS: usize = 32;
    let mut conn = Conn::open(&server);
    let stop = Arc::new(AtomicBool::new(false));
    let tag = format!("slow-{}", fresh_tag());
    let t0 = Instant::now();
    let answers = load(&rt, &limiter, &tag, KEYS, 256, &stop, t0);
    // Slow: writes wait up to 40 ms, served 10 ms in every 50.
    let mut clients = 0;
    while t0.elapsed() < Duration::from_millis(1500) {
        assert_eq!(conn.cmd(&["CLIENT", "PAUSE", "40", "WRITE"]), "+OK");
        let cycle = Instant::now();
        while cycle.elapsed() < Duration::from_millis(50) {
            clients = clients.max(conn.info("clients", "connected_clients"));
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    let slow = t0.elapsed();
    // Then stalled: what the store has sent and not had answered stays in
    // Redis, to be counted when it goes on.
    assert_eq!(conn.cmd(&["CLIENT", "PAUSE", "10000", "WRITE"]), "+OK");
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::Relaxed);
    let answers = rt.block_on(answers).unwrap();
    clients = clients.max(conn.info("clients", "connected_clients"));
    let queued = conn.info("commandstats", "cmdstat_fcall");
    assert_eq!(conn.cmd(&["CLIENT", "UNPAUSE"]), "+OK");
    std::thread::sleep(Duration::from_millis(200));
    let in_flight = conn.info("commandstats", "cmdstat_fcall") - queued;
    let during: Vec<_> = answers.iter().filter(|a| a.at < slow).collect();
    let by_redis = during.iter().filter(|a| a.by_redis()).count();
    let worst = answers.iter().map(|a| a.took).max().unwrap();
    eprintln!(
        "slow Redis, 256 tasks on {KEYS} keys: {by_redis} of {} decided by Redis; at most \
         {clients} clients (the store's and this test's); {in_flight} calls left in flight \
         when it stalled; worst latency {worst:?}",
        during.len()
    );
    assert!(by_redis > 0, "slow, not down");
    assert_eq!(
        clients, 2,
        "one connection for the store, whatever the load"
    );
    // One call per key at a time, and one more for a key whose call timed
    // out before the cool-down began.
    assert!(in_flight <= 2 * KEYS as u64, "{in_flight} calls in flight");
    // A request coalesced behind its key's call waits at most three
    // deadlines.
    assert!(worst <= 3 * DEADLINE + MARGIN, "worst latency {worst:?}");
}

#[test]
fn a_kill_and_restart_under_a_flood_reconnects_once_without_a_connection_storm() {
    let _serial = serial();
    let mut server = RedisServer::start();
    let rt = runtime();
    let store = rt.block_on(store(&server));
    let limiter = limiter(
        &store,
        "p",
        no_refill(1_000_000),
        FailurePolicy::Fallback { instances: 1 },
    );
    let stop = Arc::new(AtomicBool::new(false));
    let tag = format!("storm-{}", fresh_tag());
    let t0 = Instant::now();
    let answers = load(&rt, &limiter, &tag, 64, 256, &stop, t0);
    std::thread::sleep(Duration::from_millis(300));
    server.kill();
    // Down long enough for every task to fail, many times over.
    std::thread::sleep(Duration::from_millis(500));
    server.restart();
    let back = t0.elapsed();
    let mut conn = Conn::open(&server);
    let accepted = conn.info("stats", "total_connections_received");
    let mut clients = 0;
    while t0.elapsed() < back + Duration::from_secs(1) {
        clients = clients.max(conn.info("clients", "connected_clients"));
        std::thread::sleep(Duration::from_millis(5));
    }
    let made = conn.info("stats", "total_connections_received") - accepted;
    stop.store(true, Ordering::Relaxed);
    let answers = rt.block_on(answers).unwrap();
    let resumed = answers
        .iter()
        .filter(|a| a.at > back && a.by_redis())
        .map(Answer::end)
        .min()
        .expect("decided by Redis again")
        - back;
    eprintln!(
        "kill and restart under 256 tasks: at most {clients} clients after it (the store's and \
         this test's), {made} connections made after this test's; from Redis again {resumed:?} \
         after it was back"
    );
    assert!(clients <= 2, "{clients} clients: a connection storm");
    assert!(made <= 1, "{made} connections made");
}
