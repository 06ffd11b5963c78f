//! One module per `kennel` subcommand.

pub mod doctor;
pub mod down;
pub mod exec;
pub mod image;
pub mod inspect;
pub mod logs;
pub mod ls;
pub mod policy;
pub mod refresh;
pub mod shell;
pub mod startstop;
pub mod stats;
pub mod up;
