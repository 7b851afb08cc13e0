//! A dictionary read as every Forward, answer, Request and Push of the invitation protocol.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| switchyard_protocol::fuzz::forward(data));
