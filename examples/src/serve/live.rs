//! The event stream of a run's page: the journal read as it grows, folded
//! here, and sent as what changed for a person (a ticket's status, the
//! counts, the cost), not as raw events for the page to fold again.

use std::collections::HashMap;
use std::convert::Infallible;

use axum::extract::{Path, State};
use axum::response::sse::{Event, KeepAlive, Sse};
use futures_util::stream::{Stream, StreamExt};
use orch_core::{RunId, RunState, TicketId};

use super::page::{self, Summary, TicketView};
use super::{Problem, Site};

/// `GET /runs/{run}/events`: first a `snapshot` of every ticket and the
/// summary, then an `update` with what changed whenever the journal grew;
/// a `problem` when the journal cannot be read (the stream goes on trying).
pub(super) async fn events(
    State(site): State<Site>,
    Path(run): Path<String>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, Problem> {
    let (run, _) = site.run(&run).await?;
    let feed = Feed {
        site,
        run,
        state: RunState::default(),
        seq: 0,
        sent: None,
    };
    let stop = feed.site.0.stop.clone().cancelled_owned();
    let stream = futures_util::stream::unfold(feed, |mut feed| async move {
        let event = feed.next().await;
        Some((Ok(event), feed))
    })
    // The server is stopping: the stream ends, so the page's connection
    // does not hold the server up.
    .take_until(stop);
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()))
}

/// One page's view of a run, kept up with the journal.
struct Feed {
    site: Site,
    run: RunId,
    /// The run folded up to `seq`.
    state: RunState,
    seq: u64,
    /// What the page was last sent.
    sent: Option<(HashMap<TicketId, TicketView>, Summary)>,
}

/// What an update carries.
#[derive(serde::Serialize)]
struct Message<'a> {
    seq: u64,
    summary: &'a Summary,
    tickets: Vec<&'a TicketView>,
}

impl Feed {
    /// The next message for the page: waits until there is one.
    async fn next(&mut self) -> Event {
        if self.sent.is_some() {
            // At most one message a poll, however busy the journal.
            tokio::time::sleep(self.site.0.poll).await;
        }
        loop {
            match self
                .site
                .0
                .store
                .catch_up(&self.run, &mut self.state, self.seq)
                .await
            {
                Ok(seq) if seq == self.seq && self.sent.is_some() => {
                    // Nothing new in the journal.
                    tokio::time::sleep(self.site.0.poll).await;
                    continue;
                }
                Ok(seq) => self.seq = seq,
                Err(e) => {
                    // Part of a catch-up may have been folded: fold again
                    // from the start rather than count anything twice.
                    self.state = RunState::default();
                    self.seq = 0;
                    let p = self.site.failed(&e);
                    tokio::time::sleep(self.site.0.poll * 5).await;
                    return Event::default().event("problem").data(p.1);
                }
            }
            let plan = self.site.plan_of(&self.state).map(|(k, _)| &k.plan);
            let report = plan.and_then(|p| page::report(p, &self.state).ok());
            let summary = page::summary(&self.state, plan, report.as_ref());
            let tickets: HashMap<TicketId, TicketView> = self
                .state
                .tickets
                .iter()
                .map(|(id, t)| (id.clone(), TicketView::new(id, t)))
                .collect();
            let (kind, changed): (&str, Vec<&TicketView>) = match &self.sent {
                None => ("snapshot", tickets.values().collect()),
                Some((before, said)) => {
                    let changed: Vec<_> = tickets
                        .values()
                        .filter(|v| before.get(&v.id) != Some(v))
                        .collect();
                    if changed.is_empty() && *said == summary {
                        tokio::time::sleep(self.site.0.poll).await;
                        continue;
                    }
                    ("update", changed)
                }
            };
            let data = serde_json::to_string(&Message {
                seq: self.seq,
                summary: &summary,
                tickets: changed,
            })
            .unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"));
            let event = Event::default()
                .event(kind)
                .id(self.seq.to_string())
                .data(self.site.0.redactor.redact(&data));
            self.sent = Some((tickets, summary));
            return event;
        }
    }
}
