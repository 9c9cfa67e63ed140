//! The `orch` command.
fn main() {}
