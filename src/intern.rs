//! Strings kept once for the life of the process.
//!
//! A policy's name is in every decision. Interned, it is a plain
//! `&'static` reference: copying it is copying a pointer, where a shared
//! `Arc` would touch a reference count that every core's decisions
//! contend for. Only checked names are interned, once per distinct
//! string, so the memory kept is bounded by the configurations a program
//! builds.

use std::collections::HashSet;
use std::sync::{Mutex, PoisonError};

/// `s`, kept once. Two interned strings are equal exactly when they are
/// the same reference.
pub(crate) fn str(s: &str) -> &'static str {
    static STRINGS: Mutex<Option<HashSet<&'static str>>> = Mutex::new(None);
    let mut all = STRINGS.lock().unwrap_or_else(PoisonError::into_inner);
    let all = all.get_or_insert_with(HashSet::new);
    if let Some(&found) = all.get(s) {
        return found;
    }
    let kept: &'static str = Box::leak(Box::from(s));
    all.insert(kept);
    kept
}
