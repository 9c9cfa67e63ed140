//! The ready-set scheduler the engine drives.

use std::cmp::Reverse;
use std::collections::VecDeque;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::analysis::Analysis;
use crate::graph::{Ix, PlanGraph};
use crate::rankset::RankSet;

/// Where a ticket stands in the scheduler.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Some dependency is not done yet.
    Pending,
    /// Every dependency is done; waiting for an agent.
    Ready,
    /// Started.
    Running,
    /// Started, then paused (waiting for a person); holds no slot.
    Paused,
    /// Completed.
    Done,
    /// Failed for good.
    Failed,
    /// A dependency failed or was skipped.
    Blocked,
    /// Skipped.
    Skipped,
}

const STATUSES: usize = 8;

impl Status {
    fn slot(self) -> usize {
        self as usize
    }

    /// Done, failed, blocked or skipped.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            Status::Done | Status::Failed | Status::Blocked | Status::Skipped
        )
    }
}

/// Number of tickets in each status.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counts {
    /// Waiting for dependencies.
    pub pending: usize,
    /// Ready.
    pub ready: usize,
    /// Running.
    pub running: usize,
    /// Paused.
    pub paused: usize,
    /// Done.
    pub done: usize,
    /// Failed.
    pub failed: usize,
    /// Blocked.
    pub blocked: usize,
    /// Skipped.
    pub skipped: usize,
}

/// A transition the scheduler refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SchedulerError {
    /// The ticket is not in a status the action applies to.
    #[error("cannot {action} ticket \"{ticket}\": it is {from:?}")]
    InvalidTransition {
        /// The ticket.
        ticket: orch_core::TicketId,
        /// Its status.
        from: Status,
        /// What was asked.
        action: &'static str,
    },
    /// No free slot (overall or for the ticket's role).
    #[error("cannot start ticket \"{0}\": no free slot for it")]
    NoCapacity(orch_core::TicketId),
    /// The index is not a ticket of the graph.
    #[error("no ticket with index {0}")]
    NoSuchTicket(Ix),
}

/// Everything a transition touches about one ticket, in one record, so a
/// transition costs one cache miss per ticket it touches.
#[derive(Debug, Clone, Copy)]
struct Slot {
    waiting: u32,
    rank: u32,
    class: u16,
    status: Status,
}

/// Tracks which tickets may run, in priority order, under concurrency
/// limits.
///
/// Ready tickets come out P0 first, then by longest remaining path (the
/// ticket's effort plus the longest chain of dependents after it), then in
/// plan order, so the same plan always schedules the same way. Every
/// transition costs amortized O(1) plus the dependency edges it touches.
///
/// ```
/// use std::sync::Arc;
/// use orch_graph::{PlanGraph, Scheduler, Status};
/// let plan = orch_core::Plan::from_toml_str(r#"
///     name = "p"
///     default_role = "dev"
///     [agents.dev]
///     backend = { kind = "command", argv = ["a"] }
///     [[phases]]
///     name = "do"
///     [[tickets]]
///     id = "A"
///     title = "a"
///     effort = "1h"
///     [[tickets]]
///     id = "B"
///     title = "b"
///     effort = "1h"
///     depends_on = ["A"]
/// "#).unwrap();
/// let mut s = Scheduler::new(Arc::new(PlanGraph::from_plan(&plan).unwrap()));
/// let a = s.next().unwrap();                 // A starts
/// assert_eq!(s.next(), None);                // B waits for A
/// assert_eq!(s.complete(a).unwrap(), 1);     // B becomes ready
/// let b = s.next().unwrap();
/// s.complete(b).unwrap();
/// assert!(s.is_finished());
/// assert_eq!(s.status(b), Status::Done);
/// ```
#[derive(Debug, Clone)]
pub struct Scheduler {
    graph: Arc<PlanGraph>,
    slots: Vec<Slot>,
    by_rank: Vec<Ix>,
    ready: Vec<RankSet>,
    class_limit: Vec<u32>,
    class_running: Vec<u32>,
    max_running: u32,
    running: u32,
    counts: [usize; STATUSES],
}

impl Scheduler {
    /// A scheduler for `graph` with no concurrency limit.
    pub fn new(graph: Arc<PlanGraph>) -> Scheduler {
        let n = graph.len();
        let tail = Analysis::new(&graph).tail;
        let mut by_rank: Vec<Ix> = (0..n as Ix).collect();
        by_rank.sort_unstable_by_key(|&t| (graph.priority(t), Reverse(tail[t as usize]), t));
        let mut slots: Vec<Slot> = (0..n as Ix)
            .map(|t| Slot {
                waiting: graph.dependency_count(t) as u32,
                rank: 0,
                class: 0,
                status: Status::Pending,
            })
            .collect();
        for (r, &t) in by_rank.iter().enumerate() {
            slots[t as usize].rank = r as u32;
        }
        let mut s = Scheduler {
            slots,
            by_rank,
            ready: vec![RankSet::new(n)],
            class_limit: vec![u32::MAX],
            class_running: vec![0],
            max_running: u32::MAX,
            running: 0,
            counts: [0; STATUSES],
            graph,
        };
        s.counts[Status::Pending.slot()] = n;
        for t in 0..n as Ix {
            if s.slots[t as usize].waiting == 0 {
                s.set(t, Status::Ready);
            }
        }
        s
    }

    /// At most `n` tickets running at once (overall).
    pub fn with_max_running(mut self, n: u32) -> Self {
        self.max_running = n.max(1);
        self
    }

    /// Puts tickets in classes (roles) with their own limits: `class_of[t]`
    /// is ticket `t`'s class, `limits[c]` the limit of class `c` (`None`:
    /// unlimited). Call before starting any ticket.
    ///
    /// # Panics
    /// If `class_of` does not have one entry per ticket or names a class
    /// without a limit entry; both are programming errors.
    pub fn with_classes(mut self, class_of: Vec<u16>, limits: Vec<Option<u32>>) -> Self {
        assert_eq!(class_of.len(), self.graph.len(), "one class per ticket");
        assert!(
            class_of.iter().all(|&c| (c as usize) < limits.len()),
            "every class needs a limit entry"
        );
        let n = self.graph.len();
        let ready: Vec<Ix> = self
            .ready
            .iter()
            .flat_map(|r| r.iter().map(|rk| self.by_rank[rk]))
            .collect();
        for (slot, c) in self.slots.iter_mut().zip(class_of) {
            slot.class = c;
        }
        self.class_limit = limits
            .into_iter()
            .map(|l| l.unwrap_or(u32::MAX).max(1))
            .collect();
        self.class_running = vec![0; self.class_limit.len()];
        self.ready = (0..self.class_limit.len())
            .map(|_| RankSet::new(n))
            .collect();
        for t in ready {
            let slot = self.slots[t as usize];
            self.ready[slot.class as usize].insert(slot.rank as usize);
        }
        self
    }

    /// The graph.
    pub fn graph(&self) -> &Arc<PlanGraph> {
        &self.graph
    }

    /// Status of ticket `t`.
    pub fn status(&self, t: Ix) -> Status {
        self.slots[t as usize].status
    }

    /// Number of tickets in each status.
    pub fn counts(&self) -> Counts {
        let c = &self.counts;
        Counts {
            pending: c[0],
            ready: c[1],
            running: c[2],
            paused: c[3],
            done: c[4],
            failed: c[5],
            blocked: c[6],
            skipped: c[7],
        }
    }

    /// Whether every ticket is done, failed, blocked or skipped.
    pub fn is_finished(&self) -> bool {
        self.counts[4] + self.counts[5] + self.counts[6] + self.counts[7] == self.graph.len()
    }

    /// All ready tickets in priority order (whether or not a slot is free).
    pub fn ready(&self) -> Vec<Ix> {
        let mut r: Vec<u32> = self
            .ready
            .iter()
            .flat_map(|s| s.iter().map(|x| x as u32))
            .collect();
        r.sort_unstable();
        r.into_iter().map(|rk| self.by_rank[rk as usize]).collect()
    }

    fn set(&mut self, t: Ix, to: Status) {
        let slot = &mut self.slots[t as usize];
        let (from, class, rank) = (slot.status, slot.class as usize, slot.rank as usize);
        slot.status = to;
        if from == Status::Ready {
            self.ready[class].remove(rank);
        }
        if from == Status::Running {
            self.running -= 1;
            self.class_running[class] -= 1;
        }
        if to == Status::Ready {
            self.ready[class].insert(rank);
        }
        if to == Status::Running {
            self.running += 1;
            self.class_running[class] += 1;
        }
        self.counts[from.slot()] -= 1;
        self.counts[to.slot()] += 1;
    }

    fn check(&self, t: Ix, action: &'static str, allowed: &[Status]) -> Result<(), SchedulerError> {
        let Some(from) = self.slots.get(t as usize).map(|s| s.status) else {
            return Err(SchedulerError::NoSuchTicket(t));
        };
        if allowed.contains(&from) {
            Ok(())
        } else {
            Err(SchedulerError::InvalidTransition {
                ticket: self.graph.id(t).clone(),
                from,
                action,
            })
        }
    }

    /// Starts and returns the best ready ticket that has a free slot.
    #[allow(clippy::should_implement_trait)]
    pub fn next(&mut self) -> Option<Ix> {
        if self.running >= self.max_running {
            return None;
        }
        let best = (0..self.ready.len())
            .filter(|&c| self.class_running[c] < self.class_limit[c])
            .filter_map(|c| self.ready[c].first())
            .min()?;
        let t = self.by_rank[best];
        self.set(t, Status::Running);
        Some(t)
    }

    /// Starts ready ticket `t`.
    ///
    /// # Errors
    /// When `t` is not ready or no slot is free for it.
    pub fn start(&mut self, t: Ix) -> Result<(), SchedulerError> {
        self.check(t, "start", &[Status::Ready])?;
        let c = self.slots[t as usize].class as usize;
        if self.running >= self.max_running || self.class_running[c] >= self.class_limit[c] {
            return Err(SchedulerError::NoCapacity(self.graph.id(t).clone()));
        }
        self.set(t, Status::Running);
        Ok(())
    }

    /// Marks running ticket `t` done; returns how many tickets became ready.
    ///
    /// # Errors
    /// When `t` is not running.
    pub fn complete(&mut self, t: Ix) -> Result<usize, SchedulerError> {
        self.check(t, "complete", &[Status::Running])?;
        self.set(t, Status::Done);
        let graph = Arc::clone(&self.graph);
        let mut newly = 0;
        for &s in graph.dependents(t) {
            let slot = &mut self.slots[s as usize];
            slot.waiting -= 1;
            if slot.waiting == 0 && slot.status == Status::Pending {
                self.set(s, Status::Ready);
                newly += 1;
            }
        }
        Ok(newly)
    }

    /// Marks `t` (ready, running or paused) failed; returns the tickets
    /// that became blocked (all its not-yet-final dependents, transitively).
    ///
    /// # Errors
    /// When `t` is pending or already final.
    pub fn fail(&mut self, t: Ix) -> Result<Vec<Ix>, SchedulerError> {
        self.check(t, "fail", &[Status::Ready, Status::Running, Status::Paused])?;
        self.set(t, Status::Failed);
        Ok(self.block_dependents(t))
    }

    /// Skips `t` (pending, ready or paused); its dependents become blocked,
    /// and are returned.
    ///
    /// # Errors
    /// When `t` is running or already final.
    pub fn skip(&mut self, t: Ix) -> Result<Vec<Ix>, SchedulerError> {
        self.check(t, "skip", &[Status::Pending, Status::Ready, Status::Paused])?;
        self.set(t, Status::Skipped);
        Ok(self.block_dependents(t))
    }

    /// Pauses running ticket `t` (escalated to a person); frees its slot.
    ///
    /// # Errors
    /// When `t` is not running.
    pub fn pause(&mut self, t: Ix) -> Result<(), SchedulerError> {
        self.check(t, "pause", &[Status::Running])?;
        self.set(t, Status::Paused);
        Ok(())
    }

    /// Makes paused (or running) ticket `t` ready again.
    ///
    /// # Errors
    /// When `t` is neither paused nor running.
    pub fn requeue(&mut self, t: Ix) -> Result<(), SchedulerError> {
        self.check(t, "requeue", &[Status::Paused, Status::Running])?;
        self.set(t, Status::Ready);
        Ok(())
    }

    fn block_dependents(&mut self, t: Ix) -> Vec<Ix> {
        let graph = Arc::clone(&self.graph);
        let mut blocked = Vec::new();
        let mut queue: VecDeque<Ix> = graph.dependents(t).iter().copied().collect();
        while let Some(s) = queue.pop_front() {
            if self.slots[s as usize].status.is_final() {
                continue;
            }
            self.set(s, Status::Blocked);
            blocked.push(s);
            queue.extend(graph.dependents(s).iter().copied());
        }
        blocked
    }
}
