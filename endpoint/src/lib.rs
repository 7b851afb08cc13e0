//! A Switchyard endpoint (a device), as a library: registration and the Requests ([`client`]),
//! the push channel, media tunnelled over HTTPS where no UDP gets out ([`http_relay`]), the media
//! session driven from the pushes ([`media`]) and calls placed, answered and hung up ([`call`]).
//! `switchyard endpoint …` is a command line over it; a softphone needs nothing else.

pub mod call;
pub mod client;
pub mod http_relay;
pub mod media;
