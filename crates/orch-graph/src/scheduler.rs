//! The ready-set scheduler the engine drives.

use std::cmp::Reverse;
use std::collections::VecDeque;
use std::sync::Arc;

use orch_core::TicketStatus;
use serde::{Deserialize, Serialize};

use crate::analysis::Analysis;
use crate::graph::{Ix, PlanGraph};
use crate::rankset::RankSet;

/// One counter per [`TicketStatus`].
const STATUSES: usize = 8;

fn counter(s: TicketStatus) -> usize {
    s as usize
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
        from: TicketStatus,
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

/// Everything a transition touches about one ticket, in one 8-byte record.
#[derive(Debug, Clone, Copy)]
struct Slot {
    waiting: u32,
    class: u16,
    status: TicketStatus,
}

/// Tracks which tickets may run, in priority order, under concurrency
/// limits.
///
/// Ready tickets come out P0 first, then by longest remaining path (the
/// ticket's effort plus the longest chain of dependents after it), then in
/// plan order, so the same plan always schedules the same way. Every
/// transition costs amortized O(1) plus the dependency edges it touches.
///
/// Internally tickets are renumbered by rank and the scheduler keeps its own
/// dependents adjacency in that numbering, so dispatching walks memory
/// nearly in order.
///
/// ```
/// use std::sync::Arc;
/// use orch_core::TicketStatus;
/// use orch_graph::{PlanGraph, Scheduler};
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
/// assert_eq!(s.status(b), TicketStatus::Done);
/// ```
#[derive(Debug, Clone)]
pub struct Scheduler {
    graph: Arc<PlanGraph>,
    /// Per ticket, indexed by rank.
    slots: Vec<Slot>,
    /// Rank → ticket.
    by_rank: Vec<Ix>,
    /// Ticket → rank.
    rank_of: Vec<u32>,
    /// Dependents by rank, in CSR form.
    succ_off: Vec<u32>,
    succs: Vec<u32>,
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
        let mut rank_of = vec![0u32; n];
        for (r, &t) in by_rank.iter().enumerate() {
            rank_of[t as usize] = r as u32;
        }
        let mut succ_off = Vec::with_capacity(n + 1);
        let mut succs = Vec::with_capacity(graph.edge_count());
        succ_off.push(0);
        let slots: Vec<Slot> = by_rank
            .iter()
            .map(|&t| {
                succs.extend(graph.dependents(t).iter().map(|&s| rank_of[s as usize]));
                succ_off.push(succs.len() as u32);
                Slot {
                    waiting: graph.dependency_count(t) as u32,
                    class: 0,
                    status: TicketStatus::Pending,
                }
            })
            .collect();
        let mut s = Scheduler {
            slots,
            by_rank,
            rank_of,
            succ_off,
            succs,
            ready: vec![RankSet::new(n)],
            class_limit: vec![u32::MAX],
            class_running: vec![0],
            max_running: u32::MAX,
            running: 0,
            counts: [0; STATUSES],
            graph,
        };
        s.counts[counter(TicketStatus::Pending)] = n;
        for r in 0..n as u32 {
            if s.slots[r as usize].waiting == 0 {
                s.set(r, TicketStatus::Ready);
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
        let ready: Vec<usize> = self.ready.iter().flat_map(RankSet::iter).collect();
        for (t, c) in class_of.into_iter().enumerate() {
            self.slots[self.rank_of[t] as usize].class = c;
        }
        self.class_limit = limits
            .into_iter()
            .map(|l| l.unwrap_or(u32::MAX).max(1))
            .collect();
        self.class_running = vec![0; self.class_limit.len()];
        self.ready = (0..self.class_limit.len())
            .map(|_| RankSet::new(n))
            .collect();
        for r in ready {
            self.ready[self.slots[r].class as usize].insert(r);
        }
        self
    }

    /// The graph.
    pub fn graph(&self) -> &Arc<PlanGraph> {
        &self.graph
    }

    /// Every ticket in priority order: the order [`Scheduler::next`] takes
    /// ready tickets in.
    pub fn order(&self) -> &[Ix] {
        &self.by_rank
    }

    /// TicketStatus of ticket `t`.
    pub fn status(&self, t: Ix) -> TicketStatus {
        self.slots[self.rank_of[t as usize] as usize].status
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

    /// Moves the ticket of rank `rank` to `to`.
    fn set(&mut self, rank: u32, to: TicketStatus) {
        let slot = &mut self.slots[rank as usize];
        let (from, class, rank) = (slot.status, slot.class as usize, rank as usize);
        slot.status = to;
        if from == TicketStatus::Ready {
            self.ready[class].remove(rank);
        }
        if from == TicketStatus::Running {
            self.running -= 1;
            self.class_running[class] -= 1;
        }
        if to == TicketStatus::Ready {
            self.ready[class].insert(rank);
        }
        if to == TicketStatus::Running {
            self.running += 1;
            self.class_running[class] += 1;
        }
        self.counts[counter(from)] -= 1;
        self.counts[counter(to)] += 1;
    }

    /// The rank of `t` when its status is one of `allowed`.
    fn check(
        &self,
        t: Ix,
        action: &'static str,
        allowed: &[TicketStatus],
    ) -> Result<u32, SchedulerError> {
        let Some(&rank) = self.rank_of.get(t as usize) else {
            return Err(SchedulerError::NoSuchTicket(t));
        };
        let from = self.slots[rank as usize].status;
        if allowed.contains(&from) {
            Ok(rank)
        } else {
            Err(SchedulerError::InvalidTransition {
                ticket: self.graph.ticket_id(t),
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
        self.set(best as u32, TicketStatus::Running);
        Some(self.by_rank[best])
    }

    /// Starts ready ticket `t`.
    ///
    /// # Errors
    /// When `t` is not ready or no slot is free for it.
    pub fn start(&mut self, t: Ix) -> Result<(), SchedulerError> {
        let r = self.check(t, "start", &[TicketStatus::Ready])?;
        let c = self.slots[r as usize].class as usize;
        if self.running >= self.max_running || self.class_running[c] >= self.class_limit[c] {
            return Err(SchedulerError::NoCapacity(self.graph.ticket_id(t)));
        }
        self.set(r, TicketStatus::Running);
        Ok(())
    }

    /// Marks running ticket `t` done; returns how many tickets became ready.
    ///
    /// # Errors
    /// When `t` is not running.
    pub fn complete(&mut self, t: Ix) -> Result<usize, SchedulerError> {
        let r = self.check(t, "complete", &[TicketStatus::Running])? as usize;
        self.set(r as u32, TicketStatus::Done);
        let mut newly = 0;
        for i in self.succ_off[r] as usize..self.succ_off[r + 1] as usize {
            let s = self.succs[i];
            let slot = &mut self.slots[s as usize];
            slot.waiting -= 1;
            if slot.waiting == 0 && slot.status == TicketStatus::Pending {
                self.set(s, TicketStatus::Ready);
                newly += 1;
            }
        }
        Ok(newly)
    }

    /// Marks ready ticket `t` done without running it (restoring a run
    /// from its journal); returns how many tickets became ready.
    ///
    /// # Errors
    /// When `t` is not ready.
    pub fn restore_done(&mut self, t: Ix) -> Result<usize, SchedulerError> {
        let r = self.check(t, "restore", &[TicketStatus::Ready])?;
        self.set(r, TicketStatus::Running);
        self.complete(t)
    }

    /// Marks `t` (ready, running or paused) failed; returns the tickets
    /// that became blocked (all its not-yet-final dependents, transitively).
    ///
    /// # Errors
    /// When `t` is pending or already final.
    pub fn fail(&mut self, t: Ix) -> Result<Vec<Ix>, SchedulerError> {
        let r = self.check(
            t,
            "fail",
            &[
                TicketStatus::Ready,
                TicketStatus::Running,
                TicketStatus::AwaitingDecision,
            ],
        )?;
        self.set(r, TicketStatus::Failed);
        Ok(self.block_dependents(r))
    }

    /// Skips `t` (pending, ready or paused); its dependents become blocked,
    /// and are returned.
    ///
    /// # Errors
    /// When `t` is running or already final.
    pub fn skip(&mut self, t: Ix) -> Result<Vec<Ix>, SchedulerError> {
        let r = self.check(
            t,
            "skip",
            &[
                TicketStatus::Pending,
                TicketStatus::Ready,
                TicketStatus::AwaitingDecision,
            ],
        )?;
        self.set(r, TicketStatus::Skipped);
        Ok(self.block_dependents(r))
    }

    /// Pauses running (or ready) ticket `t` (escalated to a person); frees
    /// its slot.
    ///
    /// # Errors
    /// When `t` is neither running nor ready.
    pub fn pause(&mut self, t: Ix) -> Result<(), SchedulerError> {
        let r = self.check(t, "pause", &[TicketStatus::Running, TicketStatus::Ready])?;
        self.set(r, TicketStatus::AwaitingDecision);
        Ok(())
    }

    /// Makes paused (or running) ticket `t` ready again.
    ///
    /// # Errors
    /// When `t` is neither paused nor running.
    pub fn requeue(&mut self, t: Ix) -> Result<(), SchedulerError> {
        let r = self.check(
            t,
            "requeue",
            &[TicketStatus::AwaitingDecision, TicketStatus::Running],
        )?;
        self.set(r, TicketStatus::Ready);
        Ok(())
    }

    /// Blocks every not-yet-final ticket that depends, transitively, on the
    /// ticket of rank `rank`; returns them.
    fn block_dependents(&mut self, rank: u32) -> Vec<Ix> {
        let mut blocked = Vec::new();
        let mut queue: VecDeque<u32> = VecDeque::from([rank]);
        while let Some(r) = queue.pop_front() {
            let r = r as usize;
            for i in self.succ_off[r] as usize..self.succ_off[r + 1] as usize {
                let s = self.succs[i];
                if self.slots[s as usize].status.is_final() {
                    continue;
                }
                self.set(s, TicketStatus::Blocked);
                blocked.push(self.by_rank[s as usize]);
                queue.push_back(s);
            }
        }
        blocked
    }
}
