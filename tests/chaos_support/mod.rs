//! Support of the chaos harness (`tests/chaos.rs`): member processes and
//! their cluster, log parsing, the checker, a seeded generator.
#![allow(dead_code)]

pub mod checker;
pub mod cluster;
pub mod logs;
pub mod rng;
