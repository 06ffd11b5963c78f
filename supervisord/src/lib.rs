//! kennel-supervisord: the daemon that owns environments.
//!
//! An HTTP/1.1 + JSON API ([`api`]) on a Unix socket, callers authorised by their peer
//! credentials ([`auth`]); environments created through a container [`Backend`] with their spec
//! and effective policy kept in a state directory ([`state`]); Docker labels are the source of
//! truth, so a restart reconciles ([`registry::Daemon::reconcile`]), and so does the engine's
//! return after an outage ([`ops::engine`]).
//!
//! [`Backend`]: kennel_container::backend::Backend

pub mod api;
pub mod auth;
pub mod daemon;
pub mod error;
pub mod events;
pub mod frame;
pub mod images;
pub mod notify;
pub mod ops;
pub mod policy;
pub mod policy_ops;
pub mod registry;
pub mod server;
pub mod state;

pub use error::ApiError;
pub use registry::Daemon;
