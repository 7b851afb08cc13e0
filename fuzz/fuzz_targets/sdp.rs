//! A phone's session description as the SIP edge checks, rewrites and revises it.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| switchyard_provider::fuzz::sdp(data));
