//! Policies' names, descriptions and `RateLimit-Policy` values, kept once
//! for the life of the process.
//!
//! A policy's name, limit and period are in every decision. Interned, they
//! are one plain `&'static` reference: copying it is copying a pointer,
//! where a shared `Arc` would touch a reference count that every core's
//! decisions contend for. Only checked policies are interned, once per
//! distinct name and quota, so the memory kept is bounded by the
//! configurations a program builds.

use std::collections::HashSet;
use std::sync::{Mutex, PoisonError};

use http::HeaderValue;

use crate::decision::PolicyInfo;

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

/// `info`, kept once.
pub(crate) fn policy(info: PolicyInfo) -> &'static PolicyInfo {
    static POLICIES: Mutex<Option<HashSet<&'static PolicyInfo>>> = Mutex::new(None);
    let mut all = POLICIES.lock().unwrap_or_else(PoisonError::into_inner);
    let all = all.get_or_insert_with(HashSet::new);
    if let Some(&found) = all.get(&info) {
        return found;
    }
    let kept: &'static PolicyInfo = Box::leak(Box::new(info));
    all.insert(kept);
    kept
}

/// A small number naming the policy of `name` and `fingerprint`, the
/// same for every set that has it: the in-memory store finds a policy's
/// table by it.
pub(crate) fn policy_id(name: &'static str, fingerprint: u64) -> u32 {
    static IDS: Mutex<Vec<(&'static str, u64)>> = Mutex::new(Vec::new());
    let mut ids = IDS.lock().unwrap_or_else(PoisonError::into_inner);
    let found = ids
        .iter()
        .position(|&(n, f)| std::ptr::eq(n, name) && f == fingerprint);
    let i = found.unwrap_or_else(|| {
        ids.push((name, fingerprint));
        ids.len() - 1
    });
    u32::try_from(i).expect("fewer than 2^32 distinct policies")
}

/// A header value of `s`, kept once: cloning it copies a pointer, where a
/// shared value would count references. `None` unless `s` is visible ASCII.
pub(crate) fn header_value(s: &str) -> Option<&'static HeaderValue> {
    static MADE: Mutex<Vec<(&'static str, &'static HeaderValue)>> = Mutex::new(Vec::new());
    if !s.bytes().all(|b| b == b'\t' || (b' '..=b'~').contains(&b)) {
        return None;
    }
    let s = self::str(s);
    let mut made = MADE.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(&(_, v)) = made.iter().find(|(k, _)| std::ptr::eq(*k, s)) {
        return Some(v);
    }
    let v: &'static HeaderValue = Box::leak(Box::new(HeaderValue::from_static(s)));
    made.push((s, v));
    Some(v)
}
