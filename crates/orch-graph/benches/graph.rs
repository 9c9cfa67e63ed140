//! Benchmarks for issue #3's figures:
//!
//! * build + validate (ids, dependencies, cycles) + full analysis (waves,
//!   earliest start, slack, critical path) of a random DAG of 1,000,000
//!   tickets and about 4,000,000 edges, from index pairs and from a `Plan`
//!   with string ids;
//! * ready-set transitions (start + complete) over that graph.
//!
//! Run: `cargo bench -p orch-graph --bench graph`. Memory per ticket is
//! printed once at start.

use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use orch_graph::random::{random_dag, random_plan};
use orch_graph::{Analysis, PlanGraph, Scheduler};

const N: usize = 1_000_000;
const DEPS: u32 = 4;

fn bench(c: &mut Criterion) {
    let (nodes, edges) = random_dag(N, DEPS, 42);
    let plan = random_plan(N, DEPS, 42);
    {
        let g = PlanGraph::build(&nodes, &edges).unwrap();
        let a = Analysis::new(&g);
        let analysis_bytes = a.tail.capacity() * 8 + a.critical_path.capacity() * 4;
        eprintln!(
            "graph: {} tickets, {} edges; graph {:.0} B/ticket + analysis {:.0} B/ticket = {:.0} B/ticket; critical path {} tickets, {} min",
            g.len(),
            g.edge_count(),
            g.heap_bytes() as f64 / N as f64,
            analysis_bytes as f64 / N as f64,
            (g.heap_bytes() + analysis_bytes) as f64 / N as f64,
            a.critical_path.len(),
            a.length
        );
    }

    let mut group = c.benchmark_group("analysis_1M");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(8));
    group.bench_function("build_validate_analyze_from_edges", |b| {
        b.iter(|| {
            let g = PlanGraph::build(&nodes, &edges).unwrap();
            let a = Analysis::new(&g);
            black_box((a.length, a.slack(0), a.critical_path.len()))
        });
    });
    group.bench_function("build_validate_analyze_from_plan", |b| {
        b.iter(|| {
            let g = PlanGraph::from_plan(&plan).unwrap();
            let a = Analysis::new(&g);
            black_box((a.length, a.slack(0), a.critical_path.len()))
        });
    });
    group.finish();

    let g = Arc::new(PlanGraph::build(&nodes, &edges).unwrap());
    let mut group = c.benchmark_group("scheduler_1M");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(8));
    group.throughput(Throughput::Elements(2 * N as u64));
    group.bench_function("start_complete_all", |b| {
        b.iter_batched(
            || Scheduler::new(Arc::clone(&g)).with_max_running(64),
            |mut s| {
                let mut running = Vec::with_capacity(64);
                loop {
                    while let Some(t) = s.next() {
                        running.push(t);
                    }
                    let Some(t) = running.pop() else { break };
                    s.complete(t).unwrap();
                }
                assert!(s.is_finished());
                black_box(s.counts())
            },
            criterion::BatchSize::LargeInput,
        );
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
