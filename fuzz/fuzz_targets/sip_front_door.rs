//! The SIP front door: one input as a UDP datagram and as a TCP stream cut in two.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| switchyard_provider::sip::fuzz::front_door(data));
