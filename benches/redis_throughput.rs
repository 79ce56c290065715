//! Run with `cargo bench --bench redis_throughput --features redis` (needs
//! `redis-server` on PATH; the bench starts its own on a free port of
//! 127.0.0.1 and stops it on exit).
//!
//! Concurrent load, not criterion: at 1, 16, 64 and 256 tokio tasks on a
//! multi-thread runtime, every task of a variant sharing one reconnecting
//! multiplexed connection (a `ConnectionManager`, as `RedisStore::connect`
//! makes), each variant runs for `BENCH_SECS` seconds (default 2). The
//! variants are alternated over `BENCH_ROUNDS` rounds (default 3: A B C D,
//! then B C D A, …) so drift on a shared machine hits them all alike; every
//! figure is the median across rounds, with the min–max spread beside it.
//! `BENCH_ONLY` (names, comma-separated) runs only those variants and
//! sections.
//!
//! The variants, side by side:
//! - `decide 1 policy`: `RedisStore::decide`, one GCRA policy (1,000/min,
//!   burst 10^7: everything is allowed and every key keeps its state), over
//!   10,000 keys taken round-robin;
//! - `decide 3 policies`: the same with GCRA per second (100/s, burst
//!   10^7), that GCRA per minute and a fixed window per day, all allowing;
//! - `lean GCRA`: a raw `EVALSHA` of [`LEAN_GCRA`], a minimal GCRA in the
//!   shape of go-redis's `redis_rate` (server `TIME`, one `GET`, integer
//!   maths, one `SET .. PX`), same quota and keys, commands prebuilt — the
//!   floor for a script that decides in Redis;
//! - `PING`: the round trip alone, the ceiling;
//! - `decide hot key` / `lean hot key`: every task on one key; the store
//!   coalesces what arrives while a call is in flight (`… one call each`:
//!   a store built with `.coalesce(false)`);
//! - `decide blocked` / `lean blocked`: one key whose quota (1/day) is spent,
//!   so every call is denied; the store answers from its denied cache
//!   (`… uncached`: built with `.denied_cache(0, _)`);
//! - then, at 16 tasks, each of `Algorithm::ALL` as one policy over the
//!   10,000 keys;
//! - then `sliding log`: one key's log filled to 10,000, 100,000 and
//!   1,000,000 entries (a limit of 2,000,000 a day), and what a decision
//!   costs on it, in Redis and in memory: admitted with nothing expiring,
//!   and admitted while the oldest entry expires at every request.
//!
//! For each it prints decisions/s, p50 and p99 latency, and where Redis
//! spends its time: `usec_per_call` of the top-level command (`FCALL`,
//! `EVALSHA`, `EVAL` or `PING`, from `INFO commandstats` after a `CONFIG
//! RESETSTAT`), calls and Redis µs per decision (coalesced and cached
//! decisions share or skip calls), the part spent in the commands the
//! script calls, Redis's main thread CPU per decision (`INFO cpu`, which
//! adds parsing and socket I/O) and this process's CPU per decision. Ratios
//! (ours ÷ lean, three policies ÷ one) are taken within each round, then
//! their median is shown.
//!
//! `BENCH_CALLS_IN_FLIGHT=n` builds the store with `.calls_in_flight(n)`
//! instead of its default (0: every key its own call).
//!
//! Without `--bench` (as under `cargo test --all-targets`, which runs
//! bench binaries too) or with `--test`, it makes a tiny run of every path
//! in about a second.

#[path = "../tests/support/mod.rs"]
mod support;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use redis::aio::{ConnectionManager, ConnectionManagerConfig, MultiplexedConnection};
use redis::{Cmd, Value};
use tower_ratelimit::key::Key;
use tower_ratelimit::store::{Check, RedisStore, Store};
use tower_ratelimit::{Algorithm, MemoryStore, Policy, PolicySet, Quota};

/// A lean reference GCRA: the theoretical arrival time (TAT) of the next
/// request in µs under one plain key.
///
/// KEYS[1]: the TAT. ARGV: emission interval (µs per unit), burst, cost.
/// Returns { allowed (1/0), remaining, retry after µs (-1 when allowed),
/// reset after µs }.
const LEAN_GCRA: &str = r"
local time = redis.call('TIME')
local now = time[1] * 1000000 + time[2]
local interval = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local cost = tonumber(ARGV[3])
local tat = tonumber(redis.call('GET', KEYS[1])) or now
if tat < now then tat = now end
local new_tat = tat + interval * cost
local slack = now - (new_tat - interval * burst)
if slack < 0 then
  return { 0, 0, -slack, tat - now }
end
local reset_after = new_tat - now
redis.call('SET', KEYS[1], string.format('%d', new_tat), 'PX', math.ceil(reset_after / 1000))
return { 1, math.floor(slack / interval), -1, reset_after }
";

/// Entries a sliding log is filled to, and in a quick run.
const LOG_SIZES: [u64; 3] = [10_000, 100_000, 1_000_000];
const QUICK_LOG_SIZES: [u64; 3] = [100, 200, 400];
/// Decisions timed on each log.
const LOG_DECISIONS: u64 = 2_000;
/// Batches of them timed on each log in memory.
const MEMORY_LOG_BATCHES: u64 = 7;

/// 1,000/min with a burst of 10^7: never runs out within a run, and every
/// key keeps its state (one call adds 60 ms of it), as a busy client's does.
const ALLOWING: Quota = Quota::per_minute(1_000).burst(10_000_000);
/// [`ALLOWING`] for [`LEAN_GCRA`]: µs per unit, and the burst.
const LEAN_ALLOWING: (u64, u64) = (60_000, 10_000_000);
/// 1/day for [`LEAN_GCRA`], spent by the warm-up.
const LEAN_SPENT: (u64, u64) = (86_400_000_000, 1);

const KEYS: usize = 10_000;
const TASKS: [usize; 4] = [1, 16, 64, 256];
const ALGORITHM_TASKS: usize = 16;
/// Commands a client sends around a run, not part of any decision.
const CONTROL: [&str; 7] = [
    "config", "info", "script", "function", "client", "hello", "select",
];
/// The commands a variant itself sends.
const TOP_LEVEL: [&str; 4] = ["fcall", "evalsha", "eval", "ping"];

// ---------------------------------------------------------------------------
// The crate's policy and decision API, kept to these two functions: `Check`
// will grow, and only they should need to follow. (Setup also uses
// `RedisStore::builder` and `redis_key`.)

/// A policy set from `(name, quota, algorithm)`.
fn policies(list: &[(&str, Quota, Algorithm)]) -> PolicySet {
    PolicySet::new(
        list.iter()
            .map(|&(name, quota, algorithm)| Policy::new(name, quota).with_algorithm(algorithm))
            .collect(),
    )
    .unwrap()
}

/// One decision of cost 1; whether it was allowed.
async fn decide(store: &RedisStore, key: &Key, set: &PolicySet) -> bool {
    let decision = store.decide(Check::new(key, set, 1)).await;
    decision.expect("RedisStore::decide failed").is_allowed()
}

// ---------------------------------------------------------------------------

/// What one call of a variant does.
enum Op {
    Decide {
        store: RedisStore,
        set: PolicySet,
        keys: Arc<[Key]>,
    },
    /// A prebuilt `EVALSHA` per key, replying `{ allowed, .. }`.
    Lean {
        conn: ConnectionManager,
        cmds: Arc<[Cmd]>,
    },
    Ping {
        conn: ConnectionManager,
    },
}

impl Op {
    fn keys(&self) -> usize {
        match self {
            Op::Decide { keys, .. } => keys.len(),
            Op::Lean { cmds, .. } => cmds.len(),
            Op::Ping { .. } => 1,
        }
    }

    async fn call(&self, i: usize) -> bool {
        match self {
            Op::Decide { store, set, keys } => decide(store, &keys[i], set).await,
            Op::Lean { conn, cmds } => {
                let reply: Vec<i64> = cmds[i].query_async(&mut conn.clone()).await.unwrap();
                reply[0] == 1
            }
            Op::Ping { conn } => {
                let pong: String = redis::cmd("PING")
                    .query_async(&mut conn.clone())
                    .await
                    .unwrap();
                pong == "PONG"
            }
        }
    }
}

struct Variant {
    name: String,
    op: Op,
    /// What every measured call must answer.
    allowed: bool,
}

/// One variant, one concurrency, one round.
struct Run {
    decisions: u64,
    rate: f64,
    p50_us: f64,
    p99_us: f64,
    /// Per command: (calls, µs), from `INFO commandstats`.
    commands: BTreeMap<String, (u64, u64)>,
    /// Redis's main thread CPU per decision, µs.
    server_cpu_us: f64,
    /// This process's CPU per decision, µs (Linux only).
    client_cpu_us: Option<f64>,
}

impl Run {
    /// `usec_per_call` of the commands the variant sent.
    fn redis_us(&self) -> f64 {
        let (calls, usec) = self.sum(|name| TOP_LEVEL.contains(&name));
        usec as f64 / calls.max(1) as f64
    }

    /// Calls of the variant's own commands per decision.
    fn calls_per_decision(&self) -> f64 {
        let (calls, _) = self.sum(|name| TOP_LEVEL.contains(&name));
        calls as f64 / self.decisions.max(1) as f64
    }

    /// Redis µs per decision in the variant's own commands.
    fn redis_us_per_decision(&self) -> f64 {
        let (_, usec) = self.sum(|name| TOP_LEVEL.contains(&name));
        usec as f64 / self.decisions.max(1) as f64
    }

    /// µs per decision in the commands a script called.
    fn nested_us(&self) -> f64 {
        let (_, usec) = self.sum(is_nested);
        usec as f64 / self.decisions.max(1) as f64
    }

    /// `evalsha`, `ping`, or `evalsha+eval` when a script had to be sent.
    fn top_level(&self) -> String {
        TOP_LEVEL
            .iter()
            .filter(|c| self.commands.get(**c).is_some_and(|&(calls, _)| calls > 0))
            .copied()
            .collect::<Vec<_>>()
            .join("+")
    }

    fn sum(&self, pick: impl Fn(&str) -> bool) -> (u64, u64) {
        self.commands
            .iter()
            .filter(|(name, _)| pick(name))
            .fold((0, 0), |(c, u), (_, &(calls, usec))| (c + calls, u + usec))
    }
}

/// A command a script called: not one the variant or the bench sent.
/// Redis 7 names subcommands `config|resetstat`.
fn is_nested(name: &str) -> bool {
    let command = name.split('|').next().unwrap_or(name);
    !TOP_LEVEL.contains(&command) && !CONTROL.contains(&command)
}

struct Settings {
    /// `BENCH_ONLY`: the names of the variants to run (comma-separated).
    only: Option<Vec<String>>,
    secs: f64,
    rounds: usize,
    warm_up_secs: f64,
    quick: bool,
    /// `BENCH_CALLS_IN_FLIGHT`: the store's `calls_in_flight`, when not
    /// its default.
    calls_in_flight: Option<usize>,
}

impl Settings {
    /// Whether `BENCH_ONLY` leaves `name` in.
    fn runs(&self, name: &str) -> bool {
        self.only
            .as_ref()
            .is_none_or(|only| only.iter().any(|o| o == name))
    }

    fn from_env() -> Self {
        let args: Vec<String> = std::env::args().collect();
        // `cargo bench` passes `--bench`; `cargo test` runs us without it.
        let quick = !args.iter().any(|a| a == "--bench") || args.iter().any(|a| a == "--test");
        fn env<T: std::str::FromStr>(name: &str, default: T) -> T {
            std::env::var(name).ok().map_or(default, |v| {
                v.parse()
                    .unwrap_or_else(|_| panic!("{name}={v:?} is not a number"))
            })
        }
        let only = std::env::var("BENCH_ONLY")
            .ok()
            .map(|v| v.split(',').map(|s| s.trim().to_owned()).collect());
        let calls_in_flight = std::env::var("BENCH_CALLS_IN_FLIGHT").ok().map(|v| {
            v.parse()
                .unwrap_or_else(|_| panic!("BENCH_CALLS_IN_FLIGHT={v:?} is not a number"))
        });
        if quick {
            Self {
                only,
                secs: 0.02,
                rounds: 1,
                warm_up_secs: 0.01,
                quick,
                calls_in_flight,
            }
        } else {
            let rounds = env("BENCH_ROUNDS", 3);
            assert!(rounds >= 1, "BENCH_ROUNDS must be at least 1");
            Self {
                only,
                secs: env("BENCH_SECS", 2.0),
                rounds,
                warm_up_secs: 0.5,
                quick,
                calls_in_flight,
            }
        }
    }
}

fn main() {
    let settings = Settings::from_env();
    let server = support::RedisServer::start();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(bench(&server, &settings));
}

async fn bench(server: &support::RedisServer, settings: &Settings) {
    let url = server.url();
    let client = redis::Client::open(url.as_str()).unwrap();
    let mut control = client.get_multiplexed_async_connection().await.unwrap();
    let mut builder = RedisStore::builder()
        // Queueing at 256 tasks on a busy machine must not read as failure.
        .timeout(Duration::from_secs(5));
    if let Some(n) = settings.calls_in_flight {
        builder = builder.calls_in_flight(n);
    }
    let store = builder.connect(&url).await.unwrap();
    // One call per request, every one sent: what the optimisations save.
    let plain = RedisStore::builder()
        .timeout(Duration::from_secs(5))
        .coalesce(false)
        .denied_cache(0, Duration::ZERO)
        .connect(&url)
        .await
        .unwrap();
    // The same kind of connection the store makes, for the raw commands.
    let raw = client
        .get_connection_manager_with_config(
            ConnectionManagerConfig::new()
                .set_connection_timeout(Some(Duration::from_secs(1)))
                .set_response_timeout(None),
        )
        .await
        .unwrap();
    let lean_sha: String = redis::cmd("SCRIPT")
        .arg("LOAD")
        .arg(LEAN_GCRA)
        .query_async(&mut control)
        .await
        .unwrap();

    let info = info(&mut control, "server").await;
    let version = info.get("redis_version").map_or("?", String::as_str);
    println!(
        "redis-server {version} on {url}, {} tokio worker threads, {} core(s); {}",
        tokio::runtime::Handle::current().metrics().num_workers(),
        std::thread::available_parallelism().map_or(0, usize::from),
        if settings.quick {
            "quick run (no `--bench`, or `--test`): one tiny round, figures meaningless".to_owned()
        } else {
            format!(
                "{} s per variant × {} rounds, alternated; medians, then min–max",
                settings.secs, settings.rounds
            )
        }
    );

    let spread: Arc<[Key]> = (0..KEYS as u64).map(Key::from).collect();
    let hot: Arc<[Key]> = Arc::from([Key::from("hot")]);
    let hot_plain: Arc<[Key]> = Arc::from([Key::from("hot, one call each")]);
    let blocked: Arc<[Key]> = Arc::from([Key::from("blocked")]);
    let one = policies(&[("minute", ALLOWING, Algorithm::Gcra)]);
    let three = policies(&[
        (
            "second",
            Quota::per_second(100).burst(10_000_000),
            Algorithm::Gcra,
        ),
        ("minute", ALLOWING, Algorithm::Gcra),
        (
            "day",
            Quota::per_day(1_000_000_000_000),
            Algorithm::FixedWindow,
        ),
    ]);
    let spent = policies(&[("spent", Quota::per_day(1), Algorithm::Gcra)]);
    let decide_on = |set: &PolicySet, keys: &Arc<[Key]>| Op::Decide {
        store: store.clone(),
        set: set.clone(),
        keys: Arc::clone(keys),
    };
    let plain_on = |set: &PolicySet, keys: &Arc<[Key]>| Op::Decide {
        store: plain.clone(),
        set: set.clone(),
        keys: Arc::clone(keys),
    };
    // Lean keys named like the store's, so both send keys of one length.
    let lean_on = |keys: &Arc<[Key]>, (interval, burst): (u64, u64)| {
        let cmds: Arc<[Cmd]> = keys
            .iter()
            .map(|key| {
                let mut cmd = redis::cmd("EVALSHA");
                cmd.arg(&lean_sha)
                    .arg(1)
                    .arg(format!("{}:lean", store.redis_key(key, &one, 0)))
                    .arg(interval)
                    .arg(burst)
                    .arg(1);
                cmd
            })
            .collect();
        Op::Lean {
            conn: raw.clone(),
            cmds,
        }
    };
    let variant = |name: &str, op: Op, allowed: bool| {
        Arc::new(Variant {
            name: name.to_owned(),
            op,
            allowed,
        })
    };
    let main = [
        variant("decide 1 policy", decide_on(&one, &spread), true),
        variant("decide 3 policies", decide_on(&three, &spread), true),
        variant("lean GCRA", lean_on(&spread, LEAN_ALLOWING), true),
        variant("PING", Op::Ping { conn: raw.clone() }, true),
        variant("decide hot key", decide_on(&one, &hot), true),
        variant(
            "decide hot key, one call each",
            plain_on(&one, &hot_plain),
            true,
        ),
        variant("lean hot key", lean_on(&hot, LEAN_ALLOWING), true),
        variant("decide blocked", decide_on(&spent, &blocked), false),
        variant(
            "decide blocked, uncached",
            plain_on(&spent, &blocked),
            false,
        ),
        variant("lean blocked", lean_on(&blocked, LEAN_SPENT), false),
    ];
    let mut per_algorithm: Vec<Arc<Variant>> = Algorithm::ALL
        .iter()
        .map(|&a| variant(a.as_str(), decide_on(&algorithm_set(a), &spread), true))
        .collect();
    let mut main = main.to_vec();
    main.retain(|v| settings.runs(&v.name));
    per_algorithm.retain(|v| settings.runs(&v.name));

    // Loads the scripts' code paths, creates the keys' state and spends
    // the blocked keys' one unit.
    for v in main.iter().chain(&per_algorithm) {
        drive(v, 16, settings.warm_up_secs).await;
    }

    let mut results = Vec::new();
    for &tasks in &TASKS {
        results.push(rounds(&mut control, &main, tasks, settings).await);
    }
    let algorithms = rounds(&mut control, &per_algorithm, ALGORITHM_TASKS, settings).await;

    if !main.is_empty() {
        print_main(&main, &results);
        print_ratios(&main, &results);
        print_nested(&main, &results[1], TASKS[1]);
    }
    if !per_algorithm.is_empty() {
        print_algorithms(&per_algorithm, &algorithms);
    }
    if settings.runs("sliding log") {
        sliding_log(&url, &mut control, settings).await;
    }
}

/// One policy of algorithm `a` over a minute that never runs out.
fn algorithm_set(a: Algorithm) -> PolicySet {
    let quota = match a {
        // Windows take no burst: a limit never reached instead.
        Algorithm::FixedWindow | Algorithm::SlidingWindowLog | Algorithm::SlidingWindowCounter => {
            Quota::per_minute(1_000_000_000)
        }
        // In flight at most; every call holds the same lease (id 0), so a
        // key never fills.
        Algorithm::Concurrency => Quota::per_minute(100_000),
        _ => ALLOWING,
    };
    policies(&[(a.as_str(), quota, a)])
}

/// `results[variant][round]`: every variant once per round, each round
/// starting one variant further along.
async fn rounds(
    control: &mut MultiplexedConnection,
    variants: &[Arc<Variant>],
    tasks: usize,
    settings: &Settings,
) -> Vec<Vec<Run>> {
    let mut results: Vec<Vec<Run>> = variants.iter().map(|_| Vec::new()).collect();
    for round in 0..settings.rounds {
        for j in 0..variants.len() {
            let v = (j + round) % variants.len();
            results[v].push(measure(control, &variants[v], tasks, settings.secs).await);
        }
    }
    results
}

async fn measure(
    control: &mut MultiplexedConnection,
    variant: &Arc<Variant>,
    tasks: usize,
    secs: f64,
) -> Run {
    let _: () = redis::cmd("CONFIG")
        .arg("RESETSTAT")
        .query_async(control)
        .await
        .unwrap();
    let server_before = server_cpu(&info(control, "cpu").await);
    let client_before = client_cpu();
    let (latencies, rate, wrong) = drive(variant, tasks, secs).await;
    let client_after = client_cpu();
    let after = info(control, "cpu commandstats").await;
    assert_eq!(
        wrong,
        0,
        "{}: {wrong} calls were not {}",
        variant.name,
        if variant.allowed { "allowed" } else { "denied" }
    );
    let decisions = latencies.len() as u64;
    let per_decision = |seconds: f64| seconds * 1e6 / decisions as f64;
    let commands = after
        .iter()
        .filter_map(|(k, v)| Some((k.strip_prefix("cmdstat_")?.to_owned(), v)))
        .map(|(name, v)| {
            let field = |f: &str| {
                v.split(',')
                    .find_map(|kv| kv.strip_prefix(f)?.strip_prefix('='))
                    .and_then(|n| n.parse().ok())
                    .unwrap_or(0)
            };
            (name, (field("calls"), field("usec")))
        })
        .collect();
    Run {
        decisions,
        rate,
        p50_us: percentile(&latencies, 50),
        p99_us: percentile(&latencies, 99),
        commands,
        server_cpu_us: per_decision(server_cpu(&after) - server_before),
        client_cpu_us: client_before
            .zip(client_after)
            .map(|(b, a)| per_decision(a - b)),
    }
}

/// Runs `tasks` tasks calling the variant until `secs` have passed. Returns
/// the sorted latencies (ns), decisions/s, and how many calls answered
/// other than expected.
async fn drive(variant: &Arc<Variant>, tasks: usize, secs: f64) -> (Vec<u64>, f64, u64) {
    let start = Instant::now();
    let deadline = start + Duration::from_secs_f64(secs);
    let handles: Vec<_> = (0..tasks)
        .map(|t| {
            let variant = Arc::clone(variant);
            tokio::spawn(async move {
                let n = variant.op.keys();
                let mut i = t * n / tasks;
                let mut latencies = Vec::with_capacity(4096);
                let mut wrong = 0_u64;
                loop {
                    let t0 = Instant::now();
                    let allowed = variant.op.call(i % n).await;
                    let t1 = Instant::now();
                    latencies.push(u64::try_from((t1 - t0).as_nanos()).unwrap_or(u64::MAX));
                    wrong += u64::from(allowed != variant.allowed);
                    i += 1;
                    if t1 >= deadline {
                        return (latencies, wrong);
                    }
                }
            })
        })
        .collect();
    let mut all = Vec::new();
    let mut wrong = 0;
    for h in handles {
        let (latencies, w) = h.await.unwrap();
        all.extend(latencies);
        wrong += w;
    }
    let rate = all.len() as f64 / start.elapsed().as_secs_f64();
    all.sort_unstable();
    (all, rate, wrong)
}

fn percentile(sorted_ns: &[u64], p: usize) -> f64 {
    let i = (sorted_ns.len() * p / 100).min(sorted_ns.len() - 1);
    sorted_ns[i] as f64 / 1e3
}

/// `INFO <sections>` as `field → value`.
async fn info(control: &mut MultiplexedConnection, sections: &str) -> BTreeMap<String, String> {
    let mut cmd = redis::cmd("INFO");
    for s in sections.split(' ') {
        cmd.arg(s);
    }
    let text: String = match cmd.query_async(control).await.unwrap() {
        Value::VerbatimString { text, .. } => text,
        other => redis::from_redis_value(other).unwrap(),
    };
    text.lines()
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.to_owned(), v.trim().to_owned()))
        .collect()
}

/// Seconds of CPU Redis's main thread has used.
fn server_cpu(info: &BTreeMap<String, String>) -> f64 {
    ["used_cpu_user_main_thread", "used_cpu_sys_main_thread"]
        .iter()
        .map(|f| {
            info.get(*f)
                .and_then(|v| v.parse::<f64>().ok())
                .unwrap_or(0.0)
        })
        .sum()
}

/// Seconds of CPU this process has used, from `/proc/self/stat` (utime and
/// stime, in the kernel's fixed 100 Hz user ticks).
fn client_cpu() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the parenthesised name start at field 3 (the state).
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks = |field: usize| fields.get(field - 3)?.parse::<f64>().ok();
    Some((ticks(14)? + ticks(15)?) / 100.0)
}

// ---------------------------------------------------------------------------
// Output

fn median_of(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    }
}

/// Two cells: the median, and the min–max spread (blank for one round).
fn stat(mut values: Vec<f64>, fmt: fn(f64) -> String) -> [String; 2] {
    let median = median_of(&mut values);
    let spread = if values.len() > 1 {
        format!("{}–{}", fmt(values[0]), fmt(values[values.len() - 1]))
    } else {
        String::new()
    };
    [fmt(median), spread]
}

fn rate(x: f64) -> String {
    if x >= 1e6 {
        format!("{:.2}M", x / 1e6)
    } else if x >= 1e4 {
        format!("{:.1}k", x / 1e3)
    } else {
        format!("{x:.0}")
    }
}

fn micros(x: f64) -> String {
    if x >= 100.0 {
        format!("{x:.0}")
    } else if x >= 10.0 {
        format!("{x:.1}")
    } else {
        format!("{x:.2}")
    }
}

fn ratio(x: f64) -> String {
    format!("{x:.2}")
}

/// A ratio that may be tiny but not zero (a cached key's few calls).
fn share(x: f64) -> String {
    if x == 0.0 || x >= 0.01 {
        ratio(x)
    } else {
        format!("{x:.1e}")
    }
}

/// Prints `rows` under `header`, the first and last column left-aligned
/// when `text_last`, numbers right-aligned; an empty row prints as a blank
/// line.
fn print_table(title: &str, header: &[&str], rows: &[Vec<String>], text_last: bool) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: &mut dyn Iterator<Item = &str>| {
        let mut out = String::new();
        for (i, (cell, w)) in cells.zip(&widths).enumerate() {
            let pad = w - cell.chars().count();
            if i == 0 || (text_last && i == widths.len() - 1) {
                if i > 0 {
                    out.push_str("  ");
                }
                out.push_str(cell);
                out.push_str(&" ".repeat(pad));
            } else {
                out.push_str("  ");
                out.push_str(&" ".repeat(pad));
                out.push_str(cell);
            }
        }
        println!("{}", out.trim_end());
    };
    println!("\n{title}");
    line(&mut header.iter().copied());
    for row in rows {
        if row.is_empty() {
            println!();
        } else {
            line(&mut row.iter().map(String::as_str));
        }
    }
}

fn pick(runs: &[Run], f: impl Fn(&Run) -> f64) -> Vec<f64> {
    runs.iter().map(f).collect()
}

fn print_main(variants: &[Arc<Variant>], results: &[Vec<Vec<Run>>]) {
    let rows = |cells: &dyn Fn(&[Run]) -> Vec<String>| {
        let mut rows = Vec::new();
        for (tasks, by_variant) in TASKS.iter().zip(results) {
            if !rows.is_empty() {
                rows.push(Vec::new());
            }
            for (v, runs) in variants.iter().zip(by_variant) {
                let mut row = vec![v.name.clone(), tasks.to_string()];
                row.extend(cells(runs));
                rows.push(row);
            }
        }
        rows
    };
    print_table(
        "Throughput and latency",
        &[
            "variant",
            "tasks",
            "decisions/s",
            "",
            "p50 µs",
            "",
            "p99 µs",
            "",
        ],
        &rows(&|runs| {
            let mut row = Vec::new();
            row.extend(stat(pick(runs, |r| r.rate), rate));
            row.extend(stat(pick(runs, |r| r.p50_us), micros));
            row.extend(stat(pick(runs, |r| r.p99_us), micros));
            row
        }),
        false,
    );
    print_table(
        "Redis CPU, µs (`usec_per_call` of `cmd`; `calls`: its calls per decision; \
         `redis/dec`: its µs per decision; `nested`: the part in the script's \
         redis.call()s, per decision; `server`: Redis main thread CPU per decision, \
         I/O included; `client`: this process, per decision)",
        &[
            "variant",
            "tasks",
            "cmd",
            "usec_per_call",
            "",
            "calls",
            "redis/dec",
            "nested",
            "server cpu",
            "",
            "client cpu",
        ],
        &rows(&|runs| {
            let mut row = vec![runs[0].top_level()];
            row.extend(stat(pick(runs, Run::redis_us), micros));
            row.push(share(median_of(&mut pick(runs, Run::calls_per_decision))));
            row.push(micros(median_of(&mut pick(
                runs,
                Run::redis_us_per_decision,
            ))));
            row.push(micros(median_of(&mut pick(runs, Run::nested_us))));
            row.extend(stat(pick(runs, |r| r.server_cpu_us), micros));
            row.push(if runs.iter().all(|r| r.client_cpu_us.is_some()) {
                micros(median_of(&mut pick(runs, |r| {
                    r.client_cpu_us.unwrap_or(0.0)
                })))
            } else {
                "–".to_owned()
            });
            row
        }),
        false,
    );
}

fn print_ratios(variants: &[Arc<Variant>], results: &[Vec<Vec<Run>>]) {
    type Metric = fn(&Run) -> f64;
    let rate: Metric = |r| r.rate;
    let server: Metric = |r| r.server_cpu_us;
    let per_decision: Metric = Run::redis_us_per_decision;
    let lines: [(&str, &str, &str, Metric); 13] = [
        (
            "decide ÷ lean, decisions/s",
            "decide 1 policy",
            "lean GCRA",
            rate,
        ),
        (
            "decide ÷ lean, Redis µs/decision",
            "decide 1 policy",
            "lean GCRA",
            per_decision,
        ),
        (
            "decide ÷ lean, server cpu",
            "decide 1 policy",
            "lean GCRA",
            server,
        ),
        (
            "3 policies ÷ 1 policy, Redis µs/decision",
            "decide 3 policies",
            "decide 1 policy",
            per_decision,
        ),
        (
            "hot key: decide ÷ lean, decisions/s",
            "decide hot key",
            "lean hot key",
            rate,
        ),
        (
            "hot key: decide ÷ one call each, decisions/s",
            "decide hot key",
            "decide hot key, one call each",
            rate,
        ),
        (
            "hot key: decide ÷ lean, Redis µs/decision",
            "decide hot key",
            "lean hot key",
            per_decision,
        ),
        (
            "hot key: decide ÷ lean, server cpu",
            "decide hot key",
            "lean hot key",
            server,
        ),
        (
            "blocked: decide ÷ lean, decisions/s",
            "decide blocked",
            "lean blocked",
            rate,
        ),
        (
            "blocked: decide ÷ uncached, decisions/s",
            "decide blocked",
            "decide blocked, uncached",
            rate,
        ),
        (
            "blocked: decide ÷ lean, Redis µs/decision",
            "decide blocked",
            "lean blocked",
            per_decision,
        ),
        (
            "decide ÷ PING, decisions/s",
            "decide 1 policy",
            "PING",
            rate,
        ),
        (
            "hot key: decide ÷ PING, decisions/s",
            "decide hot key",
            "PING",
            rate,
        ),
    ];
    let index = |name: &str| variants.iter().position(|v| v.name == name);
    let mut rows = Vec::new();
    for (name, a, b, metric) in lines {
        let (Some(a), Some(b)) = (index(a), index(b)) else {
            continue;
        };
        let mut row = vec![name.to_owned()];
        for by_variant in results {
            let per_round = by_variant[a]
                .iter()
                .zip(&by_variant[b])
                .map(|(x, y)| metric(x) / metric(y))
                .collect();
            row.extend(stat(per_round, share));
        }
        rows.push(row);
    }
    let tasks = TASKS.map(|t| format!("{t} task{}", if t == 1 { "" } else { "s" }));
    let mut header = vec!["ratio (within each round)"];
    for t in &tasks {
        header.extend([t.as_str(), ""]);
    }
    print_table("Ratios", &header, &rows, false);
}

/// Calls and µs per decision of each command the scripts call, summed over
/// the rounds.
fn print_nested(variants: &[Arc<Variant>], by_variant: &[Vec<Run>], tasks: usize) {
    let mut rows = Vec::new();
    for (v, runs) in variants.iter().zip(by_variant) {
        let decisions: u64 = runs.iter().map(|r| r.decisions).sum();
        let mut totals: BTreeMap<&str, (u64, u64)> = BTreeMap::new();
        for r in runs {
            for (name, &(calls, usec)) in &r.commands {
                let t = totals.entry(name.as_str()).or_default();
                *t = (t.0 + calls, t.1 + usec);
            }
        }
        let per = |n: u64| n as f64 / decisions.max(1) as f64;
        let top: u64 = TOP_LEVEL
            .iter()
            .filter_map(|c| totals.get(c))
            .map(|t| t.1)
            .sum();
        let nested: u64 = totals
            .iter()
            .filter(|(n, _)| is_nested(n))
            .map(|(_, t)| t.1)
            .sum();
        let detail = totals
            .iter()
            .filter(|(n, _)| is_nested(n))
            .map(|(n, &(calls, usec))| {
                format!(
                    "{n} {:.2}× {}",
                    per(calls),
                    micros(usec as f64 / calls.max(1) as f64)
                )
            })
            .collect::<Vec<_>>()
            .join(", ");
        rows.push(vec![
            v.name.clone(),
            micros(per(top)),
            micros(per(nested)),
            micros(per(top.saturating_sub(nested))),
            detail,
        ]);
    }
    print_table(
        &format!(
            "Where Redis's time goes at {tasks} tasks (µs per decision; \
             `script` = usec_per_call minus nested; detail: calls per decision × µs per call)"
        ),
        &["variant", "total", "nested", "script", "nested commands"],
        &rows,
        true,
    );
}

fn print_algorithms(variants: &[Arc<Variant>], by_variant: &[Vec<Run>]) {
    let gcra: Vec<f64> = pick(&by_variant[0], Run::redis_us_per_decision);
    let mut rows = Vec::new();
    for (v, runs) in variants.iter().zip(by_variant) {
        let mut row = vec![v.name.clone()];
        row.extend(stat(pick(runs, |r| r.rate), rate));
        row.extend(stat(pick(runs, |r| r.p99_us), micros));
        row.extend(stat(pick(runs, Run::redis_us_per_decision), micros));
        let per_round = pick(runs, Run::redis_us_per_decision)
            .iter()
            .zip(&gcra)
            .map(|(x, g)| x / g)
            .collect();
        row.extend(stat(per_round, ratio));
        row.push(micros(median_of(&mut pick(runs, Run::nested_us))));
        row.push(micros(median_of(&mut pick(runs, |r| r.server_cpu_us))));
        rows.push(row);
    }
    print_table(
        &format!(
            "Per algorithm, one policy, {KEYS} keys, {ALGORITHM_TASKS} tasks (Redis µs per decision: usec_per_call × calls per decision)"
        ),
        &[
            "algorithm",
            "decisions/s",
            "",
            "p99 µs",
            "",
            "Redis µs/decision",
            "",
            "÷ gcra",
            "",
            "nested",
            "server cpu",
        ],
        &rows,
        false,
    );
}

// ---------------------------------------------------------------------------
// Sliding log: what a decision costs on a long log.

/// Fills one key's sliding log to each of [`LOG_SIZES`] entries, one per
/// µs, and times decisions on it: admitted with nothing expiring (the log
/// grows by one), and admitted a day later while the oldest entry expires
/// at every request. In Redis (`FCALL` µs from `INFO commandstats`) and in
/// memory (ns per decision, one thread).
async fn sliding_log(url: &str, control: &mut MultiplexedConnection, settings: &Settings) {
    let sizes = if settings.quick {
        QUICK_LOG_SIZES
    } else {
        LOG_SIZES
    };
    let quota = Quota::per_day(2_000_000);
    let set = policies(&[("log", quota, Algorithm::SlidingWindowLog)]);
    let day = 86_400_000_000_u64;
    let start = 1_763_800_000_000_000_u64;
    // Calls go one after another in order: no coalescing, no cache.
    let redis = RedisStore::builder()
        .timeout(Duration::from_secs(30))
        .coalesce(false)
        .denied_cache(0, Duration::ZERO)
        .connect(url)
        .await
        .unwrap();
    let mut rows = Vec::new();
    for &n in &sizes {
        let key = Key::from(format!("log-{n}"));
        let filled = Instant::now();
        // The first alone (it may load the function, and a reload must not
        // reorder what follows), then pipelined in order, a window at a
        // time: smaller than redis-rs's send queue (50), which does not keep
        // the order of senders that wait for room.
        let first = redis.decide(Check::new(&key, &set, 1).with_at_micros(Some(start)));
        assert!(first.await.unwrap().is_allowed());
        for chunk in (1..n).collect::<Vec<_>>().chunks(32) {
            let calls = chunk
                .iter()
                .map(|&i| redis.decide(Check::new(&key, &set, 1).with_at_micros(Some(start + i))));
            for d in in_order(calls.collect()).await {
                let d = d.unwrap();
                assert!(d.is_allowed(), "{d:?}");
            }
        }
        let fill_secs = filled.elapsed().as_secs_f64();
        let (grow_us, grow_wall) = timed_log(&redis, control, &key, &set, start + n + 1).await;
        let (expire_us, expire_wall) = timed_log(&redis, control, &key, &set, start + day).await;
        let length: u64 = redis::cmd("LLEN")
            .arg(redis.redis_key(&key, &set, 0))
            .query_async(&mut *control)
            .await
            .unwrap();
        let (grow_ns, expire_ns) = memory_log(&set, n, start, day);
        rows.push(vec![
            n.to_string(),
            format!("{fill_secs:.1}"),
            micros(grow_us),
            micros(grow_wall),
            micros(expire_us),
            micros(expire_wall),
            length.to_string(),
            format!("{grow_ns:.0}"),
            format!("{expire_ns:.0}"),
        ]);
    }
    print_table(
        &format!(
            "Sliding log, one key, limit 2,000,000 a day: a decision on a log of n entries \
             ({LOG_DECISIONS} decisions each; `grow`: admitted, nothing expires; `expire`: a day \
             later, admitted while the oldest entry expires at each request)"
        ),
        &[
            "entries",
            "fill s",
            "Redis grow µs",
            "wall µs",
            "Redis expire µs",
            "wall µs",
            "list length after",
            "memory grow ns",
            "memory expire ns",
        ],
        &rows,
        false,
    );
}

/// [`LOG_DECISIONS`] admitted decisions from `from` on, 1 µs apart: Redis's
/// µs per `FCALL`, and the wall time per decision.
async fn timed_log(
    redis: &RedisStore,
    control: &mut MultiplexedConnection,
    key: &Key,
    set: &PolicySet,
    from: u64,
) -> (f64, f64) {
    let _: () = redis::cmd("CONFIG")
        .arg("RESETSTAT")
        .query_async(control)
        .await
        .unwrap();
    let t = Instant::now();
    for j in 0..LOG_DECISIONS {
        let d = redis
            .decide(Check::new(key, set, 1).with_at_micros(Some(from + j)))
            .await
            .unwrap();
        assert!(d.is_allowed());
    }
    let wall = t.elapsed().as_secs_f64() * 1e6 / LOG_DECISIONS as f64;
    let stats = info(control, "commandstats").await;
    let usec = stats
        .get("cmdstat_fcall")
        .and_then(|v| {
            v.split(',')
                .find_map(|kv| kv.strip_prefix("usec_per_call="))
        })
        .and_then(|u| u.parse::<f64>().ok())
        .unwrap_or(f64::NAN);
    (usec, wall)
}

/// The same in the memory store: ns per decision, the median of
/// [`MEMORY_LOG_BATCHES`] batches of [`LOG_DECISIONS`] (a batch takes well
/// under a millisecond: one preemption on a shared machine would dominate
/// a single one).
fn memory_log(set: &PolicySet, n: u64, start: u64, day: u64) -> (f64, f64) {
    let store = MemoryStore::new();
    let key = Key::from("log");
    for i in 0..n {
        let d = store.decide_now(Check::new(&key, set, 1).with_at_micros(Some(start + i)));
        assert!(d.is_allowed());
    }
    let timed = |from: u64| {
        let mut batches: Vec<f64> = (0..MEMORY_LOG_BATCHES)
            .map(|b| {
                let from = from + b * LOG_DECISIONS;
                let t = Instant::now();
                for j in 0..LOG_DECISIONS {
                    let d =
                        store.decide_now(Check::new(&key, set, 1).with_at_micros(Some(from + j)));
                    assert!(d.is_allowed());
                }
                t.elapsed().as_secs_f64() * 1e9 / LOG_DECISIONS as f64
            })
            .collect();
        median_of(&mut batches)
    };
    (timed(start + n + 1), timed(start + day))
}

/// Polls `futures` in order, so their commands leave in that order, until
/// all are done; their outputs in order.
async fn in_order<F: std::future::Future + Unpin>(mut futures: Vec<F>) -> Vec<F::Output> {
    let mut out: Vec<Option<F::Output>> = futures.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (f, o) in futures.iter_mut().zip(out.iter_mut()) {
            if o.is_none() {
                match std::pin::Pin::new(&mut *f).poll(cx) {
                    std::task::Poll::Ready(v) => *o = Some(v),
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(())
        }
    })
    .await;
    out.into_iter().map(Option::unwrap).collect()
}
