//! One module per `kennel` subcommand.

pub mod allow;
pub mod denials;
pub mod devcontainer;
pub mod doctor;
pub mod down;
pub mod exec;
pub mod image;
pub mod inspect;
pub mod learn;
pub mod logs;
pub mod ls;
pub mod policy;
pub mod policy_live;
pub mod refresh;
pub mod shell;
pub mod startstop;
pub mod stats;
pub mod up;
pub mod worktree;
