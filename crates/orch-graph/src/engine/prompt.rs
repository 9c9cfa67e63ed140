//! The prompt an agent gets for one phase of one ticket.

use std::fmt::Write;

use orch_core::{PhaseSpec, Plan, Ticket};

/// Builds the prompt for `phase` of `ticket`: the task, its context and
/// acceptance criteria, the phase's instructions (with `{ticket}` and
/// `{phase}` filled in), and the feedback of earlier failed attempts.
///
/// ```
/// let plan = orch_core::Plan::from_toml_str(r#"
///     name = "demo"
///     default_role = "dev"
///     agents.dev.backend = { kind = "custom", name = "dev" }
///     [[phases]]
///     name = "implement"
///     instructions = "Write src/{ticket}.rs."
///     [[tickets]]
///     id = "T-1"
///     title = "Add a health check"
///     effort = "1h"
///     acceptance_criteria = ["GET /health answers 200"]
/// "#).unwrap();
/// let p = orch_graph::prompt(&plan, &plan.tickets[0], &plan.phases[0],
///     &["Gate `tests` failed: 1 of 3 tests failed".to_owned()]);
/// assert!(p.contains("# T-1: Add a health check"));
/// assert!(p.contains("- GET /health answers 200"));
/// assert!(p.contains("Write src/T-1.rs."));
/// assert!(p.contains("1 of 3 tests failed"));
/// ```
pub fn prompt(plan: &Plan, ticket: &Ticket, phase: &PhaseSpec, feedback: &[String]) -> String {
    let feedback_len: usize = feedback.iter().map(String::len).sum();
    let mut p = String::with_capacity(
        256 + ticket.title.len()
            + ticket.description.len()
            + plan.description.len()
            + phase.instructions.len()
            + feedback_len,
    );
    for s in ["# ", ticket.id.as_str(), ": ", &ticket.title, "\n\n"] {
        p.push_str(s);
    }
    if !ticket.description.is_empty() {
        let _ = writeln!(p, "## Context\n\n{}\n", ticket.description.trim());
    }
    if !plan.description.is_empty() {
        let _ = writeln!(p, "Project goal: {}\n", plan.description.trim());
    }
    if !ticket.acceptance_criteria.is_empty() {
        p.push_str("## Success criteria\n\n");
        for c in &ticket.acceptance_criteria {
            let _ = writeln!(p, "- {c}");
        }
        p.push('\n');
    }
    for s in ["## Phase: ", phase.name.as_str(), "\n\n"] {
        p.push_str(s);
    }
    let instructions = phase.instructions.trim();
    if instructions.contains('{') {
        let filled = instructions
            .replace("{ticket}", ticket.id.as_str())
            .replace("{phase}", phase.name.as_str());
        let _ = writeln!(p, "{filled}\n");
    } else if !instructions.is_empty() {
        let _ = writeln!(p, "{instructions}\n");
    }
    if !phase.gates.is_empty() {
        p.push_str("Your work is checked by these gates; all must pass:\n");
        for g in &phase.gates {
            let _ = writeln!(p, "- {}", g.display_name());
        }
        p.push('\n');
    }
    if !feedback.is_empty() {
        p.push_str("## Feedback from earlier attempts\n\nFix these before anything else:\n\n");
        for (i, f) in feedback.iter().enumerate() {
            let _ = writeln!(p, "### Attempt {}\n\n{}\n", i + 1, f.trim());
        }
    }
    p
}
