//! Random plans for benchmarks and property tests (deterministic by seed).

use orch_core::{Priority, TicketId};

use crate::graph::{Ix, Node};

/// SplitMix64: a tiny, good-enough deterministic generator.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator with this seed.
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number in `0..n` (`n > 0`).
    pub fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
    }
}

/// A random DAG of `n` tickets with about `avg_deps` dependencies each,
/// returned as nodes and `(ticket, dependency)` edges.
///
/// Tickets are numbered in a random order, so plan order is not a
/// topological order. Efforts are 5 minutes to 8 hours, priorities P0-P3.
pub fn random_dag(n: usize, avg_deps: u32, seed: u64) -> (Vec<Node>, Vec<(Ix, Ix)>) {
    let mut rng = Rng::new(seed);
    // perm[k] = the ticket index of the k-th ticket in a topological order.
    let mut perm: Vec<Ix> = (0..n as Ix).collect();
    for i in (1..n).rev() {
        perm.swap(i, rng.below(i as u64 + 1) as usize);
    }
    let nodes = (0..n)
        .map(|i| Node {
            id: TicketId::new(format!("T{i:07}")).expect("generated ids are valid"),
            effort_minutes: 5 + rng.below(476) as u32,
            priority: [Priority::P0, Priority::P1, Priority::P2, Priority::P3]
                [rng.below(4) as usize],
        })
        .collect();
    let mut edges = Vec::with_capacity(n * avg_deps as usize);
    for k in 1..n {
        let deps = rng.below(2 * u64::from(avg_deps) + 1);
        let mut prev = Ix::MAX;
        for _ in 0..deps {
            // Mostly local dependencies, like real backlogs, some far.
            let back = if rng.below(4) == 0 {
                1 + rng.below(k as u64)
            } else {
                1 + rng.below((k as u64).min(1000))
            };
            let d = perm[k - back as usize];
            if d != prev {
                edges.push((perm[k], d));
                prev = d;
            }
        }
    }
    (nodes, edges)
}

/// The same as [`random_dag`], as a [`Plan`](orch_core::Plan) with one phase
/// and one role, for end-to-end benchmarks.
pub fn random_plan(n: usize, avg_deps: u32, seed: u64) -> orch_core::Plan {
    let (nodes, edges) = random_dag(n, avg_deps, seed);
    let mut deps: Vec<Vec<TicketId>> = vec![Vec::new(); n];
    for (t, d) in edges {
        deps[t as usize].push(nodes[d as usize].id.clone());
    }
    // A plan may not list a dependency twice.
    for d in &mut deps {
        d.sort_unstable();
        d.dedup();
    }
    let mut plan: orch_core::Plan = serde_json::from_str(
        r#"{"name": "random", "default_role": "dev",
            "agents": {"dev": {"backend": {"kind": "command", "argv": ["true"]}}},
            "phases": [{"name": "do"}]}"#,
    )
    .expect("static plan parses");
    plan.tickets = nodes
        .into_iter()
        .zip(deps)
        .map(|(nd, depends_on)| {
            let mut t = orch_core::Ticket::new(
                nd.id,
                String::new(),
                orch_core::Effort::from_minutes(nd.effort_minutes),
            );
            t.priority = nd.priority;
            t.depends_on = depends_on;
            t
        })
        .collect();
    plan
}
