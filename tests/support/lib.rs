//! kennel-test-support: shared test code (origins, TLS certs, netns, Docker fixtures).

pub mod docker;
pub mod ide;
pub mod netns;
pub mod origin;
pub mod proxy_harness;
pub mod tls;
pub mod upstreams;
pub mod wait;
