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
