//! `cargo fuzz run answers`: see `tests/support/fuzz.rs` for what must hold.
#![no_main]

#[path = "../../tests/support/fuzz.rs"]
mod fuzz;

libfuzzer_sys::fuzz_target!(|data: &[u8]| fuzz::answers(data));
