//! [`RedisStore`]: limits shared by every instance of a service through one
//! Redis, Redis Cluster or a Redis watched by Sentinel.

mod breaker;
mod bus;
mod coalesce;
mod connect;
mod denied;
mod keys;
mod nodes;
mod reply;

/// The reply fuzzing harness, for `cargo fuzz` (`--cfg fuzzing`).
#[cfg(fuzzing)]
pub(crate) use reply::fuzz as fuzz_reply;
mod script;
#[cfg(feature = "redis-sentinel")]
mod sentinel;

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicI64, AtomicU8, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use redis::aio::{ConnectionLike, ConnectionManager, MultiplexedConnection};
use redis::{Arg, Cmd, ErrorKind, RedisError, ServerErrorKind, Value};

pub use self::connect::{ConnectError, ConnectErrorKind, MIN_REDIS_VERSION};
#[cfg(feature = "redis-sentinel")]
pub use self::sentinel::SentinelConnection;

use self::breaker::Admit;
use self::bus::Bus;
use self::coalesce::{Batch, Joined, Lanes};
use self::connect::{Access, Mode, Secret};
use self::denied::{Denied, Read};
use self::keys::KeyHash;
use self::nodes::Breakers;
use self::reply::{Reply, protocol};
use self::script::{Ask, Script, Scripts, Shape};
use super::{Check, Op, Store};
use crate::algorithm::{self, State};
use crate::clock::duration_micros;
use crate::decision::Decision;
use crate::error::{ConfigError, StoreError, StoreErrorKind};
use crate::key::Key;
use crate::quota::{Params, Policy, PolicySet};

const DEFAULT_PREFIX: &str = "ratelimit:";
const DEFAULT_TIMEOUT: Duration = Duration::from_millis(100);
const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
const DEFAULT_FAILURES: u32 = 5;
const DEFAULT_COOL_DOWN: Duration = Duration::from_secs(1);
const DEFAULT_DENIED_KEYS: usize = 10_000;
/// What [`Inner::functions`] knows: not yet, Redis 7 functions, scripts.
const UNKNOWN: u8 = 0;
const FUNCTIONS: u8 = 1;
const SCRIPTS: u8 = 2;
const DEFAULT_DENIED_AGE: Duration = Duration::from_secs(1);
const DEFAULT_CALLS_IN_FLIGHT: usize = 2;
/// The most times one call loads its function library: a `FUNCTION FLUSH`
/// may come between a load and the call.
const MAX_LOADS: u32 = 3;

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
    /// the store must not resend a script that may have run. The store
    /// follows `MOVED` and `ASK` itself, once.
    #[cfg(feature = "redis-cluster")]
    Cluster(redis::cluster_async::ClusterConnection),
    /// The master Redis Sentinel names (what
    /// [`RedisStoreBuilder::connect_sentinel`] makes).
    #[cfg(feature = "redis-sentinel")]
    Sentinel(SentinelConnection),
}

impl fmt::Debug for RedisConnection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            RedisConnection::Manager(_) => "RedisConnection::Manager",
            RedisConnection::Multiplexed(_) => "RedisConnection::Multiplexed",
            #[cfg(feature = "redis-cluster")]
            RedisConnection::Cluster(_) => "RedisConnection::Cluster",
            #[cfg(feature = "redis-sentinel")]
            RedisConnection::Sentinel(_) => "RedisConnection::Sentinel",
        })
    }
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

#[cfg(feature = "redis-sentinel")]
impl From<SentinelConnection> for RedisConnection {
    fn from(c: SentinelConnection) -> Self {
        RedisConnection::Sentinel(c)
    }
}

impl RedisConnection {
    /// A call on it missed the store's deadline: a connection that can
    /// find its node again (Sentinel's master) drops this one.
    fn missed_deadline(&self) {
        #[cfg(feature = "redis-sentinel")]
        if let RedisConnection::Sentinel(c) = self {
            c.forget();
        }
    }

    async fn query(&mut self, cmd: &Cmd) -> Result<Value, RedisError> {
        let value = match self {
            RedisConnection::Manager(c) => c.req_packed_command(cmd).await,
            RedisConnection::Multiplexed(c) => c.req_packed_command(cmd).await,
            #[cfg(feature = "redis-cluster")]
            RedisConnection::Cluster(c) => c.req_packed_command(cmd).await,
            #[cfg(feature = "redis-sentinel")]
            RedisConnection::Sentinel(c) => c.query(cmd).await,
        }?;
        value.extract_error()
    }

    /// `cmd` on the node at `addr` after `ASKING` (a Cluster slot being
    /// migrated there).
    async fn query_asking(&mut self, cmd: &Cmd, addr: (&str, u16)) -> Result<Value, RedisError> {
        #[cfg(feature = "redis-cluster")]
        if let RedisConnection::Cluster(c) = self {
            use redis::cluster_routing::SingleNodeRoutingInfo;
            let mut pipe = redis::pipe();
            pipe.cmd("ASKING").add_command(cmd.clone());
            let route = SingleNodeRoutingInfo::ByAddress {
                host: addr.0.to_owned(),
                port: addr.1,
            };
            let mut values = c.route_pipeline(pipe, 1, 1, route).await?;
            return values.pop().unwrap_or(Value::Nil).extract_error();
        }
        let _ = addr;
        self.query(cmd).await
    }

    /// `cmd` on the node at `addr` (where a Cluster `MOVED` points); by the
    /// usual routing when the connection does not know that node yet.
    async fn query_at(&mut self, cmd: &Cmd, addr: (&str, u16)) -> Result<Value, RedisError> {
        #[cfg(feature = "redis-cluster")]
        if let RedisConnection::Cluster(c) = self {
            use redis::cluster_routing::{RoutingInfo, SingleNodeRoutingInfo};
            let route = RoutingInfo::SingleNode(SingleNodeRoutingInfo::ByAddress {
                host: addr.0.to_owned(),
                port: addr.1,
            });
            match c.route_command(cmd.clone(), route).await {
                Err(e) if e.kind() == ErrorKind::Client => {}
                other => return other?.extract_error(),
            }
        }
        let _ = addr;
        self.query(cmd).await
    }

    fn is_cluster(&self) -> bool {
        #[cfg(feature = "redis-cluster")]
        return matches!(self, RedisConnection::Cluster(_));
        #[cfg(not(feature = "redis-cluster"))]
        false
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
///   state counted in other units. String and byte keys (API keys, tokens,
///   user names: what comes from clients) are stored as a keyed hash
///   (`k:` and 32 hex digits, see [`RedisStoreBuilder::hash_keys`]), never
///   verbatim; integers and IP addresses as they are. Any key longer than
///   64 bytes or holding `{` or `}` is hashed too, so no client input can
///   reach another key or grow Redis without bound. Every key expires once
///   its state is back to full.
/// - On Redis 7 and later each shape is a function library, called with
///   `FCALL`: its helpers are made once, when it loads, not on every call.
///   When Redis does not have it (a restart, `FUNCTION FLUSH`, a new
///   master) it is loaded with `FUNCTION LOAD` (on every master of a
///   cluster) and called once more. Before Redis 7 the same code goes by
///   `EVALSHA`, and on `NOSCRIPT` it is sent once with `EVAL`. Either way
///   the call that failed never ran; nothing is resent after a timeout or
///   a lost connection, where it may have run: that could count a request
///   twice. On Cluster, `MOVED` and `ASK` (the script never ran) are
///   followed once.
/// - Every call has a deadline (default 100 ms). Failures are told apart:
///   a lost connection, a timeout, `LOADING`, `READONLY`, `CLUSTERDOWN`,
///   `TRYAGAIN`, `BUSY`, `MASTERDOWN`, `OOM` say Redis is unavailable;
///   `WRONGTYPE` or a script error on one key's value fail that request
///   only ([`StoreErrorKind::Data`]). After 5 availability failures in a
///   row (on Cluster: of one master) the store skips that Redis (that
///   master's keys) for a cool-down (default 1 s), failing at once, so a
///   dead Redis adds no latency to every request; then one request probes
///   it, and only its answer lets all traffic back. The calls in flight on
///   a connection that is lost fail together and count as one failure: a
///   killed connection costs a reconnection, not a cool-down. The layer's
///   [`FailurePolicy`](crate::FailurePolicy) decides what a failure means.
/// - [`RedisStore::connect`] checks what it reached within its connect
///   timeout (default 2 s): the credentials, that the server is a
///   standalone Redis (a Cluster node or a Sentinel is refused, naming the
///   constructor to use) and at least [`MIN_REDIS_VERSION`]; a
///   [`ConnectError`] says what is wrong.
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
    /// This store, for the tasks it spawns (they end when it is dropped).
    #[cfg_attr(not(feature = "redis-cluster"), allow(dead_code))]
    me: Weak<Inner>,
    prefix: Box<str>,
    timeout: Duration,
    breakers: Breakers,
    scripts: Scripts,
    /// Whether Redis has functions (7.0 and later): [`UNKNOWN`] until the
    /// first call asks.
    functions: AtomicU8,
    denied: Denied,
    coalesce: bool,
    lanes: Lanes,
    /// Calls in flight, and the requests for other keys that wait to go
    /// together in the next.
    bus: Bus,
    /// Hashes string keys; `None` leaves them readable.
    key_hash: Option<KeyHash>,
    /// The Redis time this store has seen, which its decisions never go
    /// back from.
    timeline: Timeline,
}

/// The latest Redis time a store has seen, run on by this machine's
/// monotonic clock: a floor for the time of its next decisions, so that a
/// Redis clock stepping back (a failover to a node whose clock is behind)
/// holds no active key back. The floor runs 0.1% slower than the local
/// clock (for clocks that run apart), from a time Redis had already read
/// when its reply arrived: never ahead of the timeline Redis showed.
///
/// A reply reading Redis's time `r` when this clock reads `l` (µs since
/// `start`) gives the floor `r + 0.999 (now - l)`. The best of them is the
/// one with the largest `1000 r - 999 l`, kept in one atomic: no lock.
#[derive(Debug)]
struct Timeline {
    start: Instant,
    /// `1000 r - 999 l` of the best reply; `i64::MIN` before any.
    best: AtomicI64,
}

impl Timeline {
    fn new() -> Self {
        Self {
            start: Instant::now(),
            best: AtomicI64::new(i64::MIN),
        }
    }

    fn local(&self) -> i64 {
        i64::try_from(duration_micros(self.start.elapsed())).unwrap_or(i64::MAX)
    }

    /// The least time the next decision may be made at (0: none known).
    fn floor(&self) -> u64 {
        let best = self.best.load(Ordering::Relaxed);
        if best == i64::MIN {
            return 0;
        }
        let floor = (i128::from(best) + 999 * i128::from(self.local())) / 1000;
        u64::try_from(floor).unwrap_or(0)
    }

    /// A reply read Redis's time as `at`.
    fn saw(&self, at: u64) {
        let key = i128::from(at) * 1000 - 999 * i128::from(self.local());
        let key = i64::try_from(key).unwrap_or(if key < 0 { i64::MIN + 1 } else { i64::MAX });
        self.best.fetch_max(key, Ordering::Relaxed);
    }
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
    calls_in_flight: usize,
    hash_keys: bool,
    key_secret: Option<Secret<Vec<u8>>>,
    access: Access,
}

impl RedisStore {
    /// Connects to `url` (`redis://[user:password@]host[:port][/db]`, or
    /// `rediss://…` with the `redis-tls` feature) with a reconnecting
    /// connection and the default settings.
    ///
    /// # Errors
    ///
    /// Within the connect timeout (2 s): a bad URL, Redis could not be
    /// reached or did not answer, refused the credentials, is a Cluster
    /// node or a Sentinel, or is older than [`MIN_REDIS_VERSION`]. The
    /// [`ConnectError`] names which.
    pub async fn connect(url: &str) -> Result<Self, ConnectError> {
        Self::builder().connect(url).await
    }

    /// Configures a store: key prefix, deadlines, cool-down, credentials,
    /// the [denied cache](RedisStoreBuilder::denied_cache) and
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
            calls_in_flight: DEFAULT_CALLS_IN_FLIGHT,
            hash_keys: true,
            key_secret: None,
            access: Access {
                connect_timeout: DEFAULT_CONNECT_TIMEOUT,
                ..Access::default()
            },
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
                many_keys: false,
            },
        )
        .text
    }

    /// The Redis key holding the state of policy `index` of `set` for
    /// `key`: exactly what Redis stores.
    ///
    /// ```
    /// use tower_ratelimit::key::Key;
    /// use tower_ratelimit::store::RedisStore;
    /// use tower_ratelimit::{Policy, PolicySet, Quota};
    ///
    /// # tokio::runtime::Runtime::new().unwrap().block_on(async {
    /// # let conn = redis::Client::open("redis://127.0.0.1:1/").unwrap();
    /// # let conn = redis::aio::ConnectionManager::new_lazy_with_config(conn, Default::default()).unwrap();
    /// let store = RedisStore::builder().key_secret("s3cret").build(conn).unwrap();
    /// let set = PolicySet::new(vec![Policy::new("burst", Quota::per_second(5))]).unwrap();
    /// let token = store.redis_key(&Key::from("sk_live_51H8xY"), &set, 0);
    /// assert!(token.starts_with("ratelimit:{k:"), "{token}");
    /// assert!(!token.contains("sk_live"));
    /// let ip = store.redis_key(&Key::from(std::net::Ipv4Addr::new(10, 0, 0, 1)), &set, 0);
    /// assert!(ip.starts_with("ratelimit:{ip:10.0.0.1}:burst:"), "{ip}");
    /// # });
    /// ```
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
            self.inner.key_hash.as_ref(),
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

    /// How long [`connect`](Self::connect), `connect_cluster` and
    /// `connect_sentinel` may take in all before they give up with a
    /// [`ConnectErrorKind::Timeout`] (default 2 s). Reconnections after
    /// start use it too.
    ///
    /// ```
    /// use std::time::Duration;
    /// use tower_ratelimit::store::RedisStore;
    ///
    /// let builder = RedisStore::builder().connect_timeout(Duration::from_millis(500));
    /// # let _ = builder;
    /// ```
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.access.connect_timeout = timeout;
        self
    }

    /// The ACL user to log in as, over the URL's (`redis://user:pw@…`).
    ///
    /// ```
    /// use tower_ratelimit::store::RedisStore;
    ///
    /// let builder = RedisStore::builder()
    ///     .username("ratelimiter")
    ///     .password(std::env::var("REDIS_PASSWORD").unwrap_or_default());
    /// # let _ = builder;
    /// ```
    pub fn username(mut self, username: impl Into<String>) -> Self {
        self.access.username = Some(username.into());
        self
    }

    /// The password, over the URL's; never shown by `Debug` or in errors.
    pub fn password(mut self, password: impl Into<String>) -> Self {
        self.access.password = Some(Secret(password.into()));
        self
    }

    /// The database number, over the URL's (`redis://host/3`). Redis
    /// Cluster has only database 0.
    ///
    /// ```
    /// use tower_ratelimit::store::RedisStore;
    ///
    /// let builder = RedisStore::builder().database(3);
    /// # let _ = builder;
    /// ```
    pub fn database(mut self, db: i64) -> Self {
        self.access.database = Some(db);
        self
    }

    /// Trusts the CA certificates in `pem` for `rediss://` instead of the
    /// system's roots.
    ///
    /// ```no_run
    /// use tower_ratelimit::store::RedisStore;
    ///
    /// let builder = RedisStore::builder().tls_root_ca(std::fs::read("ca.crt").unwrap());
    /// # let _ = builder;
    /// ```
    #[cfg(feature = "redis-tls")]
    pub fn tls_root_ca(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.access.tls.root_ca = Some(pem.into());
        self
    }

    /// Presents a client certificate (`--tls-auth-clients yes`): the
    /// certificate chain and its private key, both PEM.
    #[cfg(feature = "redis-tls")]
    pub fn tls_client_cert(
        mut self,
        cert_pem: impl Into<Vec<u8>>,
        key_pem: impl Into<String>,
    ) -> Self {
        self.access.tls.client_cert = Some((cert_pem.into(), Secret(key_pem.into())));
        self
    }

    /// The password of the sentinels themselves (`requirepass` in their
    /// configuration), when they have one; the master's is
    /// [`password`](Self::password).
    #[cfg(feature = "redis-sentinel")]
    pub fn sentinel_password(mut self, password: impl Into<String>) -> Self {
        self.access.sentinel_password = Some(Secret(password.into()));
        self
    }

    /// After `failures` availability failures in a row, skip Redis (on
    /// Cluster, the failing master's keys) for `cool_down` (default: 5
    /// failures, 1 s); then one request probes it. `Duration::MAX` means
    /// never come back on its own. The calls in flight on a lost
    /// connection count as one failure.
    ///
    /// ```
    /// use std::time::Duration;
    /// use tower_ratelimit::store::RedisStore;
    ///
    /// let builder = RedisStore::builder().cool_down(3, Duration::from_millis(500));
    /// # let _ = builder;
    /// ```
    pub fn cool_down(mut self, failures: u32, cool_down: Duration) -> Self {
        self.failures = failures;
        self.cool_down = cool_down;
        self
    }

    /// Whether string and byte keys (API keys, tokens, user names) are
    /// stored as a keyed hash rather than verbatim (default: yes). With
    /// it, Redis (and `SCAN`, `MONITOR`, the slowlog) shows
    /// `ratelimit:{k:<32 hex digits>}:<policy>:<fingerprint>`: the first
    /// 128 bits of HMAC-SHA1 over the key's kind and bytes (`s:sk_live_…`)
    /// under [`key_secret`](Self::key_secret). Integer, IP address and
    /// global keys stay readable (`{n:42}`, `{ip:10.0.0.1}`, `{g}`).
    /// Without it, string keys are stored as they are (`{s:alice}`), except
    /// those longer than 64 bytes or holding braces, which become `{h:` and
    /// their SHA-1 `}`. Every instance sharing limits must agree on this
    /// and on the secret.
    ///
    /// ```
    /// use tower_ratelimit::store::RedisStore;
    ///
    /// let readable = RedisStore::builder().hash_keys(false);
    /// # let _ = readable;
    /// ```
    pub fn hash_keys(mut self, hash: bool) -> Self {
        self.hash_keys = hash;
        self
    }

    /// The secret of the keyed hash of [`hash_keys`](Self::hash_keys).
    /// Without one, a fixed public key is used: tokens still never appear
    /// in Redis, but someone who reads Redis can test guesses of short
    /// keys (user names, emails) against the hashes. Give every instance
    /// the same secret, from your secret store.
    ///
    /// ```
    /// use tower_ratelimit::store::RedisStore;
    ///
    /// let builder = RedisStore::builder()
    ///     .key_secret(std::env::var("RATELIMIT_KEY_SECRET").unwrap_or_default());
    /// # let _ = builder;
    /// ```
    pub fn key_secret(mut self, secret: impl AsRef<[u8]>) -> Self {
        self.key_secret = Some(Secret(secret.as_ref().to_vec()));
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
    /// behind a call has three times the [deadline](Self::timeout): for
    /// the place in flight that call may wait for
    /// ([`calls_in_flight`](Self::calls_in_flight)), that call and its own.
    /// It is decided at the Redis `TIME` of the call it goes in, which is
    /// sent once the call ahead of it is answered.
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

    /// The most calls of requests that lead their key (the first for a
    /// key with no call in flight) this store has in flight at once for
    /// one policy set (and op, wait mode and given time: what may share a
    /// call), **2 by default**; 0 for no bound. Such requests that arrive
    /// while that many are in flight wait, then go to Redis together in one
    /// call (at most 64 keys), whose script decides each key's requests in
    /// turn as a call for that key alone would: the same answers, at one
    /// Redis `TIME`.
    /// Under load Redis then runs a few calls that decide many keys each,
    /// not one call per key, and serves more decisions a second for less
    /// of its time each.
    ///
    /// - It rides on [`coalesce`](Self::coalesce) (off with it) and takes
    ///   only acquires and peeks; the calls of requests queued behind their
    ///   key's call, and of releases, renewals and resets, are not bounded.
    /// - A waiting request keeps its key's place: its key's lane sends no
    ///   other call until it is answered (only a request that finds 512
    ///   queued for the key goes alone, as with coalescing alone).
    /// - At most 64 kinds (policy set, op, mode, given time) are bounded at
    ///   once: calls of more kinds, such as many distinct given times, go
    ///   unbounded.
    /// - A waiting request whose caller goes away counts for nothing; one
    ///   that no call has taken within the [deadline](Self::timeout) is
    ///   answered that it timed out, and counts for nothing either. So a
    ///   request waits at most the deadline for a call, then the deadline
    ///   for that call.
    /// - Each policy set (op, mode, given time) has its own bound: sets
    ///   do not wait for each other's calls.
    /// - On a Redis Cluster, whose keys live on different masters, every
    ///   key has its own call.
    ///
    /// ```
    /// use tower_ratelimit::store::RedisStore;
    ///
    /// let more_at_once = RedisStore::builder().calls_in_flight(16);
    /// let one_call_per_key = RedisStore::builder().calls_in_flight(0);
    /// # let _ = (more_at_once, one_call_per_key);
    /// ```
    pub fn calls_in_flight(mut self, calls: usize) -> Self {
        self.calls_in_flight = calls;
        self
    }

    fn validate(&self) -> Result<(), ConfigError> {
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
        if self.access.connect_timeout.is_zero() {
            return Err(ConfigError::new(
                "connect_timeout",
                "must be more than zero",
            ));
        }
        if self.failures == 0 {
            return Err(ConfigError::new("failures", "must be at least 1"));
        }
        Ok(())
    }

    /// The store, over `conn`.
    ///
    /// # Errors
    ///
    /// A prefix holding `{` or `}`, a zero timeout, or zero failures.
    pub fn build(self, conn: impl Into<RedisConnection>) -> Result<RedisStore, ConfigError> {
        self.validate()?;
        let conn = conn.into();
        let per_node = conn.is_cluster();
        let key_hash = self.hash_keys.then(|| {
            KeyHash::new(
                self.key_secret
                    .as_ref()
                    .map_or(keys::PUBLIC_KEY, |s| s.0.as_slice()),
            )
        });
        Ok(RedisStore {
            conn,
            inner: Arc::new_cyclic(|me| Inner {
                me: me.clone(),
                prefix: self.prefix.into(),
                timeout: self.timeout,
                breakers: Breakers::new(self.failures, self.cool_down, per_node),
                scripts: Scripts::default(),
                functions: AtomicU8::new(UNKNOWN),
                denied: Denied::new(self.denied_keys, self.denied_age),
                coalesce: self.coalesce,
                lanes: Lanes::default(),
                // Keys in one call share one Redis: not on a Cluster.
                bus: Bus::new(if per_node || !self.coalesce {
                    0
                } else {
                    self.calls_in_flight
                }),
                timeline: Timeline::new(),
                key_hash,
            }),
        })
    }

    /// Connects to a standalone Redis at `url`
    /// (`redis://[user:password@]host[:port][/db]`, or `rediss://…` with
    /// the `redis-tls` feature) with a reconnecting connection, after
    /// checking it answers, takes the credentials, is standalone and at
    /// least [`MIN_REDIS_VERSION`].
    ///
    /// # Errors
    ///
    /// Within the [connect timeout](Self::connect_timeout), a
    /// [`ConnectError`] that names the problem: a bad setting or URL,
    /// nothing listening, no answer, refused credentials, a TLS or plain
    /// port given the other kind of URL, a Cluster node or a Sentinel, a
    /// Redis too old.
    pub async fn connect(self, url: &str) -> Result<RedisStore, ConnectError> {
        self.validate()?;
        let info = self.access.info(url)?;
        let client = self.access.client(info)?;
        // The first connection checks what is there; the manager's is the
        // store's.
        self.access.checked(&client, Mode::Standalone).await?;
        let manager = self.access.manager(client).await?;
        Ok(self.build(manager)?)
    }

    /// Connects to a Redis Cluster through any of its nodes' URLs, after
    /// checking the nodes answer, take the credentials, are Cluster nodes
    /// and at least [`MIN_REDIS_VERSION`].
    ///
    /// Keys of healthy masters keep being decided while another master
    /// fails over only if the cluster does not stop serving when a slot is
    /// uncovered: set `cluster-require-full-coverage no` on the nodes.
    ///
    /// # Errors
    ///
    /// As [`connect`](Self::connect); a standalone Redis is refused,
    /// naming `connect`.
    #[cfg(feature = "redis-cluster")]
    pub async fn connect_cluster(
        self,
        urls: impl IntoIterator<Item = impl AsRef<str>>,
    ) -> Result<RedisStore, ConnectError> {
        use redis::cluster_routing::{RoutingInfo, SingleNodeRoutingInfo};

        self.validate()?;
        if self.access.database.is_some_and(|db| db != 0) {
            return Err(ConnectError::new(
                ConnectErrorKind::Config,
                "database: Redis Cluster has only database 0",
            ));
        }
        let mut infos = Vec::new();
        for url in urls {
            infos.push(self.access.info(url.as_ref())?);
        }
        let Some(first) = infos.first() else {
            return Err(ConnectError::new(
                ConnectErrorKind::Config,
                "connect_cluster needs at least one node's URL",
            ));
        };
        let addr = first.addr().to_string();
        let tls = matches!(first.addr(), redis::ConnectionAddr::TcpTls { .. });
        let limit = self.access.connect_timeout;
        #[cfg_attr(not(feature = "redis-tls"), allow(unused_mut))]
        let mut builder = redis::cluster::ClusterClientBuilder::new(infos)
            // A script that may have run is never sent again.
            .retries(0)
            .connection_timeout(limit)
            .response_timeout(limit);
        #[cfg(feature = "redis-tls")]
        if tls {
            connect::install_crypto_provider();
            if self.access.tls.is_set() {
                builder = builder.certs(self.access.tls.certificates());
            }
        }
        let client = builder
            .build()
            .map_err(|e| connect::explain(e, &addr, tls, limit))?;
        let conn = connect::within(limit, &addr, async {
            let mut conn = client
                .get_async_connection()
                .await
                .map_err(|e| connect::explain(e, &addr, tls, limit))?;
            let info = conn
                .route_command(
                    redis::cmd("INFO").arg("server").clone(),
                    RoutingInfo::SingleNode(SingleNodeRoutingInfo::Random),
                )
                .await
                .map_err(|e| connect::explain(e, &addr, tls, limit))?;
            let info: String = redis::from_redis_value(info).map_err(|e| {
                ConnectError::new(
                    ConnectErrorKind::Protocol,
                    format!("{addr} sent no INFO: {e}"),
                )
            })?;
            connect::check_server(&info, Mode::Cluster, &addr)?;
            Ok(conn)
        })
        .await?;
        let store = self.build(conn)?;
        if let RedisConnection::Cluster(c) = &store.conn {
            nodes::cluster::refresh(&store.inner, c);
        }
        Ok(store)
    }

    /// Connects to the master that the sentinels at `sentinel_urls`
    /// (`redis://host:26379`) name for `master_name`, and follows it
    /// through failovers: a call that finds the master gone drops the
    /// connection, and the next asks the sentinels again. The builder's
    /// username, password, database and TLS settings are for the master;
    /// [`sentinel_password`](Self::sentinel_password) for the sentinels.
    ///
    /// ```no_run
    /// # async fn run() -> Result<(), tower_ratelimit::BoxError> {
    /// use tower_ratelimit::store::RedisStore;
    ///
    /// let store = RedisStore::builder()
    ///     .password("master-password")
    ///     .connect_sentinel(["redis://10.0.0.1:26379", "redis://10.0.0.2:26379"], "mymaster")
    ///     .await?;
    /// # let _ = store;
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// As [`connect`](Self::connect), for the sentinels and the master
    /// they name; [`ConnectErrorKind::Other`] when no sentinel knows
    /// `master_name`.
    #[cfg(feature = "redis-sentinel")]
    pub async fn connect_sentinel(
        self,
        sentinel_urls: impl IntoIterator<Item = impl AsRef<str>>,
        master_name: &str,
    ) -> Result<RedisStore, ConnectError> {
        self.validate()?;
        let sentinels_access = Access {
            connect_timeout: self.access.connect_timeout,
            username: None,
            password: self.access.sentinel_password.clone(),
            database: None,
            #[cfg(feature = "redis-tls")]
            tls: self.access.tls.clone(),
            sentinel_password: None,
        };
        let mut addrs = Vec::new();
        for url in sentinel_urls {
            addrs.push(sentinels_access.info(url.as_ref())?);
        }
        let Some(first) = addrs.first() else {
            return Err(ConnectError::new(
                ConnectErrorKind::Config,
                "connect_sentinel needs at least one sentinel's URL",
            ));
        };
        let limit = self.access.connect_timeout;
        let sentinel_addr = first.addr().to_string();
        let sentinel_tls = matches!(first.addr(), redis::ConnectionAddr::TcpTls { .. });
        let mut builder = redis::sentinel::SentinelClientBuilder::new(
            addrs.iter().map(|i| i.addr().clone()),
            master_name,
            redis::sentinel::SentinelServerType::Master,
        )
        .map_err(|e| connect::explain(e, &sentinel_addr, sentinel_tls, limit))?
        .set_client_to_redis_tcp_settings(redis::io::tcp::TcpSettings::default());
        if let Some(user) = &self.access.username {
            builder = builder.set_client_to_redis_username(user);
        }
        if let Some(pw) = &self.access.password {
            builder = builder.set_client_to_redis_password(&pw.0);
        }
        if let Some(db) = self.access.database {
            builder = builder.set_client_to_redis_db(db);
        }
        if let Some(pw) = &self.access.sentinel_password {
            builder = builder.set_client_to_sentinel_password(&pw.0);
        }
        if sentinel_tls {
            builder = builder.set_client_to_sentinel_tls_mode(redis::TlsMode::Secure);
        }
        #[cfg(feature = "redis-tls")]
        if sentinel_tls {
            connect::install_crypto_provider();
            if self.access.tls.is_set() {
                builder = builder
                    .set_client_to_redis_tls_mode(redis::TlsMode::Secure)
                    .set_client_to_redis_certificates(self.access.tls.certificates())
                    .set_client_to_sentinel_certificates(self.access.tls.certificates());
            }
        }
        let mut client = builder
            .build()
            .map_err(|e| connect::explain(e, &sentinel_addr, sentinel_tls, limit))?;
        // The master's client, then its connection, checked.
        let master = connect::within(limit, &sentinel_addr, async {
            client.async_get_client().await.map_err(|e| {
                if matches!(
                    e.kind(),
                    ErrorKind::MasterNameNotFoundBySentinel
                        | ErrorKind::NoValidReplicasFoundBySentinel
                ) {
                    ConnectError::new(
                        ConnectErrorKind::Other,
                        format!("no sentinel knows a master named {master_name:?}"),
                    )
                } else {
                    connect::explain(e, &sentinel_addr, sentinel_tls, limit)
                }
            })
        })
        .await?;
        self.access.checked(&master, Mode::Standalone).await?;
        let config = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(Some(limit))
            .set_response_timeout(None);
        let conn = SentinelConnection::new(client, config, limit);
        let addr = master.get_connection_info().addr().to_string();
        connect::within(limit, &addr, async {
            conn.master()
                .await
                .map_err(|e| connect::explain(e, &addr, sentinel_tls, limit))
        })
        .await?;
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
                    // Behind a call in flight (which may first wait for a
                    // place in flight), then in one of its own.
                    return Box::pin(waited(answer, 3 * self.inner.timeout));
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
        if !self.inner.breakers.per_node() && self.inner.breakers.get(None).is_open() {
            return Box::pin(std::future::ready(Err(cooling_down())));
        }
        if call.op == Op::Reset {
            self.inner.denied.forget(key);
        }
        let key = key.clone();
        let inner = Arc::clone(&self.inner);
        let mut conn = self.conn.clone();
        Box::pin(async move {
            // A place in flight is taken when the future is first polled.
            let (permit, lead) = match lead {
                Some(lead) if inner.bus.bounded() => {
                    match inner.bus.enter(&inner, &conn, &key, &call, request, lead) {
                        Ok((permit, lead)) => (permit, Some(lead)),
                        // Behind the calls in flight, then in one with
                        // other keys, which hands the lane on.
                        Err(answer) => return waited(answer, 3 * inner.timeout).await,
                    }
                }
                lead => (None, lead),
            };
            let batch = Batch::one(call, request);
            let result = inner.decide_batch(&mut conn, &key, &batch).await;
            // Hands the store's place in flight on to whatever waits for
            // one, and the lane to whatever waits behind this call.
            drop(permit);
            drop(lead);
            result.map(|mut decisions| decisions.swap_remove(0))
        })
    }

    fn decide_now(&self, check: Check<'_>) -> Option<Result<Decision, StoreError>> {
        // Only a denial the cache proves is decided without Redis, and not
        // while a call of this store is about to change the key's state.
        if self.inner.coalesce && self.inner.lanes.busy(check.key(), check.policies()) {
            return None;
        }
        self.inner.denied.answer(&check).map(Ok)
    }
}

/// The answer requests waiting for another's call get, within `deadline`.
async fn waited<T>(
    answer: tokio::sync::oneshot::Receiver<Result<T, StoreError>>,
    deadline: Duration,
) -> Result<T, StoreError> {
    match tokio::time::timeout(deadline, answer).await {
        Ok(Ok(result)) => result,
        Ok(Err(_)) => Err(StoreError::new(
            StoreErrorKind::Unavailable,
            "the call this request waited for was dropped",
            None,
        )),
        Err(_) => Err(timed_out(deadline)),
    }
}

pub(crate) fn timed_out(deadline: Duration) -> StoreError {
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
    /// Decides `batch`'s requests for `key` in one call, unless the
    /// breaker of the Redis (the Cluster master) serving `key` is open.
    async fn decide_batch(
        &self,
        conn: &mut RedisConnection,
        key: &Key,
        batch: &Batch,
    ) -> Result<Vec<Decision>, StoreError> {
        let call = &batch.call;
        let mut tag = Vec::with_capacity(48);
        keys::write_tag(&mut tag, self.key_hash.as_ref(), key);
        let slot = self.breakers.per_node().then(|| nodes::slot(&tag));
        let script = self.scripts.get(&call.set, call.shape());
        let floor = self.timeline.floor();
        let cmd = command(&self.prefix, &script, &tag, call, &batch.requests, floor);
        let (value, sent) = self.guarded(conn, slot, &script, &cmd).await?;
        self.read_reply(key, call, &batch.requests, value, sent)
    }

    /// The decisions in `value`, the script's reply for `key`'s
    /// `requests`; the Redis time it read and the states after them are
    /// taken in.
    fn read_reply(
        &self,
        key: &Key,
        call: &Call,
        requests: &[Request],
        value: Value,
        sent: Instant,
    ) -> Result<Vec<Decision>, StoreError> {
        let replies = if call.op == Op::Reset {
            0
        } else {
            requests.len()
        };
        let reply = reply::parse(&call.set, value, replies)?;
        let read_at = reply.now;
        self.timeline.saw(read_at);
        let (decisions, states) = answer(call, requests, reply)?;
        if let Some(last) = decisions.last() {
            self.settled(key, call, &states, read_at, sent, last);
        }
        Ok(decisions)
    }

    /// Decides one request for each of `keys`, distinct keys under
    /// `call`'s policy set, in one call: each as a call for it alone
    /// would, at one Redis time. Only where one Redis serves every key
    /// (not a Cluster). Each key's answer is its own: a reply that does
    /// not read fails only its key's request.
    async fn decide_keys(
        &self,
        conn: &mut RedisConnection,
        call: &Call,
        keys: &[(&Key, Request)],
    ) -> Result<Vec<Result<Decision, StoreError>>, StoreError> {
        let first = |d: Result<Vec<Decision>, StoreError>| d.map(|mut d| d.swap_remove(0));
        if let [(key, request)] = keys {
            let batch = Batch::one(call.clone(), *request);
            return Ok(vec![first(self.decide_batch(conn, key, &batch).await)]);
        }
        let script = self.scripts.get(
            &call.set,
            Shape {
                many_keys: true,
                ..call.shape()
            },
        );
        let floor = self.timeline.floor();
        let cmd = command_many(
            &self.prefix,
            self.key_hash.as_ref(),
            &script,
            call,
            keys,
            floor,
        );
        let (value, sent) = self.guarded(conn, None, &script, &cmd).await?;
        let Value::Array(replies) = value else {
            return Err(protocol(format!(
                "the rate limit script replied {value:?}, not an array of replies"
            )));
        };
        if replies.len() != keys.len() {
            return Err(protocol(format!(
                "the rate limit script replied for {} keys, not {}",
                replies.len(),
                keys.len()
            )));
        }
        Ok(keys
            .iter()
            .zip(replies)
            .map(|((key, request), value)| {
                first(self.read_reply(key, call, std::slice::from_ref(request), value, sent))
            })
            .collect())
    }

    /// Sends `cmd` (a call of `script`) unless the breaker of the Redis
    /// serving `slot` is open, and records how it went; the reply and when
    /// it was sent.
    async fn guarded(
        &self,
        conn: &mut RedisConnection,
        slot: Option<u16>,
        script: &Script,
        cmd: &Cmd,
    ) -> Result<(Value, Instant), StoreError> {
        #[cfg(feature = "redis-cluster")]
        if let RedisConnection::Cluster(c) = conn
            && nodes::cluster::unknown(self)
        {
            nodes::cluster::refresh(self, c);
        }
        let breaker = self.breakers.get(slot);
        let probe = match breaker.admit() {
            Admit::Skip => return Err(cooling_down()),
            Admit::Go => None,
            Admit::Probe(p) => Some(p),
        };
        let sent = Instant::now();
        let result = send(self, conn, script, cmd).await;
        // Only availability failures count; a data error is an answer.
        let answered = !matches!(&result, Err(e) if is_availability(e));
        match (probe, &result) {
            (Some(p), _) => p.finish(answered),
            (None, Err(e)) if is_lost_connection(e) => breaker.record_lost(sent),
            (None, _) => breaker.record(answered),
        }
        #[cfg(feature = "redis-cluster")]
        if let RedisConnection::Cluster(c) = conn
            && breaker.is_open()
        {
            // The master may be failing over: learn its successor.
            nodes::cluster::refresh(self, c);
        }
        Ok((result?, sent))
    }
}

/// Whether `e` says Redis (or a node) is unavailable, rather than that one
/// request failed.
fn is_availability(e: &StoreError) -> bool {
    matches!(
        e.kind(),
        StoreErrorKind::Timeout | StoreErrorKind::Unavailable
    )
}

/// Whether `e` is the loss of the connection (or a failure to make one),
/// which every call in flight on it shares.
fn is_lost_connection(e: &StoreError) -> bool {
    e.kind() == StoreErrorKind::Unavailable
        && std::error::Error::source(e)
            .and_then(|s| s.downcast_ref::<RedisError>())
            .is_some_and(RedisError::is_io_error)
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
        let op = check.op();
        Self {
            set: check.policies().clone(),
            op,
            wait: check.max_wait().is_some() && matches!(op, Op::Acquire | Op::Peek),
            at: check.at_micros(),
        }
    }

    /// Whether a call for `other` may decide this call's requests too:
    /// the same policy set, op, mode and given time.
    fn alike(&self, other: &Call) -> bool {
        (self.op, self.wait, self.at) == (other.op, other.wait, other.at)
            && self.set.same_as(&other.set)
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
            many_keys: false,
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
            max_wait: check.max_wait(),
            lease: check.lease(),
        }
    }
}

/// `FCALL` of `script`'s function with the keys of hash tag `tag` under `call`'s
/// policies and the arguments `lua/decide.lua` describes.
fn command(
    prefix: &str,
    script: &Script,
    tag: &[u8],
    call: &Call,
    requests: &[Request],
    floor: u64,
) -> Cmd {
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
    name.extend_from_slice(tag);
    name.extend_from_slice(b"}:");
    push_policy_keys(&mut cmd, &mut name, set);
    // The time given, or the floor under Redis's own.
    cmd.arg(call.at.unwrap_or(floor));
    if call.op == Op::Reset {
        return cmd;
    }
    push_params(&mut cmd, set);
    let leased = set.has_concurrency();
    match call.op {
        Op::Release | Op::Renew => {
            let r = requests[0];
            cmd.arg(r.lease).arg(r.cost);
        }
        _ => push_requests(&mut cmd, call, requests, leased),
    }
    cmd
}

/// Each policy's key: `name` (`<prefix>{<tag>}:`) and the policy's name
/// and fingerprint.
fn push_policy_keys(cmd: &mut Cmd, name: &mut Vec<u8>, set: &PolicySet) {
    let stem = name.len();
    for (p, params) in set.policies().iter().zip(set.params()) {
        name.truncate(stem);
        write_policy(name, p, params);
        cmd.arg(name.as_slice());
    }
}

/// Each request's arguments: its cost, its longest wait (wait mode) and
/// its lease (sets with a concurrency policy).
fn push_requests(cmd: &mut Cmd, call: &Call, requests: &[Request], leased: bool) {
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

/// `FCALL` of `script`'s function (its shape for several keys) with every
/// key's keys under `call`'s policies, then the arguments
/// `script::body` describes for several keys: one request per key.
fn command_many(
    prefix: &str,
    hash: Option<&KeyHash>,
    script: &Script,
    call: &Call,
    keys: &[(&Key, Request)],
    floor: u64,
) -> Cmd {
    let set = &call.set;
    let mut cmd = Cmd::with_capacity(
        6 + keys.len() * (set.len() + 1 + script.stride),
        64 + keys.len() * (set.len() * (prefix.len() + 96) + 24),
    );
    cmd.arg("FCALL")
        .arg(&script.function)
        .arg(keys.len() * set.len());
    let mut name = Vec::with_capacity(prefix.len() + 160);
    for (key, _) in keys {
        name.clear();
        write_stem(&mut name, prefix, hash, key);
        push_policy_keys(&mut cmd, &mut name, set);
    }
    cmd.arg(call.at.unwrap_or(floor));
    push_params(&mut cmd, set);
    cmd.arg(keys.len());
    let leased = set.has_concurrency();
    for (_, request) in keys {
        cmd.arg(1);
        push_requests(&mut cmd, call, std::slice::from_ref(request), leased);
    }
    cmd
}

/// Every policy's parameters, packed in one argument as `lua/decide.lua`
/// reads them.
fn push_params(cmd: &mut Cmd, set: &PolicySet) {
    // At most 4 numbers of 8 bytes per policy: on the stack.
    let mut bytes = [0_u8; 32 * PolicySet::MAX_POLICIES];
    let mut len = 0;
    for p in set.params() {
        let (values, n) = script::param_values(p);
        for v in &values[..n] {
            // Exact: every parameter is an integer below 2^53.
            #[allow(clippy::cast_precision_loss)]
            bytes[len..len + 8].copy_from_slice(&(*v as f64).to_be_bytes());
            len += 8;
        }
    }
    cmd.arg(&bytes[..len]);
}

/// Calls `script`'s function with `cmd`'s arguments (an `FCALL`): loads
/// its library first if Redis does not have it, and falls back to
/// `EVALSHA` (then `EVAL` on `NOSCRIPT`) on a Redis without functions;
/// follows a Cluster `MOVED` or `ASK` once; all within the store's
/// deadline. Each of these replies means the script never ran; nothing is
/// sent again once it may have run.
async fn send(
    inner: &Inner,
    conn: &mut RedisConnection,
    script: &Script,
    cmd: &Cmd,
) -> Result<Value, StoreError> {
    let call = async {
        if inner.functions.load(Ordering::Relaxed) == UNKNOWN {
            // A function nobody defines: Redis 7 says it is not found;
            // older servers (and proxies) do not know the command. Nothing
            // binary goes along, so either error parses.
            let mut probe = redis::cmd("FCALL");
            probe.arg("tower_ratelimit_probe").arg(0);
            let mode = match conn.query(&probe).await {
                Err(e) if is_server_error(&e, "Function not found") => FUNCTIONS,
                Err(e) if matches!(e.kind(), ErrorKind::Server(_)) && !is_unavailable(&e) => {
                    SCRIPTS
                }
                Err(e) => return Err(e),
                Ok(_) => FUNCTIONS,
            };
            inner.functions.store(mode, Ordering::Relaxed);
        }
        let functions = inner.functions.load(Ordering::Relaxed) == FUNCTIONS;
        let mut now = if functions {
            std::borrow::Cow::Borrowed(cmd)
        } else {
            std::borrow::Cow::Owned(with_head(cmd, "EVALSHA", &script.sha))
        };
        let (mut loads, mut loaded, mut redirected) = (0, false, false);
        let mut at: Option<(String, u16, bool)> = None;
        loop {
            let result = match &at {
                Some((host, port, true)) => conn.query_asking(&now, (host, *port)).await,
                Some((host, port, false)) => conn.query_at(&now, (host, *port)).await,
                None => conn.query(&now).await,
            };
            let e = match result {
                Ok(v) => return Ok(v),
                Err(e) => e,
            };
            let kind = e.kind();
            if matches!(
                kind,
                ErrorKind::Server(ServerErrorKind::Moved | ServerErrorKind::Ask)
            ) && !redirected
            {
                // The slot is (being) served elsewhere: follow once.
                redirected = true;
                let ask = kind == ErrorKind::Server(ServerErrorKind::Ask);
                at = e.redirect_node().and_then(|(addr, _)| {
                    let (host, port) = addr.rsplit_once(':')?;
                    Some((host.to_owned(), port.parse().ok()?, ask))
                });
                #[cfg(feature = "redis-cluster")]
                if let (RedisConnection::Cluster(c), false) = (&*conn, ask) {
                    nodes::cluster::refresh(inner, c);
                }
                continue;
            }
            if functions && loads < MAX_LOADS && is_server_error(&e, "Function not found") {
                // Load it (on every master of a cluster), call once more:
                // it never ran. Again if a flush came between the two.
                loads += 1;
                let mut load = redis::cmd("FUNCTION");
                load.arg("LOAD").arg("REPLACE").arg(&script.library);
                conn.query(&load).await?;
                continue;
            }
            if !functions && !loaded && kind == ErrorKind::Server(ServerErrorKind::NoScript) {
                // Send it whole, once. The command with its text is only
                // built now.
                loaded = true;
                now = std::borrow::Cow::Owned(with_head(cmd, "EVAL", &script.text));
                continue;
            }
            return Err(e);
        }
    };
    match tokio::time::timeout(inner.timeout, call).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(e)) => Err(store_error(e)),
        Err(_) => {
            conn.missed_deadline();
            Err(timed_out(inner.timeout))
        }
    }
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

/// `<prefix>{<key>}:<policy>:<fingerprint>`.
fn write_key(
    out: &mut Vec<u8>,
    prefix: &str,
    hash: Option<&KeyHash>,
    key: &Key,
    policy: &Policy,
    params: &Params,
) {
    write_stem(out, prefix, hash, key);
    write_policy(out, policy, params);
}

/// `<prefix>{<key>}:`, what every policy's key for `key` starts with.
fn write_stem(out: &mut Vec<u8>, prefix: &str, hash: Option<&KeyHash>, key: &Key) {
    out.extend_from_slice(prefix.as_bytes());
    out.push(b'{');
    keys::write_tag(out, hash, key);
    out.extend_from_slice(b"}:");
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

/// Server error codes that say Redis (or one Cluster node) cannot serve
/// now, whatever the key.
const UNAVAILABLE: [&str; 14] = [
    "LOADING",
    "READONLY",
    "CLUSTERDOWN",
    "TRYAGAIN",
    "MASTERDOWN",
    "BUSY",
    "OOM",
    "MISCONF",
    "NOREPLICAS",
    "NOAUTH",
    "WRONGPASS",
    "NOPERM",
    "MOVED",
    "ASK",
];

/// Whether `e` says Redis cannot serve now, rather than that this request
/// failed.
fn is_unavailable(e: &RedisError) -> bool {
    match e.kind() {
        ErrorKind::Server(
            ServerErrorKind::BusyLoading
            | ServerErrorKind::ReadOnly
            | ServerErrorKind::ClusterDown
            | ServerErrorKind::TryAgain
            | ServerErrorKind::MasterDown
            | ServerErrorKind::Moved
            | ServerErrorKind::Ask
            | ServerErrorKind::NoPerm,
        ) => true,
        ErrorKind::Parse | ErrorKind::UnexpectedReturnType => false,
        // Any other code the server sent (`WRONGTYPE`, `ERR`, …) is about
        // this request, unless listed.
        _ if e.code().is_some() => e.code().is_some_and(|c| UNAVAILABLE.contains(&c)),
        _ => true,
    }
}

/// A store error of the kind `e` is: a timeout or unavailability (which
/// count towards the cool-down), or a data error of this request's key
/// (`WRONGTYPE`, a script error on its value), which fails this request
/// only.
fn store_error(e: RedisError) -> StoreError {
    let (kind, what) = if e.is_timeout() {
        (StoreErrorKind::Timeout, "Redis did not answer in time")
    } else if e.code() == Some("OOM") {
        (
            StoreErrorKind::Unavailable,
            "Redis is out of memory and refuses writes (maxmemory reached, with a \
             noeviction policy or nothing left to evict)",
        )
    } else if is_unavailable(&e) {
        (StoreErrorKind::Unavailable, "Redis is unavailable")
    } else if e.code().is_some() {
        (
            StoreErrorKind::Data,
            "Redis refused the request for this key (other keys are unaffected)",
        )
    } else {
        (
            StoreErrorKind::Protocol,
            "Redis answered in a way the store cannot read",
        )
    };
    StoreError::new(kind, what, Some(Box::new(e)))
}
