//! Structural errors name the tickets (and batches) involved.

use orch_core::Plan;
use orch_graph::{BatchGraph, GraphError, PlanGraph};

/// A plan with tickets `(id, deps)` and optional batches `(id, tickets)`.
fn plan(tickets: &[(&str, &[&str])], batches: &[(&str, &[&str])]) -> Plan {
    let mut s = String::from(
        "name = \"p\"\ndefault_role = \"dev\"\n[agents.dev]\nbackend = { kind = \"command\", argv = [\"a\"] }\n[[phases]]\nname = \"do\"\n",
    );
    for (id, ts) in batches {
        s += &format!("[[batches]]\nid = \"{id}\"\ntitle = \"{id}\"\ntickets = {ts:?}\n");
    }
    for (id, deps) in tickets {
        s += &format!(
            "[[tickets]]\nid = \"{id}\"\ntitle = \"t\"\neffort = \"1h\"\ndepends_on = {deps:?}\n"
        );
    }
    // Parse without reference validation so the graph's own checks are exercised.
    toml::from_str(&s).unwrap()
}

#[test]
fn unknown_self_and_duplicate() {
    let err = PlanGraph::from_plan(&plan(&[("A", &["Z"])], &[])).unwrap_err();
    assert_eq!(
        err.to_string(),
        "ticket \"A\" depends on unknown ticket \"Z\""
    );
    let err = PlanGraph::from_plan(&plan(&[("A", &["A"])], &[])).unwrap_err();
    assert_eq!(err, GraphError::SelfDependency("A".parse().unwrap()));
    let err = PlanGraph::from_plan(&plan(&[("A", &[]), ("A", &[])], &[])).unwrap_err();
    assert_eq!(err.to_string(), "duplicate ticket id \"A\"");
    let err = PlanGraph::from_plan(&plan(&[], &[])).unwrap_err();
    assert_eq!(err, GraphError::Empty);
}

#[test]
fn every_cycle_is_named_as_a_path() {
    // Two separate cycles, listed so that plan order is not cycle order,
    // plus acyclic tickets hanging off them.
    let p = plan(
        &[
            ("X", &[]),
            ("C", &["A"]),
            ("A", &["B"]),
            ("B", &["C", "X"]),
            ("D", &["B"]),
            ("P", &["Q"]),
            ("Q", &["R"]),
            ("R", &["P"]),
        ],
        &[],
    );
    let err = PlanGraph::from_plan(&p).unwrap_err();
    assert_eq!(
        err.to_string(),
        "dependency cycles: C -> A -> B -> C; P -> Q -> R -> P"
    );
    let GraphError::Cycles(cycles) = err else {
        panic!()
    };
    assert_eq!(cycles.len(), 2);
    // Deterministic: same answer every time.
    assert_eq!(
        PlanGraph::from_plan(&p).unwrap_err(),
        GraphError::Cycles(cycles)
    );
}

#[test]
fn shortest_cycle_through_the_first_ticket_of_a_component() {
    // A -> B -> C -> A and A -> C -> A share a component; the shorter is reported.
    let p = plan(&[("A", &["B", "C"]), ("B", &["C"]), ("C", &["A"])], &[]);
    assert_eq!(
        PlanGraph::from_plan(&p).unwrap_err().to_string(),
        "dependency cycle: A -> C -> A"
    );
}

#[test]
fn dependency_in_a_later_batch_names_both_tickets_and_batches() {
    let p = plan(
        &[("A", &["B"]), ("B", &[])],
        &[("PR1", &["A"]), ("PR2", &["B"])],
    );
    let g = PlanGraph::from_plan(&p).unwrap();
    let err = BatchGraph::new(&p, &g).unwrap_err();
    assert_eq!(
        err.to_string(),
        "ticket \"A\" (batch \"PR1\") depends on \"B\" (batch \"PR2\"), which merges after it"
    );
}

#[test]
fn batch_depending_on_a_later_batch() {
    let mut p = plan(
        &[("A", &[]), ("B", &[])],
        &[("PR1", &["A"]), ("PR2", &["B"])],
    );
    p.batches[0].depends_on = vec!["PR2".parse().unwrap()];
    let g = PlanGraph::from_plan(&p).unwrap();
    assert_eq!(
        BatchGraph::new(&p, &g).unwrap_err(),
        GraphError::BatchDependsOnLater {
            batch: "PR1".parse().unwrap(),
            dependency: "PR2".parse().unwrap()
        }
    );
}

#[test]
fn index_errors_from_the_builder() {
    let nodes = vec![orch_graph::Node {
        id: "A".parse().unwrap(),
        effort_minutes: 1,
        priority: Default::default(),
    }];
    assert_eq!(
        PlanGraph::build(&nodes, &[(0, 5)]).unwrap_err(),
        GraphError::IndexOutOfRange { index: 5, len: 1 }
    );
}

/// A cycle through every ticket of a large plan is named, not a stack
/// overflow (the component search keeps its own stack).
fn one_big_cycle(n: usize) {
    let tickets: Vec<orch_core::Ticket> = (0..n)
        .map(|i| {
            serde_json::from_value(serde_json::json!({
                "id": format!("T{i}"),
                "title": "t",
                "effort": "1h",
                "depends_on": [format!("T{}", (i + 1) % n)],
            }))
            .unwrap()
        })
        .collect();
    let mut plan: orch_core::Plan =
        serde_json::from_value(serde_json::json!({"name": "big", "tickets": []})).unwrap();
    plan.tickets = tickets;
    let err = orch_graph::PlanGraph::from_plan(&plan).unwrap_err();
    let orch_graph::GraphError::Cycles(cycles) = err else {
        panic!("{err}");
    };
    assert_eq!(cycles.len(), 1);
    assert_eq!(cycles[0].len(), n, "the cycle goes through every ticket");
}

#[test]
fn a_cycle_of_100_000_tickets_is_named() {
    one_big_cycle(100_000);
}

#[test]
#[ignore = "a million tickets: about 20 s unoptimised; .ci/run runs it"]
fn a_cycle_of_1_000_000_tickets_is_named() {
    one_big_cycle(1_000_000);
}
