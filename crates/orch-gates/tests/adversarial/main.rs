//! The adversarial suite: tricks an agent that wants a green gate without
//! doing the work would play, each made for real by the test (a small
//! project, a real tool's report, a process that hides), each asserting
//! that the gate fails and that its reason names the trick.
//!
//! One test per trick, grouped by the class of trick:
//! - [`provenance`]: reports the gate's command did not write, now;
//! - [`counting`]: test counts that claim more than ran;
//! - [`coverage`]: coverage figures that cannot be true;
//! - [`secrets`]: keys where the secret scan would not look;
//! - [`processes`]: helpers that outlive the check;
//! - [`limits`]: huge files and paths that lead out of the work tree;
//! - [`documents`]: documents that look written but are not.
//!
//! Tricks played by an agent through `orch run` end to end are in
//! `examples/tests/run_cli.rs` (`an_agent_playing_tricks_through_orch_run_does_not_pass`,
//! `an_implementation_that_changes_frozen_tests_does_not_pass`).

#[path = "../support/mod.rs"]
mod support;

mod counting;
mod coverage;
mod documents;
mod limits;
mod processes;
mod provenance;
mod secrets;
