//! One module per `kennel` subcommand.

pub mod policy;
