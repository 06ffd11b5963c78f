//! Integration tests of kennel-policy: semantics tables, error messages, properties, upstream
//! selection, legacy variables and reload.

#![allow(clippy::unwrap_used)] // test helpers panic on unexpected errors by design

mod policy {
    pub mod errors;
    pub mod legacy;
    pub mod props;
    pub mod reload;
    pub mod semantics;
    pub mod support;
    pub mod upstream;
}
