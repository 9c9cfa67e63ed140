//! The analysis of a plan as a serializable report, a text table, Mermaid
//! and Graphviz DOT.

use std::collections::HashSet;
use std::fmt::Write as _;

use orch_core::{BatchId, Plan, Priority, TicketId, format_minutes as hours};
use serde::{Deserialize, Serialize};

use crate::analysis::{Analysis, simulate};
use crate::batches::BatchGraph;
use crate::graph::{GraphError, Ix, PlanGraph};

/// One ticket's figures. Times are minutes from the start of the run,
/// with unlimited agents.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TicketRow {
    /// The ticket.
    pub id: TicketId,
    /// Priority.
    pub priority: Priority,
    /// Effort, minutes.
    pub effort_minutes: u32,
    /// Its wave (0: no dependencies).
    pub wave: u32,
    /// Earliest start.
    pub earliest_start: u64,
    /// Earliest finish.
    pub earliest_finish: u64,
    /// Latest start that does not delay the end.
    pub latest_start: u64,
    /// How long it can slip.
    pub slack: u64,
    /// On the critical path.
    pub critical: bool,
    /// Its batch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch: Option<BatchId>,
    /// What it depends on.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub depends_on: Vec<TicketId>,
}

/// The makespan with a given number of agents.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Makespan {
    /// Agents working in parallel.
    pub agents: u32,
    /// Simulated wall-clock minutes.
    pub minutes: u64,
    /// Total effort / (agents × makespan): how busy the agents are.
    pub utilization: f64,
}

/// One batch's figures.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatchRow {
    /// The batch.
    pub id: BatchId,
    /// Its title.
    pub title: String,
    /// Number of tickets.
    pub tickets: usize,
    /// Sum of its tickets' effort, minutes.
    pub effort_minutes: u64,
    /// Its internal critical path with unlimited agents, minutes.
    pub span_minutes: u64,
    /// Batches it depends on.
    pub depends_on: Vec<BatchId>,
    /// On the batch critical path.
    pub critical: bool,
}

/// Batch-level analysis.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BatchReport {
    /// Batches in merge order.
    pub batches: Vec<BatchRow>,
    /// The batch critical path (batches weighted by span).
    pub critical_path: Vec<BatchId>,
    /// Its length, minutes.
    pub critical_path_minutes: u64,
    /// Makespans when batches merge in order, for 1..=k agents.
    pub merged_in_order: Vec<Makespan>,
}

/// Everything orch can tell about a plan before running it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// The plan's name.
    pub plan: String,
    /// Number of tickets.
    pub tickets: usize,
    /// Number of dependency edges.
    pub dependencies: usize,
    /// Sum of all efforts, minutes.
    pub total_effort_minutes: u64,
    /// The critical path, first ticket first.
    pub critical_path: Vec<TicketId>,
    /// Its length: the shortest possible makespan, minutes.
    pub critical_path_minutes: u64,
    /// Tickets per wave.
    pub waves: Vec<Vec<TicketId>>,
    /// Makespan for 1..=k agents.
    pub makespans: Vec<Makespan>,
    /// Per-ticket figures, in plan order.
    pub rows: Vec<TicketRow>,
    /// Batch-level analysis, when the plan has batches.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batches: Option<BatchReport>,
}

fn makespan(agents: u32, minutes: u64, total: u64) -> Makespan {
    Makespan {
        agents,
        minutes,
        utilization: if minutes == 0 {
            1.0
        } else {
            total as f64 / (f64::from(agents) * minutes as f64)
        },
    }
}

/// Analyses `plan`: validates its graph and batches, then computes waves,
/// critical path, slack, and makespans for 1..=`max_agents` agents.
///
/// ```
/// let plan = orch_core::Plan::from_path(concat!(env!("CARGO_MANIFEST_DIR"),
///     "/../../examples/plans/production-readiness.toml")).unwrap();
/// let report = orch_graph::analyze(&plan, 6).unwrap();
/// assert_eq!(report.critical_path_minutes, 960);
/// println!("{}", report.text());
/// ```
///
/// # Errors
/// [`GraphError`] for structural problems (cycles, unknown or duplicate
/// ids, batch order).
pub fn analyze(plan: &Plan, max_agents: u32) -> Result<Report, GraphError> {
    let g = PlanGraph::from_plan(plan)?;
    let bg = if plan.batches.is_empty() {
        None
    } else {
        Some(BatchGraph::new(plan, &g)?)
    };
    let a = Analysis::new(&g);
    let total = g.total_effort();
    let critical: HashSet<Ix> = a.critical_path.iter().copied().collect();
    let ids = |v: &[Ix]| v.iter().map(|&t| g.ticket_id(t)).collect::<Vec<_>>();
    let rows = (0..g.len() as Ix)
        .map(|t| TicketRow {
            id: g.ticket_id(t),
            priority: g.priority(t),
            effort_minutes: g.effort(t),
            wave: a.level(t),
            earliest_start: a.earliest_start(t),
            earliest_finish: a.earliest_start(t) + u64::from(g.effort(t)),
            latest_start: a.latest_start(t),
            slack: a.slack(t),
            critical: critical.contains(&t),
            batch: bg
                .as_ref()
                .and_then(|b| b.of_ticket[t as usize].map(|i| b.ids[i as usize].clone())),
            depends_on: ids(g.dependencies(t)),
        })
        .collect();
    let max_agents = max_agents.max(1);
    let makespans = (1..=max_agents)
        .map(|k| makespan(k, simulate(&g, &a, k).makespan, total))
        .collect();
    let batches = bg.map(|bg| {
        let (path, len) = bg.critical_path();
        let on_path: HashSet<u32> = path.iter().copied().collect();
        BatchReport {
            batches: plan
                .batches
                .iter()
                .enumerate()
                .map(|(i, b)| BatchRow {
                    id: b.id.clone(),
                    title: b.title.clone(),
                    tickets: bg
                        .of_ticket
                        .iter()
                        .filter(|x| **x == Some(i as u32))
                        .count(),
                    effort_minutes: bg.effort[i],
                    span_minutes: bg.span[i],
                    depends_on: bg.deps[i]
                        .iter()
                        .map(|&d| bg.ids[d as usize].clone())
                        .collect(),
                    critical: on_path.contains(&(i as u32)),
                })
                .collect(),
            critical_path: path.iter().map(|&b| bg.ids[b as usize].clone()).collect(),
            critical_path_minutes: len,
            merged_in_order: (1..=max_agents)
                .map(|k| makespan(k, bg.merged_in_order(&g, &a, k), total))
                .collect(),
        }
    });
    Ok(Report {
        plan: plan.name.clone(),
        tickets: g.len(),
        dependencies: g.edge_count(),
        total_effort_minutes: total,
        critical_path: ids(&a.critical_path),
        critical_path_minutes: a.length,
        waves: a.waves().iter().map(|w| ids(w)).collect(),
        makespans,
        rows,
        batches,
    })
}

fn node_id(id: &str) -> String {
    id.chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect()
}

impl Report {
    /// A readable summary with tables.
    pub fn text(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "Plan {:?}: {} tickets, {} dependencies, {} of agent effort",
            self.plan,
            self.tickets,
            self.dependencies,
            hours(self.total_effort_minutes)
        );
        let path: Vec<&str> = self.critical_path.iter().map(TicketId::as_str).collect();
        let _ = writeln!(
            s,
            "Critical path ({}, the shortest possible wall clock): {}",
            hours(self.critical_path_minutes),
            path.join(" -> ")
        );
        let _ = writeln!(s, "Waves:");
        for (i, w) in self.waves.iter().enumerate() {
            let ids: Vec<&str> = w.iter().map(TicketId::as_str).collect();
            let _ = writeln!(s, "  {i}: {}", ids.join(", "));
        }
        let _ = writeln!(
            s,
            "\n{:<12} {:>3} {:>7} {:>5} {:>8} {:>8} {:>8} {:>8}  batch",
            "ticket", "pri", "effort", "wave", "start", "finish", "latest", "slack"
        );
        for r in &self.rows {
            let _ = writeln!(
                s,
                "{:<12} {:>3} {:>7} {:>5} {:>8} {:>8} {:>8} {:>8}  {}{}",
                r.id.as_str(),
                format!("{:?}", r.priority),
                hours(u64::from(r.effort_minutes)),
                r.wave,
                hours(r.earliest_start),
                hours(r.earliest_finish),
                hours(r.latest_start),
                hours(r.slack),
                r.batch.as_ref().map_or("", BatchId::as_str),
                if r.critical { "  *critical*" } else { "" }
            );
        }
        let _ = writeln!(s, "\nSimulated wall clock with N agents:");
        let _ = writeln!(s, "{:>7} {:>9} {:>12}", "agents", "makespan", "utilization");
        let mut prev = None;
        for m in &self.makespans {
            let note = if prev == Some(m.minutes) {
                "  (no gain)"
            } else {
                ""
            };
            prev = Some(m.minutes);
            let _ = writeln!(
                s,
                "{:>7} {:>9} {:>11.0}%{note}",
                m.agents,
                hours(m.minutes),
                m.utilization * 100.0
            );
        }
        if let Some(b) = &self.batches {
            let _ = writeln!(s, "\nBatches (merge order):");
            let _ = writeln!(
                s,
                "{:<8} {:<22} {:>7} {:>7} {:>6}  after",
                "batch", "title", "tickets", "effort", "span"
            );
            for r in &b.batches {
                let deps: Vec<&str> = r.depends_on.iter().map(BatchId::as_str).collect();
                let _ = writeln!(
                    s,
                    "{:<8} {:<22} {:>7} {:>7} {:>6}  {}{}",
                    r.id.as_str(),
                    r.title,
                    r.tickets,
                    hours(r.effort_minutes),
                    hours(r.span_minutes),
                    deps.join(", "),
                    if r.critical { "  *critical*" } else { "" }
                );
            }
            let path: Vec<&str> = b.critical_path.iter().map(BatchId::as_str).collect();
            let _ = writeln!(
                s,
                "Batch critical path ({}): {}",
                hours(b.critical_path_minutes),
                path.join(" -> ")
            );
            let _ = writeln!(s, "Wall clock when batches merge in order:");
            for m in &b.merged_in_order {
                let _ = writeln!(s, "{:>7} agents {:>9}", m.agents, hours(m.minutes));
            }
        }
        s
    }

    /// (dependency, dependent) pairs along the critical path.
    fn critical_edges(&self) -> HashSet<(&TicketId, &TicketId)> {
        self.critical_path
            .windows(2)
            .map(|w| (&w[0], &w[1]))
            .collect()
    }

    /// A Mermaid flowchart; critical tickets and edges are highlighted.
    pub fn mermaid(&self) -> String {
        let crit_edges_set = self.critical_edges();
        let mut s = String::from("flowchart LR\n");
        for r in &self.rows {
            let _ = writeln!(
                s,
                "  {}[\"{} ({})\"]",
                node_id(r.id.as_str()),
                r.id,
                hours(u64::from(r.effort_minutes))
            );
        }
        let mut edge = 0;
        let mut crit_edges = Vec::new();
        for r in &self.rows {
            for d in &r.depends_on {
                let _ = writeln!(
                    s,
                    "  {} --> {}",
                    node_id(d.as_str()),
                    node_id(r.id.as_str())
                );
                if crit_edges_set.contains(&(d, &r.id)) {
                    crit_edges.push(edge.to_string());
                }
                edge += 1;
            }
        }
        s.push_str("  classDef critical fill:#fdd,stroke:#c00,stroke-width:2px\n");
        for id in &self.critical_path {
            let _ = writeln!(s, "  class {} critical", node_id(id.as_str()));
        }
        if !crit_edges.is_empty() {
            let _ = writeln!(
                s,
                "  linkStyle {} stroke:#c00,stroke-width:3px",
                crit_edges.join(",")
            );
        }
        s
    }

    /// A Graphviz DOT digraph; critical tickets and edges in red.
    pub fn dot(&self) -> String {
        let crit: HashSet<&TicketId> = self.critical_path.iter().collect();
        let crit_edges = self.critical_edges();
        let mut s = String::from("digraph plan {\n  rankdir=LR;\n  node [shape=box];\n");
        for r in &self.rows {
            let style = if crit.contains(&r.id) {
                ", color=red, penwidth=2"
            } else {
                ""
            };
            let _ = writeln!(
                s,
                "  \"{}\" [label=\"{}\\n{}\"{style}];",
                r.id,
                r.id,
                hours(u64::from(r.effort_minutes))
            );
        }
        for r in &self.rows {
            for d in &r.depends_on {
                let style = if crit_edges.contains(&(d, &r.id)) {
                    " [color=red, penwidth=2]"
                } else {
                    ""
                };
                let _ = writeln!(s, "  \"{d}\" -> \"{}\"{style};", r.id);
            }
        }
        s.push_str("}\n");
        s
    }
}
