//! [`RedisStore`]: limits shared by every instance of a service through one
//! Redis or Redis Cluster.

use std::fmt;
use std::future::Future;
use std::io::Write as _;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use redis::aio::{ConnectionLike, ConnectionManager, MultiplexedConnection};
use redis::{Cmd, ErrorKind, RedisError, ServerErrorKind, Value};

use super::{Check, Op, Store};
use crate::algorithm::{self, Slot};
use crate::clock::duration_micros;
use crate::decision::Decision;
use crate::error::{BoxError, ConfigError, StoreError, StoreErrorKind};
use crate::quota::{Algorithm, Params, Policy, PolicySet};

/// The decision script: the files in `lua/`, joined.
const SCRIPT: &str = concat!(
    include_str!("../../lua/prelude.lua"),
    include_str!("../../lua/gcra.lua"),
    include_str!("../../lua/token_bucket.lua"),
    include_str!("../../lua/greedy_token_bucket.lua"),
    include_str!("../../lua/leaky_bucket.lua"),
    include_str!("../../lua/fixed_window.lua"),
    include_str!("../../lua/sliding_window_log.lua"),
    include_str!("../../lua/sliding_window_counter.lua"),
    include_str!("../../lua/concurrency.lua"),
    include_str!("../../lua/decide.lua"),
);

/// User keys longer than this are hashed.
const MAX_KEY_BYTES: usize = 64;
const DEFAULT_PREFIX: &str = "ratelimit:";
const DEFAULT_TIMEOUT: Duration = Duration::from_millis(100);
const DEFAULT_FAILURES: u32 = 5;
const DEFAULT_COOL_DOWN: Duration = Duration::from_secs(1);

/// A connection [`RedisStore`] sends its scripts over. All are multiplexed
/// and cheap to clone.
#[derive(Clone)]
#[non_exhaustive]
pub enum RedisConnection {
    /// redis-rs's reconnecting connection (what [`RedisStore::connect`]
    /// makes).
    Manager(ConnectionManager),
    /// A multiplexed connection.
    Multiplexed(MultiplexedConnection),
    /// A Redis Cluster connection. Build its client with `.retries(0)`:
    /// the store must not resend a script that may have run.
    #[cfg(feature = "redis-cluster")]
    Cluster(redis::cluster_async::ClusterConnection),
}

impl From<ConnectionManager> for RedisConnection {
    fn from(c: ConnectionManager) -> Self {
        RedisConnection::Manager(c)
    }
}

impl From<MultiplexedConnection> for RedisConnection {
    fn from(c: MultiplexedConnection) -> Self {
        RedisConnection::Multiplexed(c)
    }
}

#[cfg(feature = "redis-cluster")]
impl From<redis::cluster_async::ClusterConnection> for RedisConnection {
    fn from(c: redis::cluster_async::ClusterConnection) -> Self {
        RedisConnection::Cluster(c)
    }
}

impl RedisConnection {
    async fn query(&mut self, cmd: &Cmd) -> Result<Value, RedisError> {
        let value = match self {
            RedisConnection::Manager(c) => c.req_packed_command(cmd).await,
            RedisConnection::Multiplexed(c) => c.req_packed_command(cmd).await,
            #[cfg(feature = "redis-cluster")]
            RedisConnection::Cluster(c) => c.req_packed_command(cmd).await,
        }?;
        value.extract_error()
    }
}

/// Decides in Redis: one atomic Lua script call per request, covering all
/// of its policies, with Redis's own clock (`TIME`), so every instance of a
/// service shares exact limits and app servers' clocks never matter.
///
/// - Keys are `<prefix>{<key>}:<policy>:<fingerprint>`: all of a request's
///   keys share the `{hash tag}`, so on Redis Cluster its script never hits
///   `CROSSSLOT`; the fingerprint names the policy's algorithm and quota, so
///   a policy whose configuration changes starts afresh instead of reading
///   state counted in other units.
///   Keys longer than 64 bytes or holding `{` or `}` are replaced by their
///   SHA-1, so no client input can reach another key or grow Redis without
///   bound. Every key expires once its state is back to full.
/// - Scripts go by `EVALSHA`; on `NOSCRIPT` (a restart, a failover,
///   `SCRIPT FLUSH`) the script is sent once with `EVAL`. Nothing is resent
///   after a timeout or a lost connection, where the script may have run:
///   that could count a request twice.
/// - Every call has a deadline (default 100 ms). After 5 failures in a row
///   the store is skipped for a cool-down (default 1 s), failing at once,
///   so a dead Redis adds no latency to every request; the layer's
///   [`FailurePolicy`](crate::FailurePolicy) decides what that means.
///
/// ```no_run
/// # async fn run() -> Result<(), tower_ratelimit::BoxError> {
/// use tower_ratelimit::{Policy, Quota, RateLimitLayer, store::RedisStore};
///
/// let store = RedisStore::connect("redis://127.0.0.1:6379").await?;
/// let layer = RateLimitLayer::builder()
///     .store(store)
///     .policy(Policy::new("burst", Quota::per_second(10)))
///     .build()?;
/// # let _ = layer;
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct RedisStore {
    conn: RedisConnection,
    inner: Arc<Inner>,
}

struct Inner {
    prefix: Box<str>,
    timeout: Duration,
    sha: String,
    breaker: Breaker,
}

impl fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisStore")
            .field("prefix", &self.inner.prefix)
            .field("timeout", &self.inner.timeout)
            .finish_non_exhaustive()
    }
}

/// Configures a [`RedisStore`]; see [`RedisStore::builder`].
#[derive(Debug, Clone)]
#[must_use]
pub struct RedisStoreBuilder {
    prefix: String,
    timeout: Duration,
    failures: u32,
    cool_down: Duration,
}

impl RedisStore {
    /// Connects to `url` (`redis://host:port/db`) with a reconnecting
    /// connection and the default settings.
    ///
    /// # Errors
    ///
    /// A bad URL, or Redis could not be reached.
    pub async fn connect(url: &str) -> Result<Self, BoxError> {
        Self::builder().connect(url).await
    }

    /// Configures a store: key prefix, deadline, cool-down.
    pub fn builder() -> RedisStoreBuilder {
        RedisStoreBuilder {
            prefix: DEFAULT_PREFIX.to_owned(),
            timeout: DEFAULT_TIMEOUT,
            failures: DEFAULT_FAILURES,
            cool_down: DEFAULT_COOL_DOWN,
        }
    }

    /// The Lua script every decision runs (the files in `lua/`, joined), for
    /// inspection or to load ahead with `SCRIPT LOAD`.
    #[must_use]
    pub fn script_source() -> &'static str {
        SCRIPT
    }

    /// The Redis key holding the state of policy `index` of `set` for
    /// `key`.
    ///
    /// # Panics
    ///
    /// If `index` is out of range.
    #[must_use]
    pub fn redis_key(&self, key: &crate::key::Key, set: &PolicySet, index: usize) -> String {
        let mut out = Vec::with_capacity(self.inner.prefix.len() + 24);
        write_key(
            &mut out,
            &self.inner.prefix,
            key,
            &set.policies()[index],
            &set.params()[index],
        );
        String::from_utf8_lossy(&out).into_owned()
    }
}

impl RedisStoreBuilder {
    /// Prefixes every key (default `ratelimit:`). It may not hold `{` or
    /// `}`, which would change the keys' hash slot.
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// The deadline for each decision (default 100 ms).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// After `failures` failed calls in a row, skip Redis for `cool_down`
    /// (default: 5 failures, 1 s).
    pub fn cool_down(mut self, failures: u32, cool_down: Duration) -> Self {
        self.failures = failures;
        self.cool_down = cool_down;
        self
    }

    /// The store, over `conn`.
    ///
    /// # Errors
    ///
    /// A prefix holding `{` or `}`, a zero timeout, or zero failures.
    pub fn build(self, conn: impl Into<RedisConnection>) -> Result<RedisStore, ConfigError> {
        if self.prefix.contains(['{', '}']) {
            return Err(ConfigError::new(
                "prefix",
                format!(
                    "{:?} may not hold '{{' or '}}': they would move keys between cluster slots",
                    self.prefix
                ),
            ));
        }
        if self.timeout.is_zero() {
            return Err(ConfigError::new("timeout", "must be more than zero"));
        }
        if self.failures == 0 {
            return Err(ConfigError::new("failures", "must be at least 1"));
        }
        Ok(RedisStore {
            conn: conn.into(),
            inner: Arc::new(Inner {
                prefix: self.prefix.into(),
                timeout: self.timeout,
                sha: sha1_smol::Sha1::from(SCRIPT).digest().to_string(),
                breaker: Breaker::new(self.failures, self.cool_down),
            }),
        })
    }

    /// Connects to `url` with a reconnecting connection.
    ///
    /// # Errors
    ///
    /// A bad setting, a bad URL, or Redis could not be reached.
    pub async fn connect(self, url: &str) -> Result<RedisStore, BoxError> {
        let client = redis::Client::open(url)?;
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(self.timeout.max(Duration::from_secs(1))))
            .set_response_timeout(None);
        let manager = client.get_connection_manager_with_config(config).await?;
        Ok(self.build(manager)?)
    }

    /// Connects to a Redis Cluster through any of its nodes' URLs.
    ///
    /// # Errors
    ///
    /// A bad setting, a bad URL, or the cluster could not be reached.
    #[cfg(feature = "redis-cluster")]
    pub async fn connect_cluster(
        self,
        urls: impl IntoIterator<Item = impl AsRef<str>>,
    ) -> Result<RedisStore, BoxError> {
        let nodes: Vec<String> = urls.into_iter().map(|u| u.as_ref().to_owned()).collect();
        let client = redis::cluster::ClusterClientBuilder::new(nodes)
            // A script that may have run is never sent again.
            .retries(0)
            .build()?;
        let conn = client.get_async_connection().await?;
        Ok(self.build(conn)?)
    }
}

impl Store for RedisStore {
    type Future = Pin<Box<dyn Future<Output = Result<Decision, StoreError>> + Send>>;

    fn decide(&self, check: Check<'_>) -> Self::Future {
        let inner = Arc::clone(&self.inner);
        if inner.breaker.is_open() {
            return Box::pin(std::future::ready(Err(StoreError::new(
                StoreErrorKind::Unavailable,
                "Redis skipped: cooling down after repeated failures",
                None,
            ))));
        }
        let set = check.policies().clone();
        let max_wait = check.get_max_wait();
        let op = check.get_op();
        let (evalsha, eval) = commands(&inner, &check);
        let mut conn = self.conn.clone();
        Box::pin(async move {
            let call = async {
                match conn.query(&evalsha).await {
                    Err(e) if e.kind() == ErrorKind::Server(ServerErrorKind::NoScript) => {
                        // The script never ran: send it whole, once.
                        conn.query(&eval).await
                    }
                    other => other,
                }
            };
            let result = match tokio::time::timeout(inner.timeout, call).await {
                Ok(Ok(value)) => parse(&set, op, max_wait, value),
                Ok(Err(e)) => Err(store_error(e)),
                Err(_) => Err(StoreError::new(
                    StoreErrorKind::Timeout,
                    format!("Redis did not answer within {:?}", inner.timeout),
                    None,
                )),
            };
            inner.breaker.record(result.is_ok());
            result
        })
    }
}

/// `EVALSHA` and `EVAL` with the check's keys and arguments.
fn commands(inner: &Inner, check: &Check<'_>) -> (Cmd, Cmd) {
    let set = check.policies();
    let mut keys = Vec::with_capacity(set.len());
    for (p, params) in set.policies().iter().zip(set.params()) {
        let mut k = Vec::with_capacity(inner.prefix.len() + 40);
        write_key(&mut k, &inner.prefix, check.key(), p, params);
        keys.push(k);
    }
    let mut args: Vec<String> = Vec::with_capacity(3 + 6 * set.len());
    args.push(
        check
            .get_at_micros()
            .map_or(String::new(), |t| t.to_string()),
    );
    args.push(
        match check.get_op() {
            Op::Acquire => "a",
            Op::Peek => "p",
            Op::Release => "r",
            Op::Renew => "n",
            Op::Reset => "x",
        }
        .to_owned(),
    );
    args.push(check.cost().to_string());
    args.push(
        check
            .get_max_wait()
            .map_or("-1".to_owned(), |d| duration_micros(d).to_string()),
    );
    args.push(check.get_lease().to_string());
    for p in set.params() {
        args.push(algorithm_id(p.algorithm).to_string());
        for n in [p.limit, p.period, p.burst, p.unit, p.drain] {
            args.push(n.to_string());
        }
    }
    let build = |name: &str, first: &str| {
        let mut cmd = redis::cmd(name);
        cmd.arg(first).arg(keys.len());
        for k in &keys {
            cmd.arg(k.as_slice());
        }
        for a in &args {
            cmd.arg(a.as_str());
        }
        cmd
    };
    (build("EVALSHA", &inner.sha), build("EVAL", SCRIPT))
}

/// `<prefix>{<key>}:<policy>:<fingerprint>`, the key hashed when long or
/// holding braces.
fn write_key(
    out: &mut Vec<u8>,
    prefix: &str,
    key: &crate::key::Key,
    policy: &Policy,
    params: &Params,
) {
    let mut tagged = Vec::with_capacity(24);
    key.write_tagged(&mut tagged);
    out.extend_from_slice(prefix.as_bytes());
    out.push(b'{');
    if tagged.len() > MAX_KEY_BYTES || tagged.iter().any(|b| matches!(b, b'{' | b'}')) {
        let digest = sha1_smol::Sha1::from(&tagged).digest().to_string();
        let _ = write!(out, "h:{digest}");
    } else {
        out.extend_from_slice(&tagged);
    }
    out.extend_from_slice(b"}:");
    out.extend_from_slice(policy.name().as_bytes());
    // A policy changed in algorithm or quota starts afresh rather than
    // reading state counted in other units.
    let _ = write!(out, ":{:08x}", params.fingerprint >> 32);
}

fn algorithm_id(a: Algorithm) -> u8 {
    match a {
        Algorithm::Gcra => 1,
        Algorithm::TokenBucket => 2,
        Algorithm::GreedyTokenBucket => 3,
        Algorithm::LeakyBucket => 4,
        Algorithm::FixedWindow => 5,
        Algorithm::SlidingWindowLog => 6,
        Algorithm::SlidingWindowCounter => 7,
        Algorithm::Concurrency => 8,
    }
}

fn parse(
    set: &PolicySet,
    op: Op,
    max_wait: Option<Duration>,
    value: Value,
) -> Result<Decision, StoreError> {
    let bad = |what: String| StoreError::new(StoreErrorKind::Protocol, what, None);
    let v: Vec<i64> = redis::from_redis_value(value)
        .map_err(|e| bad(format!("unexpected reply from the rate limit script: {e}")))?;
    if v.len() != 3 + 4 * set.len() {
        return Err(bad(format!(
            "the rate limit script returned {} numbers for {} policies",
            v.len(),
            set.len()
        )));
    }
    let uint = |n: i64| u64::try_from(n).map_err(|_| bad(format!("negative number {n}")));
    let now = uint(v[0])?;
    let mut slots = Vec::with_capacity(set.len());
    let mut states = Vec::with_capacity(set.len());
    for chunk in v[3..].chunks_exact(4) {
        let t = uint(chunk[1])?;
        slots.push(match chunk[0] {
            0 => Slot::At(t),
            1 => Slot::QueueFull { retry_at: t },
            3 => Slot::Busy,
            _ => Slot::Never,
        });
        let full_at = if chunk[3] < 0 { now } else { uint(chunk[3])? };
        states.push((uint(chunk[2])?, full_at));
    }
    let decision = algorithm::assemble(set, now, max_wait, &slots, &states);
    if op == Op::Renew && v[1] == 0 {
        return Ok(decision.into_lost());
    }
    if decision.is_allowed() != (v[1] == 1) {
        return Err(bad(
            "the rate limit script and the crate disagree on the decision".into(),
        ));
    }
    Ok(decision)
}

fn store_error(e: RedisError) -> StoreError {
    let kind = match e.kind() {
        ErrorKind::Server(_) | ErrorKind::Parse | ErrorKind::UnexpectedReturnType => {
            StoreErrorKind::Protocol
        }
        _ => StoreErrorKind::Unavailable,
    };
    StoreError::new(kind, "Redis failed", Some(Box::new(e)))
}

/// Skips Redis for a cool-down after repeated failures.
struct Breaker {
    threshold: u32,
    cool_down: Duration,
    failures: AtomicU32,
    start: Instant,
    /// µs since `start` until which calls are skipped.
    open_until: AtomicU64,
    /// Whether the skip gauge says so, until a call succeeds again.
    skipping: std::sync::atomic::AtomicBool,
}

impl Breaker {
    fn new(threshold: u32, cool_down: Duration) -> Self {
        crate::observe::skipping(false);
        Self {
            threshold,
            cool_down,
            failures: AtomicU32::new(0),
            start: Instant::now(),
            open_until: AtomicU64::new(0),
            skipping: std::sync::atomic::AtomicBool::new(false),
        }
    }

    fn now(&self) -> u64 {
        duration_micros(self.start.elapsed())
    }

    fn is_open(&self) -> bool {
        self.now() < self.open_until.load(Ordering::Relaxed)
    }

    fn record(&self, ok: bool) {
        if ok {
            self.failures.store(0, Ordering::Relaxed);
            if self.skipping.load(Ordering::Relaxed) && self.skipping.swap(false, Ordering::Relaxed)
            {
                crate::observe::skipping(false);
            }
        } else if self.failures.fetch_add(1, Ordering::Relaxed) + 1 >= self.threshold {
            self.failures.store(0, Ordering::Relaxed);
            let until = self.now() + duration_micros(self.cool_down);
            self.open_until.store(until, Ordering::Relaxed);
            self.skipping.store(true, Ordering::Relaxed);
            crate::observe::skipping(true);
        }
    }
}
