//! The `orch` command: validate and analyse plan files.
//!
//! ```text
//! orch validate PLAN...                      check plans; print a one-line summary each
//! orch analyze PLAN [--agents N] [--format text|json|mermaid|dot]
//! orch schema                                print the JSON Schema of plan files
//! ```
//!
//! Exit codes: 0 success; 1 a plan is invalid (the error names file, line,
//! column and key); 2 usage error.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use orch_core::Plan;

#[derive(Parser)]
#[command(
    name = "orch",
    version,
    about = "Orchestrate AI coding agents through a plan of tickets"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Check plan files (TOML, YAML or JSON) and their dependency graphs.
    Validate {
        /// Plan files.
        #[arg(required = true)]
        plans: Vec<PathBuf>,
    },
    /// Critical path, slack, waves and simulated schedules of a plan.
    Analyze {
        /// The plan file.
        plan: PathBuf,
        /// Simulate 1..=N agents working in parallel.
        #[arg(long, default_value_t = 6)]
        agents: u32,
        /// Output format.
        #[arg(long, value_enum, default_value_t = OutputFormat::Text)]
        format: OutputFormat,
    },
    /// Print the JSON Schema of plan files.
    Schema,
}

#[derive(Clone, Copy, ValueEnum)]
enum OutputFormat {
    Text,
    Json,
    Mermaid,
    Dot,
}

/// Loads a plan and checks its graph (cycles, batch order).
fn load(path: &PathBuf) -> Result<(Plan, orch_graph::Report), String> {
    let plan = Plan::from_path(path).map_err(|e| e.to_string())?;
    let report = orch_graph::analyze(&plan, 1).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok((plan, report))
}

fn run(cli: Cli) -> Result<(), String> {
    match cli.command {
        Command::Validate { plans } => {
            let mut failed = false;
            for path in &plans {
                match load(path) {
                    Ok((plan, r)) => println!(
                        "{}: ok — plan {:?}: {} tickets, {} batches, {} phases, {} of effort, critical path {}",
                        path.display(),
                        plan.name,
                        plan.tickets.len(),
                        plan.batches.len(),
                        plan.phases.len(),
                        orch_core::format_minutes(r.total_effort_minutes),
                        orch_core::format_minutes(r.critical_path_minutes),
                    ),
                    Err(e) => {
                        eprintln!("{e}");
                        failed = true;
                    }
                }
            }
            if failed {
                return Err(String::new());
            }
        }
        Command::Analyze {
            plan,
            agents,
            format,
        } => {
            let p = Plan::from_path(&plan).map_err(|e| e.to_string())?;
            let report = orch_graph::analyze(&p, agents.clamp(1, 1024))
                .map_err(|e| format!("{}: {e}", plan.display()))?;
            match format {
                OutputFormat::Text => print!("{}", report.text()),
                OutputFormat::Json => println!(
                    "{}",
                    serde_json::to_string_pretty(&report).map_err(|e| e.to_string())?
                ),
                OutputFormat::Mermaid => print!("{}", report.mermaid()),
                OutputFormat::Dot => print!("{}", report.dot()),
            }
        }
        Command::Schema => print!("{}", orch_core::plan::json_schema()),
    }
    Ok(())
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            if !e.is_empty() {
                eprintln!("{e}");
            }
            ExitCode::from(1)
        }
    }
}
