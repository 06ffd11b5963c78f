//! Framing of an exec stream: defined in the wire-types crate ([`kennel_api::frame`]) and
//! re-exported here at its old path.

pub use kennel_api::frame::*;
