//! kennel benchmarks: egress load generator and criterion microbenches; results in README.md.
