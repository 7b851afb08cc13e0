//! Switchyard's wire protocol, shared by every party: providers, endpoints, peers' test suites.
//!
//! - [`uri`]: canonical user URIs (`tel:+14155550123`, `mailto:Bob@example.com`), so
//!   every provider names the same user with the same string.
//! - [`dict`]: the dictionaries every request and response body carries, encoded as an
//!   XML property list (the default) or as JSON.
//! - [`pki`]: the federation CA, provider certificates and mutual-TLS configuration.
//! - [`discovery`]: the signed dictionary listing the federation's member providers.
//! - [`bloom`]: the Bloom filter of a provider's URIs, in Switchyard's own wire format.
//! - [`attestation`]: the originating provider's signature over each Initiate Forward.
//! - [`capabilities`]: what media an endpoint can take, and whether it can answer a call.
//! - [`invitation`]: the invitation protocol's messages, typed: Requests, Forwards, Pushes.
//! - [`relay_frame`]: the frames an endpoint and its provider exchange over the HTTP relay.

pub mod attestation;
pub mod bloom;
pub mod capabilities;
pub mod dict;
pub mod discovery;
#[doc(hidden)]
pub mod fuzz;
pub mod invitation;
pub mod pki;
pub mod relay_frame;
pub mod uri;
pub mod window;

pub use dict::{Dict, DictError, Encoding, Value};
pub use uri::{CanonicalUri, Canonicalizer, UriError, UriScheme};
