//! The HTML of `orch serve`'s pages, written out as strings: every value
//! from the journal or the plan goes through [`esc`] (text and attributes)
//! or [`url`] (a path segment).

use std::collections::{HashMap, HashSet};
use std::fmt::Write;

use orch_core::{
    BatchId, DecisionItem, Event, EventKind, GateReport, GateStatus, Plan, RunId, RunState,
    RunStatus, TicketId, TicketState, TicketStatus, Timestamp,
};

/// Text made safe for HTML text and attribute values: the escaping the
/// redactor also knows secrets in.
pub(super) fn esc(s: &str) -> String {
    orch_core::secrets::html_escape(s)
}

/// A path segment: anything but unreserved characters percent-encoded.
pub(super) fn url(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(char::from(b));
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

/// Every ticket status, in the order the pages list them.
pub(super) const STATUSES: [TicketStatus; 8] = [
    TicketStatus::Running,
    TicketStatus::AwaitingDecision,
    TicketStatus::Failed,
    TicketStatus::Blocked,
    TicketStatus::Ready,
    TicketStatus::Pending,
    TicketStatus::Skipped,
    TicketStatus::Done,
];

/// A status as the pages, their styles and the event stream name it.
pub(super) fn status_name(s: TicketStatus) -> &'static str {
    match s {
        TicketStatus::Pending => "pending",
        TicketStatus::Ready => "ready",
        TicketStatus::Running => "running",
        TicketStatus::AwaitingDecision => "awaiting_decision",
        TicketStatus::Done => "done",
        TicketStatus::Failed => "failed",
        TicketStatus::Blocked => "blocked",
        TicketStatus::Skipped => "skipped",
    }
}

/// A status for a person.
fn status_label(s: TicketStatus) -> &'static str {
    match s {
        TicketStatus::AwaitingDecision => "waiting for a decision",
        s => status_name(s),
    }
}

/// Where a run stands, in words.
pub(super) fn run_status(s: RunStatus) -> String {
    match s {
        RunStatus::NotStarted => "not started".into(),
        RunStatus::Running => "running".into(),
        RunStatus::Finished(o) => format!("{o:?}").to_lowercase(),
    }
}

/// Milliseconds as a person reads a duration.
fn took(ms: u64) -> String {
    let s = ms / 1000;
    match s {
        0 => format!("{ms} ms"),
        1..60 => format!("{s} s"),
        60..3600 => format!("{}m {:02}s", s / 60, s % 60),
        _ => format!("{}h {:02}m", s / 3600, s / 60 % 60),
    }
}

/// One ticket as the event stream sends it.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub(super) struct TicketView {
    pub(super) id: TicketId,
    status: &'static str,
    label: String,
}

impl TicketView {
    pub(super) fn new(id: &TicketId, t: &TicketState) -> TicketView {
        TicketView {
            id: id.clone(),
            status: status_name(t.status),
            label: ticket_label(t),
        }
    }
}

/// "running: implement, attempt 2", "failed: why".
fn ticket_label(t: &TicketState) -> String {
    if let Some(d) = t.pending_decision {
        return format!("answered: {d:?}, acted on when the run goes on");
    }
    let mut s = status_label(t.status).to_owned();
    match (t.status, &t.phase) {
        (TicketStatus::Running, Some(p)) => {
            let _ = write!(s, ": {p}, attempt {}", t.attempt.max(1));
        }
        (TicketStatus::Failed | TicketStatus::Blocked, _) => {
            if let Some(r) = &t.reason {
                let _ = write!(s, ": {}", first_line(r));
            }
        }
        _ => {}
    }
    s
}

fn first_line(s: &str) -> &str {
    let line = s.lines().next().unwrap_or("");
    match line.char_indices().nth(160) {
        Some((i, _)) => &line[..i],
        None => line,
    }
}

/// The run's figures, as the page shows them and the stream updates them.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub(super) struct Summary {
    status: String,
    counts: Vec<(&'static str, usize)>,
    tokens: u64,
    cost: String,
    pub(super) decisions: usize,
    events: u64,
    /// The go/no-go call, when the plan is known.
    call: Option<&'static str>,
    /// When the run started, and when it stopped (ms since the epoch): the
    /// page counts the time between, or up to now.
    started: Option<u64>,
    finished: Option<u64>,
}

/// The figures of `state` (tickets of `plan` not started yet count as
/// pending); the call is `report`'s.
pub(super) fn summary(
    state: &RunState,
    plan: Option<&Plan>,
    report: Option<&orch_graph::status::StatusReport>,
) -> Summary {
    let mut counts: Vec<(&'static str, usize)> = STATUSES
        .iter()
        .map(|&s| (status_name(s), state.count(s)))
        .collect();
    if let Some(plan) = plan {
        let unseen = plan
            .tickets
            .iter()
            .filter(|t| !state.tickets.contains_key(&t.id))
            .count();
        if let Some(p) = counts.iter_mut().find(|(n, _)| *n == "pending") {
            p.1 += unseen;
        }
    }
    Summary {
        status: run_status(state.status),
        counts,
        tokens: state.usage.total_tokens(),
        cost: format!("${:.4}", state.usage.cost_usd),
        decisions: state.open_decisions().count(),
        events: state.events,
        call: report.map(|r| r.colour.as_str()),
        started: state.started_at.map(|t| t.0),
        finished: match state.status {
            RunStatus::Finished(_) => state.updated_at.map(|t| t.0),
            _ => None,
        },
    }
}

/// The status report of `state` now, with its go/no-go call.
pub(super) fn report(
    plan: &Plan,
    state: &RunState,
) -> Result<orch_graph::status::StatusReport, orch_graph::GraphError> {
    orch_graph::status::StatusReport::new(plan, state, Timestamp::now(), None)
}

/// Where a plan's tickets are drawn: one column per wave (a ticket's
/// column is one past its deepest dependency's), the tickets of one batch
/// together in each column under the batch's name.
#[derive(Clone)]
pub(super) struct Layout {
    at: HashMap<TicketId, (u32, u32)>,
    bands: Vec<(BatchId, u32, u32, u32)>,
    edges: String,
    critical_edges: String,
    critical: HashSet<TicketId>,
    width: u32,
    height: u32,
}

const W: u32 = 132;
const H: u32 = 24;
const COL: u32 = W + 56;
const ROW: u32 = H + 8;
const BAND: u32 = 18;

impl Layout {
    pub(super) fn new(plan: &Plan) -> Result<Layout, crate::Error> {
        let report = orch_graph::analyze(plan, 1)?;
        let batch_of = plan.batch_of();
        let batch_rank: HashMap<&BatchId, usize> = plan
            .batches
            .iter()
            .enumerate()
            .map(|(i, b)| (&b.id, i))
            .collect();
        let order: HashMap<&TicketId, usize> = plan
            .tickets
            .iter()
            .enumerate()
            .map(|(i, t)| (&t.id, i))
            .collect();
        let mut at = HashMap::new();
        let mut bands = Vec::new();
        let mut height = 0;
        for (col, wave) in report.waves.iter().enumerate() {
            let col = u32::try_from(col).unwrap_or(u32::MAX);
            let mut wave: Vec<&TicketId> = wave.iter().collect();
            let key = |t: &TicketId| {
                let b = batch_of.get(t).copied();
                (
                    b.and_then(|b| batch_rank.get(b)).map_or(usize::MAX, |r| *r),
                    order.get(t).copied().unwrap_or(usize::MAX),
                )
            };
            wave.sort_by_key(|t| key(t));
            let mut y = 0;
            let mut current: Option<Option<&BatchId>> = None;
            for t in wave {
                let b = batch_of.get(t).copied();
                if current != Some(b) {
                    if let Some(b) = b {
                        y += BAND;
                        bands.push((b.clone(), col, y, 0));
                    }
                    current = Some(b);
                }
                at.insert(t.clone(), (col * COL + 8, y + 4));
                y += ROW;
                if let (Some(_), Some(band)) = (b, bands.last_mut()) {
                    band.3 = y;
                }
            }
            height = height.max(y);
        }
        let critical: HashSet<TicketId> = report.critical_path.iter().cloned().collect();
        let on_path: HashSet<(&TicketId, &TicketId)> = report
            .critical_path
            .windows(2)
            .map(|w| (&w[0], &w[1]))
            .collect();
        let (mut edges, mut critical_edges) = (String::new(), String::new());
        for t in &plan.tickets {
            let Some(&(x2, y2)) = at.get(&t.id) else {
                continue;
            };
            for d in &t.depends_on {
                let Some(&(x1, y1)) = at.get(d) else { continue };
                let (x1, y1, y2) = (x1 + W, y1 + H / 2, y2 + H / 2);
                let mid = (x1 + x2) / 2;
                let into = if on_path.contains(&(d, &t.id)) {
                    &mut critical_edges
                } else {
                    &mut edges
                };
                let _ = write!(into, "M{x1} {y1}C{mid} {y1} {mid} {y2} {x2} {y2}");
            }
        }
        let columns = u32::try_from(report.waves.len()).unwrap_or(u32::MAX);
        Ok(Layout {
            at,
            bands,
            edges,
            critical_edges,
            critical,
            width: columns * COL + 16,
            height: height + 16,
        })
    }

    /// The graph as SVG, each ticket coloured by its status in `state`.
    fn svg(&self, run: &RunId, plan: &Plan, state: &RunState) -> String {
        let mut s = String::with_capacity(self.at.len() * 260 + self.edges.len() + 512);
        let _ = write!(
            s,
            r#"<svg class="dag" viewBox="0 0 {w} {h}" width="{w}" height="{h}" role="group" aria-labelledby="dag-title"><title id="dag-title">The plan's {n} tickets by dependency, left to right; the critical path is outlined. The table below lists the same.</title>"#,
            w = self.width,
            h = self.height,
            n = plan.tickets.len()
        );
        for (b, col, y0, y1) in &self.bands {
            let x = col * COL;
            let _ = write!(
                s,
                r#"<g class="band"><rect x="{x}" y="{top}" width="{bw}" height="{bh}" rx="6"/><text x="{tx}" y="{ty}">{name}</text></g>"#,
                top = y0 - BAND + 2,
                bw = W + 16,
                bh = y1 - y0 + BAND,
                tx = x + 8,
                ty = y0 - 4,
                name = esc(b.as_str())
            );
        }
        let _ = write!(
            s,
            r#"<path class="edges" d="{}"/><path class="edges critical" d="{}"/>"#,
            self.edges, self.critical_edges
        );
        for t in &plan.tickets {
            let Some(&(x, y)) = self.at.get(&t.id) else {
                continue;
            };
            let (status, label) = match state.tickets.get(&t.id) {
                Some(st) => (st.status, ticket_label(st)),
                None => (TicketStatus::Pending, "pending".into()),
            };
            let crit = if self.critical.contains(&t.id) {
                " critical"
            } else {
                ""
            };
            let id = t.id.as_str();
            let short: String = id.chars().take(16).collect();
            let _ = write!(
                s,
                r#"<a href="/runs/{r}/tickets/{u}" id="t-{e}" class="node{crit}" data-status="{st}" data-name="{e}: {title}"><title>{e}: {title} ({label})</title><rect x="{x}" y="{y}" width="{W}" height="{H}" rx="4"/><text x="{tx}" y="{ty}">{short}</text></a>"#,
                r = url(run.as_str()),
                u = url(id),
                e = esc(id),
                st = status_name(status),
                title = esc(&t.title),
                label = esc(&label),
                tx = x + 6,
                ty = y + 16,
                short = esc(&short),
            );
        }
        s.push_str("</svg>");
        s
    }
}

/// The page around `body`.
fn shell(title: &str, attrs: &str, body: &str) -> String {
    format!(
        r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>{} · orch</title><link rel="stylesheet" href="/assets/app.css"><script src="/assets/app.js" defer></script></head>
<body{attrs}><header><nav aria-label="Site"><a href="/">orch · runs</a></nav></header><main>
{body}
</main></body></html>
"#,
        esc(title)
    )
}

/// `/`: the runs.
pub(super) fn index(runs: &[(RunId, RunState)]) -> String {
    let mut b = String::from("<h1>Runs</h1>");
    if runs.is_empty() {
        b.push_str("<p>No run in this journal yet: start one with <code>orch run PLAN</code>.</p>");
    } else {
        b.push_str(
            "<table><caption>Every run in the journal, newest first</caption><thead><tr><th scope=\"col\">Run</th><th scope=\"col\">Plan</th><th scope=\"col\">Status</th><th scope=\"col\">Tickets done</th><th scope=\"col\">Started</th><th scope=\"col\">Last event</th></tr></thead><tbody>",
        );
        for (id, s) in runs {
            let _ = write!(
                b,
                "<tr><td><a href=\"/runs/{}\">{}</a></td><td>{}</td><td>{}</td><td>{} of {}</td><td>{}</td><td>{}</td></tr>",
                url(id.as_str()),
                esc(id.as_str()),
                esc(&s.plan),
                run_status(s.status),
                s.count(TicketStatus::Done),
                s.tickets.len(),
                s.started_at.map(|t| t.to_string()).unwrap_or_default(),
                s.updated_at.map(|t| t.to_string()).unwrap_or_default(),
            );
        }
        b.push_str("</tbody></table>");
    }
    shell("Runs", "", &b)
}

/// `/runs/{run}`: the whole run.
pub(super) fn run(
    id: &RunId,
    state: &RunState,
    plan: Option<(&Plan, &Layout, bool)>,
    allowed: bool,
) -> String {
    let r = url(id.as_str());
    let report = plan.map(|(p, ..)| report(p, state));
    let sum = summary(
        state,
        plan.map(|p| p.0),
        report.as_ref().and_then(|r| r.as_ref().ok()),
    );
    let mut b = String::new();
    let _ = write!(
        b,
        r#"<h1>Run <code>{}</code> <span id="run-status" class="run-status">{}</span></h1><p>Plan <strong>{}</strong>, <span id="events">{}</span> events. <span id="live" class="live" aria-live="polite"></span></p>"#,
        esc(id.as_str()),
        esc(&sum.status),
        esc(&state.plan),
        state.events
    );
    // The call and the figures.
    b.push_str(r#"<section aria-labelledby="summary-h"><h2 id="summary-h">Where it stands</h2>"#);
    if let Some((_, _, false)) = plan {
        b.push_str(r#"<p class="locked">The plan file changed since this run started: the graph and the call are drawn from the file as it is now.</p>"#);
    }
    if let Some(report) = report {
        match report {
            Ok(rep) => {
                let _ = write!(
                    b,
                    r#"<p class="call">Go/no-go: <strong id="call" data-call="{C}">{C}</strong></p>"#,
                    C = rep.colour.as_str()
                );
                if !rep.fired.is_empty() {
                    b.push_str("<ul class=\"fired\">");
                    for f in &rep.fired {
                        let _ = write!(
                            b,
                            "<li><strong>{}</strong> {}</li>",
                            f.colour.as_str(),
                            esc(&f.detail)
                        );
                    }
                    b.push_str("</ul>");
                }
                let sch = &rep.schedule;
                let end = sum.finished.unwrap_or(Timestamp::now().0);
                let elapsed = sum
                    .started
                    .map(|s| took(end.saturating_sub(s)))
                    .unwrap_or_else(|| "not started".into());
                let _ = write!(
                    b,
                    "<p>Elapsed <span id=\"elapsed\">{elapsed}</span>; estimated {} of work, {} on the critical path; projected to finish {} ({}).</p>",
                    orch_core::format_minutes(sch.estimated_minutes),
                    orch_core::format_minutes(sch.critical_path_minutes),
                    sch.projected_finish,
                    if sch.delay_ms > 0 {
                        format!("{} late", took(sch.delay_ms.unsigned_abs()))
                    } else {
                        "on time".into()
                    }
                );
            }
            Err(e) => {
                let _ = write!(b, "<p>No go/no-go call: {}</p>", esc(&e.to_string()));
            }
        }
    } else {
        b.push_str("<p>The plan this run was started with is not known here (start <code>orch serve</code> with <code>--plan FILE</code>): tickets are listed, not drawn.</p>");
    }
    b.push_str("<dl class=\"counts\">");
    for (name, n) in &sum.counts {
        let _ = write!(
            b,
            r#"<div data-status="{name}"><dt>{}</dt><dd data-count="{name}">{n}</dd></div>"#,
            name.replace('_', " ")
        );
    }
    let _ = write!(
        b,
        r#"</dl><p>Cost <span id="cost">{}</span>, <span id="tokens">{}</span> tokens.</p></section>"#,
        sum.cost, sum.tokens
    );
    b.push_str(&decisions(id, state, allowed));
    if let Some((plan, layout, _)) = plan {
        let _ = write!(
            b,
            r#"<section aria-labelledby="graph-h"><h2 id="graph-h">Plan</h2><div class="legend">{}</div><div class="scroll">{}</div></section>"#,
            STATUSES
                .iter()
                .map(|&s| format!(
                    r#"<span data-status="{}">{}</span>"#,
                    status_name(s),
                    status_label(s)
                ))
                .collect::<String>(),
            layout.svg(id, plan, state)
        );
    }
    // Every ticket, also for those who do not see the graph.
    b.push_str(r#"<section aria-labelledby="tickets-h"><h2 id="tickets-h">Tickets</h2><table><thead><tr><th scope="col">Ticket</th><th scope="col">Title</th><th scope="col">Batch</th><th scope="col">Status</th></tr></thead><tbody>"#);
    let batch_of = plan.map(|p| p.0.batch_of()).unwrap_or_default();
    let mut rows: Vec<(&TicketId, Option<&str>, Option<&TicketState>)> = match plan {
        Some((p, ..)) => p
            .tickets
            .iter()
            .map(|t| (&t.id, Some(t.title.as_str()), state.tickets.get(&t.id)))
            .collect(),
        None => Vec::new(),
    };
    // Tickets the journal has and the plan does not (a changed plan).
    let planned: HashSet<&TicketId> = rows.iter().map(|(id, ..)| *id).collect();
    for (tid, t) in state.tickets_by_id() {
        if !planned.contains(tid) {
            rows.push((tid, None, Some(t)));
        }
    }
    for (tid, title, t) in rows {
        let (status, label) = t.map_or((TicketStatus::Pending, "pending".into()), |t| {
            (t.status, ticket_label(t))
        });
        let _ = write!(
            b,
            r#"<tr id="row-{e}" data-status="{s}"><th scope="row"><a href="/runs/{r}/tickets/{u}">{e}</a></th><td>{title}</td><td>{batch}</td><td id="st-{e}">{label}</td></tr>"#,
            e = esc(tid.as_str()),
            u = url(tid.as_str()),
            s = status_name(status),
            title = esc(title.unwrap_or("")),
            batch = batch_of
                .get(tid)
                .map(|b| esc(b.as_str()))
                .unwrap_or_default(),
            label = esc(&label),
        );
    }
    b.push_str("</tbody></table></section>");
    let attrs = format!(
        r#" data-events="/runs/{r}/events" data-decisions="{}" data-decisions-url="/runs/{r}/decisions""#,
        sum.decisions
    );
    shell(&format!("Run {id}"), &attrs, &b)
}

/// `/runs/{run}/decisions`: the queue alone.
pub(super) fn decisions_page(id: &RunId, state: &RunState, allowed: bool) -> String {
    let b = format!(
        r#"<p><a href="/runs/{}">Run {}</a></p>{}"#,
        url(id.as_str()),
        esc(id.as_str()),
        decisions(id, state, allowed)
    );
    shell(&format!("Decisions of {id}"), "", &b)
}

/// The decision queue: each open question with a form to answer it, and
/// what was answered.
fn decisions(id: &RunId, state: &RunState, allowed: bool) -> String {
    let open: Vec<&DecisionItem> = state.open_decisions().collect();
    let mut b = format!(
        r#"<section id="decisions" aria-labelledby="decisions-h"><h2 id="decisions-h">Decisions: {} waiting</h2>"#,
        open.len()
    );
    if !open.is_empty() && !allowed {
        b.push_str(r#"<p class="locked">Answering needs the token: open the <code>/login?token=…</code> link <code>orch serve</code> printed, in this browser.</p>"#);
    }
    for d in &open {
        b.push_str(&decision_form(id, d, allowed));
    }
    let answered: Vec<&DecisionItem> = state
        .decisions
        .iter()
        .filter(|d| d.answer.is_some())
        .collect();
    if !answered.is_empty() {
        let _ = write!(
            b,
            "<details><summary>Answered: {}</summary><ul>",
            answered.len()
        );
        for d in answered {
            let _ = write!(
                b,
                "<li><a href=\"/runs/{}/tickets/{}\">{}</a> ({}): {}{}</li>",
                url(id.as_str()),
                url(d.ticket.as_str()),
                esc(d.ticket.as_str()),
                esc(&d.question),
                d.answer.map(|a| format!("{a:?}")).unwrap_or_default(),
                d.note
                    .as_deref()
                    .map(|n| format!(" — {}", esc(n)))
                    .unwrap_or_default()
            );
        }
        b.push_str("</ul></details>");
    }
    b.push_str("</section>");
    b
}

/// One open question, with a form that posts the answer.
fn decision_form(id: &RunId, d: &DecisionItem, allowed: bool) -> String {
    let t = esc(d.ticket.as_str());
    let mut b = format!(
        r#"<article class="decision" id="decide-{t}"><h3><a href="/runs/{r}/tickets/{u}">{t}</a> in {phase}: {q}</h3><pre class="context">{ctx}</pre><form method="post" action="/runs/{r}/tickets/{u}/decision"><fieldset{dis}><legend>Answer {t}</legend>"#,
        r = url(id.as_str()),
        u = url(d.ticket.as_str()),
        phase = esc(d.phase.as_str()),
        q = esc(&d.question),
        ctx = esc(&d.context),
        dis = if allowed { "" } else { " disabled" },
    );
    for o in &d.options {
        let (value, what) = match o {
            orch_core::Decision::Approve => {
                ("approve", "Approve: accept the work as it is and go on")
            }
            orch_core::Decision::Retry => ("retry", "Retry the phase, showing the agent the note"),
            orch_core::Decision::Skip => ("skip", "Skip the ticket (its dependents are blocked)"),
            orch_core::Decision::Abort => ("abort", "Abort the whole run"),
        };
        let _ = write!(
            b,
            r#"<label><input type="radio" name="answer" value="{value}" required> {what}</label>"#
        );
    }
    let _ = write!(
        b,
        r#"<label for="note-{t}">Note (a retry's feedback for the agent)</label><textarea id="note-{t}" name="note" rows="2"></textarea><button type="submit">Send the answer</button></fieldset></form></article>"#
    );
    b
}

/// `/runs/{run}/tickets/{ticket}`: a ticket's whole story.
pub(super) fn ticket(
    id: &RunId,
    state: &RunState,
    ticket: &TicketId,
    plan: Option<&Plan>,
    history: &[Event],
    transcripts: bool,
    allowed: bool,
) -> String {
    let r = url(id.as_str());
    let st = state.tickets.get(ticket).cloned().unwrap_or_default();
    let spec = plan.and_then(|p| p.ticket(ticket.as_str()));
    let e = esc(ticket.as_str());
    let mut b = format!(
        r#"<p><a href="/runs/{r}">Run {}</a></p><h1>Ticket <code>{e}</code> <span id="ticket-status" data-status="{}">{}</span></h1>"#,
        esc(id.as_str()),
        status_name(st.status),
        esc(&ticket_label(&st)),
    );
    if let Some(t) = spec {
        let _ = write!(b, "<p class=\"title\">{}</p>", esc(&t.title));
        if !t.depends_on.is_empty() {
            b.push_str("<p>Depends on ");
            let links: Vec<String> = t
                .depends_on
                .iter()
                .map(|d| {
                    format!(
                        r#"<a href="/runs/{r}/tickets/{}">{}</a>"#,
                        url(d.as_str()),
                        esc(d.as_str())
                    )
                })
                .collect();
            b.push_str(&links.join(", "));
            b.push_str("</p>");
        }
    }
    // Where its work is.
    b.push_str(
        r#"<section aria-labelledby="where-h"><h2 id="where-h">Branch and checkpoints</h2><dl>"#,
    );
    let _ = write!(
        b,
        "<dt>Branch</dt><dd><code>{}</code></dd>",
        esc(&orch_state::git::Repo::ticket_branch(id, ticket))
    );
    if let Some(w) = &st.workdir {
        let _ = write!(b, "<dt>Work tree</dt><dd><code>{}</code></dd>", esc(w));
    }
    if let Some(base) = &st.base {
        let _ = write!(
            b,
            "<dt>Started from</dt><dd><code>{}</code></dd>",
            esc(base)
        );
    }
    b.push_str("</dl>");
    if !st.checkpoints.is_empty() {
        b.push_str("<table><thead><tr><th scope=\"col\">Phase passed</th><th scope=\"col\">Checkpoint</th></tr></thead><tbody>");
        for (phase, commit) in st.checkpoints.iter() {
            let _ = write!(
                b,
                "<tr><td>{}</td><td><code>{}</code></td></tr>",
                esc(phase.as_str()),
                esc(commit)
            );
        }
        b.push_str("</tbody></table>");
    }
    b.push_str("</section>");
    if let Some(d) = state.open_decisions().find(|d| &d.ticket == ticket) {
        b.push_str(
            r#"<section aria-labelledby="decide-h"><h2 id="decide-h">Waiting for a decision</h2>"#,
        );
        if !allowed {
            b.push_str(r#"<p class="locked">Answering needs the token: open the <code>/login?token=…</code> link <code>orch serve</code> printed, in this browser.</p>"#);
        }
        b.push_str(&decision_form(id, d, allowed));
        b.push_str("</section>");
    }
    if !st.feedback.is_empty() {
        b.push_str(r#"<section aria-labelledby="next-h"><h2 id="next-h">Feedback for the next attempt</h2>"#);
        for f in &st.feedback {
            let _ = write!(b, "<pre class=\"feedback\">{}</pre>", esc(f));
        }
        b.push_str("</section>");
    }
    // Its phases and attempts, as they happened.
    b.push_str(
        r#"<section aria-labelledby="attempts-h"><h2 id="attempts-h">Phases and attempts</h2>"#,
    );
    let mut open_attempt: Option<(String, u32)> = None;
    let mut heading = |b: &mut String, phase: &str, attempt: u32| {
        let key = (phase.to_owned(), attempt);
        if open_attempt.as_ref() != Some(&key) {
            if open_attempt.is_some() {
                b.push_str("</ol></article>");
            }
            let _ = write!(
                b,
                r#"<article class="attempt"><h3>{}, attempt {attempt}</h3><ol>"#,
                esc(phase)
            );
            open_attempt = Some(key);
        }
    };
    let mut agents: HashMap<&orch_core::AgentId, (&str, u32)> = HashMap::new();
    for ev in history {
        let at = ev.at;
        match &ev.kind {
            EventKind::AgentStarted {
                phase,
                attempt,
                agent,
                role,
                backend,
                worker,
                ..
            } => {
                heading(&mut b, phase.as_str(), *attempt);
                agents.insert(agent, (phase.as_str(), *attempt));
                let _ = write!(
                    b,
                    "<li><time>{at}</time> Agent <code>{}</code> ({}, {}){} started.</li>",
                    esc(agent.as_str()),
                    esc(role.as_str()),
                    esc(backend),
                    worker
                        .as_ref()
                        .map(|w| format!(" on {} (pid {})", esc(&w.host), w.pid))
                        .unwrap_or_default()
                );
            }
            EventKind::AgentFinished {
                agent,
                success,
                summary,
                usage,
                ..
            } => {
                if let Some((p, a)) = agents.get(agent) {
                    heading(&mut b, p, *a);
                }
                let link = if transcripts {
                    format!(
                        r#" <a href="/runs/{r}/transcripts/{}">Transcript</a>"#,
                        url(agent.as_str())
                    )
                } else {
                    String::new()
                };
                let _ = write!(
                    b,
                    "<li><time>{at}</time> Agent {} ({} tokens, ${:.4}).{link}<pre class=\"summary\">{}</pre></li>",
                    if *success {
                        "finished, claiming success"
                    } else {
                        "failed"
                    },
                    usage.total_tokens(),
                    usage.cost_usd,
                    esc(summary)
                );
            }
            EventKind::GateFinished {
                scope: orch_core::GateScope::Phase { phase, attempt, .. },
                report,
            } => {
                heading(&mut b, phase.as_str(), *attempt);
                b.push_str("<li>");
                gate(&mut b, report);
                b.push_str("</li>");
            }
            EventKind::AttemptFailed {
                phase,
                attempt,
                feedback,
                ..
            } => {
                heading(&mut b, phase.as_str(), *attempt);
                let _ = write!(
                    b,
                    "<li class=\"failed\"><time>{at}</time> The attempt failed; the next one is shown:<pre class=\"feedback\">{}</pre></li>",
                    esc(feedback)
                );
            }
            EventKind::PhasePassed {
                phase,
                attempt,
                checkpoint,
                ..
            } => {
                heading(&mut b, phase.as_str(), *attempt);
                let _ = write!(
                    b,
                    "<li class=\"passed\"><time>{at}</time> Passed{}.</li>",
                    checkpoint
                        .as_deref()
                        .map(|c| format!(", checkpoint <code>{}</code>", esc(c)))
                        .unwrap_or_default()
                );
            }
            EventKind::Escalated {
                phase, question, ..
            } => {
                let _ = write!(
                    b,
                    "<li class=\"escalated\"><time>{at}</time> Escalated in {}: {}</li>",
                    esc(phase.as_str()),
                    esc(question)
                );
            }
            EventKind::DecisionRecorded { decision, note, .. } => {
                let _ = write!(
                    b,
                    "<li><time>{at}</time> Answered: {decision:?}{}</li>",
                    note.as_deref()
                        .map(|n| format!(" — {}", esc(n)))
                        .unwrap_or_default()
                );
            }
            EventKind::RolledBack { commit, .. } => {
                let _ = write!(
                    b,
                    "<li><time>{at}</time> Rolled back to <code>{}</code>.</li>",
                    esc(commit)
                );
            }
            EventKind::PhaseRestarted { from, .. } => {
                let _ = write!(
                    b,
                    "<li><time>{at}</time> Restarted from {}.</li>",
                    esc(from.as_str())
                );
            }
            EventKind::TicketDone { .. } => {
                let _ = write!(b, "<li class=\"passed\"><time>{at}</time> Done.</li>");
            }
            EventKind::TicketFailed { reason, .. } => {
                let _ = write!(
                    b,
                    "<li class=\"failed\"><time>{at}</time> Failed: {}</li>",
                    esc(reason)
                );
            }
            EventKind::TicketBlocked { by, .. } => {
                let _ = write!(
                    b,
                    "<li><time>{at}</time> Blocked by {}.</li>",
                    esc(by.as_str())
                );
            }
            _ => {}
        }
    }
    if open_attempt.is_some() {
        b.push_str("</ol></article>");
    }
    if history.is_empty() {
        b.push_str("<p>Nothing has happened to this ticket yet.</p>");
    }
    b.push_str("</section>");
    // No event stream here: a browser keeps six connections to a host
    // over HTTP/1, and each open page with a stream holds one.
    shell(&format!("{ticket} of {id}"), "", &b)
}

/// A gate's verdict and its evidence; a failed one opens to show it.
fn gate(b: &mut String, g: &GateReport) {
    let passed = g.status == GateStatus::Passed;
    let _ = write!(
        b,
        r#"<details class="gate {}"><summary>Gate <strong>{}</strong>: {} — {} ({})</summary><dl>"#,
        if passed { "passed" } else { "failed" },
        esc(&g.gate),
        if passed { "passed" } else { "FAILED" },
        esc(&g.reason),
        took(g.duration_ms)
    );
    let ev = &g.evidence;
    if let Some(c) = ev.exit_code {
        let _ = write!(b, "<dt>Exit code</dt><dd>{c}</dd>");
    }
    if let Some(t) = &ev.tests {
        let _ = write!(
            b,
            "<dt>Tests</dt><dd>{} passed, {} failed, {} skipped</dd>",
            t.passed, t.failed, t.skipped
        );
    }
    if let Some(c) = ev.line_coverage {
        let _ = write!(b, "<dt>Line coverage</dt><dd>{c:.1}%</dd>");
    }
    if let Some(c) = ev.branch_coverage {
        let _ = write!(b, "<dt>Branch coverage</dt><dd>{c:.1}%</dd>");
    }
    if let Some(m) = ev.measured {
        let _ = write!(b, "<dt>Measured</dt><dd>{m}</dd>");
    }
    b.push_str("</dl>");
    if !ev.failures.is_empty() {
        b.push_str("<h4>Failing tests</h4><ul class=\"failures\">");
        for f in &ev.failures {
            let _ = write!(
                b,
                "<li><code>{}</code><pre>{}</pre></li>",
                esc(&f.name),
                esc(&f.message)
            );
        }
        b.push_str("</ul>");
    }
    if !ev.hits.is_empty() {
        b.push_str("<h4>Found</h4><ul class=\"hits\">");
        for h in &ev.hits {
            let _ = write!(
                b,
                "<li><code>{}:{}</code> {}</li>",
                esc(&h.file),
                h.line,
                esc(&h.rule)
            );
        }
        b.push_str("</ul>");
    }
    if !g.excerpt.is_empty() {
        let _ = write!(
            b,
            "<h4>Output</h4><pre class=\"excerpt\">{}</pre>",
            esc(&g.excerpt)
        );
    }
    for c in &g.children {
        gate(b, c);
    }
    b.push_str("</details>");
}
