//! [`PlanGraph`]: a plan's tickets and dependencies as a frozen DAG.

use std::fmt;
use std::sync::OnceLock;

use orch_core::{Plan, Priority, TicketId};
use petgraph::graph::{DiGraph, NodeIndex};
use rustc_hash::FxHashMap;

/// Index of a ticket in a [`PlanGraph`]: its position in the plan.
pub type Ix = u32;

/// Why a plan is not a valid DAG. Every variant names the tickets.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum GraphError {
    /// The plan has no tickets.
    #[error("the plan has no tickets")]
    Empty,
    /// Two tickets share an id.
    #[error("duplicate ticket id \"{0}\"")]
    DuplicateTicket(TicketId),
    /// A ticket depends on a ticket that does not exist.
    #[error("ticket \"{ticket}\" depends on unknown ticket \"{dependency}\"")]
    UnknownDependency {
        /// The ticket with the bad dependency.
        ticket: TicketId,
        /// The id it names.
        dependency: TicketId,
    },
    /// A ticket depends on itself.
    #[error("ticket \"{0}\" depends on itself")]
    SelfDependency(TicketId),
    /// Dependency cycles, one per strongly connected component, each as the
    /// path `A -> B -> C -> A` where `->` reads "depends on".
    #[error("dependency cycle{}: {}", if .0.len() > 1 { "s" } else { "" }, .0.iter().map(|c| render_cycle(c)).collect::<Vec<_>>().join("; "))]
    Cycles(Vec<Vec<TicketId>>),
    /// A ticket depends on a ticket whose batch merges later.
    #[error(
        "ticket \"{ticket}\" (batch \"{batch}\") depends on \"{dependency}\" (batch \"{dependency_batch}\"), which merges after it"
    )]
    BatchOrder {
        /// The ticket.
        ticket: TicketId,
        /// Its batch.
        batch: orch_core::BatchId,
        /// Its dependency.
        dependency: TicketId,
        /// The dependency's batch, which merges later.
        dependency_batch: orch_core::BatchId,
    },
    /// Batches depend on each other in a cycle, or a batch depends on a
    /// batch listed after it (batches merge in the order listed).
    #[error(
        "batch \"{batch}\" depends on batch \"{dependency}\", which is listed (and merges) after it"
    )]
    BatchDependsOnLater {
        /// The batch.
        batch: orch_core::BatchId,
        /// The batch it depends on.
        dependency: orch_core::BatchId,
    },
    /// A ticket names a batch that does not exist, or sits in two batches.
    #[error("ticket \"{ticket}\": {problem}")]
    BatchMembership {
        /// The ticket.
        ticket: TicketId,
        /// What is wrong.
        problem: String,
    },
    /// An edge given to [`PlanGraph::build`] names a ticket index that does
    /// not exist.
    #[error("edge names ticket index {index}, but there are only {len} tickets")]
    IndexOutOfRange {
        /// The bad index.
        index: Ix,
        /// Number of tickets.
        len: usize,
    },
}

/// Ids back to back, and where each ends.
struct IdArena(String, Vec<u32>);

impl<'a> FromIterator<&'a str> for IdArena {
    fn from_iter<I: IntoIterator<Item = &'a str>>(iter: I) -> Self {
        let iter = iter.into_iter();
        let mut bytes = String::with_capacity(iter.size_hint().0 * 10);
        let mut end = Vec::with_capacity(iter.size_hint().0);
        for id in iter {
            bytes.push_str(id);
            end.push(bytes.len() as u32);
        }
        IdArena(bytes, end)
    }
}

/// The reverse of a CSR adjacency: for each target, the sources.
fn reverse(n: usize, off: &[u32], targets: &[Ix]) -> (Vec<u32>, Vec<Ix>) {
    let mut rev_off = vec![0u32; n + 1];
    for &d in targets {
        rev_off[d as usize + 1] += 1;
    }
    for i in 0..n {
        rev_off[i + 1] += rev_off[i];
    }
    let mut fill: Vec<u32> = rev_off[..n].to_vec();
    let mut rev = vec![0; targets.len()];
    for t in 0..n {
        for &d in &targets[off[t] as usize..off[t + 1] as usize] {
            let slot = &mut fill[d as usize];
            rev[*slot as usize] = t as Ix;
            *slot += 1;
        }
    }
    (rev_off, rev)
}

fn render_cycle(c: &[TicketId]) -> String {
    let mut s: Vec<&str> = c.iter().map(TicketId::as_str).collect();
    if let Some(first) = c.first() {
        s.push(first.as_str());
    }
    s.join(" -> ")
}

/// A plan's tickets as a DAG, frozen in compressed sparse row form.
///
/// Tickets are numbered by their position in the plan ([`Ix`]). Building
/// checks ids, dependencies and cycles; a `PlanGraph` is always acyclic.
///
/// ```
/// use orch_graph::PlanGraph;
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
///     effort = "2h"
///     depends_on = ["A"]
/// "#).unwrap();
/// let g = PlanGraph::from_plan(&plan).unwrap();
/// assert_eq!(g.len(), 2);
/// assert_eq!(g.dependents(0), &[1]);
/// ```
#[derive(Clone)]
pub struct PlanGraph {
    /// All ids, back to back; `id_end[t]` is where ticket `t`'s id ends.
    /// One buffer instead of a million small allocations.
    id_bytes: String,
    id_end: Vec<u32>,
    pub(crate) effort: Vec<u32>,
    pub(crate) priority: Vec<Priority>,
    /// Number of dependencies of each ticket.
    pub(crate) indegree: Vec<u32>,
    /// Dependencies in CSR form (offsets, targets); built on first use when
    /// the graph was built from an edge list (the analysis does not need it).
    deps: OnceLock<(Vec<u32>, Vec<Ix>)>,
    /// Dependents in CSR form: offsets and targets.
    succ: (Vec<u32>, Vec<Ix>),
    /// A topological order (dependencies first), deterministic.
    pub(crate) topo: Vec<Ix>,
    /// Wave of each ticket, computed with the order.
    pub(crate) level: Vec<u32>,
    /// Earliest start of each ticket (unlimited agents), minutes.
    pub(crate) earliest_start: Vec<u64>,
}

impl fmt::Debug for PlanGraph {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PlanGraph")
            .field("tickets", &self.len())
            .field("edges", &self.edge_count())
            .finish()
    }
}

/// One ticket as given to [`PlanGraph::build`].
#[derive(Debug, Clone)]
pub struct Node {
    /// Its id.
    pub id: TicketId,
    /// Its effort in minutes.
    pub effort_minutes: u32,
    /// Its priority.
    pub priority: Priority,
}

impl PlanGraph {
    /// Builds the graph of a plan's tickets. Checks duplicate and unknown
    /// ids, self-dependencies and cycles (all cycles are reported).
    ///
    /// # Errors
    /// The first structural [`GraphError`] found; cycles are reported
    /// together.
    pub fn from_plan(plan: &Plan) -> Result<PlanGraph, GraphError> {
        let n = plan.tickets.len();
        let mut index: FxHashMap<&str, Ix> = FxHashMap::default();
        index.reserve(n);
        for (i, t) in plan.tickets.iter().enumerate() {
            if index.insert(t.id.as_str(), i as Ix).is_some() {
                return Err(GraphError::DuplicateTicket(t.id.clone()));
            }
        }
        let edges = plan.tickets.iter().map(|t| t.depends_on.len()).sum();
        let mut dep_off = Vec::with_capacity(n + 1);
        let mut deps = Vec::with_capacity(edges);
        dep_off.push(0);
        for (i, t) in plan.tickets.iter().enumerate() {
            for d in &t.depends_on {
                match index.get(d.as_str()) {
                    Some(&j) if j as usize == i => {
                        return Err(GraphError::SelfDependency(t.id.clone()));
                    }
                    Some(&j) => deps.push(j),
                    None => {
                        return Err(GraphError::UnknownDependency {
                            ticket: t.id.clone(),
                            dependency: d.clone(),
                        });
                    }
                }
            }
            dep_off.push(deps.len() as u32);
        }
        drop(index);
        let succ = reverse(n, &dep_off, &deps);
        let indegree = dep_off.windows(2).map(|w| w[1] - w[0]).collect();
        Self::from_parts(
            IdArena::from_iter(plan.tickets.iter().map(|t| t.id.as_str())),
            plan.tickets.iter().map(|t| t.effort.minutes()).collect(),
            plan.tickets.iter().map(|t| t.priority).collect(),
            indegree,
            OnceLock::from((dep_off, deps)),
            succ,
        )
    }

    /// Builds a graph from tickets and `(ticket, dependency)` index pairs,
    /// for programs that hold their work items elsewhere.
    ///
    /// # Errors
    /// As [`PlanGraph::from_plan`], and [`GraphError::IndexOutOfRange`].
    pub fn build(nodes: &[Node], edges: &[(Ix, Ix)]) -> Result<PlanGraph, GraphError> {
        let n = nodes.len();
        let mut indegree = vec![0u32; n];
        let mut off = vec![0u32; n + 1];
        for &(t, d) in edges {
            let (ti, di) = (t as usize, d as usize);
            if ti >= n || di >= n {
                return Err(GraphError::IndexOutOfRange {
                    index: t.max(d),
                    len: n,
                });
            }
            if t == d {
                return Err(GraphError::SelfDependency(nodes[ti].id.clone()));
            }
            indegree[ti] += 1;
            off[di + 1] += 1;
        }
        for i in 0..n {
            off[i + 1] += off[i];
        }
        let mut fill: Vec<u32> = off[..n].to_vec();
        let mut succs = vec![0; edges.len()];
        for &(t, d) in edges {
            let slot = &mut fill[d as usize];
            succs[*slot as usize] = t;
            *slot += 1;
        }
        drop(fill);
        Self::from_parts(
            IdArena::from_iter(nodes.iter().map(|nd| nd.id.as_str())),
            nodes.iter().map(|nd| nd.effort_minutes).collect(),
            nodes.iter().map(|nd| nd.priority).collect(),
            indegree,
            OnceLock::new(),
            (off, succs),
        )
    }

    fn from_parts(
        ids: IdArena,
        effort: Vec<u32>,
        priority: Vec<Priority>,
        indegree: Vec<u32>,
        deps: OnceLock<(Vec<u32>, Vec<Ix>)>,
        succ: (Vec<u32>, Vec<Ix>),
    ) -> Result<PlanGraph, GraphError> {
        let n = ids.1.len();
        if n == 0 {
            return Err(GraphError::Empty);
        }
        let g = PlanGraph {
            level: Vec::new(),
            earliest_start: Vec::new(),
            id_bytes: ids.0,
            id_end: ids.1,
            effort,
            priority,
            indegree,
            deps,
            succ,
            topo: Vec::with_capacity(n),
        };
        // Minutes fit in 32 bits unless the whole plan exceeds 8,000 years
        // of effort; the narrower record keeps more of the hot data in cache.
        if g.total_effort() <= u64::from(u32::MAX) {
            g.order::<u32>()
        } else {
            g.order::<u64>()
        }
    }

    /// Kahn's algorithm fused with the forward pass: when a ticket is taken,
    /// its level and earliest start are final and it pushes them to its
    /// dependents. One packed record per ticket means one cache miss per
    /// edge, and the ready tickets are kept on a stack, so a ticket is taken
    /// right after its last dependency released it, while its record is
    /// still in cache. Deterministic for the same plan.
    fn order<M>(mut self) -> Result<PlanGraph, GraphError>
    where
        M: Copy + Ord + Default + From<u32> + std::ops::Add<Output = M> + Into<u64>,
    {
        #[derive(Clone, Copy)]
        struct Fwd<M> {
            es: M,
            pending: u32,
            level: u32,
        }
        let n = self.len();
        let mut topo = std::mem::take(&mut self.topo);
        let (off, succs) = &self.succ;
        let mut fwd: Vec<Fwd<M>> = (0..n)
            .map(|t| Fwd {
                es: M::default(),
                pending: self.indegree[t],
                level: 0,
            })
            .collect();
        topo.extend((0..n as Ix).filter(|&t| fwd[t as usize].pending == 0));
        let mut head = 0;
        while head < topo.len() {
            let v = topo[head] as usize;
            head += 1;
            let finish = fwd[v].es + M::from(self.effort[v]);
            let next_level = fwd[v].level + 1;
            for &s in &succs[off[v] as usize..off[v + 1] as usize] {
                let s = s as usize;
                let f = &mut fwd[s];
                f.es = f.es.max(finish);
                f.pending -= 1;
                f.level = f.level.max(next_level);
                if f.pending == 0 {
                    topo.push(s as Ix);
                }
            }
        }
        self.topo = topo;
        if self.topo.len() < n {
            let pending: Vec<bool> = fwd.iter().map(|f| f.pending > 0).collect();
            return Err(GraphError::Cycles(self.cycles(&pending)));
        }
        self.level = fwd.iter().map(|f| f.level).collect();
        self.earliest_start = fwd.iter().map(|f| f.es.into()).collect();
        Ok(self)
    }

    /// One cycle per strongly connected component among the tickets Kahn
    /// could not order, deterministic: components by smallest plan index,
    /// each cycle the shortest one through that ticket.
    fn cycles(&self, pending: &[bool]) -> Vec<Vec<TicketId>> {
        let residual: Vec<Ix> = (0..self.len() as Ix)
            .filter(|&t| pending[t as usize])
            .collect();
        let mut node_of: FxHashMap<Ix, NodeIndex> = FxHashMap::default();
        let mut pg: DiGraph<Ix, ()> = DiGraph::new();
        for &t in &residual {
            node_of.insert(t, pg.add_node(t));
        }
        for &t in &residual {
            for &d in self.dependencies(t) {
                if let Some(&dn) = node_of.get(&d) {
                    pg.add_edge(node_of[&t], dn, ());
                }
            }
        }
        // Kosaraju's search keeps its own stack (Tarjan's in petgraph
        // recurses, and a cycle of 100,000 tickets overflowed the stack).
        let mut sccs: Vec<Vec<Ix>> = petgraph::algo::kosaraju_scc(&pg)
            .into_iter()
            .filter(|c| c.len() > 1)
            .map(|c| {
                let mut v: Vec<Ix> = c.into_iter().map(|n| pg[n]).collect();
                v.sort_unstable();
                v
            })
            .collect();
        sccs.sort_unstable_by_key(|c| c[0]);
        sccs.iter()
            .map(|comp| {
                let start = comp[0];
                let member = |x: Ix| comp.binary_search(&x).is_ok();
                // BFS from `start` along "depends on" edges back to `start`.
                let mut parent: FxHashMap<Ix, Ix> = FxHashMap::default();
                let mut queue = std::collections::VecDeque::from([start]);
                let mut end = None;
                'bfs: while let Some(v) = queue.pop_front() {
                    let mut next: Vec<Ix> = self
                        .dependencies(v)
                        .iter()
                        .copied()
                        .filter(|&d| member(d))
                        .collect();
                    next.sort_unstable();
                    for d in next {
                        if d == start {
                            end = Some(v);
                            break 'bfs;
                        }
                        if let std::collections::hash_map::Entry::Vacant(e) = parent.entry(d) {
                            e.insert(v);
                            queue.push_back(d);
                        }
                    }
                }
                let mut path = Vec::new();
                let mut v = end.unwrap_or(start);
                while v != start {
                    path.push(v);
                    v = parent[&v];
                }
                path.push(start);
                path.reverse();
                path.into_iter().map(|i| self.ticket_id(i)).collect()
            })
            .collect()
    }

    /// Number of tickets.
    pub fn len(&self) -> usize {
        self.id_end.len()
    }

    /// Always false: an empty plan is refused when building.
    pub fn is_empty(&self) -> bool {
        self.id_end.is_empty()
    }

    /// Number of dependency edges.
    pub fn edge_count(&self) -> usize {
        self.succ.1.len()
    }

    /// The id of ticket `t`.
    pub fn id(&self, t: Ix) -> &str {
        let t = t as usize;
        let start = if t == 0 {
            0
        } else {
            self.id_end[t - 1] as usize
        };
        &self.id_bytes[start..self.id_end[t] as usize]
    }

    /// The id of ticket `t` as a [`TicketId`].
    pub fn ticket_id(&self, t: Ix) -> TicketId {
        // Every id entered the graph as a validated TicketId.
        TicketId::new(self.id(t)).expect("ids in a PlanGraph were validated on entry")
    }

    /// The index of the ticket with this id (linear scan; keep your own map
    /// for many look-ups).
    pub fn index_of(&self, id: &str) -> Option<Ix> {
        (0..self.len() as Ix).find(|&t| self.id(t) == id)
    }

    /// Effort of ticket `t`, minutes.
    pub fn effort(&self, t: Ix) -> u32 {
        self.effort[t as usize]
    }

    /// Priority of ticket `t`.
    pub fn priority(&self, t: Ix) -> Priority {
        self.priority[t as usize]
    }

    /// The tickets `t` depends on.
    pub fn dependencies(&self, t: Ix) -> &[Ix] {
        let (off, deps) = self
            .deps
            .get_or_init(|| reverse(self.len(), &self.succ.0, &self.succ.1));
        let t = t as usize;
        &deps[off[t] as usize..off[t + 1] as usize]
    }

    /// Number of tickets `t` depends on.
    pub fn dependency_count(&self, t: Ix) -> usize {
        self.indegree[t as usize] as usize
    }

    /// The tickets that depend on `t`.
    pub fn dependents(&self, t: Ix) -> &[Ix] {
        let (off, succs) = &self.succ;
        let t = t as usize;
        &succs[off[t] as usize..off[t + 1] as usize]
    }

    /// The dependents of every ticket in CSR form: `(offsets, targets)`.
    pub(crate) fn dependents_csr(&self) -> &(Vec<u32>, Vec<Ix>) {
        &self.succ
    }

    /// A topological order: every ticket after its dependencies;
    /// deterministic for the same plan.
    pub fn topological_order(&self) -> &[Ix] {
        &self.topo
    }

    /// Sum of all efforts, minutes.
    pub fn total_effort(&self) -> u64 {
        self.effort.iter().map(|&e| u64::from(e)).sum()
    }

    /// The graph as a petgraph `DiGraph` (node weight: ticket id; edge
    /// from a ticket to each of its dependencies), for petgraph's
    /// algorithms. Node indices equal [`Ix`].
    pub fn to_petgraph(&self) -> DiGraph<TicketId, ()> {
        let mut g = DiGraph::with_capacity(self.len(), self.edge_count());
        for t in 0..self.len() as Ix {
            g.add_node(self.ticket_id(t));
        }
        for t in 0..self.len() as Ix {
            for &d in self.dependencies(t) {
                g.add_edge(NodeIndex::new(t as usize), NodeIndex::new(d as usize), ());
            }
        }
        g
    }

    /// Bytes of heap memory held by the graph (ids included).
    pub fn heap_bytes(&self) -> usize {
        use std::mem::size_of;
        self.id_bytes.capacity()
            + self.id_end.capacity() * 4
            + self.effort.capacity() * 4
            + self.priority.capacity() * size_of::<Priority>()
            + self.indegree.capacity() * 4
            + self
                .deps
                .get()
                .map_or(0, |(o, d)| (o.capacity() + d.capacity()) * 4)
            + (self.succ.0.capacity() + self.succ.1.capacity()) * 4
            + self.topo.capacity() * 4
            + self.level.capacity() * 4
            + self.earliest_start.capacity() * 8
    }
}
