//! Real Redis for tests: a `redis-server` on a free port per test, or a
//! 3-master Redis Cluster, killed on drop. A test that needs Redis and
//! cannot find `redis-server` fails and says how to install it.

#![allow(dead_code)]

#[cfg(feature = "tracing")]
pub mod events;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const INSTALL: &str = "redis-server was not found on PATH. The Redis tests run a real server: \
    install it with `apt-get install redis-server redis-tools` (Debian/Ubuntu), \
    or run `scripts/test`, which installs it.";

/// One `redis-server` process.
pub struct RedisServer {
    child: Child,
    port: u16,
    dir: PathBuf,
    /// Commands on the plain port need TLS instead (`--port 0`).
    tls_port: Option<u16>,
    /// The arguments it was started with, beside the port and directory.
    extra: Vec<String>,
}

/// A free TCP port on 127.0.0.1 whose cluster bus port (+10000) is free too.
fn free_port() -> u16 {
    loop {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        let port = l.local_addr().unwrap().port();
        if port < 55_000 && TcpListener::bind(("127.0.0.1", port + 10_000)).is_ok() {
            return port;
        }
    }
}

fn temp_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "tower-ratelimit-{tag}-{}-{}",
        std::process::id(),
        free_port()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Sends one inline command to the server on `port` and returns the raw
/// reply, empty when it does not answer.
pub fn command_on(port: u16, command: &str) -> String {
    raw_command(port, command).unwrap_or_default()
}

/// Sends one inline command and returns the raw reply.
fn raw_command(port: u16, command: &str) -> Option<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_millis(500))).ok()?;
    s.write_all(format!("{command}\r\n").as_bytes()).ok()?;
    let mut buf = [0_u8; 4096];
    let n = s.read(&mut buf).ok()?;
    Some(String::from_utf8_lossy(&buf[..n]).into_owned())
}

impl RedisServer {
    /// Starts a standalone server.
    pub fn start() -> Self {
        Self::spawn(&[])
    }

    /// Starts a standalone server that has no `FCALL`, as Redis before 7:
    /// the command is renamed away.
    pub fn start_without_functions() -> Self {
        Self::spawn(&["--rename-command", "FCALL", ""])
    }

    /// Starts a standalone server with `extra` arguments (`--requirepass`,
    /// `--cluster-enabled`, …).
    pub fn start_with(extra: &[&str]) -> Self {
        Self::spawn(extra)
    }

    pub(crate) fn spawn(extra: &[&str]) -> Self {
        Self::spawn_in(temp_dir("redis"), free_port(), extra)
    }

    fn spawn_in(dir: PathBuf, port: u16, extra: &[&str]) -> Self {
        let log = dir.join("redis.log");
        // A configuration file goes first.
        let (conf, extra) = match extra.first() {
            Some(f) if f.ends_with(".conf") => (vec![(*f).to_owned()], &extra[1..]),
            _ => (Vec::new(), extra),
        };
        let mut args = conf;
        args.extend([
            "--port".to_owned(),
            port.to_string(),
            "--bind".to_owned(),
            "127.0.0.1".to_owned(),
            "--save".to_owned(),
            String::new(),
            "--appendonly".to_owned(),
            "no".to_owned(),
            "--dir".to_owned(),
            dir.display().to_string(),
            "--logfile".to_owned(),
            log.display().to_string(),
        ]);
        args.extend(extra.iter().map(|s| (*s).to_owned()));
        let child = match Command::new("redis-server")
            .args(&args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
        {
            Ok(child) => child,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => panic!("{INSTALL}"),
            Err(e) => panic!("could not start redis-server: {e}"),
        };
        let server = Self {
            child,
            port,
            dir,
            tls_port: None,
            extra: extra.iter().map(|s| (*s).to_owned()).collect(),
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            // Any reply (`-NOAUTH` too) means it is up.
            if raw_command(port, "PING").is_some_and(|r| r.starts_with(['+', '-'])) {
                return server;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!(
            "redis-server on port {port} did not answer PING within 10 s; log:\n{}",
            server.log()
        );
    }

    /// The server's port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `redis://127.0.0.1:<port>/`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// Sends an inline command and returns the raw reply.
    pub fn command(&self, command: &str) -> String {
        command_on(self.port, command)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("redis.log")).unwrap_or_default()
    }

    /// The process id of the server.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Kills the server at once (`SIGKILL`), as a crashed host would.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Sends `sig` (`STOP`, `CONT`) to the server.
    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.pid().to_string())
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "kill -{sig} {}", self.pid());
    }

    /// Stops the server (`SIGSTOP`: it keeps its connections and answers
    /// nothing) until the guard is dropped, whatever the test does.
    pub fn stop(&self) -> Stopped<'_> {
        self.signal("STOP");
        Stopped(self)
    }

    /// The TLS port, for a server started by [`RedisServer::start_tls`].
    pub fn tls_port(&self) -> Option<u16> {
        self.tls_port
    }

    /// Starts a server that speaks only TLS, with a certificate for
    /// `127.0.0.1` and `localhost` signed by a CA made for it with
    /// `openssl`; returns the server and the CA's PEM.
    pub fn start_tls() -> (Self, Vec<u8>) {
        let dir = temp_dir("redis-tls");
        let run = |args: &[&str]| {
            let out = Command::new("openssl")
                .args(args)
                .current_dir(&dir)
                .output()
                .unwrap_or_else(|e| panic!("openssl not found ({e}): install openssl"));
            assert!(
                out.status.success(),
                "openssl {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        run(&["genrsa", "-out", "ca.key", "2048"]);
        run(&[
            "req",
            "-x509",
            "-new",
            "-key",
            "ca.key",
            "-sha256",
            "-days",
            "2",
            "-subj",
            "/CN=tower-ratelimit test CA",
            "-out",
            "ca.crt",
        ]);
        run(&["genrsa", "-out", "redis.key", "2048"]);
        run(&[
            "req",
            "-new",
            "-key",
            "redis.key",
            "-subj",
            "/CN=localhost",
            "-out",
            "redis.csr",
        ]);
        std::fs::write(
            dir.join("ext.cnf"),
            "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\n",
        )
        .unwrap();
        run(&[
            "x509",
            "-req",
            "-in",
            "redis.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-sha256",
            "-extfile",
            "ext.cnf",
            "-out",
            "redis.crt",
        ]);
        let ca = std::fs::read(dir.join("ca.crt")).unwrap();
        let tls_port = free_port();
        let d = |f: &str| dir.join(f).display().to_string();
        let args = [
            "--tls-port".to_owned(),
            tls_port.to_string(),
            "--tls-cert-file".to_owned(),
            d("redis.crt"),
            "--tls-key-file".to_owned(),
            d("redis.key"),
            "--tls-ca-cert-file".to_owned(),
            d("ca.crt"),
            "--tls-auth-clients".to_owned(),
            "no".to_owned(),
        ];
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        // The plain port stays open for the harness's own checks.
        let mut server = Self::spawn_in(dir, free_port(), &args);
        server.tls_port = Some(tls_port);
        (server, ca)
    }

    /// Kills the server (`SIGKILL`) and starts an empty one on the same
    /// port with the same arguments, as a crashed Redis that comes back
    /// without persistence: no keys, no scripts, no functions, every
    /// client disconnected. Returns once it answers `PING`.
    pub fn restart(&mut self) {
        self.kill();
        let extra: Vec<&str> = self.extra.iter().map(String::as_str).collect();
        // A new directory: dropping the old server removes its own.
        let fresh = Self::spawn_in(temp_dir("redis"), self.port, &extra);
        drop(std::mem::replace(self, fresh));
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("--- redis-server :{} log ---\n{}", self.port, self.log());
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A Redis Cluster of three masters, with or without a replica each.
pub struct RedisCluster {
    pub nodes: Vec<RedisServer>,
}

impl RedisCluster {
    /// Starts three cluster-enabled servers and joins them with
    /// `redis-cli --cluster create`.
    pub fn start() -> Self {
        Self::start_with(0, 5000)
    }

    /// Three masters with one replica each, which a master's failure
    /// promotes after `node_timeout_ms`.
    pub fn start_with_replicas(node_timeout_ms: u32) -> Self {
        Self::start_with(1, node_timeout_ms)
    }

    fn start_with(replicas: usize, node_timeout_ms: u32) -> Self {
        let timeout = node_timeout_ms.to_string();
        let nodes: Vec<RedisServer> = (0..3 * (1 + replicas))
            .map(|_| {
                RedisServer::spawn(&[
                    "--cluster-enabled",
                    "yes",
                    "--cluster-node-timeout",
                    &timeout,
                    // A promoted replica takes over at once, whatever its lag.
                    "--cluster-replica-validity-factor",
                    "0",
                    // Masters keep serving their slots while another's are
                    // uncovered, as production clusters should be set.
                    "--cluster-require-full-coverage",
                    "no",
                ])
            })
            .collect();
        let addrs: Vec<String> = nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        let out = Command::new("redis-cli")
            .arg("--cluster")
            .arg("create")
            .args(&addrs)
            .args(["--cluster-replicas", &replicas.to_string(), "--cluster-yes"])
            .output()
            .unwrap_or_else(|e| panic!("redis-cli not found ({e}): {INSTALL}"));
        assert!(
            out.status.success(),
            "redis-cli --cluster create failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let cluster = Self { nodes };
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            let ok = cluster
                .nodes
                .iter()
                .all(|n| n.command("CLUSTER INFO").contains("cluster_state:ok"));
            // Replicas are attached and synced.
            let synced = replicas == 0
                || cluster
                    .nodes
                    .iter()
                    .filter(|n| n.command("ROLE").contains("slave"))
                    .all(|n| {
                        n.command("INFO replication")
                            .contains("master_link_status:up")
                    });
            if ok && synced && cluster.masters().len() == 3 {
                return cluster;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("the cluster did not reach cluster_state:ok within 20 s");
    }

    /// The indexes of the nodes that are masters now.
    pub fn masters(&self) -> Vec<usize> {
        (0..self.nodes.len())
            .filter(|&i| self.nodes[i].command("ROLE").contains("master"))
            .collect()
    }

    /// The index of the node that serves `slot` now, as `CLUSTER NODES`
    /// on a live master says.
    pub fn owner_of_slot(&self, slot: u16) -> Option<usize> {
        let port = self.masters().into_iter().find_map(|i| {
            let nodes = self.nodes[i].command("CLUSTER NODES");
            nodes.lines().find_map(|line| {
                let fields: Vec<&str> = line.split(' ').collect();
                if fields.len() < 9 || !fields[2].contains("master") || fields[2].contains("fail") {
                    return None;
                }
                let serves = fields[8..].iter().any(|r| {
                    let mut ends = r.split('-').map(|n| n.trim().parse::<u16>());
                    match (ends.next(), ends.next()) {
                        (Some(Ok(a)), Some(Ok(b))) => a <= slot && slot <= b,
                        (Some(Ok(a)), None) => a == slot,
                        _ => false,
                    }
                });
                let addr = fields[1].split('@').next()?;
                serves.then(|| addr.rsplit(':').next()?.parse::<u16>().ok())?
            })
        })?;
        self.nodes.iter().position(|n| n.port == port)
    }

    /// `redis://127.0.0.1:<port>/` for every node.
    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(RedisServer::url).collect()
    }

    /// The slot of Redis key `name`.
    pub fn slot_of(&self, name: &str) -> u16 {
        let i = self.masters()[0];
        let out = Command::new("redis-cli")
            .args([
                "-p",
                &self.nodes[i].port.to_string(),
                "CLUSTER",
                "KEYSLOT",
                name,
            ])
            .output()
            .expect("redis-cli");
        String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
    }

    /// `redis-cli` against node `i`, its output.
    pub fn cli(&self, i: usize, args: &[&str]) -> String {
        let out = Command::new("redis-cli")
            .args(["-p", &self.nodes[i].port.to_string()])
            .args(args)
            .output()
            .expect("redis-cli");
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }
}

/// A port that accepts TCP connections and never answers: a host that is
/// up but not serving Redis, or a black hole behind a firewall. The
/// listener's backlog completes the handshakes; nothing reads.
pub fn silent_port() -> (TcpListener, u16) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    (l, port)
}

/// A port nothing listens on.
pub fn closed_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// A two-worker runtime for tests that drive Redis from many tasks.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// A store on `server` with a generous deadline: a loaded test machine is
/// not a failing Redis.
#[cfg(feature = "redis")]
pub async fn redis_store(server: &RedisServer) -> tower_ratelimit::store::RedisStore {
    tower_ratelimit::store::RedisStore::builder()
        .timeout(Duration::from_secs(5))
        .connect(&server.url())
        .await
        .unwrap()
}

/// A store on `cluster`, as [`redis_store`].
#[cfg(feature = "redis-cluster")]
pub async fn cluster_store(cluster: &RedisCluster) -> tower_ratelimit::store::RedisStore {
    tower_ratelimit::store::RedisStore::builder()
        .timeout(Duration::from_secs(5))
        .connect_cluster(cluster.urls())
        .await
        .unwrap()
}

/// A master, one replica and three sentinels watching them as
/// `mymaster`, which fail over `down_after_ms` after the master stops
/// answering.
pub struct RedisSentinels {
    pub master: RedisServer,
    pub replica: RedisServer,
    pub sentinels: Vec<RedisServer>,
}

impl RedisSentinels {
    pub fn start(down_after_ms: u32) -> Self {
        let master = RedisServer::start();
        let replica =
            RedisServer::start_with(&["--replicaof", "127.0.0.1", &master.port().to_string()]);
        let deadline = Instant::now() + Duration::from_secs(10);
        while !replica
            .command("INFO replication")
            .contains("master_link_status:up")
        {
            assert!(
                Instant::now() < deadline,
                "the replica did not sync in 10 s"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        let sentinels = (0..3)
            .map(|_| {
                let dir = temp_dir("sentinel");
                let port = free_port();
                let conf = dir.join("sentinel.conf");
                std::fs::write(
                    &conf,
                    format!(
                        "port {port}\nbind 127.0.0.1\ndir {dir}\n\
                         sentinel monitor mymaster 127.0.0.1 {master} 2\n\
                         sentinel down-after-milliseconds mymaster {down_after_ms}\n\
                         sentinel failover-timeout mymaster 10000\n\
                         sentinel parallel-syncs mymaster 1\n",
                        dir = dir.display(),
                        master = master.port(),
                    ),
                )
                .unwrap();
                let conf = conf.display().to_string();
                RedisServer::spawn_in(dir, port, &[&conf, "--sentinel"])
            })
            .collect();
        let s = Self {
            master,
            replica,
            sentinels,
        };
        // Every sentinel has found the replica and the other sentinels.
        let deadline = Instant::now() + Duration::from_secs(20);
        while !s.sentinels.iter().all(|n| {
            let info = n.command("SENTINEL MASTER mymaster");
            info.contains("num-slaves") && n.command("INFO sentinel").contains("sentinels=3")
        }) {
            assert!(
                Instant::now() < deadline,
                "the sentinels did not meet in 20 s"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        s
    }

    /// `redis://127.0.0.1:<port>/` for every sentinel.
    pub fn urls(&self) -> Vec<String> {
        self.sentinels.iter().map(RedisServer::url).collect()
    }
}

/// A new key for every use, so tests sharing a Redis never meet.
pub fn fresh_key(tag: &str) -> tower_ratelimit::key::Key {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    tower_ratelimit::key::Key::from(format!("{tag}-{}", NEXT.fetch_add(1, Ordering::Relaxed)))
}

/// A policy of `algorithm`: `limit` per `period_ms` milliseconds, with
/// `burst` where the algorithm takes one (windows and concurrency do not).
pub fn policy(
    name: &str,
    algorithm: tower_ratelimit::Algorithm,
    limit: u64,
    period_ms: u64,
    burst: Option<u64>,
) -> tower_ratelimit::Policy {
    use tower_ratelimit::{Algorithm, Quota};
    let mut quota = Quota::new(limit, Duration::from_millis(period_ms));
    let windowed = matches!(
        algorithm,
        Algorithm::FixedWindow
            | Algorithm::SlidingWindowLog
            | Algorithm::SlidingWindowCounter
            | Algorithm::Concurrency
    );
    if let (Some(b), false) = (burst, windowed) {
        quota = quota.burst(b);
    }
    tower_ratelimit::Policy::new(name, quota).with_algorithm(algorithm)
}

/// How many `FCALL`s `server` has run since its stats were last reset.
pub fn fcall_calls(server: &RedisServer) -> u64 {
    server
        .command("INFO commandstats")
        .lines()
        .find_map(|l| l.strip_prefix("cmdstat_fcall:calls="))
        .and_then(|rest| rest.split(',').next())
        .map_or(0, |n| n.parse().unwrap())
}

/// A stopped server, continued when dropped; see [`RedisServer::stop`].
pub struct Stopped<'a>(&'a RedisServer);

impl Drop for Stopped<'_> {
    fn drop(&mut self) {
        self.0.signal("CONT");
    }
}

/// Sets of one or two policies (named `a` and `b`) of `algorithms`, with
/// limits in `limits`, periods of 1 s, up to 3 s and a minute, and maybe a
/// burst in `bursts`.
pub fn policy_sets(
    algorithms: &'static [tower_ratelimit::Algorithm],
    limits: std::ops::Range<u64>,
    bursts: std::ops::Range<u64>,
) -> impl proptest::strategy::Strategy<Value = tower_ratelimit::PolicySet> {
    use proptest::prelude::*;
    let one = move |name: &'static str| {
        (
            prop::sample::select(algorithms),
            limits.clone(),
            prop_oneof![Just(1_000_u64), 1..3_000_u64, Just(60_000_u64)],
            prop::option::of(bursts.clone()),
        )
            .prop_map(move |(a, limit, period, burst)| policy(name, a, limit, period, burst))
    };
    prop_oneof![
        one("a").prop_map(|p| vec![p]),
        (one("a"), one("b")).prop_map(|(a, b)| vec![a, b]),
    ]
    .prop_map(|v| tower_ratelimit::PolicySet::new(v).unwrap())
}
