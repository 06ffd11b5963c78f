//! Looking after running environments: `kennel refresh`, `kennel stats`, `kennel logs`,
//! `kennel doctor` (daemon side), reconciling again after an engine restart. Kept apart from [`crate::registry`], which creates and
//! removes them.

pub mod bench;
pub mod doctor;
pub mod engine;
pub mod expiry;
pub mod health;
pub mod logs;
pub mod refresh;
pub mod reloads;
pub mod sessions;
pub mod stats;
