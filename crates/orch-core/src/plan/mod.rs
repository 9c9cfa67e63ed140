//! The plan: tickets, batches, the phase pipeline, agents by role, policy.
//!
//! A [`Plan`] is plain data. [`Plan::validate`] checks every reference inside
//! it (ids, roles, phases, batches) and reports each problem with the path of
//! the offending key; the file loader ([`crate::plan::load`], feature
//! `plan-files`) turns those paths into file, line and column. Cycle
//! detection and the rest of the graph analysis live in `orch-graph`.

mod agent_spec;
mod effort;
mod gate_spec;
#[cfg(feature = "plan-files")]
pub mod load;
mod usage_spec;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;

use rustc_hash::{FxHashMap, FxHashSet};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

pub use agent_spec::{AgentSpec, BackendSpec, BreakerSpec, Prices, PromptVia};
pub use effort::{Effort, EffortError, MAX_EFFORT_MINUTES, Size, format_minutes};
pub use gate_spec::{
    BuiltinPatterns, CommandGateSpec, CoverageFormat, CoverageGateSpec, FilesGateSpec, GateSpec,
    GroupGateSpec, MetricGateSpec, PatternRule, PatternsGateSpec, TestFormat, TestsGateSpec,
};
pub use usage_spec::{UsageReader, UsageSpec};

use crate::{BatchId, PhaseName, RoleName, TicketId, id::check_id};

/// Ticket priority; P0 is the most urgent.
#[derive(
    Debug,
    Clone,
    Copy,
    Default,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    JsonSchema,
)]
pub enum Priority {
    /// Must be done first.
    P0,
    /// High.
    P1,
    /// Normal (the default).
    #[default]
    P2,
    /// Low.
    P3,
}

/// One unit of work, done by one agent at a time.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct Ticket {
    /// Unique id, safe as a branch component and a file name.
    pub id: TicketId,
    /// One-line title.
    pub title: String,
    /// What to do and why: the context an agent needs.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
    /// What must be true when the ticket is done.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub acceptance_criteria: Vec<String>,
    /// Priority (default P2).
    #[serde(default)]
    pub priority: Priority,
    /// Estimated agent time.
    pub effort: Effort,
    /// Tickets that must be done before this one starts.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub depends_on: Vec<TicketId>,
    /// Free-form labels.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub labels: Vec<String>,
    /// The role that does this ticket's phases unless a phase names its own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<RoleName>,
    /// The batch (pull request) this ticket ships in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch: Option<BatchId>,
}

impl Ticket {
    /// A ticket with only what every ticket needs; set the other fields
    /// after (a plan made by a program rather than read from a file).
    ///
    /// ```
    /// let mut t = orch_core::Ticket::new("T-2".parse().unwrap(), "Add retries", orch_core::Effort::from_minutes(90));
    /// t.depends_on.push("T-1".parse().unwrap());
    /// assert_eq!(t.effort.minutes(), 90);
    /// ```
    pub fn new(id: TicketId, title: impl Into<String>, effort: Effort) -> Ticket {
        Ticket {
            id,
            title: title.into(),
            description: String::new(),
            acceptance_criteria: Vec::new(),
            priority: Priority::default(),
            effort,
            depends_on: Vec::new(),
            labels: Vec::new(),
            role: None,
            batch: None,
        }
    }
}

/// A git branch name made of `/`-separated components, each a valid id.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct BranchName(String);

impl BranchName {
    /// Validates a branch name.
    ///
    /// # Errors
    /// [`crate::IdError`] for the first component that breaks the id rule.
    pub fn new(s: &str) -> Result<Self, crate::IdError> {
        for part in s.split('/') {
            check_id(part).map_err(|rule| crate::IdError {
                what: "branch name component",
                value: part.chars().take(80).collect(),
                rule,
            })?;
        }
        Ok(BranchName(s.to_owned()))
    }

    /// The branch name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for BranchName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for BranchName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

impl<'de> Deserialize<'de> for BranchName {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = std::borrow::Cow::<'de, str>::deserialize(d)?;
        BranchName::new(&s).map_err(serde::de::Error::custom)
    }
}

impl JsonSchema for BranchName {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "BranchName".into()
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "string",
            "description": "A git branch: '/'-separated components, each a valid id",
            "pattern": "^[A-Za-z0-9_][A-Za-z0-9._-]*(/[A-Za-z0-9_][A-Za-z0-9._-]*)*$"
        })
    }
}

/// One pull request's worth of tickets, merged together and gated again.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct Batch {
    /// Unique id.
    pub id: BatchId,
    /// Title of the pull request.
    pub title: String,
    /// The branch its tickets merge into (default `orch/<run>/batch-<batch
    /// id>`, one per run). A branch named here is used as it is, in every
    /// run, and must not be checked out anywhere (not the branch you work
    /// on).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub branch: Option<BranchName>,
    /// Its tickets (a ticket may instead name its batch with `batch = "..."`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tickets: Vec<TicketId>,
    /// Batches that must merge before this one. Batches are also merged in
    /// the order they are listed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub depends_on: Vec<BatchId>,
    /// Gates for this batch in addition to the plan's `batch_gates`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub gates: Vec<GateSpec>,
}

impl Batch {
    /// The branch its tickets merge into in `run`: the one named, or
    /// `orch/<run>/batch-<id>`.
    ///
    /// ```
    /// let b: orch_core::Batch = serde_json::from_str(r#"{"id": "PR1", "title": "t"}"#).unwrap();
    /// assert_eq!(b.branch_name(&"r1".parse().unwrap()), "orch/r1/batch-PR1");
    /// ```
    pub fn branch_name(&self, run: &crate::RunId) -> String {
        match &self.branch {
            Some(b) => b.as_str().to_owned(),
            None => format!("orch/{run}/batch-{}", self.id),
        }
    }
}

/// What happens when a phase has used all its attempts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ExhaustAction {
    /// Fail the ticket; its dependents become blocked, other work goes on.
    Fail,
    /// Ask a person (decision queue) and pause this ticket (the default).
    #[default]
    Escalate,
    /// Write the failures to a feedback file and restart from `restart_from`.
    Restart,
}

/// One phase of the per-ticket pipeline.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct PhaseSpec {
    /// Unique name, e.g. `implementation`.
    pub name: PhaseName,
    /// The role that runs it (default: the ticket's role, then the plan's
    /// `default_role`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<RoleName>,
    /// What the agent is asked to do in this phase.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub instructions: String,
    /// Gates that must pass before the ticket moves on.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub gates: Vec<GateSpec>,
    /// Commit the work tree when the phase passes (a rollback point).
    /// Default true. Without one, the phase's work is committed with the
    /// next checkpoint; a rollback before then (a later phase restarting,
    /// or a run stopped mid-phase and resumed) goes back to the last
    /// checkpoint made and drops that work with the rest.
    #[serde(default = "yes")]
    pub checkpoint: bool,
    /// Attempts before `on_exhausted` applies (default: the policy's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_attempts: Option<u32>,
    /// What to do when attempts are spent.
    #[serde(default)]
    pub on_exhausted: ExhaustAction,
    /// With `on_exhausted = "restart"`: the (same or earlier) phase to
    /// restart from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restart_from: Option<PhaseName>,
    /// With `on_exhausted = "restart"`: how many restarts before escalating
    /// (default 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_restarts: Option<u32>,
    /// With `on_exhausted = "restart"`: the feedback file written into the
    /// work tree (default `docs/feedback/{ticket}-{phase}.md`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub feedback_file: Option<String>,
    /// Paths (globs relative to the work tree, `tests/**`) that later
    /// phases may not change: an attempt of a later phase whose agent
    /// changed, added or removed any of them, against this phase's
    /// checkpoint, fails before its gates run, shown which files and how.
    /// So implementation cannot weaken the tests that test definition
    /// wrote (or the settings that run them).
    ///
    /// `file#key` freezes part of a settings file, so the rest may still
    /// change: in a `.toml` file the value at the dotted key
    /// (`Cargo.toml#test` for the `[[test]]` targets, `Cargo.toml#lib` for
    /// `harness`/`test` of the library, `pyproject.toml#tool.pytest`), in
    /// a `.ini`/`.cfg` file the section (`setup.cfg#tool:pytest`,
    /// `tox.ini#pytest`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub freeze: Vec<String>,
}

fn yes() -> bool {
    true
}

/// Spending limits for a run. Dispatch stops when one is reached.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Budget {
    /// Most input + output tokens over the run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<u64>,
    /// Most US dollars over the run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_usd: Option<f64>,
}

impl Budget {
    /// Why `spent` exceeds the budget, if it does.
    pub fn exceeded(&self, spent: &crate::Usage) -> Option<String> {
        if let Some(max) = self.max_tokens.filter(|m| spent.total_tokens() >= *m) {
            return Some(format!(
                "{} tokens used; the budget is {max}",
                spent.total_tokens()
            ));
        }
        if let Some(max) = self.max_usd.filter(|m| spent.cost_usd >= *m) {
            return Some(format!(
                "${:.2} spent; the budget is ${max:.2}",
                spent.cost_usd
            ));
        }
        None
    }
}

/// Time limits, in seconds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct Timeouts {
    /// One agent run (default 3600).
    #[serde(default = "hour")]
    pub agent_secs: u64,
    /// One gate (default 1800).
    #[serde(default = "half_hour")]
    pub gate_secs: u64,
    /// An agent silent this long is stopped as stalled (default 600).
    #[serde(default = "ten_min")]
    pub stall_secs: u64,
}

fn hour() -> u64 {
    3600
}
fn half_hour() -> u64 {
    1800
}
fn ten_min() -> u64 {
    600
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            agent_secs: hour(),
            gate_secs: half_hour(),
            stall_secs: ten_min(),
        }
    }
}

/// How a run behaves: concurrency, attempts, budget, time limits, and
/// the rules of the status report's go/no-go call.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct Policy {
    /// Most tickets in flight at once (default 4).
    #[serde(default = "four")]
    pub max_concurrency: u32,
    /// Per-role limits on tickets in flight, a ticket counting for the
    /// role of its first phase (the scheduler starts no more). The agent
    /// runs on a backend at once are `agents.<role>.max_concurrency`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub role_concurrency: BTreeMap<RoleName, u32>,
    /// Attempts per phase unless the phase says otherwise (default 3).
    #[serde(default = "three")]
    pub max_attempts: u32,
    /// Spending limits.
    #[serde(default)]
    pub budget: Budget,
    /// Time limits.
    #[serde(default)]
    pub timeouts: Timeouts,
    /// How far the projected finish may slip past the critical path's
    /// estimate before the status report goes RED (default 4h): the
    /// campaign's "the critical path slips by more than 4 hours". A
    /// smaller projected slip is YELLOW.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub escalate_delay: Option<crate::Effort>,
    /// How long an escalation may wait for its answer before the status
    /// report goes RED (default 4h); a younger one is YELLOW.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decision_age: Option<crate::Effort>,
    /// Failed attempts (a phase's gates failing, an agent failing) above
    /// which the status report is YELLOW (default 3), counting those no
    /// person has reviewed by answering an escalation of their ticket.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retries_warn: Option<u32>,
}

impl Policy {
    /// [`Policy::escalate_delay`] in minutes, its default applied.
    pub fn escalate_delay_minutes(&self) -> u64 {
        self.escalate_delay.map_or(240, |e| u64::from(e.minutes()))
    }

    /// [`Policy::decision_age`] in minutes, its default applied.
    pub fn decision_age_minutes(&self) -> u64 {
        self.decision_age.map_or(240, |e| u64::from(e.minutes()))
    }

    /// [`Policy::retries_warn`], its default applied.
    pub fn retries_warn(&self) -> u32 {
        self.retries_warn.unwrap_or(3)
    }
}

fn four() -> u32 {
    4
}
fn three() -> u32 {
    3
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            max_concurrency: four(),
            role_concurrency: BTreeMap::new(),
            max_attempts: three(),
            budget: Budget::default(),
            timeouts: Timeouts::default(),
            escalate_delay: None,
            decision_age: None,
            retries_warn: None,
        }
    }
}

/// A whole plan: what to do, in which order, by whom, checked how.
///
/// ```
/// let plan = orch_core::Plan::from_toml_str(r#"
///     name = "demo"
///     [agents.dev]
///     backend = { kind = "command", argv = ["./agent.sh"] }
///     [[phases]]
///     name = "implement"
///     role = "dev"
///     [[tickets]]
///     id = "T-1"
///     title = "First"
///     effort = "1h"
///     [[tickets]]
///     id = "T-2"
///     title = "Second"
///     effort = "S (2h)"
///     depends_on = ["T-1"]
/// "#).unwrap();
/// assert_eq!(plan.tickets.len(), 2);
/// assert_eq!(plan.total_effort_minutes(), 180);
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct Plan {
    /// The plan's name.
    pub name: String,
    /// What the plan is for.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
    /// The role used when neither the phase nor the ticket names one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_role: Option<RoleName>,
    /// How the run behaves.
    #[serde(default)]
    pub policy: Policy,
    /// Agent backends by role.
    #[serde(default)]
    pub agents: BTreeMap<RoleName, AgentSpec>,
    /// The pipeline every ticket goes through, in order.
    #[serde(default)]
    pub phases: Vec<PhaseSpec>,
    /// Gates every batch must pass after its tickets are merged.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub batch_gates: Vec<GateSpec>,
    /// Batches (pull requests), in merge order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub batches: Vec<Batch>,
    /// The tickets.
    #[serde(default)]
    pub tickets: Vec<Ticket>,
    /// Where tickets work: reused worktree slots (the default) or a fresh
    /// worktree per ticket, and what a slot keeps between tickets.
    #[serde(default, skip_serializing_if = "WorkspaceSpec::is_default")]
    pub workspace: WorkspaceSpec,
}

/// How tickets get their work trees (the plan's `[workspace]` table).
///
/// With `worktrees = "slots"` (the default) a run keeps a pool of git
/// worktrees under `.orch/slots`, about as many as tickets run at once. A
/// ticket takes a free slot, which is switched to the ticket's branch (its
/// dependencies merged in) and cleaned of every tracked change and every
/// untracked or ignored file, except the directories `keep` names: build
/// caches, so the next build in that slot is incremental. With
/// `worktrees = "fresh"` each ticket gets a new worktree, removed when it
/// is done (nothing is kept, and each ticket's first build is cold).
///
/// ```
/// let plan = orch_core::Plan::from_toml_str(r#"
///     name = "demo"
///     default_role = "dev"
///     [agents.dev]
///     backend = { kind = "command", argv = ["./agent.sh"] }
///     [workspace]
///     keep = ["target/", "node_modules/"]
///     [[phases]]
///     name = "implement"
///     [[tickets]]
///     id = "T-1"
///     title = "First"
///     effort = "1h"
/// "#).unwrap();
/// assert_eq!(plan.workspace.worktrees, orch_core::Worktrees::Slots);
/// assert_eq!(plan.workspace.keep, ["target/", "node_modules/"]);
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct WorkspaceSpec {
    /// `slots` (default): reuse worktrees, keeping `keep`; `fresh`: a new
    /// worktree per ticket.
    #[serde(default)]
    pub worktrees: Worktrees,
    /// What a slot keeps between tickets: gitignore-style patterns of
    /// untracked (usually ignored) directories that hold only what a build
    /// derives from tracked files. `target/` matches a directory named
    /// `target` at any depth, `/target/` only at the top. Default:
    /// `target/` (Cargo), `node_modules/` (npm), `.venv/` (Python).
    /// The build tool's own invalidation decides what in them is reused:
    /// a gate always runs on the ticket's own checked-out files.
    #[serde(default = "default_keep")]
    pub keep: Vec<String>,
}

/// Whether tickets reuse worktrees ([`WorkspaceSpec::worktrees`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Worktrees {
    /// A pool of worktrees reused from ticket to ticket, caches kept.
    #[default]
    Slots,
    /// A new worktree per ticket, removed when it is done.
    Fresh,
}

fn default_keep() -> Vec<String> {
    ["target/", "node_modules/", ".venv/"]
        .map(str::to_owned)
        .to_vec()
}

impl Default for WorkspaceSpec {
    fn default() -> Self {
        WorkspaceSpec {
            worktrees: Worktrees::default(),
            keep: default_keep(),
        }
    }
}

impl WorkspaceSpec {
    /// Fresh worktrees for every ticket, nothing kept.
    pub fn fresh() -> Self {
        WorkspaceSpec {
            worktrees: Worktrees::Fresh,
            keep: Vec::new(),
        }
    }

    /// Whether this is the default (slots keeping the default caches).
    pub fn is_default(&self) -> bool {
        *self == WorkspaceSpec::default()
    }
}

/// One problem found by [`Plan::validate`], addressed by the path of the
/// offending key (e.g. `tickets[3].depends_on[0]`).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Problem {
    /// Where in the document: `tickets[3].depends_on[0]`, `phases[1].role`.
    pub path: String,
    /// What is wrong, naming the offending ticket, role or key.
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

impl Plan {
    /// Sum of all tickets' effort, in minutes.
    pub fn total_effort_minutes(&self) -> u64 {
        self.tickets
            .iter()
            .map(|t| u64::from(t.effort.minutes()))
            .sum()
    }

    /// A fingerprint of the plan (everything but its description), and one
    /// per part: `policy`, `default_role`, `agent:<role>`, `phase:<name>`
    /// (with its position), `batch_gates`, `batch:<id>`, `ticket:<id>`. A run
    /// records them when it starts, so resuming with a changed plan can say
    /// what changed ([`Plan::changes_since`]).
    pub fn fingerprint(&self) -> (String, BTreeMap<String, String>) {
        /// FNV-1a over the JSON, fed as it is written (no buffer): stable
        /// across Rust versions, unlike `DefaultHasher`.
        struct Fnv(u64);
        impl std::io::Write for Fnv {
            fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
                for &b in buf {
                    self.0 = (self.0 ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
                }
                Ok(buf.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        fn hash(v: &impl Serialize) -> String {
            let mut h = Fnv(0xcbf2_9ce4_8422_2325);
            // Plan types always serialize; a failure would only shorten
            // the input, never panic.
            let _ = serde_json::to_writer(&mut h, v);
            format!("{:016x}", h.0)
        }
        fn key(kind: &str, id: &str) -> String {
            let mut k = String::with_capacity(kind.len() + 1 + id.len());
            k.push_str(kind);
            k.push(':');
            k.push_str(id);
            k
        }
        let mut parts = vec![
            ("policy".to_owned(), hash(&self.policy)),
            ("default_role".to_owned(), hash(&self.default_role)),
            ("batch_gates".to_owned(), hash(&self.batch_gates)),
        ];
        // Only when set: journals from before it have no such part.
        if !self.workspace.is_default() {
            parts.push(("workspace".to_owned(), hash(&self.workspace)));
        }
        parts.reserve(
            self.agents.len() + self.phases.len() + self.batches.len() + self.tickets.len(),
        );
        for (role, spec) in &self.agents {
            parts.push((key("agent", role.as_str()), hash(spec)));
        }
        for (i, p) in self.phases.iter().enumerate() {
            parts.push((key("phase", p.name.as_str()), hash(&(i, p))));
        }
        for b in &self.batches {
            parts.push((key("batch", b.id.as_str()), hash(b)));
        }
        for t in &self.tickets {
            parts.push((key("ticket", t.id.as_str()), hash(t)));
        }
        // Collecting sorts once (stably: with a repeated id the last one
        // wins, as inserting did) and builds the tree in one pass.
        let parts: BTreeMap<String, String> = parts.into_iter().collect();
        (hash(&parts), parts)
    }

    /// What differs between this plan and the parts recorded by
    /// [`Plan::fingerprint`] earlier, one line per part: `ticket:T-1
    /// changed`, `ticket:T-9 added`, `policy changed`.
    pub fn changes_since(&self, recorded: &BTreeMap<String, String>) -> Vec<String> {
        let (_, now) = self.fingerprint();
        let mut out = Vec::new();
        for (k, v) in &now {
            match recorded.get(k) {
                None => out.push(format!("{k} added")),
                Some(old) if old != v => out.push(format!("{k} changed")),
                Some(_) => {}
            }
        }
        out.extend(
            recorded
                .keys()
                .filter(|k| !now.contains_key(*k))
                .map(|k| format!("{k} removed")),
        );
        out
    }

    /// The secret values the plan makes known at run time, for the
    /// redactor ([`crate::secrets::Redactor::with_values`]): the value of
    /// every API key variable a backend reads (`api_key_env`, whatever its
    /// name), the password of every URL a backend is configured with, and
    /// every secret-named `env` value set for an agent or a gate.
    pub fn known_secrets(&self) -> Vec<String> {
        use crate::secrets::{is_secret_name, url_password};
        let mut out = Vec::new();
        let mut env = |e: &BTreeMap<String, String>| {
            for (k, v) in e {
                if is_secret_name(k) {
                    out.push(v.clone());
                }
                out.extend(url_password(v).map(str::to_owned));
            }
        };
        let mut urls_and_keys = Vec::new();
        for a in self.agents.values() {
            match &a.backend {
                BackendSpec::Command { env: e, .. }
                | BackendSpec::ClaudeCode { env: e, .. }
                | BackendSpec::Codex { env: e, .. }
                | BackendSpec::GeminiCli { env: e, .. }
                | BackendSpec::QwenCode { env: e, .. } => env(e),
                BackendSpec::Anthropic {
                    api_key_env,
                    base_url,
                    ..
                } => urls_and_keys.push((
                    Some(
                        api_key_env
                            .clone()
                            .unwrap_or_else(|| "ANTHROPIC_API_KEY".into()),
                    ),
                    base_url.clone(),
                )),
                BackendSpec::OpenaiCompatible {
                    api_key_env,
                    base_url,
                    ..
                } => urls_and_keys.push((api_key_env.clone(), Some(base_url.clone()))),
                BackendSpec::Custom { .. } => {}
            }
        }
        fn gates<'g>(gs: &'g [GateSpec], all: &mut Vec<&'g GateSpec>) {
            for g in gs {
                all.push(g);
                if let GateSpec::All(c) | GateSpec::Any(c) = g {
                    gates(&c.gates, all);
                }
            }
        }
        let mut all = Vec::new();
        for p in &self.phases {
            gates(&p.gates, &mut all);
        }
        for b in &self.batches {
            gates(&b.gates, &mut all);
        }
        gates(&self.batch_gates, &mut all);
        for g in all {
            match g {
                GateSpec::Command(c) => env(&c.env),
                GateSpec::Tests(t) => env(&t.env),
                GateSpec::Coverage(c) => env(&c.env),
                _ => {}
            }
        }
        for (key, url) in urls_and_keys {
            if let Some(v) = key.and_then(|k| std::env::var(k).ok()) {
                out.push(v);
            }
            out.extend(url.as_deref().and_then(url_password).map(str::to_owned));
        }
        out
    }

    /// The ticket with this id.
    pub fn ticket(&self, id: &str) -> Option<&Ticket> {
        self.tickets.iter().find(|t| t.id.as_str() == id)
    }

    /// The role that runs `phase` for `ticket`: the phase's role, else the
    /// ticket's, else the plan's default.
    pub fn role_for<'a>(
        &'a self,
        ticket: &'a Ticket,
        phase: &'a PhaseSpec,
    ) -> Option<&'a RoleName> {
        phase
            .role
            .as_ref()
            .or(ticket.role.as_ref())
            .or(self.default_role.as_ref())
    }

    /// The batch each ticket belongs to (from `ticket.batch` or
    /// `batch.tickets`), for tickets that have one. Assumes a valid plan.
    pub fn batch_of(&self) -> HashMap<&TicketId, &BatchId> {
        let mut out = HashMap::new();
        for b in &self.batches {
            for t in &b.tickets {
                out.insert(t, &b.id);
            }
        }
        for t in &self.tickets {
            if let Some(b) = &t.batch {
                out.insert(&t.id, b);
            }
        }
        out
    }

    /// Checks every reference in the plan. Cycles are checked by `orch-graph`.
    ///
    /// # Errors
    /// Every problem found, in document order, each with its key path.
    pub fn validate(&self) -> Result<(), Vec<Problem>> {
        let mut v = Validator::default();
        v.run(self);
        if v.problems.is_empty() {
            Ok(())
        } else {
            Err(v.problems)
        }
    }
}

#[derive(Default)]
struct Validator {
    problems: Vec<Problem>,
}

impl Validator {
    fn push(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.problems.push(Problem {
            path: path.into(),
            message: message.into(),
        });
    }

    fn run(&mut self, plan: &Plan) {
        if plan.tickets.is_empty() {
            self.push(
                "tickets",
                "the plan has no tickets; add at least one [[tickets]]",
            );
        }
        if plan.phases.is_empty() {
            self.push(
                "phases",
                "the plan has no phases; add at least one [[phases]]",
            );
        }
        let roles: HashSet<&str> = plan.agents.keys().map(RoleName::as_str).collect();
        let role_ok = |r: &RoleName| roles.contains(r.as_str());
        let known_roles = || {
            let mut r: Vec<_> = roles.iter().copied().collect();
            r.sort_unstable();
            if r.is_empty() {
                "no roles are defined under [agents]".to_owned()
            } else {
                format!("known roles: {}", r.join(", "))
            }
        };

        // Policy.
        if plan.policy.max_concurrency == 0 {
            self.push("policy.max_concurrency", "must be at least 1");
        }
        for (i, k) in plan.workspace.keep.iter().enumerate() {
            let bare = k.trim_matches('/');
            let why = if bare.is_empty() || bare.chars().all(|c| c == '*') {
                Some("keeps everything: a slot could then carry one ticket's files into the next")
            } else if k.starts_with('!') {
                Some("a negated pattern keeps nothing; list only what to keep")
            } else if bare.split('/').any(|c| c == ".." || c == ".git") {
                Some("must stay inside the work tree and out of .git")
            } else if bare.contains(['\n', '\0']) {
                Some("must be one line")
            } else {
                None
            };
            if let Some(why) = why {
                self.push(format!("workspace.keep[{i}]"), format!("{k:?} {why}"));
            }
        }
        if plan.policy.max_attempts == 0 {
            self.push("policy.max_attempts", "must be at least 1");
        }
        for (role, n) in &plan.policy.role_concurrency {
            if !role_ok(role) {
                self.push(
                    format!("policy.role_concurrency.{role}"),
                    format!("unknown role \"{role}\"; {}", known_roles()),
                );
            } else if *n == 0 {
                self.push(
                    format!("policy.role_concurrency.{role}"),
                    "must be at least 1",
                );
            }
        }
        if let Some(r) = &plan.default_role
            && !role_ok(r)
        {
            self.push(
                "default_role",
                format!("unknown role \"{r}\"; {}", known_roles()),
            );
        }

        // Agents.
        for (role, spec) in &plan.agents {
            if let Some(fb) = &spec.fallback {
                if fb == role {
                    self.push(
                        format!("agents.{role}.fallback"),
                        format!("role \"{role}\" cannot be its own fallback"),
                    );
                } else if !role_ok(fb) {
                    self.push(
                        format!("agents.{role}.fallback"),
                        format!("unknown fallback role \"{fb}\"; {}", known_roles()),
                    );
                }
            }
            if let Some(b) = spec.breaker {
                // Of the phases this role works in, the one with the fewest
                // attempts: a breaker that needs more failures than that
                // escalates before it falls back.
                let fewest = plan
                    .phases
                    .iter()
                    .filter(|p| {
                        plan.tickets
                            .iter()
                            .any(|t| plan.role_for(t, p) == Some(role))
                    })
                    .map(|p| (p.max_attempts.unwrap_or(plan.policy.max_attempts), &p.name))
                    .min_by_key(|(n, _)| *n);
                if b.failures == 0 {
                    self.push(
                        format!("agents.{role}.breaker.failures"),
                        "must be at least 1",
                    );
                } else if let Some((attempts, phase)) = fewest
                    && b.failures > attempts
                {
                    self.push(
                        format!("agents.{role}.breaker.failures"),
                        format!(
                            "{} is more than the {attempts} attempts of phase \"{phase}\": the phase would escalate before the role's circuit opens",
                            b.failures
                        ),
                    );
                }
            }
            if spec.max_concurrency == Some(0) {
                self.push(
                    format!("agents.{role}.max_concurrency"),
                    "must be at least 1",
                );
            }
            if let BackendSpec::Command { argv, usage, .. } = &spec.backend {
                if argv.first().is_none_or(String::is_empty) {
                    self.push(
                        format!("agents.{role}.backend.argv"),
                        "argv must name a program",
                    );
                }
                if let Some(Err(e)) = usage.as_ref().map(UsageSpec::reader) {
                    self.push(format!("agents.{role}.backend.usage"), e);
                }
            }
        }

        // Phases.
        let mut phase_index: HashMap<&str, usize> = HashMap::new();
        for (i, p) in plan.phases.iter().enumerate() {
            if let Some(first) = phase_index.insert(p.name.as_str(), i) {
                self.push(
                    format!("phases[{i}].name"),
                    format!(
                        "duplicate phase \"{}\" (first defined at phases[{first}])",
                        p.name
                    ),
                );
            }
            if let Some(r) = &p.role
                && !role_ok(r)
            {
                self.push(
                    format!("phases[{i}].role"),
                    format!(
                        "phase \"{}\" names unknown role \"{r}\"; {}",
                        p.name,
                        known_roles()
                    ),
                );
            }
            if p.max_attempts == Some(0) {
                self.push(format!("phases[{i}].max_attempts"), "must be at least 1");
            }
            if let Some(file) = &p.feedback_file
                && let Err(e) = crate::check_relative(file)
            {
                self.push(format!("phases[{i}].feedback_file"), e.to_string());
            }
            if !p.freeze.is_empty() && !p.checkpoint {
                self.push(
                    format!("phases[{i}].freeze"),
                    "needs checkpoint = true: frozen paths are compared with this phase's checkpoint",
                );
            }
            for (k, entry) in p.freeze.iter().enumerate() {
                let at = format!("phases[{i}].freeze[{k}]");
                let (path, key) = match entry.split_once('#') {
                    Some((path, key)) => (path, Some(key)),
                    None => (entry.as_str(), None),
                };
                if let Err(e) = crate::check_relative(path) {
                    self.push(at.clone(), e.to_string());
                }
                if let Some(key) = key
                    && (key.is_empty()
                        || path.contains(['*', '?', '[', '{'])
                        || ![".toml", ".ini", ".cfg"].iter().any(|x| path.ends_with(x)))
                {
                    self.push(
                        at,
                        format!(
                            "{entry:?}: `file#key` needs one .toml, .ini or .cfg file (no glob) and a key"
                        ),
                    );
                }
            }
            self.gates(&format!("phases[{i}].gates"), &p.gates);
        }
        for (i, p) in plan.phases.iter().enumerate() {
            match (p.on_exhausted, &p.restart_from) {
                (ExhaustAction::Restart, None) => self.push(
                    format!("phases[{i}].on_exhausted"),
                    format!(
                        "phase \"{}\" restarts when exhausted but has no `restart_from`",
                        p.name
                    ),
                ),
                (ExhaustAction::Restart, Some(from)) => match phase_index.get(from.as_str()) {
                    None => self.push(
                        format!("phases[{i}].restart_from"),
                        format!(
                            "phase \"{}\" restarts from unknown phase \"{from}\"",
                            p.name
                        ),
                    ),
                    Some(&j) if j > i => self.push(
                        format!("phases[{i}].restart_from"),
                        format!(
                            "phase \"{}\" restarts from \"{from}\", which comes after it",
                            p.name
                        ),
                    ),
                    Some(_) => {}
                },
                (_, Some(_)) => self.push(
                    format!("phases[{i}].restart_from"),
                    "`restart_from` needs on_exhausted = \"restart\"",
                ),
                _ => {}
            }
        }

        // Batches.
        let mut batch_index: FxHashMap<&str, usize> = FxHashMap::default();
        for (k, b) in plan.batches.iter().enumerate() {
            if let Some(first) = batch_index.insert(b.id.as_str(), k) {
                self.push(
                    format!("batches[{k}].id"),
                    format!(
                        "duplicate batch id \"{}\" (first defined at batches[{first}])",
                        b.id
                    ),
                );
            }
            self.gates(&format!("batches[{k}].gates"), &b.gates);
        }
        self.gates("batch_gates", &plan.batch_gates);
        for (k, b) in plan.batches.iter().enumerate() {
            for (j, d) in b.depends_on.iter().enumerate() {
                if !batch_index.contains_key(d.as_str()) {
                    self.push(
                        format!("batches[{k}].depends_on[{j}]"),
                        format!("batch \"{}\" depends on unknown batch \"{d}\"", b.id),
                    );
                } else if d == &b.id {
                    self.push(
                        format!("batches[{k}].depends_on[{j}]"),
                        format!("batch \"{}\" depends on itself", b.id),
                    );
                }
            }
        }

        // Tickets.
        let mut ticket_index: FxHashMap<&str, usize> =
            FxHashMap::with_capacity_and_hasher(plan.tickets.len(), Default::default());
        for (i, t) in plan.tickets.iter().enumerate() {
            if let Some(first) = ticket_index.insert(t.id.as_str(), i) {
                self.push(
                    format!("tickets[{i}].id"),
                    format!(
                        "duplicate ticket id \"{}\" (first defined at tickets[{first}])",
                        t.id
                    ),
                );
                // Keep the first definition as the one references resolve to.
                ticket_index.insert(t.id.as_str(), first);
            }
        }
        // Batch membership from both directions.
        let mut member_of: FxHashMap<&str, (&str, String)> = FxHashMap::default();
        for (k, b) in plan.batches.iter().enumerate() {
            for (j, t) in b.tickets.iter().enumerate() {
                let path = format!("batches[{k}].tickets[{j}]");
                if !ticket_index.contains_key(t.as_str()) {
                    self.push(
                        path,
                        format!("batch \"{}\" lists unknown ticket \"{t}\"", b.id),
                    );
                } else if let Some((other, _)) = member_of.get(t.as_str()) {
                    self.push(
                        path,
                        format!(
                            "ticket \"{t}\" is listed in batch \"{}\" and in batch \"{other}\"",
                            b.id
                        ),
                    );
                } else {
                    member_of.insert(t.as_str(), (b.id.as_str(), path));
                }
            }
        }
        // Dependencies seen so far of one ticket (one set, cleared per ticket).
        let mut seen: FxHashSet<&str> = FxHashSet::default();
        for (i, t) in plan.tickets.iter().enumerate() {
            if let Some(b) = &t.batch {
                if !batch_index.contains_key(b.as_str()) {
                    let known: Vec<&str> = plan.batches.iter().map(|b| b.id.as_str()).collect();
                    self.push(
                        format!("tickets[{i}].batch"),
                        format!(
                            "ticket \"{}\" is in unknown batch \"{b}\"; {}",
                            t.id,
                            if known.is_empty() {
                                "no [[batches]] are defined".to_owned()
                            } else {
                                format!("known batches: {}", known.join(", "))
                            }
                        ),
                    );
                } else if let Some((other, _)) = member_of.get(t.id.as_str())
                    && *other != b.as_str()
                {
                    self.push(
                        format!("tickets[{i}].batch"),
                        format!(
                            "ticket \"{}\" says batch \"{b}\" but batch \"{other}\" lists it",
                            t.id
                        ),
                    );
                }
            }
            if let Some(r) = &t.role
                && !role_ok(r)
            {
                self.push(
                    format!("tickets[{i}].role"),
                    format!(
                        "ticket \"{}\" names unknown role \"{r}\"; {}",
                        t.id,
                        known_roles()
                    ),
                );
            }
            for p in &plan.phases {
                if plan.role_for(t, p).is_none() {
                    self.push(
                        format!("tickets[{i}]"),
                        format!(
                            "ticket \"{}\" has no role for phase \"{}\": set the ticket's `role`, the phase's `role` or the plan's `default_role`",
                            t.id, p.name
                        ),
                    );
                    break;
                }
            }
            seen.clear();
            for (j, d) in t.depends_on.iter().enumerate() {
                let path = || format!("tickets[{i}].depends_on[{j}]");
                if d == &t.id {
                    self.push(path(), format!("ticket \"{}\" depends on itself", t.id));
                } else if !ticket_index.contains_key(d.as_str()) {
                    self.push(
                        path(),
                        format!("ticket \"{}\" depends on unknown ticket \"{d}\"", t.id),
                    );
                } else if !seen.insert(d.as_str()) {
                    self.push(
                        path(),
                        format!("ticket \"{}\" lists dependency \"{d}\" twice", t.id),
                    );
                }
            }
        }
    }

    fn gates(&mut self, base: &str, gates: &[GateSpec]) {
        for (g, gate) in gates.iter().enumerate() {
            for (field, msg) in gate.problems() {
                self.push(format!("{base}[{g}].{field}"), msg);
            }
        }
    }
}

/// The JSON Schema of plan files, generated from the types, pretty-printed.
/// The same text is committed at `schema/plan.schema.json`.
pub fn json_schema() -> String {
    let schema = schemars::schema_for!(Plan);
    let mut s = serde_json::to_string_pretty(&schema).unwrap_or_default();
    s.push('\n');
    s
}
