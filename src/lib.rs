#![doc = include_str!("../README.md")]
#![warn(missing_docs)]
#![deny(unreachable_pub)]
#![forbid(unsafe_code)]
#![cfg_attr(docsrs, feature(doc_auto_cfg))]

pub mod algorithm;
pub mod clock;
mod decision;
mod error;
pub mod future;
pub mod key;
mod layer;
mod quota;
pub mod response;
mod service;
pub mod store;

pub use decision::{Decision, PolicyDecision};
pub use error::{BoxError, ConfigError, KeyError, RateLimited, StoreError, StoreErrorKind};
pub use layer::{FailurePolicy, OnLimit, RateLimitLayer, RateLimitLayerBuilder};
pub use quota::{Algorithm, Policy, PolicySet, Quota};
pub use response::HeaderStyle;
pub use service::RateLimit;
#[cfg(feature = "memory")]
pub use store::MemoryStore;
pub use store::Store;
