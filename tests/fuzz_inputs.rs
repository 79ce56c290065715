//! The fuzz targets' checks (`fuzz/`, run with `cargo fuzz`) over
//! arbitrary bytes from proptest, so every run of the suite fuzzes a
//! little: key extractors on any header bytes, and rejections answered for
//! any `Accept` and `Content-Type`.

#[path = "support/fuzz.rs"]
mod fuzz;

use proptest::prelude::*;

/// Bytes shaped like proxy headers now and then, and like anything else.
fn header_bytes() -> impl Strategy<Value = Vec<u8>> {
    let piece = prop_oneof![
        Just(b"for=".to_vec()),
        Just(b", ".to_vec()),
        Just(b"\"[".to_vec()),
        Just(b"]:80\"".to_vec()),
        Just(b"10.0.0.1".to_vec()),
        Just(b"2001:db8::1".to_vec()),
        Just(b"::ffff:1.2.3.4".to_vec()),
        Just(b"unknown".to_vec()),
        Just(b"_hidden".to_vec()),
        Just(b"application/grpc-web+proto".to_vec()),
        Just(b"application/problem+json;q=0.5".to_vec()),
        Just(vec![0xff]),
        proptest::collection::vec(any::<u8>(), 0..12),
    ];
    proptest::collection::vec(piece, 0..24).prop_map(|pieces| pieces.concat())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2_000))]

    #[test]
    fn key_extractors_take_any_bytes(data in header_bytes()) {
        fuzz::key_extractors(&data);
    }

    #[test]
    fn rejections_are_well_formed_for_any_headers(data in header_bytes()) {
        fuzz::answers(&data);
    }
}
