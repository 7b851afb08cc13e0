//! Switchyard's inter-provider federation protocol building blocks.
//!
//! - [`uri`]: canonical user URIs (`tel:+14155550123`, `mailto:Bob@example.com`), so
//!   every provider names the same user with the same string.
//! - [`dict`]: the dictionaries every request and response body carries, encoded as an
//!   XML property list (the default) or as JSON.

pub mod dict;
pub mod uri;

pub use dict::{Dict, DictError, Encoding, Value};
pub use uri::{CanonicalUri, Canonicalizer, UriError, UriScheme};
