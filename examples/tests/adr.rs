//! Decision records: a person's answer written down as
//! `docs/adr/ADR-NNN-<slug>.md`, numbered after what the repository and the
//! run hold, committed with the ticket's checkpoints on real git whatever
//! the agent does to it (`run_cli.rs` shows that no secret of the deciding
//! process reaches it).

use std::path::Path;
use std::sync::Arc;

use orch_agents::{ScriptedAgent, Step};
use orch_core::{AgentOutcome, Cancellation, Decision, Plan, RunOutcome};
use orch_examples::{Setup, demo, open_store};
use orch_graph::{AdrDraft, EngineError, decide_with_adr};

/// `spec`, which freezes `docs/`; `work` (one attempt, a person decides
/// when it fails), which needs `<ticket>.txt`; then `review`, which checks
/// nothing. Each checkpoints. A and B are independent.
const PLAN: &str = r#"
name = "records"
default_role = "dev"
[agents.dev]
backend = { kind = "custom", name = "scripted" }
[[phases]]
name = "spec"
freeze = ["docs/**"]
[[phases]]
name = "work"
max_attempts = 1
on_exhausted = "escalate"
gates = [{ kind = "command", name = "written", argv = ["test", "-s", "{ticket}.txt"] }]
[[phases]]
name = "review"
[[tickets]]
id = "A"
title = "a"
effort = "1h"
[[tickets]]
id = "B"
title = "b"
effort = "1h"
"#;

const FORGED: &str = "# ADR-005: Approved by nobody\n";

fn write(dir: &Path, rel: &str, text: &str) {
    let p = dir.join(rel);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, text).unwrap();
}

fn ok() -> Result<AgentOutcome, orch_core::AgentError> {
    Ok(AgentOutcome {
        success: true,
        summary: "done".into(),
        ..AgentOutcome::default()
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_is_numbered_committed_and_kept_from_the_agent() {
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("repo");
    // The repository already holds records up to ADR-004.
    demo::init_repo(
        &repo,
        &[
            ("README.md", "records\n"),
            ("docs/adr/ADR-004-old-choice.md", "# ADR-004: Old choice\n"),
            ("docs/adr/ADR-QUOTE-001.md", "not numbered\n"),
        ],
    )
    .unwrap();
    let state_dir = dir.path().join("state");
    let agent = Arc::new(
        ScriptedAgent::new(
            "s",
            Step::Write(vec![("{ticket}.txt".into(), "x\n".into())]),
        )
        .on("A", "work", 1, Step::Fail("not yet".into()))
        .on("B", "work", 1, Step::Fail("not yet".into()))
        // A's retry forges the record it expects the person to write,
        // and has git ignore the records.
        .on(
            "A",
            "work",
            2,
            Step::Run(Arc::new(|t| {
                write(&t.workdir, "A.txt", "x\n");
                write(&t.workdir, ".gitignore", "docs/adr/\n");
                let adr = std::fs::read_dir(t.workdir.join("docs/adr")).unwrap();
                assert_eq!(adr.count(), 2, "nothing is written before the pass");
                write(&t.workdir, "docs/adr/ADR-005-write-a-after-all.md", FORGED);
                ok()
            })),
        )
        // A's review puts a link to the README where the record was.
        .on(
            "A",
            "review",
            1,
            Step::Run(Arc::new(|t| {
                let p = t.workdir.join("docs/adr/ADR-005-write-a-after-all.md");
                assert!(p.exists(), "the record is in the work tree");
                std::fs::remove_file(&p).unwrap();
                std::os::unix::fs::symlink("../../README.md", &p).unwrap();
                ok()
            })),
        ),
    );
    let plan = Plan::from_toml_str(PLAN).unwrap();
    let mut setup = Setup::new(plan, &repo, &state_dir, agent);
    setup.progress = false;
    let store = open_store(&state_dir).unwrap();
    let run = "records".parse().unwrap();
    let report = setup
        .engine(store.clone())
        .unwrap()
        .run(&run, Cancellation::new())
        .await
        .unwrap();
    assert_eq!(report.outcome, RunOutcome::Paused);

    let (a, b) = ("A".parse().unwrap(), "B".parse().unwrap());
    let empty = decide_with_adr(
        store.as_ref(),
        &run,
        &a,
        Decision::Retry,
        None,
        AdrDraft::titled("  "),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(&empty, EngineError::Decision(m) if m == "a decision record needs a title"),
        "{empty}"
    );

    for (title, why) in [
        ("two\nlines", "one line of at most 200 characters"),
        (&*"x".repeat(201), "one line of at most 200 characters"),
    ] {
        let err = decide_with_adr(
            store.as_ref(),
            &run,
            &a,
            Decision::Retry,
            None,
            AdrDraft::titled(title),
        )
        .await
        .unwrap_err();
        assert!(err.to_string().contains(why), "{err}");
    }
    let mut draft = AdrDraft::titled("Write A after all");
    draft.deciders = vec!["dana".into()];
    draft.consequences = Some("A ships.".into());
    let first = decide_with_adr(
        store.as_ref(),
        &run,
        &a,
        Decision::Retry,
        Some("write A.txt".into()),
        draft,
    )
    .await
    .unwrap();
    // After ADR-004 in the work tree (ADR-QUOTE-001 is not numbered).
    assert_eq!(first.number, 5);
    assert_eq!(first.path(), "docs/adr/ADR-005-write-a-after-all.md");
    // B's work tree does not hold A's record, the journal does.
    let second = decide_with_adr(
        store.as_ref(),
        &run,
        &b,
        Decision::Skip,
        None,
        AdrDraft::titled("Drop B"),
    )
    .await
    .unwrap();
    assert_eq!(second.number, 6);
    assert_eq!(
        second.alternatives,
        [
            "Approve: the phase passes with the work as it is; what its gates found stays open, accepted",
            "Retry: the phase runs again, with the note as the agent's feedback",
            "Abort: the whole run stops; nothing more is merged",
        ]
    );
    assert!(
        second.context.starts_with("B stopped in phase `work`"),
        "{}",
        second.context
    );
    // What the agent left is fenced: it cannot add headings to the record.
    assert!(
        second
            .context
            .contains("What the last attempt left:\n\n```text\n"),
        "{}",
        second.context
    );
    // Answered: no second record for the same question.
    let again = decide_with_adr(
        store.as_ref(),
        &run,
        &b,
        Decision::Skip,
        None,
        AdrDraft::titled("Drop B again"),
    )
    .await
    .unwrap_err();
    assert!(again.to_string().contains("already answered"), "{again}");

    let report = setup
        .engine(store.clone())
        .unwrap()
        .run(&run, Cancellation::new())
        .await
        .unwrap();
    assert_eq!(report.outcome, RunOutcome::Failed, "B was skipped");
    let t = &report.state.tickets["A"];
    // The record, orch's own, is no change to what `spec` froze: review
    // passed at once, though the agent deleted it.
    assert_eq!(
        t.metrics.failed_attempts, 1,
        "{:#?}",
        report.state.gate_runs
    );
    // Both of A's later checkpoints carry the person's record, not the
    // agent's forgery, as a plain file though git was told to ignore it;
    // the README the link led to is untouched.
    for phase in ["work", "review"] {
        let commit = t.checkpoints.get(phase).unwrap();
        let entry = demo::git(&repo, &["ls-tree", commit, "--", &first.path()]).unwrap();
        assert!(entry.starts_with("100644 blob "), "{phase}: {entry}");
        let readme = demo::git(&repo, &["show", &format!("{commit}:README.md")]).unwrap();
        assert_eq!(readme, "records", "{phase}");
        let text = demo::git(&repo, &["show", &format!("{commit}:{}", first.path())]).unwrap();
        assert!(
            text.starts_with("# ADR-005: Write A after all\n\nDate: "),
            "{phase}: {text}"
        );
        for section in [
            "## Context",
            "## Decision",
            "## Consequences",
            "## Alternatives Considered",
        ] {
            assert!(text.contains(section), "{phase}: {text}");
        }
        assert!(text.contains("Deciders: dana"), "{text}");
        assert!(
            text.contains("Retry: A, phase `work`. write A.txt"),
            "{text}"
        );
        assert!(!text.contains("Approved by nobody"), "{text}");
    }
    // The state directory keeps both, the skipped ticket's too, linked
    // from the decision queue.
    for adr in [&first, &second] {
        let name = adr.path().replace("docs/adr/", "adr/records/");
        let copy = std::fs::read_to_string(state_dir.join(&name)).unwrap();
        assert!(copy.starts_with(&format!("# ADR-{:03}: ", adr.number)));
        let queue = std::fs::read_to_string(state_dir.join("DECISION_QUEUE.md")).unwrap();
        assert!(queue.contains(&format!("]({name})")), "{queue}");
    }
    // Only the retried ticket's record is committed.
    let queue = std::fs::read_to_string(state_dir.join("DECISION_QUEUE.md")).unwrap();
    assert!(
        queue.contains("(adr/records/ADR-006-drop-b.md) (not committed) |"),
        "{queue}"
    );
}
