//! Reading a script's reply: the server's time, which requests it
//! admitted, and every policy's state as the script read it, from which
//! the crate decides each request with the same functions the memory store
//! uses, field for field.

use redis::Value;

use super::script::FLAG_BITS;
use crate::algorithm::{
    Concurrency, FixedWindow, Level, Repr, SlidingCounter, SlidingLog, State, TokenBucket,
};
use crate::error::{StoreError, StoreErrorKind};
use crate::quota::{Algorithm, MAX_EXACT, PolicySet};

/// A script's reply.
pub(crate) struct Reply {
    /// The server's time (or the one given), µs.
    pub(crate) now: u64,
    /// Which requests the script admitted (for a renewal: whether the lease
    /// was still held), [`FLAG_BITS`] to a number, the first the highest.
    flags: Vec<u64>,
    /// Every policy's state before the requests, `None` where none is kept.
    pub(crate) states: Vec<Option<State>>,
}

impl Reply {
    /// Whether the script admitted request `j` of `n`.
    pub(crate) fn admitted(&self, j: usize, n: usize) -> bool {
        let chunk = j / FLAG_BITS;
        let size = (n - chunk * FLAG_BITS).min(FLAG_BITS);
        let bit = size - 1 - j % FLAG_BITS;
        self.flags.get(chunk).is_some_and(|f| (f >> bit) & 1 == 1)
    }
}

pub(crate) fn protocol(what: impl Into<String>) -> StoreError {
    StoreError::new(StoreErrorKind::Protocol, what.into(), None)
}

/// Reads `{ now, view.., flags.. }` for `requests` requests (`{ now }`
/// for a reset).
pub(crate) fn parse(set: &PolicySet, value: Value, requests: usize) -> Result<Reply, StoreError> {
    let Value::Array(items) = value else {
        return Err(protocol(format!(
            "the rate limit script replied {value:?}, not an array"
        )));
    };
    let expected = if requests == 0 {
        1
    } else {
        1 + set.len() + requests.div_ceil(FLAG_BITS)
    };
    if items.len() != expected {
        return Err(protocol(format!(
            "the rate limit script replied {} items for {} policies and {requests} requests",
            items.len(),
            set.len()
        )));
    }
    let mut items = items.into_iter();
    let now = uint(&items.next().unwrap_or(Value::Nil))?;
    let mut states = Vec::with_capacity(set.len());
    for (p, view) in set.params().iter().zip(items.by_ref()) {
        states.push(state(p.algorithm, view)?);
    }
    let flags = items.map(|f| uint(&f)).collect::<Result<_, _>>()?;
    Ok(Reply { now, flags, states })
}

fn uint(v: &Value) -> Result<u64, StoreError> {
    match v {
        Value::Int(n) => u64::try_from(*n).map_err(|_| protocol(format!("negative number {n}"))),
        other => Err(protocol(format!("expected an integer, got {other:?}"))),
    }
}

/// `n` big-endian doubles, each an integer below 2^53.
fn doubles<const N: usize>(v: &Value) -> Result<[i64; N], StoreError> {
    let Value::BulkString(bytes) = v else {
        return Err(protocol(format!("expected a packed state, got {v:?}")));
    };
    if bytes.len() != 8 * N {
        return Err(protocol(format!(
            "a packed state of {} bytes, not {}",
            bytes.len(),
            8 * N
        )));
    }
    let mut out = [0; N];
    for (o, chunk) in out.iter_mut().zip(bytes.chunks_exact(8)) {
        let x = f64::from_be_bytes(chunk.try_into().unwrap_or_default());
        if !(x.fract() == 0.0 && x.abs() < MAX_EXACT as f64) {
            return Err(protocol(format!("{x} in a state is not an exact integer")));
        }
        // Exact: an integer below 2^53 in magnitude.
        #[allow(clippy::cast_possible_truncation)]
        {
            *o = x as i64;
        }
    }
    Ok(out)
}

fn unsigned<const N: usize>(v: &Value) -> Result<[u64; N], StoreError> {
    let signed = doubles::<N>(v)?;
    let mut out = [0; N];
    for (o, n) in out.iter_mut().zip(signed) {
        *o = u64::try_from(n).map_err(|_| protocol(format!("negative number {n} in a state")))?;
    }
    Ok(out)
}

fn state(algorithm: Algorithm, view: Value) -> Result<Option<State>, StoreError> {
    if matches!(view, Value::Nil) {
        return Ok(None);
    }
    let repr = match algorithm {
        Algorithm::Gcra | Algorithm::GreedyTokenBucket | Algorithm::LeakyBucket => {
            let [level, last] = unsigned(&view)?;
            Repr::Level(Level { level, last })
        }
        Algorithm::TokenBucket => {
            let [tokens, anchor] = doubles(&view)?;
            let anchor = u64::try_from(anchor).map_err(|_| protocol("a negative refill time"))?;
            Repr::TokenBucket(TokenBucket { tokens, anchor })
        }
        Algorithm::FixedWindow => {
            let [window, count] = unsigned(&view)?;
            Repr::FixedWindow(FixedWindow { window, count })
        }
        Algorithm::SlidingWindowCounter => {
            let [window, curr, prev, tail] = unsigned(&view)?;
            Repr::SlidingCounter(SlidingCounter {
                window,
                curr,
                prev,
                tail,
            })
        }
        Algorithm::SlidingWindowLog => {
            let Value::Array(items) = view else {
                return Err(protocol(format!("expected a log, got {view:?}")));
            };
            if items.len() < 5 {
                return Err(protocol("a log view without its header"));
            }
            let total = uint(&items[0])?;
            let count = uint(&items[1])?;
            let first = uint(&items[2])?;
            let last = (uint(&items[3])?, uint(&items[4])?);
            let mut head = std::collections::VecDeque::with_capacity(items.len() - 5);
            for item in &items[5..] {
                let [time, cost] = unsigned(item)?;
                head.push_back((time, cost));
            }
            if head.len() as u64 > count {
                return Err(protocol("a log view with more entries than it counts"));
            }
            Repr::SlidingLog(SlidingLog {
                head,
                count,
                total,
                first,
                last,
            })
        }
        Algorithm::Concurrency => {
            let held = uint(&view)?;
            if held == 0 {
                return Ok(None);
            }
            Repr::Concurrency(Concurrency { held })
        }
    };
    Ok(Some(State(repr)))
}

/// Whatever bytes are given, read as a script's reply to a few policy sets
/// and costs, and every request replayed on it as the store does: an error
/// or decisions, never a panic. The harness of the reply fuzzing (the
/// `redis_reply` target in `fuzz/` and the property test below).
#[cfg(any(test, fuzzing))]
pub(crate) fn fuzz(data: &[u8]) {
    use crate::quota::{Policy, Quota};
    use std::time::Duration;

    let Some((&pick, rest)) = data.split_first() else {
        return;
    };
    let algorithm = Algorithm::ALL[usize::from(pick) % Algorithm::ALL.len()];
    let quota = |limit| Quota::new(limit, Duration::from_secs(60));
    let policy = |name: &str, limit| {
        let p = Policy::new(name, quota(limit));
        if algorithm == Algorithm::Concurrency {
            Policy::concurrency(name, limit)
        } else {
            p.with_algorithm(algorithm)
        }
    };
    let policies = if pick & 0x80 == 0 {
        vec![policy("a", 5)]
    } else {
        vec![
            policy("a", 5),
            Policy::new("b", quota(3)).with_algorithm(Algorithm::SlidingWindowLog),
        ]
    };
    let Ok(set) = PolicySet::new(policies) else {
        return;
    };
    let mut bytes = Bytes(rest);
    let costs: Vec<u64> = (0..bytes.byte() % 4)
        .map(|_| u64::from(bytes.byte() % 8))
        .collect();
    let value = bytes.value(0);
    let Ok(reply) = parse(&set, value, costs.len()) else {
        return;
    };
    if costs.is_empty() {
        // A reset's reply: the time alone, no states to decide on.
        return;
    }
    let mut states = reply.states;
    for (j, &cost) in costs.iter().enumerate() {
        let wait = (j % 2 == 1).then(|| Duration::from_micros(u64::from(pick)));
        let _ = crate::algorithm::decide_view(&set, &mut states, reply.now, cost, wait);
    }
    let _ = crate::algorithm::check_view(&set, &states, reply.now, 1, None);
}

/// Reads Redis values out of arbitrary bytes: a tag byte, then what the
/// tag says (a number's 8 bytes, a string's length and bytes, an array's
/// length and items, three levels deep at most); missing bytes read as 0.
#[cfg(any(test, fuzzing))]
struct Bytes<'a>(&'a [u8]);

#[cfg(any(test, fuzzing))]
impl Bytes<'_> {
    fn byte(&mut self) -> u8 {
        let Some((&b, rest)) = self.0.split_first() else {
            return 0;
        };
        self.0 = rest;
        b
    }

    fn eight(&mut self) -> [u8; 8] {
        std::array::from_fn(|_| self.byte())
    }

    fn value(&mut self, depth: u8) -> Value {
        match self.byte() % 8 {
            0 => Value::Nil,
            1 => Value::Int(i64::from_be_bytes(self.eight())),
            // A small number, as real replies mostly hold.
            2 => Value::Int(i64::from(self.byte())),
            3 => {
                let n = usize::from(self.byte() % 40);
                Value::BulkString((0..n).map(|_| self.byte()).collect())
            }
            // Packed doubles, as states travel.
            4 => {
                let n = usize::from(self.byte() % 5);
                let mut out = Vec::new();
                for _ in 0..n {
                    let x = f64::from(u32::from_be_bytes([
                        self.byte(),
                        self.byte(),
                        self.byte(),
                        self.byte(),
                    ]));
                    out.extend_from_slice(&x.to_be_bytes());
                }
                Value::BulkString(out)
            }
            5 => Value::Double(f64::from_be_bytes(self.eight())),
            6 => Value::SimpleString(
                String::from_utf8_lossy(&[self.byte(), self.byte()]).into_owned(),
            ),
            _ if depth < 3 => {
                let n = usize::from(self.byte() % 10);
                Value::Array((0..n).map(|_| self.value(depth + 1)).collect())
            }
            _ => Value::Nil,
        }
    }
}

#[cfg(test)]
mod fuzzing {
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig {
            cases: 20_000,
            failure_persistence: None,
            ..ProptestConfig::default()
        })]

        /// Arbitrary bytes read as a reply never panic the parser or the
        /// decisions replayed on what it read.
        #[test]
        fn any_reply_is_an_error_or_decisions_never_a_panic(
            data in prop::collection::vec(any::<u8>(), 0..300)
        ) {
            super::fuzz(&data);
        }

        /// Replies shaped as real ones are: an array of the time, a state
        /// per policy, flags.
        #[test]
        fn reply_shaped_bytes_never_panic(
            pick in any::<u8>(),
            costs in prop::collection::vec(0_u8..8, 0..4),
            items in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..60), 1..6),
        ) {
            let mut data = vec![pick, costs.len() as u8];
            data.extend(&costs);
            // An array tag, its length, then each item.
            data.extend([7, items.len() as u8]);
            for item in &items {
                data.extend(item);
            }
            super::fuzz(&data);
        }
    }
}
