//! Reaching Redis: URLs and credentials, the connect timeout, the checks
//! made once at connect (the server's version and mode), and errors that
//! say what is wrong.

use std::error::Error as StdError;

use std::fmt;
use std::time::Duration;

use redis::aio::{ConnectionManagerConfig, MultiplexedConnection};
use redis::{
    AsyncConnectionConfig, Client, ConnectionInfo, ErrorKind, IntoConnectionInfo, RedisError,
    ServerErrorKind,
};

use crate::error::{BoxError, ConfigError};

/// The oldest Redis the store runs on: its scripts call `TIME` before
/// writing, which needs effects replication, the default from Redis 5.
pub const MIN_REDIS_VERSION: (u32, u32) = (5, 0);

/// Why [`RedisStore::connect`](super::RedisStore::connect) (or
/// `connect_cluster`, `connect_sentinel`) failed. The message names the
/// problem and, where one is likely, the fix; it never holds a password.
///
/// ```no_run
/// # async fn run() {
/// use tower_ratelimit::store::{ConnectErrorKind, RedisStore};
///
/// match RedisStore::connect("redis://:wrong@127.0.0.1:6379").await {
///     Err(e) if e.kind() == ConnectErrorKind::Auth => eprintln!("check the password: {e}"),
///     Err(e) => eprintln!("{e}"),
///     Ok(_) => {}
/// }
/// # }
/// ```
#[derive(Debug)]
pub struct ConnectError {
    kind: ConnectErrorKind,
    message: String,
    source: Option<BoxError>,
}

/// What kind of problem a [`ConnectError`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ConnectErrorKind {
    /// The URL cannot be read, or asks for what this build cannot do
    /// (`rediss://` without the `redis-tls` feature).
    Url,
    /// A builder setting is invalid.
    Config,
    /// Nothing accepts connections there (connection refused), or the host
    /// name does not resolve.
    Unreachable,
    /// No answer within the connect timeout: a host that is down or
    /// firewalled, or a port that accepts connections and never answers.
    Timeout,
    /// Redis refused the username or password, wants one, or the user may
    /// not run what the store needs.
    Auth,
    /// The TLS handshake failed: a `rediss://` URL for a port that speaks
    /// plain TCP, a certificate that is not trusted or not for that host.
    Tls,
    /// The server answered in something other than the Redis protocol, or
    /// closed the connection without a word: a TLS port given a `redis://`
    /// URL, or not a Redis at all.
    Protocol,
    /// The server is not what the constructor expects: a Redis Cluster
    /// node given to `connect`, a standalone server given to
    /// `connect_cluster`, a Sentinel given to either.
    Mode,
    /// The Redis is older than [`MIN_REDIS_VERSION`].
    Version,
    /// Any other refusal (a database number that does not exist, a
    /// Sentinel that does not know the master's name, …).
    Other,
}

impl ConnectError {
    pub(crate) fn new(kind: ConnectErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
            source: None,
        }
    }

    fn because(mut self, e: RedisError) -> Self {
        self.source = Some(Box::new(e));
        self
    }

    /// The kind of problem.
    #[must_use]
    pub fn kind(&self) -> ConnectErrorKind {
        self.kind
    }
}

impl fmt::Display for ConnectError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)?;
        if let Some(source) = &self.source {
            write!(f, " ({source})")?;
        }
        Ok(())
    }
}

impl StdError for ConnectError {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        self.source
            .as_deref()
            .map(|e| e as &(dyn StdError + 'static))
    }
}

impl From<ConfigError> for ConnectError {
    fn from(e: ConfigError) -> Self {
        Self::new(ConnectErrorKind::Config, e.to_string())
    }
}

/// A password or key, never shown by `Debug`.
#[derive(Clone)]
pub(crate) struct Secret<T = String>(pub(crate) T);

impl<T> fmt::Debug for Secret<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("\"***\"")
    }
}

/// What the builder says about reaching Redis, beside the URL.
#[derive(Clone, Debug, Default)]
pub(crate) struct Access {
    pub(crate) connect_timeout: Duration,
    pub(crate) username: Option<String>,
    pub(crate) password: Option<Secret>,
    pub(crate) database: Option<i64>,
    #[cfg(feature = "redis-tls")]
    pub(crate) tls: Tls,
    #[cfg(feature = "redis-sentinel")]
    pub(crate) sentinel_password: Option<Secret>,
}

/// TLS settings: a CA to trust instead of the system's roots, a client
/// certificate.
#[cfg(feature = "redis-tls")]
#[derive(Clone, Default)]
pub(crate) struct Tls {
    pub(crate) root_ca: Option<Vec<u8>>,
    pub(crate) client_cert: Option<(Vec<u8>, Secret)>,
}

#[cfg(feature = "redis-tls")]
impl fmt::Debug for Tls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tls")
            .field("root_ca", &self.root_ca.is_some())
            .field("client_cert", &self.client_cert.is_some())
            .finish()
    }
}

#[cfg(feature = "redis-tls")]
impl Tls {
    pub(crate) fn is_set(&self) -> bool {
        self.root_ca.is_some() || self.client_cert.is_some()
    }

    pub(crate) fn certificates(&self) -> redis::TlsCertificates {
        redis::TlsCertificates {
            client_tls: self
                .client_cert
                .as_ref()
                .map(|(cert, key)| redis::ClientTlsConfig {
                    client_cert: cert.clone(),
                    client_key: key.0.clone().into_bytes(),
                }),
            root_cert: self.root_ca.clone(),
        }
    }
}

/// `url` with any password hidden.
pub(crate) fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return if url.contains('@') {
            "<hidden>".to_owned()
        } else {
            url.to_owned()
        };
    };
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    match rest[..end].rfind('@') {
        Some(at) => {
            let user = rest[..at].split(':').next().unwrap_or_default();
            format!("{scheme}://{user}:***@{}", &rest[at + 1..])
        }
        None => url.to_owned(),
    }
}

/// Whether `url` asks for TLS.
fn is_tls(url: &str) -> bool {
    url.trim_start()
        .to_ascii_lowercase()
        .starts_with("rediss://")
}

impl Access {
    /// `url` read, with the builder's credentials and database over the
    /// URL's.
    pub(crate) fn info(&self, url: &str) -> Result<ConnectionInfo, ConnectError> {
        if is_tls(url) && !cfg!(feature = "redis-tls") {
            return Err(ConnectError::new(
                ConnectErrorKind::Url,
                format!(
                    "{} asks for TLS: build tower-ratelimit with the `redis-tls` feature",
                    redact(url)
                ),
            ));
        }
        let lower = url.trim_start().to_ascii_lowercase();
        if !(lower.starts_with("redis://")
            || lower.starts_with("rediss://")
            || lower.starts_with("unix://")
            || lower.starts_with("redis+unix://"))
        {
            return Err(ConnectError::new(
                ConnectErrorKind::Url,
                format!(
                    "{:?} is not a Redis URL: expected redis://[user:password@]host[:port][/db] \
                     or rediss://… for TLS",
                    redact(url)
                ),
            ));
        }
        let info = url.into_connection_info().map_err(|e| {
            ConnectError::new(
                ConnectErrorKind::Url,
                format!(
                    "{:?} is not a valid Redis URL: expected \
                     redis://[user:password@]host[:port][/db]",
                    redact(url)
                ),
            )
            .because(e)
        })?;
        Ok(self.apply(info))
    }

    fn apply(&self, info: ConnectionInfo) -> ConnectionInfo {
        let mut settings = info.redis_settings().clone();
        if let Some(user) = &self.username {
            settings = settings.set_username(user);
        }
        if let Some(password) = &self.password {
            settings = settings.set_password(&password.0);
        }
        if let Some(db) = self.database {
            settings = settings.set_db(db);
        }
        info.set_redis_settings(settings)
    }

    /// A client for `info`, with the TLS settings when it is a TLS URL.
    pub(crate) fn client(&self, info: ConnectionInfo) -> Result<Client, ConnectError> {
        #[cfg(feature = "redis-tls")]
        if matches!(info.addr(), redis::ConnectionAddr::TcpTls { .. }) {
            install_crypto_provider();
            if self.tls.is_set() {
                return Client::build_with_tls(info, self.tls.certificates()).map_err(|e| {
                    ConnectError::new(ConnectErrorKind::Tls, "the TLS settings are not usable")
                        .because(e)
                });
            }
        }
        Client::open(info).map_err(|e| {
            ConnectError::new(
                ConnectErrorKind::Url,
                "the connection settings are not usable",
            )
            .because(e)
        })
    }

    fn async_config(&self) -> AsyncConnectionConfig {
        AsyncConnectionConfig::new()
            .set_connection_timeout(Some(self.connect_timeout))
            .set_response_timeout(Some(self.connect_timeout))
    }

    /// A multiplexed connection to `client`, checked: the server answers,
    /// takes the credentials, is standalone and recent enough.
    pub(crate) async fn checked(
        &self,
        client: &Client,
        expect: Mode,
    ) -> Result<MultiplexedConnection, ConnectError> {
        let addr = client.get_connection_info().addr().to_string();
        let tls = matches!(
            client.get_connection_info().addr(),
            redis::ConnectionAddr::TcpTls { .. }
        );
        // With TLS, a little time is kept to tell a plain port from a
        // silent one.
        let probe = if tls {
            (self.connect_timeout / 5).min(Duration::from_millis(200))
        } else {
            Duration::ZERO
        };
        let result = within(self.connect_timeout - probe, &addr, async {
            let mut conn = client
                .get_multiplexed_async_connection_with_config(&self.async_config())
                .await
                .map_err(|e| explain(e, &addr, tls, self.connect_timeout))?;
            let info: String = redis::cmd("INFO")
                .arg("server")
                .query_async(&mut conn)
                .await
                .map_err(|e| explain(e, &addr, tls, self.connect_timeout))?;
            check_server(&info, expect, &addr)?;
            Ok(conn)
        })
        .await;
        match result {
            #[cfg(feature = "redis-tls")]
            Err(e)
                if tls && matches!(e.kind, ConnectErrorKind::Timeout | ConnectErrorKind::Tls) =>
            {
                Err(match speaks_plain_redis(&addr, probe).await {
                    true => ConnectError::new(
                        ConnectErrorKind::Tls,
                        format!(
                            "{addr} speaks plain Redis, not TLS: use a redis:// URL for it, or \
                             the server's --tls-port"
                        ),
                    ),
                    false => e,
                })
            }
            other => other,
        }
    }

    /// A reconnecting connection to `client`, once [`Access::checked`]
    /// passed.
    pub(crate) async fn manager(
        &self,
        client: Client,
    ) -> Result<redis::aio::ConnectionManager, ConnectError> {
        let addr = client.get_connection_info().addr().to_string();
        let tls = matches!(
            client.get_connection_info().addr(),
            redis::ConnectionAddr::TcpTls { .. }
        );
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(self.connect_timeout))
            // Each call has the store's own deadline.
            .set_response_timeout(None)
            // Back within half a second of Redis coming back: the jitter
            // adds up to as much again to each delay between attempts.
            .set_max_delay(Duration::from_millis(250));
        within(self.connect_timeout, &addr, async {
            client
                .get_connection_manager_with_config(config)
                .await
                .map_err(|e| explain(e, &addr, tls, self.connect_timeout))
        })
        .await
    }
}

/// Whether a plain `PING` to `addr` gets a Redis reply within `limit`.
#[cfg(feature = "redis-tls")]
async fn speaks_plain_redis(addr: &str, limit: Duration) -> bool {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let ask = async {
        let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
        s.write_all(b"PING\r\n").await.ok()?;
        let mut buf = [0_u8; 1];
        s.read_exact(&mut buf).await.ok()?;
        Some(matches!(buf[0], b'+' | b'-'))
    };
    matches!(tokio::time::timeout(limit, ask).await, Ok(Some(true)))
}

/// Installs rustls's `ring` provider as the process default, unless the
/// application installed one.
#[cfg(feature = "redis-tls")]
pub(crate) fn install_crypto_provider() {
    if rustls::crypto::CryptoProvider::get_default().is_none() {
        // Another thread may have won the race: either default serves.
        let _ = rustls::crypto::ring::default_provider().install_default();
    }
}

/// `fut`, or a timeout error naming `addr` and `limit`.
pub(crate) async fn within<T>(
    limit: Duration,
    addr: &str,
    fut: impl Future<Output = Result<T, ConnectError>>,
) -> Result<T, ConnectError> {
    match tokio::time::timeout(limit, fut).await {
        Ok(r) => r,
        Err(_) => Err(timeout(addr, limit)),
    }
}

fn timeout(addr: &str, limit: Duration) -> ConnectError {
    ConnectError::new(
        ConnectErrorKind::Timeout,
        format!(
            "{addr} did not answer within the connect timeout ({limit:?}): is the host up and \
             reachable, the port right, no firewall dropping the packets?"
        ),
    )
}

/// What a constructor expects the server to be.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    Standalone,
    #[cfg_attr(not(feature = "redis-cluster"), allow(dead_code))]
    Cluster,
}

/// Checks `INFO server`'s answer: the version, and the mode against
/// `expect`.
pub(crate) fn check_server(info: &str, expect: Mode, addr: &str) -> Result<(), ConnectError> {
    let field = |name: &str| {
        info.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
            .map(str::trim)
    };
    let mode = field("redis_mode").unwrap_or("standalone");
    match (mode, expect) {
        ("cluster", Mode::Standalone) => {
            return Err(ConnectError::new(
                ConnectErrorKind::Mode,
                format!(
                    "{addr} is a Redis Cluster node: connect with \
                     RedisStore::builder().connect_cluster(urls)"
                ),
            ));
        }
        ("sentinel", _) => {
            return Err(ConnectError::new(
                ConnectErrorKind::Mode,
                format!(
                    "{addr} is a Redis Sentinel, not a Redis: connect with \
                     RedisStore::builder().connect_sentinel(sentinel_urls, master_name)"
                ),
            ));
        }
        ("standalone", Mode::Cluster) => {
            return Err(ConnectError::new(
                ConnectErrorKind::Mode,
                format!(
                    "{addr} is not a Redis Cluster node: connect with RedisStore::connect(url)"
                ),
            ));
        }
        _ => {}
    }
    if let Some(v) = field("redis_version") {
        check_version(v, addr)?;
    }
    Ok(())
}

/// Checks that `version` (`7.2.4`) is at least [`MIN_REDIS_VERSION`].
pub(crate) fn check_version(version: &str, addr: &str) -> Result<(), ConnectError> {
    let mut parts = version.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
    let found = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    if found < MIN_REDIS_VERSION {
        let (major, minor) = MIN_REDIS_VERSION;
        return Err(ConnectError::new(
            ConnectErrorKind::Version,
            format!(
                "{addr} runs Redis {version}; the store needs Redis {major}.{minor} or later \
                 (its scripts read TIME before writing, which needs effects replication)"
            ),
        ));
    }
    Ok(())
}

/// What `e`, met while connecting to `addr`, means.
pub(crate) fn explain(e: RedisError, addr: &str, tls: bool, limit: Duration) -> ConnectError {
    use ConnectErrorKind as K;
    let code = e.code().unwrap_or_default().to_owned();
    // The Cluster client wraps the nodes' errors in one of its own.
    let text = e.to_string();
    let detail = format!("{} {text}", e.detail().unwrap_or_default());
    let (kind, message) = if e.kind() == ErrorKind::AuthenticationFailed
        || code == "WRONGPASS"
        || text.contains("AuthenticationFailed")
        || text.contains("WRONGPASS")
    {
        (
            K::Auth,
            format!("{addr} refused the username or password: check the credentials"),
        )
    } else if code == "NOAUTH" || text.contains("NOAUTH") {
        (
            K::Auth,
            format!(
                "{addr} wants a password: give it in the URL (redis://:password@host) or with \
                 .password()"
            ),
        )
    } else if detail.contains("without any password configured") {
        (
            K::Auth,
            format!("{addr} has no password set, but one was given"),
        )
    } else if e.kind() == ErrorKind::Server(ServerErrorKind::NoPerm) || code == "NOPERM" {
        (
            K::Auth,
            format!(
                "the user may not run what the store needs on {addr}: grant it +info, \
                 +@scripting and its keys (see the README's Production Redis section)"
            ),
        )
    } else if detail.contains("DB index is out of range") || detail.contains("invalid DB index") {
        (K::Other, format!("{addr} has no such database number"))
    } else if detail.contains("cluster support disabled") {
        (
            K::Mode,
            format!("{addr} is not a Redis Cluster node: connect with RedisStore::connect(url)"),
        )
    } else if e.is_connection_refusal() || text.contains("Connection refused") {
        (
            K::Unreachable,
            format!("nothing listens at {addr} (connection refused): check the host and port"),
        )
    } else if e.is_timeout() {
        return timeout(addr, limit);
    } else if e.is_io_error() && !e.is_connection_dropped() {
        if text.contains("lookup") || text.contains("resolve") || text.contains("Name or service") {
            (
                K::Unreachable,
                format!("the host of {addr} does not resolve"),
            )
        } else if tls {
            (
                K::Tls,
                format!(
                    "the TLS handshake with {addr} failed: if the port speaks plain TCP, use a \
                     redis:// URL; otherwise check the CA and that the certificate names the host"
                ),
            )
        } else {
            (K::Unreachable, format!("could not connect to {addr}"))
        }
    } else if e.is_connection_dropped() || e.kind() == ErrorKind::Io {
        (
            if tls { K::Tls } else { K::Protocol },
            format!(
                "{addr} closed the connection without answering: {}",
                if tls {
                    "if the port speaks plain TCP, use a redis:// URL"
                } else {
                    "if it serves TLS, use a rediss:// URL"
                }
            ),
        )
    } else if e.kind() == ErrorKind::Parse {
        (
            if tls { K::Tls } else { K::Protocol },
            format!("{addr} does not speak the Redis protocol"),
        )
    } else {
        (K::Other, format!("{addr} refused the connection"))
    };
    ConnectError::new(kind, message).because(e)
}
