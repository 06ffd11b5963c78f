//! kennel-api: the JSON bodies kennel-supervisord and the `kennel` CLI exchange over the daemon's
//! socket. Types and (de)serialisation only, so the CLI need not link the daemon to speak to it.
//!
//! Being moved here from `kennel_supervisord::api` a module at a time; the daemon re-exports
//! each at its old path (`kennel_supervisord::api::policy_types` is [`policy`]).

pub mod exec;
pub mod policy;

pub use exec::ExecRequest;
