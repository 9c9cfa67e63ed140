//! Your own agent backend: implement `Agent`, register it under the name the
//! plan's `kind = "custom"` role uses, run the plan. Run it with
//! `cargo run -p orch-examples --example custom_agent`.

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use orch_core::*;

/// Answers every task by writing the prompt into `notes/<ticket>.md`.
struct NoteWriter;

#[async_trait]
impl Agent for NoteWriter {
    fn backend(&self) -> &str {
        "note-writer"
    }

    async fn run(&self, task: AgentTask, _: &AgentContext) -> Result<AgentOutcome, AgentError> {
        let dir = task.workdir.join("notes");
        std::fs::create_dir_all(&dir)
            .and_then(|()| std::fs::write(dir.join(format!("{}.md", task.ticket.id)), &task.prompt))
            .map_err(|e| AgentError::new(AgentErrorKind::Crashed, e.to_string()))?;
        Ok(AgentOutcome {
            success: true,
            ..Default::default()
        })
    }
}

const PLAN: &str = r#"
name = "notes"
default_role = "writer"
agents.writer.backend = { kind = "custom", name = "note-writer" }
phases = [{ name = "write", gates = [{ kind = "files", paths = ["notes/{ticket}.md"], min_words = 5 }] }]
tickets = [{ id = "N-1", title = "Explain the retry policy", effort = "15m" }]
"#;

#[tokio::main]
async fn main() -> Result<(), orch_examples::Error> {
    let plan = Plan::from_toml_str(PLAN)?;
    let dir = std::env::temp_dir().join(format!("orch-custom-agent-{}", std::process::id()));
    // Registered by name; the router wraps it in retries, a breaker and the budget.
    let custom = HashMap::from([("note-writer".into(), Arc::new(NoteWriter) as Arc<dyn Agent>)]);
    let agent = orch_examples::plan_agents(&plan, &dir, &custom)?;
    let engine = orch_graph::Engine::new(plan, agent, orch_examples::open_store(&dir)?)?
        .workspace(Arc::new(SharedDir::new(&dir)))
        .gates(Arc::new(orch_gates::from_spec));
    let report = engine.run(&"notes-1".parse()?, Cancellation::new()).await?;
    println!(
        "{:?}: see {}",
        report.outcome,
        dir.join("notes/N-1.md").display()
    );
    Ok(())
}
