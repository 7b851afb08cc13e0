//! Sealed session state: opening an echoed token, sealing a state, a changed token.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| switchyard_provider::fuzz::sealed_state(data));
