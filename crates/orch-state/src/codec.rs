//! How the stores turn events into rows and back: the id's 16 bytes and
//! the event's JSON, and the errors every store reports the same way.

use std::fmt::Display;

use orch_core::{Event, EventId, RunId, StoreError, StoreErrorKind};

/// An event ready to store: its id's bytes (big-endian, so they sort by
/// time) and its JSON.
pub(crate) struct Encoded {
    pub(crate) id: [u8; 16],
    pub(crate) body: String,
}

/// Encodes `events` for storing.
pub(crate) fn encode(events: &[Event]) -> Result<Vec<Encoded>, StoreError> {
    let err =
        |x: &dyn Display| StoreError::new(StoreErrorKind::Io, format!("cannot encode event: {x}"));
    events
        .iter()
        .map(|e| {
            // Room for a typical event up front, not grown by doubling.
            let mut body = Vec::with_capacity(256);
            serde_json::to_writer(&mut body, e).map_err(|x| err(&x))?;
            Ok(Encoded {
                id: e.id.0.to_be_bytes(),
                body: String::from_utf8(body).map_err(|x| err(&x))?,
            })
        })
        .collect()
}

/// Decodes the stored body of event `seq` of `run`, kept in `place` (the
/// file or database, for the message).
pub(crate) fn decode(
    place: impl Display,
    run: &RunId,
    seq: i64,
    body: &str,
) -> Result<Event, StoreError> {
    serde_json::from_str(body).map_err(|e| {
        StoreError::new(
            StoreErrorKind::Corrupt,
            format!("{place}: event {seq} of run {run} cannot be decoded: {e}"),
        )
    })
}

/// An event id already in the journal, sent again with other content.
pub(crate) fn conflict(id: EventId) -> StoreError {
    StoreError::new(
        StoreErrorKind::Conflict,
        format!("event id {id} is already in the journal with different content"),
    )
}

/// A conditional append decided against a journal that has moved on.
pub(crate) fn changed(run: &RunId, expected: u64, last: u64) -> StoreError {
    StoreError::new(
        StoreErrorKind::Changed,
        format!(
            "run {run} changed since it was read (its journal ends at event {last}, not {expected}); nothing was written"
        ),
    )
}

/// An append from a driver whose lock a newer driver took.
pub(crate) fn fenced(run: &RunId, epoch: u64, current: u64) -> StoreError {
    StoreError::new(
        StoreErrorKind::Fenced,
        format!(
            "run {run} was taken over by a newer driver (epoch {current}; this one holds {epoch}); nothing was written, and this driver stops"
        ),
    )
}
