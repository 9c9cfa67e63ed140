//! Git isolation: a worktree and branch per ticket, checkpoint commits as
//! rollback points, and batch merges that report conflicts as a result.
//!
//! Uses the `git` command (gix cannot create worktrees; git2 needs
//! libgit2). Every call is argv, never a shell string. Ids are validated, so
//! they are safe in branch names and paths.

use std::path::{Path, PathBuf};

use orch_core::secrets::Stored;
use orch_core::{BatchId, Claim, PhaseName, RunId, TicketId, WorkspaceErrorKind};

/// A git command failed.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct GitError {
    /// What kind of failure (what a workspace reports it as).
    pub kind: WorkspaceErrorKind,
    /// The command line.
    pub command: String,
    /// What git said.
    pub message: String,
}

impl std::fmt::Display for GitError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "`{}` failed: {}", self.command, self.message.trim())
    }
}

impl std::error::Error for GitError {}

/// What a commit of a run shared on a remote is ([`Repo::shared_ref`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shared<'a> {
    /// A ticket's start: the base with its dependencies merged.
    Start(&'a TicketId),
    /// A ticket's checkpoint after an attempt at a phase passed, made
    /// under a worker's claim (`None`: by the run's own driver).
    Checkpoint(&'a TicketId, &'a PhaseName, u32, Option<&'a Claim>),
    /// A batch's merge, made under a worker's claim (`None`: by the run's
    /// own driver).
    Merge(&'a BatchId, Option<&'a Claim>),
}

/// A repository orch works in.
#[derive(Debug, Clone)]
pub struct Repo {
    root: PathBuf,
    worktrees: PathBuf,
    /// The repository's shared git directory (absolute).
    common: PathBuf,
}

/// A ticket's worktree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Worktree {
    /// Where it is checked out.
    pub path: PathBuf,
    /// Its branch, `orch/<run>/<ticket>`.
    pub branch: String,
}

/// The result of merging a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MergeOutcome {
    /// Every ticket branch merged; the batch branch is at `commit`.
    Merged {
        /// The merge result.
        commit: String,
    },
    /// `branch` conflicts in `files`; the batch branch is left as it was
    /// before that merge, and the ticket branches are untouched.
    Conflict {
        /// The ticket branch that could not be merged.
        branch: String,
        /// The conflicting files.
        files: Vec<String>,
    },
}

fn run_git(dir: &Path, args: &[&str]) -> Result<String, GitError> {
    match git_exit(dir, args)? {
        (0, out, _) => Ok(out),
        (_, _, err) => Err(git_failed(args, err)),
    }
}

/// git `args` failed, saying `err`.
fn git_failed(args: &[&str], err: String) -> GitError {
    GitError {
        kind: WorkspaceErrorKind::Tool,
        command: format!("git {}", args.join(" ")),
        message: err,
    }
}

/// Whether `s` is a full commit id (SHA-1 or SHA-256, in hex): what the
/// journal records, and nothing git could take for an option or a ref.
pub fn is_commit_id(s: &str) -> bool {
    matches!(s.len(), 40 | 64) && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Runs git: its exit code (-1 when killed), standard output (trailing
/// space cut) and standard error.
fn git_exit(dir: &Path, args: &[&str]) -> Result<(i32, String, String), GitError> {
    let out = git_output(dir, args)?;
    Ok((
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).trim_end().to_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}

/// Runs git, as it ran: exit status, standard output and error untouched.
fn git_output(dir: &Path, args: &[&str]) -> Result<std::process::Output, GitError> {
    // Contained like every process orch starts: a git killed with orch
    // does not finish a merge or commit under a later driver's feet, and
    // what its hooks start (the repository's config is the agents' to
    // change) ends with it.
    let mut git = std::process::Command::new("git");
    // No automatic gc or maintenance after each of orch's commits and
    // merges (a process each, and a repack in the middle of a run): orch
    // writes the commit graph itself as the run goes
    // ([`Repo::write_commit_graph`]).
    git.args(["-c", "maintenance.auto=false", "-c", "gc.auto=0"])
        .args(args)
        .current_dir(dir)
        .env("GIT_TERMINAL_PROMPT", "0");
    // In a work tree of orch's (under `.orch/`), git finds the work tree's
    // own repository or none: with its `.git` removed, the search must
    // not climb to the person's checkout and commit there.
    if dir.components().any(|c| c.as_os_str() == ".orch")
        && let Some(parent) = dir.parent()
    {
        git.env("GIT_CEILING_DIRECTORIES", parent);
    }
    orch_core::process::output(&git).map_err(|e| GitError {
        kind: WorkspaceErrorKind::Tool,
        command: format!("git {}", args.join(" ")),
        message: format!("cannot run git: {e}"),
    })
}

/// The directory a frozen glob's matches are all under (its components
/// before the first one with a glob character): only it is walked.
fn glob_root(glob: &str) -> String {
    glob.split('/')
        .take_while(|c| !c.contains(['*', '?', '[', '{']))
        .collect::<Vec<_>>()
        .join("/")
}

/// Every file and link under `rel` in `root` that `globs` match, as
/// `rel -> is a link`, with no ignore rule applied and no link followed
/// (`.git` is not entered).
fn walk_frozen(
    root: &Path,
    rel: &str,
    globs: &globset::GlobSet,
    out: &mut std::collections::BTreeMap<String, bool>,
) {
    let path = if rel.is_empty() {
        root.to_path_buf()
    } else {
        root.join(rel)
    };
    let Ok(meta) = std::fs::symlink_metadata(&path) else {
        return;
    };
    if meta.is_dir() {
        let Ok(entries) = std::fs::read_dir(&path) else {
            return;
        };
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name == ".git" {
                continue;
            }
            let child = if rel.is_empty() {
                name
            } else {
                format!("{rel}/{name}")
            };
            walk_frozen(root, &child, globs, out);
        }
    } else if globs.is_match(rel) {
        out.insert(rel.to_owned(), meta.is_symlink());
    }
}

/// `diff` cut to [`MAX_DIFF`] bytes, saying so.
fn cap_diff(mut diff: String) -> String {
    if diff.len() > MAX_DIFF {
        let mut end = MAX_DIFF;
        while !diff.is_char_boundary(end) {
            end -= 1;
        }
        diff.truncate(end);
        diff.push_str("\n[... diff cut ...]\n");
    }
    diff
}

/// The part of a settings file a frozen entry `file#key` names, as text
/// to compare: in a TOML file the value at the dotted `key` (`test` is
/// `Cargo.toml`'s `[[test]]` targets, `tool.pytest` pyproject's pytest
/// settings); in an INI file (`setup.cfg`, `tox.ini`, `pytest.ini`) the
/// section `[key]`, without blank and comment lines. `None` when the part
/// is absent. A TOML file that no longer parses is its own text (so it
/// differs from any parsed value).
fn frozen_part(file: &str, key: &str, text: &str) -> Option<String> {
    if file.ends_with(".toml") {
        let Ok(table) = text.parse::<toml::Table>() else {
            return Some(format!("(does not parse as TOML)\n{text}"));
        };
        let mut value = &toml::Value::Table(table);
        for k in key.split('.') {
            value = value.as_table()?.get(k)?;
        }
        return serde_json::to_string_pretty(value).ok();
    }
    // As pytest and configparser read INI: a header starts in column 0
    // (an indented `[x]` continues the value above it) and may carry a
    // comment; every section of that name counts (a second one is a
    // change too); indentation is kept, blank and comment lines are not.
    let mut body: Vec<&str> = Vec::new();
    let (mut found, mut inside) = (false, false);
    for line in text.lines() {
        if line.starts_with('[') {
            let head = line.split(['#', ';']).next().unwrap_or("").trim_end();
            inside = head.strip_prefix('[').and_then(|h| h.strip_suffix(']')) == Some(key);
            if inside {
                found = true;
                body.push("[section]");
            }
            continue;
        }
        let t = line.trim_end();
        let bare = t.trim_start();
        if inside && !bare.is_empty() && !bare.starts_with('#') && !bare.starts_with(';') {
            body.push(t);
        }
    }
    found.then(|| body.join("\n"))
}

/// The most findings a scan lists (the rest are counted).
pub const MAX_FINDINGS: usize = 20;

/// Findings, each once, at most [`MAX_FINDINGS`] listed.
#[derive(Debug, Default)]
struct Found {
    listed: Vec<String>,
    seen: std::collections::HashSet<String>,
    more: usize,
}

impl Found {
    fn add(&mut self, f: String) {
        if !self.seen.insert(f.clone()) {
            return;
        }
        if self.listed.len() < MAX_FINDINGS {
            self.listed.push(f);
        } else {
            self.more += 1;
        }
    }

    fn done(mut self) -> Vec<String> {
        if self.more > 0 {
            self.listed.push(format!("and {} more", self.more));
        }
        self.listed
    }
}

/// Where the commits of `range` (`a..b`, run in `dir`) added a secret, in
/// a file's content or name or in a commit message: each finding names the
/// file (or message), the commit and the kind of secret. Merge commits are
/// shown against each parent; no textconv or external diff hides content.
fn history_secrets(
    dir: &Path,
    range: &str,
    redactor: &orch_core::secrets::Redactor,
    found: &mut Found,
) -> Result<(), GitError> {
    const START: &str = "\u{1}orch-commit ";
    const END: &str = "\u{1}orch-end";
    let log = run_git(
        dir,
        &[
            "-c",
            "core.fsmonitor=false",
            "log",
            "-p",
            "-m",
            "--text",
            "--no-textconv",
            "--no-color",
            "--no-ext-diff",
            "--no-renames",
            "--format=%x01orch-commit %h%n%an <%ae>%n%B%n%x01orch-end",
            range,
        ],
    )?;
    let mut commit = String::new();
    let mut file = String::new();
    let (mut in_message, mut in_hunk) = (false, false);
    for line in log.lines() {
        if let Some(c) = line.strip_prefix(START) {
            commit = c.to_owned();
            (in_message, in_hunk) = (true, false);
            continue;
        }
        if line == END {
            in_message = false;
            continue;
        }
        let text = if in_message {
            for (_, what) in redactor.findings(line) {
                found.add(format!("the message of commit {commit} ({what})"));
            }
            continue;
        } else if line.starts_with("diff --git ") {
            in_hunk = false;
            continue;
        } else if !in_hunk {
            if let Some(f) = line.strip_prefix("+++ b/") {
                file = f.to_owned();
                for (_, what) in redactor.findings(f) {
                    found.add(format!("the name of {f} in commit {commit} ({what})"));
                }
            }
            in_hunk = line.starts_with("@@ ");
            continue;
        } else {
            match line.strip_prefix('+') {
                Some(added) => added,
                None => continue,
            }
        };
        for (_, what) in redactor.findings(text) {
            found.add(format!("{file} in commit {commit} ({what})"));
        }
    }
    Ok(())
}

/// The largest file [`Repo::secrets`] scans; a larger one that a commit
/// would add is a finding (it cannot be shown to hold no secret).
pub const MAX_SCANNED: u64 = 64 * 1024 * 1024;

/// The most of a diff [`Repo::changed_since`] returns (it is shown to an
/// agent as feedback).
pub const MAX_DIFF: usize = 8 * 1024;

/// The trailer that marks a checkpoint commit, so a checkpoint made before
/// a crash is recognised instead of made twice.
pub const CHECKPOINT_TRAILER: &str = "Orch-Checkpoint";

impl Repo {
    /// A repository at `root`; worktrees go under `root/.orch/worktrees`.
    ///
    /// # Errors
    /// When `root` is not inside a git work tree.
    pub fn open(root: impl Into<PathBuf>) -> Result<Repo, GitError> {
        let root = root.into();
        let top = run_git(&root, &["rev-parse", "--show-toplevel"])?;
        let root = PathBuf::from(top);
        // Keep orch's worktrees out of the repository's status and cleans.
        let common = root.join(run_git(&root, &["rev-parse", "--git-common-dir"])?);
        let exclude = common.join("info").join("exclude");
        let listed = std::fs::read_to_string(&exclude).unwrap_or_default();
        if !listed.lines().any(|l| l.trim() == "/.orch/") {
            let _ = std::fs::create_dir_all(exclude.parent().unwrap_or(&root));
            let mut text = listed;
            if !text.is_empty() && !text.ends_with('\n') {
                text.push('\n');
            }
            text.push_str("/.orch/\n");
            std::fs::write(&exclude, text).map_err(|e| GitError {
                kind: WorkspaceErrorKind::Io,
                command: "write info/exclude".into(),
                message: format!("{}: {e}", exclude.display()),
            })?;
        }
        Ok(Repo {
            worktrees: root.join(".orch").join("worktrees"),
            root,
            common,
        })
    }

    /// The repository's top directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Runs git in the repository.
    ///
    /// # Errors
    /// When git fails.
    pub fn git(&self, args: &[&str]) -> Result<String, GitError> {
        run_git(&self.root, args)
    }

    /// The bytes of file `path` as committed at `rev`, exactly (no filter,
    /// nothing trimmed; a symbolic link's are its target's name).
    ///
    /// # Errors
    /// When `rev` has no such file.
    pub fn blob(&self, rev: &str, path: &str) -> Result<Vec<u8>, GitError> {
        let spec = format!("{rev}:{path}");
        let args = ["cat-file", "blob", spec.as_str()];
        let out = git_output(&self.root, &args)?;
        if out.status.success() {
            Ok(out.stdout)
        } else {
            let err = String::from_utf8_lossy(&out.stderr).trim_end().to_owned();
            Err(git_failed(&args, err))
        }
    }

    /// The commit `rev` names.
    ///
    /// # Errors
    /// When `rev` does not name a commit.
    pub fn resolve(&self, rev: &str) -> Result<String, GitError> {
        self.git(&["rev-parse", "--verify", &format!("{rev}^{{commit}}")])
    }

    /// Where a commit of `run` is kept on a shared remote: a ref that
    /// names what it is (a checkpoint or a merge: also the job and the
    /// claim's token it was made under) and ends in the commit itself, so that a push
    /// there can neither overwrite nor lose anyone else's.
    ///
    /// ```
    /// use orch_state::git::{Repo, Shared};
    /// let (run, t) = ("r1".parse().unwrap(), "T-1".parse().unwrap());
    /// let phase = "build".parse().unwrap();
    /// assert_eq!(
    ///     Repo::shared_ref(&run, Shared::Checkpoint(&t, &phase, 2, None), "c0ffee"),
    ///     "refs/orch/r1/tickets/T-1/phases/build/2/c0ffee"
    /// );
    /// let claim = orch_core::Claim {
    ///     job: 17,
    ///     run: run.clone(),
    ///     token: 3,
    ///     expires_at: orch_core::Timestamp(0),
    /// };
    /// assert_eq!(
    ///     Repo::shared_ref(&run, Shared::Checkpoint(&t, &phase, 2, Some(&claim)), "c0ffee"),
    ///     "refs/orch/r1/tickets/T-1/phases/build/2/jobs/17/claims/3/c0ffee"
    /// );
    /// ```
    pub fn shared_ref(run: &RunId, what: Shared<'_>, commit: &str) -> String {
        let by = |claim: Option<&Claim>| {
            claim.map_or_else(String::new, |c| {
                format!("jobs/{}/claims/{}/", c.job, c.token)
            })
        };
        match what {
            Shared::Start(t) => format!("refs/orch/{run}/tickets/{t}/start/{commit}"),
            Shared::Checkpoint(t, phase, attempt, claim) => format!(
                "refs/orch/{run}/tickets/{t}/phases/{phase}/{attempt}/{}{commit}",
                by(claim)
            ),
            Shared::Merge(batch, claim) => {
                format!("refs/orch/{run}/batches/{batch}/{}{commit}", by(claim))
            }
        }
    }

    /// Pushes `commits` of `run` to `remote`, each under its
    /// [`Repo::shared_ref`]; one already there is left as it is.
    ///
    /// # Errors
    /// When the push fails.
    pub fn push_commits(
        &self,
        remote: &str,
        run: &RunId,
        commits: &[(Shared<'_>, &str)],
    ) -> Result<(), GitError> {
        let refs: Vec<String> = (commits.iter())
            .map(|(what, c)| Repo::shared_ref(run, *what, c))
            .collect();
        let specs: Vec<String> = (commits.iter().zip(&refs))
            .map(|((_, c), r)| format!("{c}:{r}"))
            .collect();
        let mut args = vec!["push", "-q", "--no-verify", remote];
        args.extend(specs.iter().map(String::as_str));
        let Err(e) = self.git(&args) else {
            return Ok(());
        };
        // Another machine pushing the same commit under the same name at
        // the same moment (the same ticket's start, taken up twice) wins
        // the race to make the ref: what counts is that the remote has
        // each one.
        let mut ls = vec!["ls-remote", remote];
        ls.extend(refs.iter().map(String::as_str));
        let there = self.git(&ls)?;
        let all = commits.iter().zip(&refs).all(|((_, c), r)| {
            there
                .lines()
                .any(|l| l.split_once('\t') == Some((*c, r.as_str())))
        });
        if all { Ok(()) } else { Err(e) }
    }

    /// Fetches from `remote` each commit of `wanted` this repository
    /// lacks: every commit shared under its prefix (a [`Repo::shared_ref`]
    /// without its last names), then, still missing, the ref an older orch
    /// shared it under (`refs/orch/<run>/<commit>`).
    ///
    /// # Errors
    /// When git fails, or a commit is still missing (or is no commit id):
    /// the remote does not have it where it was looked for.
    fn fetch_shared(
        &self,
        remote: &str,
        run: &RunId,
        wanted: &[(String, &str)],
    ) -> Result<(), GitError> {
        let missing = |message: String| git_failed(&["fetch", remote], message);
        let wanted: Vec<&(String, &str)> =
            wanted.iter().filter(|(_, c)| !self.has_commit(c)).collect();
        if let Some((_, c)) = wanted.iter().find(|(_, c)| !is_commit_id(c)) {
            return Err(missing(format!("{c:?} is not a commit id")));
        }
        let mut specs: Vec<String> = (wanted.iter())
            .map(|(p, _)| format!("{p}/*:{p}/*"))
            .collect();
        specs.sort();
        specs.dedup();
        if specs.is_empty() {
            return Ok(());
        }
        let specs: Vec<&str> = specs.iter().map(String::as_str).collect();
        self.fetch_refs(remote, &specs)?;
        for (prefix, c) in wanted {
            if self.has_commit(c) {
                continue;
            }
            let old = format!("refs/orch/{run}/{c}");
            match self.fetch_refs(remote, &[&format!("{old}:{old}")]) {
                Err(e) if !e.message.contains("couldn't find remote ref") => return Err(e),
                _ if self.has_commit(c) => {}
                _ => {
                    return Err(missing(format!(
                        "{remote} has no commit {c}: nothing under {prefix}/ or at {old} holds it"
                    )));
                }
            }
        }
        Ok(())
    }

    /// Sets each ticket's branch of `at` to its commit of `run`, fetched
    /// from `remote` first (with the rest the ticket shared there) when
    /// this repository does not have it; a work tree that has such a
    /// branch checked out is reset to it.
    ///
    /// # Errors
    /// When a commit cannot be fetched (the remote does not have it), or
    /// git fails.
    pub fn fetch_at(
        &self,
        remote: &str,
        run: &RunId,
        at: &[(TicketId, String)],
    ) -> Result<(), GitError> {
        let mut found: Vec<Option<String>> = at.iter().map(|(_, c)| self.resolve(c).ok()).collect();
        // What the tickets whose commits this repository lacks shared.
        let lacking: Vec<(String, &str)> = (at.iter().zip(&found))
            .filter(|(_, f)| f.is_none())
            .map(|((t, c), _)| (format!("refs/orch/{run}/tickets/{t}"), c.as_str()))
            .collect();
        self.fetch_shared(remote, run, &lacking)?;
        let mut listed = None;
        for ((ticket, commit), f) in at.iter().zip(&mut found) {
            let branch = &Repo::ticket_branch(run, ticket);
            let commit = match f.take() {
                Some(c) => c,
                None => self.resolve(commit)?,
            };
            if self.resolve(&format!("refs/heads/{branch}")).ok() == Some(commit.clone()) {
                continue;
            }
            self.git(&["update-ref", &format!("refs/heads/{branch}"), &commit])?;
            let list = match &listed {
                Some(l) => l,
                None => listed.insert(self.git(&["worktree", "list", "--porcelain", "-z"])?),
            };
            for p in checked_out(list, branch) {
                run_git(Path::new(p), &["reset", "-q", "--hard", &commit])?;
            }
        }
        Ok(())
    }

    /// Moves `branch` (`batch`'s, merged in `merged_in`) forward to
    /// `commit` of `run`, the merge the journal recorded: on `remote` and
    /// here, the commit fetched from `remote` first when this repository
    /// does not have it. Where the branch is missing it is made; where it
    /// already holds the commit (a resumed run publishing again, after
    /// fixes were pushed on top) it stays; where it diverged (rewritten,
    /// or moved on while the merge was made) it stays too, and that is an
    /// error: nothing is ever rewound. The work tree the batch was merged
    /// in follows; any other that has the branch checked out (someone's
    /// own) is never touched, and that is an error as well, after the
    /// remote is done.
    ///
    /// # Errors
    /// When the commit cannot be fetched or pushed, or the branch went
    /// elsewhere or is checked out in a work tree orch did not make.
    pub fn publish(
        &self,
        remote: Option<&str>,
        run: &RunId,
        batch: &BatchId,
        branch: &str,
        merged_in: &Path,
        commit: &str,
    ) -> Result<(), GitError> {
        let full = format!("refs/heads/{branch}");
        if let Some(remote) = remote {
            let prefix = format!("refs/orch/{run}/batches/{batch}");
            self.fetch_shared(remote, run, &[(prefix, commit)])?;
            let tip = self.remote_branch(remote, &full)?;
            if self.moves_forward(&full, tip.as_deref(), commit, &format!("{remote}'s"))? {
                // Not forced: a push that raced another one is refused.
                let to_branch = format!("{commit}:{full}");
                self.git(&["push", "-q", "--no-verify", remote, &to_branch])?;
            }
        }
        let here = self.resolve(&full).ok();
        if self.moves_forward(&full, here.as_deref(), commit, "this repository's")? {
            self.set_branch(branch, merged_in, commit)?;
        }
        Ok(())
    }

    /// Where a merge of the batch `branch` must start on a machine of
    /// many: at `remote`'s branch (the merges the journal recorded,
    /// fetched here), else at `base`.
    ///
    /// # Errors
    /// When the remote cannot be read.
    pub fn batch_start(&self, remote: &str, branch: &str, base: &str) -> Result<String, GitError> {
        let full = format!("refs/heads/{branch}");
        match self.remote_branch(remote, &full)? {
            Some(tip) => Ok(tip),
            None => self.resolve(base),
        }
    }

    /// Whether `commit` is in this repository.
    fn has_commit(&self, commit: &str) -> bool {
        self.resolve(&format!("{commit}^{{commit}}")).is_ok()
    }

    /// The commit `full` (a ref) names on `remote`, if it is there,
    /// fetched here when this repository does not have it.
    fn remote_branch(&self, remote: &str, full: &str) -> Result<Option<String>, GitError> {
        let listed = self.git(&["ls-remote", remote, full])?;
        let tip = listed
            .lines()
            .find_map(|l| l.split_once('\t').filter(|(_, r)| *r == full))
            .map(|(c, _)| c.to_owned());
        if let Some(tip) = &tip
            && !self.has_commit(tip)
        {
            self.fetch_refs(remote, &[full])?;
        }
        Ok(tip)
    }

    /// Fetches `refspecs` from `remote`: objects and the refs they name,
    /// no tags, no `FETCH_HEAD`.
    fn fetch_refs(&self, remote: &str, refspecs: &[&str]) -> Result<(), GitError> {
        let mut args = vec!["fetch", "-q", "--no-tags", "--no-write-fetch-head", remote];
        args.extend(refspecs);
        self.git(&args).map(drop)
    }

    /// Whether `full`, at `tip` (`None`: missing) in `whose` copy, is to
    /// be moved to `commit`: yes when missing or behind it, no when it
    /// holds it already.
    ///
    /// # Errors
    /// When it went elsewhere (neither holds the other).
    fn moves_forward(
        &self,
        full: &str,
        tip: Option<&str>,
        commit: &str,
        whose: &str,
    ) -> Result<bool, GitError> {
        let Some(tip) = tip else { return Ok(true) };
        let ancestor = |a: &str, b: &str| -> Result<bool, GitError> {
            let (code, _, err) = git_exit(&self.root, &["merge-base", "--is-ancestor", a, b])?;
            match code {
                0 => Ok(true),
                1 => Ok(false),
                _ => Err(GitError {
                    kind: WorkspaceErrorKind::Tool,
                    command: format!("merge-base --is-ancestor {a} {b}"),
                    message: err,
                }),
            }
        };
        if tip == commit || ancestor(commit, tip)? {
            return Ok(false);
        }
        if ancestor(tip, commit)? {
            return Ok(true);
        }
        Err(GitError {
            kind: WorkspaceErrorKind::Refused,
            command: format!("publish {full}"),
            message: format!(
                "{whose} {full} is at {tip}, which neither holds the merge {commit} nor is \
                 behind it (they diverged: it was rewritten, or moved on while the merge was made); \
                 not moved"
            ),
        })
    }

    /// Sets `branch` to `commit` here. The work tree `merged_in` (orch's)
    /// follows; one orch did not make that has it checked out is never
    /// touched, and that is an error (nothing moved). A work tree git
    /// still lists but whose directory is gone does not count.
    fn set_branch(&self, branch: &str, merged_in: &Path, commit: &str) -> Result<(), GitError> {
        let full = format!("refs/heads/{branch}");
        let list = self.git(&["worktree", "list", "--porcelain", "-z"])?;
        let at: Vec<&str> = checked_out(&list, branch)
            .into_iter()
            .filter(|p| Path::new(p).exists())
            .collect();
        let ours = std::fs::canonicalize(merged_in).ok();
        if let Some(other) = at
            .iter()
            .find(|p| ours.is_none() || std::fs::canonicalize(p).ok() != ours)
        {
            return Err(GitError {
                kind: WorkspaceErrorKind::Refused,
                command: format!("update-ref {full}"),
                message: format!("not moved to {commit}: the branch is checked out at {other}"),
            });
        }
        self.git(&["update-ref", &full, commit])?;
        for p in at {
            run_git(Path::new(p), &["reset", "-q", "--hard", commit])?;
        }
        Ok(())
    }

    /// The branch of a ticket's worktree.
    pub fn ticket_branch(run: &RunId, ticket: &TicketId) -> String {
        format!("orch/{run}/{ticket}")
    }

    /// Creates (or, after a crash, finds) the worktree of `ticket` on
    /// branch `orch/<run>/<ticket>`, starting from `base`.
    ///
    /// # Errors
    /// When git fails.
    pub fn worktree(
        &self,
        run: &RunId,
        ticket: &TicketId,
        base: &str,
    ) -> Result<Worktree, GitError> {
        let branch = Self::ticket_branch(run, ticket);
        let path = self.worktrees.join(run.as_str()).join(ticket.as_str());
        // Found after a crash, and usable: kept (its work is the ticket's).
        if self.usable(&path, &branch)? {
            return Ok(Worktree { path, branch });
        }
        let p = path.to_string_lossy().into_owned();
        if self.resolve(&branch).is_ok() {
            self.add_worktree(&path, &branch, &[&p, &branch])?;
        } else {
            self.add_worktree(&path, &branch, &["-b", &branch, &p, base])?;
        }
        Ok(Worktree { path, branch })
    }

    /// Whether the worktree at `path` is there, made whole (not cut short
    /// by a crash: see [`Making`]), and recovered: `Ok(false)` when it is
    /// to be made (again).
    ///
    /// # Errors
    /// When it is there but cannot be recovered: it is kept (it may hold
    /// work), and the caller fails saying why.
    /// Makes the worktree `wt`, found again, usable (see [`recover`]).
    pub(crate) fn recover_worktree(&self, wt: &Worktree) -> Result<PathBuf, GitError> {
        recover(&self.common, &wt.path, &wt.branch)
    }

    pub(crate) fn usable(&self, path: &Path, branch: &str) -> Result<bool, GitError> {
        if std::fs::symlink_metadata(path.join(".git")).is_err() || Making::marked(path) {
            return Ok(false);
        }
        recover(&self.common, path, branch)?;
        Ok(true)
    }

    /// Removes what is left of a worktree at `path` that cannot be used
    /// (a `git worktree add` killed half-way leaves its registration
    /// locked, which `prune` keeps): the directory and the registration.
    /// The lock a killed `git worktree add -b` may have left on the
    /// branch goes too ([`remove_ref_lock`]).
    fn forget_worktree(&self, path: &Path, branch: &str) {
        if path.exists() {
            let _ = std::fs::remove_dir_all(path);
        }
        let _ = self.git(&["worktree", "unlock", &path.to_string_lossy()]);
        let _ = self.git(&["worktree", "prune"]);
        remove_ref_lock(&self.common, branch);
    }

    /// Removes a worktree (the branch stays).
    ///
    /// # Errors
    /// When git fails.
    pub fn remove_worktree(&self, wt: &Worktree) -> Result<(), GitError> {
        self.git(&["worktree", "remove", "--force", &wt.path.to_string_lossy()])?;
        Ok(())
    }

    /// Worktrees of `run` that orch created and that are not in `active`:
    /// left behind by a crash.
    ///
    /// # Errors
    /// When git fails.
    pub fn stale_worktrees(
        &self,
        run: &RunId,
        active: &[TicketId],
    ) -> Result<Vec<Worktree>, GitError> {
        let list = self.git(&["worktree", "list", "--porcelain"])?;
        let prefix = format!("refs/heads/orch/{run}/");
        let mut out = Vec::new();
        let mut path: Option<PathBuf> = None;
        for line in list.lines() {
            if let Some(p) = line.strip_prefix("worktree ") {
                path = Some(PathBuf::from(p));
            } else if let Some(b) = line.strip_prefix("branch ")
                && let (Some(ticket), Some(p)) = (b.strip_prefix(&prefix), path.take())
                && !active.iter().any(|a| a.as_str() == ticket)
            {
                out.push(Worktree {
                    path: p,
                    branch: b.trim_start_matches("refs/heads/").to_owned(),
                });
            }
        }
        Ok(out)
    }

    /// Commits everything in the worktree as the checkpoint `key` (e.g.
    /// `run/ticket/phase/attempt`) and returns the commit. If the branch
    /// head already is that checkpoint (made before a crash), returns it
    /// without committing again.
    ///
    /// # Errors
    /// When git fails.
    pub fn checkpoint(&self, wt: &Worktree, key: &str, message: &str) -> Result<String, GitError> {
        // A head that carries the key is the checkpoint only if it holds
        // exactly what is in the work tree (what the gates judged): an
        // agent can commit with any message.
        if let Some(made) = self.find_checkpoint(wt, key)? {
            return Ok(made);
        }
        self.commit_checkpoint(wt, key, message, &[])
    }

    /// [`Repo::checkpoint`], refusing (before anything is added, so no
    /// object holds it) when what it would commit holds a secret
    /// [`Repo::uncommitted_secrets`] finds; `force` (paths in the work
    /// tree) is committed even where ignore rules would leave it out, and
    /// scanned with the rest.
    ///
    /// # Errors
    /// When git fails, naming the findings, or naming a `force` path the
    /// commit does not hold.
    pub fn checkpoint_without_secrets(
        &self,
        wt: &Worktree,
        key: &str,
        message: &str,
        redactor: &orch_core::secrets::Redactor,
        force: &[String],
    ) -> Result<String, GitError> {
        if let Some(made) = self.find_checkpoint(wt, key)? {
            return Ok(made);
        }
        let mut found = Found::default();
        self.scan_uncommitted(wt, redactor, &mut found, force)?;
        let found = found.done();
        if !found.is_empty() {
            return Err(GitError {
                kind: WorkspaceErrorKind::Secrets,
                command: "checkpoint".into(),
                message: format!("refused: it would commit secrets: {}", found.join(", ")),
            });
        }
        self.commit_checkpoint(wt, key, message, force)
    }

    /// Commits everything in the work tree, and `force` even if ignored,
    /// as the checkpoint `key`.
    fn commit_checkpoint(
        &self,
        wt: &Worktree,
        key: &str,
        message: &str,
        force: &[String],
    ) -> Result<String, GitError> {
        let trailer = format!("{CHECKPOINT_TRAILER}: {key}");
        run_git(&wt.path, &["add", "-A"])?;
        if !force.is_empty() {
            let mut args = vec!["add", "-f", "--"];
            args.extend(force.iter().map(String::as_str));
            run_git(&wt.path, &args)?;
        }
        let msg = format!("{message}\n\n{trailer}\n");
        run_git(
            &wt.path,
            &[
                "-c",
                "user.name=orch",
                "-c",
                "user.email=orch@localhost",
                "commit",
                "--allow-empty",
                "--no-verify",
                "-q",
                "-m",
                &msg,
            ],
        )?;
        for f in force {
            if run_git(&wt.path, &["ls-tree", "--name-only", "HEAD", "--", f])?.is_empty() {
                return Err(GitError {
                    kind: WorkspaceErrorKind::Tool,
                    command: "checkpoint".into(),
                    message: format!("{f} is not in the commit"),
                });
            }
        }
        run_git(&wt.path, &["rev-parse", "HEAD"])
    }

    /// Where what would reach the repository holds a secret: the files a
    /// commit of the work tree would add (changed and untracked ones its
    /// ignore rules do not exclude, read before anything is added, so no
    /// object is made of them), and everything the commits after `since`
    /// added (an agent that committed a key and removed it again). Each
    /// finding names the file, the line or commit, and the kind of secret,
    /// never the secret.
    ///
    /// # Errors
    /// When git fails.
    pub fn secrets(
        &self,
        wt: &Worktree,
        since: &str,
        redactor: &orch_core::secrets::Redactor,
    ) -> Result<Vec<String>, GitError> {
        let mut found = Found::default();
        self.scan_uncommitted(wt, redactor, &mut found, &[])?;
        history_secrets(&wt.path, &format!("{since}..HEAD"), redactor, &mut found)?;
        Ok(found.done())
    }

    /// Where the commits `branch` has beyond `base` added a secret.
    ///
    /// # Errors
    /// When git fails.
    pub fn branch_secrets(
        &self,
        base: &str,
        branch: &str,
        redactor: &orch_core::secrets::Redactor,
    ) -> Result<Vec<String>, GitError> {
        let mut found = Found::default();
        history_secrets(
            &self.root,
            &format!("{base}..{branch}"),
            redactor,
            &mut found,
        )?;
        Ok(found.done())
    }

    /// The part of [`Repo::secrets`] about the work tree: what `git add
    /// -A` would add.
    ///
    /// # Errors
    /// When git fails.
    pub fn uncommitted_secrets(
        &self,
        wt: &Worktree,
        redactor: &orch_core::secrets::Redactor,
    ) -> Result<Vec<String>, GitError> {
        let mut found = Found::default();
        self.scan_uncommitted(wt, redactor, &mut found, &[])?;
        Ok(found.done())
    }

    fn scan_uncommitted(
        &self,
        wt: &Worktree,
        redactor: &orch_core::secrets::Redactor,
        found: &mut Found,
        extra: &[String],
    ) -> Result<(), GitError> {
        // Changed and untracked files, and those already staged (an agent
        // that ran `git add` itself): each as the work tree holds it,
        // which is what `git add -A` stores.
        let listed = run_git(
            &wt.path,
            &[
                "-c",
                "core.excludesFile=",
                "-c",
                "core.fsmonitor=false",
                "ls-files",
                "-z",
                "--modified",
                "--others",
                "--exclude-standard",
                "--deduplicate",
            ],
        )?;
        let staged = run_git(
            &wt.path,
            &[
                "diff",
                "--cached",
                "--name-only",
                "--no-renames",
                "-z",
                "HEAD",
            ],
        )?;
        let mut files: Vec<&str> = listed
            .split('\0')
            .chain(staged.split('\0'))
            .chain(extra.iter().map(String::as_str))
            .filter(|f| !f.is_empty())
            .collect();
        files.sort_unstable();
        files.dedup();
        for rel in files {
            for (_, what) in redactor.findings(rel) {
                found.add(format!("the name of {rel} ({what})"));
            }
            let path = wt.path.join(rel);
            let stored = orch_core::secrets::stored(&path, MAX_SCANNED).map_err(|e| GitError {
                kind: WorkspaceErrorKind::Io,
                command: "scan for secrets".into(),
                message: format!("{rel}: {e}"),
            })?;
            let bytes = match stored {
                Stored::Bytes(b) => b,
                Stored::TooLarge(len) => {
                    found.add(format!(
                        "{rel} ({len} bytes, too large to scan for secrets: ignore it or commit it yourself)"
                    ));
                    continue;
                }
                Stored::NotABlob => continue,
                // Listed by git but not found under its name (a name git
                // quoted or that is not UTF-8): it cannot be shown clean.
                Stored::Missing if rel.contains('\u{FFFD}') => {
                    found.add(format!("{rel} (a name that cannot be read back to scan)"));
                    continue;
                }
                Stored::Missing => continue, // removed
            };
            for text in orch_core::secrets::texts(&bytes) {
                for (line, what) in redactor.findings(&text) {
                    found.add(format!("{rel}:{line} ({what})"));
                }
            }
        }
        Ok(())
    }

    /// The worktree's head commit if it is the checkpoint `key` and the
    /// work tree holds nothing else (no change since it, tracked or not).
    ///
    /// # Errors
    /// When git fails on a worktree that exists.
    pub fn find_checkpoint(&self, wt: &Worktree, key: &str) -> Result<Option<String>, GitError> {
        if !wt.path.join(".git").exists() {
            return Ok(None);
        }
        let head = run_git(&wt.path, &["log", "-1", "--format=%H%n%B"]).unwrap_or_default();
        let trailer = format!("{CHECKPOINT_TRAILER}: {key}");
        let mut lines = head.lines();
        let commit = lines.next().unwrap_or_default().to_owned();
        if !lines.any(|l| l.trim() == trailer) {
            return Ok(None);
        }
        // Only if nothing was changed after it (tracked or not): then its
        // tree is the work tree's.
        let changes = run_git(
            &wt.path,
            &["status", "--porcelain", "--untracked-files=all"],
        )?;
        Ok(changes.is_empty().then_some(commit))
    }

    /// What in the worktree differs from `commit` under `paths` (globs):
    /// tracked files changed or removed, and new files git would add; the
    /// diff of each (new files whole), capped at [`MAX_DIFF`] bytes. An
    /// entry `file#key` compares only that part of a settings file (see
    /// `PhaseSpec::freeze`).
    ///
    /// # Errors
    /// When git fails.
    pub fn changed_since(
        &self,
        wt: &Worktree,
        commit: &str,
        paths: &[String],
    ) -> Result<(Vec<String>, String), GitError> {
        let (parts, paths): (Vec<&String>, Vec<&String>) =
            paths.iter().partition(|p| p.contains('#'));
        let mut part_files = Vec::new();
        let mut part_diff = String::new();
        for entry in parts {
            let (file, key) = entry.split_once('#').unwrap_or((entry, ""));
            let listed = run_git(
                &wt.path,
                &["ls-tree", "-z", "--name-only", commit, "--", file],
            )?;
            let before = if listed.is_empty() {
                None
            } else {
                Some(run_git(&wt.path, &["show", &format!("{commit}:{file}")])?)
            };
            let now = std::fs::read_to_string(wt.path.join(file)).ok();
            let (old, new) = (
                before.as_deref().map(|t| frozen_part(file, key, t)),
                now.as_deref().map(|t| frozen_part(file, key, t)),
            );
            let (old, new) = (old.flatten(), new.flatten());
            if old != new {
                part_files.push(entry.clone());
                let show = |v: &Option<String>| v.clone().unwrap_or_else(|| "(absent)".to_owned());
                part_diff.push_str(&format!(
                    "--- {entry} at the checkpoint\n{}\n+++ {entry} now\n{}\n",
                    show(&old),
                    show(&new)
                ));
            }
        }
        if paths.is_empty() {
            part_files.sort();
            return Ok((part_files, cap_diff(part_diff)));
        }
        // Compared as bytes, the checkpoint's blobs against the files on
        // disk, not through git's view of the work tree: index flags
        // (assume-unchanged, skip-worktree), ignore rules and filters
        // would hide a changed, added or removed file.
        let mut globs = globset::GlobSetBuilder::new();
        for p in &paths {
            globs.add(
                globset::GlobBuilder::new(p)
                    .literal_separator(true)
                    .build()
                    .map_err(|e| GitError {
                        kind: WorkspaceErrorKind::Refused,
                        command: "freeze".into(),
                        message: format!("{p:?}: {e}"),
                    })?,
            );
        }
        let globs = globs.build().map_err(|e| GitError {
            kind: WorkspaceErrorKind::Refused,
            command: "freeze".into(),
            message: e.to_string(),
        })?;
        let tree = run_git(
            &wt.path,
            &[
                "-c",
                "core.fsmonitor=false",
                "ls-tree",
                "-r",
                "-z",
                "--full-tree",
                commit,
            ],
        )?;
        let before: std::collections::BTreeMap<String, (String, String)> = tree
            .split('\0')
            .filter_map(|entry| {
                let (meta, path) = entry.split_once('\t')?;
                let mut m = meta.split(' ');
                let (mode, _, sha) = (m.next()?, m.next()?, m.next()?);
                globs
                    .is_match(path)
                    .then(|| (path.to_owned(), (mode.to_owned(), sha.to_owned())))
            })
            .collect();
        let mut now = std::collections::BTreeMap::new();
        for p in &paths {
            walk_frozen(&wt.path, &glob_root(p), &globs, &mut now);
        }
        let mut files: Vec<String> = Vec::new();
        // Regular files hashed as git would store them, without filters.
        let regular: Vec<&String> = now
            .iter()
            .filter(|(rel, link)| !**link && before.contains_key(*rel))
            .map(|(rel, _)| rel)
            .collect();
        let mut hashes = std::collections::HashMap::new();
        for chunk in regular.chunks(200) {
            let mut args = vec!["hash-object", "--no-filters", "--"];
            args.extend(chunk.iter().map(|s| s.as_str()));
            let out = run_git(&wt.path, &args)?;
            hashes.extend(
                chunk
                    .iter()
                    .zip(out.lines())
                    .map(|(f, h)| ((*f).clone(), h.to_owned())),
            );
        }
        for (rel, (mode, sha)) in &before {
            let same = match now.get(rel) {
                None => false,
                Some(true) => {
                    mode == "120000"
                        && std::fs::read_link(wt.path.join(rel)).ok().is_some_and(|t| {
                            run_git(&wt.path, &["cat-file", "blob", sha])
                                .is_ok_and(|b| b == t.to_string_lossy())
                        })
                }
                Some(false) => mode != "120000" && hashes.get(rel) == Some(sha),
            };
            if !same {
                files.push(rel.clone());
            }
        }
        let added: Vec<&String> = now.keys().filter(|r| !before.contains_key(*r)).collect();
        files.extend(added.iter().map(|r| (*r).clone()));
        files.extend(part_files);
        files.sort();
        files.dedup();
        let mut diff = part_diff;
        let shown: Vec<&String> = files.iter().filter(|f| before.contains_key(*f)).collect();
        if !shown.is_empty() {
            let mut args = vec![
                "diff",
                "--no-renames",
                "--no-color",
                "--no-ext-diff",
                "--no-textconv",
                commit,
                "--",
            ];
            args.extend(shown.iter().map(|s| s.as_str()));
            let text = run_git(&wt.path, &args)?;
            for f in &shown {
                if !text.contains(&format!("a/{f}")) {
                    diff.push_str(&format!(
                        "--- {f}: changed on disk, though git shows no difference (an index flag, an ignore rule or a filter hides it)\n"
                    ));
                }
            }
            diff.push_str(&text);
        }
        for new in added {
            let text = std::fs::read(wt.path.join(new)).unwrap_or_default();
            diff.push_str(&format!(
                "\n--- /dev/null\n+++ b/{new}\n{}",
                String::from_utf8_lossy(&text)
                    .lines()
                    .map(|l| format!("+{l}\n"))
                    .collect::<String>()
            ));
        }
        Ok((files, cap_diff(diff)))
    }

    /// Resets the worktree to `commit` and removes untracked files (ignored
    /// files such as build output stay).
    ///
    /// # Errors
    /// When git fails.
    pub fn rollback(&self, wt: &Worktree, commit: &str) -> Result<(), GitError> {
        run_git(&wt.path, &["reset", "--hard", "-q", commit])?;
        run_git(&wt.path, &["clean", "-fd", "-q"])?;
        Ok(())
    }

    /// Merges `branches` one by one into the batch branch (created from
    /// `base` if missing), in a worktree of its own. A conflict is a result
    /// naming the branch and files, not an error: the failed merge is
    /// aborted and nothing is lost. Merges done before a crash are
    /// recognised (a branch already merged is skipped). With `start` (a
    /// machine of many: [`Repo::batch_start`]), the branch is first put
    /// there, once the work tree is recovered from any crash, so a merge
    /// this machine made and nobody recorded is dropped.
    ///
    /// # Errors
    /// When git fails for another reason.
    pub fn merge_batch(
        &self,
        run: &RunId,
        batch: &BatchId,
        batch_branch: &str,
        base: &str,
        branches: &[String],
        start: Option<&str>,
    ) -> Result<MergeOutcome, GitError> {
        let path = self
            .worktrees
            .join(run.as_str())
            .join(format!("batch-{batch}"));
        let p = path.to_string_lossy().into_owned();
        if !self.usable(&path, batch_branch)? {
            if self.resolve(batch_branch).is_ok() {
                // Not forced: git refuses a branch checked out elsewhere
                // (the branch someone works on), and so does orch.
                self.add_worktree(&path, batch_branch, &[&p, batch_branch])
                    .map_err(|e| GitError {
                        message: format!(
                            "cannot merge into {batch_branch}: {}(a batch branch must not be checked out anywhere; name another `branch` for the batch, or none for orch/{run}/batch-{batch})",
                            e.message
                        ),
                        ..e
                    })?;
            } else {
                self.add_worktree(&path, batch_branch, &["-b", batch_branch, &p, base])?;
            }
        }
        if let Some(start) = start
            && run_git(&path, &["rev-parse", "HEAD"])? != start
        {
            run_git(&path, &["reset", "-q", "--hard", start])?;
        }
        if let Some((branch, files)) =
            marked_merge(&path, || merge_branches(&path, batch_branch, branches))?
        {
            return Ok(MergeOutcome::Conflict { branch, files });
        }
        Ok(MergeOutcome::Merged {
            commit: run_git(&path, &["rev-parse", "HEAD"])?,
        })
    }

    /// Merges `branches` (the finished tickets a ticket depends on) into
    /// its worktree, skipping those already merged.
    ///
    /// # Errors
    /// When git fails, or a branch conflicts (the merge is aborted, nothing
    /// lost; the error names the files).
    pub fn merge_into(&self, wt: &Worktree, branches: &[String]) -> Result<(), GitError> {
        // Nothing to merge (the usual case for a ticket found again): no
        // mark, no git.
        if branches.is_empty() {
            return Ok(());
        }
        match marked_merge(&wt.path, || merge_branches(&wt.path, &wt.branch, branches))? {
            None => Ok(()),
            Some((branch, files)) => Err(GitError {
                kind: WorkspaceErrorKind::Conflict,
                command: format!("git merge {branch}"),
                message: format!("conflicts in {}", files.join(", ")),
            }),
        }
    }

    /// Where the worktree slots are: `<root>/.orch/slots/<n>`.
    pub fn slots_dir(&self) -> PathBuf {
        self.root.join(".orch").join("slots")
    }

    /// The branch checked out in the slot at `path`, `None` when its head
    /// is detached (a free slot).
    ///
    /// # Errors
    /// When git fails.
    pub fn slot_head(&self, path: &Path) -> Result<Option<String>, GitError> {
        // The full name: `--short` says `heads/x` when a tag `x` exists.
        match run_git(path, &["symbolic-ref", "-q", "HEAD"]) {
            Ok(b) => Ok(b.strip_prefix("refs/heads/").map(str::to_owned)),
            // Exit 1 and no message: HEAD is detached.
            Err(e) if e.message.trim().is_empty() => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Makes (or, after a crash cut its making short, makes again) the
    /// slot at `path`: a worktree with a detached head at `base`.
    ///
    /// # Errors
    /// When git fails.
    pub fn make_slot(&self, path: &Path, base: &str) -> Result<(), GitError> {
        if std::fs::symlink_metadata(path.join(".git")).is_ok() && !Making::marked(path) {
            return Ok(());
        }
        self.add_worktree(path, "", &["-q", "--detach", &path.to_string_lossy(), base])
    }

    /// `git worktree add ARGS` for a worktree at `path` (on `branch`, or
    /// "" for none): what a crash left there goes first, and the worktree
    /// is marked as being made until git has checked it out whole.
    fn add_worktree(&self, path: &Path, branch: &str, args: &[&str]) -> Result<(), GitError> {
        // A directory left half-made by a crash (a `git worktree add`
        // killed with orch), or a stale registration.
        self.forget_worktree(path, branch);
        let making = Making::mark(path)?;
        let mut add = vec!["worktree", "add"];
        add.extend_from_slice(args);
        self.git(&add)?;
        making.done();
        Ok(())
    }

    /// Switches the slot `wt` to its ticket's branch (made at
    /// `new_branch_at` when given) and cleans it, `mark` (a file outside
    /// the slot) marking the switch while it runs: every tracked change dropped,
    /// every untracked and ignored file removed except what `keep`
    /// (gitignore patterns) matches, index flags that hide changes
    /// (assume-unchanged, skip-worktree) cleared, a merge or switch a
    /// crash cut short undone, what an operation in progress left in the
    /// slot's git directory removed. A slot a crash left half switched
    /// (still marked) is switched again rather than taken as the ticket's
    /// work.
    ///
    /// # Errors
    /// When git fails (the branch checked out in another worktree, say).
    pub fn switch_slot(
        &self,
        wt: &Worktree,
        new_branch_at: Option<&str>,
        keep: &[String],
        mark: &Path,
    ) -> Result<(), GitError> {
        write_mark(mark, "mark the slot switch")?;
        let git_dir = recover(&self.common, &wt.path, &wt.branch)?;
        // What the last ticket left in the slot's own git directory:
        // an operation in progress (a rebase its agent's `--abort` would
        // finish on the last ticket's branch), a sparse checkout, per
        // worktree settings.
        for left in [
            "rebase-merge",
            "rebase-apply",
            "sequencer",
            "BISECT_LOG",
            "BISECT_START",
            "BISECT_TERMS",
            "BISECT_EXPECTED_REV",
            "CHERRY_PICK_HEAD",
            "REVERT_HEAD",
            "MERGE_HEAD",
            "MERGE_MSG",
            "MERGE_MODE",
            "info/sparse-checkout",
            "config.worktree",
        ] {
            let p = git_dir.join(left);
            let _ = std::fs::remove_dir_all(&p).or_else(|_| std::fs::remove_file(&p));
        }
        // What the last ticket could have set to make git overlook its
        // changes or files is not trusted: no fsmonitor, no untracked
        // cache, no sparse checkout.
        let quiet = [
            "-c",
            "core.fsmonitor=false",
            "-c",
            "core.untrackedCache=false",
            "-c",
            "core.sparseCheckout=false",
        ];
        let git = |args: &[&str]| {
            let mut all = quiet.to_vec();
            all.extend_from_slice(args);
            run_git(&wt.path, &all)
        };
        // An agent may have told git to overlook changes it made
        // (`update-index --assume-unchanged`, `--skip-worktree`): such a
        // file survives a forced checkout. Start from an index without
        // flags then (a full re-read, only in that case).
        let flagged = git(&["ls-files", "-v", "-z"])?
            .split('\0')
            .any(|e| e.starts_with(|c: char| c.is_ascii_lowercase() || c == 'S'));
        if flagged {
            let _ = std::fs::remove_file(git_dir.join("index"));
            git(&["read-tree", "HEAD"])?;
        }
        let mut checkout = vec!["checkout", "-q", "-f", "--no-recurse-submodules"];
        match new_branch_at {
            None => checkout.push(&wt.branch),
            Some(at) => checkout.extend(["-b", &wt.branch, at]),
        }
        git(&checkout)?;
        // First every untracked file that is not ignored, wherever it is
        // (`keep` spares only ignored ones: a `src/target/x.rs` the last
        // ticket made is not a cache), then the ignored ones but `keep`.
        git(&["clean", "-q", "-ffd"])?;
        let mut clean = vec!["clean", "-q", "-ffdx"];
        for k in keep {
            clean.extend(["-e", k.as_str()]);
        }
        git(&clean)?;
        let _ = std::fs::remove_file(mark);
        Ok(())
    }

    /// The commit a new ticket branch `into` starts at: `base` with each
    /// of `deps` (branches) merged in, made in the object database (no
    /// work tree is touched, so a crash leaves nothing half done), one
    /// merge commit per dependency that another one does not already
    /// bring.
    ///
    /// # Errors
    /// When git fails, or (kind `Conflict`, naming the files) when a
    /// dependency's work conflicts with the others'.
    pub fn start_commit(
        &self,
        base: &str,
        deps: &[String],
        into: &str,
    ) -> Result<String, GitError> {
        if deps.is_empty() {
            return Ok(base.to_owned());
        }
        let mut args = vec!["rev-parse", base];
        args.extend(deps.iter().map(String::as_str));
        let oids: Vec<String> = self.git(&args)?.lines().map(str::to_owned).collect();
        let Some((base, dep_oids)) = oids.split_first().filter(|(_, d)| d.len() == deps.len())
        else {
            return Err(GitError {
                kind: WorkspaceErrorKind::Tool,
                command: format!("git {}", args.join(" ")),
                message: format!("expected {} commits, got {}", deps.len() + 1, oids.len()),
            });
        };
        // Those no other (nor the base) already holds.
        let mut args = vec!["merge-base", "--independent", base];
        args.extend(dep_oids.iter().map(String::as_str));
        let independent = self.git(&args)?;
        let mut head = base.clone();
        for (dep, oid) in deps.iter().zip(dep_oids) {
            if !independent.lines().any(|l| l == oid) || oid == &head {
                continue;
            }
            // One best common ancestor as the merge base: where the
            // dependencies' histories criss-cross (they merged the same
            // tickets separately) they have many, and letting git merge
            // those into a virtual base first costs seconds a merge in a
            // run of thousands of tickets.
            let merge_base = format!("--merge-base={}", self.git(&["merge-base", &head, oid])?);
            let (code, out, err) = git_exit(
                &self.root,
                &[
                    "merge-tree",
                    "--write-tree",
                    "--name-only",
                    "--no-messages",
                    &merge_base,
                    &head,
                    oid,
                ],
            )?;
            let mut lines = out.lines();
            let tree = lines.next().unwrap_or_default().to_owned();
            match code {
                0 => {}
                1 => {
                    let files: Vec<&str> = lines.take_while(|l| !l.is_empty()).collect();
                    return Err(GitError {
                        kind: WorkspaceErrorKind::Conflict,
                        command: format!("git merge {dep}"),
                        message: format!("conflicts in {}", files.join(", ")),
                    });
                }
                _ => {
                    return Err(GitError {
                        kind: WorkspaceErrorKind::Tool,
                        command: format!("git merge-tree {head} {dep}"),
                        message: err,
                    });
                }
            }
            let msg = format!("Merge {dep} into {into}");
            head = self.git(&[
                "-c",
                "user.name=orch",
                "-c",
                "user.email=orch@localhost",
                "commit-tree",
                &tree,
                "-p",
                &head,
                "-p",
                oid,
                "-m",
                &msg,
            ])?;
        }
        Ok(head)
    }

    /// Points the head of the worktree at `path` at `branch` again,
    /// leaving its index and files as they are.
    ///
    /// # Errors
    /// When git fails.
    pub fn attach_head(&self, path: &Path, branch: &str) -> Result<(), GitError> {
        run_git(
            path,
            &["symbolic-ref", "HEAD", &format!("refs/heads/{branch}")],
        )?;
        Ok(())
    }

    /// Frees the slot at `path`: its head is detached where it is (no file
    /// changes), so that its branch may be checked out elsewhere and the
    /// slot is seen as free after a restart.
    ///
    /// # Errors
    /// When git fails.
    pub fn free_slot(&self, path: &Path) -> Result<(), GitError> {
        run_git(path, &["update-ref", "--no-deref", "HEAD", "HEAD"])?;
        Ok(())
    }

    /// Writes the commits reachable from the branches into the
    /// repository's commit graph, as a new layer: history walks (merge
    /// bases, ranges) then read generation numbers instead of every
    /// commit, so they stay short as a run adds thousands of commits.
    ///
    /// # Errors
    /// When git fails.
    pub fn write_commit_graph(&self) -> Result<(), GitError> {
        self.git(&[
            "commit-graph",
            "write",
            "--reachable",
            "--split",
            "--no-progress",
        ])?;
        Ok(())
    }

    /// Deletes those of `branches` that `into` holds (one `for-each-ref
    /// --merged` to ask, one `branch -D` to delete); a branch checked out
    /// somewhere stays.
    ///
    /// # Errors
    /// When git cannot list the branches.
    pub fn delete_merged_branches(&self, into: &str, branches: &[String]) -> Result<(), GitError> {
        if branches.is_empty() {
            return Ok(());
        }
        let merged = self.git(&[
            "for-each-ref",
            "--format=%(refname:short)",
            &format!("--merged={into}"),
            "refs/heads/orch/",
        ])?;
        let merged: std::collections::HashSet<&str> = merged.lines().collect();
        let gone: Vec<&str> = branches
            .iter()
            .map(String::as_str)
            .filter(|b| merged.contains(b))
            .collect();
        for chunk in gone.chunks(256) {
            let mut args = vec!["branch", "-q", "-D"];
            args.extend(chunk);
            // A branch git refuses (checked out somewhere) stays; the rest go.
            if let Err(e) = self.git(&args) {
                tracing::warn!(error = %e, "some ticket branches stay");
            }
        }
        Ok(())
    }

    /// The worktree a batch is merged in (after [`Repo::merge_batch`]).
    pub fn batch_worktree(&self, run: &RunId, batch: &BatchId) -> PathBuf {
        self.worktrees
            .join(run.as_str())
            .join(format!("batch-{batch}"))
    }
}

/// The work trees in `list` (`git worktree list --porcelain -z`) that
/// have `branch` checked out.
fn checked_out<'a>(list: &'a str, branch: &str) -> Vec<&'a str> {
    let want = format!("branch refs/heads/{branch}");
    // Records of `worktree <path>`, `HEAD <oid>`, `branch <ref>` fields,
    // separated by an empty field.
    let mut path = None;
    let mut out = Vec::new();
    for field in list.split('\0') {
        if let Some(p) = field.strip_prefix("worktree ") {
            path = Some(p);
        } else if field == want
            && let Some(p) = path
        {
            out.push(p);
        }
    }
    out
}

/// Makes a worktree found again (after a crash, or on a later prepare)
/// usable. A git killed mid-way (with the driver that ran it) leaves its
/// lock files behind, and a merge of orch's (a dependency's branch into a
/// ticket's tree, the tickets into a batch's) half applied: files changed,
/// no commit, maybe no `MERGE_HEAD`. Whatever an earlier driver ran in
/// the worktree is dead before a later one touches it, so the locks are
/// stale; a merge of orch's (marked by [`MERGING`] before it starts) is
/// undone, to be made again. Anything else, the agent's own work and its
/// own merges included, is left as it is.
///
/// The worktree's `.git` file is the agent's to change: it must still
/// name this repository's administrative directory for a worktree, or
/// nothing is done in it.
fn recover(common: &Path, path: &Path, branch: &str) -> Result<PathBuf, GitError> {
    let refuse = |why: String| GitError {
        kind: WorkspaceErrorKind::Refused,
        command: "recover the worktree".into(),
        message: format!("{}: {why}", path.display()),
    };
    let dot_git = path.join(".git");
    let meta = std::fs::symlink_metadata(&dot_git).map_err(|e| refuse(e.to_string()))?;
    if !meta.is_file() {
        return Err(refuse(
            ".git is not the file git writes for a worktree".into(),
        ));
    }
    let text = std::fs::read_to_string(&dot_git).map_err(|e| refuse(e.to_string()))?;
    let git_dir = text
        .strip_prefix("gitdir:")
        .map(|d| PathBuf::from(d.trim()))
        .and_then(|d| d.canonicalize().ok())
        .ok_or_else(|| refuse(".git does not name a git directory".into()))?;
    let admin = common.join("worktrees");
    let admin = admin.canonicalize().unwrap_or(admin);
    if git_dir.parent() != Some(admin.as_path()) {
        return Err(refuse(format!(
            ".git names {}, not a worktree of this repository (was it changed?)",
            git_dir.display()
        )));
    }
    // And that directory must be this work tree's, not another's.
    let back = std::fs::read_to_string(git_dir.join("gitdir"))
        .ok()
        .and_then(|b| PathBuf::from(b.trim()).canonicalize().ok());
    if back != dot_git.canonicalize().ok() {
        return Err(refuse(format!(
            ".git names {}, the git directory of another work tree (was it changed?)",
            git_dir.display()
        )));
    }
    remove_locks(&git_dir);
    remove_ref_lock(common, branch);
    let merging = git_dir.join(MERGING);
    if merging.exists() {
        let _ = run_git(path, &["merge", "--abort"]);
        run_git(path, &["reset", "--hard", "-q", "HEAD"])?;
        run_git(path, &["clean", "-fd", "-q"])?;
        let _ = std::fs::remove_file(merging);
    }
    Ok(git_dir)
}

/// Marks a worktree as being made (`.<name>.making` beside it: no id
/// starts with a dot) until `git worktree add` has checked it out whole:
/// one that a crash (or a failure) cut short has a partial checkout that
/// git opens without complaint, and is made again.
struct Making(PathBuf);

impl Making {
    fn file(path: &Path) -> PathBuf {
        let mut name = std::ffi::OsString::from(".");
        name.push(path.file_name().unwrap_or_default());
        name.push(".making");
        path.with_file_name(name)
    }

    fn marked(path: &Path) -> bool {
        Self::file(path).exists()
    }

    fn mark(path: &Path) -> Result<Making, GitError> {
        let file = Self::file(path);
        if let Some(dir) = file.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        std::fs::write(&file, b"").map_err(|e| GitError {
            kind: WorkspaceErrorKind::Io,
            command: "mark the worktree".into(),
            message: format!("{}: {e}", file.display()),
        })?;
        Ok(Making(file))
    }

    /// The worktree is made whole.
    fn done(self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Marks, in a worktree's git directory, that orch is merging into it:
/// written before the merge starts, removed when it ended (either way),
/// so that a merge a crash cut short is told apart from an agent's work.
const MERGING: &str = "orch-merging";

fn write_mark(mark: &Path, what: &str) -> Result<(), GitError> {
    std::fs::write(mark, b"").map_err(|e| GitError {
        kind: WorkspaceErrorKind::Io,
        command: what.into(),
        message: format!("{}: {e}", mark.display()),
    })
}

/// Removes the lock a killed git left on `branch`'s ref, for orch's own
/// branches only (`orch/...`): a branch the plan names may be the
/// person's, whose own git may hold it.
fn remove_ref_lock(common: &Path, branch: &str) {
    if branch.starts_with("orch/") {
        let _ = std::fs::remove_file(common.join("refs/heads").join(format!("{branch}.lock")));
    }
}

/// Removes the `*.lock` files of a worktree's own git directory (not the
/// repository's shared one, where the person's own git works too), links
/// not followed.
fn remove_locks(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.filter_map(Result::ok) {
        let Ok(kind) = e.file_type() else { continue };
        let p = e.path();
        if kind.is_dir() {
            remove_locks(&p);
        } else if kind.is_file() && p.extension().is_some_and(|x| x == "lock") {
            let _ = std::fs::remove_file(&p);
        }
    }
}

/// Runs `merge` (of orch's, into the worktree at `path`) marked as in
/// progress, so that [`recover`] undoes it if a crash cuts it short.
fn marked_merge<T>(
    path: &Path,
    merge: impl FnOnce() -> Result<T, GitError>,
) -> Result<T, GitError> {
    let git_dir = PathBuf::from(run_git(path, &["rev-parse", "--absolute-git-dir"])?);
    let mark = git_dir.join(MERGING);
    write_mark(&mark, "mark the merge")?;
    let result = merge();
    let _ = std::fs::remove_file(&mark);
    result
}

/// Merges each of `branches` not yet merged into the checkout at `path`;
/// on a conflict aborts that merge and returns the branch and files.
fn merge_branches(
    path: &Path,
    into: &str,
    branches: &[String],
) -> Result<Option<(String, Vec<String>)>, GitError> {
    for b in branches {
        // One already merged (before a crash) is "already up to date":
        // no commit, even with --no-ff.
        let msg = format!("Merge {b} into {into}");
        let merged = run_git(
            path,
            &[
                "-c",
                "user.name=orch",
                "-c",
                "user.email=orch@localhost",
                "merge",
                "--no-ff",
                "--no-edit",
                "-q",
                "-m",
                &msg,
                b,
            ],
        );
        if let Err(err) = merged {
            let files =
                run_git(path, &["diff", "--name-only", "--diff-filter=U"]).unwrap_or_default();
            let files: Vec<String> = files.lines().map(str::to_owned).collect();
            let _ = run_git(path, &["merge", "--abort"]);
            if files.is_empty() {
                return Err(err);
            }
            return Ok(Some((b.clone(), files)));
        }
    }
    Ok(None)
}
