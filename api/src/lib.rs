//! kennel-api: what kennel-supervisord and the `kennel` CLI exchange over the daemon's socket —
//! the JSON bodies of the `/v1` API ([`types`], [`policy`], [`exec`], [`events`], [`notify`],
//! [`ops`]), the plain-data spec parts they carry ([`spec`]), and the exec stream's framing
//! ([`frame`]). Types and (de)serialisation only (plus the few pure checks both sides run), so
//! the CLI need not link the daemon to speak to it.
//!
//! The daemon re-exports each at its old path (`kennel_supervisord::api::types` is [`types`],
//! `kennel_supervisord::frame` is [`frame`], `kennel_supervisord::api::policy_types` is
//! [`policy`], `kennel_supervisord::events::Event` is [`events::Event`], …); the spec ↔ wire
//! conversions live in `kennel_container::wire`.

pub mod events;
pub mod exec;
pub mod frame;
pub mod notify;
pub mod ops;
pub mod policy;
pub mod spec;
pub mod types;

pub use exec::ExecRequest;

/// Default path of the daemon's API socket (the daemon's `--socket` and the CLI's `--socket`).
pub const DEFAULT_SOCKET: &str = "/run/kennel/kennel.sock";
