//! JSON bodies of the `/v1` API: defined in the wire-types crate ([`kennel_api::types`]) and
//! re-exported here at their old path.

pub use kennel_api::types::*;
