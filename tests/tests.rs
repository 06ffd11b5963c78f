//! Cross-crate end-to-end tests: one test binary.

mod e2e_approve;
mod e2e_build;
mod e2e_compose;
mod e2e_devcontainer;
mod e2e_docker;
mod e2e_docker_engine;
mod e2e_events;
mod e2e_notify;
mod e2e_ops;
mod e2e_profiles;
mod e2e_proxy;
mod e2e_supervisor;
mod e2e_upstream;
mod e2e_workspace;
mod faults;
mod regression;
