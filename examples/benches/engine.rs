//! Engine overhead: 100,000 tickets of one phase, a no-op agent, no gates,
//! a random DAG with about 4 dependencies each; in memory and on durable
//! SQLite. Criterion reports the time of one whole run; divide by 100,000
//! for the overhead per ticket (`examples/engine_scale.rs` prints it).
//!
//! ```text
//! cargo bench -p orch-examples --bench engine
//! ```

use std::sync::Arc;
use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use orch_examples::scale::run_noop;
use orch_state::fsync_latency;

const N: usize = 100_000;
const CONCURRENCY: u32 = 256;

fn engine(c: &mut Criterion) {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let mut g = c.benchmark_group("engine_100k_tickets");
    g.sample_size(10)
        .measurement_time(Duration::from_secs(30))
        .throughput(Throughput::Elements(N as u64));
    g.bench_function("memory", |b| {
        b.iter_custom(|iters| {
            (0..iters)
                .map(|_| {
                    let store = Arc::new(orch_state::MemoryStore::new());
                    rt.block_on(run_noop(N, 4, CONCURRENCY, store)).ran
                })
                .sum()
        });
    });
    let dir = tempfile::tempdir().expect("temp dir");
    // Durable SQLite's figure follows the disk's fsync latency; print it.
    match fsync_latency(dir.path(), 1000) {
        Ok(per) => println!(
            "disk: {:.0} us per 4 KiB write + fdatasync",
            per.as_secs_f64() * 1e6
        ),
        Err(e) => println!("disk: cannot measure fsync latency here: {e}"),
    }
    g.bench_function("sqlite", |b| {
        b.iter_custom(|iters| {
            (0..iters)
                .map(|i| {
                    let path = dir.path().join(format!("state-{i}-{}.db", rand_suffix()));
                    let store = Arc::new(orch_state::SqliteStore::open(&path).expect("open"));
                    rt.block_on(run_noop(N, 4, CONCURRENCY, store)).ran
                })
                .sum()
        });
    });
    g.finish();
}

fn rand_suffix() -> String {
    orch_core::EventId::random().to_string()
}

criterion_group!(benches, engine);
criterion_main!(benches);
