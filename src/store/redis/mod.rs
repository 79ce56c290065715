//! [`RedisStore`]: limits shared by every instance of a service through one
//! Redis or Redis Cluster.

mod breaker;
mod coalesce;
mod denied;
mod reply;
mod script;

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::{Duration, Instant};

use redis::aio::{ConnectionLike, ConnectionManager, MultiplexedConnection};
use redis::{Arg, Cmd, ErrorKind, RedisError, ServerErrorKind, Value};

use self::breaker::Breaker;
use self::coalesce::{Batch, Joined, Lanes};
use self::denied::{Denied, Read};
use self::reply::{Reply, protocol};
use self::script::{Ask, Script, Scripts, Shape};
use super::{Check, Op, Store};
use crate::algorithm::{self, State};
use crate::clock::duration_micros;
use crate::decision::Decision;
use crate::error::{BoxError, ConfigError, StoreError, StoreErrorKind};
use crate::key::Key;
use crate::quota::{Params, Policy, PolicySet};

/// User keys longer than this are hashed.
const MAX_KEY_BYTES: usize = 64;
const DEFAULT_PREFIX: &str = "ratelimit:";
const DEFAULT_TIMEOUT: Duration = Duration::from_millis(100);
const DEFAULT_FAILURES: u32 = 5;
const DEFAULT_COOL_DOWN: Duration = Duration::from_secs(1);
const DEFAULT_DENIED_KEYS: usize = 10_000;
/// What [`Inner::functions`] knows: not yet, Redis 7 functions, scripts.
const UNKNOWN: u8 = 0;
const FUNCTIONS: u8 = 1;
const SCRIPTS: u8 = 2;
const DEFAULT_DENIED_AGE: Duration = Duration::from_secs(1);

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

/// Decides in Redis: one atomic Lua call per request, covering all of its
/// policies, with Redis's own clock (`TIME`), so every instance of a
/// service shares exact limits and app servers' clocks never matter.
///
/// - The Lua is made per shape of request (the policy set's algorithms and
///   what is asked; quotas are arguments) from the files in `lua/`, holding
///   only the code that shape needs, and the decision is computed again in
///   the crate from the state the script read, with the algorithms the
///   memory store uses, so both stores answer field for field alike.
///
/// - Keys are `<prefix>{<key>}:<policy>:<fingerprint>`: all of a request's
///   keys share the `{hash tag}`, so on Redis Cluster its script never hits
///   `CROSSSLOT`; the fingerprint names the policy's algorithm and quota, so
///   a policy whose configuration changes starts afresh instead of reading
///   state counted in other units.
///   Keys longer than 64 bytes or holding `{` or `}` are replaced by their
///   SHA-1, so no client input can reach another key or grow Redis without
///   bound. Every key expires once its state is back to full.
/// - On Redis 7 and later each shape is a function library, called with
///   `FCALL`: its helpers are made once, when it loads, not on every call.
///   When Redis does not have it (a restart, `FUNCTION FLUSH`, a new
///   master) it is loaded with `FUNCTION LOAD` (on every master of a
///   cluster) and called once more. Before Redis 7 the same code goes by
///   `EVALSHA`, and on `NOSCRIPT` it is sent once with `EVAL`. Either way
///   the call that failed never ran; nothing is resent after a timeout or
///   a lost connection, where it may have run: that could count a request
///   twice.
/// - Every call has a deadline (default 100 ms). After 5 failures in a row
///   the store is skipped for a cool-down (default 1 s), failing at once,
///   so a dead Redis adds no latency to every request; the layer's
///   [`FailurePolicy`](crate::FailurePolicy) decides what that means.
/// - Fewer calls, the same answers (both on by default, both can be turned
///   off): a key Redis turned away is turned away locally until its
///   states could admit it again
///   ([`denied_cache`](RedisStoreBuilder::denied_cache)), and requests for
///   one key arriving while its call is in flight go together in the next
///   call, decided one by one in arrival order
///   ([`coalesce`](RedisStoreBuilder::coalesce)).
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
    breaker: Breaker,
    scripts: Scripts,
    /// Whether Redis has functions (7.0 and later): [`UNKNOWN`] until the
    /// first call asks.
    functions: AtomicU8,
    denied: Denied,
    coalesce: bool,
    lanes: Lanes,
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
    denied_keys: usize,
    denied_age: Duration,
    coalesce: bool,
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

    /// Configures a store: key prefix, deadline, cool-down, the
    /// [denied cache](RedisStoreBuilder::denied_cache) and
    /// [coalescing](RedisStoreBuilder::coalesce) (both on by default).
    pub fn builder() -> RedisStoreBuilder {
        RedisStoreBuilder {
            prefix: DEFAULT_PREFIX.to_owned(),
            timeout: DEFAULT_TIMEOUT,
            failures: DEFAULT_FAILURES,
            cool_down: DEFAULT_COOL_DOWN,
            denied_keys: DEFAULT_DENIED_KEYS,
            denied_age: DEFAULT_DENIED_AGE,
            coalesce: true,
        }
    }

    /// The Lua script that decides a request for `set` in reject mode:
    /// the prelude, the files of `set`'s algorithms and a body for their
    /// shape, from `lua/`. Every policy set with the same algorithms in the
    /// same order shares it (quotas are arguments); wait mode, peeks,
    /// releases, renewals and resets have scripts of their own, made the
    /// same way. For inspection, or to load ahead with `SCRIPT LOAD`.
    #[must_use]
    pub fn script_source(set: &PolicySet) -> String {
        script::generate(
            set,
            Shape {
                ask: Ask::Acquire,
                wait: false,
                given_time: false,
            },
        )
        .text
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

    /// The denied cache: an exact local cache of denials, **on by
    /// default** (10,000 keys, 1 s). After Redis turns a request away, the
    /// store keeps the states that reply left for its key and policy set,
    /// and turns away locally, with no Redis call, any later request for
    /// them that those states deny, with the answer the script gives on
    /// them. A key flooded while over its limit costs Redis about one call
    /// per `max_age` (or per retry time, if shorter) instead of one per
    /// request. `max_keys` 0 turns it off:
    /// `.denied_cache(0, Duration::ZERO)`.
    ///
    /// Why it is exact: a request is denied here only when the cached
    /// states deny it at the latest time Redis's clock can show (the
    /// reply's time, plus what has elapsed here since the call was sent,
    /// plus 0.1% for clocks that run apart). Whatever other instances
    /// admitted since only adds to what Redis counts, and every algorithm
    /// is monotone in what it counts and in time, so Redis would deny it
    /// too. An entry is used until the denial's retry time or for
    /// `max_age`, whichever comes first, and is forgotten when this store
    /// admits a request for the key, resets the key, or sees the policy
    /// set with a changed quota (which names other Redis keys).
    ///
    /// Bounds:
    /// - memory: at most `max_keys` keys; when full, expired entries are
    ///   swept, then an eighth of the keys dropped;
    /// - another instance's [reset](crate::RateLimiter::reset) of the key
    ///   goes unseen here for up to `max_age`;
    /// - when another instance spent on the key since, the answer is the
    ///   same denial, with `remaining` and the retry time as of this
    ///   store's last reply (in reject mode a retry time no later than
    ///   Redis's).
    ///
    /// Policy sets with a [concurrency](crate::Algorithm::Concurrency)
    /// policy are never cached: a release frees units at any time.
    ///
    /// ```
    /// use std::time::Duration;
    /// use tower_ratelimit::store::RedisStore;
    ///
    /// let builder = RedisStore::builder().denied_cache(100_000, Duration::from_secs(5));
    /// let without = RedisStore::builder().denied_cache(0, Duration::ZERO);
    /// # let _ = (builder, without);
    /// ```
    pub fn denied_cache(mut self, max_keys: usize, max_age: Duration) -> Self {
        self.denied_keys = max_keys;
        self.denied_age = max_age;
        self
    }

    /// Coalescing, **on by default**: requests for a key (and policy set)
    /// that arrive while this store's call for it is in flight wait for
    /// that call, then go to Redis together in one call. `false` turns it
    /// off: every request sends its own call.
    ///
    /// The script decides them one by one, in the order they arrived, each
    /// all or nothing as if alone: the same answers as one call each, made
    /// back to back at one Redis `TIME`. A hot key then costs Redis one
    /// call per round trip rather than one per request. Only acquires and
    /// peeks are coalesced; a queued request whose caller goes away before
    /// its call is sent counts for nothing.
    ///
    /// Bounds: a call decides at most 512 requests, and a request finding
    /// 512 already queued goes alone, outside the queue; a request waiting
    /// behind a call has twice the [deadline](Self::timeout), for that call
    /// and its own, and is decided at the Redis `TIME` of the call it goes
    /// in, which is sent once the call ahead of it is answered.
    ///
    /// ```
    /// use tower_ratelimit::store::RedisStore;
    ///
    /// let one_call_each = RedisStore::builder().coalesce(false);
    /// # let _ = one_call_each;
    /// ```
    pub fn coalesce(mut self, coalesce: bool) -> Self {
        self.coalesce = coalesce;
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
                breaker: Breaker::new(self.failures, self.cool_down),
                scripts: Scripts::default(),
                functions: AtomicU8::new(UNKNOWN),
                denied: Denied::new(self.denied_keys, self.denied_age),
                coalesce: self.coalesce,
                lanes: Lanes::default(),
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
        let call = Call::of(&check);
        let request = Request::of(&check);
        let key = check.key();
        let denied = || self.inner.denied.answer(&check);
        let lead = if self.inner.coalesce && matches!(call.op, Op::Acquire | Op::Peek) {
            let joined =
                self.inner
                    .lanes
                    .join(&self.inner, &self.conn, key, &call, request, denied);
            match joined {
                Joined::Local(d) => return Box::pin(std::future::ready(Ok(d))),
                Joined::Wait(answer) => {
                    // Behind a call in flight, then in one of its own.
                    let deadline = 2 * self.inner.timeout;
                    return Box::pin(async move {
                        match tokio::time::timeout(deadline, answer).await {
                            Ok(Ok(result)) => result,
                            Ok(Err(_)) => Err(StoreError::new(
                                StoreErrorKind::Unavailable,
                                "the call this request waited for was dropped",
                                None,
                            )),
                            Err(_) => Err(timed_out(deadline)),
                        }
                    });
                }
                Joined::Lead(lead) => Some(lead),
                Joined::Alone => None,
            }
        } else {
            if let Some(d) = denied() {
                return Box::pin(std::future::ready(Ok(d)));
            }
            None
        };
        if self.inner.breaker.is_open() {
            return Box::pin(std::future::ready(Err(cooling_down())));
        }
        if call.op == Op::Reset {
            self.inner.denied.forget(key);
        }
        let key = key.clone();
        let inner = Arc::clone(&self.inner);
        let mut conn = self.conn.clone();
        Box::pin(async move {
            let batch = Batch::one(call, request);
            let result = inner.decide_batch(&mut conn, &key, &batch).await;
            // Hands the lane on to whatever waits behind this call.
            drop(lead);
            result.map(|mut decisions| decisions.swap_remove(0))
        })
    }

    fn decide_sync(&self, check: Check<'_>) -> Option<Result<Decision, StoreError>> {
        // Only a denial the cache proves is decided without Redis, and not
        // while a call of this store is about to change the key's state.
        if self.inner.coalesce && self.inner.lanes.busy(check.key(), check.policies()) {
            return None;
        }
        self.inner.denied.answer(&check).map(Ok)
    }
}

fn timed_out(deadline: Duration) -> StoreError {
    StoreError::new(
        StoreErrorKind::Timeout,
        format!("Redis did not answer within {deadline:?}"),
        None,
    )
}

pub(crate) fn no_runtime() -> StoreError {
    StoreError::new(
        StoreErrorKind::Unavailable,
        "no Tokio runtime to send the requests that waited from",
        None,
    )
}

impl Inner {
    /// Decides `batch`'s requests for `key` in one call.
    async fn decide_batch(
        &self,
        conn: &mut RedisConnection,
        key: &Key,
        batch: &Batch,
    ) -> Result<Vec<Decision>, StoreError> {
        if self.breaker.is_open() {
            return Err(cooling_down());
        }
        let call = &batch.call;
        let script = self.scripts.get(&call.set, call.shape());
        let cmd = command(&self.prefix, &script, key, call, &batch.requests);
        let sent = Instant::now();
        let replies = if call.op == Op::Reset {
            0
        } else {
            batch.requests.len()
        };
        let reply = send(self, conn, &script, &cmd, &call.set, replies).await?;
        let read_at = reply.now;
        let (decisions, states) = answer(call, &batch.requests, reply)?;
        if let Some(last) = decisions.last() {
            self.settled(key, call, &states, read_at, sent, last);
        }
        Ok(decisions)
    }
}

impl Inner {
    /// Takes in the outcome of a call for `key`: what the denied cache
    /// holds for it follows the call's last decision.
    fn settled(
        &self,
        key: &Key,
        call: &Call,
        states: &[Option<State>],
        read_at: u64,
        sent: Instant,
        last: &Decision,
    ) {
        match call.op {
            Op::Acquire | Op::Peek => self.denied.update(
                key,
                &call.set,
                Read {
                    states,
                    read_at,
                    sent,
                },
                last,
            ),
            Op::Reset => self.denied.forget(key),
            // Only concurrency policies change, and they are never cached.
            Op::Release | Op::Renew => {}
        }
    }
}

fn cooling_down() -> StoreError {
    StoreError::new(
        StoreErrorKind::Unavailable,
        "Redis skipped: cooling down after repeated failures",
        None,
    )
}

/// What one script call is about: a key's policy set, what is asked, and
/// the time if it is given. Every request of a call shares these.
#[derive(Clone)]
struct Call {
    set: PolicySet,
    op: Op,
    wait: bool,
    at: Option<u64>,
}

impl Call {
    fn of(check: &Check<'_>) -> Self {
        let op = check.get_op();
        Self {
            set: check.policies().clone(),
            op,
            wait: check.get_max_wait().is_some() && matches!(op, Op::Acquire | Op::Peek),
            at: check.get_at_micros(),
        }
    }

    fn shape(&self) -> Shape {
        Shape {
            ask: match self.op {
                Op::Acquire => Ask::Acquire,
                Op::Peek => Ask::Peek,
                Op::Release => Ask::Release,
                Op::Renew => Ask::Renew,
                Op::Reset => Ask::Reset,
            },
            wait: self.wait,
            given_time: self.at.is_some(),
        }
    }
}

/// One request of a call.
#[derive(Debug, Clone, Copy)]
struct Request {
    cost: u64,
    max_wait: Option<Duration>,
    lease: u64,
}

impl Request {
    fn of(check: &Check<'_>) -> Self {
        Self {
            cost: check.cost(),
            max_wait: check.get_max_wait(),
            lease: check.get_lease(),
        }
    }
}

/// `FCALL` of `script`'s function with the keys of `key` under `call`'s
/// policies and the arguments `lua/decide.lua` describes.
fn command(prefix: &str, script: &Script, key: &Key, call: &Call, requests: &[Request]) -> Cmd {
    let set = &call.set;
    let mut cmd = Cmd::with_capacity(
        4 + set.len() + requests.len() * script.stride.max(1),
        64 + set.len() * (prefix.len() + 64) + requests.len() * 24,
    );
    cmd.arg("FCALL").arg(&script.function).arg(set.len());
    // `<prefix>{<tag>}:` once, then each policy's name and fingerprint.
    let mut name = Vec::with_capacity(prefix.len() + 160);
    name.extend_from_slice(prefix.as_bytes());
    name.push(b'{');
    write_tag(&mut name, key);
    name.extend_from_slice(b"}:");
    let stem = name.len();
    for (p, params) in set.policies().iter().zip(set.params()) {
        name.truncate(stem);
        write_policy(&mut name, p, params);
        cmd.arg(name.as_slice());
    }
    if let Some(at) = call.at {
        cmd.arg(at);
    }
    if call.op == Op::Reset {
        return cmd;
    }
    // At most 4 numbers of 8 bytes per policy: on the stack.
    let mut params = [0_u8; 32 * PolicySet::MAX_POLICIES];
    let mut len = 0;
    for p in set.params() {
        let (values, n) = script::param_values(p);
        for v in &values[..n] {
            // Exact: every parameter is an integer below 2^53.
            #[allow(clippy::cast_precision_loss)]
            params[len..len + 8].copy_from_slice(&(*v as f64).to_be_bytes());
            len += 8;
        }
    }
    cmd.arg(&params[..len]);
    let leased = set.has_concurrency();
    match call.op {
        Op::Release | Op::Renew => {
            let r = requests[0];
            cmd.arg(r.lease).arg(r.cost);
        }
        _ => {
            for r in requests {
                cmd.arg(r.cost);
                if call.wait {
                    cmd.arg(r.max_wait.map_or(0, duration_micros));
                }
                if leased {
                    cmd.arg(r.lease);
                }
            }
        }
    }
    cmd
}

/// Calls `script`'s function with `cmd`'s arguments (an `FCALL`): loads
/// its library first if Redis does not have it, and falls back to
/// `EVALSHA` (then `EVAL` on `NOSCRIPT`) on a Redis without functions;
/// within the store's deadline. Nothing is sent again once it may have run.
async fn send(
    inner: &Inner,
    conn: &mut RedisConnection,
    script: &Script,
    cmd: &Cmd,
    set: &PolicySet,
    requests: usize,
) -> Result<Reply, StoreError> {
    let call = async {
        if inner.functions.load(Ordering::Relaxed) == UNKNOWN {
            // A function nobody defines: Redis 7 says it is not found;
            // older servers (and proxies) do not know the command. Nothing
            // binary goes along, so either error parses.
            let mut probe = redis::cmd("FCALL");
            probe.arg("tower_ratelimit_probe").arg(0);
            let mode = match conn.query(&probe).await {
                Err(e) if is_server_error(&e, "Function not found") => FUNCTIONS,
                Err(e) if matches!(e.kind(), ErrorKind::Server(_)) => SCRIPTS,
                Err(e) => return Err(e),
                Ok(_) => FUNCTIONS,
            };
            inner.functions.store(mode, Ordering::Relaxed);
        }
        if inner.functions.load(Ordering::Relaxed) == FUNCTIONS {
            return match conn.query(cmd).await {
                Err(e) if is_server_error(&e, "Function not found") => {
                    // It never ran. Load it (on every master of a cluster)
                    // and call it once more.
                    let mut load = redis::cmd("FUNCTION");
                    load.arg("LOAD").arg("REPLACE").arg(&script.library);
                    conn.query(&load).await?;
                    conn.query(cmd).await
                }
                other => other,
            };
        }
        let evalsha = with_head(cmd, "EVALSHA", &script.sha);
        match conn.query(&evalsha).await {
            Err(e) if e.kind() == ErrorKind::Server(ServerErrorKind::NoScript) => {
                // The script never ran: send it whole, once. The command
                // with its text is only built now.
                conn.query(&with_head(cmd, "EVAL", &script.text)).await
            }
            other => other,
        }
    };
    let result = match tokio::time::timeout(inner.timeout, call).await {
        Ok(Ok(value)) => reply::parse(set, value, requests),
        Ok(Err(e)) => Err(store_error(e)),
        Err(_) => Err(timed_out(inner.timeout)),
    };
    inner.breaker.record(result.is_ok());
    result
}

/// Whether `e` is Redis's `ERR` whose message starts with `message`.
fn is_server_error(e: &RedisError, message: &str) -> bool {
    e.code() == Some("ERR") && e.detail().is_some_and(|d| d.starts_with(message))
}

/// `cmd` with its first two arguments (the command and the function's
/// name) replaced.
fn with_head(cmd: &Cmd, name: &str, first: &str) -> Cmd {
    let mut out = redis::cmd(name);
    out.arg(first);
    for a in cmd.args_iter().skip(2) {
        if let Arg::Simple(bytes) = a {
            out.arg(bytes);
        }
    }
    out
}

/// Every request's decision, computed from the states the script read
/// the way the memory store computes them; and the states after them.
fn answer(
    call: &Call,
    requests: &[Request],
    mut reply: Reply,
) -> Result<(Vec<Decision>, Vec<Option<State>>), StoreError> {
    let set = &call.set;
    let now = reply.now;
    let mut states = std::mem::take(&mut reply.states);
    let short = || protocol("the rate limit script read less state than the decision needs");
    let mut decisions = Vec::with_capacity(requests.len());
    match call.op {
        Op::Acquire | Op::Peek => {
            let n = requests.len();
            for (j, r) in requests.iter().enumerate() {
                let d = if call.op == Op::Acquire {
                    algorithm::decide_view(set, &mut states, now, r.cost, r.max_wait)
                } else {
                    algorithm::check_view(set, &states, now, r.cost, r.max_wait)
                }
                .ok_or_else(short)?;
                if d.is_allowed() != reply.admitted(j, n) {
                    return Err(protocol(
                        "the rate limit script and the crate disagree on the decision",
                    ));
                }
                decisions.push(d);
            }
        }
        Op::Release | Op::Renew => {
            let d = algorithm::check_view(set, &states, now, 0, None).ok_or_else(short)?;
            decisions.push(if call.op == Op::Renew && !reply.admitted(0, 1) {
                d.into_lost()
            } else {
                d
            });
        }
        Op::Reset => {
            states = vec![None; set.len()];
            decisions.push(algorithm::check(set, &states, now, 0, None));
        }
    }
    Ok((decisions, states))
}

/// What goes between a key's braces: the tagged key, or its SHA-1 when it
/// is long or holds braces.
fn write_tag(out: &mut Vec<u8>, key: &Key) {
    let start = out.len();
    key.write_tagged(out);
    let tagged = &out[start..];
    if tagged.len() > MAX_KEY_BYTES || tagged.iter().any(|b| matches!(b, b'{' | b'}')) {
        let digest = sha1_smol::Sha1::from(tagged).digest().to_string();
        out.truncate(start);
        out.extend_from_slice(b"h:");
        out.extend_from_slice(digest.as_bytes());
    }
}

/// `<prefix>{<key>}:<policy>:<fingerprint>`.
fn write_key(out: &mut Vec<u8>, prefix: &str, key: &Key, policy: &Policy, params: &Params) {
    out.extend_from_slice(prefix.as_bytes());
    out.push(b'{');
    write_tag(out, key);
    out.extend_from_slice(b"}:");
    write_policy(out, policy, params);
}

/// `<policy>:<fingerprint>`.
fn write_policy(out: &mut Vec<u8>, policy: &Policy, params: &Params) {
    out.extend_from_slice(policy.name().as_bytes());
    // A policy changed in algorithm or quota starts afresh rather than
    // reading state counted in other units.
    out.push(b':');
    let top = params.fingerprint >> 32;
    for shift in (0..8).rev() {
        out.push(b"0123456789abcdef"[((top >> (shift * 4)) & 0xf) as usize]);
    }
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
