//! `cargo fuzz run redis_reply`: arbitrary bytes read as a Redis script's
//! reply, and the decisions replayed on it, never panic.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| tower_ratelimit::__fuzz::redis_reply(data));
