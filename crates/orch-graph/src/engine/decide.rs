//! A person's answers to escalated tickets, the decision records that can
//! go with them, and what a person accepts without stopping the run.

use orch_core::secrets::Redactor;
use orch_core::{
    ADR_DIR, Acceptance, Adr, BatchId, Decision, DecisionItem, Event, EventId, EventKind, Expect,
    RunId, RunState, RunStatus, Slip, StateStore, TicketId, Timestamp,
};

use super::EngineError;

/// What a person says of the decision record that goes with an answer
/// (see [`decide_with_adr`]); what is left out is taken from the
/// escalation.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct AdrDraft {
    /// The record's title (required).
    pub title: String,
    /// Who decided.
    pub deciders: Vec<String>,
    /// Why a decision was needed. Default: the escalation's question and
    /// what the last attempt left (the gates' findings).
    pub context: Option<String>,
    /// What follows from the decision. Default: what the answer does to
    /// the ticket and the run.
    pub consequences: Option<String>,
    /// The other options and their trade-offs. Default: the escalation's
    /// other answers, each with what it would have done.
    pub alternatives: Vec<String>,
}

impl AdrDraft {
    /// A draft with only a title; the rest comes from the escalation.
    pub fn titled(title: impl Into<String>) -> Self {
        AdrDraft {
            title: title.into(),
            ..AdrDraft::default()
        }
    }
}

/// Records a person's answer to an escalated ticket of `run`. The engine
/// acts on it: at once if the run is going (it reads the journal), else
/// when the run is resumed.
///
/// The answer is recorded only against the journal it was checked on
/// ([`Expect::LastSeq`]): of two answers given at the same moment, one is
/// recorded and the other refused, whatever the store.
///
/// # Errors
/// [`EngineError::Decision`] when the ticket is not waiting for a decision
/// (never was, or was answered meanwhile, by whom and how) or the answer
/// is not one of its options; [`EngineError::Store`].
pub async fn decide(
    store: &dyn StateStore,
    run: &RunId,
    ticket: &TicketId,
    decision: Decision,
    note: Option<String>,
) -> Result<(), EngineError> {
    record(store, run, ticket, decision, note, None)
        .await
        .map(drop)
}

/// [`decide`], with the answer written down as an architecture decision
/// record: numbered one past the highest `ADR-NNN` in the ticket's work
/// tree (`docs/adr/`) and in the run's journal, filled in from the
/// escalation where `draft` is silent, recorded with the answer (secrets
/// of this process redacted), and committed as
/// `docs/adr/ADR-NNN-<slug>.md` with the ticket's next checkpoint, so on
/// its branch and then its batch's. The state directory keeps a copy
/// (`adr/<run>/`), for answers after which nothing is committed (skip,
/// abort).
/// Returns the record.
///
/// ```no_run
/// # async fn f(store: &dyn orch_core::StateStore) -> Result<(), Box<dyn std::error::Error>> {
/// use orch_core::Decision;
/// use orch_graph::{AdrDraft, decide_with_adr};
/// let mut draft = AdrDraft::titled("Accept the spoofing risk until keys rotate");
/// draft.deciders = vec!["dana".into()];
/// let adr = decide_with_adr(
///     store,
///     &"run-1".parse()?,
///     &"QUOTE-001".parse()?,
///     Decision::Approve,
///     None,
///     draft,
/// )
/// .await?;
/// println!("recorded {}", adr.path());
/// # Ok(()) }
/// ```
///
/// # Errors
/// As [`decide`], and [`EngineError::Decision`] for a title that is
/// empty, not one line or longer than 200 characters, or a text longer
/// than 20,000.
pub async fn decide_with_adr(
    store: &dyn StateStore,
    run: &RunId,
    ticket: &TicketId,
    decision: Decision,
    note: Option<String>,
    draft: AdrDraft,
) -> Result<Adr, EngineError> {
    check_draft(&draft)?;
    record(store, run, ticket, decision, note, Some(draft))
        .await
        .map(|adr| *adr.expect("asked for"))
}

async fn record(
    store: &dyn StateStore,
    run: &RunId,
    ticket: &TicketId,
    decision: Decision,
    note: Option<String>,
    draft: Option<AdrDraft>,
) -> Result<Option<Box<Adr>>, EngineError> {
    // A note is shown to the agent, a record is committed: no secret of
    // this process goes to either.
    let redactor = Redactor::from_process_env();
    // One answer, one id, however many times it is tried.
    let (id, at) = (EventId::random(), Timestamp::now());
    let mut state = RunState::default();
    let mut seq = store.catch_up(run, &mut state, 0).await?;
    loop {
        let question = check_decision(&state, run, ticket, decision)?;
        let adr = draft
            .as_ref()
            .map(|d| Box::new(fill(d, &state, question, decision, note.as_deref())));
        let mut answer = EventKind::DecisionRecorded {
            ticket: ticket.clone(),
            decision,
            note: note.clone(),
            adr,
        };
        answer.redact(&redactor);
        let adr = match &answer {
            EventKind::DecisionRecorded { adr, .. } => adr.clone(),
            _ => None,
        };
        match store
            .append_if(
                run,
                Expect::LastSeq(seq),
                &[Event {
                    id,
                    at,
                    kind: answer,
                }],
            )
            .await
        {
            Ok(_) => return Ok(adr),
            // The journal moved on (the engine wrote, or someone else
            // answered or took the number): check again against what it
            // holds now.
            Err(e) if e.kind == orch_core::StoreErrorKind::Changed => {
                seq = store.catch_up(run, &mut state, seq).await?;
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// The record `draft` makes for `decision` on `question`, numbered after
/// every record `state` and the ticket's work tree hold.
fn fill(
    draft: &AdrDraft,
    state: &RunState,
    question: &DecisionItem,
    decision: Decision,
    note: Option<&str>,
) -> Adr {
    let workdir = state
        .tickets
        .get(&question.ticket)
        .and_then(|t| t.workdir.as_deref());
    let in_tree = workdir
        .and_then(|w| std::fs::read_dir(std::path::Path::new(w).join(ADR_DIR)).ok())
        .into_iter()
        .flatten()
        .filter_map(|e| Adr::number_of(&e.ok()?.file_name().to_string_lossy()))
        // The work tree is the agent's: a number it planted far out
        // (`ADR-4294967295-x.md`) does not carry the count with it.
        .filter(|&n| n < MAX_NUMBER);
    let in_run = state
        .decisions
        .iter()
        .filter_map(|d| d.adr.as_ref().map(|a| a.number));
    let number = in_tree.chain(in_run).max().unwrap_or(0) + 1;
    let (ticket, phase) = (&question.ticket, &question.phase);
    let context = draft.context.clone().unwrap_or_else(|| {
        let stopped = format!("{ticket} stopped in phase `{phase}` and waited for a person.");
        match question.context.trim() {
            "" => stopped,
            // The agent's output (through its gates): fenced, so it cannot
            // add headings of its own to the record.
            found => format!(
                "{stopped}\n\nWhat the last attempt left:\n\n{}",
                fenced(found)
            ),
        }
    });
    let mut said = format!("{}: {ticket}, phase `{phase}`.", verb(decision));
    if let Some(n) = note {
        said.push_str(&format!(" {n}"));
    }
    let alternatives = if draft.alternatives.is_empty() {
        question
            .options
            .iter()
            .filter(|&&o| o != decision)
            .map(|&o| format!("{}: {}", verb(o), effect(o)))
            .collect()
    } else {
        draft.alternatives.clone()
    };
    Adr {
        number,
        title: draft.title.trim().to_owned(),
        deciders: draft.deciders.clone(),
        context,
        decision: said,
        consequences: draft
            .consequences
            .clone()
            .unwrap_or_else(|| effect(decision).to_owned()),
        alternatives,
    }
}

/// Record numbers from a work tree at or past this are not counted.
const MAX_NUMBER: u32 = 10_000;

/// The longest title a record takes, in characters.
const MAX_TITLE: usize = 200;

/// The longest text (context, consequences, an alternative) a record
/// takes, in characters.
const MAX_TEXT: usize = 20_000;

/// `text` as a fenced code block whose fence no run of backticks in it
/// can close.
fn fenced(text: &str) -> String {
    let mut longest = 0;
    let mut run = 0;
    for c in text.chars() {
        run = if c == '`' { run + 1 } else { 0 };
        longest = longest.max(run);
    }
    let fence = "`".repeat(longest.max(2) + 1);
    format!("{fence}text\n{text}\n{fence}")
}

/// What is wrong with `draft`, if anything.
fn check_draft(draft: &AdrDraft) -> Result<(), EngineError> {
    let title = draft.title.trim();
    if title.is_empty() {
        return Err(EngineError::Decision(
            "a decision record needs a title".into(),
        ));
    }
    if title.chars().count() > MAX_TITLE || title.contains('\n') {
        return Err(EngineError::Decision(format!(
            "a decision record's title is one line of at most {MAX_TITLE} characters"
        )));
    }
    let texts = [&draft.context, &draft.consequences]
        .into_iter()
        .flatten()
        .chain(&draft.alternatives)
        .chain(&draft.deciders);
    for t in texts {
        if t.chars().count() > MAX_TEXT {
            return Err(EngineError::Decision(format!(
                "a decision record's text is at most {MAX_TEXT} characters (one is {})",
                t.chars().count()
            )));
        }
    }
    Ok(())
}

fn verb(d: Decision) -> &'static str {
    match d {
        Decision::Approve => "Approve",
        Decision::Retry => "Retry",
        Decision::Skip => "Skip",
        Decision::Abort => "Abort",
    }
}

/// What an answer does, for a record's consequences and alternatives.
fn effect(d: Decision) -> &'static str {
    match d {
        Decision::Approve => {
            "the phase passes with the work as it is; what its gates found stays open, accepted"
        }
        Decision::Retry => "the phase runs again, with the note as the agent's feedback",
        Decision::Skip => "the ticket is not done and the tickets that depend on it are blocked",
        Decision::Abort => "the whole run stops; nothing more is merged",
    }
}

/// Whether `ticket` of `state` may take `decision` now: the open question
/// it answers.
fn check_decision<'a>(
    state: &'a RunState,
    run: &RunId,
    ticket: &TicketId,
    decision: Decision,
) -> Result<&'a DecisionItem, EngineError> {
    if state.status == RunStatus::NotStarted {
        return Err(EngineError::Decision(format!("there is no run {run}")));
    }
    let Some(q) = state
        .open_decisions()
        .filter(|d| &d.ticket == ticket)
        .last()
    else {
        // Answered already (by another call, maybe at the same moment)?
        let answered = state
            .decisions
            .iter()
            .rfind(|d| &d.ticket == ticket)
            .and_then(|d| Some((d.answer?, d.note.clone())));
        if let Some((a, n)) = answered {
            return Err(EngineError::Decision(format!(
                "{ticket} was already answered ({a:?}{}); this answer was not recorded",
                n.map(|n| format!(", note: {n:?}")).unwrap_or_default()
            )));
        }
        let open: Vec<String> = state
            .open_decisions()
            .map(|d| d.ticket.to_string())
            .collect();
        return Err(EngineError::Decision(format!(
            "{ticket} is not waiting for a decision (waiting: {})",
            if open.is_empty() {
                "none".to_owned()
            } else {
                open.join(", ")
            }
        )));
    };
    if !q.options.contains(&decision) {
        return Err(EngineError::Decision(format!(
            "{decision:?} is not an option for {ticket} (options: {:?})",
            q.options
        )));
    }
    Ok(q)
}

/// Records that a person accepts something without stopping the run:
/// with [`Acceptance::Delay`], the projected delay of every open
/// `ScheduleSlipped` question; with [`Acceptance::Risk`], a residual risk
/// (of `batch`, or of the whole run), which the batch's go/no-go record
/// lists. `note` says what and why (secrets of this process redacted).
///
/// ```no_run
/// # async fn f(store: &dyn orch_core::StateStore) -> Result<(), Box<dyn std::error::Error>> {
/// use orch_core::Acceptance;
/// orch_graph::accept(
///     store,
///     &"run-1".parse()?,
///     Acceptance::Risk,
///     Some("PR5".parse()?),
///     "p99 is 110 ms under the load test; the cache lands next sprint".into(),
/// )
/// .await?;
/// # Ok(()) }
/// ```
///
/// Returns, for a delay, the open questions it answered (each says how far
/// the finish had slipped when it was raised).
///
/// # Errors
/// [`EngineError::Decision`] when there is no such run, no delay waits
/// for acceptance, the plan has no such batch, or the note is empty;
/// [`EngineError::Store`].
pub async fn accept(
    store: &dyn StateStore,
    run: &RunId,
    acceptance: Acceptance,
    batch: Option<BatchId>,
    note: String,
) -> Result<Vec<Slip>, EngineError> {
    if note.trim().is_empty() {
        return Err(EngineError::Decision(
            "say what is accepted and why (the note is empty)".into(),
        ));
    }
    let mut kind = EventKind::Accepted {
        acceptance,
        batch: batch.clone(),
        note,
    };
    kind.redact(&Redactor::from_process_env());
    let event = Event::now(kind);
    let mut state = RunState::default();
    let mut seq = store.catch_up(run, &mut state, 0).await?;
    loop {
        if state.status == RunStatus::NotStarted {
            return Err(EngineError::Decision(format!("there is no run {run}")));
        }
        match (acceptance, &batch) {
            (Acceptance::Delay, Some(b)) => {
                return Err(EngineError::Decision(format!(
                    "a delay is the whole run's, not batch {b}'s"
                )));
            }
            (Acceptance::Delay, None) if state.slips.iter().all(|s| s.accepted.is_some()) => {
                return Err(EngineError::Decision(
                    "no projected delay waits for acceptance".into(),
                ));
            }
            (Acceptance::Risk, Some(b))
                if !state.fingerprint_parts.is_empty()
                    && !state.fingerprint_parts.contains_key(&format!("batch:{b}")) =>
            {
                return Err(EngineError::Decision(format!(
                    "the plan of run {run} has no batch {b}"
                )));
            }
            _ => {}
        }
        match store
            .append_if(run, Expect::LastSeq(seq), std::slice::from_ref(&event))
            .await
        {
            Ok(_) => {
                let answered = match acceptance {
                    Acceptance::Delay => state
                        .slips
                        .iter()
                        .filter(|s| s.accepted.is_none())
                        .cloned()
                        .collect(),
                    Acceptance::Risk => Vec::new(),
                };
                return Ok(answered);
            }
            Err(e) if e.kind == orch_core::StoreErrorKind::Changed => {
                seq = store.catch_up(run, &mut state, seq).await?;
            }
            Err(e) => return Err(e.into()),
        }
    }
}
