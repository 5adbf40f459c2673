//! Verification: the deterministic cluster simulator and the linearizability checker it
//! (and the real-process tests) run over recorded histories.

pub mod faults;
pub mod fuzz;
pub mod linearizability;
pub mod sim;
