//! kennel-proxy: the egress data path (listener, CONNECT, forward, upstream, resolver guard, SNI check, logs, metrics).
