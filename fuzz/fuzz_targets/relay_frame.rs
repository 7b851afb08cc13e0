//! The HTTP relay's framing: one frame, and a long-poll body of length-prefixed frames.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| switchyard_protocol::fuzz::relay_frame(data));
