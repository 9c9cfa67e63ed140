//! Worktree slots through `orch run`: a slot holds one ticket at a time,
//! what it keeps cannot make a failing ticket pass, and a switch cut short
//! by a crash is made again on resume.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use assert_cmd::cargo::CommandCargoExt;
use orch_core::{EventKind, RunState, StateStore, StoredEvent, TicketStatus};
use orch_examples::demo;

const RUN: &str = "slots";

fn orch() -> Command {
    Command::cargo_bin("orch").unwrap()
}

struct Setup {
    _dir: tempfile::TempDir,
    repo: PathBuf,
    state: PathBuf,
    plan: PathBuf,
    marks: PathBuf,
}

/// A repository holding `files`, a marks directory and `plan` (with
/// `{marks}` replaced).
fn setup(files: &[(&str, &str)], plan: &str) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("repo");
    demo::init_repo(&repo, files).unwrap();
    let marks = dir.path().join("marks");
    std::fs::create_dir_all(&marks).unwrap();
    let plan_file = dir.path().join("plan.toml");
    std::fs::write(
        &plan_file,
        plan.replace("{marks}", &marks.display().to_string()),
    )
    .unwrap();
    Setup {
        state: dir.path().join("state"),
        repo,
        plan: plan_file,
        marks,
        _dir: dir,
    }
}

fn run(s: &Setup) -> Command {
    let mut c = orch();
    c.arg("run")
        .arg(&s.plan)
        .arg("--repo")
        .arg(&s.repo)
        .arg("--state")
        .arg(&s.state)
        .args(["--run", RUN]);
    c
}

fn output(cmd: &mut Command) -> (i32, String) {
    let out = cmd.output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

fn journal(s: &Setup) -> Vec<StoredEvent> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let store = orch_state::SqliteStore::open(s.state.join("state.db")).unwrap();
        store.read(&RUN.parse().unwrap(), 0, 100_000).await.unwrap()
    })
}

/// Each ticket's work trees, in journal order.
fn trees(events: &[StoredEvent]) -> HashMap<String, Vec<String>> {
    let mut out: HashMap<String, Vec<String>> = HashMap::new();
    for e in events {
        if let EventKind::WorkspaceReady { ticket, path, .. } = &e.event.kind {
            out.entry(ticket.to_string())
                .or_default()
                .push(path.clone());
        }
    }
    out
}

/// Twelve tickets, four at a time, each agent logging when it starts and
/// ends in its work tree: neither the journal nor the agents see two
/// tickets in one slot at once, and slots are reused.
#[test]
fn a_slot_never_holds_two_tickets() {
    let mut plan = String::from(
        r#"
name = "many"
default_role = "dev"
[policy]
max_concurrency = 4
[agents.dev]
backend = { kind = "command", argv = ["sh", "-c", "cat > /dev/null; echo \"$PWD $ORCH_TICKET start\" >> {marks}/log; sleep 0.2; echo \"$PWD $ORCH_TICKET end\" >> {marks}/log; echo $ORCH_TICKET > $ORCH_TICKET.txt"] }
[[phases]]
name = "do"
"#,
    );
    for i in 0..12 {
        plan.push_str(&format!(
            "[[tickets]]\nid = \"T{i}\"\ntitle = \"t\"\neffort = \"1h\"\n{}\n",
            if i >= 4 {
                format!("depends_on = [\"T{}\"]", i - 4)
            } else {
                String::new()
            }
        ));
    }
    let s = setup(&[("README.md", "x\n")], &plan);
    let (code, text) = output(&mut run(&s));
    assert_eq!(code, 0, "{text}");

    // The agents' own account: per work tree, starts and ends alternate.
    let log = std::fs::read_to_string(s.marks.join("log")).unwrap();
    let mut inside: HashMap<&str, &str> = HashMap::new();
    for line in log.lines() {
        let mut w = line.split(' ');
        let (dir, ticket, what) = (w.next().unwrap(), w.next().unwrap(), w.next().unwrap());
        match what {
            "start" => {
                if let Some(other) = inside.insert(dir, ticket) {
                    panic!("{ticket} started in {dir} while {other} worked there:\n{log}");
                }
            }
            _ => assert_eq!(inside.remove(dir), Some(ticket), "{log}"),
        }
    }
    // The journal's: a slot given to a ticket is not given to another
    // until that one is done.
    let events = journal(&s);
    let mut holder: HashMap<String, String> = HashMap::new();
    for e in &events {
        match &e.event.kind {
            EventKind::WorkspaceReady { ticket, path, .. } => {
                assert!(path.contains("/.orch/slots/"), "{path}");
                if let Some(other) = holder.insert(path.clone(), ticket.to_string()) {
                    panic!("{ticket} was given {path} while {other} held it");
                }
            }
            EventKind::TicketDone { ticket } => {
                holder.retain(|_, t| t != ticket.as_str());
            }
            _ => {}
        }
    }
    let used: std::collections::HashSet<String> = trees(&events).into_values().flatten().collect();
    assert!(
        used.len() <= 6,
        "12 tickets at 4 at a time reuse their slots: {used:?}"
    );
    // Each ticket's work is its own: T8 has T0's and T4's (its
    // dependencies), not T1's.
    let state = RunState::fold(events.iter().map(|e| &e.event));
    assert_eq!(state.count(TicketStatus::Done), 12);
    let files = git(
        &s.repo,
        &["ls-tree", "--name-only", &format!("orch/{RUN}/T8")],
    );
    assert_eq!(files, "README.md\nT0.txt\nT4.txt\nT8.txt", "{files}");
    // Done, every slot is free again (its head detached).
    for slot in used {
        let head = Command::new("git")
            .args(["symbolic-ref", "-q", "HEAD"])
            .current_dir(&slot)
            .output()
            .unwrap();
        assert!(!head.status.success(), "{slot} is still held");
    }
}

fn git(dir: &Path, args: &[&str]) -> String {
    demo::git(dir, args).unwrap()
}

/// A crate whose test passes only once `answer` returns 42. Ticket A's
/// agent does the work; B's does nothing, in the same slot right after,
/// with `target/` kept: A's build is there (B's agent sees it), yet B's
/// `cargo test` builds B's own sources and fails. What is not kept (an
/// ignored log A left) is gone.
#[test]
fn a_kept_cache_does_not_make_a_failing_ticket_pass() {
    let plan = r#"
name = "cache"
default_role = "dev"
[policy]
max_concurrency = 1
max_attempts = 1
[workspace]
keep = ["target/"]
[agents.dev]
backend = { kind = "command", argv = ["sh", "-c", "cat > /dev/null; if [ $ORCH_TICKET = A ]; then sed -i s/0/42/ src/lib.rs; echo built > debug.log; else test -d target/debug && touch {marks}/B-sees-the-cache; test -e debug.log || touch {marks}/B-has-no-log; fi"] }
[[phases]]
name = "implement"
on_exhausted = "fail"
gates = [{ kind = "command", name = "cargo test", argv = ["cargo", "test", "--offline", "-q"] }]
[[tickets]]
id = "A"
title = "make it 42"
effort = "1h"
priority = "P0"
[[tickets]]
id = "B"
title = "claims done, does nothing"
effort = "1h"
priority = "P3"
"#;
    let s = setup(
        &[
            (
                "Cargo.toml",
                "[package]\nname = \"calc\"\nversion = \"0.1.0\"\nedition = \"2021\"\n\n[workspace]\n",
            ),
            ("src/lib.rs", "pub fn answer() -> u32 {\n    0\n}\n"),
            (
                "tests/answer.rs",
                "#[test]\nfn answer_is_42() {\n    assert_eq!(calc::answer(), 42);\n}\n",
            ),
            (".gitignore", "target/\n*.log\nCargo.lock\n"),
        ],
        plan,
    );
    let (code, text) = output(&mut run(&s));
    assert_eq!(code, 1, "B must fail: {text}");
    let events = journal(&s);
    let state = RunState::fold(events.iter().map(|e| &e.event));
    assert_eq!(state.tickets["A"].status, TicketStatus::Done, "{text}");
    assert_eq!(state.tickets["B"].status, TicketStatus::Failed, "{text}");
    let t = trees(&events);
    assert_eq!(t["A"], t["B"], "both worked in the one slot");
    assert!(
        s.marks.join("B-sees-the-cache").exists(),
        "A's target/ was kept for B"
    );
    assert!(
        s.marks.join("B-has-no-log").exists(),
        "A's ignored log was cleaned away"
    );
    let failed = state
        .gate_runs
        .iter()
        .find(|g| {
            matches!(&g.scope, orch_core::GateScope::Phase { ticket, .. } if ticket.as_str() == "B")
        })
        .expect("B's gate ran");
    assert!(!failed.report.passed(), "{:?}", failed.report);
}

/// `orch` killed in the middle of switching a slot to ticket B (the git
/// it runs holds the switch after B's files are in, before the clean): the resumed run switches the slot again instead of taking what
/// it finds for B's work, so A's ignored leftovers do not reach B's gate.
#[test]
fn a_slot_switch_cut_short_by_a_crash_is_switched_again() {
    let plan = r#"
name = "switch"
default_role = "dev"
[policy]
max_concurrency = 1
max_attempts = 1
[agents.dev]
backend = { kind = "command", argv = ["sh", "-c", "cat > /dev/null; if [ $ORCH_TICKET = A ]; then echo a > leftover.log; fi; echo $ORCH_TICKET > $ORCH_TICKET.txt"] }
[[phases]]
name = "do"
on_exhausted = "fail"
gates = [{ kind = "command", name = "clean start", argv = ["sh", "-c", "test {ticket} = A || test ! -e leftover.log"] }]
[[tickets]]
id = "A"
title = "leaves an ignored file"
effort = "1h"
priority = "P0"
[[tickets]]
id = "B"
title = "must not see it"
effort = "1h"
priority = "P3"
"#;
    let s = setup(&[("README.md", "x\n"), (".gitignore", "*.log\n")], plan);
    // The git orch runs is this one: it holds the clean that would take
    // A's leftover away (B's switch, after its files were switched).
    let real = String::from_utf8(
        Command::new("sh")
            .args(["-c", "command -v git"])
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    let bin = s.marks.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    std::fs::write(
        bin.join("git"),
        format!(
            "#!/bin/sh\ncase \" $* \" in *\" clean \"*) if [ -e leftover.log ] && [ ! -e {m}/frozen ]; then touch {m}/frozen; sleep 60; fi;; esac\nexec {real} \"$@\"\n",
            m = s.marks.display(),
            real = real.trim()
        ),
    )
    .unwrap();
    Command::new("chmod")
        .arg("+x")
        .arg(bin.join("git"))
        .status()
        .unwrap();
    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap());
    let mut child = run(&s)
        .env("PATH", path)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !s.marks.join("frozen").exists() {
        assert!(Instant::now() < deadline, "B's switch never began");
        assert!(child.try_wait().unwrap().is_none(), "orch ended first");
        std::thread::sleep(Duration::from_millis(5));
    }
    child.kill().unwrap(); // SIGKILL, mid-switch
    child.wait().unwrap();
    let slot = trees(&journal(&s))["A"][0].clone();
    assert!(
        Path::new(&slot).join("leftover.log").exists(),
        "the switch was cut short before its clean"
    );
    let (code, text) = output(orch().args(["resume", "--state"]).arg(&s.state));
    assert_eq!(code, 0, "resume must complete: {text}");
    let events = journal(&s);
    let state = RunState::fold(events.iter().map(|e| &e.event));
    assert_eq!(state.tickets["B"].status, TicketStatus::Done);
    assert_eq!(trees(&events)["B"], [slot], "B resumed in its slot");
    let files = git(
        &s.repo,
        &["ls-tree", "--name-only", &format!("orch/{RUN}/B")],
    );
    assert_eq!(files, ".gitignore\nB.txt\nREADME.md", "B's work alone");
}

/// A completed run deletes the branches of tickets whose batch merged
/// (their commits stay in the batch's history); a ticket in no batch
/// keeps its branch, its work's only name.
#[test]
fn a_completed_run_leaves_no_branch_its_batches_hold() {
    let plan = r#"
name = "tidy"
default_role = "dev"
[agents.dev]
backend = { kind = "command", argv = ["sh", "-c", "cat > /dev/null; echo $ORCH_TICKET > $ORCH_TICKET.txt"] }
[[phases]]
name = "do"
[[batches]]
id = "X"
title = "first"
branch = "release/x"
tickets = ["A", "B"]
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
title = "in no batch"
effort = "1h"
"#;
    let s = setup(&[("README.md", "x\n")], plan);
    let (code, text) = output(&mut run(&s));
    assert_eq!(code, 0, "{text}");
    let branches = git(
        &s.repo,
        &["for-each-ref", "--format=%(refname:short)", "refs/heads/"],
    );
    assert_eq!(branches, format!("main\norch/{RUN}/C\nrelease/x"));
    let files = git(&s.repo, &["ls-tree", "--name-only", "release/x"]);
    assert_eq!(files, "A.txt\nB.txt\nREADME.md");
}

/// A batch's tickets lose their branches when the batch merges, once every
/// ticket that depends on them has started from them, not only when the
/// run completes; a dependent found again later (resumed after a decision)
/// does not need them.
#[test]
fn branches_go_when_their_batch_merges_and_their_dependents_started() {
    branches_go_when_their_batch_merges("");
}

/// The same with a fresh worktree for each ticket.
#[test]
fn branches_go_when_their_batch_merges_with_fresh_worktrees() {
    branches_go_when_their_batch_merges("[workspace]\nworktrees = \"fresh\"\n");
}

fn branches_go_when_their_batch_merges(workspace: &str) {
    let plan = r#"
name = "prune"
default_role = "dev"
{workspace}
[policy]
max_attempts = 1
[agents.dev]
backend = { kind = "command", argv = ["sh", "-c", "prompt=$(cat); case \"$ORCH_TICKET:$prompt\" in C:*'go ahead'*|A:*|B:*) echo $ORCH_TICKET > $ORCH_TICKET.txt;; esac"] }
[[phases]]
name = "do"
gates = [{ kind = "command", name = "wrote", argv = ["test", "-s", "{ticket}.txt"] }]
[[batches]]
id = "X"
title = "first"
branch = "release/x"
tickets = ["A", "B"]
[[batches]]
id = "Y"
title = "second"
branch = "release/y"
tickets = ["C"]
[[tickets]]
id = "A"
title = "a"
effort = "1h"
priority = "P1"
[[tickets]]
id = "B"
title = "b, last of X"
effort = "1h"
priority = "P3"
[[tickets]]
id = "C"
title = "c, on A; waits for a person"
effort = "1h"
priority = "P0"
depends_on = ["A"]
"#;
    let s = setup(
        &[("README.md", "x\n")],
        &plan.replace("{workspace}", workspace),
    );
    // One at a time: A, then C (P0), which escalates, then B, whose end
    // merges X while C waits.
    let (code, text) = output(run(&s).args(["--concurrency", "1"]));
    assert_eq!(code, 3, "C waits for a decision: {text}");
    let branches = || {
        git(
            &s.repo,
            &["for-each-ref", "--format=%(refname:short)", "refs/heads/"],
        )
    };
    assert_eq!(
        branches(),
        format!("main\norch/{RUN}/C\nrelease/x"),
        "A and B went with X's merge, the run not complete"
    );
    let files = git(&s.repo, &["ls-tree", "--name-only", "release/x"]);
    assert_eq!(files, "A.txt\nB.txt\nREADME.md");

    let (code, text) = output(
        orch()
            .args(["decide", "C", "--retry", "go ahead", "--state"])
            .arg(&s.state),
    );
    assert_eq!(code, 0, "{text}");
    // C's work tree is found again without A's branch: its start has A.
    let (code, text) = output(orch().args(["resume", "--state"]).arg(&s.state));
    assert_eq!(code, 0, "{text}");
    assert_eq!(branches(), "main\nrelease/x\nrelease/y");
    let files = git(&s.repo, &["ls-tree", "--name-only", "release/y"]);
    assert_eq!(files, "A.txt\nC.txt\nREADME.md");
}

/// An escalated ticket's slot keeps its uncommitted work for the person
/// to approve, even when its agent detached the slot's head (so the slot
/// looks free to git) and another run uses the repository meanwhile: the
/// slot's owner is orch's record, not what the slot has checked out.
#[test]
fn an_escalated_tickets_slot_is_not_taken_while_it_waits() {
    let plan = r#"
name = "wait"
default_role = "dev"
[policy]
max_attempts = 1
[agents.dev]
backend = { kind = "command", argv = ["sh", "-c", "cat > /dev/null; echo reviewed > work.txt; git checkout -q --detach"] }
[[phases]]
name = "do"
gates = [{ kind = "command", name = "needs a person", argv = ["false"] }]
[[tickets]]
id = "A"
title = "escalates"
effort = "1h"
"#;
    let s = setup(&[("README.md", "x\n")], plan);
    let (code, text) = output(&mut run(&s));
    assert_eq!(code, 3, "A waits for a decision: {text}");
    let slot = trees(&journal(&s))["A"][0].clone();

    // Another run in the same repository, meanwhile.
    let other = s.plan.with_file_name("other.toml");
    std::fs::write(
        &other,
        r#"
name = "other"
default_role = "dev"
[agents.dev]
backend = { kind = "command", argv = ["sh", "-c", "cat > /dev/null; echo x > x.txt"] }
[[phases]]
name = "do"
[[tickets]]
id = "X"
title = "x"
effort = "1h"
"#,
    )
    .unwrap();
    let state2 = s.state.with_file_name("state2");
    let (code, text) = output(
        orch()
            .arg("run")
            .arg(&other)
            .arg("--repo")
            .arg(&s.repo)
            .arg("--state")
            .arg(&state2)
            .args(["--run", "other"]),
    );
    assert_eq!(code, 0, "{text}");
    let x_tree = git(&s.repo, &["worktree", "list", "--porcelain"]);
    assert!(x_tree.contains(&slot), "{x_tree}");
    assert_eq!(
        std::fs::read_to_string(Path::new(&slot).join("work.txt")).unwrap(),
        "reviewed\n",
        "A's work is still in its slot"
    );

    let (code, text) = output(
        orch()
            .args(["decide", "A", "--approve", "--state"])
            .arg(&s.state),
    );
    assert_eq!(code, 0, "{text}");
    let (code, text) = output(orch().args(["resume", "--state"]).arg(&s.state));
    assert_eq!(code, 0, "{text}");
    assert_eq!(trees(&journal(&s))["A"].last().unwrap(), &slot);
    let files = git(
        &s.repo,
        &["ls-tree", "--name-only", &format!("orch/{RUN}/A")],
    );
    assert_eq!(files, "README.md\nwork.txt", "the approved work is A's");
}
