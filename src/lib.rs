#![doc = include_str!("../README.md")]
#![warn(missing_docs)]
#![deny(unreachable_pub)]
#![forbid(unsafe_code)]
#![deny(missing_debug_implementations)]
#![cfg_attr(docsrs, feature(doc_cfg))]

pub mod algorithm;
pub mod clock;
mod config;
mod decision;
mod error;
mod fallback;
pub mod future;
pub mod guide;
mod intern;
pub mod key;
mod layer;
pub mod limiter;
mod observe;
mod quota;
pub mod response;
pub mod select;
mod service;
pub mod store;

pub use config::{FailurePolicy, OnLimit};
pub use decision::{Decision, PolicyDecision};
pub use error::{
    AcquireError, BoxError, ConfigError, KeyError, RateLimited, StoreError, StoreErrorKind,
};
pub use layer::{RateLimitLayer, RateLimitLayerBuilder};
pub use limiter::{Permit, RateLimiter, RateLimiterBuilder};
pub use quota::{Algorithm, Derived, Policy, PolicySet, Quota};
pub use response::HeaderStyle;
pub use service::RateLimit;
#[cfg(feature = "memory")]
pub use store::MemoryStore;
pub use store::Store;

/// Hooks for `cargo fuzz`, built only with `--cfg fuzzing`.
#[cfg(all(fuzzing, feature = "redis"))]
#[doc(hidden)]
pub mod __fuzz {
    /// Reads `data` as a Redis script's reply and replays the decisions
    /// on it: an error or decisions, never a panic.
    pub fn redis_reply(data: &[u8]) {
        crate::store::fuzz_reply(data);
    }
}
