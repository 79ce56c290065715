//! The decision scripts: one per shape of request, generated from the
//! files in `lua/` and cached by the store.
//!
//! A shape is what a script must know that the request's numbers do not
//! tell: the algorithms of the policy set, in order; what is asked; whether
//! the request may wait (the leaky bucket shapes then); and whether the time
//! is given. A script holds the prelude, the file of each algorithm it uses
//! and a body written for its shape (`lua/decide.lua` is one, kept as the
//! reference), so a decision runs only the code it needs. Quotas are
//! arguments, not code: every policy set of one shape shares a script, and
//! the number of scripts stays small whatever the number of quotas.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::{Arc, PoisonError, RwLock};

use crate::algorithm::sliding_counter_steps;
use crate::quota::{Algorithm, Params, PolicySet};

/// What a script does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Ask {
    /// Decide one or more requests, charging the admitted ones.
    Acquire,
    /// Decide one or more requests, writing nothing.
    Peek,
    /// Give back a lease's units on the concurrency policies.
    Release,
    /// Extend a lease on the concurrency policies.
    Renew,
    /// Delete every policy's state.
    Reset,
}

/// Everything a script is specialised for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Shape {
    pub(crate) ask: Ask,
    /// Wait mode: requests carry their longest wait.
    pub(crate) wait: bool,
    /// The time is the first argument rather than the server's `TIME`.
    pub(crate) given_time: bool,
    /// Several keys, each with its requests, in one call (acquire and peek
    /// only): the body for one key runs for each in turn, at one time.
    pub(crate) many_keys: bool,
}

/// A generated script, as a script and as a function library.
#[derive(Debug)]
pub(crate) struct Script {
    /// The script's SHA-1, as `EVALSHA` wants it.
    pub(crate) sha: String,
    /// The script, sent with `EVAL` only when Redis answers `NOSCRIPT`.
    pub(crate) text: String,
    /// The name of the function (and of its library): `tower_ratelimit_`
    /// and the script's SHA-1, so a changed script is another function.
    pub(crate) function: String,
    /// The library: the script's helpers, and its body as the one function.
    /// Loaded with `FUNCTION LOAD` only when Redis does not have it.
    pub(crate) library: String,
    /// Arguments per request, after the fixed ones.
    pub(crate) stride: usize,
}

/// How a script body calls one family of algorithms: the functions
/// `<name>_load`, `_earliest`, `_commit` and `_save` of `source`, with the
/// state and parameters as plain values (see `lua/prelude.lua`).
struct Family {
    name: &'static str,
    source: &'static str,
    state: &'static [&'static str],
    params: &'static [&'static str],
    /// The state is one value, read by the body (one `MGET` for all such
    /// policies) and handed to `_load`.
    value: bool,
}

const PRELUDE: &str = include_str!("../../../lua/prelude.lua");
const LEAKY: &str = include_str!("../../../lua/leaky_bucket.lua");

const LEVEL: Family = Family {
    name: "level",
    source: include_str!("../../../lua/gcra.lua"),
    state: &["l", "t"],
    params: &["burst", "unit", "drain"],
    value: true,
};
const BUCKET: Family = Family {
    name: "bucket",
    source: include_str!("../../../lua/token_bucket.lua"),
    state: &["k", "a"],
    params: &["limit", "period", "burst"],
    value: true,
};
const FIXED: Family = Family {
    name: "fixed",
    source: include_str!("../../../lua/fixed_window.lua"),
    state: &["w", "c"],
    params: &["limit", "period"],
    value: true,
};
const LOG: Family = Family {
    name: "log",
    source: include_str!("../../../lua/sliding_window_log.lua"),
    state: &["s"],
    params: &["limit", "period"],
    value: false,
};
const COUNTER: Family = Family {
    name: "counter",
    source: include_str!("../../../lua/sliding_window_counter.lua"),
    state: &["w", "c", "prev", "tail"],
    params: &["limit", "period", "step", "n"],
    value: true,
};
const CONC: Family = Family {
    name: "conc",
    source: include_str!("../../../lua/concurrency.lua"),
    state: &["n", "adds"],
    params: &["limit", "lease"],
    value: false,
};
/// In the order their sources go into a script.
const FAMILIES: [&Family; 6] = [&LEVEL, &BUCKET, &FIXED, &LOG, &COUNTER, &CONC];

fn family(a: Algorithm) -> &'static Family {
    match a {
        Algorithm::Gcra | Algorithm::GreedyTokenBucket | Algorithm::LeakyBucket => &LEVEL,
        Algorithm::TokenBucket => &BUCKET,
        Algorithm::FixedWindow => &FIXED,
        Algorithm::SlidingWindowLog => &LOG,
        Algorithm::SlidingWindowCounter => &COUNTER,
        Algorithm::Concurrency => &CONC,
    }
}

/// The numbers `lua/` receives for policy `p`, in the order of its
/// family's `params`.
pub(crate) fn param_values(p: &Params) -> ([u64; 4], usize) {
    let f = family(p.algorithm);
    let values = match f.name {
        "level" => [p.burst, p.unit, p.drain, 0],
        "bucket" => [p.limit, p.period, p.burst, 0],
        "counter" => {
            let (step, n) = sliding_counter_steps(p.period);
            [p.limit, p.period, step, n]
        }
        // fixed, log, conc: limit and period (a concurrency policy's lease).
        _ => [p.limit, p.period, 0, 0],
    };
    (values, f.params.len())
}

/// The script for `set`'s algorithms and `shape`.
pub(crate) fn generate(set: &PolicySet, shape: Shape) -> Script {
    let algorithms: Vec<Algorithm> = set.params().iter().map(|p| p.algorithm).collect();
    generate_for(&algorithms, shape)
}

fn generate_for(algorithms: &[Algorithm], shape: Shape) -> Script {
    let mut helpers = String::with_capacity(8 * 1024);
    let text = &mut helpers;
    if shape.ask != Ask::Reset {
        let mut code = String::new();
        for f in FAMILIES {
            if algorithms.iter().any(|&a| std::ptr::eq(family(a), f)) {
                code.push('\n');
                code.push_str(f.source);
            }
        }
        if shape.wait
            && shape.ask != Ask::Release
            && shape.ask != Ask::Renew
            && algorithms.contains(&Algorithm::LeakyBucket)
        {
            code.push('\n');
            code.push_str(LEAKY);
        }
        code.push('\n');
        prelude(text, &code);
        text.push_str(&code);
    }
    let mut main = String::with_capacity(2 * 1024);
    let stride = body(&mut main, algorithms, shape);
    let text = format!("{helpers}{main}");
    let sha = sha1_smol::Sha1::from(&text).digest().to_string();
    let function = format!("tower_ratelimit_{sha}");
    let library = format!(
        "#!lua name={function}\n{helpers}redis.register_function('{function}', function(KEYS, ARGV)\n{main}end)\n"
    );
    Script {
        sha,
        text,
        function,
        library,
        stride,
    }
}

/// The prelude, without the helpers `code` never calls (directly or
/// through another helper): each is a closure made on every call.
fn prelude(out: &mut String, code: &str) {
    // Blocks: a helper with the comment above it, or other lines.
    let mut blocks: Vec<(Option<&str>, String)> = Vec::new();
    let mut comment = String::new();
    let mut open: Option<(&str, String)> = None;
    for line in PRELUDE.split_inclusive('\n') {
        if let Some((_, text)) = &mut open {
            text.push_str(line);
            if line.starts_with("end") {
                blocks.extend(open.take().map(|(n, t)| (Some(n), t)));
            }
        } else if let Some(rest) = line.strip_prefix("local function ") {
            let name = rest.split('(').next().unwrap_or_default();
            open = Some((name, std::mem::take(&mut comment) + line));
        } else if line.starts_with("--") {
            comment.push_str(line);
        } else {
            blocks.push((None, std::mem::take(&mut comment) + line));
        }
    }
    blocks.push((None, comment));
    let calls = |text: &str, name: &str| text.contains(&format!("{name}("));
    let mut needed: Vec<&str> = Vec::new();
    loop {
        let before = needed.len();
        for (name, text) in &blocks {
            if let Some(name) = *name {
                let used = calls(code, name)
                    || blocks.iter().any(|(other, t)| {
                        other.is_some_and(|o| needed.contains(&o)) && calls(t, name)
                    });
                if used && !needed.contains(&name) {
                    needed.push(name);
                }
            }
            let _ = text;
        }
        if needed.len() == before {
            break;
        }
    }
    for (name, text) in &blocks {
        if name.is_none_or(|n| needed.contains(&n)) {
            out.push_str(text);
        }
    }
}

/// `name` for policy `i` (1-based): `l1`, `burst2`.
struct Var<'a>(&'a str, usize);

impl std::fmt::Display for Var<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}{}", self.0, self.1)
    }
}

/// `a1, b1` for a list of names.
fn vars(names: &[&str], i: usize) -> String {
    let mut out = String::new();
    for (k, name) in names.iter().enumerate() {
        if k > 0 {
            out.push_str(", ");
        }
        let _ = write!(out, "{}", Var(name, i));
    }
    out
}

/// Requests per number of `flags` in a reply: their bits stay exact in a
/// double.
pub(crate) const FLAG_BITS: usize = 48;

/// Writes the body; returns the arguments per request.
///
/// For several keys (`shape.many_keys`, acquire and peek only), the body
/// for one key runs for each key in turn, at the one time read first.
/// `KEYS`: every key's policies' keys, key after key. `ARGV`: the time (or
/// the floor), the parameters, the number of keys, then per key the number
/// of its requests and their arguments, as for one key. The reply is one
/// reply per key, each what the body for one key returns.
fn body(out: &mut String, algorithms: &[Algorithm], shape: Shape) -> usize {
    let n = algorithms.len();
    let many = shape.many_keys && matches!(shape.ask, Ask::Acquire | Ask::Peek);
    // Policy `i`'s key (1-based), in its key's run of `KEYS`.
    let key = |i: usize| {
        if many {
            format!("KEYS[base + {i}]")
        } else {
            format!("KEYS[{i}]")
        }
    };
    let families: Vec<&Family> = algorithms.iter().map(|&a| family(a)).collect();
    // ARGV[1]: the time given, or the caller's floor under the server's.
    let mut arg = 2;
    let now = if shape.given_time {
        "local now = tonumber(ARGV[1])\n"
    } else {
        "-- Never before the latest time the caller saw from Redis (and since):\n\
         -- a clock that stepped back in a failover holds no key back.\n\
         local time = redis.call('TIME')\n\
         local now = math.max(time[1] * 1000000 + time[2], tonumber(ARGV[1]))\n"
    };
    let header = match shape.ask {
        Ask::Acquire | Ask::Peek => {
            "-- Decides the requests in order, each against every policy, all or\n\
             -- nothing (lua/decide.lua explains the arguments and the reply).\n"
        }
        Ask::Release => "-- Gives back a lease's units, then reads every policy's state.\n",
        Ask::Renew => "-- Extends a lease, then reads every policy's state.\n",
        Ask::Reset => "-- Forgets the key's state for every policy.\n",
    };
    out.push_str(header);
    out.push_str(now);
    if shape.ask != Ask::Reset {
        out.push_str(if shape.given_time {
            "ttl_slack = 60000\n"
        } else {
            "ttl_slack = 0\n"
        });
    }
    if shape.ask == Ask::Reset {
        out.push_str("for i = 1, #KEYS do redis.call('DEL', KEYS[i]) end\nreturn { now }\n");
        return 0;
    }
    // Every policy's parameters, from one packed argument.
    let mut names = Vec::new();
    let mut format = String::from(">");
    for (i, f) in families.iter().enumerate() {
        for p in f.params {
            names.push(Var(p, i + 1).to_string());
            format.push('d');
        }
    }
    let _ = writeln!(
        out,
        "local {} = struct.unpack('{format}', ARGV[{arg}])",
        names.join(", ")
    );
    arg += 1;
    let params = |i: usize| vars(families[i].params, i + 1);
    let state = |i: usize| vars(families[i].state, i + 1);
    let conc = algorithms.contains(&Algorithm::Concurrency);
    // The reply, its views filled in as they are read.
    let stride = 1 + usize::from(shape.wait) + usize::from(conc);
    if many {
        let _ = writeln!(
            out,
            "-- Each key in turn: its policies' keys from KEYS[base + 1], its number\n\
             -- of requests at ARGV[pos] and their arguments after it.\n\
             local replies, pos = {{}}, 4\n\
             for g = 1, tonumber(ARGV[3]) do\n\
             local base, requests = (g - 1) * {n}, tonumber(ARGV[pos])"
        );
    }
    // Acquire and peek replies end in flags: room for the first is made
    // with the table (growing it by one entry would rehash it).
    if matches!(shape.ask, Ask::Acquire | Ask::Peek) {
        let _ = writeln!(
            out,
            "local out, fi = {{ now{}, 0 }}, {}",
            ", false".repeat(n),
            n + 2
        );
    } else {
        let _ = writeln!(out, "local out = {{ now{} }}", ", false".repeat(n));
    }
    let writes = shape.ask == Ask::Acquire;
    let load = |out: &mut String, writes: bool| {
        // The policies whose state is one value: read at once.
        let values: Vec<usize> = (0..n).filter(|&i| families[i].value).collect();
        if values.len() > 1 {
            let keys: Vec<String> = values.iter().map(|&i| key(i + 1)).collect();
            let _ = writeln!(out, "local raw = redis.call('MGET', {})", keys.join(", "));
        }
        for (i, f) in families.iter().enumerate() {
            let source = match values.iter().position(|&v| v == i) {
                Some(k) if values.len() > 1 => format!("raw[{}]", k + 1),
                Some(_) => format!("redis.call('GET', {})", key(i + 1)),
                None => key(i + 1),
            };
            let extra = if f.value {
                String::new()
            } else {
                format!(", {writes}")
            };
            let _ = writeln!(
                out,
                "local {s}\nout[{v}], {s} = {name}_load({source}, {p}, now{extra})",
                s = state(i),
                v = i + 2,
                name = f.name,
                p = params(i),
            );
        }
    };
    match shape.ask {
        Ask::Release | Ask::Renew => {
            let _ = writeln!(
                out,
                "local holder, cost = ARGV[{arg}], tonumber(ARGV[{}])",
                arg + 1
            );
            out.push_str("local renewed = true\n");
            for (i, &a) in algorithms.iter().enumerate() {
                if a != Algorithm::Concurrency {
                    continue;
                }
                let (key, p) = (i + 1, params(i));
                if shape.ask == Ask::Release {
                    let _ = writeln!(out, "conc_release(KEYS[{key}], {p}, holder, cost)");
                } else {
                    let _ = writeln!(
                        out,
                        "if not conc_renew(KEYS[{key}], {p}, now, holder, cost) then renewed = false end"
                    );
                }
            }
            load(out, false);
            out.push_str("out[#out + 1] = renewed and 1 or 0\nreturn out\n");
            return 2;
        }
        Ask::Acquire | Ask::Peek => {}
        Ask::Reset => unreachable!("written above"),
    }
    load(out, writes);
    let step = if stride == 1 {
        String::new()
    } else {
        format!(", {stride}")
    };
    // The requests' arguments: this key's run, or all of `ARGV` after the
    // fixed ones.
    let range = if many {
        format!("pos + 1, pos + requests * {stride}, {stride}")
    } else {
        format!("{arg}, #ARGV{step}")
    };
    let _ = writeln!(
        out,
        "local flags, bits, changed = 0, 0, false\nfor j = {range} do"
    );
    out.push_str("  local cost = tonumber(ARGV[j])\n");
    if shape.wait {
        out.push_str("  local max_wait = tonumber(ARGV[j + 1])\n");
    }
    let holder = if conc {
        let _ = writeln!(out, "  local holder = ARGV[j + {}]", stride - 1);
        ", holder"
    } else {
        ""
    };
    // A slot that is not a time: a full queue (the leaky bucket shaping) or
    // a full concurrency policy.
    let blocking = conc || (shape.wait && algorithms.contains(&Algorithm::LeakyBucket));
    out.push_str("  local at, ok = now, true\n  if cost > 0 then\n");
    if blocking {
        out.push_str("    local blocked, kind, slot = false\n");
    } else {
        out.push_str("    local kind, slot\n");
    }
    for (i, &a) in algorithms.iter().enumerate() {
        let earliest = if shape.wait && a == Algorithm::LeakyBucket {
            "leaky_earliest".to_owned()
        } else {
            format!("{}_earliest", families[i].name)
        };
        let _ = writeln!(
            out,
            "    kind, slot = {earliest}({}, {}, now, cost)",
            state(i),
            params(i)
        );
        if blocking {
            out.push_str(
                "    if kind == NEVER then ok = false else\n      \
                 if kind ~= AT then blocked = true end\n      \
                 if kind ~= BUSY and slot > at then at = slot end\n    end\n",
            );
        } else {
            out.push_str(
                "    if kind == NEVER then ok = false elseif slot > at then at = slot end\n",
            );
        }
    }
    match (blocking, shape.wait) {
        (true, true) => out.push_str("    if blocked or at - now > max_wait then ok = false end\n"),
        (true, false) => out.push_str("    if blocked or at > now then ok = false end\n"),
        (false, true) => out.push_str("    if at - now > max_wait then ok = false end\n"),
        (false, false) => out.push_str("    if at > now then ok = false end\n"),
    }
    out.push_str("  end\n  flags = flags * 2\n  if ok then\n    flags = flags + 1\n");
    if writes {
        out.push_str("    if cost > 0 then\n");
        for (i, f) in families.iter().enumerate() {
            let _ = writeln!(
                out,
                "      {s} = {name}_commit({s}, {p}, at, cost{holder})",
                s = state(i),
                name = f.name,
                p = params(i),
            );
        }
        out.push_str("      changed = true\n    end\n");
    }
    let _ = writeln!(
        out,
        "  end\n  bits = bits + 1\n  if bits == {FLAG_BITS} then out[fi] = flags; fi = fi + 1; flags, bits = 0, 0 end\nend"
    );
    if writes {
        out.push_str("if changed then\n");
        for (i, f) in families.iter().enumerate() {
            let _ = writeln!(
                out,
                "  {name}_save({key}, {s}, {p}, now)",
                name = f.name,
                key = key(i + 1),
                s = state(i),
                p = params(i),
            );
        }
        out.push_str("end\n");
    }
    out.push_str("if bits > 0 then out[fi] = flags end\n");
    if many {
        let _ = write!(
            out,
            "replies[g] = out\npos = pos + requests * {stride} + 1\nend\nreturn replies\n"
        );
    } else {
        out.push_str("return out\n");
    }
    stride
}

/// The scripts a store has made, by shape.
#[derive(Default)]
pub(crate) struct Scripts {
    by_shape: RwLock<HashMap<Box<[u8]>, Arc<Script>>>,
}

impl Scripts {
    /// The script for `set` and `shape`, made on first use.
    pub(crate) fn get(&self, set: &PolicySet, shape: Shape) -> Arc<Script> {
        // The shape as bytes: what is asked, then one byte per algorithm.
        let mut buf = [0_u8; 24];
        let mut heap = Vec::new();
        let len = set.len() + 1;
        let key: &mut [u8] = if len <= buf.len() {
            &mut buf[..len]
        } else {
            heap.resize(len, 0);
            &mut heap
        };
        key[0] = shape.ask as u8
            | u8::from(shape.wait) << 4
            | u8::from(shape.given_time) << 5
            | u8::from(shape.many_keys) << 6;
        for (k, p) in key[1..].iter_mut().zip(set.params()) {
            *k = p.algorithm as u8;
        }
        let key: &[u8] = key;
        if let Some(s) = self
            .by_shape
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(key)
        {
            return Arc::clone(s);
        }
        let script = Arc::new(generate(set, shape));
        self.by_shape
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(key.into())
            .or_insert(script)
            .clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `lua/decide.lua` is the body generated for its example shape, so
    /// the reference a reader sees is what Redis runs.
    #[test]
    fn decide_lua_is_the_body_generated_for_its_example() {
        let shape = Shape {
            ask: Ask::Acquire,
            wait: false,
            given_time: false,
            many_keys: false,
        };
        let mut body_text = String::new();
        body(
            &mut body_text,
            &[Algorithm::Gcra, Algorithm::FixedWindow],
            shape,
        );
        let reference = include_str!("../../../lua/decide.lua");
        let example = reference
            .split_once("-- The body for a GCRA policy and a fixed window")
            .and_then(|(_, rest)| rest.split_once('\n'))
            .map(|(_, body)| body)
            .expect("lua/decide.lua holds an example body");
        assert_eq!(example, body_text);
    }

    #[test]
    fn every_shape_uses_only_the_files_it_needs() {
        let shape = Shape {
            ask: Ask::Acquire,
            wait: false,
            given_time: false,
            many_keys: false,
        };
        let gcra = generate_for(&[Algorithm::Gcra], shape);
        assert!(gcra.text.contains("local function level_earliest"));
        assert!(!gcra.text.contains("log_load"));
        assert!(!gcra.text.contains("leaky_earliest"));
        let wait = generate_for(
            &[Algorithm::LeakyBucket],
            Shape {
                wait: true,
                ..shape
            },
        );
        assert!(wait.text.contains("kind, slot = leaky_earliest("));
    }
}
