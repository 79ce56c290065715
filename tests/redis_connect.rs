//! Reaching production Redis: credentials, database numbers, TLS, and
//! misconfigurations that must fail fast, saying what is wrong, against
//! real `redis-server` processes on 127.0.0.1.
#![cfg(feature = "redis")]

mod support;

use std::time::{Duration, Instant};

use support::{RedisServer, closed_port, runtime, silent_port};
use tower_ratelimit::key::Key;
use tower_ratelimit::store::{Check, ConnectError, ConnectErrorKind, RedisStore, Store};
use tower_ratelimit::{Policy, PolicySet, Quota};

const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);

/// Connects to `url` with a short connect timeout; the error and how long
/// it took.
fn fails(url: &str) -> (ConnectError, Duration) {
    runtime().block_on(async {
        let started = Instant::now();
        let e = RedisStore::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .connect(url)
            .await
            .expect_err("the connect fails");
        let took = started.elapsed();
        eprintln!("{url:?}: {:?} after {took:?}: {e}", e.kind());
        (e, took)
    })
}

fn set() -> PolicySet {
    PolicySet::new(vec![Policy::new("burst", Quota::per_minute(3))]).unwrap()
}

async fn decides(store: &RedisStore, key: &str) -> usize {
    let set = set();
    let key = Key::from(key);
    let mut admitted = 0;
    for _ in 0..4 {
        let d = store
            .decide(Check::new(&key, &set, 1))
            .await
            .map_err(|e| format!("{e}: {:?}", std::error::Error::source(&e)))
            .unwrap();
        admitted += usize::from(d.is_allowed());
    }
    admitted
}

#[test]
fn a_wrong_password_is_refused_at_once_naming_the_credentials() {
    let server = RedisServer::start_with(&["--requirepass", "right"]);
    let (e, took) = fails(&format!("redis://:wrong@127.0.0.1:{}/", server.port()));
    assert_eq!(e.kind(), ConnectErrorKind::Auth);
    assert!(e.to_string().contains("password"), "{e}");
    assert!(
        !e.to_string().contains("wrong"),
        "the password never shows: {e}"
    );
    assert!(took < CONNECT_TIMEOUT, "{took:?}");
}

#[test]
fn a_missing_password_is_asked_for() {
    let server = RedisServer::start_with(&["--requirepass", "right"]);
    let (e, took) = fails(&server.url());
    assert_eq!(e.kind(), ConnectErrorKind::Auth);
    assert!(e.to_string().contains("wants a password"), "{e}");
    assert!(took < CONNECT_TIMEOUT, "{took:?}");
}

#[test]
fn a_port_nothing_listens_on_is_refused_at_once() {
    let (e, took) = fails(&format!("redis://127.0.0.1:{}/", closed_port()));
    assert_eq!(e.kind(), ConnectErrorKind::Unreachable);
    assert!(e.to_string().contains("connection refused"), "{e}");
    assert!(took < CONNECT_TIMEOUT, "{took:?}");
}

#[test]
fn a_host_that_never_answers_times_out_within_the_connect_timeout() {
    let (_listener, port) = silent_port();
    let (e, took) = fails(&format!("redis://127.0.0.1:{port}/"));
    assert_eq!(e.kind(), ConnectErrorKind::Timeout);
    assert!(e.to_string().contains("connect timeout (500ms)"), "{e}");
    assert!(
        took >= CONNECT_TIMEOUT && took < CONNECT_TIMEOUT + Duration::from_millis(300),
        "{took:?}"
    );
}

#[test]
fn a_bad_url_is_refused_naming_it_without_its_password() {
    for url in [
        "http://127.0.0.1:6379",
        "redis://:hunter2@127.0.0.1:notaport",
        "127.0.0.1:6379",
    ] {
        let (e, took) = fails(url);
        assert_eq!(e.kind(), ConnectErrorKind::Url, "{url}");
        assert!(e.to_string().contains("Redis URL"), "{e}");
        assert!(!e.to_string().contains("hunter2"), "{e}");
        assert!(took < Duration::from_millis(50), "{took:?}");
    }
}

#[cfg(not(feature = "redis-tls"))]
#[test]
fn a_tls_url_without_the_tls_feature_names_the_feature() {
    let (e, _) = fails("rediss://127.0.0.1:6379");
    assert_eq!(e.kind(), ConnectErrorKind::Url);
    assert!(e.to_string().contains("redis-tls"), "{e}");
}

#[test]
fn an_acl_user_with_the_documented_permissions_decides_in_its_database() {
    let server = RedisServer::start();
    // The ACL the README recommends.
    let acl = "ACL SETUSER limiter on >s3cret resetkeys ~ratelimit:* -@all +@scripting +@read \
               +@write +@connection +info +time";
    assert!(server.command(acl).starts_with("+OK"), "{acl}");
    let rt = runtime();
    rt.block_on(async {
        let store = RedisStore::builder()
            .timeout(Duration::from_secs(5))
            .username("limiter")
            .password("s3cret")
            .database(3)
            .connect(&server.url())
            .await
            .unwrap();
        assert_eq!(decides(&store, "acl").await, 3);
        // The same from the URL.
        let url = format!("redis://limiter:s3cret@127.0.0.1:{}/3", server.port());
        let from_url = RedisStore::connect(&url).await.unwrap();
        assert_eq!(decides(&from_url, "acl").await, 0, "the same key, spent");
    });
    // The state is in database 3, not 0.
    let client = redis::Client::open(format!("redis://127.0.0.1:{}/3", server.port())).unwrap();
    let mut conn = client.get_connection().unwrap();
    let keys: Vec<String> = redis::cmd("KEYS").arg("*").query(&mut conn).unwrap();
    assert_eq!(keys.len(), 1, "{keys:?}");
    assert!(server.command("DBSIZE").contains(":0"));
    // A wrong password for that user is refused.
    let (e, _) = fails(&format!(
        "redis://limiter:nope@127.0.0.1:{}/3",
        server.port()
    ));
    assert_eq!(e.kind(), ConnectErrorKind::Auth);
}

#[test]
fn a_database_that_does_not_exist_is_refused() {
    let server = RedisServer::start_with(&["--databases", "4"]);
    let (e, took) = fails(&format!("redis://127.0.0.1:{}/9", server.port()));
    assert_eq!(e.kind(), ConnectErrorKind::Other);
    assert!(e.to_string().contains("database"), "{e}");
    assert!(took < CONNECT_TIMEOUT);
}

#[test]
fn a_zero_connect_timeout_is_a_config_error() {
    let e = runtime()
        .block_on(
            RedisStore::builder()
                .connect_timeout(Duration::ZERO)
                .connect("redis://127.0.0.1:1/"),
        )
        .unwrap_err();
    assert_eq!(e.kind(), ConnectErrorKind::Config);
    assert!(e.to_string().contains("connect_timeout"), "{e}");
}

#[cfg(feature = "redis-cluster")]
mod cluster {
    use super::*;
    use support::RedisCluster;

    #[test]
    fn a_cluster_node_given_to_connect_and_a_standalone_given_to_connect_cluster_are_refused() {
        let cluster = RedisCluster::start();
        let (e, took) = fails(&cluster.urls()[0]);
        assert_eq!(e.kind(), ConnectErrorKind::Mode);
        assert!(e.to_string().contains("connect_cluster"), "{e}");
        assert!(took < CONNECT_TIMEOUT);

        let server = RedisServer::start();
        let started = Instant::now();
        let e = runtime()
            .block_on(
                RedisStore::builder()
                    .connect_timeout(CONNECT_TIMEOUT)
                    .connect_cluster([server.url()]),
            )
            .unwrap_err();
        eprintln!("{:?}: {e}", e.kind());
        assert_eq!(e.kind(), ConnectErrorKind::Mode);
        assert!(e.to_string().contains("RedisStore::connect"), "{e}");
        assert!(started.elapsed() < CONNECT_TIMEOUT + Duration::from_millis(100));
    }

    #[test]
    fn connect_cluster_with_a_wrong_password_or_a_dead_node_fails_within_the_timeout() {
        let cluster = RedisCluster::start();
        for node in &cluster.nodes {
            node.command("CONFIG SET requirepass right");
        }
        let urls: Vec<String> = cluster
            .nodes
            .iter()
            .map(|n| format!("redis://:wrong@127.0.0.1:{}/", n.port()))
            .collect();
        let started = Instant::now();
        let e = runtime()
            .block_on(
                RedisStore::builder()
                    .connect_timeout(CONNECT_TIMEOUT)
                    .connect_cluster(urls),
            )
            .unwrap_err();
        eprintln!("{:?}: {e}", e.kind());
        assert_eq!(e.kind(), ConnectErrorKind::Auth, "{e}");
        assert!(started.elapsed() < CONNECT_TIMEOUT + Duration::from_millis(100));

        let started = Instant::now();
        let e = runtime()
            .block_on(
                RedisStore::builder()
                    .connect_timeout(CONNECT_TIMEOUT)
                    .connect_cluster([format!("redis://127.0.0.1:{}/", closed_port())]),
            )
            .unwrap_err();
        eprintln!("{:?}: {e}", e.kind());
        assert_eq!(e.kind(), ConnectErrorKind::Unreachable, "{e}");
        assert!(started.elapsed() < CONNECT_TIMEOUT + Duration::from_millis(100));
    }
}

#[cfg(feature = "redis-tls")]
mod tls {
    use super::*;

    #[test]
    fn rediss_with_the_ca_decides_and_tls_plain_mismatches_are_named() {
        let (server, ca) = RedisServer::start_tls();
        let tls_port = server.tls_port().unwrap();
        let rt = runtime();
        rt.block_on(async {
            let store = RedisStore::builder()
                .timeout(Duration::from_secs(5))
                .tls_root_ca(ca.clone())
                .connect(&format!("rediss://localhost:{tls_port}/"))
                .await
                .unwrap();
            assert_eq!(decides(&store, "tls").await, 3);
            let by_ip = RedisStore::builder()
                .timeout(Duration::from_secs(5))
                .tls_root_ca(ca.clone())
                .connect(&format!("rediss://127.0.0.1:{tls_port}/"))
                .await
                .unwrap();
            assert_eq!(decides(&by_ip, "tls").await, 0);
        });
        // A plain URL for the TLS port.
        let (e, took) = fails(&format!("redis://127.0.0.1:{tls_port}/"));
        assert_eq!(e.kind(), ConnectErrorKind::Protocol, "{e}");
        assert!(e.to_string().contains("rediss://"), "{e}");
        assert!(
            took <= CONNECT_TIMEOUT + Duration::from_millis(50),
            "{took:?}"
        );
        // A TLS URL for the plain port.
        let started = Instant::now();
        let e = rt
            .block_on(
                RedisStore::builder()
                    .tls_root_ca(ca.clone())
                    .connect_timeout(CONNECT_TIMEOUT)
                    .connect(&server.url().replace("redis://", "rediss://")),
            )
            .unwrap_err();
        eprintln!("{:?} after {:?}: {e}", e.kind(), started.elapsed());
        assert_eq!(e.kind(), ConnectErrorKind::Tls, "{e}");
        assert!(e.to_string().contains("redis://"), "{e}");
        assert!(started.elapsed() < CONNECT_TIMEOUT + Duration::from_millis(50));
        // A certificate no trusted CA signed: the system's roots do not
        // know the test CA.
        let e = rt
            .block_on(
                RedisStore::builder()
                    .connect_timeout(CONNECT_TIMEOUT)
                    .connect(&format!("rediss://localhost:{tls_port}/")),
            )
            .unwrap_err();
        eprintln!("{:?}: {e}", e.kind());
        assert_eq!(e.kind(), ConnectErrorKind::Tls, "{e}");
    }
}

/// A server that says it is Redis 4.0 (`INFO`) and answers `+OK` to
/// everything else.
fn old_redis() -> (std::thread::JoinHandle<()>, u16) {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let handle = std::thread::spawn(move || {
        let Ok((mut s, _)) = listener.accept() else {
            return;
        };
        s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let mut buf = [0_u8; 4096];
        while let Ok(n) = s.read(&mut buf) {
            if n == 0 {
                return;
            }
            let text = String::from_utf8_lossy(&buf[..n]);
            let mut reply = String::new();
            for command in text.split('*').skip(1) {
                if command.to_ascii_uppercase().contains("INFO") {
                    let info = "redis_version:4.0.14\r\nredis_mode:standalone\r\n";
                    reply.push_str(&format!("${}\r\n{info}\r\n", info.len()));
                } else {
                    reply.push_str("+OK\r\n");
                }
            }
            if s.write_all(reply.as_bytes()).is_err() {
                return;
            }
        }
    });
    (handle, port)
}

#[test]
fn a_redis_older_than_5_is_refused_naming_the_version() {
    let (server, port) = old_redis();
    let (e, took) = fails(&format!("redis://127.0.0.1:{port}/"));
    assert_eq!(e.kind(), ConnectErrorKind::Version, "{e}");
    assert!(
        e.to_string().contains("4.0.14") && e.to_string().contains("5.0"),
        "{e}"
    );
    assert!(took < CONNECT_TIMEOUT);
    drop(server);
}
