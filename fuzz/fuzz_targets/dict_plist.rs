//! A request or response body as an XML property list: decoded, re-encoded both ways, read back.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| switchyard_protocol::fuzz::dict(
    data,
    switchyard_protocol::Encoding::Plist
));
