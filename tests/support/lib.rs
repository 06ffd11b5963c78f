//! kennel-test-support: shared test code (origins, TLS certs, netns, Docker fixtures).

pub mod docker;
