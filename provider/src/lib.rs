//! The Switchyard provider daemon: registry, endpoint API, invitations, pushes, admin API.

pub mod admin;
mod admin_ui;
pub mod api;
pub mod app;
pub mod auth;
pub mod client_limits;
pub mod config;
pub mod db;
pub mod demo;
pub mod federation;
#[doc(hidden)]
pub mod fuzz;
pub mod import;
pub mod invitation;
pub mod listener;
pub mod members;
pub mod operators;
pub mod pki;
pub mod push;
pub mod registry;
pub mod relay;
pub mod seal;
pub mod server;
pub mod shared;
pub mod sip;
pub mod tls_stream;
pub mod wire;

pub use config::Config;
pub use server::Provider;
