//! A connection to the master that Redis Sentinel names, found again after
//! a failover.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use redis::aio::{ConnectionLike, MultiplexedConnection};
use redis::sentinel::SentinelClient;
use redis::{AsyncConnectionConfig, Cmd, RedisError, RedisResult, Value};

/// A connection to the master Redis Sentinel names for a service, made by
/// [`RedisStoreBuilder::connect_sentinel`](super::RedisStoreBuilder::connect_sentinel).
///
/// It holds one multiplexed connection to the master. When a call on it
/// fails for want of the master (the connection is lost, the call misses
/// the store's deadline, or the node answers `READONLY`: it was demoted),
/// the connection is dropped and the next call asks the sentinels for the
/// master again, so decisions resume on the promoted replica as soon as the
/// sentinels name it. A call its caller gives up on (a client that went
/// away) keeps the connection.
///
/// One search for the master runs at a time, in a task of its own, within
/// the store's [connect
/// timeout](super::RedisStoreBuilder::connect_timeout): a call whose
/// deadline passes while it runs leaves it to finish for the calls after
/// it, and calls that come meanwhile wait for it (within their deadlines)
/// rather than start another.
///
/// ```no_run
/// # async fn run() -> Result<(), tower_ratelimit::BoxError> {
/// use tower_ratelimit::store::RedisStore;
/// use tower_ratelimit::{Policy, Quota, RateLimiterBuilder};
///
/// let store = RedisStore::builder()
///     .sentinel_password("sentinel-password")
///     .connect_sentinel(["redis://10.0.0.1:26379", "redis://10.0.0.2:26379"], "mymaster")
///     .await?;
/// let limiter = RateLimiterBuilder::with_store(store)
///     .policy(Policy::new("api", Quota::per_second(100)))
///     .build()?;
/// // Decided on the current master, and on the promoted one after a failover.
/// let d = limiter.try_acquire("client-42", 1).await?;
/// assert!(d.is_allowed() || d.retry_after().is_some());
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct SentinelConnection(Arc<Shared>);

impl std::fmt::Debug for SentinelConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SentinelConnection").finish_non_exhaustive()
    }
}

struct Shared {
    /// Asks the sentinels; held by the one search for the master.
    client: Arc<tokio::sync::Mutex<SentinelClient>>,
    current: Mutex<Option<MultiplexedConnection>>,
    config: AsyncConnectionConfig,
    /// How long one search for the master may take.
    connect_timeout: Duration,
}

impl SentinelConnection {
    pub(crate) fn new(
        client: SentinelClient,
        config: AsyncConnectionConfig,
        connect_timeout: Duration,
    ) -> Self {
        Self(Arc::new(Shared {
            client: Arc::new(tokio::sync::Mutex::new(client)),
            current: Mutex::new(None),
            config,
            connect_timeout,
        }))
    }

    fn current(&self) -> Option<MultiplexedConnection> {
        self.0
            .current
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Drops the connection: the next call asks the sentinels for the
    /// master again. For a call that missed the store's deadline: the
    /// master may be gone without closing it.
    pub(crate) fn forget(&self) {
        *self
            .0
            .current
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = None;
    }

    /// The connection to the master, found through the sentinels if there
    /// is none.
    pub(crate) async fn master(&self) -> RedisResult<MultiplexedConnection> {
        if let Some(c) = self.current() {
            return Ok(c);
        }
        let Ok(client) = Arc::clone(&self.0.client).try_lock_owned() else {
            // A search is under way: its answer is this call's too.
            drop(self.0.client.lock().await);
            return self.current().ok_or_else(|| {
                RedisError::from(std::io::Error::new(
                    std::io::ErrorKind::NotConnected,
                    "the sentinels named no reachable master",
                ))
            });
        };
        // In a task of its own: dropped with this call (its deadline
        // passed), the search goes on for the calls after it.
        let this = self.clone();
        let search = tokio::spawn(async move {
            let mut client = client;
            if let Some(c) = this.current() {
                return Ok(c);
            }
            let found = tokio::time::timeout(this.0.connect_timeout, async {
                let master = client.async_get_client().await?;
                master
                    .get_multiplexed_async_connection_with_config(&this.0.config)
                    .await
            })
            .await;
            let conn = found.map_err(|_| {
                RedisError::from(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!(
                        "the master was not found and connected within the connect timeout ({:?})",
                        this.0.connect_timeout
                    ),
                ))
            })??;
            *this
                .0
                .current
                .lock()
                .unwrap_or_else(PoisonError::into_inner) = Some(conn.clone());
            Ok(conn)
        });
        search.await.unwrap_or_else(|e| {
            Err(RedisError::from(std::io::Error::other(format!(
                "the search for the master stopped: {e}"
            ))))
        })
    }

    pub(crate) async fn query(&self, cmd: &Cmd) -> Result<Value, RedisError> {
        let result = match self.master().await {
            Ok(mut conn) => conn.req_packed_command(cmd).await,
            Err(e) => Err(e),
        };
        let lost = match &result {
            Err(e) => e.is_io_error() || e.is_connection_dropped() || e.code() == Some("READONLY"),
            Ok(v) => matches!(v, Value::ServerError(e) if e.code() == "READONLY"),
        };
        if lost {
            self.forget();
        }
        result
    }
}
