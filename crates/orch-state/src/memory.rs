//! [`MemoryStore`]: the journal in memory, for tests and for programs that
//! want no persistence.

use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use orch_core::{
    Event, EventId, Expect, RunId, RunLock, StateStore, StoreError, StoreErrorKind, StoredEvent,
};
use rustc_hash::{FxHashMap, FxHashSet};

use crate::codec::{changed, conflict, fenced};

#[derive(Default)]
struct Journal {
    events: Events,
    ids: Ids,
}

/// A run's event ids in ascending order, each with its seq: the index that
/// makes appends idempotent.
///
/// An id starts with its creation time ([`EventId::random`]), and events
/// are appended soon after they are made, so a new id almost always sorts
/// after every id held: it goes on at the end, one comparison and a write
/// next to the last one, where a hash map would write to a random place of
/// a table as large as the journal (a cache miss, and at every doubling a
/// rehash of it all). An older id (an event held back a while, or sent by
/// another process) is found or placed by binary search; placing one moves
/// the ids made after it one slot up.
#[derive(Default)]
struct Ids(Vec<(EventId, u64)>);

impl Ids {
    /// Where `id` is held, or where it goes.
    fn search(&self, id: EventId) -> Result<usize, usize> {
        self.0.binary_search_by_key(&id, |&(i, _)| i)
    }

    /// The seq of `id` if it is held; else `Err` with where it goes.
    fn find(&self, id: EventId) -> Result<u64, usize> {
        match self.0.last() {
            Some(&(last, _)) if last < id => Err(self.0.len()),
            _ => self.search(id).map(|at| self.0[at].1),
        }
    }

    /// Places `id` where [`Ids::find`] said it goes (at the end, usually:
    /// nothing moves then).
    fn insert(&mut self, at: usize, id: EventId, seq: u64) {
        self.0.insert(at, (id, seq));
    }

    fn remove(&mut self, id: EventId) {
        if let Ok(at) = self.search(id) {
            self.0.remove(at);
        }
    }
}

/// Events per chunk of [`Events`].
const CHUNK: usize = 4096;

/// A run's events in fixed-size chunks: appending never moves the events
/// already held, where a growing `Vec` would copy them all each time it
/// doubles (at a million events, 160 MB copied, and twice the memory
/// while it does).
/// Every chunk but the last is full.
#[derive(Default)]
struct Events {
    chunks: Vec<Vec<Event>>,
}

impl Events {
    fn len(&self) -> usize {
        self.chunks
            .last()
            .map_or(0, |c| (self.chunks.len() - 1) * CHUNK + c.len())
    }

    fn push(&mut self, e: Event) {
        match self.chunks.last_mut() {
            Some(c) if c.len() < CHUNK => c.push(e),
            _ => {
                let mut c = Vec::with_capacity(CHUNK);
                c.push(e);
                self.chunks.push(c);
            }
        }
    }

    fn pop(&mut self) -> Option<Event> {
        let c = self.chunks.last_mut()?;
        let e = c.pop();
        if c.is_empty() {
            self.chunks.pop();
        }
        e
    }

    /// The event at 0-based position `i`.
    fn get(&self, i: usize) -> Option<&Event> {
        self.chunks.get(i / CHUNK)?.get(i % CHUNK)
    }

    /// The events from 0-based position `i` on.
    fn from(&self, i: usize) -> impl Iterator<Item = &Event> {
        let first = (i / CHUNK).min(self.chunks.len());
        self.chunks[first..].iter().flatten().skip(i % CHUNK)
    }
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
    /// The runs whose [`RunLock`] is held.
    locked: Arc<Mutex<FxHashSet<RunId>>>,
    /// Each run's epoch: the number of times it was locked.
    epochs: Mutex<FxHashMap<RunId, u64>>,
}

/// Frees its run in the store's set when dropped.
struct Held(Arc<Mutex<FxHashSet<RunId>>>, RunId);

impl Drop for Held {
    fn drop(&mut self) {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.1);
    }
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// Takes the run from whoever holds it, as a driver taking over from
    /// one that lost its lock would: the run gets a new epoch, so the old
    /// holder's fenced appends are refused. For tests of fencing.
    pub fn steal_run(&self, run: &RunId) -> u64 {
        let _journal = self.runs.lock().unwrap_or_else(|e| e.into_inner());
        self.next_epoch(run)
    }

    /// Moves `run` on to its next epoch and returns it. Called with the
    /// journal's lock held, so that no append checks an epoch half-moved.
    fn next_epoch(&self, run: &RunId) -> u64 {
        let mut epochs = self.epochs.lock().unwrap_or_else(|e| e.into_inner());
        let epoch = epochs.entry(run.clone()).or_default();
        *epoch += 1;
        *epoch
    }
}

#[async_trait]
impl StateStore for MemoryStore {
    async fn append_if(
        &self,
        run: &RunId,
        expect: Expect,
        events: &[Event],
    ) -> Result<Vec<u64>, StoreError> {
        let mut guard = self.runs.lock().unwrap_or_else(|e| e.into_inner());
        // Checked under the journal's lock, which `lock_run` takes too.
        let epoch = || {
            let epochs = self.epochs.lock().unwrap_or_else(|e| e.into_inner());
            epochs.get(run).copied().unwrap_or(0)
        };
        let last = || guard.1.get(run).map_or(0, |j| j.events.len() as u64);
        match expect {
            Expect::LastSeq(seq) if seq != last() => return Err(changed(run, seq, last())),
            Expect::Epoch(e) if e != epoch() => return Err(fenced(run, e, epoch())),
            _ => {}
        }
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
            // One look-up per event: a new id (the usual case) goes in
            // where the look-up said.
            let seq = match j.ids.find(e.id) {
                Err(at) => {
                    j.events.push(e.clone());
                    let seq = j.events.len() as u64;
                    j.ids.insert(at, e.id, seq);
                    seqs.push(seq);
                    continue;
                }
                Ok(seq) => seq,
            };
            if j.events.get(seq as usize - 1) != Some(e) {
                while j.events.len() > start {
                    if let Some(gone) = j.events.pop() {
                        j.ids.remove(gone.id);
                    }
                }
                return Err(conflict(e.id));
            }
            seqs.push(seq);
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
                let after = usize::try_from(after).unwrap_or(usize::MAX);
                j.events
                    .from(after)
                    .zip((after as u64).saturating_add(1)..)
                    .take(limit)
                    .map(|(e, seq)| StoredEvent {
                        seq,
                        event: e.clone(),
                    })
                    .collect()
            })
            .unwrap_or_default())
    }

    async fn lock_run(&self, run: &RunId) -> Result<RunLock, StoreError> {
        let _journal = self.runs.lock().unwrap_or_else(|e| e.into_inner());
        let mut locked = self.locked.lock().unwrap_or_else(|e| e.into_inner());
        if !locked.insert(run.clone()) {
            return Err(StoreError::new(
                StoreErrorKind::Locked,
                format!("run {run} is being driven by another engine on this memory store"),
            ));
        }
        Ok(RunLock::new(Held(self.locked.clone(), run.clone())).with_epoch(self.next_epoch(run)))
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

#[cfg(test)]
mod tests {
    use super::*;
    use orch_core::EventKind;

    fn done(i: usize) -> Event {
        Event::now(EventKind::TicketDone {
            ticket: format!("T{i}").parse().unwrap(),
        })
    }

    /// Reads, re-sends and a rolled-back batch across chunk boundaries.
    #[tokio::test]
    async fn a_journal_longer_than_a_chunk_keeps_the_contract() {
        let store = MemoryStore::new();
        let run: RunId = "r1".parse().unwrap();
        let n = 2 * CHUNK + 10;
        let events: Vec<Event> = (0..n).map(done).collect();
        for e in events.chunks(7) {
            store.append(&run, e).await.unwrap();
        }
        // A page that straddles the first boundary.
        let page = store.read(&run, CHUNK as u64 - 2, 5).await.unwrap();
        let seqs: Vec<u64> = page.iter().map(|s| s.seq).collect();
        let want: Vec<u64> = (CHUNK as u64 - 1..CHUNK as u64 + 4).collect();
        assert_eq!(seqs, want);
        assert_eq!(page[2].event, events[CHUNK]);
        // Everything, in order; nothing past the end, even from u64::MAX.
        let all = store.read(&run, 0, usize::MAX).await.unwrap();
        assert!(all.iter().map(|s| &s.event).eq(events.iter()));
        assert!(store.read(&run, n as u64, 10).await.unwrap().is_empty());
        assert!(store.read(&run, u64::MAX, 10).await.unwrap().is_empty());
        // Re-sending an event from the second chunk returns its seq.
        let again = store
            .append(&run, std::slice::from_ref(&events[CHUNK + 3]))
            .await
            .unwrap();
        assert_eq!(again, [CHUNK as u64 + 4]);
        // A batch that ends in a conflict is taken back out whole, even
        // when it started a new chunk.
        let fill: Vec<Event> = (n..3 * CHUNK).map(done).collect();
        store.append(&run, &fill).await.unwrap();
        let mut forged = events[0].clone();
        forged.kind = EventKind::TicketSkipped {
            ticket: "T0".parse().unwrap(),
        };
        let batch = [done(3 * CHUNK), done(3 * CHUNK + 1), forged];
        let e = store.append(&run, &batch).await.unwrap_err();
        assert_eq!(e.kind, StoreErrorKind::Conflict);
        assert_eq!(
            store.read(&run, 0, usize::MAX).await.unwrap().len(),
            3 * CHUNK
        );
        let next = store.append(&run, &batch[..2]).await.unwrap();
        assert_eq!(next, [3 * CHUNK as u64 + 1, 3 * CHUNK as u64 + 2]);
    }

    /// Ids in any order: new ones get the next seq wherever they sort,
    /// repeats their first seq, and a batch taken back out after a
    /// conflict leaves no id of it behind (its events can be sent again).
    #[tokio::test]
    async fn ids_out_of_order_keep_the_contract() {
        let store = MemoryStore::new();
        let run: RunId = "r1".parse().unwrap();
        let with_id = |i: usize, id: u128| Event {
            id: EventId(id),
            ..done(i)
        };
        let first = [with_id(0, 50), with_id(1, 10), with_id(2, 90)];
        assert_eq!(store.append(&run, &first).await.unwrap(), [1, 2, 3]);
        // Older than the newest: placed among the others, not at the end.
        let older = [with_id(3, 30), with_id(4, 5)];
        assert_eq!(store.append(&run, &older).await.unwrap(), [4, 5]);
        let repeat = [first[1].clone(), older[0].clone(), first[2].clone()];
        assert_eq!(store.append(&run, &repeat).await.unwrap(), [2, 4, 3]);
        // A conflict takes back the new ids of its batch, old-sorting and
        // newest alike.
        let forged = Event {
            kind: EventKind::TicketSkipped {
                ticket: "T1".parse().unwrap(),
            },
            ..first[1].clone()
        };
        let batch = [with_id(5, 20), with_id(6, 200), forged];
        let e = store.append(&run, &batch).await.unwrap_err();
        assert_eq!(e.kind, StoreErrorKind::Conflict);
        assert_eq!(store.read(&run, 0, usize::MAX).await.unwrap().len(), 5);
        assert_eq!(store.append(&run, &batch[..2]).await.unwrap(), [6, 7]);
        let ids: Vec<u128> = store
            .read(&run, 0, usize::MAX)
            .await
            .unwrap()
            .iter()
            .map(|s| s.event.id.0)
            .collect();
        assert_eq!(ids, [50, 10, 90, 30, 5, 20, 200]);
    }
}
