//! Benchmarks for issue #6's figures:
//!
//! * fsync latency of the disk (4 KiB write + fsync), the physical limit,
//!   and one appender's ratio to it measured back to back;
//! * durable appends per second on SQLite, one appender (one commit, one
//!   fsync per event) and 64 concurrent appenders (group commit);
//! * reopen a journal of 1,000,000 events (100,000 tickets) and fold it;
//! * and, for the state files a run keeps up to date, one periodic write
//!   of the summaries for a finished run of 100,000 tickets in 100 batches
//!   (`views` below: rendering them was quadratic in the plan's size).
//!
//! * the same two append figures on PostgreSQL (`pg_append`), when
//!   `ORCH_TEST_DATABASE_URL` names a database (in a schema of its own,
//!   dropped after).
//!
//! Run: `cargo bench -p orch-state --bench append`. The database lives in a
//! temporary directory next to the target directory (same disk as CI).

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use orch_core::*;
use orch_state::SqliteStore;

fn tmpdir() -> tempfile::TempDir {
    let base = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/bench-tmp");
    std::fs::create_dir_all(&base).unwrap();
    tempfile::tempdir_in(base).unwrap()
}

fn output(i: u64) -> Event {
    Event::now(EventKind::AgentOutput {
        agent: "bench-1".parse().unwrap(),
        text: format!("line {i}: compiling orch-core v0.1.0"),
    })
}

/// The events of one ticket's life: 10 per ticket.
fn ticket_life(t: u64, out: &mut Vec<Event>) {
    let ticket: TicketId = format!("T{t:06}").parse().unwrap();
    let phase: PhaseName = "implement".parse().unwrap();
    let agent: AgentId = format!("T{t:06}.implement.1").parse().unwrap();
    out.push(Event::now(EventKind::TicketReady {
        ticket: ticket.clone(),
    }));
    out.push(Event::now(EventKind::PhaseStarted {
        ticket: ticket.clone(),
        phase: phase.clone(),
        attempt: 1,
    }));
    out.push(Event::now(EventKind::AgentStarted {
        ticket: ticket.clone(),
        phase: phase.clone(),
        attempt: 1,
        agent: agent.clone(),
        role: "dev".parse().unwrap(),
        backend: "claude_code".into(),
        worker: None,
    }));
    for i in 0..3 {
        out.push(Event::now(EventKind::AgentOutput {
            agent: agent.clone(),
            text: format!("step {i}"),
        }));
    }
    out.push(Event::now(EventKind::AgentFinished {
        ticket: ticket.clone(),
        agent,
        success: true,
        summary: "done".into(),
        usage: Usage {
            input_tokens: 1200,
            output_tokens: 300,
            cost_usd: 0.01,
        },
        session_id: Some("s".into()),
        error: None,
    }));
    out.push(Event::now(EventKind::GateFinished {
        scope: GateScope::Phase {
            ticket: ticket.clone(),
            phase: phase.clone(),
            attempt: 1,
        },
        report: Box::new(GateReport {
            gate: "cargo test".into(),
            status: GateStatus::Passed,
            reason: "12 passed, 0 skipped".into(),
            evidence: Evidence {
                tests: Some(TestCounts {
                    passed: 12,
                    failed: 0,
                    skipped: 0,
                }),
                exit_code: Some(0),
                ..Evidence::default()
            },
            duration_ms: 4000,
            excerpt: String::new(),
            children: vec![],
        }),
    }));
    out.push(Event::now(EventKind::PhasePassed {
        ticket: ticket.clone(),
        phase,
        attempt: 1,
        checkpoint: Some("0123456789abcdef0123456789abcdef01234567".into()),
        checkpoint_ms: Some(30),
    }));
    out.push(Event::now(EventKind::TicketDone { ticket }));
}

/// Mean time of one 4 KiB appending write + fdatasync, over `n`, in a
/// fresh directory next to the benchmark's databases.
fn fsync_latency(n: u32) -> Duration {
    orch_state::fsync_latency(tmpdir().path(), n).unwrap()
}

/// `TASKS` tasks appending `per_task` single events each to one run.
async fn appenders(store: Arc<dyn StateStore>, run: &RunId, per_task: u64) {
    let mut tasks = Vec::new();
    for t in 0..TASKS {
        let (store, run) = (Arc::clone(&store), run.clone());
        tasks.push(tokio::spawn(async move {
            for i in 0..per_task {
                store
                    .append(&run, &[output(t * 1_000_000 + i)])
                    .await
                    .unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
}

const TASKS: u64 = 64;
const PER_TASK: u64 = 200;
#[cfg(feature = "postgres")]
const PG_PER_TASK: u64 = 10;

/// `pg_append`: one appender and 64 on PostgreSQL.
#[cfg(feature = "postgres")]
fn pg(c: &mut Criterion, rt: &tokio::runtime::Runtime) {
    let Ok(base) = std::env::var("ORCH_TEST_DATABASE_URL") else {
        eprintln!("pg_append skipped: set ORCH_TEST_DATABASE_URL to a PostgreSQL database");
        return;
    };
    let schema = format!("orch_bench_{}", std::process::id());
    let admin = |sql: String| {
        rt.block_on(async {
            let (client, conn) = tokio_postgres::connect(&base, tokio_postgres::NoTls)
                .await
                .unwrap();
            tokio::spawn(conn);
            client.batch_execute(&sql).await.unwrap();
        })
    };
    admin(format!("CREATE SCHEMA {schema}"));
    let sep = if base.contains('?') { '&' } else { '?' };
    let url = format!("{base}{sep}options=-c%20search_path%3D{schema}");
    let store: Arc<dyn StateStore> =
        Arc::new(rt.block_on(orch_state::PgStore::connect(&url)).unwrap());
    let mut g = c.benchmark_group("pg_append");
    g.sample_size(10).measurement_time(Duration::from_secs(6));
    g.throughput(Throughput::Elements(1));
    g.bench_function("single_appender", |b| {
        let run: RunId = "single".parse().unwrap();
        let mut i = 0;
        b.to_async(rt).iter(|| {
            i += 1;
            let e = output(i);
            let (store, run) = (&store, &run);
            async move { black_box(store.append(run, &[e]).await.unwrap()) }
        });
    });
    // One connection takes the appends in turn, so fewer per task than
    // on SQLite keeps a sample short.
    g.throughput(Throughput::Elements(TASKS * PG_PER_TASK));
    g.bench_function("64_appenders", |b| {
        let run: RunId = "many".parse().unwrap();
        b.to_async(rt)
            .iter(|| appenders(Arc::clone(&store), &run, PG_PER_TASK));
    });
    g.finish();
    admin(format!("DROP SCHEMA {schema} CASCADE"));
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();

    // The physical limit: one 4 KiB write + fsync.
    let per = fsync_latency(2000);
    eprintln!(
        "fsync latency: {:.1} µs per 4 KiB write + fdatasync ({:.0} fsyncs/s)",
        per.as_secs_f64() * 1e6,
        1.0 / per.as_secs_f64()
    );
    // The ratio to that limit, measured back to back (the disk's latency
    // drifts by tens of percent between minutes): fsync, appends, fsync.
    {
        let dir = tmpdir();
        let store = SqliteStore::open(dir.path().join("ratio.db")).unwrap();
        let run: RunId = "ratio".parse().unwrap();
        let n = 2000;
        let before = fsync_latency(n);
        let start = Instant::now();
        rt.block_on(async {
            for i in 0..u64::from(n) {
                store.append(&run, &[output(i)]).await.unwrap();
            }
        });
        let append = start.elapsed() / n;
        let after = fsync_latency(n);
        let fsync = (before + after) / 2;
        eprintln!(
            "one appender: {:.1} µs per durable append, fsync {:.1} µs (before {:.1}, after {:.1}) = {:.0}% of one event per fsync",
            append.as_secs_f64() * 1e6,
            fsync.as_secs_f64() * 1e6,
            before.as_secs_f64() * 1e6,
            after.as_secs_f64() * 1e6,
            100.0 * fsync.as_secs_f64() / append.as_secs_f64()
        );
    }

    let mut g = c.benchmark_group("sqlite_append");
    g.sample_size(10).measurement_time(Duration::from_secs(6));
    g.throughput(Throughput::Elements(1));
    g.bench_function("single_appender", |b| {
        let dir = tmpdir();
        let store = SqliteStore::open(dir.path().join("b.db")).unwrap();
        let run: RunId = "bench".parse().unwrap();
        let mut i = 0;
        b.to_async(&rt).iter(|| {
            i += 1;
            let e = output(i);
            let (store, run) = (&store, &run);
            async move { black_box(store.append(run, &[e]).await.unwrap()) }
        });
    });
    g.throughput(Throughput::Elements(TASKS * PER_TASK));
    g.bench_function("64_appenders_group_commit", |b| {
        let dir = tmpdir();
        let store = Arc::new(SqliteStore::open(dir.path().join("b.db")).unwrap());
        let run: RunId = "bench".parse().unwrap();
        b.to_async(&rt)
            .iter(|| appenders(Arc::clone(&store) as Arc<dyn StateStore>, &run, PER_TASK));
        eprintln!(
            "group commit: {} appends in {} commits ({:.1} per fsync)",
            store.stats().appends(),
            store.stats().commits(),
            store.stats().appends() as f64 / store.stats().commits().max(1) as f64
        );
    });
    g.finish();
    #[cfg(feature = "postgres")]
    pg(c, &rt);

    // 1,000,000 events of 100,000 tickets.
    let dir = tmpdir();
    let path = dir.path().join("big.db");
    let run: RunId = "big".parse().unwrap();
    rt.block_on(async {
        let store = SqliteStore::open(&path).unwrap();
        let mut batch = Vec::with_capacity(10_000);
        for t in 0..100_000u64 {
            ticket_life(t, &mut batch);
            if batch.len() >= 10_000 {
                store.append(&run, &batch).await.unwrap();
                batch.clear();
            }
        }
        store.append(&run, &batch).await.unwrap();
    });
    eprintln!(
        "journal of 1,000,000 events: {} MiB on disk",
        std::fs::metadata(&path).unwrap().len() >> 20
    );
    let mut g = c.benchmark_group("sqlite_reopen");
    g.sample_size(10).measurement_time(Duration::from_secs(20));
    g.bench_function("reopen_and_fold_1M_events", |b| {
        b.to_async(&rt).iter(|| {
            let (path, run) = (path.clone(), run.clone());
            async move {
                let store = SqliteStore::open(&path).unwrap();
                let s = store.state(&run).await.unwrap();
                assert_eq!(s.events, 1_000_000);
                black_box(s.count(TicketStatus::Done))
            }
        });
    });
    g.finish();
}

/// A plan of `n` tickets in batches of 1,000, and the state of a run that
/// finished them all (ten events each, a gate run with test counts each).
fn finished_run(n: u64) -> (Plan, RunState) {
    let mut plan = Plan::from_toml_str(
        r#"
        name = "views-bench"
        default_role = "dev"
        agents.dev.backend = { kind = "custom", name = "noop" }
        [[phases]]
        name = "implement"
        [[batches]]
        id = "B0"
        title = "batch"
        tickets = []
        [[tickets]]
        id = "T000000"
        title = "a ticket with a title"
        effort = "1h"
        "#,
    )
    .unwrap();
    let (ticket, batch) = (plan.tickets[0].clone(), plan.batches[0].clone());
    plan.tickets.clear();
    plan.batches.clear();
    let mut events = Vec::with_capacity(n as usize * 10);
    for t in 0..n {
        let mut tk = ticket.clone();
        tk.id = format!("T{t:06}").parse().unwrap();
        if t % 1000 == 0 {
            let mut b = batch.clone();
            b.id = format!("B{}", t / 1000).parse().unwrap();
            plan.batches.push(b);
        }
        tk.batch = Some(format!("B{}", t / 1000).parse().unwrap());
        plan.tickets.push(tk);
        ticket_life(t, &mut events);
    }
    (plan, RunState::fold(&events))
}

fn views(c: &mut Criterion) {
    let (plan, state) = finished_run(100_000);
    let dir = tmpdir();
    let none: [&TicketId; 0] = [];
    let mut g = c.benchmark_group("views");
    g.sample_size(10);
    // As the run's observer does every 200 ms or more: the summaries
    // (rewritten only if they changed), no ticket files.
    g.bench_function("summaries_100k_tickets_100_batches", |b| {
        b.iter(|| {
            orch_state::views::write_views_changed(dir.path(), &state, Some(&plan), none).unwrap()
        });
    });
    g.finish();
}

criterion_group!(benches, bench, views);
criterion_main!(benches);
