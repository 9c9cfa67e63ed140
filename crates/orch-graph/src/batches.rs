//! Batches (pull requests): their DAG, critical path and merged-in-order schedule.

use std::cmp::Reverse;

use orch_core::{BatchId, Plan};
use rustc_hash::FxHashMap;

use crate::analysis::{Analysis, SimGraph};
use crate::graph::{GraphError, Ix, PlanGraph};

const NONE: u32 = u32::MAX;

/// The batches of a plan as a DAG, in merge (list) order.
///
/// Batch `b` depends on batch `c` when one of `b`'s tickets depends on one
/// of `c`'s, or `b` says so with `depends_on`. Batches merge in the order
/// listed, so every dependency must point to an earlier batch.
#[derive(Debug, Clone)]
pub struct BatchGraph {
    /// Batch ids in merge order.
    pub ids: Vec<BatchId>,
    /// Batch of each ticket (by [`Ix`]); `None` for unbatched tickets.
    pub of_ticket: Vec<Option<u32>>,
    /// Batches each batch depends on, ascending.
    pub deps: Vec<Vec<u32>>,
    /// Sum of the tickets' effort per batch, minutes.
    pub effort: Vec<u64>,
    /// Critical path inside each batch with unlimited agents, minutes.
    pub span: Vec<u64>,
}

impl BatchGraph {
    /// Builds the batch DAG of `plan` (whose tickets `g` was built from).
    ///
    /// # Errors
    /// [`GraphError::BatchOrder`] when a ticket depends on a ticket of a
    /// later batch, [`GraphError::BatchDependsOnLater`] for a `depends_on`
    /// naming a later (or unknown) batch, [`GraphError::BatchMembership`]
    /// for unknown batches and tickets in two batches.
    pub fn new(plan: &Plan, g: &PlanGraph) -> Result<BatchGraph, GraphError> {
        let index: FxHashMap<&str, u32> = plan
            .batches
            .iter()
            .enumerate()
            .map(|(i, b)| (b.id.as_str(), i as u32))
            .collect();
        let tix: FxHashMap<&str, Ix> = plan
            .tickets
            .iter()
            .enumerate()
            .map(|(i, t)| (t.id.as_str(), i as Ix))
            .collect();
        let mut of_ticket = vec![NONE; g.len()];
        for (bi, b) in plan.batches.iter().enumerate() {
            for t in &b.tickets {
                let Some(&ti) = tix.get(t.as_str()) else {
                    return Err(GraphError::BatchMembership {
                        ticket: t.clone(),
                        problem: format!("listed in batch \"{}\" but not defined", b.id),
                    });
                };
                if of_ticket[ti as usize] != NONE {
                    return Err(GraphError::BatchMembership {
                        ticket: t.clone(),
                        problem: "listed in two batches".into(),
                    });
                }
                of_ticket[ti as usize] = bi as u32;
            }
        }
        for (ti, t) in plan.tickets.iter().enumerate() {
            if let Some(b) = &t.batch {
                let Some(&bi) = index.get(b.as_str()) else {
                    return Err(GraphError::BatchMembership {
                        ticket: t.id.clone(),
                        problem: format!("in unknown batch \"{b}\""),
                    });
                };
                if of_ticket[ti] != NONE && of_ticket[ti] != bi {
                    return Err(GraphError::BatchMembership {
                        ticket: t.id.clone(),
                        problem: format!("says batch \"{b}\" but another batch lists it"),
                    });
                }
                of_ticket[ti] = bi;
            }
        }
        let nb = plan.batches.len();
        let mut deps: Vec<Vec<u32>> = vec![Vec::new(); nb];
        for (bi, b) in plan.batches.iter().enumerate() {
            for d in &b.depends_on {
                match index.get(d.as_str()) {
                    Some(&di) if (di as usize) < bi => deps[bi].push(di),
                    _ => {
                        return Err(GraphError::BatchDependsOnLater {
                            batch: b.id.clone(),
                            dependency: d.clone(),
                        });
                    }
                }
            }
        }
        for t in 0..g.len() as Ix {
            let bt = of_ticket[t as usize];
            if bt == NONE {
                continue;
            }
            for &d in g.dependencies(t) {
                let bd = of_ticket[d as usize];
                if bd == NONE || bd == bt {
                    continue;
                }
                if bd > bt {
                    return Err(GraphError::BatchOrder {
                        ticket: g.ticket_id(t),
                        batch: plan.batches[bt as usize].id.clone(),
                        dependency: g.ticket_id(d),
                        dependency_batch: plan.batches[bd as usize].id.clone(),
                    });
                }
                deps[bt as usize].push(bd);
            }
        }
        for d in &mut deps {
            d.sort_unstable();
            d.dedup();
        }
        // Effort and in-batch span.
        let mut effort = vec![0u64; nb];
        let mut span = vec![0u64; nb];
        let mut local_es = vec![0u64; g.len()];
        for &t in g.topological_order() {
            let b = of_ticket[t as usize];
            if b == NONE {
                continue;
            }
            let es = g
                .dependencies(t)
                .iter()
                .filter(|&&d| of_ticket[d as usize] == b)
                .map(|&d| local_es[d as usize] + u64::from(g.effort(d)))
                .max()
                .unwrap_or(0);
            local_es[t as usize] = es;
            let ef = es + u64::from(g.effort(t));
            effort[b as usize] += u64::from(g.effort(t));
            span[b as usize] = span[b as usize].max(ef);
        }
        Ok(BatchGraph {
            ids: plan.batches.iter().map(|b| b.id.clone()).collect(),
            of_ticket: of_ticket
                .into_iter()
                .map(|b| (b != NONE).then_some(b))
                .collect(),
            deps,
            effort,
            span,
        })
    }

    /// The critical path of the batch DAG, weighting each batch by its span,
    /// and its length in minutes.
    pub fn critical_path(&self) -> (Vec<u32>, u64) {
        let nb = self.ids.len();
        let mut finish = vec![0u64; nb];
        let mut via = vec![NONE; nb];
        for b in 0..nb {
            let (before, from) = self.deps[b]
                .iter()
                .map(|&d| (finish[d as usize], d))
                .max_by_key(|&(f, d)| (f, Reverse(d)))
                .unwrap_or((0, NONE));
            finish[b] = before + self.span[b];
            via[b] = from;
        }
        let Some(last) = (0..nb).max_by_key(|&b| (finish[b], Reverse(b))) else {
            return (Vec::new(), 0);
        };
        let mut path = vec![last as u32];
        let mut cur = via[last];
        while cur != NONE {
            path.push(cur);
            cur = via[cur as usize];
        }
        path.reverse();
        (path, finish[last])
    }

    /// Simulated makespan with `agents` agents when batches merge in order:
    /// a batch merges once its tickets are done and the batch before it has
    /// merged, and a ticket starts only after the batches its batch depends
    /// on have merged (work builds on merged code).
    pub fn merged_in_order(&self, g: &PlanGraph, a: &Analysis, agents: u32) -> u64 {
        let n = g.len();
        let nb = self.ids.len();
        let mut sim = SimGraph::of(g, a);
        // Extra nodes n..n+nb are the merges. Rebuild the successor lists.
        let mut succ: Vec<Vec<u32>> = (0..n).map(|t| g.dependents(t as Ix).to_vec()).collect();
        succ.resize(n + nb, Vec::new());
        let mut indeg = sim.indeg.clone();
        indeg.resize(n + nb, 0);
        for (t, b) in self.of_ticket.iter().enumerate() {
            if let Some(b) = *b {
                let m = n + b as usize;
                succ[t].push(m as u32);
                indeg[m] += 1;
                for &d in &self.deps[b as usize] {
                    succ[n + d as usize].push(t as u32);
                    indeg[t] += 1;
                }
            }
        }
        for b in 1..nb {
            succ[n + b - 1].push((n + b) as u32);
            indeg[n + b] += 1;
        }
        sim.effort.resize(n + nb, 0);
        sim.uses_agent.resize(n + nb, false);
        sim.key.resize(n + nb, (0, Reverse(u64::MAX)));
        sim.indeg = indeg;
        sim.succ_off = Vec::with_capacity(n + nb + 1);
        sim.succs = Vec::new();
        sim.succ_off.push(0);
        for s in succ {
            sim.succs.extend(s);
            sim.succ_off.push(sim.succs.len() as u32);
        }
        sim.run(agents).0
    }
}
