//! `orch run`, `status`, `decide` and `resume` as a person uses them, with
//! real command agents (shell scripts) and real git; and `orch run` killed
//! with SIGKILL mid-agent, mid-gate and mid-merge, then resumed: every
//! ticket must end exactly as in an uninterrupted run, with no finished
//! phase run again.

use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::atomic::Ordering;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use assert_cmd::cargo::CommandCargoExt;
use orch_core::{EventKind, RunState, StateStore, TicketStatus};
use orch_examples::demo;

fn orch() -> std::process::Command {
    std::process::Command::cargo_bin("orch").unwrap()
}

fn output(cmd: &mut std::process::Command) -> (i32, String) {
    let out = cmd.output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

/// A repository with one commit, and a state directory beside it.
fn workspace(dir: &Path) -> (PathBuf, PathBuf) {
    let repo = dir.join("repo");
    demo::init_repo(&repo, &[("README.md", "demo\n")]).unwrap();
    (repo, dir.join("state"))
}

#[test]
fn escalate_decide_resume() {
    let dir = tempfile::tempdir().unwrap();
    shed(dir.path(), &[]);
    assert!(dir.path().join("state/state.db").exists());
}

/// A schema of its own in the test database for `test`: a URL whose
/// connections work in it (named after it in `pg_stat_activity`), and a
/// way to run SQL. Fails, naming the test, when no database is configured
/// (the tests that use it are ignored by default; `.ci/run` runs them).
/// Drop it with `DROP SCHEMA <schema> CASCADE`.
#[allow(clippy::type_complexity)]
fn pg_schema(
    test: &str,
    schema: &str,
) -> (
    String,
    Box<dyn Fn(String) -> Vec<tokio_postgres::SimpleQueryMessage>>,
) {
    let base = std::env::var("ORCH_TEST_DATABASE_URL").unwrap_or_else(|_| {
        panic!("{test} needs ORCH_TEST_DATABASE_URL, a PostgreSQL database (.ci/run sets it)")
    });
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let admin = base.clone();
    let sql = move |q: String| {
        rt.block_on(async {
            let (client, conn) = tokio_postgres::connect(&admin, tokio_postgres::NoTls)
                .await
                .unwrap();
            tokio::spawn(conn);
            client.simple_query(&q).await.unwrap()
        })
    };
    sql(format!(
        "DROP SCHEMA IF EXISTS {schema} CASCADE; CREATE SCHEMA {schema}"
    ));
    let sep = if base.contains('?') { '&' } else { '?' };
    let url = format!("{base}{sep}options=-c%20search_path%3D{schema}&application_name={schema}");
    (url, Box::new(sql))
}

/// The same as a person does it with the journal in PostgreSQL
/// (`--database-url`, in a schema of its own): `run.json` names the
/// database but holds no password, the SQLite file is never made, and a
/// command without the URL is refused with what to pass.
#[test]
#[ignore = "needs PostgreSQL: ORCH_TEST_DATABASE_URL (.ci/run sets it)"]
fn escalate_decide_resume_on_postgres() {
    let schema = format!("orch_cli_{}", std::process::id());
    let (url, sql) = pg_schema("escalate_decide_resume_on_postgres", &schema);
    let dir = tempfile::tempdir().unwrap();
    shed(dir.path(), &["--database-url", &url]);
    let state = dir.path().join("state");
    assert!(!state.join("state.db").exists(), "no SQLite journal");
    let info = std::fs::read_to_string(state.join("run.json")).unwrap();
    assert!(
        info.contains("\"database\": \"PostgreSQL database"),
        "{info}"
    );
    let events = sql(format!(
        "SELECT count(*) FROM {schema}.orch_events e JOIN {schema}.orch_runs r ON r.n = e.run WHERE r.run = 'shed'"
    ));
    let n: u64 = match &events[1] {
        tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).unwrap().parse().unwrap(),
        other => panic!("{other:?}"),
    };
    assert!(n > 10, "the run's events are in PostgreSQL: {n}");
    let (code, text) = output(
        orch()
            .args(["status", "--state", state.to_str().unwrap()])
            .env_remove("ORCH_DATABASE_URL"),
    );
    assert_eq!(code, 2, "{text}");
    assert!(
        text.contains("run shed keeps its journal in PostgreSQL database")
            && text.contains("--database-url or ORCH_DATABASE_URL"),
        "{text}"
    );
    // The same server, another schema: another journal, refused before
    // anything is made there.
    let other = format!("{schema}_other");
    let elsewhere = url.replace(
        &format!("search_path%3D{schema}"),
        &format!("search_path%3D{other}"),
    );
    assert_ne!(elsewhere, url);
    let (code, text) = output(
        orch()
            .args(["status", "--state", state.to_str().unwrap()])
            .args(["--database-url", &elsewhere]),
    );
    assert_eq!(code, 2, "{text}");
    assert!(text.contains(&format!("search_path={other}")), "{text}");
    // The URL from the environment works as well as the flag.
    let (code, text) = output(
        orch()
            .args(["status", "--json", "--state", state.to_str().unwrap()])
            .env("ORCH_DATABASE_URL", &url),
    );
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("\"status\": \"done\""), "{text}");
    sql(format!("DROP SCHEMA {schema} CASCADE"));
}

/// Runs the shed plan (`T-1` escalates until a person says how, `T-2`
/// waits for it) through `run`, `status`, `decide` and `resume`, each with
/// `extra` arguments.
fn shed(dir: &Path, extra: &[&str]) {
    let orch = || {
        let mut c = orch();
        c.env_remove("ORCH_DATABASE_URL");
        c
    };
    let (repo, state) = workspace(dir);
    // The agent does the work only when the prompt carries the person's hint.
    let plan = dir.join("plan.toml");
    std::fs::write(
        &plan,
        r#"
name = "ask"
default_role = "dev"
[agents.dev]
backend = { kind = "command", argv = ["sh", "-c", "prompt=$(cat); case \"$ORCH_TICKET:$prompt\" in T-2:*|*'use the blue one'*) echo blue > \"$ORCH_TICKET.txt\";; esac"] }
[[phases]]
name = "paint"
max_attempts = 1
gates = [{ kind = "command", name = "painted", argv = ["test", "-s", "{ticket}.txt"] }]
[[tickets]]
id = "T-1"
title = "Paint the shed"
effort = "1h"
[[tickets]]
id = "T-2"
title = "Varnish the shed"
effort = "1h"
depends_on = ["T-1"]
"#,
    )
    .unwrap();
    let s = state.to_str().unwrap();
    let (code, text) = output(
        orch()
            .args(["run", plan.to_str().unwrap(), "--repo"])
            .arg(&repo)
            .args(["--state", s, "--run", "shed"])
            .args(extra),
    );
    assert_eq!(code, 3, "paused: {text}");
    // The failed attempt is reported with its reason (the failing gate).
    let failed = text
        .lines()
        .find(|l| l.starts_with("T-1: paint attempt 1 failed: "))
        .unwrap_or_else(|| panic!("no failed-attempt line: {text}"));
    assert!(failed.contains("painted"), "{failed}");
    assert!(text.contains("T-1: ESCALATED"), "{text}");
    assert!(
        text.contains("decide: orch decide T-1 --approve|--retry NOTE|--skip|--abort"),
        "{text}"
    );

    let (code, text) = output(orch().args(["status", "--state", s]).args(extra));
    assert_eq!(code, 0, "{text}");
    assert!(
        text.contains("Decide on T-1: `orch decide T-1 --approve|--retry|--skip|--abort`"),
        "{text}"
    );

    let (code, text) = output(
        orch()
            .args(["decide", "T-2", "--approve", "--state", s])
            .args(extra),
    );
    assert_eq!(code, 2, "{text}");
    assert!(
        text.contains("T-2 is not waiting for a decision (waiting: T-1)"),
        "{text}"
    );
    let (code, text) = output(
        orch()
            .args(["decide", "T-1", "--approve", "--skip", "--state", s])
            .args(extra),
    );
    assert_eq!(code, 2, "one answer only: {text}");

    // Parts of a record without its title: refused.
    let (code, text) = output(
        orch()
            .args(["decide", "T-1", "--skip", "--context", "why", "--state", s])
            .args(extra),
    );
    assert_eq!(code, 2, "{text}");
    assert!(text.contains("--adr <TITLE>"), "{text}");

    // The answer, written down as a record; the person pastes a secret of
    // the deciding process into it by mistake.
    const SECRET: &str = "hunter2-0123456789abcdef";
    let (code, text) = output(
        orch()
            .args(["decide", "T-1", "--retry", "use the blue one", "--state", s])
            .args(["--adr", "Paint the shed blue", "--decider", "dana"])
            .args(["--alternative", "Leave it bare: it rots by spring"])
            .args([
                "--consequences",
                &format!("Blue it is; the shop login {SECRET} was shared."),
            ])
            .env("SHOP_PASSWORD", SECRET)
            .args(extra),
    );
    assert_eq!(code, 0, "{text}");
    let record = "docs/adr/ADR-001-paint-the-shed-blue.md";
    assert!(
        text.contains(&format!(
            "ADR-001 recorded: {record} (committed with T-1's next checkpoint; the state directory keeps it: "
        )),
        "{text}"
    );
    let queue = std::fs::read_to_string(state.join("DECISION_QUEUE.md")).unwrap();
    assert!(
        queue
            .contains("| retry | use the blue one | [ADR-001](adr/shed/ADR-001-paint-the-shed-blue.md) → `docs/adr/ADR-001-paint-the-shed-blue.md` |"),
        "{queue}"
    );

    let (code, text) = output(orch().args(["resume", "--state", s]).args(extra));
    assert_eq!(code, 0, "{text}");
    assert!(
        text.contains("T-1: done") && text.contains("T-2: done"),
        "{text}"
    );
    assert_eq!(
        demo::git(&repo, &["show", "orch/shed/T-1:T-1.txt"]).unwrap(),
        "blue"
    );
    // Committed on T-1's branch, and so merged into T-2's, without the
    // secret.
    for branch in ["orch/shed/T-1", "orch/shed/T-2"] {
        let adr = demo::git(&repo, &["show", &format!("{branch}:{record}")]).unwrap();
        assert!(adr.starts_with("# ADR-001: Paint the shed blue\n"), "{adr}");
        assert!(adr.contains("Deciders: dana"), "{adr}");
        assert!(adr.contains("- Leave it bare: it rots by spring"), "{adr}");
        assert!(adr.contains("Blue it is; the shop login"), "{adr}");
        assert!(!adr.contains(SECRET), "{adr}");
    }
}

/// Writes a plan whose one phase runs `true` as the agent, with these
/// tickets, and runs `orch run` on it with `args`; the run must be refused
/// (exit 2). Returns what it printed.
fn refused_run(dir: &Path, tickets: &str, args: &[&std::ffi::OsStr]) -> String {
    refused_run_with(dir, r#"["true"]"#, tickets, args)
}

/// [`refused_run`] with the agent's argv (TOML).
fn refused_run_with(dir: &Path, argv: &str, tickets: &str, args: &[&std::ffi::OsStr]) -> String {
    let plan = dir.join("plan.toml");
    std::fs::write(
        &plan,
        format!(
            r#"
name = "refused"
default_role = "dev"
[agents.dev]
backend = {{ kind = "command", argv = {argv} }}
[[phases]]
name = "work"
{tickets}"#
        ),
    )
    .unwrap();
    let (code, text) = output(orch().arg("run").arg(&plan).args(args));
    assert_eq!(code, 2, "{text}");
    text
}

#[test]
fn a_cyclic_plan_is_refused_before_anything_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let (repo, state) = workspace(dir.path());
    let text = refused_run(
        dir.path(),
        r#"
[[tickets]]
id = "A"
title = "a"
effort = "1h"
depends_on = ["B"]
[[tickets]]
id = "B"
title = "b"
effort = "1h"
depends_on = ["A"]
"#,
        &[
            "--repo".as_ref(),
            repo.as_ref(),
            "--state".as_ref(),
            state.as_ref(),
        ],
    );
    assert!(text.contains("dependency cycle: A -> B -> A"), "{text}");
    assert!(!state.exists(), "nothing may be written for a refused plan");
}

#[test]
fn a_directory_that_is_not_a_repository_is_refused_before_anything_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let plain = dir.path().join("plain");
    std::fs::create_dir_all(&plain).unwrap();
    let text = refused_run(
        dir.path(),
        r#"
[[tickets]]
id = "A"
title = "a"
effort = "1h"
"#,
        &["--repo".as_ref(), plain.as_ref()],
    );
    assert!(
        text.contains(&format!("{} is not a git repository", plain.display())),
        "{text}"
    );
    assert_eq!(
        std::fs::read_dir(&plain).unwrap().count(),
        0,
        "nothing may be written into it (no .orch state)"
    );
}

#[test]
fn an_agent_that_is_not_installed_is_refused_before_the_run_is_recorded() {
    let dir = tempfile::tempdir().unwrap();
    let (repo, state) = workspace(dir.path());
    let text = refused_run_with(
        dir.path(),
        r#"["no-such-agent-orch", "--yes"]"#,
        r#"
[[tickets]]
id = "A"
title = "a"
effort = "1h"
"#,
        &[
            "--repo".as_ref(),
            repo.as_ref(),
            "--state".as_ref(),
            state.as_ref(),
        ],
    );
    assert!(
        text.contains("role dev: no-such-agent-orch is not installed or not on PATH"),
        "{text}"
    );
    // Nothing was written, not even the state directory: there is
    // nothing to resume.
    assert!(!state.exists());
    let (code, text) = output(orch().args(["status", "--state"]).arg(&state));
    assert_eq!(code, 2, "{text}");
    assert!(text.contains("no run in"), "{text}");
}

// ------------------------------------------------------------------ crashes

const RUN: &str = "crashy";

/// Six tickets in two batches, two phases each; every agent and gate
/// leaves a marker (so the test knows where the run is) and takes a
/// moment; a post-merge hook makes batch merges take a moment too.
fn crash_plan(marks: &Path) -> String {
    let m = marks.display();
    format!(
        r#"
name = "crashy"
default_role = "dev"
[policy]
max_concurrency = 2
[agents.dev]
backend = {{ kind = "command", argv = ["sh", "-c", "cat > /dev/null; touch {m}/agent-$ORCH_TICKET-$ORCH_PHASE; sleep 0.3; mkdir -p work; echo \"$ORCH_TICKET $ORCH_PHASE\" >> work/$ORCH_TICKET.txt"] }}

[[phases]]
name = "build"
gates = [{{ kind = "command", name = "built", argv = ["sh", "-c", "touch {m}/gate-{{ticket}}-{{phase}}; sleep 0.3; grep -qx '{{ticket}} {{phase}}' work/{{ticket}}.txt"] }}]
[[phases]]
name = "check"
gates = [{{ kind = "command", name = "checked", argv = ["sh", "-c", "touch {m}/gate-{{ticket}}-{{phase}}; sleep 0.3; grep -qx '{{ticket}} {{phase}}' work/{{ticket}}.txt"] }}]

[[batch_gates]]
kind = "command"
name = "all work present"
argv = ["sh", "-c", "sleep 0.2; ls work | grep -q txt"]

[[batches]]
id = "X"
title = "first"
branch = "release/x"
tickets = ["A", "B", "C"]
[[batches]]
id = "Y"
title = "second"
branch = "release/y"
tickets = ["D", "E", "F"]

[[tickets]]
id = "A"
title = "a"
effort = "1h"
[[tickets]]
id = "B"
title = "b"
effort = "1h"
depends_on = ["A"]
[[tickets]]
id = "C"
title = "c"
effort = "2h"
[[tickets]]
id = "D"
title = "d"
effort = "1h"
depends_on = ["B", "C"]
[[tickets]]
id = "E"
title = "e"
effort = "1h"
[[tickets]]
id = "F"
title = "f"
effort = "1h"
depends_on = ["E"]
"#
    )
}

struct Setup {
    _dir: tempfile::TempDir,
    repo: PathBuf,
    state: PathBuf,
    plan: PathBuf,
    marks: PathBuf,
    /// The journal's PostgreSQL database (`--database-url`), if not SQLite.
    url: Option<String>,
}

fn crash_setup() -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let (repo, state) = workspace(dir.path());
    let marks = dir.path().join("marks");
    std::fs::create_dir_all(&marks).unwrap();
    let hook = repo.join(".git/hooks/post-merge");
    std::fs::write(
        &hook,
        format!(
            "#!/bin/sh\ncase \"$(git rev-parse --abbrev-ref HEAD)\" in release/*) touch {}/merge-$(git rev-parse --abbrev-ref HEAD | tr / -); sleep 0.5;; esac\n",
            marks.display()
        ),
    )
    .unwrap();
    std::process::Command::new("chmod")
        .arg("+x")
        .arg(&hook)
        .status()
        .unwrap();
    let plan = dir.path().join("plan.toml");
    std::fs::write(&plan, crash_plan(&marks)).unwrap();
    Setup {
        _dir: dir,
        repo,
        state,
        plan,
        marks,
        url: None,
    }
}

/// `orch run` of the setup's plan, repository, state and database.
fn orch_run(s: &Setup) -> std::process::Command {
    let mut cmd = orch();
    cmd.args(["run", s.plan.to_str().unwrap(), "--run", RUN, "--repo"])
        .arg(&s.repo)
        .arg("--state")
        .arg(&s.state)
        .args(s.url.iter().flat_map(|u| ["--database-url", u]));
    cmd
}

fn start(s: &Setup) -> Child {
    orch_run(s)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

/// What a finished run looks like from outside: each ticket branch's and
/// batch branch's tree, and the folded state's ticket statuses.
#[derive(Debug, PartialEq)]
struct Outcome {
    trees: Vec<(String, String)>,
    statuses: Vec<(String, TicketStatus, Vec<String>)>,
}

fn outcome(s: &Setup) -> (Outcome, Vec<orch_core::StoredEvent>) {
    let events = journal(s);
    let state = RunState::fold(events.iter().map(|e| &e.event));
    let mut trees = Vec::new();
    // Each ticket's last checkpoint (its branch is gone once its batch
    // merged and the run completed), and the batch branches.
    for t in ["A", "B", "C", "D", "E", "F"] {
        let ticket = &state.tickets[t];
        let last = ticket.phases_passed.last().expect("a phase passed");
        let commit = &ticket.checkpoints[last];
        let tree = demo::git(&s.repo, &["rev-parse", &format!("{commit}^{{tree}}")]).unwrap();
        trees.push((t.to_owned(), tree));
    }
    for b in ["release/x", "release/y"] {
        let tree = demo::git(&s.repo, &["rev-parse", &format!("{b}^{{tree}}")]).unwrap();
        trees.push((b.to_owned(), tree));
    }
    let statuses = state
        .tickets_by_id()
        .into_iter()
        .map(|(id, t)| {
            (
                id.to_string(),
                t.status,
                t.phases_passed.iter().map(|p| p.to_string()).collect(),
            )
        })
        .collect();
    (Outcome { trees, statuses }, events)
}

/// The uninterrupted run, once.
fn baseline() -> &'static Outcome {
    static B: OnceLock<Outcome> = OnceLock::new();
    B.get_or_init(|| {
        let s = crash_setup();
        let status = start(&s).wait().unwrap();
        assert_eq!(
            status.code(),
            Some(0),
            "the uninterrupted run must complete"
        );
        let (o, _) = outcome(&s);
        assert!(
            o.statuses
                .iter()
                .all(|(_, st, _)| *st == TicketStatus::Done)
        );
        o
    })
}

/// Starts `orch run` and returns once `marker` appears.
fn start_until(s: &Setup, marker: &str) -> Child {
    let mut child = start(s);
    wait_for_mark(s, marker, &mut child);
    child
}

/// Waits (a minute at most) until `marker` appears, while `child` runs.
fn wait_for_mark(s: &Setup, marker: &str, child: &mut Child) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !s.marks.join(marker).exists() {
        assert!(Instant::now() < deadline, "{marker} never appeared");
        if let Some(st) = child.try_wait().unwrap() {
            panic!("orch ended ({st}) before {marker}");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Kills `orch run` with SIGKILL once `marker` appears, then resumes.
fn crash_at(marker: &str) -> (Outcome, Vec<orch_core::StoredEvent>) {
    let s = crash_setup();
    let mut child = start_until(&s, marker);
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    // No waiting for what orch had started: nothing of it outlives orch.
    let (code, text) = output(orch().args(["resume", "--state"]).arg(&s.state));
    assert_eq!(code, 0, "resume must complete: {text}");
    outcome(&s)
}

fn check_no_rerun(events: &[orch_core::StoredEvent]) {
    let mut passed = std::collections::HashSet::new();
    for e in events {
        match &e.event.kind {
            EventKind::PhasePassed { ticket, phase, .. } => {
                passed.insert((ticket.clone(), phase.clone()));
            }
            EventKind::AgentStarted { ticket, phase, .. } => assert!(
                !passed.contains(&(ticket.clone(), phase.clone())),
                "{ticket} {phase} ran again after it passed"
            ),
            _ => {}
        }
    }
}

#[test]
fn sigkill_mid_agent_then_resume() {
    let (o, events) = crash_at("agent-B-build");
    assert_eq!(&o, baseline());
    check_no_rerun(&events);
    // B was mid-phase: rolled back to its base before running again.
    assert!(events.iter().any(|e| matches!(&e.event.kind,
        EventKind::RolledBack { ticket, phase: None, .. } if ticket.as_str() == "B")));
    let starts = events
        .iter()
        .filter(|e| matches!(&e.event.kind, EventKind::RunStarted { resumed: true, .. }))
        .count();
    assert_eq!(starts, 1);
}

#[test]
fn sigkill_mid_gate_then_resume() {
    let (o, events) = crash_at("gate-C-check");
    assert_eq!(&o, baseline());
    check_no_rerun(&events);
}

#[test]
fn sigkill_mid_merge_then_resume() {
    let (o, events) = crash_at("merge-release-x");
    assert_eq!(&o, baseline());
    check_no_rerun(&events);
    let merges = events
        .iter()
        .filter(
            |e| matches!(&e.event.kind, EventKind::MergeStarted { batch, .. } if batch.as_str() == "X"),
        )
        .count();
    assert_eq!(merges, 2, "the interrupted merge is started again, once");
}

/// `orch` killed right after a phase's checkpoint commit was made and
/// before the pass reached the journal (a post-commit hook marks the
/// moment): the resumed run finds the checkpoint and records the pass,
/// instead of rolling the commit back and running the phase again.
#[test]
fn sigkill_between_checkpoint_and_its_record_does_not_run_the_phase_again() {
    let s = crash_setup();
    let hook = s.repo.join(".git/hooks/post-commit");
    std::fs::write(
        &hook,
        format!(
            "#!/bin/sh\nif git log -1 --format=%B | grep -q 'Orch-Checkpoint: {RUN}/B/build/'; then touch {}/checkpoint-B-build; sleep 5; fi\n",
            s.marks.display()
        ),
    )
    .unwrap();
    std::process::Command::new("chmod")
        .arg("+x")
        .arg(&hook)
        .status()
        .unwrap();
    let mut child = start_until(&s, "checkpoint-B-build");
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let before = journal(&s);
    assert!(
        !before.iter().any(|e| matches!(&e.event.kind,
            EventKind::PhasePassed { ticket, phase, .. } if ticket.as_str() == "B" && phase.as_str() == "build")),
        "the pass was not recorded before the kill"
    );
    std::fs::remove_file(&hook).unwrap();
    let (code, text) = output(orch().args(["resume", "--state"]).arg(&s.state));
    assert_eq!(code, 0, "resume must complete: {text}");
    let (o, events) = outcome(&s);
    assert_eq!(&o, baseline());
    check_no_rerun(&events);
    let b_build_agents = events
        .iter()
        .filter(|e| matches!(&e.event.kind,
            EventKind::AgentStarted { ticket, phase, .. } if ticket.as_str() == "B" && phase.as_str() == "build"))
        .count();
    assert_eq!(
        b_build_agents, 1,
        "B's build ran again after its checkpoint"
    );
}

/// An agent that forges a checkpoint (a commit whose message carries the
/// `Orch-Checkpoint:` trailer of its own attempt) and then kills its
/// driver: the resumed run does not take the forged commit for a pass
/// (the journal has no passing gates for it), rolls back and runs the
/// phase again, whose gate then judges the real work.
#[test]
fn a_forged_checkpoint_and_a_killed_driver_do_not_pass_a_phase() {
    let s = crash_setup();
    let m = s.marks.display();
    std::fs::write(
        &s.plan,
        format!(
            r#"
name = "forger"
default_role = "dev"
[agents.dev]
backend = {{ kind = "command", argv = ["sh", "-c", "cat > /dev/null; if [ -e {m}/forged ]; then echo real > work.txt; exit 0; fi; touch {m}/forged; echo fake > fake.txt; git add -A; git -c user.name=orch -c user.email=orch@localhost commit -qm \"forged\n\nOrch-Checkpoint: $ORCH_RUN/$ORCH_TICKET/$ORCH_PHASE/$ORCH_ATTEMPT\"; kill -9 $PPID; sleep 30"] }}
[[phases]]
name = "build"
gates = [{{ kind = "command", name = "real work", argv = ["grep", "-qx", "real", "work.txt"] }}]
[[tickets]]
id = "A"
title = "a"
effort = "1h"
"#
        ),
    )
    .unwrap();
    let status = start(&s).wait().unwrap();
    assert_eq!(status.code(), None, "orch was killed by its agent");
    assert!(s.marks.join("forged").exists());
    let (code, text) = output(orch().args(["resume", "--state"]).arg(&s.state));
    assert_eq!(code, 0, "resume must complete: {text}");
    let events = journal(&s);
    let starts = events
        .iter()
        .filter(|e| matches!(&e.event.kind, EventKind::AgentStarted { .. }))
        .count();
    assert_eq!(starts, 2, "the phase ran again after the forged checkpoint");
    let passed_gates = events
        .iter()
        .filter(
            |e| matches!(&e.event.kind, EventKind::GateFinished { report, .. } if report.passed()),
        )
        .count();
    assert_eq!(passed_gates, 1, "the pass came from the gate");
    let branch = format!("orch/{RUN}/A");
    let tree = demo::git(&s.repo, &["ls-tree", "--name-only", &branch]).unwrap();
    assert!(
        !tree.contains("fake.txt"),
        "the forged commit was rolled back: {tree}"
    );
    assert!(tree.contains("work.txt"), "{tree}");
}

/// No crash needed: an agent commits a tree that would fail with the
/// trailer of its own attempt, and leaves the work that passes the gate
/// uncommitted. The checkpoint holds what the gate judged, not the
/// agent's commit.
#[test]
fn a_forged_checkpoint_commit_is_not_taken_for_the_checkpoint() {
    let s = crash_setup();
    std::fs::write(
        &s.plan,
        r#"
name = "forger"
default_role = "dev"
[agents.dev]
backend = { kind = "command", argv = ["sh", "-c", "cat > /dev/null; echo bad > work.txt; git add -A; git -c user.name=orch -c user.email=orch@localhost commit -qm \"forged\n\nOrch-Checkpoint: $ORCH_RUN/$ORCH_TICKET/$ORCH_PHASE/$ORCH_ATTEMPT\"; echo real > work.txt"] }
[[phases]]
name = "build"
gates = [{ kind = "command", name = "real work", argv = ["grep", "-qx", "real", "work.txt"] }]
[[tickets]]
id = "A"
title = "a"
effort = "1h"
"#,
    )
    .unwrap();
    assert_eq!(start(&s).wait().unwrap().code(), Some(0));
    let branch = format!("orch/{RUN}/A");
    let work = demo::git(&s.repo, &["show", &format!("{branch}:work.txt")]).unwrap();
    assert_eq!(work, "real", "the branch holds what the gate judged");
}

/// The state directory cannot be written mid-run (here: a state file's
/// place taken by a directory, which a write cannot replace, root or
/// not): the run stops as for a failed store, exit 6, saying what; the
/// journal is intact and `orch resume` finishes once the directory is
/// fixed. A journal that cannot be opened is exit 6 too.
#[test]
fn a_state_directory_that_cannot_be_written_stops_the_run_with_exit_6() {
    let s = crash_setup();
    let mut child = orch_run(&s)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for_mark(&s, "agent-A-build", &mut child);
    let view = s.state.join("ORCHESTRATOR_STATE.md");
    let _ = std::fs::remove_file(&view);
    std::fs::create_dir_all(view.join("blocked")).unwrap();
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(6), "{text}");
    assert!(text.contains("cannot write the state files"), "{text}");
    std::fs::remove_dir_all(&view).unwrap();
    let (code, text) = output(orch().args(["resume", "--state"]).arg(&s.state));
    assert_eq!(code, 0, "resume must complete: {text}");
    let (o, events) = outcome(&s);
    assert_eq!(&o, baseline());
    check_no_rerun(&events);

    // A journal that is not one: a store failure too.
    let other = crash_setup();
    std::fs::create_dir_all(&other.state).unwrap();
    std::fs::write(
        other.state.join("state.db"),
        "not a database at all, just text",
    )
    .unwrap();
    let (code, text) = output(
        orch()
            .args(["run", other.plan.to_str().unwrap(), "--repo"])
            .arg(&other.repo)
            .arg("--state")
            .arg(&other.state),
    );
    assert_eq!(code, 6, "{text}");
    assert!(text.contains("state.db"), "{text}");
}

/// A batch whose `branch` is the branch checked out in the repository
/// (the one the person works on) is not merged into: git's own guard is
/// not overridden, the batch fails saying why, and the branch is as it
/// was.
#[test]
fn a_batch_branch_that_is_checked_out_is_refused() {
    let s = crash_setup();
    let current = demo::git(&s.repo, &["rev-parse", "--abbrev-ref", "HEAD"]).unwrap();
    let before = demo::git(&s.repo, &["rev-parse", "HEAD"]).unwrap();
    let plan = std::fs::read_to_string(&s.plan)
        .unwrap()
        .replace("branch = \"release/x\"", &format!("branch = \"{current}\""));
    std::fs::write(&s.plan, plan).unwrap();
    let (code, text) = output(&mut orch_run(&s));
    assert_eq!(code, 1, "{text}");
    assert!(
        text.contains("a batch branch must not be checked out anywhere"),
        "{text}"
    );
    assert_eq!(demo::git(&s.repo, &["rev-parse", "HEAD"]).unwrap(), before);
    assert_eq!(
        demo::git(&s.repo, &["rev-parse", "--abbrev-ref", "HEAD"]).unwrap(),
        current
    );
}

/// Test definition freezes `tests/**`; the implementation agent's first
/// attempt "fixes" a failing test by editing it, deletes another and adds
/// a third: the attempt fails before its gates, naming each file with the
/// diff, which is the feedback of the next attempt; that one puts the
/// tests back as the feedback asks and passes. The branch holds the tests
/// as written. The same for the frozen `[lib]` table of `Cargo.toml`
/// (`harness = false`), while a dependency may still be added.
#[test]
fn an_implementation_that_changes_frozen_tests_does_not_pass() {
    let s = crash_setup();
    std::fs::write(
        &s.plan,
        r#"
name = "frozen"
default_role = "dev"
[agents.dev]
backend = { kind = "command", argv = ["sh", "-c", "cat > /dev/null; case $ORCH_PHASE-$ORCH_ATTEMPT in tests-*) mkdir -p tests; echo 'assert add(2, 2) == 4' > tests/test_add.txt; echo 'assert sub(3, 1) == 2' > tests/test_sub.txt; printf '[lib]\\nharness = true\\n[dependencies]\\n' > Cargo.toml;; impl-1) echo 'assert True' > tests/test_add.txt; rm tests/test_sub.txt; echo 'assert True' > tests/test_new.txt; printf '[lib]\\nharness = false\\n' > Cargo.toml; echo impl > impl.txt;; impl-*) git checkout -q HEAD -- tests Cargo.toml; rm -f tests/test_new.txt; printf 'serde = 1\\n' >> Cargo.toml; echo impl > impl.txt;; esac"] }
[[phases]]
name = "tests"
freeze = ["tests/**", "Cargo.toml#lib"]
[[phases]]
name = "impl"
max_attempts = 2
gates = [{ kind = "command", name = "built", argv = ["test", "-s", "impl.txt"] }]
[[tickets]]
id = "A"
title = "a"
effort = "1h"
"#,
    )
    .unwrap();
    let (code, text) = output(&mut orch_run(&s));
    assert_eq!(code, 0, "{text}");
    let events = journal(&s);
    let feedback = failed_feedback(&events, "impl", 1);
    for f in [
        "tests/test_add.txt",
        "tests/test_sub.txt",
        "tests/test_new.txt",
        "Cargo.toml#lib",
    ] {
        assert!(
            feedback.contains(&format!("{f} (frozen by tests)")),
            "{f}: {feedback}"
        );
    }
    assert!(
        feedback.contains("-assert add(2, 2) == 4"),
        "the diff is shown: {feedback}"
    );
    // The gate of that attempt never ran: the frozen check came first.
    let built_runs = events
        .iter()
        .filter(|e| matches!(&e.event.kind, EventKind::GateStarted { gate, .. } if gate == "built"))
        .count();
    assert_eq!(built_runs, 1, "only the second attempt reached its gate");
    let branch = format!("orch/{RUN}/A");
    let add = demo::git(&s.repo, &["show", &format!("{branch}:tests/test_add.txt")]).unwrap();
    assert_eq!(add, "assert add(2, 2) == 4");
    let sub = demo::git(&s.repo, &["show", &format!("{branch}:tests/test_sub.txt")]).unwrap();
    assert_eq!(sub, "assert sub(3, 1) == 2");
    assert!(demo::git(&s.repo, &["show", &format!("{branch}:tests/test_new.txt")]).is_err());
    // The harness setting is frozen; the rest of Cargo.toml was not.
    let cargo = demo::git(&s.repo, &["show", &format!("{branch}:Cargo.toml")]).unwrap();
    assert!(
        cargo.contains("harness = true") && cargo.contains("serde = 1"),
        "{cargo}"
    );
}

/// An agent that plays the common tricks instead of doing the work, all
/// at once, through `orch run`: it plants a passing JUnit report dated an
/// hour ahead, leaves a `setsid` daemon that keeps rewriting that report,
/// and hides a key in a file only a `.ignore` excludes. The ticket does
/// not pass: the test gate reads what its own command wrote (the work is
/// not done: a failure), the secret scan finds the key, and nothing of
/// the agent is left running. (The defences overlap: the daemon is
/// killed when the agent ends, and a report it wrote later would be
/// dated after the gate's command; `crates/orch-core/tests/containment.rs`
/// and the gate tests check each alone.)
#[test]
fn an_agent_playing_tricks_through_orch_run_does_not_pass() {
    let s = crash_setup();
    let pass =
        r#"<testsuite name=\"s\" tests=\"1\" failures=\"0\"><testcase name=\"t\"/></testsuite>"#;
    let fail = r#"<testsuite name=\"s\" tests=\"1\" failures=\"1\"><testcase name=\"t\"><failure message=\"not done\"/></testcase></testsuite>"#;
    std::fs::write(
        &s.plan,
        format!(
            r#"
name = "tricks"
default_role = "dev"
[agents.dev]
backend = {{ kind = "command", argv = ["sh", "-c", "cat > /dev/null; printf '{pass}' > r.xml; touch -d '+1 hour' r.xml; setsid sh -c 'echo $$ > {m}/daemon.pid; while :; do printf \"{pass2}\" > r.xml; sleep 0.01; done' > /dev/null 2>&1 & while [ ! -s {m}/daemon.pid ]; do sleep 0.01; done; echo 'aws = AKIAABCDEFGHIJKLMNOP' > notes.txt; echo notes.txt > .ignore; echo all done"] }}
[[phases]]
name = "impl"
max_attempts = 1
on_exhausted = "fail"
gates = [
  {{ kind = "tests", name = "tests", format = "junit", report = "r.xml", argv = ["sh", "-c", "test -e work.txt && printf '{pass}' > r.xml || printf '{fail}' > r.xml"] }},
  {{ kind = "forbidden_patterns", name = "secrets", builtin = ["secrets"] }},
]
[[tickets]]
id = "A"
title = "a"
effort = "1h"
"#,
            pass2 = pass.replace('\\', "\\\\\\"),
            m = s.marks.display(),
        ),
    )
    .unwrap();
    let (code, text) = output(&mut orch_run(&s));
    assert_eq!(code, 1, "the ticket must fail: {text}");
    let events = journal(&s);
    let reports: Vec<(String, bool, String)> = events
        .iter()
        .filter_map(|e| match &e.event.kind {
            EventKind::GateFinished { report, .. } => {
                Some((report.gate.clone(), report.passed(), report.reason.clone()))
            }
            _ => None,
        })
        .collect();
    let tests = reports
        .iter()
        .find(|r| r.0 == "tests")
        .expect("the test gate ran");
    assert!(
        !tests.1 && tests.2.contains("1 of 1 tests failed"),
        "{tests:?}"
    );
    let secrets = reports
        .iter()
        .find(|r| r.0 == "secrets")
        .expect("the scan ran");
    assert!(!secrets.1 && secrets.2.contains("notes.txt"), "{secrets:?}");
    let tree = tree_of(&s, "A");
    let left = processes_in_within(&tree, Duration::from_secs(3));
    assert!(left.is_empty(), "the agent's daemon outlived it: {left:?}");
    let daemon: i32 = std::fs::read_to_string(s.marks.join("daemon.pid"))
        .expect("the agent started its daemon")
        .trim()
        .parse()
        .unwrap();
    assert!(!alive(daemon), "the daemon outlived the agent");
    let state = RunState::fold(events.iter().map(|e| &e.event));
    assert_eq!(state.tickets["A"].status, TicketStatus::Failed);
}

#[test]
fn a_second_orch_on_a_running_run_is_refused_and_changes_nothing() {
    let s = crash_setup();
    let mut child = start_until(&s, "agent-A-build");
    let before = journal(&s);
    let record = std::fs::read(s.state.join("run.json")).unwrap();
    let (code, text) = output(orch().args(["resume", "--state"]).arg(&s.state));
    assert_eq!(code, 7, "{text}");
    assert!(
        text.contains("run crashy is being driven by another engine")
            && text.contains("state.db-run-crashy.lock"),
        "{text}"
    );
    // Nor may `orch run` of the same run id, with other options.
    let (code, text) = output(
        orch()
            .args([
                "run",
                s.plan.to_str().unwrap(),
                "--run",
                RUN,
                "--concurrency",
                "1",
            ])
            .arg("--repo")
            .arg(&s.repo)
            .arg("--state")
            .arg(&s.state),
    );
    assert_eq!(code, 7, "{text}");
    assert_eq!(
        std::fs::read(s.state.join("run.json")).unwrap(),
        record,
        "run.json is left as the running orch wrote it"
    );
    // It wrote nothing: the journal only grew by the first run's events.
    let after = journal(&s);
    assert_eq!(after[..before.len()], before[..]);
    assert!(
        !after
            .iter()
            .any(|e| matches!(&e.event.kind, EventKind::RunStarted { resumed: true, .. })),
        "the refused resume must not start the run again"
    );
    assert_eq!(child.wait().unwrap().code(), Some(0));
    let (o, events) = outcome(&s);
    assert_eq!(&o, baseline());
    check_no_rerun(&events);
    // The finished run is free again: resuming it now is allowed.
    let (code, text) = output(orch().args(["resume", "--state"]).arg(&s.state));
    assert_eq!(code, 0, "{text}");
}

/// `orch resume --standby` waits, writing nothing, while another `orch`
/// drives the run, and finishes the run once that one is killed; one
/// stopped while it waits exits as a stopped run does, having written
/// nothing.
#[test]
fn a_standby_takes_over_a_killed_run_and_finishes_it() {
    let s = crash_setup();
    let mut child = start_until(&s, "agent-A-build");
    let standby = |log: &Path| {
        let err = std::fs::File::create(log).unwrap();
        orch()
            .args(["resume", "--standby", "--state"])
            .arg(&s.state)
            .stdout(Stdio::null())
            .stderr(err)
            .spawn()
            .unwrap()
    };
    let standing_by = |log: &Path| {
        wait_for(60, "a standby standing by", log, || {
            std::fs::read_to_string(log).is_ok_and(|text| {
                text.contains(
                    "standing by: state store: run crashy is being driven by another engine",
                )
            })
        });
    };
    let resumes = |events: &[orch_core::StoredEvent]| {
        events
            .iter()
            .filter(|e| matches!(&e.event.kind, EventKind::RunStarted { resumed: true, .. }))
            .count()
    };
    let (first, second) = (s.marks.join("standby-1.log"), s.marks.join("standby-2.log"));
    let mut stopped = standby(&first);
    let mut taker = standby(&second);
    standing_by(&first);
    standing_by(&second);
    signal(&stopped, nix::sys::signal::Signal::SIGTERM);
    let code = exit_within(&mut stopped, 30, "the standby told to stop");
    assert_eq!(
        code,
        Some(143),
        "{}",
        std::fs::read_to_string(&first).unwrap()
    );
    assert_eq!(
        resumes(&journal(&s)),
        0,
        "a standby wrote to a run it does not hold"
    );
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let code = exit_within(&mut taker, 120, "the standby taking over");
    assert_eq!(
        code,
        Some(0),
        "{}",
        std::fs::read_to_string(&second).unwrap()
    );
    let (o, events) = outcome(&s);
    assert_eq!(&o, baseline());
    check_no_rerun(&events);
    assert_eq!(resumes(&events), 1);
}

/// The feedback of the failed attempt `attempt` of `phase`.
fn failed_feedback(events: &[orch_core::StoredEvent], phase: &str, attempt: u32) -> String {
    events
        .iter()
        .find_map(|e| match &e.event.kind {
            EventKind::AttemptFailed {
                phase: p,
                attempt: a,
                feedback,
                ..
            } if p.as_str() == phase && *a == attempt => Some(feedback.clone()),
            _ => None,
        })
        .unwrap_or_else(|| panic!("attempt {attempt} of {phase} did not fail"))
}

/// Where the journal says `ticket`'s work tree is (its slot); it must
/// have one.
fn tree_of(s: &Setup, ticket: &str) -> PathBuf {
    journal(s)
        .iter()
        .rev()
        .find_map(|e| match &e.event.kind {
            EventKind::WorkspaceReady {
                ticket: t, path, ..
            } if t.as_str() == ticket => Some(PathBuf::from(path)),
            _ => None,
        })
        .unwrap_or_else(|| panic!("{ticket} never had a work tree"))
}

/// The run's journal as it is now.
fn journal(s: &Setup) -> Vec<orch_core::StoredEvent> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let store: Box<dyn StateStore> = match &s.url {
            Some(url) => Box::new(orch_state::PgStore::connect(url).await.unwrap()),
            None => Box::new(orch_state::SqliteStore::open(s.state.join("state.db")).unwrap()),
        };
        store.read(&RUN.parse().unwrap(), 0, 100_000).await.unwrap()
    })
}

/// With the journal in PostgreSQL, the connection holding the run's lock
/// is lost mid-run (the server ends it): `orch run` stops at once (exit 6)
/// and writes nothing more, since another `orch` could take the run from
/// then on; `orch resume` finishes the run as an uninterrupted one would.
#[test]
#[ignore = "needs PostgreSQL: ORCH_TEST_DATABASE_URL (.ci/run sets it)"]
fn a_lost_postgres_lock_stops_orch_and_resume_finishes_the_run() {
    let test = "a_lost_postgres_lock_stops_orch_and_resume_finishes_the_run";
    let schema = format!("orch_cli_lock_{}", std::process::id());
    let (url, sql) = pg_schema(test, &schema);
    let mut s = crash_setup();
    s.url = Some(url.clone());
    let mut child = start_until(&s, "agent-A-build");
    let killed = sql(format!(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
         WHERE application_name = '{schema} (orch run {RUN})'"
    ));
    let rows = killed
        .iter()
        .filter(|m| matches!(m, tokio_postgres::SimpleQueryMessage::Row(_)))
        .count();
    assert_eq!(rows, 1, "the run's lock had one connection");
    assert_eq!(child.wait().unwrap().code(), Some(6), "a store error");
    let events = journal(&s);
    assert!(
        !events
            .iter()
            .any(|e| matches!(&e.event.kind, EventKind::RunFinished { .. })),
        "nothing written after the loss: {events:#?}"
    );
    let (code, text) = output(
        orch()
            .args(["resume", "--state"])
            .arg(&s.state)
            .args(["--database-url", &url]),
    );
    assert_eq!(code, 0, "resume must complete: {text}");
    let (o, events) = outcome(&s);
    assert_eq!(&o, baseline());
    check_no_rerun(&events);
    sql(format!("DROP SCHEMA {schema} CASCADE"));
}

/// Twelve tickets in three batches, three phases each; every agent logs
/// its start (ticket, phase, pid) and takes a moment; every phase
/// checkpoints.
fn campaign_plan(marks: &Path) -> String {
    let m = marks.display();
    let mut plan = format!(
        r#"
name = "campaign"
default_role = "dev"
[policy]
max_concurrency = 3
[agents.dev]
backend = {{ kind = "command", argv = ["sh", "-c", "cat > /dev/null; echo \"start $ORCH_TICKET $ORCH_PHASE $$\" >> {m}/log; sleep 0.2; mkdir -p work; echo \"$ORCH_TICKET $ORCH_PHASE\" >> work/$ORCH_TICKET.txt"] }}
[[batch_gates]]
kind = "command"
name = "all work present"
argv = ["sh", "-c", "ls work | grep -q txt"]
"#
    );
    for phase in ["plan", "build", "check"] {
        plan.push_str(&format!(
            "[[phases]]\nname = \"{phase}\"\ngates = [{{ kind = \"command\", name = \"{phase}-ok\", argv = [\"sh\", \"-c\", \"sleep 0.05; grep -qx '{{ticket}} {phase}' work/{{ticket}}.txt\"] }}]\n"
        ));
    }
    for b in 0..3 {
        let ids: Vec<String> = (0..4).map(|i| format!("\"T{}\"", b * 4 + i)).collect();
        plan.push_str(&format!(
            "[[batches]]\nid = \"B{b}\"\ntitle = \"b\"\ntickets = [{}]\n",
            ids.join(", ")
        ));
    }
    for i in 0..12 {
        let deps = match i {
            0 | 1 | 4 | 8 => String::new(),
            i if i % 4 == 0 => format!("depends_on = [\"T{}\"]\n", i - 4),
            i => format!("depends_on = [\"T{}\"]\n", i - 1),
        };
        plan.push_str(&format!(
            "[[tickets]]\nid = \"T{i}\"\ntitle = \"t\"\neffort = \"1h\"\n{deps}"
        ));
    }
    plan
}

/// The campaign's tickets' and batches' trees.
/// Each ticket's last checkpoint's tree (its branch is gone once its
/// batch merged and the run completed) and each batch branch's.
fn campaign_trees(s: &Setup) -> Vec<(String, String)> {
    let events = journal(s);
    let state = RunState::fold(events.iter().map(|e| &e.event));
    let tree = |rev: &str| demo::git(&s.repo, &["rev-parse", &format!("{rev}^{{tree}}")]).unwrap();
    (0..12)
        .map(|i| {
            let t = &state.tickets[format!("T{i}").as_str()];
            let last = t.phases_passed.last().expect("a phase passed");
            (format!("T{i}"), tree(&t.checkpoints[last]))
        })
        .chain((0..3).map(|b| {
            let b = format!("orch/{RUN}/batch-B{b}");
            let t = tree(&b);
            (b, t)
        }))
        .collect()
}

/// `kill -9` of `orch` at 20 and more random moments (a seeded generator,
/// so a failure can be repeated), resumed each time, then run to the end:
/// no process a killed driver started is left running, no phase that
/// made its checkpoint runs again, and the branches are exactly those of
/// an uninterrupted run.
#[test]
#[ignore = "a crash campaign of about a minute; .ci/run runs it"]
fn crash_campaign_kill_9_at_random_moments() {
    let seed: u64 = std::env::var("ORCH_CAMPAIGN_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5eed_0fc0_ffee);
    eprintln!("crash campaign seed {seed} (set ORCH_CAMPAIGN_SEED to repeat another)");
    let mut rng = seed;
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    // The uninterrupted run.
    let base = crash_setup();
    std::fs::write(&base.plan, campaign_plan(&base.marks)).unwrap();
    assert_eq!(start(&base).wait().unwrap().code(), Some(0));
    let expected = campaign_trees(&base);

    let s = crash_setup();
    std::fs::write(&s.plan, campaign_plan(&s.marks)).unwrap();
    eprintln!("campaign directory: {}", s.marks.display());
    let mut kills = 0;
    let resume = |logged: bool| {
        let mut cmd = orch();
        cmd.args(["resume", "--state"])
            .arg(&s.state)
            .stdout(Stdio::null());
        if logged {
            let log = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(s.marks.join("resumes.log"))
                .unwrap();
            cmd.env("ORCH_LOG", "info").stderr(log);
        } else {
            cmd.stderr(Stdio::null());
        }
        cmd.spawn().unwrap()
    };
    let mut child = start(&s);
    let mut finished = None;
    while kills < 24 {
        let delay = Duration::from_millis(100 + next() % 400);
        let deadline = Instant::now() + delay;
        while Instant::now() < deadline && finished.is_none() {
            finished = child.try_wait().unwrap();
            std::thread::sleep(Duration::from_millis(5));
        }
        if finished.is_some() {
            break;
        }
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        kills += 1;
        // Nothing the killed driver started runs on: its agents (pids in
        // the log) are gone within moments (its watchdog kills them).
        let log = std::fs::read_to_string(s.marks.join("log")).unwrap_or_default();
        for pid in log
            .lines()
            .filter_map(|l| l.split_whitespace().nth(3)?.parse().ok())
        {
            assert!(
                gone_within(pid, Duration::from_secs(3)),
                "after kill {kills}: agent {pid} outlived its driver"
            );
        }
        let tree = s.repo.join(".orch");
        let left = processes_in_within(&tree, Duration::from_secs(3));
        assert!(
            left.is_empty(),
            "after kill {kills}, still running: {left:?}"
        );
        child = resume(true);
    }
    // The last resume runs to the end.
    let deadline = Instant::now() + Duration::from_secs(180);
    let finished = loop {
        if let Some(st) = finished.or_else(|| child.try_wait().unwrap()) {
            break st;
        }
        assert!(Instant::now() < deadline, "the last resume did not finish");
        std::thread::sleep(Duration::from_millis(20));
    };
    let failures: Vec<String> = journal(&s)
        .iter()
        .filter_map(|e| match &e.event.kind {
            EventKind::TicketFailed { ticket, reason } => Some(format!("{ticket}: {reason}")),
            EventKind::BatchFailed { batch, reason } => Some(format!("{batch}: {reason}")),
            _ => None,
        })
        .collect();
    assert_eq!(
        finished.code(),
        Some(0),
        "the last resume completes: {failures:#?}"
    );
    assert!(kills >= 20, "only {kills} kills before the run finished");
    let _ = resume;

    let events = journal(&s);
    check_no_rerun(&events);
    // The agents' own log agrees with the journal: every start recorded,
    // none unrecorded.
    let log = std::fs::read_to_string(s.marks.join("log")).unwrap();
    let mut logged: std::collections::HashMap<(String, String), usize> = Default::default();
    for l in log.lines() {
        let f: Vec<&str> = l.split_whitespace().collect();
        *logged.entry((f[1].into(), f[2].into())).or_default() += 1;
    }
    let mut journaled: std::collections::HashMap<(String, String), usize> = Default::default();
    for e in &events {
        if let EventKind::AgentStarted { ticket, phase, .. } = &e.event.kind {
            *journaled
                .entry((ticket.to_string(), phase.to_string()))
                .or_default() += 1;
        }
    }
    // Write-ahead: an agent may be recorded and killed before it logged;
    // never the other way round.
    for (key, n) in &logged {
        let recorded = journaled.get(key).copied().unwrap_or(0);
        assert!(
            *n <= recorded,
            "{key:?}: the agent ran {n} times, the journal records {recorded} starts"
        );
    }
    // Each phase's checkpoint was made once: no checkpointed phase redone
    // (the history of each ticket's last checkpoint: its branch is gone
    // once its batch merged).
    let state = RunState::fold(events.iter().map(|e| &e.event));
    for i in 0..12 {
        let t = &state.tickets[format!("T{i}").as_str()];
        let last = &t.checkpoints[t.phases_passed.last().expect("a phase passed")];
        let history = demo::git(
            &s.repo,
            &[
                "log",
                last,
                "--format=%(trailers:key=Orch-Checkpoint,valueonly)",
            ],
        )
        .unwrap();
        for phase in ["plan", "build", "check"] {
            let made = history
                .lines()
                .filter(|l| l.starts_with(&format!("{RUN}/T{i}/{phase}/")))
                .count();
            assert_eq!(made, 1, "T{i} {phase}: {made} checkpoints");
        }
    }
    assert_eq!(state.count(TicketStatus::Done), 12);
    assert!(
        state
            .agents
            .values()
            .all(|a| a.status != orch_core::AgentStatus::Running),
        "no agent left running in the registry"
    );
    assert_eq!(
        campaign_trees(&s),
        expected,
        "same result as without crashes"
    );
    eprintln!(
        "crash campaign: {kills} kills, {} agent starts",
        log.lines().count()
    );
}

/// One proxied connection: whether it is cut, and the server's side.
type Upstream = (Arc<std::sync::atomic::AtomicBool>, std::net::TcpStream);

/// A TCP proxy to `target` on 127.0.0.1 (a connection closed on one side
/// is closed on the other) whose connections can be cut like a network
/// partition seen from one side: the server's side of every
/// connection open at the cut is closed (the server ends those sessions
/// and frees their locks at once), the client's side stays open and
/// silent (the client sees nothing close; what it sends is never
/// answered). Connections made after the cut go through: the network has
/// healed for whoever connects again.
struct Partition {
    addr: std::net::SocketAddr,
    /// Per connection: cut?, and the server's side.
    conns: Arc<std::sync::Mutex<Vec<Upstream>>>,
    /// Client sides kept open after the cut.
    _held: Arc<std::sync::Mutex<Vec<std::net::TcpStream>>>,
}

impl Partition {
    fn to(target: &str) -> Partition {
        use std::net::{TcpListener, TcpStream};
        use std::sync::atomic::AtomicBool;
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let conns: Arc<std::sync::Mutex<Vec<Upstream>>> = Arc::default();
        let held: Arc<std::sync::Mutex<Vec<TcpStream>>> = Arc::default();
        let (cs, h, target) = (conns.clone(), held.clone(), target.to_owned());
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { return };
                h.lock().unwrap().push(client.try_clone().unwrap());
                let Ok(up) = TcpStream::connect(&target) else {
                    continue;
                };
                let cut = Arc::new(AtomicBool::new(false));
                cs.lock()
                    .unwrap()
                    .push((cut.clone(), up.try_clone().unwrap()));
                for (mut from, mut to) in [
                    (client.try_clone().unwrap(), up.try_clone().unwrap()),
                    (up, client),
                ] {
                    let cut = cut.clone();
                    std::thread::spawn(move || {
                        let mut buf = [0u8; 16 * 1024];
                        loop {
                            match std::io::Read::read(&mut from, &mut buf) {
                                Ok(n) if n > 0 && !cut.load(Ordering::SeqCst) => {
                                    if std::io::Write::write_all(&mut to, &buf[..n]).is_err() {
                                        return;
                                    }
                                }
                                // Cut: stop forwarding, close nothing
                                // on the client's side.
                                _ if cut.load(Ordering::SeqCst) => return,
                                // Closed or failed: so is the other side
                                // (a killed client's session ends, and
                                // its locks are freed).
                                _ => {
                                    let _ = to.shutdown(std::net::Shutdown::Both);
                                    return;
                                }
                            }
                        }
                    });
                }
            }
        });
        Partition {
            addr,
            conns,
            _held: held,
        }
    }

    /// A partition in front of the test database, and `url` (of that
    /// database) through it.
    fn before(url: &str) -> (Partition, String) {
        let base = std::env::var("ORCH_TEST_DATABASE_URL").unwrap();
        let target = base
            .split('@')
            .nth(1)
            .and_then(|rest| rest.split('/').next())
            .unwrap_or("127.0.0.1:5432")
            .to_owned();
        let proxy = Partition::to(&target);
        let url = url.replacen(&target, &proxy.addr.to_string(), 1);
        (proxy, url)
    }

    /// Cuts every connection open now.
    fn cut(&self) {
        for (cut, up) in self.conns.lock().unwrap().drain(..) {
            cut.store(true, Ordering::SeqCst);
            let _ = up.shutdown(std::net::Shutdown::Both);
        }
    }
}

/// Ten tickets whose agents each tick into a log for about 8 s.
fn ticking_plan(marks: &Path) -> String {
    let m = marks.display();
    let mut plan = format!(
        r#"
name = "ticking"
default_role = "dev"
[policy]
max_concurrency = 4
[agents.dev]
backend = {{ kind = "command", argv = ["sh", "-c", "cat > /dev/null; touch {m}/agent-$ORCH_TICKET; for i in $(seq 1 160); do echo \"$ORCH_TICKET $$ $(date +%s%3N)\" >> {m}/ticks; sleep 0.05; done; echo $ORCH_TICKET > $ORCH_TICKET.txt"] }}
[[phases]]
name = "build"
gates = [{{ kind = "command", name = "built", argv = ["test", "-s", "{{ticket}}.txt"] }}]
"#
    );
    for i in 0..10 {
        plan.push_str(&format!(
            "[[tickets]]\nid = \"T{i}\"\ntitle = \"t\"\neffort = \"1h\"\n"
        ));
    }
    plan
}

/// A partitioned PostgreSQL driver: its connections look open, the server
/// has dropped them (and freed its lock), and a standby `orch resume`
/// starts at once. The old driver notices within seconds (its lease
/// renewal goes unanswered), kills its agents and stops; the standby
/// waits out the old lease, so no agent of the old driver runs once the
/// standby starts agents; nothing of the old driver reaches the journal
/// after the takeover, and the run finishes.
#[test]
#[ignore = "needs PostgreSQL (ORCH_TEST_DATABASE_URL) and root for a UTS namespace (.ci/run has both)"]
fn a_partitioned_postgres_driver_stops_its_agents_before_a_standby_takes_over() {
    let test = "a_partitioned_postgres_driver_stops_its_agents_before_a_standby_takes_over";
    let schema = format!("orch_cli_partition_{}", std::process::id());
    let (url, sql) = pg_schema(test, &schema);
    let (proxy, url) = Partition::before(&url);
    let mut s = crash_setup();
    std::fs::write(&s.plan, ticking_plan(&s.marks)).unwrap();
    s.url = Some(url.clone());
    // The old driver on "another machine": a host name of its own (a UTS
    // namespace), so the standby cannot kill its processes; only the old
    // driver's own lease check stops them.
    let orch_bin = orch().get_program().to_owned();
    let mut old = std::process::Command::new("unshare")
        .args([
            "--uts",
            "--",
            "sh",
            "-c",
            "hostname partitioned-host && exec \"$0\" \"$@\"",
        ])
        .arg(orch_bin)
        .args(["run", s.plan.to_str().unwrap(), "--run", RUN, "--repo"])
        .arg(&s.repo)
        .arg("--state")
        .arg(&s.state)
        .args(["--database-url", &url])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for_mark(&s, "agent-T3", &mut old);
    proxy.cut();
    let cut_at = Instant::now();
    let standby = orch()
        .args(["resume", "--state"])
        .arg(&s.state)
        .args(["--database-url", &url])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The old driver stops by itself, with a store error.
    let code = exit_within(&mut old, 30, "the partitioned driver");
    let noticed = cut_at.elapsed();
    assert_eq!(code, Some(6), "a lost lock is a store failure");
    assert!(
        noticed < Duration::from_secs(9),
        "noticed after {noticed:?}"
    );
    let out = standby.wait_with_output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let events = journal(&s);
    let takeover = events
        .iter()
        .position(|e| matches!(&e.event.kind, EventKind::RunStarted { resumed: true, .. }))
        .expect("the standby started");
    let first_new_agent = events[takeover..]
        .iter()
        .find(|e| matches!(&e.event.kind, EventKind::AgentStarted { .. }))
        .expect("the standby ran agents")
        .event
        .at
        .0;
    // Ticks by process: the old driver's agents are those that ticked
    // before the takeover; none of them ticked once the standby's agents
    // started.
    let ticks = std::fs::read_to_string(s.marks.join("ticks")).unwrap();
    let takeover_at = events[takeover].event.at.0;
    let mut first: std::collections::HashMap<&str, (u64, u64)> = Default::default();
    for line in ticks.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        let at: u64 = f[2].parse().unwrap();
        let e = first.entry(f[1]).or_insert((at, at));
        e.1 = e.1.max(at);
    }
    let old_agents: Vec<_> = first.values().filter(|(a, _)| *a < takeover_at).collect();
    assert!(!old_agents.is_empty());
    for (_, last) in old_agents {
        assert!(
            *last < first_new_agent,
            "an agent of the old driver ticked at {last}, after the standby started one at {first_new_agent}"
        );
    }
    // One finish, at the end; everything done.
    let finished: Vec<usize> = events
        .iter()
        .enumerate()
        .filter(|(_, e)| matches!(&e.event.kind, EventKind::RunFinished { .. }))
        .map(|(i, _)| i)
        .collect();
    assert_eq!(finished, [events.len() - 1], "one run_finished, last");
    let state = RunState::fold(events.iter().map(|e| &e.event));
    assert_eq!(state.count(TicketStatus::Done), 10);
    drop(proxy);
    sql(format!("DROP SCHEMA {schema} CASCADE"));
}

/// SIGINT (Ctrl-C), SIGTERM and SIGHUP all stop a run the same way: the
/// running agent is killed and recorded as cancelled, the run records
/// that it stopped, `orch` exits with 128 + the signal's number, and
/// `orch resume` finishes the run as an uninterrupted one would.
fn a_signal_stops_the_agents_records_it_and_resume_finishes_the_run(
    signal: nix::sys::signal::Signal,
    code: i32,
) {
    let s = crash_setup();
    let mut child = start_until(&s, "agent-A-build");
    let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id()).unwrap());
    nix::sys::signal::kill(pid, signal).unwrap();
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(code), "{signal} exits {code}");
    let events = journal(&s);
    // The agent that was running was stopped, and that is recorded.
    let stopped = events.iter().any(|e| {
        matches!(&e.event.kind, EventKind::AgentFinished { ticket, error: Some(orch_core::AgentErrorKind::Cancelled), .. }
            if ticket.as_str() == "A")
    });
    assert!(stopped, "A's agent is recorded as cancelled: {events:#?}");
    assert!(matches!(
        &events.last().unwrap().event.kind,
        EventKind::RunFinished {
            outcome: orch_core::RunOutcome::Cancelled
        }
    ));
    // Killed, not left to finish: nothing of the agent runs any more (it
    // would write its work 0.3 s after its marker).
    let tree = tree_of(&s, "A");
    assert!(tree.is_dir(), "A's work tree stays for the resume");
    assert_eq!(
        processes_in(&tree),
        Vec::<i32>::new(),
        "nothing runs in A's tree"
    );
    assert!(
        !tree.join("work/A.txt").exists(),
        "the agent was stopped before it wrote"
    );
    let (code, text) = output(orch().args(["resume", "--state"]).arg(&s.state));
    assert_eq!(code, 0, "resume must complete: {text}");
    let (o, events) = outcome(&s);
    assert_eq!(&o, baseline());
    check_no_rerun(&events);
}

#[test]
fn ctrl_c_stops_the_agents_records_it_and_resume_finishes_the_run() {
    a_signal_stops_the_agents_records_it_and_resume_finishes_the_run(
        nix::sys::signal::Signal::SIGINT,
        130,
    );
}

#[test]
fn sigterm_stops_the_agents_records_it_and_resume_finishes_the_run() {
    a_signal_stops_the_agents_records_it_and_resume_finishes_the_run(
        nix::sys::signal::Signal::SIGTERM,
        143,
    );
}

#[test]
fn sighup_stops_the_agents_records_it_and_resume_finishes_the_run() {
    a_signal_stops_the_agents_records_it_and_resume_finishes_the_run(
        nix::sys::signal::Signal::SIGHUP,
        129,
    );
}

/// Live processes (not zombies) whose working directory is `dir` or
/// below it.
fn processes_in(dir: &Path) -> Vec<i32> {
    let dir = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| alive(*pid))
        .filter(|pid| {
            std::fs::read_link(format!("/proc/{pid}/cwd")).is_ok_and(|cwd| cwd.starts_with(&dir))
        })
        .collect()
}

/// Waits (bounded) until no process runs in `dir`; what still runs then,
/// with its command line.
fn processes_in_within(dir: &Path, limit: Duration) -> Vec<(i32, String)> {
    let deadline = Instant::now() + limit;
    loop {
        let left = processes_in(dir);
        if left.is_empty() || Instant::now() > deadline {
            return left
                .into_iter()
                .map(|p| {
                    let cmd = std::fs::read(format!("/proc/{p}/cmdline")).unwrap_or_default();
                    (p, String::from_utf8_lossy(&cmd).replace('\0', " "))
                })
                .collect();
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Whether `pid` is a live process (a zombie is not).
fn alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        s.rfind(')')
            .and_then(|i| s[i + 1..].split_whitespace().next())
            .is_some_and(|state| state != "Z")
    })
}

/// Waits (bounded) until `pid` is gone; whether it is.
fn gone_within(pid: i32, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    while alive(pid) {
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    true
}

/// One ticket whose agent, on its first run, starts a daemon that leaves
/// its session and process group (`setsid`) and writes into the work tree
/// forever, then waits; on a later run it does its work and ends.
fn daemon_plan(marks: &Path) -> String {
    let m = marks.display();
    format!(
        r#"
name = "daemon"
default_role = "dev"
[agents.dev]
backend = {{ kind = "command", argv = ["sh", "-c", "cat > /dev/null; if [ -e {m}/daemon.pid ]; then echo done > out.txt; touch {m}/second; exit 0; fi; setsid sh -c 'echo $$ > {m}/daemon.pid.tmp; mv {m}/daemon.pid.tmp {m}/daemon.pid; while :; do echo old >> old.log; sleep 0.02; done' & sleep 300"] }}
[[phases]]
name = "build"
gates = [{{ kind = "command", name = "clean", argv = ["sh", "-c", "test -e out.txt"] }}]
[[tickets]]
id = "A"
title = "a"
effort = "1h"
"#
    )
}

/// `orch` killed with SIGKILL: whatever its agents started, `setsid`
/// daemons included, dies with it (its watchdog sees it go), long before
/// anyone could resume the run.
#[test]
fn sigkill_of_orch_takes_its_agents_setsid_daemons_with_it() {
    let s = crash_setup();
    std::fs::write(&s.plan, daemon_plan(&s.marks)).unwrap();
    let mut child = start_until(&s, "daemon.pid");
    let daemon: i32 = std::fs::read_to_string(s.marks.join("daemon.pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(alive(daemon));
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    assert!(
        gone_within(daemon, Duration::from_secs(5)),
        "the agent's setsid daemon outlived orch"
    );
    let tree = tree_of(&s, "A");
    let left = processes_in_within(&tree, Duration::from_secs(5));
    assert!(left.is_empty(), "still running in A's tree: {left:?}");
}

/// The watchdog killed too (`kill -9` of every process of orch's): the
/// resumed run kills what the dead driver left before it rolls the work
/// tree back, and the agent registry shows the old agent as lost.
#[test]
fn resume_kills_what_a_dead_driver_left_running_before_it_rolls_back() {
    let s = crash_setup();
    std::fs::write(&s.plan, daemon_plan(&s.marks)).unwrap();
    let mut child = start_until(&s, "daemon.pid");
    let daemon: i32 = std::fs::read_to_string(s.marks.join("daemon.pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    // orch's watchdog: its child that waits on a pipe from it.
    let orch_pid = i32::try_from(child.id()).unwrap();
    let watchdogs: Vec<i32> = std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            let ppid = stat
                .rfind(')')
                .and_then(|i| stat[i + 1..].split_whitespace().nth(1))
                .and_then(|p| p.parse::<i32>().ok());
            let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            ppid == Some(orch_pid) && String::from_utf8_lossy(&cmd).contains("read _")
        })
        .collect();
    assert_eq!(watchdogs.len(), 1, "orch has one watchdog");
    for pid in watchdogs.iter().copied().chain([orch_pid]) {
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        )
        .unwrap();
    }
    child.wait().unwrap();
    // Nothing killed the daemon this time.
    std::thread::sleep(Duration::from_millis(100));
    assert!(alive(daemon), "the daemon runs on without the watchdog");
    let (code, text) = output(orch().args(["resume", "--state"]).arg(&s.state));
    assert_eq!(code, 0, "resume must complete: {text}");
    assert!(!alive(daemon), "the resumed run killed the old daemon");
    let tree = tree_of(&s, "A");
    // The old daemon's file went with the rollback and did not come back.
    assert!(
        !tree.join("old.log").exists(),
        "the old daemon wrote after the rollback"
    );
    let events = journal(&s);
    let state = RunState::fold(events.iter().map(|e| &e.event));
    let statuses: Vec<_> = state
        .agents
        .values()
        .map(|a| (a.attempt, a.status))
        .collect();
    assert_eq!(
        statuses,
        [
            (1, orch_core::AgentStatus::Lost),
            (1, orch_core::AgentStatus::Succeeded)
        ]
    );
    let registry = std::fs::read_to_string(s.state.join("AGENT_REGISTRY.md")).unwrap();
    assert!(registry.contains("| lost |"), "{registry}");
    assert_eq!(state.drivers.len(), 2, "both drivers are recorded");
}

/// A gate runs the agent's code (a build script, a test helper): code
/// that rewrites a frozen test while the gates run, and leaves it so,
/// fails the attempt after the gates, before anything is committed.
#[test]
fn a_frozen_test_rewritten_while_the_gates_run_does_not_pass() {
    let s = crash_setup();
    std::fs::write(
        &s.plan,
        r#"
name = "rewrite"
default_role = "dev"
[agents.dev]
backend = { kind = "command", argv = ["sh", "-c", "cat > /dev/null; case $ORCH_PHASE in tests) mkdir -p tests; echo 'assert add(2, 2) == 4' > tests/t.txt;; *) echo impl > impl.txt;; esac"] }
[[phases]]
name = "tests"
freeze = ["tests/**"]
[[phases]]
name = "impl"
max_attempts = 1
gates = [{ kind = "command", name = "build", argv = ["sh", "-c", "echo 'assert True' > tests/t.txt"] }]
[[tickets]]
id = "A"
title = "a"
effort = "1h"
"#,
    )
    .unwrap();
    let (code, text) = output(&mut orch_run(&s));
    assert_eq!(code, 3, "escalated, not passed: {text}");
    let feedback = failed_feedback(&journal(&s), "impl", 1);
    assert!(
        feedback.contains("Gate `frozen paths` failed")
            && feedback.contains("tests/t.txt (frozen by tests)"),
        "{feedback}"
    );
    let branch = format!("orch/{RUN}/A");
    let t = demo::git(&s.repo, &["show", &format!("{branch}:tests/t.txt")]).unwrap();
    assert_eq!(t, "assert add(2, 2) == 4", "nothing weakened was committed");
}

/// A role whose CLI is not installed runs on its fallback from the first
/// attempt, and orch says so before the run: nobody is asked, no attempt
/// is spent on the missing program.
#[test]
fn a_missing_primary_cli_runs_on_its_fallback_from_the_first_attempt() {
    let s = crash_setup();
    std::fs::write(
        &s.plan,
        r#"
name = "fallback"
default_role = "dev"
[agents.dev]
backend = { kind = "command", argv = ["no-such-agent-cli-orch"] }
fallback = "spare"
[agents.spare]
backend = { kind = "command", argv = ["sh", "-c", "cat > /dev/null; echo done > work.txt"] }
[[phases]]
name = "impl"
max_attempts = 1
gates = [{ kind = "command", name = "did it", argv = ["test", "-s", "work.txt"] }]
[[tickets]]
id = "A"
title = "a"
effort = "1h"
"#,
    )
    .unwrap();
    let (code, text) = output(&mut orch_run(&s));
    assert_eq!(code, 0, "{text}");
    assert!(
        text.contains(
            "role dev runs on its fallback spare: no-such-agent-cli-orch is not installed"
        ),
        "{text}"
    );
    let failed = journal(&s)
        .iter()
        .filter(|e| matches!(e.event.kind, EventKind::AttemptFailed { .. }))
        .count();
    assert_eq!(failed, 0, "no attempt was spent on the missing program");
}

/// A real run whose batch gate fails after the merge: the status report
/// (the state file, `orch status --report` and its `--json`) is RED with
/// that rule and the gate's reason, the batch's record is a NO-GO with
/// the fixes its gate asks for, and `--metrics` says RED in OpenMetrics.
#[test]
fn a_failing_batch_gate_makes_the_report_red() {
    let dir = tempfile::tempdir().unwrap();
    let (repo, state) = workspace(dir.path());
    let plan = dir.path().join("plan.toml");
    std::fs::write(
        &plan,
        r#"
name = "red"
default_role = "dev"
[agents.dev]
backend = { kind = "command", argv = ["sh", "-c", "cat > /dev/null; echo $ORCH_TICKET > $ORCH_TICKET.txt"] }
[[phases]]
name = "do"
[[batches]]
id = "B1"
title = "the one batch"
tickets = ["A", "B"]
gates = [{ kind = "command", name = "integration", argv = ["sh", "-c", "echo 'integration: 1 test failed' >&2; exit 1"] }]
[[tickets]]
id = "A"
title = "a"
effort = "1h"
[[tickets]]
id = "B"
title = "b"
effort = "1h"
"#,
    )
    .unwrap();
    let (code, text) = output(
        orch()
            .arg("run")
            .arg(&plan)
            .arg("--repo")
            .arg(&repo)
            .arg("--state")
            .arg(&state),
    );
    assert_ne!(code, 0, "the batch failed: {text}");
    let file = std::fs::read_to_string(state.join("STATUS_REPORT.md")).unwrap();
    assert!(file.contains("## Go/No-Go: **RED**"), "{file}");
    assert!(
        file.contains("- RED `batch_gate_failed`: batch B1:"),
        "{file}"
    );
    let (code, report) = output(orch().args(["status", "--report", "--state"]).arg(&state));
    assert_eq!(code, 0, "{report}");
    assert!(report.contains("## Go/No-Go: **RED**"), "{report}");
    assert!(
        report.contains("| B1 | NO-GO | 0/1 | [go-no-go/B1.md](go-no-go/B1.md) |"),
        "{report}"
    );
    let (code, json) = output(
        orch()
            .args(["status", "--report", "--json", "--state"])
            .arg(&state),
    );
    assert_eq!(code, 0, "{json}");
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v["colour"], "RED");
    assert_eq!(v["fired"][0]["rule"], "batch_gate_failed");
    let record = std::fs::read_to_string(state.join("go-no-go/B1.md")).unwrap();
    assert!(record.starts_with("# Batch B1: NO-GO\n"), "{record}");
    assert!(record.contains("| integration | FAILED |"), "{record}");
    assert!(record.contains("## Required fixes"), "{record}");
    let queue = std::fs::read_to_string(state.join("DECISION_QUEUE.md")).unwrap();
    assert!(queue.contains("[B1: NO-GO](go-no-go/B1.md)"), "{queue}");
    let (code, metrics) = output(orch().args(["status", "--metrics", "--state"]).arg(&state));
    assert_eq!(code, 0, "{metrics}");
    assert!(metrics.ends_with("# EOF\n"), "{metrics}");
    assert!(
        metrics.contains("orch_go_no_go{orch_go_no_go=\"RED\"} 1"),
        "{metrics}"
    );
    assert!(
        record.contains("## Residual risks accepted\n\nNone recorded"),
        "{record}"
    );

    // A person accepts a residual risk for the batch: its record lists it.
    let (code, text) = output(
        orch()
            .args([
                "accept",
                "--risk",
                "the integration suite is flaky on CI; rerun nightly",
            ])
            .args(["--batch", "B1", "--state"])
            .arg(&state),
    );
    assert_eq!(code, 0, "{text}");
    assert!(
        text.contains("batch B1's go/no-go record lists it"),
        "{text}"
    );
    let record = std::fs::read_to_string(state.join("go-no-go/B1.md")).unwrap();
    assert!(
        record.contains("## Residual risks accepted\n\n- the integration suite is flaky on CI; rerun nightly — accepted "),
        "{record}"
    );
    let (_, report) = output(orch().args(["status", "--report", "--state"]).arg(&state));
    assert!(
        report.contains("accepted by a person for batch B1: the integration suite is flaky"),
        "{report}"
    );
    // A daily report lists what was completed in the last 24 hours; a
    // stretch that is not a duration is refused.
    let (code, daily) = output(
        orch()
            .args(["status", "--report", "--since", "24h", "--state"])
            .arg(&state),
    );
    assert_eq!(code, 0, "{daily}");
    let completed = daily
        .split("\n## Completed since ")
        .nth(1)
        .unwrap_or_else(|| panic!("{daily}"));
    assert!(
        completed.contains("\n- A\n") && completed.contains("\n- B\n"),
        "{daily}"
    );
    let (code, text) = output(
        orch()
            .args(["status", "--report", "--since", "3 weeks", "--state"])
            .arg(&state),
    );
    assert_eq!(code, 2, "{text}");
    assert!(text.contains("is not a duration like 7d, 24h"), "{text}");
    let (code, text) = output(
        orch()
            .args(["status", "--report", "--since", "7d", "--state"])
            .arg(&state),
    );
    assert_eq!(code, 0, "{text}");

    // Refused: no delay was raised, an unknown batch, a batch with a delay.
    for (args, why) in [
        (
            &["--delay", "Friday"][..],
            "no projected delay waits for acceptance",
        ),
        (&["--risk", "x", "--batch", "B9"][..], "has no batch B9"),
        (&["--delay", "x", "--batch", "B1"][..], "not batch B1's"),
    ] {
        let (code, text) = output(orch().arg("accept").args(args).arg("--state").arg(&state));
        assert_eq!(code, 2, "{args:?}: {text}");
        assert!(text.contains(why), "{args:?}: {text}");
    }
}

/// A process of the fleet test, with its output in a file.
/// Runs git in `cwd` as a user named t; its output, trimmed.
fn git(cwd: &Path, args: &[&str]) -> String {
    let out = std::process::Command::new("git")
        .args(["-c", "user.name=t", "-c", "user.email=t@t"])
        .args(args)
        .current_dir(cwd)
        .output()
        .unwrap();
    assert!(out.status.success(), "git {args:?}: {out:?}");
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

/// Processes a test started, killed when it ends (fails) before them.
struct Children(Vec<Child>);

impl Drop for Children {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl std::ops::Deref for Children {
    type Target = Vec<Child>;
    fn deref(&self) -> &Vec<Child> {
        &self.0
    }
}

impl std::ops::DerefMut for Children {
    fn deref_mut(&mut self) -> &mut Vec<Child> {
        &mut self.0
    }
}

fn spawn_logged(cmd: &mut std::process::Command, log: &Path) -> Child {
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .unwrap();
    cmd.stdout(out.try_clone().unwrap())
        .stderr(out)
        .spawn()
        .unwrap()
}

fn signal(child: &Child, s: nix::sys::signal::Signal) {
    let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id()).unwrap());
    nix::sys::signal::kill(pid, s).unwrap();
}

/// One agent execution as its log lines show it: where, what, and from
/// its start to the last sign of life it gave.
#[derive(Debug)]
struct Execution {
    pid: String,
    dir: String,
    ticket: String,
    phase: String,
    from: u128,
    to: u128,
    ended: bool,
}

/// The executions in the agents' shared log: `<pid> <dir> <ticket>
/// <phase> start|tick|end <ns>` lines.
fn executions(log: &Path) -> Vec<Execution> {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let mut by_pid: std::collections::BTreeMap<(String, String), Execution> = Default::default();
    for line in text.lines() {
        let f: Vec<&str> = line.split(' ').collect();
        let [pid, dir, ticket, phase, what, ns] = f[..] else {
            continue; // a line cut by a kill
        };
        let Ok(ns) = ns.parse::<u128>() else { continue };
        let e = by_pid
            .entry((pid.to_owned(), dir.to_owned()))
            .or_insert_with(|| Execution {
                pid: pid.to_owned(),
                dir: dir.to_owned(),
                ticket: ticket.to_owned(),
                phase: phase.to_owned(),
                from: ns,
                to: ns,
                ended: false,
            });
        e.to = e.to.max(ns);
        e.ended |= what == "end";
    }
    by_pid.into_values().collect()
}

/// The job doing `phase` of `ticket`, among `jobs`.
fn phase_job<'a>(
    jobs: &'a [orch_core::JobInfo],
    ticket: &str,
    phase: &str,
) -> Option<&'a orch_core::JobInfo> {
    jobs.iter().find(|j| {
        matches!(&j.work, orch_core::Work::Phase { ticket: t, phase: p }
            if t.as_str() == ticket && p.as_str() == phase)
    })
}

/// The exit code of `child`, which must stop by itself within `secs`.
fn exit_within(child: &mut Child, secs: u64, what: &str) -> Option<i32> {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status.code();
        }
        assert!(Instant::now() < deadline, "{what} did not stop");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Waits (polling) until `f` holds, failing after `secs` with what the
/// processes wrote to `shown`.
fn wait_for(secs: u64, what: &str, shown: &Path, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !f() {
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}:\n{}",
            std::fs::read_to_string(shown).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// One coordinator and three workers as separate processes, each with its
/// own clone of one bare repository, on PostgreSQL, through the faults a
/// fleet meets, each but the last landing while an agent runs: a worker
/// killed with SIGKILL (and started again), a worker frozen with SIGSTOP
/// past its lease and let go, a worker stopped with SIGTERM; the
/// coordinator killed while a standby waits, and PostgreSQL cut off from
/// everyone, after
/// which a second standby finishes the run. No ticket's phase runs in two
/// places at once, each phase passes once, every checkpoint the journal
/// names is on the remote, every event was written under a fence its
/// writer held and no stale one, and the merged batch holds every
/// ticket's work.
#[test]
#[ignore = "needs PostgreSQL: ORCH_TEST_DATABASE_URL (.ci/run sets it)"]
fn a_fleet_of_workers_survives_kills_freezes_and_a_new_coordinator() {
    let test = "a_fleet_of_workers_survives_kills_freezes_and_a_new_coordinator";
    let schema = format!("orch_cli_fleet_{}", std::process::id());
    let (url, sql) = pg_schema(test, &schema);
    // Every process reaches PostgreSQL through this, to be cut off at once.
    let (proxy, url) = Partition::before(&url);
    let dir = tempfile::tempdir().unwrap();
    let top = dir.path();
    let log = top.join("agents.log");
    let line = |what: &str| {
        format!(
            "echo \\\"$$ $PWD $ORCH_TICKET $ORCH_PHASE {what} $(date +%s%N)\\\" >> {}",
            log.display()
        )
    };
    // An agent lives a second; on worker `wN`, once `slow-wN` exists,
    // ten: long enough to still be running when its job is taken over,
    // unless something stops it.
    let agent = format!(
        "cat > /dev/null; {}; n=10; for m in w1 w2 w3; do case $PWD in */$m/*) [ -e {}/slow-$m ] && n=100;; esac; done; for i in $(seq $n); do sleep 0.1; {}; done; echo \\\"$ORCH_TICKET $ORCH_PHASE\\\" >> $ORCH_TICKET.txt; {}",
        line("start"),
        top.display(),
        line("tick"),
        line("end")
    );
    let tickets: Vec<String> = (0..20).map(|i| format!("T{i:02}")).collect();
    let mut plan = format!(
        r#"name = "fleet"
default_role = "dev"
[policy]
max_concurrency = 6
[agents.dev]
backend = {{ kind = "command", argv = ["sh", "-c", "{agent}"] }}
[[phases]]
name = "design"
gates = [{{ kind = "command", name = "done", argv = ["grep", "-qx", "{{ticket}} {{phase}}", "{{ticket}}.txt"] }}]
[[phases]]
name = "build"
gates = [{{ kind = "command", name = "done", argv = ["grep", "-qx", "{{ticket}} {{phase}}", "{{ticket}}.txt"] }}]
[[batches]]
id = "B1"
title = "all"
tickets = [{}]
"#,
        tickets
            .iter()
            .map(|t| format!("\"{t}\""))
            .collect::<Vec<_>>()
            .join(", ")
    );
    for (i, t) in tickets.iter().enumerate() {
        let deps = if i >= 5 {
            format!("depends_on = [\"T{:02}\"]\n", i - 5)
        } else {
            String::new()
        };
        plan.push_str(&format!(
            "[[tickets]]\nid = \"{t}\"\ntitle = \"{t}\"\neffort = \"1h\"\n{deps}"
        ));
    }
    // The plan is in the repository: workers read it in their clones.
    git(top, &["init", "-q", "--bare", "-b", "main", "remote.git"]);
    git(top, &["clone", "-q", "remote.git", "seed"]);
    std::fs::write(top.join("seed/README"), "fleet\n").unwrap();
    std::fs::create_dir(top.join("seed/plans")).unwrap();
    std::fs::write(top.join("seed/plans/fleet.toml"), plan).unwrap();
    git(&top.join("seed"), &["add", "README", "plans"]);
    git(&top.join("seed"), &["commit", "-q", "-m", "start"]);
    git(&top.join("seed"), &["push", "-q", "origin", "main"]);
    for m in ["coord", "w1", "w2", "w3"] {
        git(top, &["clone", "-q", "remote.git", m]);
    }
    let out = top.join("processes.log");
    // `orch run`, or a standby: `orch resume --standby`, which takes the
    // run over when its driver stops.
    let coordinator = |standby: bool| {
        let mut c = orch();
        if standby {
            c.args(["resume", "--standby", "--state"])
                .arg(top.join("state"));
        } else {
            c.arg("run")
                .arg(top.join("coord/plans/fleet.toml"))
                .arg("--repo")
                .arg(top.join("coord"))
                .arg("--state")
                .arg(top.join("state"))
                .args(["--workers", "--run", "fleet"]);
        }
        c.args(["--database-url", &url]);
        spawn_logged(&mut c, &out)
    };
    let worker = |m: &str| {
        let mut c = orch();
        // Neither plan nor run: it finds both.
        c.args(["worker", "--repo"]).arg(top.join(m)).args([
            "--database-url",
            &url,
            "--lease-secs",
            "2",
            "--concurrency",
            "2",
        ]);
        spawn_logged(&mut c, &out)
    };
    let log_file = log.clone();
    let ended = |n: usize| {
        let log = log_file.clone();
        move || executions(&log).iter().filter(|e| e.ended).count() >= n
    };
    let mut coords = Children(vec![coordinator(false)]);
    let mut workers = Children(["w1", "w2", "w3"].iter().map(|m| worker(m)).collect());
    let mut worker_pids: std::collections::HashSet<u32> = workers.iter().map(Child::id).collect();

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    // Once `slow-<m>` exists for each worker `m` of `ms`, the next agent
    // to start on one of them: its ticket, phase, pid and start. The
    // markers go with `slow_no_more`.
    let slow_agent_on = |ms: &[&str]| {
        let markers: Vec<PathBuf> = ms.iter().map(|m| top.join(format!("slow-{m}"))).collect();
        for marker in &markers {
            std::fs::write(marker, "").unwrap();
        }
        let before: std::collections::HashSet<u128> =
            executions(&log).iter().map(|e| e.from).collect();
        let mut found = None;
        wait_for(
            120,
            &format!("a slow agent running on {ms:?}"),
            &out,
            || {
                found = executions(&log)
                    .into_iter()
                    .find(|e| {
                        ms.iter().any(|m| e.dir.contains(&format!("/{m}/")))
                            && !e.ended
                            && !before.contains(&e.from)
                    })
                    .map(|e| (e.ticket, e.phase, e.pid, e.from));
                found.is_some()
            },
        );
        (markers, found.unwrap())
    };
    let slow_no_more = |markers: Vec<PathBuf>| {
        for marker in markers {
            std::fs::remove_file(marker).unwrap();
        }
    };
    // Dead or a zombie its frozen parent cannot reap, not merely held up.
    let dead = |pid: &str| !alive(pid.parse().unwrap());
    // An agent caught by a fault never finished: `dead` alone would hold
    // of one that ran to its end.
    let cut_short = |from: u128| {
        executions(&log)
            .iter()
            .find(|e| e.from == from)
            .is_some_and(|e| !e.ended)
    };
    // A phase's job as the queue has it now.
    let job_of = |ticket: &str, phase: &str| {
        rt.block_on(async {
            let store = orch_state::PgStore::connect(&url).await.unwrap();
            let jobs = orch_core::JobQueue::jobs(&store, &"fleet".parse().unwrap())
                .await
                .unwrap();
            phase_job(&jobs, ticket, phase).cloned()
        })
    };
    // The jobs caught by the faults: (ticket, phase, start of the agent
    // that was running).
    let mut caught = Vec::new();

    // A worker killed mid-agent: its agent dies with it, and its job
    // runs again elsewhere.
    wait_for(120, "the first phases", &out, ended(4));
    // A standby coordinator, waiting for the run's driver to stop.
    coords.push(coordinator(true));
    let standing_by = |n: usize| {
        let out = &out;
        move || {
            let text = std::fs::read_to_string(out).unwrap_or_default();
            text.matches("standing by: state store: run fleet is being driven by another engine")
                .count()
                >= n
        }
    };
    wait_for(60, "the standby", &out, standing_by(1));
    let (marker, (ticket, phase, pid, from)) = slow_agent_on(&["w1"]);
    signal(&workers[0], nix::sys::signal::Signal::SIGKILL);
    workers[0].wait().unwrap();
    wait_for(30, "the killed worker's agent to die", &out, || dead(&pid));
    assert!(
        cut_short(from),
        "the killed worker's agent {pid} ran to its end"
    );
    slow_no_more(marker);
    caught.push((ticket, phase, from));
    workers[0] = worker("w1");
    worker_pids.insert(workers[0].id());

    // A worker frozen mid-agent until another has taken its job over: its
    // agent must have been stopped by then. Soon after its lease lapses,
    // even if it froze in the middle of a write (the server ends its
    // session, and with it the locks it held, within seconds).
    wait_for(120, "more phases", &out, ended(12));
    let (marker, (ticket, phase, pid, from)) = slow_agent_on(&["w2"]);
    signal(&workers[1], nix::sys::signal::Signal::SIGSTOP);
    wait_for(30, "the frozen job taken over", &out, || {
        executions(&log)
            .iter()
            .any(|e| (&e.ticket, &e.phase) == (&ticket, &phase) && e.from > from)
    });
    assert!(
        dead(&pid) && cut_short(from),
        "the frozen worker's agent {pid} was not stopped before its job was taken over"
    );
    slow_no_more(marker);
    caught.push((ticket, phase, from));
    signal(&workers[1], nix::sys::signal::Signal::SIGCONT);

    // A worker told to stop mid-agent stops it and hands its job back: no
    // takeover, and it runs again elsewhere.
    let (marker, (ticket, phase, pid, from)) = slow_agent_on(&["w3"]);
    let takeovers = job_of(&ticket, &phase).map(|j| j.takeovers);
    signal(&workers[2], nix::sys::signal::Signal::SIGTERM);
    let code = exit_within(&mut workers[2], 30, "the worker told to stop");
    assert_eq!(
        code,
        Some(143),
        "{}",
        std::fs::read_to_string(&out).unwrap_or_default()
    );
    assert!(
        dead(&pid) && cut_short(from),
        "the stopped worker's agent {pid} outlived it, or was waited for"
    );
    slow_no_more(marker);
    let returned = job_of(&ticket, &phase);
    // Available, or claimed by another worker without a takeover (a
    // lease cannot lapse that fast): not still the stopped worker's.
    let stopped = workers[2].id();
    assert!(
        returned
            .as_ref()
            .is_some_and(|j| Some(j.takeovers) == takeovers
                && (j.state == orch_core::JobState::Available
                    || j.worker.as_ref().is_some_and(|w| w.pid != stopped))),
        "{ticket} {phase} handed back, not left to lapse: {returned:?}"
    );
    let handed_back = (ticket, phase, from);
    workers[2] = worker("w3");
    worker_pids.insert(workers[2].id());

    // The coordinator killed while a worker's agent runs: the standby
    // takes the run over (a new epoch), and another stands by; the agent
    // runs on to its end, its worker's claim untouched.
    wait_for(120, "still more phases", &out, ended(20));
    let (marker, (slow_ticket, slow_phase, _, from)) = slow_agent_on(&["w1", "w2", "w3"]);
    let epochs = || {
        rt.block_on(async {
            let store = orch_state::PgStore::connect(&url).await.unwrap();
            let fences = store.fences(&"fleet".parse().unwrap()).await.unwrap();
            let mut epochs: Vec<u64> = fences
                .into_iter()
                .filter_map(|w| match w.fence {
                    Some(orch_state::Fence::Epoch(n)) => Some(n),
                    _ => None,
                })
                .collect();
            epochs.dedup();
            epochs.len()
        })
    };
    let first = epochs();
    signal(&coords[0], nix::sys::signal::Signal::SIGKILL);
    coords[0].wait().unwrap();
    wait_for(60, "the standby taking over", &out, || epochs() > first);
    coords.push(coordinator(true));
    wait_for(60, "the second standby", &out, standing_by(2));

    // `orch status` shows the workers and their jobs.
    let (code, status) = output(
        orch()
            .args(["status", "--state"])
            .arg(top.join("state"))
            .args(["--database-url", &url]),
    );
    assert_eq!(code, 0, "{status}");
    // The killed and the frozen worker's jobs were taken over by now: two
    // takeovers at least.
    let taken: Option<u32> = status
        .lines()
        .find_map(|l| {
            l.strip_prefix("jobs: ")?
                .split("; ")
                .nth(1)?
                .strip_suffix(" taken over")
        })
        .and_then(|n| n.parse().ok());
    assert!(
        status.contains("## Workers") && taken.is_some_and(|n| n >= 2),
        "{status}"
    );
    // The slow agent's job, with its worker and how fresh its lease is.
    let key = format!(" | {slow_ticket}/{slow_phase}/");
    assert!(
        status.lines().any(|l| l.contains(&key)
            && l.contains(" pid ")
            && l.contains(" ago | ")
            && !l.ends_with("| lapsed |")),
        "the slow agent's job, its worker and its lease: {status}"
    );
    slow_no_more(marker);
    wait_for(60, "the agent running through the takeover", &out, || {
        executions(&log).iter().any(|e| e.from == from && e.ended)
    });

    // PostgreSQL cut off from every process at once, as a partition: the
    // server ends every session, the processes' sides go silent. The
    // workers connect again and go on (a job whose worker was cut off
    // mid-write lapses and is taken over); the coordinator's hold on the
    // run is lost, so it stops (a store failure, exit 6), and the second
    // standby, its own connections silent too, takes the run over and
    // finishes it.
    wait_for(120, "phases under the new coordinator", &out, ended(28));
    proxy.cut();
    let code = exit_within(
        &mut coords[1],
        30,
        "the coordinator cut off from PostgreSQL",
    );
    assert_eq!(code, Some(6), "a lost hold on the run is a store failure");
    let deadline = Instant::now() + Duration::from_secs(240);
    let status = loop {
        if let Some(s) = coords[2].try_wait().unwrap() {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "the run did not finish: {}",
            std::fs::read_to_string(&out).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    for w in workers.iter() {
        signal(w, nix::sys::signal::Signal::SIGTERM);
    }
    let processes = || std::fs::read_to_string(&out).unwrap_or_default();
    for (n, w) in workers.iter_mut().enumerate() {
        let s = w.wait().unwrap();
        assert_eq!(
            s.code(),
            Some(143),
            "worker {n} stops cleanly on SIGTERM: {s:?}\n{}",
            processes()
        );
    }
    let processes = processes();
    let (events, jobs, fences) = rt.block_on(async {
        let store = orch_state::PgStore::connect(&url).await.unwrap();
        let run = "fleet".parse().unwrap();
        let events = store.read(&run, 0, 1_000_000).await.unwrap();
        let jobs = orch_core::JobQueue::jobs(&store, &run).await.unwrap();
        let fences = store.fences(&run).await.unwrap();
        (events, jobs, fences)
    });
    let failures: Vec<String> = events
        .iter()
        .filter_map(|e| match &e.event.kind {
            EventKind::TicketFailed { ticket, reason } => Some(format!("{ticket}: {reason}")),
            EventKind::BatchFailed { batch, reason } => Some(format!("{batch}: {reason}")),
            EventKind::TicketBlocked { ticket, by } => Some(format!("{ticket}: blocked by {by}")),
            _ => None,
        })
        .collect();
    // How close the faults came to abandoning a job (3 takeovers).
    let taken_over: Vec<(&str, u32, orch_core::JobState)> = jobs
        .iter()
        .filter(|j| j.takeovers > 0)
        .map(|j| (j.key.as_str(), j.takeovers, j.state))
        .collect();
    eprintln!("jobs taken over: {taken_over:?}");
    assert!(
        status.success(),
        "coordinator: {status:?}\nfailures: {failures:?}\njobs taken over: {taken_over:?}\n{processes}"
    );
    assert!(
        processes.contains(
            "terminated (SIGTERM): stopping running agents and handing their jobs back to the queue"
        ),
        "{processes}"
    );

    // No phase of a ticket ran in two places at once.
    let runs = executions(&log);
    for (i, a) in runs.iter().enumerate() {
        for b in &runs[i + 1..] {
            if (&a.ticket, &a.phase) == (&b.ticket, &b.phase) {
                assert!(
                    a.to < b.from || b.to < a.from,
                    "{} {} ran at once in {} and {}",
                    a.ticket,
                    a.phase,
                    a.dir,
                    b.dir
                );
            }
        }
    }
    let machines: std::collections::HashSet<&str> = runs
        .iter()
        .filter_map(|e| {
            ["/w1/", "/w2/", "/w3/"]
                .into_iter()
                .find(|m| e.dir.contains(m))
        })
        .collect();
    assert_eq!(machines.len(), 3, "every worker did work: {runs:?}");
    assert!(
        runs.iter().all(|e| !e.dir.contains("/coord/")),
        "the coordinator ran no agent"
    );

    // Each phase passed once, and its checkpoint is on the remote, under
    // a ref naming its ticket and phase.
    let shared = git(
        &top.join("remote.git"),
        &["for-each-ref", "--format=%(refname)", "refs/orch/fleet/"],
    );
    // One fence record an event, in step.
    assert_eq!(fences.len(), events.len());
    assert!(fences.iter().zip(&events).all(|(w, e)| w.seq == e.seq));
    // Every commit the journal names is on the remote: tickets' starts,
    // rollback points, checkpoints (below) and merges.
    for e in &events {
        let named = match &e.event.kind {
            EventKind::WorkspaceReady { base, .. } => base.as_deref(),
            EventKind::RolledBack { commit, .. } | EventKind::BatchMerged { commit, .. } => {
                Some(commit.as_str())
            }
            _ => None,
        };
        if let Some(c) = named {
            git(
                &top.join("remote.git"),
                &["cat-file", "-e", &format!("{c}^{{commit}}")],
            );
        }
    }
    let mut passed = std::collections::HashSet::new();
    for (e, w) in events.iter().zip(&fences) {
        if let EventKind::PhasePassed {
            ticket,
            phase,
            attempt,
            checkpoint,
            ..
        } = &e.event.kind
        {
            assert!(
                passed.insert((ticket.clone(), phase.clone())),
                "{ticket} {phase} passed twice"
            );
            let c = checkpoint.as_ref().expect("a checkpoint");
            git(
                &top.join("remote.git"),
                &["cat-file", "-e", &format!("{c}^{{commit}}")],
            );
            // Shared under the claim that recorded it.
            let Some(orch_state::Fence::Claim { job, token }) = w.fence else {
                panic!("{ticket} {phase} passed under {:?}, not a claim", w.fence)
            };
            let named = format!(
                "refs/orch/fleet/tickets/{ticket}/phases/{phase}/{attempt}/jobs/{job}/claims/{token}/{c}"
            );
            assert!(
                shared.lines().any(|r| r == named),
                "{ticket} {phase}'s checkpoint is not at {named}: {shared}"
            );
        }
    }
    assert_eq!(passed.len(), 40);
    // Each agent's start names the worker process that ran it.
    let mut named = std::collections::HashSet::new();
    for e in &events {
        if let EventKind::AgentStarted { worker, .. } = &e.event.kind {
            let w = worker
                .as_ref()
                .expect("a worker's agent start names the worker");
            assert!(
                worker_pids.contains(&w.pid),
                "agent started by {w:?}, not one of the workers {worker_pids:?}"
            );
            named.insert(w.pid);
        }
    }
    assert!(named.len() >= 3, "{named:?}");
    // The killed and the frozen worker's jobs were taken over, and ran to
    // the end after the agent the fault caught.
    let ran_again = |(ticket, phase, from): &(String, String, u128)| {
        runs.iter()
            .any(|e| (&e.ticket, &e.phase) == (ticket, phase) && e.from > *from && e.ended)
    };
    for caught in &caught {
        let (ticket, phase, _) = caught;
        let job = phase_job(&jobs, ticket, phase);
        assert!(
            job.is_some_and(|j| j.takeovers >= 1),
            "{ticket} {phase} was taken over: {job:?}"
        );
        assert!(
            ran_again(caught),
            "{ticket} {phase} ran again after its worker's fault"
        );
    }
    let (ticket, phase, _) = &handed_back;
    assert!(
        ran_again(&handed_back),
        "{ticket} {phase} ran again after its worker handed it back"
    );

    // Nothing stale was recorded. Every event was appended under a fence
    // (the coordinator's epoch, or a worker's claim of one job), by the
    // process holding it: one process a fence, a coordinator for an
    // epoch, a worker for a claim.
    let by_id: std::collections::HashMap<u64, &orch_core::JobInfo> =
        jobs.iter().map(|j| (j.id, j)).collect();
    let coord_pids: std::collections::HashSet<u32> = coords.iter().map(Child::id).collect();
    let mut epochs = Vec::new();
    let mut latest: std::collections::HashMap<u64, u64> = Default::default();
    let mut writers: std::collections::HashMap<orch_state::Fence, u32> = Default::default();
    for (w, e) in fences.iter().zip(&events) {
        let seq = w.seq;
        let Some(fence) = w.fence else {
            panic!(
                "event {seq} was appended under no fence: {:?}",
                e.event.kind
            )
        };
        let writer = w.writer.as_ref().map(|d| d.pid);
        let Some(writer) = writer else {
            panic!("event {seq} names no writer")
        };
        assert_eq!(
            *writers.entry(fence).or_insert(writer),
            writer,
            "event {seq}: {fence} held by two processes"
        );
        match fence {
            // No coordinator appended after its successor took the run.
            orch_state::Fence::Epoch(n) => {
                assert!(
                    epochs.last().is_none_or(|l| *l <= n),
                    "event {seq} appended under epoch {n}, after epoch {epochs:?}"
                );
                epochs.push(n);
                assert!(
                    coord_pids.contains(&writer),
                    "event {seq} under {fence} written by {writer}, not a coordinator {coord_pids:?}"
                );
            }
            orch_state::Fence::Claim { job, token } => {
                // No worker appended for a job after another claimed it.
                let before = latest.insert(job, token).unwrap_or(0);
                assert!(
                    before <= token,
                    "event {seq} appended under claim {token} of job {job}, after claim {before}"
                );
                assert!(
                    worker_pids.contains(&writer),
                    "event {seq} under {fence} written by {writer}, not a worker {worker_pids:?}"
                );
                // A claim's events are its job's.
                let info = by_id[&job];
                let about = e.event.kind.ticket().map(|t| t.as_str());
                match &info.work {
                    orch_core::Work::Phase { ticket, .. } => assert_eq!(
                        about,
                        Some(ticket.as_str()),
                        "event {seq} under job {job} ({})",
                        info.work
                    ),
                    orch_core::Work::Merge { .. } => assert_eq!(about, None, "event {seq}"),
                    _ => {}
                }
                // The worker an event names is the one that wrote it.
                if let EventKind::AgentStarted { worker, .. }
                | EventKind::MergeStarted { worker, .. } = &e.event.kind
                {
                    assert_eq!(worker.as_ref(), w.writer.as_ref(), "event {seq}");
                }
            }
        }
    }
    epochs.dedup();
    assert!(
        epochs.len() >= 3,
        "the coordinator started, was killed and resumed, and was cut off and resumed: epochs {epochs:?}"
    );
    assert!(
        latest
            .iter()
            .any(|(job, token)| *token > 1 && by_id[job].takeovers > 0),
        "a taken-over job's later claim recorded its work: {latest:?}"
    );
    // The batch was merged by a worker, and its branch on the remote, set
    // by the coordinator, names the merge the journal records.
    let mergers: Vec<Option<u32>> = events
        .iter()
        .filter_map(|e| match &e.event.kind {
            EventKind::MergeStarted { worker, .. } => Some(worker.as_ref().map(|w| w.pid)),
            _ => None,
        })
        .collect();
    assert!(
        !mergers.is_empty()
            && mergers
                .iter()
                .all(|m| m.is_some_and(|p| worker_pids.contains(&p))),
        "merged by {mergers:?}, not only by the workers {worker_pids:?}"
    );
    let recorded: Vec<&str> = events
        .iter()
        .filter_map(|e| match &e.event.kind {
            EventKind::BatchMerged { commit, .. } => Some(commit.as_str()),
            _ => None,
        })
        .collect();
    let batch = "refs/heads/orch/fleet/batch-B1";
    assert_eq!(
        [git(&top.join("remote.git"), &["rev-parse", batch]).as_str()],
        &recorded[..]
    );
    // Shared under the claim that recorded it.
    let merged = events
        .iter()
        .zip(&fences)
        .find_map(|(e, w)| match e.event.kind {
            EventKind::BatchMerged { .. } => w.fence,
            _ => None,
        });
    let Some(orch_state::Fence::Claim { job, token }) = merged else {
        panic!("the merge was recorded under {merged:?}, not a claim")
    };
    let named = format!(
        "refs/orch/fleet/batches/B1/jobs/{job}/claims/{token}/{}",
        recorded[0]
    );
    assert!(shared.lines().any(|r| r == named), "{named}: {shared}");
    // It holds every ticket's work, each phase once.
    for t in &tickets {
        let text = git(
            &top.join("remote.git"),
            &["show", &format!("{batch}:{t}.txt")],
        );
        assert_eq!(text, format!("{t} design\n{t} build"));
    }
    // The same plan run on one machine (SQLite, no workers) merges to the
    // same tree.
    git(top, &["clone", "-q", "remote.git", "single"]);
    let (code, single) = output(
        orch()
            .arg("run")
            .arg(top.join("single/plans/fleet.toml"))
            .arg("--repo")
            .arg(top.join("single"))
            .arg("--state")
            .arg(top.join("single-state"))
            .args(["--run", "fleet"]),
    );
    assert_eq!(code, 0, "{single}");
    assert_eq!(
        git(
            &top.join("remote.git"),
            &["rev-parse", &format!("{batch}^{{tree}}")]
        ),
        git(
            &top.join("single"),
            &["rev-parse", "refs/heads/orch/fleet/batch-B1^{tree}"]
        ),
        "the fleet's merged batch differs from one machine's"
    );
    sql(format!("DROP SCHEMA {schema} CASCADE"));
}

/// `orch worker` given neither plan nor run serves whatever runs are
/// coordinated for workers, one after another, reading each run's plan as
/// committed in its own clone where the run says it lies. What it cannot
/// do it hands back and leaves alone, saying why, without claiming it
/// again and again: a run whose plan is not in the repository (its jobs
/// wait, not taken over, for a worker given that plan), and, found only
/// once a job of it started, a run whose commit its clone is not at.
#[test]
#[ignore = "needs PostgreSQL: ORCH_TEST_DATABASE_URL (.ci/run sets it)"]
fn a_worker_serves_the_runs_it_can_and_leaves_alone_one_it_cannot() {
    let test = "a_worker_serves_the_runs_it_can_and_leaves_alone_one_it_cannot";
    let schema = format!("orch_cli_runs_{}", std::process::id());
    let (url, sql) = pg_schema(test, &schema);
    let dir = tempfile::tempdir().unwrap();
    let top = dir.path();
    // Two independent tickets of one phase; the plans differ by name.
    let plan = |name: &str| {
        let mut plan = format!(
            r#"name = "{name}"
default_role = "dev"
[agents.dev]
backend = {{ kind = "command", argv = ["sh", "-c", "cat > /dev/null; echo {name} > $ORCH_TICKET.txt"] }}
[[phases]]
name = "build"
gates = [{{ kind = "command", name = "done", argv = ["grep", "-qx", "{name}", "{{ticket}}.txt"] }}]
"#
        );
        for t in ["T1", "T2"] {
            plan.push_str(&format!(
                "[[tickets]]\nid = \"{t}\"\ntitle = \"{t}\"\neffort = \"1h\"\n"
            ));
        }
        plan
    };
    git(top, &["init", "-q", "--bare", "-b", "main", "remote.git"]);
    git(top, &["clone", "-q", "remote.git", "seed"]);
    std::fs::create_dir(top.join("seed/plans")).unwrap();
    for name in ["a", "c"] {
        std::fs::write(top.join(format!("seed/plans/{name}.toml")), plan(name)).unwrap();
    }
    git(&top.join("seed"), &["add", "plans"]);
    git(&top.join("seed"), &["commit", "-q", "-m", "start"]);
    git(&top.join("seed"), &["push", "-q", "origin", "main"]);
    for m in ["coord", "w0", "w1", "w2"] {
        git(top, &["clone", "-q", "remote.git", m]);
    }
    // w0 is a commit ahead of the runs.
    git(
        &top.join("w0"),
        &["commit", "-q", "--allow-empty", "-m", "ahead"],
    );
    // Run b's plan is not in the repository.
    let outside = top.join("b.toml");
    std::fs::write(&outside, plan("b")).unwrap();
    let log = |name: &str| top.join(format!("{name}.log"));
    let text = |name: &str| std::fs::read_to_string(log(name)).unwrap_or_default();
    let coordinate = |run: &str, plan: &Path| {
        spawn_logged(
            orch()
                .arg("run")
                .arg(plan)
                .arg("--repo")
                .arg(top.join("coord"))
                .arg("--state")
                .arg(top.join(format!("state-{run}")))
                .args(["--workers", "--run", run, "--database-url", &url]),
            &log(run),
        )
    };
    let worker = |m: &str, plan: Option<&Path>| {
        let mut c = orch();
        c.arg("worker");
        if let Some(plan) = plan {
            c.arg(plan).args(["--run", "b"]);
        }
        c.arg("--repo")
            .arg(top.join(m))
            .args(["--database-url", &url, "--concurrency", "2"]);
        spawn_logged(&mut c, &log(m))
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let jobs_of = |run: &str| {
        rt.block_on(async {
            let store = orch_state::PgStore::connect(&url).await.unwrap();
            orch_core::JobQueue::jobs(&store, &run.parse().unwrap())
                .await
                .unwrap()
        })
    };
    // b's jobs are the oldest: a worker that kept claiming them would
    // never reach the others'.
    let mut runs = Children(vec![coordinate("b", &outside)]);
    wait_for(60, "run b's jobs", &log("b"), || jobs_of("b").len() == 2);
    runs.0
        .push(coordinate("a", &top.join("coord/plans/a.toml")));
    runs.0
        .push(coordinate("c", &top.join("coord/plans/c.toml")));
    wait_for(60, "every run's jobs", &log("a"), || {
        jobs_of("a").len() == 2 && jobs_of("c").len() == 2
    });
    assert!(
        text("b").contains("workers cannot read its plan in their clones (it lies outside the repository): start them with `orch worker")
            && text("a").contains("start workers with `orch worker --database-url"),
        "{}\n{}",
        text("b"),
        text("a")
    );

    // The worker a commit ahead can do none of them, and claims each
    // run's jobs once.
    let mut workers = Children(vec![worker("w0", None)]);
    wait_for(60, "w0 to leave every run alone", &log("w0"), || {
        ["a", "b", "c"]
            .iter()
            .all(|r| text("w0").contains(&format!("leaving run {r} alone for 60 s")))
    });
    let w0 = text("w0");
    assert!(
        w0.contains(
            "leaving run b alone for 60 s: run b: it does not name its plan file in the repository"
        ) && w0.contains("this machine starts tickets from commit"),
        "{w0}"
    );
    // The one at the runs' commit does a and c.
    workers.0.push(worker("w1", None));
    for (run, n) in [("a", 1), ("c", 2)] {
        let code = exit_within(&mut runs.0[n], 60, &format!("run {run}"));
        assert_eq!(code, Some(0), "run {run}: {}\n{}", text(run), text("w1"));
    }
    let b = jobs_of("b");
    assert!(
        b.iter()
            .all(|j| j.state == orch_core::JobState::Available && j.takeovers == 0 && j.token <= 3),
        "run b's jobs wait, not taken over, claimed at most by w0, w1 and once more after a minute: {b:?}"
    );
    for run in ["a", "c"] {
        let jobs = jobs_of(run);
        assert!(
            jobs.iter().all(|j| j.token <= 3),
            "run {run}'s jobs claimed again and again: {jobs:?}"
        );
    }
    // A worker given b's plan does it.
    workers.0.push(worker("w2", Some(&outside)));
    let code = exit_within(&mut runs.0[0], 60, "run b");
    assert_eq!(code, Some(0), "{}\n{}", text("b"), text("w2"));
    for w in &workers.0 {
        signal(w, nix::sys::signal::Signal::SIGTERM);
    }
    for w in &mut workers.0 {
        assert_eq!(w.wait().unwrap().code(), Some(143));
    }
    // Each run's agents ran on the worker that could do it, in its clone.
    let pids: Vec<u32> = workers.0.iter().map(Child::id).collect();
    for (run, by) in [("a", pids[1]), ("b", pids[2]), ("c", pids[1])] {
        let events = rt.block_on(async {
            let store = orch_state::PgStore::connect(&url).await.unwrap();
            store.read(&run.parse().unwrap(), 0, 10_000).await.unwrap()
        });
        let agents: Vec<u32> = events
            .iter()
            .filter_map(|e| match &e.event.kind {
                EventKind::AgentStarted { worker, .. } => worker.as_ref().map(|w| w.pid),
                _ => None,
            })
            .collect();
        assert_eq!(agents, [by, by], "run {run}'s agents");
    }
    drop(workers);
    drop(runs);
    sql(format!("DROP SCHEMA {schema} CASCADE"));
}
