//! [`MemoryStore`]: the journal in memory, for tests and for programs that
//! want no persistence.

use std::sync::Mutex;

use async_trait::async_trait;
use orch_core::{Event, EventId, RunId, StateStore, StoreError, StoreErrorKind, StoredEvent};
use rustc_hash::FxHashMap;

#[derive(Default)]
struct Journal {
    events: Vec<Event>,
    by_id: FxHashMap<EventId, u64>,
}

/// A [`StateStore`] that keeps everything in memory. "Durable" means "until
/// the process exits"; otherwise it keeps the whole contract (order,
/// idempotency, atomic batches), so it can stand in for a real store.
///
/// ```
/// use orch_core::{Event, EventKind, StateStore, TicketStatus};
/// let store = orch_state::MemoryStore::new();
/// let run = "r1".parse().unwrap();
/// let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
/// rt.block_on(async {
///     let done = Event::now(EventKind::TicketDone { ticket: "T-1".parse().unwrap() });
///     assert_eq!(store.append(&run, &[done]).await.unwrap(), [1]);
///     assert_eq!(store.state(&run).await.unwrap().count(TicketStatus::Done), 1);
/// });
/// ```
#[derive(Default)]
pub struct MemoryStore {
    runs: Mutex<(Vec<RunId>, FxHashMap<RunId, Journal>)>,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }
}

#[async_trait]
impl StateStore for MemoryStore {
    async fn append(&self, run: &RunId, events: &[Event]) -> Result<Vec<u64>, StoreError> {
        let mut guard = self.runs.lock().unwrap_or_else(|e| e.into_inner());
        let (order, runs) = &mut *guard;
        let j = match runs.get_mut(run) {
            Some(j) => j,
            None => {
                order.push(run.clone());
                runs.entry(run.clone()).or_default()
            }
        };
        // New events go in as they come (so a repeat later in the same
        // batch finds them); a conflict takes the whole batch back out.
        let start = j.events.len();
        let mut seqs = Vec::with_capacity(events.len());
        for e in events {
            if let Some(&seq) = j.by_id.get(&e.id) {
                if j.events[seq as usize - 1] != *e {
                    for gone in j.events.drain(start..) {
                        j.by_id.remove(&gone.id);
                    }
                    return Err(conflict(e.id));
                }
                seqs.push(seq);
            } else {
                j.events.push(e.clone());
                let seq = j.events.len() as u64;
                j.by_id.insert(e.id, seq);
                seqs.push(seq);
            }
        }
        Ok(seqs)
    }

    async fn read(
        &self,
        run: &RunId,
        after: u64,
        limit: usize,
    ) -> Result<Vec<StoredEvent>, StoreError> {
        let guard = self.runs.lock().unwrap_or_else(|e| e.into_inner());
        Ok(guard
            .1
            .get(run)
            .map(|j| {
                j.events
                    .iter()
                    .enumerate()
                    .skip(usize::try_from(after).unwrap_or(usize::MAX))
                    .take(limit)
                    .map(|(i, e)| StoredEvent {
                        seq: i as u64 + 1,
                        event: e.clone(),
                    })
                    .collect()
            })
            .unwrap_or_default())
    }

    async fn runs(&self) -> Result<Vec<RunId>, StoreError> {
        Ok(self
            .runs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .0
            .clone())
    }
}

pub(crate) fn conflict(id: EventId) -> StoreError {
    StoreError::new(
        StoreErrorKind::Conflict,
        format!("event id {id} is already in the journal with different content"),
    )
}
