//! A connection to the master that Redis Sentinel names, found again after
//! a failover.

use std::sync::{Arc, Mutex, PoisonError};

use redis::aio::{ConnectionLike, MultiplexedConnection};
use redis::sentinel::SentinelClient;
use redis::{AsyncConnectionConfig, Cmd, RedisError, RedisResult, Value};

/// A connection to the master Redis Sentinel names for a service, made by
/// [`RedisStoreBuilder::connect_sentinel`](super::RedisStoreBuilder::connect_sentinel).
///
/// It holds one multiplexed connection to the master. When a call on it
/// fails for want of the master (the connection is lost, the call times
/// out, or the node answers `READONLY`: it was demoted), the connection is
/// dropped and the next call asks the sentinels for the master again, so
/// decisions resume on the promoted replica as soon as the sentinels name
/// it.
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
    /// Asks the sentinels; one call at a time looks for the master.
    client: tokio::sync::Mutex<SentinelClient>,
    current: Mutex<Option<MultiplexedConnection>>,
    config: AsyncConnectionConfig,
}

impl SentinelConnection {
    pub(crate) fn new(client: SentinelClient, config: AsyncConnectionConfig) -> Self {
        Self(Arc::new(Shared {
            client: tokio::sync::Mutex::new(client),
            current: Mutex::new(None),
            config,
        }))
    }

    fn current(&self) -> Option<MultiplexedConnection> {
        self.0
            .current
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn forget(&self) {
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
        let mut client = self.0.client.lock().await;
        if let Some(c) = self.current() {
            return Ok(c);
        }
        let master = client.async_get_client().await?;
        let conn = master
            .get_multiplexed_async_connection_with_config(&self.0.config)
            .await?;
        *self
            .0
            .current
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(conn.clone());
        Ok(conn)
    }

    pub(crate) async fn query(&self, cmd: &Cmd) -> Result<Value, RedisError> {
        // Dropped unanswered (the store's deadline passed), the master may
        // be gone: the next call asks the sentinels.
        struct Unanswered<'a>(&'a SentinelConnection, bool);
        impl Drop for Unanswered<'_> {
            fn drop(&mut self) {
                if !self.1 {
                    self.0.forget();
                }
            }
        }
        let mut guard = Unanswered(self, false);
        let result = match self.master().await {
            Ok(mut conn) => conn.req_packed_command(cmd).await,
            Err(e) => Err(e),
        };
        let lost = match &result {
            Err(e) => e.is_io_error() || e.is_connection_dropped() || e.code() == Some("READONLY"),
            Ok(v) => matches!(v, Value::ServerError(e) if e.code() == "READONLY"),
        };
        guard.1 = !lost;
        result
    }
}
