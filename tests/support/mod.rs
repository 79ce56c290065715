//! Real Redis for tests: a `redis-server` on a free port per test, or a
//! 3-master Redis Cluster, killed on drop. A test that needs Redis and
//! cannot find `redis-server` fails and says how to install it.

#![allow(dead_code)]

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

    fn spawn(extra: &[&str]) -> Self {
        let port = free_port();
        let dir = temp_dir("redis");
        let log = dir.join("redis.log");
        let mut args = vec![
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
        ];
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
        let server = Self { child, port, dir };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if raw_command(port, "PING").is_some_and(|r| r.starts_with("+PONG")) {
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
        raw_command(self.port, command).unwrap_or_default()
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("redis.log")).unwrap_or_default()
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

/// A Redis Cluster of three masters, no replicas.
pub struct RedisCluster {
    pub nodes: Vec<RedisServer>,
}

impl RedisCluster {
    /// Starts three cluster-enabled servers and joins them with
    /// `redis-cli --cluster create`.
    pub fn start() -> Self {
        let nodes: Vec<RedisServer> = (0..3)
            .map(|_| {
                RedisServer::spawn(&["--cluster-enabled", "yes", "--cluster-node-timeout", "5000"])
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
            .args(["--cluster-replicas", "0", "--cluster-yes"])
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
            if cluster
                .nodes
                .iter()
                .all(|n| n.command("CLUSTER INFO").contains("cluster_state:ok"))
            {
                return cluster;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("the cluster did not reach cluster_state:ok within 20 s");
    }

    /// `redis://127.0.0.1:<port>/` for every node.
    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(RedisServer::url).collect()
    }
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
