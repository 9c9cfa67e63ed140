//! One ticket through the phases, and one batch through its merge.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use orch_core::{
    Agent, AgentContext, AgentId, AgentOutcome, AgentTask, BatchId, Cancellation, Decision, Event,
    EventKind, ExhaustAction, GateContext, GateReport, GateScope, GateStatus, Merged, PhaseName,
    PhaseSpec, Plan, RoleName, StoreError, TicketId, TicketState, Workspace,
};
use tracing::Instrument;

use super::GateFactory;
use super::journal::Journal;
use crate::Ix;
use crate::graph::PlanGraph;

/// Longest context shown with an escalated question.
const MAX_CONTEXT: usize = 8 * 1024;

pub(crate) struct Shared {
    pub(crate) plan: Arc<Plan>,
    /// The plan's tickets, as the graph indexes them, shared with the
    /// agent tasks.
    pub(crate) tickets: Arc<[Arc<orch_core::Ticket>]>,
    pub(crate) graph: Arc<PlanGraph>,
    pub(crate) agent: Arc<dyn Agent>,
    pub(crate) workspace: Arc<dyn Workspace>,
    pub(crate) gates: Option<GateFactory>,
    pub(crate) journal: Arc<Journal>,
    /// Cancelled to stop all running work (Ctrl-C, budget, abort, store).
    pub(crate) work: Cancellation,
    /// What every agent run gets: `work` and the journal's progress sink.
    pub(crate) agent_ctx: AgentContext,
    /// The backend names seen so far ([`Shared::backend`]).
    pub(crate) backends: std::sync::Mutex<Vec<Arc<str>>>,
}

impl Shared {
    /// The name of the backend that runs `role`'s tasks now, as the agent
    /// says (a router's answer changes when it fails over), shared: each
    /// name is made once per run, and every `AgentStarted` that carries
    /// it (and the store's copy of the event, and the agent registry's
    /// record) shares it instead of copying it.
    fn backend(&self, role: &RoleName) -> Arc<str> {
        let name = self.agent.backend_for(role);
        let mut known = self.backends.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(known) = known.iter().find(|n| n[..] == *name) {
            return known.clone();
        }
        let name: Arc<str> = name.into();
        known.push(name.clone());
        name
    }
}

/// How a ticket's task ended.
pub(crate) enum End {
    /// Every phase passed.
    Done,
    /// Failed for good (recorded).
    Failed,
    /// Waiting for a person (recorded).
    Escalated,
    /// Stopped by cancellation; resumes from its checkpoint.
    Interrupted,
    /// A worker's phase is done; the ticket goes on in another job.
    Handoff,
    /// The store failed.
    Store(StoreError),
}

impl From<StoreError> for End {
    fn from(e: StoreError) -> Self {
        End::Store(e)
    }
}

/// A task's way to the journal. Events that need not be durable before
/// the next step acts (a finished agent, a gate's report, a passed phase)
/// wait here and go out with the next write-ahead event, so a phase costs
/// two appends instead of four. After a crash, whatever was not yet
/// written is redone: the step re-runs from its checkpoint.
///
/// Every event queued here is also folded, by the ticket part of the
/// journal's fold ([`TicketState::apply`]), into the task's own view of
/// its ticket, which is what the pipeline decides by (phases passed,
/// checkpoints, feedback, failed attempts, restarts): one fold, no second
/// copy of its rules.
pub(crate) struct Outbox<'a> {
    j: &'a Journal,
    /// Events made but not written yet: they go with the next write.
    pending: Vec<Event>,
    /// The ticket as the journal has it, with `pending` folded in.
    mine: TicketState,
}

impl<'a> Outbox<'a> {
    /// A ticket pipeline's outbox, whose view starts from its ticket as
    /// the journal has it.
    pub(crate) fn new(j: &'a Journal, ticket: TicketState) -> Self {
        Outbox {
            j,
            pending: Vec::new(),
            mine: ticket,
        }
    }

    /// The outbox of a batch merge; its view has no ticket and stays
    /// empty.
    pub(crate) fn for_merge(j: &'a Journal) -> Self {
        Outbox::new(j, TicketState::default())
    }

    /// The ticket's state: the journal's, plus what this task queued.
    fn ticket(&self) -> &TicketState {
        &self.mine
    }

    /// Holds `k` until the next write.
    fn defer(&mut self, k: EventKind) {
        // In the pipeline's spans: run, ticket, phase and attempt.
        tracing::info!(event = k.name());
        let e = self.j.event(k);
        self.mine.apply(&e);
        self.pending.push(e);
    }

    /// Appends what waits and `ks`, durably, before the caller acts.
    async fn write<K: IntoIterator<Item = EventKind>>(&mut self, ks: K) -> Result<(), StoreError> {
        for k in ks {
            self.defer(k);
        }
        let all = std::mem::take(&mut self.pending);
        if all.is_empty() {
            return Ok(());
        }
        self.j.append(all).await
    }

    /// Appends what waits, durably.
    async fn flush(&mut self) -> Result<(), StoreError> {
        self.write(None).await
    }
}

/// What one attempt of a phase came to.
enum Attempt {
    /// Passed; `scan_ms`: how long its secret scan took.
    Passed {
        scan_ms: u64,
    },
    /// Failed with this feedback; `hopeless` when retrying cannot help
    /// (an agent error that is not retryable).
    Failed {
        feedback: String,
        hopeless: bool,
    },
    Interrupted,
}

/// Milliseconds since `start`.
fn millis(start: Instant) -> u64 {
    u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX)
}

fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_owned();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}\n[... {} more bytes]", &s[..end], s.len() - end)
}

/// Runs the pipeline of ticket `t`; `known`
/// when the journal may have events of it (else it starts from an empty
/// state, not read from the journal). With `only` (a worker's job), runs
/// that phase alone: it returns [`End::Handoff`] at the next phase to
/// run that is another.
pub(crate) async fn run_ticket(sh: &Shared, t: Ix, known: bool, only: Option<&PhaseName>) -> End {
    let st = if known {
        let id = &sh.tickets[t as usize].id;
        sh.journal
            .with_state(|s| s.tickets.get(id).cloned().unwrap_or_default())
    } else {
        TicketState::default()
    };
    let mut out = Outbox::new(&sh.journal, st);
    let end = match pipeline(sh, t, &mut out, only).await {
        Ok(end) | Err(end) => end,
    };
    // Record what an interrupted ticket did last.
    match (out.flush().await, end) {
        (Err(e), End::Done | End::Failed | End::Escalated | End::Interrupted | End::Handoff) => {
            End::Store(e)
        }
        (_, end) => end,
    }
}

async fn pipeline(
    sh: &Shared,
    t: Ix,
    out: &mut Outbox<'_>,
    only: Option<&PhaseName>,
) -> Result<End, End> {
    let plan = &sh.plan;
    let ticket = sh.tickets[t as usize].clone();
    let id = ticket.id.clone();
    let run = sh.journal.run.clone();
    let st = out.ticket();
    let (status, pending) = (st.status, st.pending_decision);
    let recorded_base = st.base.clone();
    // The graph's edges of `t` are exactly these (it is built from them);
    // the list is the plan's own, so nothing is gathered per ticket.
    let start = Instant::now();
    // Its dependencies' work, and its own so far, wherever it was done.
    let mut mine = ticket.depends_on.clone();
    mine.push(id.clone());
    if let Err(e) = sh.workspace.fetch(&run, &work_at(sh, &mine)).await {
        return fail(out, &id, format!("cannot fetch its work: {e}")).await;
    }
    let prepared = match sh.workspace.prepare(&run, &id, &ticket.depends_on).await {
        Ok(p) => p,
        Err(e) => return fail(out, &id, format!("cannot prepare its work tree: {e}")).await,
    };
    let took_ms = millis(start);
    let base = recorded_base.or(prepared.base.clone());
    // A workspace without history (one shared directory) has nothing to
    // record per ticket.
    if prepared.base.is_some() {
        out.defer(EventKind::WorkspaceReady {
            ticket: id.clone(),
            path: prepared.path.to_string_lossy().into_owned(),
            base: base.clone(),
            took_ms: Some(took_ms),
        });
    }
    let mut approved = pending == Some(Decision::Approve);

    // Interrupted mid-phase (a crash or a cancelled run). If the phase had
    // passed and made its checkpoint, only the record of it was lost: the
    // pass is recorded now and the phase not run again. Otherwise back to
    // the last checkpoint, so the phase starts again on a known tree.
    if status == orch_core::TicketStatus::Running && pending.is_none() {
        let st = out.ticket();
        if let Some(phase) = st.phase.clone().filter(|p| !st.phases_passed.contains(p)) {
            let attempt = st.attempt;
            // Trusted only if the journal shows that attempt earned it: a
            // checkpoint is made after the attempt's outcome is durable,
            // so a commit that carries the trailer without it is not
            // orch's (an agent can commit with any message).
            let earned = plan
                .phases
                .iter()
                .find(|p| p.name == phase)
                .is_some_and(|spec| attempt_earned_pass(sh, &id, spec, attempt));
            let found = if earned {
                sh.workspace
                    .find_checkpoint(&run, &id, &phase, attempt, sh.journal.claim())
                    .await
            } else {
                Ok(None)
            };
            match found {
                Ok(Some(commit)) => {
                    tracing::info!(%phase, attempt, %commit, "found the checkpoint of a pass the journal had not recorded");
                    out.defer(EventKind::PhasePassed {
                        ticket: id.clone(),
                        phase,
                        attempt,
                        checkpoint: Some(commit),
                        checkpoint_ms: None,
                    });
                }
                Ok(None) => {}
                Err(e) => return fail(out, &id, format!("cannot read its work tree: {e}")).await,
            }
        }
        let st = out.ticket();
        let made = last_checkpoint(st);
        let last = made.map(|(p, _)| p.clone());
        let target = made.map(|(_, c)| c).or(base.as_ref()).cloned();
        if let Some(commit) = target {
            // Work of a phase that did not pass is thrown away, and said
            // so; after a pass (a worker taking up the next phase) the
            // tree is only put at that pass's checkpoint.
            let st = out.ticket();
            if st
                .phase
                .as_ref()
                .is_some_and(|p| !st.phases_passed.contains(p))
            {
                out.write([EventKind::RolledBack {
                    ticket: id.clone(),
                    phase: last.clone(),
                    commit: commit.clone(),
                }])
                .await?;
            }
            if let Err(e) = sh.workspace.rollback(&run, &id, &commit).await {
                return fail(out, &id, format!("cannot roll back: {e}")).await;
            }
        }
    }

    let mut i = 0;
    let mut fresh_retry = pending == Some(Decision::Retry);
    // The last attempt failed in a way retrying cannot help.
    let mut hopeless = false;
    // The agent session of the last attempt of the current phase: a retry
    // continues it (for backends that can).
    let mut session: Option<String> = None;
    while i < plan.phases.len() {
        let phase = &plan.phases[i];
        if out.ticket().phases_passed.contains(&phase.name) {
            i += 1;
            continue;
        }
        if only.is_some_and(|p| *p != phase.name) {
            return Ok(End::Handoff);
        }
        let failed = out.ticket().failed_in_phase;
        if approved {
            approved = false;
            pass(sh, out, &id, phase, failed.max(1), 0, &prepared.path).await?;
            i += 1;
            continue;
        }
        let max = phase
            .max_attempts
            .unwrap_or(plan.policy.max_attempts)
            .max(1);
        if (failed >= max || hopeless) && !fresh_retry {
            // Spent (just now, or before a crash with no decision taken).
            hopeless = false;
            match exhausted_or_restart(sh, out, &id, phase, base.as_deref(), &prepared.path).await?
            {
                Err(end) => return Ok(end),
                // A worker's job ends at a restart: the restarted phase is
                // a job of its own (even when it is this one).
                Ok(_) if only.is_some() => return Ok(End::Handoff),
                Ok(from) => {
                    session = None;
                    fresh_retry = false;
                    i = from;
                    continue;
                }
            }
        }
        fresh_retry = false;
        let attempt = failed + 1;
        let feedback = out.ticket().feedback.clone();
        let span = tracing::info_span!("phase", phase = %phase.name, attempt);
        let outcome = attempt_phase(
            sh,
            out,
            &ticket,
            phase,
            attempt,
            &feedback,
            &prepared.path,
            &mut session,
        )
        .instrument(span)
        .await?;
        match outcome {
            Attempt::Interrupted => return Ok(End::Interrupted),
            Attempt::Passed { scan_ms } => {
                session = None;
                pass(sh, out, &id, phase, attempt, scan_ms, &prepared.path).await?;
                i += 1;
            }
            Attempt::Failed {
                feedback: fb,
                hopeless: no_hope,
            } => {
                out.write([EventKind::AttemptFailed {
                    ticket: id.clone(),
                    phase: phase.name.clone(),
                    attempt,
                    feedback: fb,
                }])
                .await?;
                hopeless = no_hope;
            }
        }
    }
    out.defer(EventKind::TicketDone { ticket: id.clone() });
    out.flush().await?;
    if let Err(e) = sh.workspace.release(&run, &id).await {
        tracing::warn!(error = %e, "could not remove the work tree");
    }
    Ok(End::Done)
}

/// The last checkpoint a ticket made: its phase and commit (a phase may
/// pass without one).
fn last_checkpoint(st: &TicketState) -> Option<(&PhaseName, &String)> {
    st.phases_passed
        .iter()
        .rev()
        .find_map(|p| st.checkpoints.get(p).map(|c| (p, c)))
}

/// Where the journal has each of `tickets`' work: its last passed
/// phase's checkpoint, else its start (tickets not started are left out).
fn work_at(sh: &Shared, tickets: &[TicketId]) -> Vec<(TicketId, String)> {
    sh.journal.with_state(|s| {
        tickets
            .iter()
            .filter_map(|t| {
                let st = s.tickets.get(t)?;
                let at = last_checkpoint(st).map(|(_, c)| c).or(st.base.as_ref())?;
                Some((t.clone(), at.clone()))
            })
            .collect()
    })
}

/// Records that the ticket failed.
async fn fail(out: &mut Outbox<'_>, id: &TicketId, reason: String) -> Result<End, End> {
    let reason = out.j.redacted(reason);
    tracing::info!(%reason, "ticket failed");
    out.write([EventKind::TicketFailed {
        ticket: id.clone(),
        reason,
    }])
    .await?;
    Ok(End::Failed)
}

/// Whether the journal shows that `attempt` of `phase` passed: its last
/// run (an attempt interrupted by a crash runs again under its number)
/// had its agent finish claiming success, and every gate of the phase,
/// each by name, pass after that agent started.
fn attempt_earned_pass(sh: &Shared, id: &TicketId, phase: &PhaseSpec, attempt: u32) -> bool {
    sh.journal.with_state(|s| {
        // The attempt's last agent (ids have a random part: by record).
        let Some(agent) = s
            .agents
            .values()
            .rfind(|a| &a.ticket == id && a.phase == phase.name && a.attempt == attempt)
        else {
            return false;
        };
        let passed: std::collections::HashSet<&str> = s
            .gate_runs
            .iter()
            .filter(|g| g.at >= agent.started_at && g.report.passed())
            .filter(|g| {
                matches!(&g.scope, GateScope::Phase { ticket, phase: p, attempt: a }
                    if ticket == id && *p == phase.name && *a == attempt)
            })
            .map(|g| g.report.gate.as_str())
            .collect();
        agent.status == orch_core::AgentStatus::Succeeded
            && phase.gates.iter().all(|g| {
                let vars = [("ticket", id.as_str()), ("phase", phase.name.as_str())];
                passed.contains(g.substitute(&vars).display_name().as_str())
            })
    })
}

/// Checkpoints a passed phase and records it; `scan_ms`: how long the
/// secret scan before it took. The checkpoint carries the ticket's
/// decision records (written again each time: a rollback or the agent may
/// have removed or changed them).
async fn pass(
    sh: &Shared,
    out: &mut Outbox<'_>,
    id: &TicketId,
    phase: &PhaseSpec,
    attempt: u32,
    scan_ms: u64,
    workdir: &std::path::Path,
) -> Result<(), End> {
    let run = &sh.journal.run;
    let mut checkpoint = None;
    let start = Instant::now();
    if phase.checkpoint {
        let records = match write_adrs(sh, id, workdir) {
            Ok(r) => r,
            Err(e) => {
                fail(out, id, format!("cannot write its decision record: {e}")).await?;
                return Err(End::Failed);
            }
        };
        // The attempt's outcome (its agent's end, its gates' reports) is
        // durable before its checkpoint is made: a checkpoint found after
        // a crash is trusted only with it (see `attempt_earned_pass`).
        out.write(std::iter::empty()).await?;
        match sh
            .workspace
            .checkpoint(run, id, &phase.name, attempt, &records, sh.journal.claim())
            .await
        {
            Ok(c) => checkpoint = c,
            Err(e) => {
                fail(out, id, format!("cannot checkpoint {}: {e}", phase.name)).await?;
                return Err(End::Failed);
            }
        }
    }
    out.defer(EventKind::PhasePassed {
        ticket: id.clone(),
        phase: phase.name.clone(),
        attempt,
        checkpoint_ms: phase.checkpoint.then(|| scan_ms + millis(start)),
        checkpoint,
    });
    Ok(())
}

/// Writes the decision records of `id`'s answered escalations into its
/// work tree, as the journal holds them (redacted with the run's
/// secrets); returns their paths.
fn write_adrs(
    sh: &Shared,
    id: &TicketId,
    workdir: &std::path::Path,
) -> Result<Vec<String>, String> {
    let adrs: Vec<(orch_core::Adr, orch_core::Timestamp)> = sh.journal.with_state(|s| {
        s.decisions
            .iter()
            .filter(|d| &d.ticket == id)
            .filter_map(|d| Some(((**d.adr.as_ref()?).clone(), d.answered_at?)))
            .collect()
    });
    let mut written = Vec::with_capacity(adrs.len());
    for (adr, at) in adrs {
        let rel = adr.path();
        let text = sh.journal.redacted(adr.to_markdown(at));
        write_plain(workdir, &rel, &text).map_err(|e| format!("{rel}: {e}"))?;
        written.push(rel);
    }
    Ok(written)
}

/// Writes `text` to `rel` (orch's own path, `/`-separated, no `..`) under
/// `root` as a plain file in plain directories: whatever the agent left
/// on the way (a link, to a file inside the tree it must not change, or a
/// file or directory where the other should be) is removed first, so the
/// write lands where it says and nowhere else.
fn write_plain(root: &std::path::Path, rel: &str, text: &str) -> std::io::Result<()> {
    let parts: Vec<&str> = rel.split('/').collect();
    let mut at = root.to_path_buf();
    for (i, part) in parts.iter().enumerate() {
        at.push(part);
        let dir = i + 1 < parts.len();
        match std::fs::symlink_metadata(&at) {
            Ok(m) if dir && m.is_dir() => continue,
            Ok(m) if !dir && m.is_file() => {}
            Ok(m) if m.is_dir() => std::fs::remove_dir_all(&at)?,
            Ok(_) => std::fs::remove_file(&at)?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        if dir {
            std::fs::create_dir(&at)?;
        }
    }
    std::fs::write(&at, text)
}

/// The phase's attempts are spent: fail or escalate (`Err` with how the
/// ticket ended), or restart from an earlier phase (`Ok` with its index).
async fn exhausted_or_restart(
    sh: &Shared,
    out: &mut Outbox<'_>,
    id: &TicketId,
    phase: &PhaseSpec,
    base: Option<&str>,
    workdir: &std::path::Path,
) -> Result<Result<usize, End>, End> {
    let plan = &sh.plan;
    let run = &sh.journal.run;
    let st = out.ticket();
    let (feedback, restarts) = (st.feedback.clone(), st.restarts);
    let last = feedback.last().map(String::as_str).unwrap_or_default();
    let restart = match (&phase.on_exhausted, &phase.restart_from) {
        (ExhaustAction::Restart, Some(from)) if restarts < phase.max_restarts.unwrap_or(1) => {
            Some(from)
        }
        _ => None,
    };
    if let Some(from) = restart {
        let from_ix = plan
            .phases
            .iter()
            .position(|p| &p.name == from)
            .unwrap_or(0);
        let file = phase
            .feedback_file
            .clone()
            .unwrap_or_else(|| "docs/feedback/{ticket}-{phase}.md".into())
            .replace("{ticket}", id.as_str())
            .replace("{phase}", phase.name.as_str());
        // Back to the last checkpoint made before `from` (a phase may pass
        // without one), else the ticket's start.
        let made = plan.phases[..from_ix]
            .iter()
            .rev()
            .find_map(|p| st.checkpoints.get(&p.name).map(|c| (&p.name, c)));
        let before = made.map(|(p, _)| p.clone());
        let target = made.map(|(_, c)| c.clone()).or(base.map(str::to_owned));
        let mut events = vec![EventKind::PhaseRestarted {
            ticket: id.clone(),
            from: from.clone(),
            feedback_file: file.clone(),
        }];
        if let Some(c) = &target {
            events.push(EventKind::RolledBack {
                ticket: id.clone(),
                phase: before.clone(),
                commit: c.clone(),
            });
        }
        // The fold of PhaseRestarted un-passes the phases from `from` on
        // and clears the feedback (kept above for the file).
        out.write(events).await?;
        if let Some(c) = &target
            && let Err(e) = sh.workspace.rollback(run, id, c).await
        {
            return fail(out, id, format!("cannot roll back: {e}"))
                .await
                .map(Err);
        }
        let text = feedback_file(id, phase, &feedback);
        // The plan's path was checked when it was loaded; the work tree's
        // links (the agent's) are checked now, when nothing runs in it.
        let path = match orch_core::resolve_within(workdir, &file) {
            Ok(p) => p,
            Err(e) => {
                return fail(out, id, format!("cannot write the feedback file: {e}"))
                    .await
                    .map(Err);
            }
        };
        let written = path
            .parent()
            .map_or(Ok(()), std::fs::create_dir_all)
            .and_then(|()| std::fs::write(&path, text));
        if let Err(e) = written {
            return fail(out, id, format!("cannot write {}: {e}", path.display()))
                .await
                .map(Err);
        }
        return Ok(Ok(from_ix));
    }
    match phase.on_exhausted {
        ExhaustAction::Fail => {
            let reason = format!(
                "{} failed {} attempts: {}",
                phase.name,
                feedback.len(),
                last.lines().next().unwrap_or_default()
            );
            fail(out, id, reason).await.map(Err)
        }
        ExhaustAction::Escalate | ExhaustAction::Restart => {
            let question = format!(
                "{id}: phase `{}` did not pass after {} attempt(s){}. Approve the work as it is, retry with a note, skip the ticket, or abort the run? The answer can be written down as a decision record (docs/adr).",
                phase.name,
                feedback.len(),
                if restarts > 0 {
                    format!(" and {restarts} restart(s)")
                } else {
                    String::new()
                }
            );
            tracing::info!(%question, "escalated");
            out.write([EventKind::Escalated {
                ticket: id.clone(),
                phase: phase.name.clone(),
                question,
                context: truncate(last, MAX_CONTEXT),
                options: vec![
                    Decision::Approve,
                    Decision::Retry,
                    Decision::Skip,
                    Decision::Abort,
                ],
            }])
            .await?;
            Ok(Err(End::Escalated))
        }
    }
}

fn feedback_file(id: &TicketId, phase: &PhaseSpec, feedback: &[String]) -> String {
    let mut s = format!(
        "# Feedback for {id}: `{}` failed {} time(s)\n\nThe pipeline restarts from an earlier phase. Read this first and plan around it.\n\n",
        phase.name,
        feedback.len()
    );
    for (n, f) in feedback.iter().enumerate() {
        s.push_str(&format!("## Attempt {}\n\n{}\n\n", n + 1, f.trim()));
    }
    s
}

/// One attempt: the agent (continuing `session` if there is one; it is
/// set to the agent's), then the gates.
#[allow(clippy::too_many_arguments)]
async fn attempt_phase(
    sh: &Shared,
    out: &mut Outbox<'_>,
    ticket: &Arc<orch_core::Ticket>,
    phase: &PhaseSpec,
    attempt: u32,
    feedback: &[String],
    workdir: &Arc<std::path::Path>,
    session: &mut Option<String>,
) -> Result<Attempt, End> {
    let plan = &sh.plan;
    let j = &sh.journal;
    let id = &ticket.id;
    let role: RoleName = plan
        .role_for(ticket, phase)
        .cloned()
        .unwrap_or_else(|| "default".parse().expect("valid role"));
    let agent_id = AgentId::for_attempt(id, &phase.name, attempt);
    // What the gates judge the agent's work by ("changed since it
    // started"); without gates, no clock to read.
    let since = (!phase.gates.is_empty()).then(SystemTime::now);
    out.write([EventKind::AgentStarted {
        ticket: id.clone(),
        phase: phase.name.clone(),
        attempt,
        agent: agent_id.clone(),
        role: role.clone(),
        backend: sh.backend(&role),
        worker: j.worker(),
    }])
    .await?;
    let task = AgentTask {
        run: j.run.clone(),
        agent_id: agent_id.clone(),
        ticket: ticket.clone(),
        phase: phase.name.clone(),
        role,
        prompt: super::prompt(plan, ticket, phase, feedback),
        workdir: workdir.clone(),
        feedback: feedback.to_vec(),
        attempt,
        resume: session.take(),
    };
    let result = sh.agent.run(task, &sh.agent_ctx).await;
    let (finished, verdict) = match result {
        Ok(AgentOutcome {
            success,
            summary,
            usage,
            session_id,
            ..
        }) => {
            session.clone_from(&session_id);
            let verdict = if success {
                None
            } else {
                Some(Attempt::Failed {
                    feedback: format!("The agent reported that it did not finish: {summary}"),
                    hopeless: false,
                })
            };
            (
                EventKind::AgentFinished {
                    ticket: id.clone(),
                    agent: agent_id,
                    success,
                    summary,
                    usage,
                    session_id,
                    error: None,
                },
                verdict,
            )
        }
        Err(e) => {
            // Only the run's own cancellation interrupts; an agent that
            // gives up on its own has failed the attempt.
            let verdict = if sh.work.is_cancelled() {
                Attempt::Interrupted
            } else {
                Attempt::Failed {
                    feedback: format!("The agent could not finish ({:?}): {}", e.kind, e.message),
                    hopeless: !e.is_retryable(),
                }
            };
            (
                EventKind::AgentFinished {
                    ticket: id.clone(),
                    agent: agent_id,
                    success: false,
                    summary: e.message.clone(),
                    usage: e.usage,
                    session_id: None,
                    error: Some(e.kind),
                },
                Some(verdict),
            )
        }
    };
    out.defer(finished);
    if let Some(v) = verdict {
        return Ok(v);
    }
    // Before this phase's own gates: paths earlier phases froze.
    if let Some(failed) = check_frozen(sh, out, id, phase, attempt).await? {
        return Ok(failed);
    }
    if phase.gates.is_empty() {
        return pass_if_clean(sh, out, id, phase, attempt).await;
    }
    let vars = [("ticket", id.as_str()), ("phase", phase.name.as_str())];
    let scope = GateScope::Phase {
        ticket: id.clone(),
        phase: phase.name.clone(),
        attempt,
    };
    let ctx = GateContext {
        workdir: workdir.clone(),
        since: since.unwrap_or_else(SystemTime::now),
        timeout: Duration::from_secs(plan.policy.timeouts.gate_secs),
        cancel: sh.work.clone(),
    };
    let (reports, unfixable) = match run_gates(sh, out, &phase.gates, &vars, &scope, &ctx).await? {
        Some(r) => r,
        None => return Ok(Attempt::Interrupted),
    };
    let failing: Vec<String> = reports
        .iter()
        .filter(|r| !r.passed())
        .map(GateReport::feedback)
        .collect();
    Ok(if failing.is_empty() {
        pass_if_clean(sh, out, id, phase, attempt).await?
    } else {
        Attempt::Failed {
            feedback: failing.join("\n"),
            hopeless: unfixable,
        }
    })
}

/// An attempt whose gates passed passes, unless frozen paths changed
/// while the gates ran (a gate runs the agent's code: a build script can
/// rewrite a test and leave it so), or what it would commit holds a
/// secret (only phases that checkpoint commit anything).
async fn pass_if_clean(
    sh: &Shared,
    out: &mut Outbox<'_>,
    id: &TicketId,
    phase: &PhaseSpec,
    attempt: u32,
) -> Result<Attempt, End> {
    if !phase.gates.is_empty()
        && let Some(failed) = check_frozen(sh, out, id, phase, attempt).await?
    {
        return Ok(failed);
    }
    if !phase.checkpoint {
        return Ok(Attempt::Passed { scan_ms: 0 });
    }
    let start = Instant::now();
    let failed = check_secrets(sh, out, id, phase, attempt).await?;
    Ok(failed.unwrap_or(Attempt::Passed {
        scan_ms: millis(start),
    }))
}

/// The paths earlier phases of the plan froze (`PhaseSpec::freeze`),
/// compared with each such phase's checkpoint: changed, added or removed
/// by this attempt's agent, they fail the attempt before its gates run,
/// recorded as a failing gate report ("frozen paths") with the files and
/// the diff, which the agent is shown. `None` when nothing frozen moved.
async fn check_frozen(
    sh: &Shared,
    out: &mut Outbox<'_>,
    id: &TicketId,
    phase: &PhaseSpec,
    attempt: u32,
) -> Result<Option<Attempt>, End> {
    let plan = &sh.plan;
    let here = plan
        .phases
        .iter()
        .position(|p| p.name == phase.name)
        .unwrap_or(0);
    let mut moved: Vec<String> = Vec::new();
    let mut diffs = String::new();
    // The ticket's decision records are orch's, written before each
    // checkpoint (over whatever the agent did to them): not the agent's
    // change to a frozen path.
    let records: Vec<String> = sh.journal.with_state(|s| {
        s.decisions
            .iter()
            .filter(|d| &d.ticket == id)
            .filter_map(|d| Some(d.adr.as_ref()?.path()))
            .collect()
    });
    for q in plan.phases[..here].iter().filter(|q| !q.freeze.is_empty()) {
        let Some(commit) = out.ticket().checkpoints.get(&q.name).cloned() else {
            continue;
        };
        match sh
            .workspace
            .changed_since(&sh.journal.run, id, &commit, &q.freeze)
            .await
        {
            Ok(c) if c.files.iter().all(|f| records.contains(f)) => {}
            Ok(c) => {
                moved.extend(
                    c.files
                        .iter()
                        .filter(|f| !records.contains(f))
                        .map(|f| format!("{f} (frozen by {})", q.name)),
                );
                diffs.push_str(&c.diff);
            }
            Err(e) => moved.push(format!(
                "the paths {} froze could not be compared: {e}",
                q.name
            )),
        }
    }
    if moved.is_empty() {
        return Ok(None);
    }
    let reason = format!(
        "changed what earlier phases froze (they are not this phase's to change; undo it): {}",
        moved.join(", ")
    );
    let excerpt = truncate(&diffs, MAX_CONTEXT);
    failed_check(out, id, phase, attempt, "frozen paths", reason, excerpt)
        .await
        .map(Some)
}

/// What this attempt would commit, scanned for secrets before its
/// checkpoint (`Workspace::secrets`): a finding fails the attempt, as the
/// failing gate "no secrets committed" naming where (never what), so the
/// agent removes it and nothing with it is committed.
async fn check_secrets(
    sh: &Shared,
    out: &mut Outbox<'_>,
    id: &TicketId,
    phase: &PhaseSpec,
    attempt: u32,
) -> Result<Option<Attempt>, End> {
    let found = match sh.workspace.secrets(&sh.journal.run, id).await {
        Ok(f) if f.is_empty() => return Ok(None),
        Ok(f) => f,
        Err(e) => vec![format!("the work tree could not be scanned: {e}")],
    };
    let reason = format!(
        "the work would commit secrets; remove them (from the branch's history too, if a commit holds one) and keep them in the environment: {}",
        found.join(", ")
    );
    failed_check(
        out,
        id,
        phase,
        attempt,
        "no secrets committed",
        reason,
        String::new(),
    )
    .await
    .map(Some)
}

/// Records a check the engine makes itself (not a plan's gate) as a
/// failing gate report of this attempt, and fails the attempt with it.
async fn failed_check(
    out: &mut Outbox<'_>,
    id: &TicketId,
    phase: &PhaseSpec,
    attempt: u32,
    gate: &str,
    reason: String,
    excerpt: String,
) -> Result<Attempt, End> {
    let scope = GateScope::Phase {
        ticket: id.clone(),
        phase: phase.name.clone(),
        attempt,
    };
    out.write([EventKind::GateStarted {
        scope: scope.clone(),
        gate: gate.to_owned(),
    }])
    .await?;
    let report = GateReport {
        gate: gate.to_owned(),
        status: GateStatus::Failed,
        reason,
        evidence: Default::default(),
        duration_ms: 0,
        excerpt,
        children: Vec::new(),
    };
    let feedback = report.feedback();
    out.defer(EventKind::GateFinished {
        scope,
        report: Box::new(report),
    });
    Ok(Attempt::Failed {
        feedback,
        hopeless: false,
    })
}

/// Runs `specs` one after another, each written ahead; `None` when
/// cancelled. A gate that cannot run counts as failed, with the reason;
/// the flag says one could not run for a reason another attempt cannot
/// fix (its configuration: the `Gate` contract's non-retryable `Err`).
async fn run_gates(
    sh: &Shared,
    out: &mut Outbox<'_>,
    specs: &[orch_core::GateSpec],
    vars: &[(&str, &str)],
    scope: &GateScope,
    ctx: &GateContext,
) -> Result<Option<(Vec<GateReport>, bool)>, End> {
    let mut reports = Vec::with_capacity(specs.len());
    let mut unfixable = false;
    for spec in specs {
        let spec = spec.substitute(vars);
        let name = spec.display_name();
        out.write([EventKind::GateStarted {
            scope: scope.clone(),
            gate: name.clone(),
        }])
        .await?;
        let started = std::time::Instant::now();
        let built = match &sh.gates {
            Some(f) => f(&spec),
            None => Err(orch_core::GateError {
                kind: orch_core::GateErrorKind::Config,
                gate: name.clone(),
                message: "no gate factory".into(),
            }),
        };
        let result = match built {
            Ok(g) => check_on_own_task(g, ctx.clone(), &name).await,
            Err(e) => Err(e),
        };
        let report = match result {
            Ok(r) => r,
            Err(_) if ctx.cancel.is_cancelled() => {
                return Ok(None);
            }
            Err(e) => {
                unfixable |= !e.is_retryable();
                GateReport {
                    gate: name,
                    status: GateStatus::Failed,
                    reason: format!("the gate could not run: {}", e.message),
                    evidence: Default::default(),
                    duration_ms: started.elapsed().as_millis() as u64,
                    excerpt: String::new(),
                    children: Vec::new(),
                }
            }
        };
        out.defer(EventKind::GateFinished {
            scope: scope.clone(),
            report: Box::new(report.clone()),
        });
        reports.push(report);
    }
    Ok(Some((reports, unfixable)))
}

/// Runs a gate's check on a task of its own. The dispatcher polls every
/// ticket's pipeline on one task, and a gate may work hard between its
/// awaits (parsing a large coverage or test report): on a task of its own
/// it holds up no other ticket (on a multi-thread runtime). A panic in the
/// check goes on here, as if it had happened inline (it fails the ticket
/// with its message); dropping this future stops the check.
async fn check_on_own_task(
    gate: Arc<dyn orch_core::Gate>,
    ctx: GateContext,
    name: &str,
) -> Result<GateReport, orch_core::GateError> {
    /// Stops the check if the pipeline is dropped (the run is over).
    struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);
    impl<T> Drop for AbortOnDrop<T> {
        fn drop(&mut self) {
            self.0.abort();
        }
    }
    let check = async move { gate.check(&ctx).await }.in_current_span();
    let mut task = AbortOnDrop(tokio::spawn(check));
    match (&mut task.0).await {
        Ok(result) => result,
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Err(e) => Err(orch_core::GateError {
            kind: orch_core::GateErrorKind::Cancelled,
            gate: name.to_owned(),
            message: format!("the check's task ended early: {e}"),
        }),
    }
}

/// After `batch` merged: its tickets whose dependents have all started
/// (made their work trees from them) are needed by name no more, so the
/// workspace may drop what kept them apart (their branches) now rather
/// than when the run completes, which tidies the rest.
async fn prune(sh: &Shared, batch: BatchId, tickets: &[TicketId]) {
    let done: Vec<TicketId> = sh.journal.with_state(|s| {
        tickets
            .iter()
            .filter(|t| {
                sh.graph.index_of(t.as_str()).is_some_and(|ix| {
                    sh.graph.dependents(ix).iter().all(|&d| {
                        s.tickets
                            .get(sh.graph.id(d))
                            .is_some_and(|st| st.base.is_some())
                    })
                })
            })
            .cloned()
            .collect()
    });
    if done.is_empty() {
        return;
    }
    if let Err(e) = sh.workspace.finish(&sh.journal.run, &[(batch, done)]).await {
        tracing::warn!(error = %e, "could not drop the merged tickets' branches");
    }
}

/// After `batch`'s merge (or on finding it merged): when the journal has
/// it merged, its branch is set to the recorded merge, here and on the
/// shared remote ([`Workspace::publish`](orch_core::Workspace::publish)),
/// and its tickets no longer needed by name are pruned. The driver's (or
/// coordinator's) step, never a worker's: only a recorded merge names
/// the batch. A failure leaves the branch behind and is logged; a resumed
/// run sets it again.
pub(crate) async fn merged(sh: &Shared, batch: BatchId, tickets: &[TicketId]) {
    let commit = sh.journal.with_state(|s| {
        s.batches
            .get(&batch)
            .filter(|b| b.status == orch_core::BatchStatus::Merged)
            .and_then(|b| b.commit.clone())
    });
    let Some(commit) = commit else { return };
    if !commit.is_empty()
        && let Err(e) = sh.workspace.publish(&sh.journal.run, &batch, &commit).await
    {
        tracing::error!(%batch, %commit, error = %e, "the batch's branch does not name its merge");
        return;
    }
    prune(sh, batch, tickets).await;
}

/// Merges a batch and runs the batch gates on the result (the branch is
/// set once the merge is recorded: [`merged`]).
pub(crate) async fn merge_batch(
    sh: &Shared,
    batch: BatchId,
    tickets: Vec<TicketId>,
) -> Result<(), StoreError> {
    let j = &sh.journal;
    let mut out = Outbox::for_merge(j);
    out.write([EventKind::MergeStarted {
        batch: batch.clone(),
        worker: j.worker(),
    }])
    .await?;
    let fail = |reason: String| EventKind::BatchFailed {
        batch: batch.clone(),
        reason,
    };
    let start = Instant::now();
    // What workers on other machines made.
    if let Err(e) = sh.workspace.fetch(&j.run, &work_at(sh, &tickets)).await {
        return out
            .write([fail(format!("cannot fetch its tickets' work: {e}"))])
            .await;
    }
    let merged = match sh
        .workspace
        .merge(&j.run, &batch, &tickets, sh.journal.claim())
        .await
    {
        Err(e) => return out.write([fail(format!("cannot merge: {e}"))]).await,
        Ok(Merged::Conflict { ticket, files }) => {
            let why = format!("{ticket} conflicts in {}", files.join(", "));
            return out.write([fail(why)]).await;
        }
        Ok(Merged::Clean { commit, path }) => (commit, path),
    };
    let merge_ms = millis(start);
    let ctx = GateContext {
        workdir: merged.1.clone(),
        since: SystemTime::now(),
        timeout: Duration::from_secs(sh.plan.policy.timeouts.gate_secs),
        cancel: sh.work.clone(),
    };
    let scope = GateScope::Batch {
        batch: batch.clone(),
    };
    let vars = [("batch", batch.as_str())];
    // The plan's batch gates, then the batch's own.
    let gates: Vec<orch_core::GateSpec> = sh
        .plan
        .batch_gates
        .iter()
        .chain(
            sh.plan
                .batches
                .iter()
                .filter(|b| b.id == batch)
                .flat_map(|b| &b.gates),
        )
        .cloned()
        .collect();
    let reports = match run_gates(sh, &mut out, &gates, &vars, &scope, &ctx).await {
        Ok(Some((r, _))) => r,
        Ok(None) => return out.flush().await, // cancelled: merged again on resume
        Err(End::Store(e)) => return Err(e),
        Err(_) => return Ok(()),
    };
    let failing: Vec<String> = reports
        .iter()
        .filter(|r| !r.passed())
        .map(|r| format!("{}: {}", r.gate, r.reason))
        .collect();
    if failing.is_empty() {
        out.write([EventKind::BatchMerged {
            batch: batch.clone(),
            commit: merged.0.unwrap_or_default(),
            merge_ms: Some(merge_ms),
        }])
        .await?;
        Ok(())
    } else {
        out.write([fail(format!(
            "batch gates failed, not merged: {}",
            failing.join("; ")
        ))])
        .await
    }
}
