//! A STUN/TURN datagram as the relay's listening socket reads it before the TURN server.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| switchyard_provider::fuzz::stun(data));
