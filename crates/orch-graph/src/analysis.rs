//! Critical path, slack, waves and simulated schedules.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use crate::graph::{Ix, PlanGraph};

/// Timing of every ticket with unlimited agents, in minutes.
///
/// Levels and earliest starts come with the graph's topological order (one
/// fused pass); the analysis adds one backward pass for the tails, then
/// slack and the critical path. It borrows the graph.
#[derive(Debug, Clone)]
pub struct Analysis<'g> {
    graph: &'g PlanGraph,
    /// Longest path from each ticket to the end, its own effort included.
    pub tail: Vec<u64>,
    /// Length of the critical path: the shortest possible makespan.
    pub length: u64,
    /// The critical path, first ticket first.
    pub critical_path: Vec<Ix>,
}

/// Longest path from each ticket to the end, each ticket weighing
/// `weight(t)` (its own included), pulled from the dependents in reverse
/// topological order. O(tickets + edges).
pub(crate) fn tails(g: &PlanGraph, weight: impl Fn(usize) -> u64) -> Vec<u64> {
    let (off, succs) = g.dependents_csr();
    let mut tail = vec![0u64; g.len()];
    for &t in g.topological_order().iter().rev() {
        let t = t as usize;
        let mut after = 0;
        for &s in &succs[off[t] as usize..off[t + 1] as usize] {
            after = after.max(tail[s as usize]);
        }
        tail[t] = after + weight(t);
    }
    tail
}

impl<'g> Analysis<'g> {
    /// Analyses `g`. O(tickets + edges).
    pub fn new(g: &'g PlanGraph) -> Analysis<'g> {
        let n = g.len();
        let es = &g.earliest_start;
        let (off, succs) = g.dependents_csr();
        let tail = tails(g, |t| u64::from(g.effort[t]));
        // Deterministic critical path: from the earliest-listed ticket whose
        // tail is the whole length, follow the earliest-listed dependent that
        // continues it without a gap.
        let length = tail
            .iter()
            .zip(&g.indegree)
            .filter(|(_, d)| **d == 0)
            .map(|(t, _)| *t)
            .max()
            .unwrap_or(0);
        let mut path = Vec::new();
        let mut cur = (0..n).find(|&t| g.indegree[t] == 0 && tail[t] == length);
        while let Some(t) = cur {
            path.push(t as Ix);
            let end = es[t] + u64::from(g.effort[t]);
            let rest = tail[t] - u64::from(g.effort[t]);
            cur = succs[off[t] as usize..off[t + 1] as usize]
                .iter()
                .map(|&s| s as usize)
                .filter(|&s| es[s] == end && tail[s] == rest)
                .min();
        }
        Analysis {
            graph: g,
            tail,
            length,
            critical_path: path,
        }
    }

    /// Wave of ticket `t`: 0 without dependencies, else one more than its
    /// deepest dependency.
    pub fn level(&self, t: Ix) -> u32 {
        self.graph.level[t as usize]
    }

    /// Earliest start of ticket `t`.
    pub fn earliest_start(&self, t: Ix) -> u64 {
        self.graph.earliest_start[t as usize]
    }

    /// Slack of ticket `t`: how long it can slip without delaying the end.
    pub fn slack(&self, t: Ix) -> u64 {
        self.length - self.tail[t as usize] - self.earliest_start(t)
    }

    /// Latest start of ticket `t` that does not delay the end.
    pub fn latest_start(&self, t: Ix) -> u64 {
        self.length - self.tail[t as usize]
    }

    /// Tickets per wave.
    pub fn waves(&self) -> Vec<Vec<Ix>> {
        let level = &self.graph.level;
        let depth = level.iter().max().map_or(0, |&m| m as usize + 1);
        let mut w = vec![Vec::new(); depth];
        for (t, &l) in level.iter().enumerate() {
            w[l as usize].push(t as Ix);
        }
        w
    }
}

/// Result of simulating a run with a fixed number of agents.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Schedule {
    /// Number of agents.
    pub agents: u32,
    /// When the last ticket finishes, minutes.
    pub makespan: u64,
    /// Start time of each ticket, minutes.
    pub start: Vec<u64>,
}

/// Sort key of a ready node: (priority, longest remaining path reversed).
pub(crate) type SimKey = (u8, Reverse<u64>);

/// A node of the simulation: tickets use an agent; batch merges do not.
pub(crate) struct SimGraph {
    pub(crate) effort: Vec<u64>,
    pub(crate) uses_agent: Vec<bool>,
    /// Smaller sorts first: (priority, longest remaining path reversed).
    pub(crate) key: Vec<SimKey>,
    pub(crate) succ_off: Vec<u32>,
    pub(crate) succs: Vec<u32>,
    pub(crate) indeg: Vec<u32>,
}

impl SimGraph {
    pub(crate) fn of(g: &PlanGraph, a: &Analysis) -> SimGraph {
        SimGraph {
            effort: g.effort.iter().map(|&e| u64::from(e)).collect(),
            uses_agent: vec![true; g.len()],
            key: (0..g.len())
                .map(|t| (g.priority[t] as u8, Reverse(a.tail[t])))
                .collect(),
            succ_off: g.dependents_csr().0.clone(),
            succs: g.dependents_csr().1.clone(),
            indeg: g.indegree.clone(),
        }
    }

    /// List scheduling: whenever an agent is free, start the ready ticket
    /// with the highest priority, then the longest remaining path, then the
    /// earliest in the plan. Returns (makespan, start times).
    pub(crate) fn run(&self, agents: u32) -> (u64, Vec<u64>) {
        let n = self.effort.len();
        let mut indeg = self.indeg.clone();
        let mut start = vec![0u64; n];
        let mut ready: BinaryHeap<Reverse<(SimKey, u32)>> = BinaryHeap::new();
        let mut running: BinaryHeap<Reverse<(u64, u32)>> = BinaryHeap::new();
        for (t, _) in indeg.iter().enumerate().filter(|(_, d)| **d == 0) {
            ready.push(Reverse((self.key[t], t as u32)));
        }
        let (mut now, mut busy, mut makespan) = (0u64, 0u32, 0u64);
        let agents = agents.max(1);
        loop {
            // Start what can start now. Agent-free nodes start at once.
            let mut deferred = Vec::new();
            while let Some(Reverse((k, t))) = ready.pop() {
                if self.uses_agent[t as usize] {
                    if busy == agents {
                        deferred.push(Reverse((k, t)));
                        continue;
                    }
                    busy += 1;
                }
                start[t as usize] = now;
                running.push(Reverse((now + self.effort[t as usize], t)));
            }
            ready.extend(deferred);
            let Some(Reverse((at, t))) = running.pop() else {
                break;
            };
            now = at;
            makespan = makespan.max(at);
            let mut finished = vec![t];
            while let Some(&Reverse((at2, t2))) = running.peek() {
                if at2 != now {
                    break;
                }
                running.pop();
                finished.push(t2);
            }
            for t in finished {
                if self.uses_agent[t as usize] {
                    busy -= 1;
                }
                let t = t as usize;
                for &s in &self.succs[self.succ_off[t] as usize..self.succ_off[t + 1] as usize] {
                    let d = &mut indeg[s as usize];
                    *d -= 1;
                    if *d == 0 {
                        ready.push(Reverse((self.key[s as usize], s)));
                    }
                }
            }
        }
        (makespan, start)
    }
}

/// Simulates the run with `agents` agents working in parallel (list
/// scheduling: P0 first, then the longest remaining path).
///
/// The makespan is never below the critical path nor below total effort
/// divided by the number of agents.
pub fn simulate(g: &PlanGraph, a: &Analysis, agents: u32) -> Schedule {
    let (makespan, start) = SimGraph::of(g, a).run(agents);
    Schedule {
        agents: agents.max(1),
        makespan,
        start,
    }
}
