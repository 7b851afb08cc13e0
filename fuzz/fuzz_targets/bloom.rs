//! A peer's Bloom filter answer, full or incremental, as a plist, JSON or field by field.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| switchyard_protocol::fuzz::bloom(data));
