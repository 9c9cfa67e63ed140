//! [`Observer`]: what watches a run (state files, progress, logs).

use crate::{AgentId, Event, Progress, RunState};

/// Sees every event once it is durable, with the state it led to; and the
/// agents' progress, which is not persisted. Events are seen in journal
/// order, on the task that appended them, with the run state's lock held;
/// progress on the engine's task. Keep it quick: the next
/// events wait for it (throttle slow work such as writing state files).
/// A panic in [`Observer::event`] is caught and logged; the run goes on.
pub trait Observer: Send + Sync {
    /// An event was appended and folded into `state`.
    fn event(&self, event: &Event, state: &RunState);
    /// An agent reported progress.
    fn progress(&self, _agent: &AgentId, _progress: &Progress) {}
    /// The run stopped (for whatever reason) in `state`.
    fn finished(&self, _state: &RunState) {}
}
