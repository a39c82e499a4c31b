//! Support of the chaos harness (`tests/chaos.rs`): member processes and
//! their cluster, and the chaos-specific judgement of a run (coverage per
//! fault, stale writes, leaked rows) on top of the testkit's oracle. The
//! log format (`leasering_testkit::member_log`) and the seeded generator
//! (`leasering_testkit::rng`) are the testkit's.
#![allow(dead_code)]

pub mod checker;
pub mod cluster;
