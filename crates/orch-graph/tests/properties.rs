//! Properties on random DAGs: scheduling order, termination, critical path
//! against brute force, makespan bounds.

use std::sync::Arc;

use orch_core::TicketStatus as Status;
use orch_graph::random::{Rng, random_dag};
use orch_graph::{Analysis, Ix, PlanGraph, Scheduler, simulate};
use proptest::prelude::*;

fn graph(n: usize, deps: u32, seed: u64) -> PlanGraph {
    let (nodes, edges) = random_dag(n, deps, seed);
    PlanGraph::build(&nodes, &edges).unwrap()
}

/// Longest path by effort, by trying every path (small graphs only).
fn brute_force_longest(g: &PlanGraph) -> u64 {
    fn longest_from(g: &PlanGraph, t: Ix) -> u64 {
        u64::from(g.effort(t))
            + g.dependents(t)
                .iter()
                .map(|&s| longest_from(g, s))
                .max()
                .unwrap_or(0)
    }
    (0..g.len() as Ix)
        .map(|t| longest_from(g, t))
        .max()
        .unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    #[test]
    fn order_holds_every_ticket_once_and_next_follows_it_among_the_ready(
        n in 1usize..120, deps in 0u32..5, seed in any::<u64>(),
    ) {
        let g = Arc::new(graph(n, deps, seed));
        let mut s = Scheduler::new(Arc::clone(&g));
        let order = s.order().to_vec();
        let mut sorted = order.clone();
        sorted.sort_unstable();
        prop_assert_eq!(sorted, (0..n as Ix).collect::<Vec<_>>());
        let rank = |t: Ix| order.iter().position(|&o| o == t);
        // Whatever is ready, the next ticket started is the earliest of
        // them in the order.
        while let Some(best) = s.ready().into_iter().min_by_key(|&t| rank(t)) {
            prop_assert_eq!(s.next(), Some(best));
            s.complete(best).unwrap();
        }
        prop_assert!(s.is_finished());
    }

    #[test]
    fn never_ready_before_dependencies_and_always_terminates(
        n in 1usize..120, deps in 0u32..5, seed in any::<u64>(), fail_every in 0u64..8, agents in 1u32..6,
    ) {
        let g = Arc::new(graph(n, deps, seed));
        let mut s = Scheduler::new(Arc::clone(&g)).with_max_running(agents);
        let mut rng = Rng::new(seed ^ 0x5eed);
        let mut running: Vec<Ix> = Vec::new();
        let mut steps = 0;
        while !s.is_finished() {
            steps += 1;
            prop_assert!(steps < 10 * n + 10, "no progress");
            while let Some(t) = s.next() {
                for &d in g.dependencies(t) {
                    prop_assert_eq!(s.status(d), Status::Done, "{} started before {}", t, d);
                }
                running.push(t);
                prop_assert!(running.len() <= agents as usize);
            }
            for t in s.ready() {
                prop_assert!(g.dependencies(t).iter().all(|&d| s.status(d) == Status::Done));
            }
            prop_assert!(!running.is_empty(), "nothing running but not finished");
            let t = running.swap_remove(rng.below(running.len() as u64) as usize);
            if fail_every > 0 && rng.below(fail_every) == 0 {
                for b in s.fail(t).unwrap() {
                    prop_assert_eq!(s.status(b), Status::Blocked);
                }
            } else {
                s.complete(t).unwrap();
            }
        }
        let c = s.counts();
        prop_assert_eq!(c.done + c.failed + c.blocked, n);
        for t in 0..n as Ix {
            prop_assert!(matches!(s.status(t), Status::Done | Status::Failed | Status::Blocked));
        }
    }

    #[test]
    fn critical_path_is_the_longest_path(n in 1usize..14, deps in 0u32..4, seed in any::<u64>()) {
        let g = graph(n, deps, seed);
        let a = Analysis::new(&g);
        prop_assert_eq!(a.length, brute_force_longest(&g));
        // The reported path is a chain whose efforts add up to the length.
        let sum: u64 = a.critical_path.iter().map(|&t| u64::from(g.effort(t))).sum();
        prop_assert_eq!(sum, a.length);
        for w in a.critical_path.windows(2) {
            prop_assert!(g.dependencies(w[1]).contains(&w[0]));
        }
        for t in 0..n as Ix {
            prop_assert!(a.earliest_start(t) + a.slack(t) + a.tail[t as usize] == a.length);
        }
    }

    #[test]
    fn makespan_respects_the_lower_bounds(n in 1usize..200, deps in 0u32..5, seed in any::<u64>(), agents in 1u32..9) {
        let g = graph(n, deps, seed);
        let a = Analysis::new(&g);
        let s = simulate(&g, &a, agents);
        let total = g.total_effort();
        prop_assert!(s.makespan >= a.length);
        prop_assert!(s.makespan * u64::from(agents) >= total);
        // Dependencies respected in the simulated schedule.
        for t in 0..n as Ix {
            for &d in g.dependencies(t) {
                prop_assert!(s.start[t as usize] >= s.start[d as usize] + u64::from(g.effort(d)));
            }
        }
        if agents == 1 {
            prop_assert_eq!(s.makespan, total);
        }
    }
}

#[test]
fn ready_order_is_priority_then_longest_remaining_path() {
    use orch_core::Priority::*;
    let node = |id: &str, e, p| orch_graph::Node {
        id: id.parse().unwrap(),
        effort_minutes: e,
        priority: p,
    };
    // B (P0) first despite being short; then C (P1, long tail via D); then A (P1).
    let g = PlanGraph::build(
        &[
            node("A", 60, P1),
            node("B", 10, P0),
            node("C", 30, P1),
            node("D", 60, P1),
        ],
        &[(3, 2)],
    )
    .unwrap();
    let mut s = Scheduler::new(Arc::new(g));
    assert_eq!(s.ready(), [1, 2, 0]);
    assert_eq!(s.next(), Some(1));
    assert_eq!(s.next(), Some(2));
    assert_eq!(s.next(), Some(0));
    assert_eq!(s.next(), None);
}

#[test]
fn role_limits_and_pause() {
    let g = Arc::new(graph(6, 0, 7));
    // Tickets 0..3 in class 0 (limit 1), 3..6 in class 1 (unlimited).
    let mut s = Scheduler::new(g).with_classes(vec![0, 0, 0, 1, 1, 1], vec![Some(1), None]);
    let mut started = Vec::new();
    while let Some(t) = s.next() {
        started.push(t);
    }
    assert_eq!(started.iter().filter(|&&t| t < 3).count(), 1, "{started:?}");
    assert_eq!(started.iter().filter(|&&t| t >= 3).count(), 3);
    let first = *started.iter().find(|&&t| t < 3).unwrap();
    s.pause(first).unwrap();
    let next = s.next().unwrap();
    assert!(next < 3 && next != first, "pausing frees the class slot");
    assert!(s.start(first).is_err());
    s.requeue(first).unwrap();
    assert_eq!(s.status(first), Status::Ready);
    let err = s.complete(first).unwrap_err();
    assert!(err.to_string().contains("cannot complete ticket"), "{err}");
}

#[test]
fn skip_blocks_dependents_transitively() {
    let node = |id: &str| orch_graph::Node {
        id: id.parse().unwrap(),
        effort_minutes: 1,
        priority: Default::default(),
    };
    let g = PlanGraph::build(
        &[node("A"), node("B"), node("C"), node("D")],
        &[(1, 0), (2, 1), (3, 0)],
    )
    .unwrap();
    let mut s = Scheduler::new(Arc::new(g));
    let mut blocked = s.skip(0).unwrap();
    blocked.sort_unstable();
    assert_eq!(blocked, [1, 2, 3]);
    assert!(s.is_finished());
    assert_eq!(s.counts().skipped, 1);
}
