//! Regression tests: one test per fixed bug, named after what it prevents, grouped by the part
//! of kennel the bug was in. Each test says which issue it comes from.

mod ci;
mod legacy;
mod proxy;
