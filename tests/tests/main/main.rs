//! The cross-crate integration tests, one module per subject, in one test binary: each binary
//! links the whole daemon, and `cargo test` runs binaries one after another, so one binary links
//! once and keeps every test thread busy to the end. A new subject is a module here (Cargo's
//! layout for a multi-file test: `tests/main/main.rs` builds the test target `main`).

mod admin_openapi;
mod admin_operators;
mod bad_input;
mod call_relay;
mod federation;
mod federation_faults;
mod federation_interop;
mod floods;
mod hostile_member;
mod http_relay;
mod invitations;
mod media_call;
mod operations;
mod registry;
mod relay;
mod sip_baresip;
mod sip_calls;
mod sip_interop;
mod sip_registrar;
mod sip_torture;
