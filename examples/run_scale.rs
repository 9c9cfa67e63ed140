//! The path users take, measured: what `orch run` builds (`Setup::engine`:
//! the SQLite journal, the git workspace, the state files, the plan's
//! `command` agent as a real process), with fresh worktrees beside slots,
//! in one invocation.
//!
//! ```text
//! cargo run --release -p orch-examples --example run_scale -- run [SIZES...] [--slots-only]
//! cargo run --release -p orch-examples --example run_scale -- prepare [FILES]
//! cargo run --release -p orch-examples --example run_scale -- gate
//! ```
//!
//! - `run`: a random DAG (3 dependencies a ticket, concurrency 16), one
//!   phase, a no-op agent (`true`), no gates, in an empty repository;
//!   the wall time per ticket at each size (default 500 and 1500), and
//!   where it went (the state's `work` times). `--slots-only` skips the
//!   fresh worktrees (at 10,000 tickets they take the better part of an
//!   hour).
//! - `prepare`: in a generated repository of FILES files (default 30,000),
//!   10 tickets one after another, each preparing its work tree, adding a
//!   file, checkpointing and releasing: the time to prepare and release,
//!   slots against fresh worktrees (`git worktree add`/`remove`) and
//!   against git's own switch and clean of one worktree (the floor). Slots
//!   go first: on ext4, making a worktree's files right after removing
//!   another's is slowed by the inode allocator skipping the inodes just
//!   freed, and slots would otherwise pay for the fresh worktrees'
//!   removals. First, what containing one process costs orch (a `git
//!   --version` in a cell of its own, against a bare one).
//! - `gate`: a crate depending on serde and tokio (fetched once from
//!   crates.io), three tickets one after another, each changing the crate
//!   and gated by `cargo test`: the gate's time per ticket, fresh
//!   worktrees (every build cold) against slots (`target/` kept).

use std::collections::HashMap;
use std::path::Path;
use std::process::Command;
use std::time::Instant;

use orch_core::{Cancellation, GateScope, Plan, RunOutcome, StateStore, Workspace, WorkspaceSpec};
use orch_examples::demo::git;
use orch_examples::{Error, Setup, open_store, plan_agents};

fn main() -> Result<(), Error> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let rt = tokio::runtime::Runtime::new()?;
    match args.first().map(String::as_str) {
        Some("run") => {
            let only_slots = args.iter().any(|a| a == "--slots-only");
            let mut sizes: Vec<usize> = args[1..]
                .iter()
                .filter(|a| *a != "--slots-only")
                .map(|a| a.parse())
                .collect::<Result<_, _>>()?;
            if sizes.is_empty() {
                sizes = vec![500, 1_500];
            }
            println!(
                "| tickets | worktrees | wall | per ticket | prepare | checkpoint | agent (a ticket, mean) |"
            );
            println!("|---|---|---|---|---|---|---|");
            for n in sizes {
                for spec in [WorkspaceSpec::fresh(), WorkspaceSpec::default()] {
                    if !(only_slots && spec == WorkspaceSpec::fresh()) {
                        rt.block_on(run(n, spec))?;
                    }
                }
            }
        }
        Some("prepare") => {
            let files = args.get(1).map_or(Ok(30_000), |a| a.parse())?;
            rt.block_on(prepare(files))?;
        }
        Some("gate") => rt.block_on(gate())?,
        _ => return Err("usage: run_scale run [SIZES...] | prepare [FILES] | gate".into()),
    }
    Ok(())
}

fn mode(spec: &WorkspaceSpec) -> &'static str {
    match spec.worktrees {
        orch_core::Worktrees::Fresh => "fresh",
        _ => "slots",
    }
}

/// A repository at `dir` holding `files` (path, contents), committed.
fn repo_with(dir: &Path, files: impl IntoIterator<Item = (String, String)>) -> Result<(), Error> {
    std::fs::create_dir_all(dir)?;
    git(dir, &["init", "-q", "-b", "main"])?;
    // No gc in the background of a measurement.
    git(dir, &["config", "gc.auto", "0"])?;
    for (path, text) in files {
        let p = dir.join(path);
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(p, text)?;
    }
    commit_all(dir, "base")
}

/// Commits everything in the repository at `dir`.
fn commit_all(dir: &Path, message: &str) -> Result<(), Error> {
    git(dir, &["add", "-A"])?;
    git(
        dir,
        &[
            "-c",
            "user.name=bench",
            "-c",
            "user.email=bench@localhost",
            "commit",
            "-q",
            "--allow-empty",
            "-m",
            message,
        ],
    )?;
    Ok(())
}

/// Runs `plan` as `orch run` would, quietly; its final state.
async fn run_plan(plan: Plan, dir: &Path) -> Result<orch_core::RunState, Error> {
    let (repo, state) = (dir.join("repo"), dir.join("state"));
    let agent = plan_agents(&plan, &state, &HashMap::new())?;
    let mut setup = Setup::new(plan, &repo, &state, agent);
    setup.progress = false;
    let store = open_store(&state)?;
    let engine = setup.engine(store.clone())?;
    let run = "bench".parse()?;
    let report = engine.run(&run, Cancellation::new()).await?;
    if report.outcome != RunOutcome::Completed {
        return Err(format!("the run ended {:?}", report.outcome).into());
    }
    Ok(store.state(&run).await?)
}

async fn run(n: usize, spec: WorkspaceSpec) -> Result<(), Error> {
    let dir = tempfile::tempdir()?;
    repo_with(&dir.path().join("repo"), [])?;
    let mut plan = orch_graph::random::random_plan(n, 3, 42);
    plan.policy.max_concurrency = 16;
    let m = mode(&spec);
    plan.workspace = spec;
    let t = Instant::now();
    let state = run_plan(plan, dir.path()).await?;
    let wall = t.elapsed();
    let work = state
        .tickets
        .values()
        .fold(orch_core::WorkTimes::default(), |a, t| {
            a.plus(t.metrics.work)
        });
    let per = |ms: u64| ms as f64 / n as f64;
    println!(
        "| {n} | {m} | {:.1} s | {:.1} ms | {:.1} ms | {:.1} ms | {:.1} ms |",
        wall.as_secs_f64(),
        wall.as_secs_f64() * 1000.0 / n as f64,
        per(work.prepare_ms),
        per(work.checkpoint_ms),
        per(work.agent_ms),
    );
    Ok(())
}

async fn prepare(files: usize) -> Result<(), Error> {
    let dir = tempfile::tempdir()?;
    let repo = dir.path().join("repo");
    let t = Instant::now();
    repo_with(
        &repo,
        (0..files).map(|i| {
            (
                format!("src/m{:03}/f{i}.rs", i / 100),
                format!("pub fn f{i}() -> usize {{ {i} }}\n"),
            )
        }),
    )?;
    // Packed, as a clone is.
    git(&repo, &["gc", "-q"])?;
    println!(
        "repository of {files} files made in {:.1} s",
        t.elapsed().as_secs_f64()
    );
    // What orch adds to each git it runs (a cell of its own: on cgroup v2,
    // moving the process into its cgroup), one at a time as a slot's
    // switch runs them, `git --version` contained and bare, alternating.
    let (mut contained, mut bare) = (0.0, 0.0);
    for _ in 0..20 {
        let mut v = Command::new("git");
        v.arg("--version");
        let t = Instant::now();
        orch_core::process::output(&v)?;
        contained += t.elapsed().as_secs_f64() * 1000.0 / 20.0;
        let t = Instant::now();
        v.output()?;
        bare += t.elapsed().as_secs_f64() * 1000.0 / 20.0;
        // Apart, as a switch's gits are (each runs for tens of
        // milliseconds): the kernel makes a move into a cgroup cheap only
        // right after another one.
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    println!(
        "one git, contained ({}): {contained:.1} ms; bare: {bare:.1} ms",
        if orch_core::process::scope().is_cgroup() {
            "a cgroup"
        } else {
            "the marker"
        }
    );
    println!("| worktrees | first ticket | next 9 tickets, mean |");
    println!("|---|---|---|");
    // The floor: git's own switch and clean of one worktree, per ticket
    // (`git checkout -f -b`, `git clean -ffdx` keeping `target/`), the
    // ticket's commit not counted.
    let bare = dir.path().join("bare");
    git(
        &repo,
        &[
            "worktree",
            "add",
            "-q",
            "--detach",
            &bare.to_string_lossy(),
            "HEAD",
        ],
    )?;
    let mut times = Vec::new();
    for i in 0..10 {
        let t = Instant::now();
        git(
            &bare,
            &["checkout", "-q", "-f", "-b", &format!("bare-{i}"), "main"],
        )?;
        git(&bare, &["clean", "-q", "-ffdx", "-e", "target/"])?;
        times.push(t.elapsed().as_secs_f64() * 1000.0);
        std::fs::write(bare.join(format!("new-{i}.txt")), "work\n")?;
        commit_all(&bare, "work")?;
    }
    println!(
        "| git checkout + clean alone | {:.0} ms | {:.0} ms |",
        times[0],
        times[1..].iter().sum::<f64>() / 9.0
    );
    for spec in [WorkspaceSpec::default(), WorkspaceSpec::fresh()] {
        let ws =
            orch_state::GitWorkspace::new(orch_state::git::Repo::open(&repo)?, "HEAD")?.spec(&spec);
        let run: orch_core::RunId = format!("prep-{}", mode(&spec)).parse()?;
        let phase = "do".parse()?;
        let mut times = Vec::new();
        for i in 0..10 {
            let id: orch_core::TicketId = format!("T{i}").parse()?;
            let t = Instant::now();
            let p = ws.prepare(&run, &id, &[]).await?;
            let mut took = t.elapsed();
            std::fs::write(p.path.join(format!("new-{i}.txt")), "work\n")?;
            ws.checkpoint(&run, &id, &phase, 1, &[], None).await?;
            let t = Instant::now();
            ws.release(&run, &id).await?;
            took += t.elapsed();
            times.push(took.as_secs_f64() * 1000.0);
        }
        let rest = &times[1..];
        println!(
            "| {} | {:.0} ms | {:.0} ms |",
            mode(&spec),
            times[0],
            rest.iter().sum::<f64>() / rest.len() as f64
        );
    }
    Ok(())
}

const GATE_PLAN: &str = r#"
name = "gate"
default_role = "dev"
[policy]
max_concurrency = 1
max_attempts = 1
[agents.dev]
backend = { kind = "command", argv = ["sh", "-c", "cat > /dev/null; echo \"pub fn ticket_$ORCH_TICKET() -> &'static str { \\\"$ORCH_TICKET\\\" }\" >> src/lib.rs"] }
[[phases]]
name = "implement"
on_exhausted = "fail"
gates = [{ kind = "command", name = "cargo test", argv = ["cargo", "test", "--offline", "-q", "--target-dir", "target"] }]
[[tickets]]
id = "T1"
title = "one"
effort = "1h"
[[tickets]]
id = "T2"
title = "two"
effort = "1h"
depends_on = ["T1"]
[[tickets]]
id = "T3"
title = "three"
effort = "1h"
depends_on = ["T2"]
"#;

async fn gate() -> Result<(), Error> {
    println!("| worktrees | T1 gate | T2 gate | T3 gate |");
    println!("|---|---|---|---|");
    for spec in [WorkspaceSpec::fresh(), WorkspaceSpec::default()] {
        let dir = tempfile::tempdir()?;
        let repo = dir.path().join("repo");
        repo_with(
            &repo,
            [
                (
                    "Cargo.toml".to_owned(),
                    "[package]\nname = \"svc\"\nversion = \"0.1.0\"\nedition = \"2021\"\n\n[dependencies]\nserde = { version = \"1\", features = [\"derive\"] }\ntokio = { version = \"1\", features = [\"full\"] }\n\n[workspace]\n".to_owned(),
                ),
                (
                    "src/lib.rs".to_owned(),
                    "#[derive(serde::Serialize, serde::Deserialize)]\npub struct Job { pub id: u32 }\n\npub async fn run(job: Job) -> u32 {\n    tokio::task::yield_now().await;\n    job.id\n}\n".to_owned(),
                ),
                (
                    "tests/run.rs".to_owned(),
                    "#[tokio::test]\nasync fn runs() {\n    assert_eq!(svc::run(svc::Job { id: 7 }).await, 7);\n}\n".to_owned(),
                ),
                (".gitignore".to_owned(), "target/\n".to_owned()),
            ],
        )?;
        // The lock file and the sources, fetched once (not measured).
        let fetch = Command::new("cargo")
            .args(["fetch", "-q"])
            .current_dir(&repo)
            .status()?;
        if !fetch.success() {
            return Err("cargo fetch failed".into());
        }
        commit_all(&repo, "lock")?;
        let mut plan = Plan::from_toml_str(GATE_PLAN)?;
        let m = mode(&spec);
        plan.workspace = spec;
        let state = run_plan(plan, dir.path()).await?;
        let secs = |t: &str| {
            state
                .gate_runs
                .iter()
                .find_map(|g| match &g.scope {
                    GateScope::Phase { ticket, .. } if ticket.as_str() == t => {
                        Some(g.report.duration_ms as f64 / 1000.0)
                    }
                    _ => None,
                })
                .unwrap_or(f64::NAN)
        };
        println!(
            "| {m} | {:.1} s | {:.1} s | {:.1} s |",
            secs("T1"),
            secs("T2"),
            secs("T3")
        );
    }
    Ok(())
}
