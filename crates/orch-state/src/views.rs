//! The state files a person reads — `ORCHESTRATOR_STATE.md`,
//! `AGENT_REGISTRY.md`, `TEST_RESULTS.md`, `DECISION_QUEUE.md` and one JSON
//! file per ticket — rendered from a [`RunState`] and written atomically.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::io::Write as _;
use std::path::Path;

use orch_core::{
    AgentStatus, BatchId, BatchStatus, Decision, GateScope, Plan, RunState, RunStatus, TestCounts,
    TicketId, TicketStatus, Timestamp,
};

/// The rendered files: name (relative to the state directory) → contents.
pub type Views = BTreeMap<String, String>;

fn md_cell(s: &str) -> String {
    s.replace('|', "\\|").replace('\n', " ")
}

fn ts(t: Option<Timestamp>) -> String {
    t.map_or_else(|| "—".into(), |t| t.to_string())
}

/// The plan and the run's test results, looked up by id once per render: a
/// summary covers every ticket, and looking each one up in the plan's list
/// (or every gate run for each ticket) made a render quadratic in the
/// plan's size.
struct Index<'a> {
    plan: &'a Plan,
    titles: HashMap<&'a str, &'a str>,
    /// Each batch's tickets, in id order.
    members: HashMap<&'a BatchId, Vec<&'a TicketId>>,
    /// The latest test counts of each ticket's gates, and each batch's.
    latest_by_ticket: HashMap<&'a TicketId, TestCounts>,
    latest_by_batch: HashMap<&'a BatchId, TestCounts>,
}

impl<'a> Index<'a> {
    fn new(state: &'a RunState, plan: &'a Plan) -> Self {
        let mut members: HashMap<&BatchId, Vec<&TicketId>> = HashMap::new();
        for (t, b) in plan.batch_of() {
            members.entry(b).or_default().push(t);
        }
        for m in members.values_mut() {
            m.sort_unstable();
        }
        let (mut latest_by_ticket, mut latest_by_batch) = (HashMap::new(), HashMap::new());
        for g in &state.gate_runs {
            if let Some(c) = g.report.evidence.tests {
                match &g.scope {
                    GateScope::Phase { ticket, .. } => latest_by_ticket.insert(ticket, c),
                    GateScope::Batch { batch } => latest_by_batch.insert(batch, c),
                };
            }
        }
        Index {
            plan,
            titles: plan
                .tickets
                .iter()
                .map(|t| (t.id.as_str(), t.title.as_str()))
                .collect(),
            members,
            latest_by_ticket,
            latest_by_batch,
        }
    }

    fn members(&self, batch: &BatchId) -> &[&'a TicketId] {
        self.members.get(batch).map_or(&[], Vec::as_slice)
    }

    /// Where a batch stands, in the team's words: planning, in progress,
    /// testing, merging, complete (or failed).
    fn batch_phase(&self, state: &RunState, batch: &orch_core::Batch) -> &'static str {
        if let Some(b) = state.batches.get(&batch.id) {
            match b.status {
                BatchStatus::Merged => return "complete",
                BatchStatus::Failed => return "failed",
                BatchStatus::Open if b.gates_total > 0 => return "testing",
                BatchStatus::Open => {}
            }
        }
        let statuses: Vec<TicketStatus> = self
            .members(&batch.id)
            .iter()
            .map(|t| {
                state
                    .tickets
                    .get(*t)
                    .map_or(TicketStatus::Pending, |s| s.status)
            })
            .collect();
        if !statuses.is_empty() && statuses.iter().all(|s| *s == TicketStatus::Done) {
            "merging"
        } else if statuses
            .iter()
            .any(|s| *s != TicketStatus::Pending && *s != TicketStatus::Ready)
        {
            "in progress"
        } else {
            "planning"
        }
    }

    /// Test counts of a batch: its latest batch-scope test gate, else the
    /// sum of its tickets' latest.
    fn batch_tests(&self, batch: &BatchId) -> Option<(u64, u64)> {
        if let Some(c) = self.latest_by_batch.get(batch) {
            return Some((c.passed, c.ran()));
        }
        let mut sum = None;
        for t in self.members(batch) {
            if let Some(c) = self.latest_by_ticket.get(t) {
                let (p, n) = sum.unwrap_or((0, 0));
                sum = Some((p + c.passed, n + c.ran()));
            }
        }
        sum
    }
}

/// Renders every view of `state`. With the plan, views also list tickets
/// that have not started and group work by batch.
pub fn render(state: &RunState, plan: Option<&Plan>) -> Views {
    let mut out = render_summaries(state, plan);
    for (id, t) in &state.tickets {
        out.insert(ticket_file(id), render_ticket(id, t));
    }
    out
}

/// The four summary files alone (each covers the whole run), without a
/// file per ticket: what `orch status` prints from.
pub fn render_summaries(state: &RunState, plan: Option<&Plan>) -> Views {
    let mut out = Views::new();
    out.insert(
        "ORCHESTRATOR_STATE.md".into(),
        orchestrator_state(state, plan),
    );
    out.insert("AGENT_REGISTRY.md".into(), agent_registry(state));
    out.insert("TEST_RESULTS.md".into(), test_results(state));
    out.insert("DECISION_QUEUE.md".into(), decision_queue(state));
    for (id, b) in &state.batches {
        if b.status != orch_core::BatchStatus::Open {
            out.insert(go_no_go_file(id), go_no_go(state, plan, id, b));
        }
    }
    if let Some(run) = &state.run {
        for d in &state.decisions {
            if let (Some(adr), Some(at)) = (&d.adr, d.answered_at) {
                out.insert(adr_file(run, adr), adr.to_markdown(at));
            }
        }
    }
    out
}

/// The state directory's copy of a decision record of `run`:
/// `adr/<run>/ADR-NNN-slug.md` (a state directory holds every run, and
/// each numbers its records on its own).
pub fn adr_file(run: &orch_core::RunId, adr: &orch_core::Adr) -> String {
    let path = adr.path();
    let name = path.rsplit('/').next().unwrap_or(&path);
    format!("adr/{run}/{name}")
}

/// A batch's call once it is merged or failed: `GO` or `NO-GO`.
fn call(b: &orch_core::BatchState) -> &'static str {
    if b.status == orch_core::BatchStatus::Merged {
        "GO"
    } else {
        "NO-GO"
    }
}

fn go_no_go_file(batch: &BatchId) -> String {
    format!("go-no-go/{batch}.md")
}

/// A batch's go/no-go record: the call its gates made when its tickets
/// were merged, the evidence, and for a NO-GO what must be fixed.
fn go_no_go(
    state: &RunState,
    plan: Option<&Plan>,
    id: &BatchId,
    b: &orch_core::BatchState,
) -> String {
    let go = b.status == orch_core::BatchStatus::Merged;
    let mut s = format!("# Batch {id}: {}\n\n", call(b));
    if let Some(batch) = plan.and_then(|p| p.batches.iter().find(|x| &x.id == id)) {
        let _ = writeln!(s, "{}\n", batch.title);
        s.push_str("| ticket | status | failed attempts | tests |\n|---|---|---|---|\n");
        for t in &batch.tickets {
            let st = state.tickets.get(t);
            let _ = writeln!(
                s,
                "| {t} | {} | {} | {} |",
                st.map_or_else(
                    || "pending".to_owned(),
                    |x| format!("{:?}", x.status).to_lowercase()
                ),
                st.map_or(0, |x| x.metrics.failed_attempts),
                st.and_then(|x| x.metrics.tests_ran)
                    .map_or_else(|| "-".to_owned(), |n| n.to_string())
            );
        }
        s.push('\n');
    }
    match (&b.commit, go) {
        (Some(c), true) => {
            let _ = writeln!(
                s,
                "Merged as `{c}`; {}/{} batch gates passed.\n",
                b.gates_passed, b.gates_total
            );
        }
        _ => {
            let _ = writeln!(
                s,
                "Not merged: {}\n",
                b.reason.as_deref().unwrap_or("no reason recorded")
            );
        }
    }
    s.push_str("## Gate evidence\n\n");
    let runs: Vec<_> = state
        .gate_runs
        .iter()
        .filter(|g| matches!(&g.scope, orch_core::GateScope::Batch { batch } if batch == id))
        .collect();
    if runs.is_empty() {
        s.push_str("No batch gate ran.\n");
    } else {
        s.push_str("| gate | result | tests passed/run | line coverage | reason | at |\n|---|---|---|---|---|---|\n");
        for g in &runs {
            let e = &g.report.evidence;
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {} | {} |",
                md_cell(&g.report.gate),
                if g.report.passed() {
                    "passed"
                } else {
                    "FAILED"
                },
                e.tests
                    .map_or_else(|| "-".to_owned(), |t| format!("{}/{}", t.passed, t.ran())),
                e.line_coverage
                    .map_or_else(|| "-".to_owned(), |c| format!("{c:.1}%")),
                md_cell(&g.report.reason),
                g.at
            );
        }
    }
    if !go {
        s.push_str("\n## Required fixes\n\n");
        let failed: Vec<_> = runs.iter().filter(|g| !g.report.passed()).collect();
        if failed.is_empty() {
            let _ = writeln!(
                s,
                "- {}",
                b.reason.as_deref().unwrap_or("see the reason above")
            );
        }
        for g in failed {
            for line in g.report.feedback().lines().filter(|l| !l.trim().is_empty()) {
                let _ = writeln!(s, "- {}", line.trim_start_matches("- "));
            }
        }
    }
    s.push_str("\n## Residual risks accepted\n\n");
    let risks: Vec<_> = state
        .risks
        .iter()
        .filter(|r| r.batch.as_ref().is_none_or(|b| b == id))
        .collect();
    // A person approving a ticket's work as it is accepts what its gates
    // found.
    let members: Vec<&TicketId> = plan
        .and_then(|p| p.batches.iter().find(|x| &x.id == id))
        .map(|x| x.tickets.iter().collect())
        .unwrap_or_default();
    let approved: Vec<_> = state
        .decisions
        .iter()
        .filter(|d| d.answer == Some(Decision::Approve) && members.contains(&&d.ticket))
        .collect();
    if risks.is_empty() && approved.is_empty() {
        s.push_str("None recorded (`orch accept --risk NOTE --batch BATCH`).\n");
    }
    for r in risks {
        let scope = if r.batch.is_some() {
            ""
        } else {
            " (whole run)"
        };
        let _ = writeln!(s, "- {}{scope} — accepted {}", md_cell(&r.note), r.at);
    }
    for d in approved {
        let _ = writeln!(
            s,
            "- {}: `{}` approved as it was, with what its gates found — approved {}{}",
            d.ticket,
            d.phase,
            ts(d.answered_at),
            d.adr
                .as_ref()
                .map(|a| format!(" (ADR-{:03})", a.number))
                .unwrap_or_default()
        );
    }
    s
}

fn ticket_file(id: &TicketId) -> String {
    format!("tickets/{id}.json")
}

fn render_ticket(id: &TicketId, t: &orch_core::TicketState) -> String {
    let mut v = serde_json::to_value(t).unwrap_or_default();
    if let Some(o) = v.as_object_mut() {
        o.insert("id".into(), id.as_str().into());
    }
    serde_json::to_string_pretty(&v).unwrap_or_default() + "\n"
}

fn orchestrator_state(state: &RunState, plan: Option<&Plan>) -> String {
    let mut s = String::from("# Orchestrator state\n\n");
    let run = state.run.as_ref().map_or("—", |r| r.as_str());
    let status = match state.status {
        RunStatus::NotStarted => "not started".to_owned(),
        RunStatus::Running => "running".to_owned(),
        RunStatus::Finished(o) => format!("finished ({})", format!("{o:?}").to_lowercase()),
    };
    let _ = writeln!(s, "- Run: `{run}` (plan `{}`)", state.plan);
    let _ = writeln!(s, "- Status: {status}");
    let _ = writeln!(
        s,
        "- Started: {}; last update: {}",
        ts(state.started_at),
        ts(state.updated_at)
    );
    let _ = writeln!(
        s,
        "- Usage: {} tokens, ${:.4}{}",
        state.usage.total_tokens(),
        state.usage.cost_usd,
        if state.budget_exhausted {
            " — budget exhausted, no new work is dispatched"
        } else {
            ""
        }
    );
    work_times(&mut s, state);
    let index = plan.map(|p| Index::new(state, p));
    if let Some(ix) = index.as_ref().filter(|ix| !ix.plan.batches.is_empty()) {
        let plan = ix.plan;
        let current = plan
            .batches
            .iter()
            .find(|b| !matches!(ix.batch_phase(state, b), "complete"));
        let _ = writeln!(
            s,
            "- Current batch: {}",
            current.map_or_else(
                || "none (all complete)".to_owned(),
                |b| format!("{} {} — {}", b.id, b.title, ix.batch_phase(state, b))
            )
        );
        s.push_str("\n## Batches\n\n| batch | title | status | tests |\n|---|---|---|---|\n");
        for b in &plan.batches {
            let tests = ix.batch_tests(&b.id).map_or_else(
                || "—".to_owned(),
                |(p, n)| format!("{}: {p}/{n} passed", b.id),
            );
            let _ = writeln!(
                s,
                "| {} | {} | {} | {tests} |",
                b.id,
                md_cell(&b.title),
                ix.batch_phase(state, b)
            );
        }
    }
    let sorted = state.tickets_by_id();
    let by = |st: TicketStatus| -> Vec<(&TicketId, &orch_core::TicketState)> {
        sorted
            .iter()
            .filter(|(_, t)| t.status == st)
            .copied()
            .collect()
    };
    s.push_str("\n## Completed\n\n");
    let done = by(TicketStatus::Done);
    if done.is_empty() {
        s.push_str("None yet.\n");
    }
    for (id, t) in done {
        let title = index
            .as_ref()
            .and_then(|ix| ix.titles.get(id.as_str()).copied())
            .unwrap_or("");
        let w = t.metrics.work;
        let _ = writeln!(
            s,
            "- {id} {title} — {} phase(s), {} failed attempt(s), finished {}; prepare {} ms, agent {} ms, gates {} ms, checkpoint {} ms",
            t.phases_passed.len(),
            t.metrics.failed_attempts,
            ts(t.finished_at),
            w.prepare_ms,
            w.agent_ms,
            w.gates_ms,
            w.checkpoint_ms,
        );
    }
    s.push_str("\n## In progress\n\n");
    let running = by(TicketStatus::Running);
    if running.is_empty() {
        s.push_str("Nothing running.\n");
    }
    for (id, t) in running {
        let _ = writeln!(
            s,
            "- {id} — phase {} attempt {}, agent `{}`",
            t.phase.as_ref().map_or("—", |p| p.as_str()),
            t.attempt,
            t.agent.as_ref().map_or("—", |a| a.as_str())
        );
    }
    s.push_str("\n## Failed, blocked or waiting\n\n");
    let mut any = false;
    for st in [
        TicketStatus::Failed,
        TicketStatus::Blocked,
        TicketStatus::AwaitingDecision,
        TicketStatus::Skipped,
    ] {
        for (id, t) in by(st) {
            any = true;
            let label = match st {
                TicketStatus::Failed => "failed",
                TicketStatus::Blocked => "blocked",
                TicketStatus::AwaitingDecision => "waiting for a decision",
                _ => "skipped",
            };
            let _ = writeln!(
                s,
                "- {id} — {label}: {}",
                t.reason.as_deref().unwrap_or("—")
            );
        }
    }
    if !any {
        s.push_str("None.\n");
    }
    s.push_str("\n## Next actions\n\n");
    let mut next = Vec::new();
    for d in state.open_decisions() {
        let opts: Vec<String> = d
            .options
            .iter()
            .map(|o| format!("--{}", format!("{o:?}").to_lowercase()))
            .collect();
        next.push(format!(
            "Decide on {}: `orch decide {} {}` (see DECISION_QUEUE.md)",
            d.ticket,
            d.ticket,
            opts.join("|")
        ));
    }
    for (id, _) in by(TicketStatus::Ready) {
        next.push(format!("Start {id} (ready)"));
    }
    if let Some(plan) = plan {
        let pending: Vec<&str> = plan
            .tickets
            .iter()
            .filter(|t| {
                state
                    .tickets
                    .get(&t.id)
                    .is_none_or(|s| s.status == TicketStatus::Pending)
            })
            .map(|t| t.id.as_str())
            .collect();
        if !pending.is_empty() {
            next.push(format!("Waiting on dependencies: {}", pending.join(", ")));
        }
    }
    if next.is_empty() {
        next.push(match state.status {
            RunStatus::Finished(_) => "None: the run has finished.".into(),
            _ => "Resume the run: `orch resume`".into(),
        });
    }
    for n in next {
        let _ = writeln!(s, "- {n}");
    }
    s
}

/// Where the run's time went, by kind of work: the total and the mean
/// over the tickets that had a work tree prepared; orch's own overhead is
/// what is neither agent nor gate.
fn work_times(s: &mut String, state: &RunState) {
    let (mut sum, mut n) = (orch_core::WorkTimes::default(), 0u64);
    for t in state.tickets.values() {
        if t.workdir.is_some() {
            sum = sum.plus(t.metrics.work);
            n += 1;
        }
    }
    let (mut merge_ms, mut merges) = (0u64, 0u64);
    for b in state.batches.values() {
        if let Some(ms) = b.merge_ms {
            merge_ms += ms;
            merges += 1;
        }
    }
    if n == 0 && merges == 0 {
        return;
    }
    let secs = |ms: u64| format!("{:.1} s", ms as f64 / 1000.0);
    let mean = |ms: u64, n: u64| format!("{} ms", ms.checked_div(n).unwrap_or(0));
    let _ = writeln!(
        s,
        "\n## Where the time went\n\n| work | total | mean |\n|---|---|---|"
    );
    for (what, ms) in [
        (
            "preparing work trees (slot or worktree, dependencies merged)",
            sum.prepare_ms,
        ),
        ("agents", sum.agent_ms),
        ("gates", sum.gates_ms),
        ("secret scans and checkpoints", sum.checkpoint_ms),
    ] {
        let _ = writeln!(
            s,
            "| {what} | {} | {} a ticket ({n}) |",
            secs(ms),
            mean(ms, n)
        );
    }
    if merges > 0 {
        let _ = writeln!(
            s,
            "| batch merges | {} | {} a batch ({merges}) |",
            secs(merge_ms),
            mean(merge_ms, merges)
        );
    }
}

fn agent_registry(state: &RunState) -> String {
    let mut s = String::from(
        "# Agent registry\n\n| agent | ticket | phase | attempt | role | backend | status | started | last update | tokens | cost |\n|---|---|---|---|---|---|---|---|---|---|---|\n",
    );
    for (id, a) in state.agents_by_id() {
        let status = match (a.status, a.error) {
            (AgentStatus::Errored, Some(k)) => {
                format!("errored ({})", format!("{k:?}").to_lowercase())
            }
            (st, _) => format!("{st:?}").to_lowercase(),
        };
        let _ = writeln!(
            s,
            "| {id} | {} | {} | {} | {} | {} | {status} | {} | {} | {} | ${:.4} |",
            a.ticket,
            a.phase,
            a.attempt,
            a.role,
            md_cell(&a.backend),
            a.started_at,
            a.updated_at,
            a.usage.total_tokens(),
            a.usage.cost_usd
        );
    }
    s
}

fn test_results(state: &RunState) -> String {
    let mut s = String::from(
        "# Test results\n\nEvery gate run, oldest first. A failure later passed by the same gate on the same ticket is marked fixed.\n\n| time | scope | gate | result | tests | reason |\n|---|---|---|---|---|---|\n",
    );
    let fixed = fixed_later(state);
    for (i, g) in state.gate_runs.iter().enumerate() {
        let scope = match &g.scope {
            GateScope::Phase {
                ticket,
                phase,
                attempt,
            } => format!("{ticket} {phase} #{attempt}"),
            GateScope::Batch { batch } => format!("batch {batch}"),
        };
        let tests = g.report.evidence.tests.map_or_else(
            || "—".to_owned(),
            |c| {
                format!(
                    "{}/{} passed{}",
                    c.passed,
                    c.ran(),
                    if c.skipped > 0 {
                        format!(", {} skipped", c.skipped)
                    } else {
                        String::new()
                    }
                )
            },
        );
        let result = if g.report.passed() {
            "passed".to_owned()
        } else {
            match fixed[i] {
                Some(GateScope::Phase { attempt, .. }) => {
                    format!("FAILED (fixed on attempt {attempt})")
                }
                Some(GateScope::Batch { .. }) => "FAILED (fixed later)".to_owned(),
                None => "FAILED".to_owned(),
            }
        };
        let _ = writeln!(
            s,
            "| {} | {scope} | {} | {result} | {tests} | {} |",
            g.at,
            md_cell(&g.report.gate),
            md_cell(&g.report.reason)
        );
    }
    s
}

/// For each failed gate run, the first later run of the same gate on the
/// same ticket and phase (or the same batch) that passed: one pass from
/// the end, not a scan of the later runs per failure.
fn fixed_later(state: &RunState) -> Vec<Option<&GateScope>> {
    #[derive(PartialEq, Eq, Hash)]
    enum Key<'a> {
        Phase(&'a TicketId, &'a orch_core::PhaseName, &'a str),
        Batch(&'a BatchId, &'a str),
    }
    let mut next_pass: HashMap<Key<'_>, &GateScope> = HashMap::new();
    let mut fixed = vec![None; state.gate_runs.len()];
    for (i, g) in state.gate_runs.iter().enumerate().rev() {
        let gate = g.report.gate.as_str();
        let key = match &g.scope {
            GateScope::Phase { ticket, phase, .. } => Key::Phase(ticket, phase, gate),
            GateScope::Batch { batch } => Key::Batch(batch, gate),
        };
        if g.report.passed() {
            next_pass.insert(key, &g.scope);
        } else {
            fixed[i] = next_pass.get(&key).copied();
        }
    }
    fixed
}

fn decision_queue(state: &RunState) -> String {
    let mut s = String::from("# Decision queue\n\n");
    let open: Vec<_> = state.open_decisions().collect();
    s.push_str("## Open\n\n");
    if open.is_empty() {
        s.push_str("No open questions.\n");
    }
    for d in open {
        let _ = writeln!(s, "### {} ({}) — asked {}\n", d.ticket, d.phase, d.asked_at);
        let _ = writeln!(s, "**Question:** {}\n", d.question);
        let _ = writeln!(s, "**Context:**\n\n{}\n", d.context.trim_end());
        s.push_str("**Options:**\n\n");
        for o in &d.options {
            let (flag, what) = match o {
                Decision::Approve => ("--approve", "accept the work as it is and continue"),
                Decision::Retry => (
                    "--retry NOTE",
                    "try the phase again; NOTE is shown to the agent",
                ),
                Decision::Skip => ("--skip", "skip the ticket; its dependents are blocked"),
                Decision::Abort => ("--abort", "stop the whole run"),
            };
            let _ = writeln!(s, "- `orch decide {} {flag}` — {what}", d.ticket);
        }
        s.push_str("\nAdd `--adr TITLE` to write the answer down as a decision record (`docs/adr/ADR-NNN-<slug>.md`).\n\n");
    }
    let slips: Vec<_> = state
        .slips
        .iter()
        .filter(|s| s.accepted.is_none())
        .collect();
    if !slips.is_empty() {
        s.push_str("## Open, not blocking\n\n");
        for slip in slips {
            let chain: Vec<&str> = slip.path.iter().map(TicketId::as_str).collect();
            let _ = writeln!(
                s,
                "### Schedule — raised {}\n\nThe projected finish ({}) is {} past the critical path's estimate ({}), more than `policy.escalate_delay` allows. The chain left: {}.\n\nNothing waits for this. Accept the delay with `orch accept --delay NOTE` (what changes, e.g. the new date), or stop the run.\n",
                slip.at,
                slip.projected_finish,
                orch_core::format_minutes(slip.delay_minutes),
                slip.planned_finish,
                if chain.is_empty() {
                    "none".into()
                } else {
                    chain.join(" → ")
                }
            );
        }
    }
    let calls: Vec<_> = state
        .batches
        .iter()
        .filter(|(_, b)| b.status != orch_core::BatchStatus::Open)
        .collect();
    if !calls.is_empty() {
        s.push_str("## Batch go/no-go records\n\n");
        for (id, b) in calls {
            let _ = writeln!(s, "- [{id}: {}]({})", call(b), go_no_go_file(id));
        }
        s.push('\n');
    }
    let answered: Vec<_> = state
        .decisions
        .iter()
        .filter(|d| d.answer.is_some())
        .collect();
    let accepted: Vec<_> = state
        .slips
        .iter()
        .filter_map(|s| Some((s, s.accepted.as_ref()?)))
        .collect();
    if !accepted.is_empty() {
        s.push_str(
            "## Delays accepted\n\n| raised | delay | accepted | note |\n|---|---|---|---|\n",
        );
        for (slip, (at, note)) in accepted {
            let _ = writeln!(
                s,
                "| {} | {} | {at} | {} |",
                slip.at,
                orch_core::format_minutes(slip.delay_minutes),
                md_cell(note)
            );
        }
        s.push('\n');
    }
    if !answered.is_empty() {
        s.push_str("## Answered\n\n| ticket | question | answer | note | record | answered |\n|---|---|---|---|---|---|\n");
        for d in answered {
            let record = match (&d.adr, &state.run) {
                (Some(a), Some(run)) => {
                    let committed = match d.answer {
                        Some(Decision::Approve | Decision::Retry) => {
                            format!(" → `{}`", a.path())
                        }
                        _ => " (not committed)".into(),
                    };
                    format!("[ADR-{:03}]({}){committed}", a.number, adr_file(run, a))
                }
                _ => String::new(),
            };
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {record} | {} |",
                d.ticket,
                md_cell(&d.question),
                d.answer
                    .map(|a| format!("{a:?}").to_lowercase())
                    .unwrap_or_default(),
                md_cell(d.note.as_deref().unwrap_or("")),
                ts(d.answered_at)
            );
        }
    }
    s
}

/// Writes `contents` to `path` atomically: a temporary file in the same
/// directory, fsync, rename over the target, fsync the directory. A reader
/// sees the old file or the new one, never half of one, and once this
/// returns the new one survives a machine crash.
///
/// # Errors
/// The I/O error, with the path.
pub fn write_atomic(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    replace(path, contents, true)
}

/// Writes `contents` over `path` through a temporary file renamed over
/// it (a reader never sees half a file), fsyncing both first if `durable`.
///
/// The state files are written without: they are rendered from the
/// journal, which is durable, and two fsyncs per file made a large run
/// wait on the disk for every ticket's file (129 s instead of 0.5 s for
/// 100,000 tickets). A view a machine crash left empty or old is
/// rendered again by the next write (a resumed run's first write renders
/// every file).
fn replace(path: &Path, contents: &[u8], durable: bool) -> std::io::Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let named =
        |e: std::io::Error| std::io::Error::new(e.kind(), format!("{}: {e}", path.display()));
    std::fs::create_dir_all(dir).map_err(named)?;
    let name = path
        .file_name()
        .map_or_else(|| "state".into(), |n| n.to_string_lossy().into_owned());
    let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    let res = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(contents)?;
        if durable {
            f.sync_all()?;
        }
        std::fs::rename(&tmp, path)?;
        if durable {
            std::fs::File::open(dir)?.sync_all()?;
        }
        Ok(())
    })();
    if res.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    res.map_err(named)
}

/// Renders and writes every view into `dir`. Files are rewritten only when
/// their contents changed.
///
/// # Errors
/// The first I/O error, naming the file.
pub fn write_views(dir: &Path, state: &RunState, plan: Option<&Plan>) -> std::io::Result<()> {
    write_files(dir, render(state, plan))
}

/// [`write_views`] for a state in which only `tickets` changed since the
/// views were last written: the summary files and those tickets' files.
/// A run's observer writes its views this way, so a write costs the
/// summaries plus what changed, not a file per ticket of the plan.
///
/// # Errors
/// The first I/O error, naming the file.
pub fn write_views_changed<'a>(
    dir: &Path,
    state: &RunState,
    plan: Option<&Plan>,
    tickets: impl IntoIterator<Item = &'a TicketId>,
) -> std::io::Result<()> {
    let mut views = render_summaries(state, plan);
    for id in tickets {
        if let Some(t) = state.tickets.get(id) {
            views.insert(ticket_file(id), render_ticket(id, t));
        }
    }
    write_files(dir, views)
}

pub(crate) fn write_files(dir: &Path, views: Views) -> std::io::Result<()> {
    for (name, contents) in views {
        let path = dir.join(&name);
        if std::fs::read(&path).is_ok_and(|old| old == contents.as_bytes()) {
            continue;
        }
        replace(&path, contents.as_bytes(), false)?;
    }
    Ok(())
}
