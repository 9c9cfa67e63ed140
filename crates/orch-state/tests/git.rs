//! Worktrees, checkpoints, rollback and batch merges on real repositories.

use std::path::Path;
use std::process::Command;

use orch_state::git::{MergeOutcome, Repo, Shared};

fn sh(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

fn repo() -> (tempfile::TempDir, Repo) {
    let d = tempfile::tempdir().unwrap();
    sh(d.path(), &["init", "-q", "-b", "main"]);
    sh(d.path(), &["config", "user.email", "t@example.com"]);
    sh(d.path(), &["config", "user.name", "t"]);
    std::fs::write(d.path().join(".gitignore"), ".orch/\n").unwrap();
    std::fs::write(d.path().join("app.txt"), "line 1\nline 2\nline 3\n").unwrap();
    sh(d.path(), &["add", "-A"]);
    sh(d.path(), &["commit", "-q", "-m", "base"]);
    let r = Repo::open(d.path()).unwrap();
    (d, r)
}

#[test]
fn worktree_checkpoint_rollback() {
    let (_d, repo) = repo();
    let run = "r1".parse().unwrap();
    let t = "SEC-001".parse().unwrap();
    let wt = repo.worktree(&run, &t, "main").unwrap();
    assert_eq!(wt.branch, "orch/r1/SEC-001");
    assert!(wt.path.join("app.txt").is_file());
    // Creating it again (resume after a crash) finds the same worktree.
    assert_eq!(repo.worktree(&run, &t, "main").unwrap(), wt);

    std::fs::write(wt.path.join("fix.txt"), "escaped\n").unwrap();
    let c1 = repo
        .checkpoint(&wt, "r1/SEC-001/plan/1", "SEC-001: plan passed")
        .unwrap();
    // The same checkpoint key again is recognised, not committed twice.
    assert_eq!(
        repo.checkpoint(&wt, "r1/SEC-001/plan/1", "SEC-001: plan passed")
            .unwrap(),
        c1
    );
    assert_eq!(sh(&wt.path, &["rev-list", "--count", "HEAD"]), "2");

    std::fs::write(wt.path.join("app.txt"), "broken\n").unwrap();
    std::fs::write(wt.path.join("junk.txt"), "junk\n").unwrap();
    repo.rollback(&wt, &c1).unwrap();
    assert_eq!(
        std::fs::read_to_string(wt.path.join("app.txt")).unwrap(),
        "line 1\nline 2\nline 3\n"
    );
    assert!(
        !wt.path.join("junk.txt").exists(),
        "untracked files removed"
    );
    assert!(
        wt.path.join("fix.txt").exists(),
        "the checkpoint's work kept"
    );

    // Stale worktrees after a crash: the ones not active.
    let other = repo
        .worktree(&run, &"SEC-002".parse().unwrap(), "main")
        .unwrap();
    let stale = repo
        .stale_worktrees(&run, std::slice::from_ref(&t))
        .unwrap();
    assert_eq!(stale.len(), 1);
    assert_eq!(stale[0].branch, "orch/r1/SEC-002");
    repo.remove_worktree(&other).unwrap();
    assert!(!other.path.exists());
    assert!(repo.stale_worktrees(&run, &[t]).unwrap().is_empty());
}

#[test]
fn batch_merge_and_conflicts() {
    let (_d, repo) = repo();
    let run = "r1".parse().unwrap();
    let edit = |ticket: &str, file: &str, text: &str| {
        let wt = repo
            .worktree(&run, &ticket.parse().unwrap(), "main")
            .unwrap();
        std::fs::write(wt.path.join(file), text).unwrap();
        repo.checkpoint(&wt, &format!("r1/{ticket}/implement/1"), ticket)
            .unwrap();
        wt.branch
    };
    let a = edit("A", "a.txt", "a\n");
    let b = edit("B", "b.txt", "b\n");
    let batch = "PR1".parse().unwrap();
    let out = repo
        .merge_batch(
            &run,
            &batch,
            "orch/pr1",
            "main",
            &[a.clone(), b.clone()],
            None,
        )
        .unwrap();
    let MergeOutcome::Merged { commit } = out else {
        panic!("{out:?}")
    };
    let wt = repo.batch_worktree(&run, &batch);
    assert!(wt.join("a.txt").is_file() && wt.join("b.txt").is_file());
    // Merging again (resume) recognises both merges.
    assert_eq!(
        repo.merge_batch(&run, &batch, "orch/pr1", "main", &[a, b], None)
            .unwrap(),
        MergeOutcome::Merged {
            commit: commit.clone()
        }
    );

    // Two tickets that change the same line conflict: a result, not an error.
    let c = edit("C", "app.txt", "line 1\nC's line 2\nline 3\n");
    let d = edit("D", "app.txt", "line 1\nD's line 2\nline 3\n");
    let batch2 = "PR2".parse().unwrap();
    let out = repo
        .merge_batch(&run, &batch2, "orch/pr2", "main", &[c, d.clone()], None)
        .unwrap();
    assert_eq!(
        out,
        MergeOutcome::Conflict {
            branch: d,
            files: vec!["app.txt".into()]
        }
    );
    // Nothing lost: the batch branch holds C's change, clean; D's branch is intact.
    let wt2 = repo.batch_worktree(&run, &batch2);
    assert_eq!(
        std::fs::read_to_string(wt2.join("app.txt")).unwrap(),
        "line 1\nC's line 2\nline 3\n"
    );
    assert_eq!(sh(&wt2, &["status", "--porcelain"]), "");
    assert_eq!(
        sh(repo.root(), &["show", "orch/r1/D:app.txt"]),
        "line 1\nD's line 2\nline 3"
    );
}

/// `file#key` freezes part of a settings file: the dependencies of
/// `Cargo.toml` may change, its `[[test]]` targets and `[lib]` settings may
/// not; in an INI file only the named section counts; a settings part that
/// appears where there was none is a change too.
#[test]
fn a_frozen_part_of_a_settings_file_may_not_change_the_rest_may() {
    let (_d, repo) = repo();
    let run = "r1".parse().unwrap();
    let t = "T".parse().unwrap();
    let wt = repo.worktree(&run, &t, "main").unwrap();
    let cargo = "[package]\nname = \"a\"\n\n[dependencies]\n\n[lib]\nharness = true\n\n[[test]]\nname = \"spec\"\npath = \"tests/spec.rs\"\n";
    std::fs::write(wt.path.join("Cargo.toml"), cargo).unwrap();
    std::fs::write(
        wt.path.join("setup.cfg"),
        "[metadata]\nname = a\n\n[tool:pytest]\n# tests live here\ntestpaths = tests\n",
    )
    .unwrap();
    let c = repo.checkpoint(&wt, "r1/T/tests/1", "tests").unwrap();
    let frozen = [
        "Cargo.toml#test".to_owned(),
        "Cargo.toml#lib".to_owned(),
        "setup.cfg#tool:pytest".to_owned(),
        "pyproject.toml#tool.pytest".to_owned(),
    ];
    let changed = |repo: &Repo| repo.changed_since(&wt, &c, &frozen).unwrap();

    // Allowed: a dependency, a metadata field, a comment, a pyproject
    // without pytest settings.
    std::fs::write(
        wt.path.join("Cargo.toml"),
        cargo.replace("[dependencies]\n", "[dependencies]\nserde = \"1\"\n"),
    )
    .unwrap();
    std::fs::write(
        wt.path.join("setup.cfg"),
        "[metadata]\nname = b\n\n[tool:pytest]\ntestpaths = tests\n",
    )
    .unwrap();
    std::fs::write(wt.path.join("pyproject.toml"), "[project]\nname = \"a\"\n").unwrap();
    let (files, diff) = changed(&repo);
    assert!(files.is_empty(), "{files:?}\n{diff}");

    // Not allowed: the harness off, a test target removed, pytest told to
    // look elsewhere, pytest settings added to pyproject.
    std::fs::write(
        wt.path.join("Cargo.toml"),
        "[package]\nname = \"a\"\n\n[lib]\nharness = false\n",
    )
    .unwrap();
    std::fs::write(
        wt.path.join("setup.cfg"),
        "[tool:pytest]\ntestpaths = nothing\n",
    )
    .unwrap();
    std::fs::write(
        wt.path.join("pyproject.toml"),
        "[tool.pytest.ini_options]\naddopts = \"-k not_slow\"\n",
    )
    .unwrap();
    let (files, diff) = changed(&repo);
    assert_eq!(
        files,
        frozen
            .iter()
            .cloned()
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect::<Vec<_>>(),
        "{diff}"
    );
    assert!(diff.contains("\"harness\": false"), "{diff}");
    assert!(diff.contains("testpaths = nothing"), "{diff}");
    assert!(
        diff.contains("--- pyproject.toml#tool.pytest at the checkpoint\n(absent)"),
        "{diff}"
    );

    // A Cargo.toml that no longer parses is a change of every frozen part.
    std::fs::write(wt.path.join("Cargo.toml"), "[lib\n").unwrap();
    let (files, _) = changed(&repo);
    assert!(files.contains(&"Cargo.toml#test".to_owned()), "{files:?}");
}

/// What a checkpoint would commit is scanned however it got there: a
/// file the agent staged itself, a file whose name is a token, and the
/// branch's own commits since the base (a key committed and removed
/// again, a key in a commit message). Findings name places, not values.
#[test]
fn the_commit_scan_sees_staged_files_names_and_history() {
    let (_d, repo) = repo();
    let run = "r1".parse().unwrap();
    let t = "T".parse().unwrap();
    let wt = repo.worktree(&run, &t, "main").unwrap();
    let base = sh(&wt.path, &["rev-parse", "HEAD"]);
    let redactor = orch_core::secrets::Redactor::default();
    let key = "AKIAZ7Q3EXAMPLE4KEY1";
    assert_eq!(
        repo.secrets(&wt, &base, &redactor).unwrap(),
        Vec::<String>::new()
    );

    std::fs::write(wt.path.join("staged.txt"), format!("k={key}\n")).unwrap();
    sh(&wt.path, &["add", "staged.txt"]);
    std::fs::write(
        wt.path.join("ghp_R4nd0mT0k3nF0rT3st1ngPurp0s3sOnly12"),
        "x\n",
    )
    .unwrap();
    let found = repo.secrets(&wt, &base, &redactor).unwrap();
    assert!(
        found.contains(&"staged.txt:1 (AWS access key id)".to_owned()),
        "{found:?}"
    );
    assert!(
        found
            .iter()
            .any(|f| f.starts_with("the name of ghp_") && f.ends_with("(GitHub token)")),
        "{found:?}"
    );
    assert!(
        !found.iter().any(|f| f.contains(key)),
        "no value in a finding: {found:?}"
    );

    // Committed and removed again; and a message with a key.
    let git = |args: &[&str]| {
        sh(
            &wt.path,
            &[&["-c", "user.name=a", "-c", "user.email=a@a"][..], args].concat(),
        )
    };
    git(&["add", "-A"]);
    git(&["commit", "-q", "-m", "add"]);
    git(&[
        "rm",
        "-q",
        "staged.txt",
        "ghp_R4nd0mT0k3nF0rT3st1ngPurp0s3sOnly12",
    ]);
    git(&["commit", "-q", "-m", &format!("remove the key {key}")]);
    let found = repo.secrets(&wt, &base, &redactor).unwrap();
    assert!(
        found
            .iter()
            .any(|f| f.starts_with("staged.txt in commit ") && f.ends_with("(AWS access key id)")),
        "{found:?}"
    );
    assert!(
        found
            .iter()
            .any(|f| f.starts_with("the message of commit ") && f.ends_with("(AWS access key id)")),
        "{found:?}"
    );
    // Nothing in the work tree: the last guard before a commit lets it be.
    assert_eq!(
        repo.uncommitted_secrets(&wt, &redactor).unwrap(),
        Vec::<String>::new()
    );
}

/// Frozen files are compared as bytes with the checkpoint, not through
/// git's view of the work tree: an index flag (assume-unchanged,
/// skip-worktree), an ignore rule or a clean filter that hides a change
/// from `git status` does not hide it from the freeze.
#[test]
fn a_frozen_change_git_does_not_show_is_still_seen() {
    let (_d, repo) = repo();
    let run = "r1".parse().unwrap();
    let t = "T".parse().unwrap();
    let wt = repo.worktree(&run, &t, "main").unwrap();
    std::fs::create_dir_all(wt.path.join("tests")).unwrap();
    for f in ["a.py", "b.py", "c.py"] {
        std::fs::write(wt.path.join("tests").join(f), format!("assert {f:?}\n")).unwrap();
    }
    let c = repo.checkpoint(&wt, "r1/T/tests/1", "tests").unwrap();
    let frozen = ["tests/**".to_owned()];
    assert!(repo.changed_since(&wt, &c, &frozen).unwrap().0.is_empty());

    sh(
        &wt.path,
        &["update-index", "--assume-unchanged", "tests/a.py"],
    );
    std::fs::write(wt.path.join("tests/a.py"), "assert True\n").unwrap();
    sh(&wt.path, &["update-index", "--skip-worktree", "tests/b.py"]);
    std::fs::write(wt.path.join("tests/b.py"), "assert True\n").unwrap();
    std::fs::write(
        wt.path.join("tests/.gitignore"),
        "conftest.py\n.gitignore\n",
    )
    .unwrap();
    std::fs::write(
        wt.path.join("tests/conftest.py"),
        "collect_ignore = ['c.py']\n",
    )
    .unwrap();
    assert_eq!(
        sh(&wt.path, &["status", "--porcelain"]),
        "",
        "git shows nothing"
    );
    let (files, diff) = repo.changed_since(&wt, &c, &frozen).unwrap();
    assert_eq!(
        files,
        [
            "tests/.gitignore",
            "tests/a.py",
            "tests/b.py",
            "tests/conftest.py"
        ],
        "{diff}"
    );
    assert!(
        diff.contains("tests/a.py: changed on disk, though git shows no difference"),
        "{diff}"
    );
    assert!(diff.contains("+collect_ignore"), "{diff}");
}

/// A frozen INI section is read as pytest reads it: an indented decoy
/// header continues a value (the real section below still counts), a
/// header may carry a comment, and a second section of the name is a
/// change.
#[test]
fn a_frozen_ini_section_is_read_as_pytest_reads_it() {
    let (_d, repo) = repo();
    let run = "r1".parse().unwrap();
    let t = "T".parse().unwrap();
    let wt = repo.worktree(&run, &t, "main").unwrap();
    let cfg = "[metadata]\nname = a\n\n[tool:pytest]\ntestpaths = tests\n";
    std::fs::write(wt.path.join("setup.cfg"), cfg).unwrap();
    let c = repo.checkpoint(&wt, "r1/T/tests/1", "tests").unwrap();
    let frozen = ["setup.cfg#tool:pytest".to_owned()];
    for weakened in [
        // The old section as a decoy inside a value, the real one changed.
        "[metadata]\nname = a\ndescription = x\n    [tool:pytest]\n    testpaths = tests\n\n[tool:pytest]\ntestpaths = tests\naddopts = --deselect tests/test_hard.py\n",
        // A header with a comment is still the header.
        "[metadata]\nname = a\n\n[tool:pytest] # settings\ntestpaths = nothing\n",
        // A second section of the same name.
        "[metadata]\nname = a\n\n[tool:pytest]\ntestpaths = tests\n\n[tool:pytest]\naddopts = -k easy\n",
    ] {
        std::fs::write(wt.path.join("setup.cfg"), weakened).unwrap();
        let (files, diff) = repo.changed_since(&wt, &c, &frozen).unwrap();
        assert_eq!(files, frozen, "{weakened}\n{diff}");
    }
    std::fs::write(
        wt.path.join("setup.cfg"),
        "[metadata]\nname = b\n\n[tool:pytest] ; ok\n# why\ntestpaths = tests\n",
    )
    .unwrap();
    assert!(repo.changed_since(&wt, &c, &frozen).unwrap().0.is_empty());
}

/// A slot recorded as a ticket's by an orch killed before the ticket's
/// branch was made (its start is made after the slot is taken) is switched
/// again when the ticket is prepared, not taken as switched: the ticket
/// starts from its base with its dependency merged, not from an unborn
/// head ("Non-fast-forward commit does not make sense into an empty head").
#[test]
fn a_slot_taken_by_an_orch_that_died_before_the_branch_was_made_is_switched() {
    use orch_core::Workspace;
    let (d, repo) = repo();
    let ws = orch_state::GitWorkspace::new(repo, "main").unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let run: orch_core::RunId = "r1".parse().unwrap();
    let t = |s: &str| -> orch_core::TicketId { s.parse().unwrap() };
    let a = rt.block_on(ws.prepare(&run, &t("A"), &[])).unwrap();
    std::fs::write(a.path.join("a.txt"), "A\n").unwrap();
    rt.block_on(ws.checkpoint(&run, &t("A"), &"do".parse().unwrap(), 1, &[], None))
        .unwrap();
    rt.block_on(ws.release(&run, &t("A"))).unwrap();
    // What the killed orch left: slot 0 recorded as B's, B's branch not
    // made, no switch begun.
    std::fs::write(d.path().join(".orch/slots/0.owner"), "orch/r1/B").unwrap();
    let _ = std::fs::remove_file(d.path().join(".orch/slots/0.switching"));
    drop(ws);

    let ws = orch_state::GitWorkspace::new(Repo::open(d.path()).unwrap(), "main").unwrap();
    let b = rt.block_on(ws.prepare(&run, &t("B"), &[t("A")])).unwrap();
    assert!(b.path.ends_with(".orch/slots/0"), "{:?}", b.path);
    assert_eq!(
        std::fs::read_to_string(b.path.join("a.txt")).unwrap(),
        "A\n"
    );
    let head = sh(&b.path, &["rev-parse", "--abbrev-ref", "HEAD"]);
    assert_eq!(head.trim(), "orch/r1/B");
}

/// Slots through the workspace: a slot another process holds (its lock
/// taken by `flock`) is not given out even though it is free; tickets
/// prepared at once each get a slot of their own; a released slot is
/// reused, cleaned, and a slot with hidden changes (skip-worktree, which
/// a switch keeps; a file in a kept directory hidden by a changed
/// `.gitignore`) does not carry them to the next ticket.
#[test]
fn slots_are_held_by_one_ticket_and_one_process() {
    use orch_core::Workspace;
    let (d, repo) = repo();
    std::fs::create_dir_all(d.path().join("docs/target")).unwrap();
    std::fs::write(d.path().join("docs/target/README.md"), "docs\n").unwrap();
    sh(d.path(), &["add", "docs"]);
    sh(d.path(), &["commit", "-q", "-m", "docs"]);
    let ws = std::sync::Arc::new(orch_state::GitWorkspace::new(repo, "main").unwrap());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .build()
        .unwrap();
    let run: orch_core::RunId = "r1".parse().unwrap();
    let t = |s: &str| -> orch_core::TicketId { s.parse().unwrap() };

    let first = rt.block_on(ws.prepare(&run, &t("A"), &[])).unwrap();
    assert!(first.path.ends_with(".orch/slots/0"), "{:?}", first.path);
    // A hides a change to a tracked file from git, then is done.
    std::fs::write(first.path.join("app.txt"), "A's change\n").unwrap();
    sh(&first.path, &["update-index", "--skip-worktree", "app.txt"]);
    rt.block_on(ws.release(&run, &t("A"))).unwrap();

    // Another process holds slot 0's lock.
    let lock = d.path().join(".orch/slots/0.lock");
    // (`-o`: the lock stays with flock, not with its command.)
    let mut holder = Command::new("flock")
        .args(["-n", "-o"])
        .arg(&lock)
        .args(["sh", "-c", "echo held; read _"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(holder.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    assert_eq!(line, "held\n");

    // Eight tickets at once.
    let ids: Vec<String> = (1..=8).map(|i| format!("T{i}")).collect();
    let paths: Vec<std::path::PathBuf> = rt.block_on(async {
        let tasks: Vec<_> = ids
            .iter()
            .map(|id| {
                let (ws, run, id) = (ws.clone(), run.clone(), t(id));
                tokio::spawn(async move { ws.prepare(&run, &id, &[]).await })
            })
            .collect();
        let mut out = Vec::new();
        for task in tasks {
            out.push(task.await.unwrap().unwrap().path.to_path_buf());
        }
        out
    });
    let distinct: std::collections::HashSet<_> = paths.iter().collect();
    assert_eq!(distinct.len(), 8, "{paths:?}");
    assert!(
        !paths.iter().any(|p| p.ends_with(".orch/slots/0")),
        "slot 0 is another process's: {paths:?}"
    );
    holder.kill().unwrap();
    holder.wait().unwrap();
    drop(holder.stdin.take()); // its command ends too

    // Free again, slot 0 goes to the next ticket, clean: A's hidden
    // change did not survive the switch.
    let next = rt.block_on(ws.prepare(&run, &t("B"), &[])).unwrap();
    assert!(next.path.ends_with(".orch/slots/0"), "{:?}", next.path);
    assert_eq!(
        std::fs::read_to_string(next.path.join("app.txt")).unwrap(),
        "line 1\nline 2\nline 3\n"
    );
    assert_eq!(
        sh(&next.path, &["ls-files", "-v"]),
        "H .gitignore\nH app.txt\nH docs/target/README.md"
    );
    assert_eq!(sh(&next.path, &["status", "--porcelain", "--ignored"]), "");
    // Preparing B again (a restart) finds B's slot.
    let again = rt.block_on(ws.prepare(&run, &t("B"), &[])).unwrap();
    assert_eq!(again.path, next.path);
    // B leaves, not committed, a `.gitignore` that hides a file it made
    // in a directory slots keep (`target/`) that holds tracked files: C
    // does not get the file, nor B's hidden change.
    std::fs::write(next.path.join(".gitignore"), ".orch/\n*.rs\n").unwrap();
    std::fs::create_dir_all(next.path.join("docs/target")).unwrap();
    std::fs::write(next.path.join("docs/target/planted.rs"), "B's\n").unwrap();
    // And a change it told git to assume is not there.
    sh(
        &next.path,
        &["update-index", "--assume-unchanged", "app.txt"],
    );
    std::fs::write(next.path.join("app.txt"), "B's change\n").unwrap();
    rt.block_on(ws.release(&run, &t("B"))).unwrap();
    let c = rt.block_on(ws.prepare(&run, &t("C"), &[])).unwrap();
    assert_eq!(c.path, next.path);
    assert!(
        !c.path.join("docs/target/planted.rs").exists(),
        "B's planted file survived"
    );
    assert_eq!(sh(&c.path, &["status", "--porcelain", "--ignored"]), "");
    assert_eq!(
        sh(&c.path, &["ls-files", "-v"]),
        "H .gitignore\nH app.txt\nH docs/target/README.md"
    );
    assert_eq!(
        std::fs::read_to_string(c.path.join("app.txt")).unwrap(),
        "line 1\nline 2\nline 3\n"
    );
}

/// A work tree whose `.git` its agent removed is not a repository to
/// orch: a checkpoint there fails instead of committing the ticket's
/// files onto the person's own checkout above it.
#[test]
fn a_work_tree_without_its_git_file_commits_nowhere() {
    let (d, repo) = repo();
    let run = "r1".parse().unwrap();
    let t = "T-1".parse().unwrap();
    let wt = repo.worktree(&run, &t, "main").unwrap();
    std::fs::write(wt.path.join("new.txt"), "work\n").unwrap();
    std::fs::remove_file(wt.path.join(".git")).unwrap();
    let before = sh(d.path(), &["rev-parse", "HEAD"]);
    let err = repo
        .checkpoint(&wt, "r1/T-1/do/1", "do passed")
        .unwrap_err();
    assert!(err.message.contains("not a git repository"), "{err}");
    assert_eq!(sh(d.path(), &["rev-parse", "HEAD"]), before);
    assert_eq!(sh(d.path(), &["status", "--porcelain"]), "");
}

/// A new ticket's start: its dependencies merged in the object database
/// (no work tree), each once even when one already holds another; work
/// that conflicts is a `Conflict` naming the file.
#[test]
fn a_tickets_start_merges_its_dependencies_or_names_the_conflict() {
    let (d, repo) = repo();
    let commit_on = |branch: &str, from: &str, file: &str, text: &str| {
        sh(d.path(), &["checkout", "-q", "-b", branch, from]);
        std::fs::write(d.path().join(file), text).unwrap();
        sh(d.path(), &["add", "-A"]);
        sh(d.path(), &["commit", "-q", "-m", branch]);
        sh(d.path(), &["checkout", "-q", "main"]);
    };
    commit_on("a", "main", "a.txt", "a\n");
    commit_on("b", "a", "b.txt", "b\n"); // b holds a
    commit_on("c", "main", "c.txt", "c\n");
    let deps = ["a", "b", "c"].map(str::to_owned);
    let start = repo.start_commit("main", &deps, "orch/r/T").unwrap();
    assert_eq!(
        sh(d.path(), &["ls-tree", "--name-only", &start]),
        ".gitignore\na.txt\napp.txt\nb.txt\nc.txt"
    );
    // Two merges (b brings a), each with the base and the dependency as parents.
    assert_eq!(
        sh(
            d.path(),
            &["rev-list", "--count", "--merges", &format!("main..{start}")]
        ),
        "2"
    );

    commit_on("x", "main", "app.txt", "line 1 from x\nline 2\nline 3\n");
    commit_on("y", "main", "app.txt", "line 1 from y\nline 2\nline 3\n");
    let err = repo
        .start_commit("main", &["x".to_owned(), "y".to_owned()], "orch/r/U")
        .unwrap_err();
    assert_eq!(err.kind, orch_core::WorkspaceErrorKind::Conflict, "{err}");
    assert!(err.message.contains("app.txt"), "{err}");
}

/// A batch's branch is moved forward to a merge made on another machine
/// (fetched through the remote, pushed there), never back, never in a
/// work tree orch did not make, and follows in the one the batch was
/// merged in; a machine's next merge starts from the remote's branch.
#[test]
fn a_batch_branch_is_published_only_forward_and_where_orch_may_move_it() {
    use orch_core::WorkspaceErrorKind;
    let (d, _seed) = repo();
    let top = tempfile::tempdir().unwrap();
    sh(
        top.path(),
        &[
            "clone",
            "-q",
            "--bare",
            &d.path().to_string_lossy(),
            "remote.git",
        ],
    );
    let bare = top.path().join("remote.git");
    let clone = |name: &str| {
        sh(top.path(), &["clone", "-q", "remote.git", name]);
        sh(
            &top.path().join(name),
            &["config", "user.email", "t@example.com"],
        );
        sh(&top.path().join(name), &["config", "user.name", "t"]);
        Repo::open(top.path().join(name)).unwrap()
    };
    let (w, c) = (clone("w"), clone("c"));
    let run = "r1".parse().unwrap();
    let batch = "PR1".parse().unwrap();
    let branch = "refs/heads/orch/pr1";
    let merged = |tickets: &[&str]| {
        let mut branches = Vec::new();
        for t in tickets {
            let wt = w.worktree(&run, &t.parse().unwrap(), "main").unwrap();
            std::fs::write(wt.path.join(format!("{t}.txt")), t).unwrap();
            w.checkpoint(&wt, &format!("r1/{t}/implement/1"), t)
                .unwrap();
            branches.push(wt.branch);
        }
        let start = w.batch_start("origin", "orch/pr1", "main").unwrap();
        let out = w.merge_batch(&run, &batch, "orch/pr1", "main", &branches, Some(&start));
        let Ok(MergeOutcome::Merged { commit }) = out else {
            panic!("{out:?}")
        };
        // Shared as a worker does: under its claim on the merge's job.
        let claim = orch_core::Claim {
            job: 9,
            run: run.clone(),
            token: 1,
            expires_at: orch_core::Timestamp(0),
        };
        let what = Shared::Merge(&batch, Some(&claim));
        w.push_commits("origin", &run, &[(what, &commit)]).unwrap();
        commit
    };
    let publish = |repo: &Repo, commit: &str| {
        let merged_in = repo.batch_worktree(&run, &batch);
        repo.publish(Some("origin"), &run, &batch, "orch/pr1", &merged_in, commit)
    };
    let first = merged(&["A"]);
    // Merging shares the commit, not the branch.
    assert!(sh(&bare, &["branch", "--list", "orch/pr1"]).is_empty());
    publish(&c, &first).unwrap();
    assert_eq!(sh(&bare, &["rev-parse", branch]), first);
    assert_eq!(sh(c.root(), &["rev-parse", branch]), first);
    // Again (a resumed run): nothing changes.
    publish(&c, &first).unwrap();

    // A merge on w killed half-way (its locks left behind): w's next
    // merge recovers the work tree before it puts the branch at the
    // remote's.
    let w_tree = w.batch_worktree(&run, &batch);
    sh(&w_tree, &["reset", "-q", "--hard", "HEAD~1"]);
    let git_dir = sh(&w_tree, &["rev-parse", "--absolute-git-dir"]);
    std::fs::write(Path::new(&git_dir).join("index.lock"), "").unwrap();
    let ref_lock = w.root().join(".git/refs/heads/orch/pr1.lock");
    std::fs::write(&ref_lock, "").unwrap();

    // Someone checked the branch out in c: the remote's moves, c's stays,
    // and that person's work tree is untouched.
    let mine = top.path().join("mine");
    sh(
        c.root(),
        &["worktree", "add", "-q", &mine.to_string_lossy(), "orch/pr1"],
    );
    std::fs::write(mine.join("notes.txt"), "mine").unwrap();
    let second = merged(&["B"]);
    let e = publish(&c, &second).unwrap_err();
    assert_eq!(e.kind, WorkspaceErrorKind::Refused);
    assert!(e.message.contains(&*mine.to_string_lossy()), "{e}");
    assert_eq!(sh(&bare, &["rev-parse", branch]), second);
    assert_eq!(sh(c.root(), &["rev-parse", branch]), first);
    assert_eq!(sh(&mine, &["rev-parse", "HEAD"]), first);
    assert!(mine.join("notes.txt").is_file());
    sh(
        c.root(),
        &["worktree", "remove", "--force", &mine.to_string_lossy()],
    );

    // A fix pushed on top of the merge stays when the older merge is
    // published again (a resumed run): never a rewind.
    let fix = top.path().join("fix");
    sh(
        top.path(),
        &["clone", "-q", "-b", "orch/pr1", "remote.git", "fix"],
    );
    // A commit of one new file in `fix`.
    let commit_file = |name: &str| {
        std::fs::write(fix.join(name), name).unwrap();
        sh(&fix, &["add", name]);
        sh(
            &fix,
            &[
                "-c",
                "user.name=t",
                "-c",
                "user.email=t@t",
                "commit",
                "-q",
                "-m",
                name,
            ],
        );
    };
    commit_file("fix.txt");
    sh(&fix, &["push", "-q", "origin", "orch/pr1"]);
    let fixed = sh(&fix, &["rev-parse", "HEAD"]);
    publish(&c, &second).unwrap();
    assert_eq!(sh(&bare, &["rev-parse", branch]), fixed);
    // w's next merge starts from there, the fix included, not from its
    // own branch.
    let third = merged(&["C"]);
    let files = sh(w.root(), &["ls-tree", "--name-only", &third]);
    assert!(
        files.contains("fix.txt") && files.contains("C.txt"),
        "{files}"
    );
    publish(&c, &third).unwrap();
    assert_eq!(sh(&bare, &["rev-parse", branch]), third);

    // Rewritten on the remote after a merge: not moved, and said so.
    let fourth = merged(&["D"]);
    sh(&fix, &["reset", "-q", "--hard", "origin/main"]);
    commit_file("other.txt");
    sh(&fix, &["push", "-q", "--force", "origin", "orch/pr1"]);
    let other = sh(&fix, &["rev-parse", "HEAD"]);
    let e = publish(&c, &fourth).unwrap_err();
    assert_eq!(e.kind, WorkspaceErrorKind::Refused);
    assert!(e.message.contains("diverged"), "{e}");
    assert_eq!(sh(&bare, &["rev-parse", branch]), other);

    // Where the batch was merged (w), its work tree follows the branch
    // forward.
    let w_tree = w.batch_worktree(&run, &batch);
    sh(&w_tree, &["reset", "-q", "--hard", &first]);
    publish(&w, &second).unwrap_err(); // the remote was rewritten
    assert_eq!(sh(&w_tree, &["rev-parse", "HEAD"]), first);
    w.publish(None, &run, &batch, "orch/pr1", &w_tree, &second)
        .unwrap();
    assert_eq!(sh(&w_tree, &["rev-parse", "HEAD"]), second);
    assert!(w_tree.join("B.txt").is_file());
    assert_eq!(sh(&w_tree, &["status", "--porcelain"]), "");
}

/// A committed file's bytes are read exactly (a plan workers parse must be
/// the coordinator's, trailing blank lines and all).
#[test]
fn a_blob_is_read_byte_for_byte() {
    let (d, repo) = repo();
    let text = "tickets:\n  - description: |\n      x\n\n\n";
    std::fs::write(d.path().join("plan.yaml"), text).unwrap();
    sh(d.path(), &["add", "plan.yaml"]);
    sh(d.path(), &["commit", "-q", "-m", "plan"]);
    assert_eq!(repo.blob("HEAD", "plan.yaml").unwrap(), text.as_bytes());
    let missing = repo.blob("HEAD", "nothing.yaml").unwrap_err();
    assert!(missing.message.contains("nothing.yaml"), "{missing}");
}

/// A machine lacking a ticket's commit fetches what the ticket shared on
/// the remote, or, from an older orch, the commit's own ref; when the
/// remote has it nowhere, the error says where it looked.
#[test]
fn a_tickets_commit_is_fetched_where_it_was_shared() {
    let (d, seed) = repo();
    let top = tempfile::tempdir().unwrap();
    let origin = d.path().to_string_lossy().into_owned();
    sh(
        top.path(),
        &["clone", "-q", "--bare", &origin, "remote.git"],
    );
    let clone = |name: &str| {
        sh(top.path(), &["clone", "-q", "remote.git", name]);
        sh(&top.path().join(name), &["config", "user.email", "t@t"]);
        sh(&top.path().join(name), &["config", "user.name", "t"]);
        Repo::open(top.path().join(name)).unwrap()
    };
    let (a, b) = (clone("a"), clone("b"));
    drop(seed);
    let run = "r1".parse().unwrap();
    let commit_on = |repo: &Repo, t: &str| {
        let wt = repo.worktree(&run, &t.parse().unwrap(), "main").unwrap();
        std::fs::write(wt.path.join(format!("{t}.txt")), t).unwrap();
        repo.checkpoint(&wt, &format!("r1/{t}/build/1"), t).unwrap()
    };
    let (t1, t2, t3): (
        orch_core::TicketId,
        orch_core::TicketId,
        orch_core::TicketId,
    ) = (
        "T1".parse().unwrap(),
        "T2".parse().unwrap(),
        "T3".parse().unwrap(),
    );
    let phase = "build".parse().unwrap();
    // T1 shared as this orch's workers do (under a claim), T2 as an older
    // orch did, T3 not at all.
    let c1 = commit_on(&a, "T1");
    let claim = orch_core::Claim {
        job: 4,
        run: run.clone(),
        token: 2,
        expires_at: orch_core::Timestamp(0),
    };
    a.push_commits(
        "origin",
        &run,
        &[(Shared::Checkpoint(&t1, &phase, 1, Some(&claim)), &c1)],
    )
    .unwrap();
    let c2 = commit_on(&a, "T2");
    sh(
        a.root(),
        &["push", "-q", "origin", &format!("{c2}:refs/orch/r1/{c2}")],
    );
    let c3 = commit_on(&a, "T3");
    b.fetch_at(
        "origin",
        &run,
        &[(t1.clone(), c1.clone()), (t2.clone(), c2.clone())],
    )
    .unwrap();
    assert_eq!(sh(b.root(), &["rev-parse", "orch/r1/T1"]), c1);
    assert_eq!(sh(b.root(), &["rev-parse", "orch/r1/T2"]), c2);
    // What the journal says is no commit id: never handed to git.
    let odd = b
        .fetch_at("origin", &run, &[(t1.clone(), "--upload-pack=x".into())])
        .unwrap_err();
    assert!(odd.message.contains("is not a commit id"), "{odd}");
    let e = b.fetch_at("origin", &run, &[(t3, c3.clone())]).unwrap_err();
    assert!(
        e.message.contains(&format!(
            "has no commit {c3}: nothing under refs/orch/r1/tickets/T3/"
        )),
        "{e}"
    );
}
