//! The SIP header value parsers: Authorization, name-addr, comma lists, addresses of record.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| switchyard_provider::sip::fuzz::headers(data));
