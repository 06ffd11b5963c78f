//! One module per `kennel` subcommand.

pub mod allow;
pub mod bench;
pub mod completions;
pub mod denials;
pub mod devcontainer;
pub mod doctor;
pub mod down;
pub mod events;
pub mod exec;
pub mod image;
pub mod inspect;
pub mod learn;
pub mod line_renderer;
pub mod logs;
pub mod ls;
pub mod notify;
pub mod policy;
pub mod policy_live;
pub mod refresh;
pub mod shell;
pub mod startstop;
pub mod stats;
pub mod system;
pub mod up;
pub mod worktree;
