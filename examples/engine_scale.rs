//! Engine overhead: N tickets of one phase, a no-op agent, no gates, on a
//! random DAG with about 4 dependencies each (or DEPS); in memory and on durable
//! SQLite. Prints tickets per second and microseconds per ticket, and on
//! SQLite the disk's fsync latency measured around the run.
//!
//! ```text
//! cargo run --release -p orch-examples --example engine_scale -- [N] [CONCURRENCY] [memory|sqlite|both] [DEPS]
//! ```

use std::sync::Arc;

use orch_examples::scale::run_noop;
use orch_state::fsync_latency;

fn main() -> Result<(), orch_examples::Error> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let n: usize = args.first().map_or(Ok(100_000), |s| s.parse())?;
    let conc: u32 = args.get(1).map_or(Ok(256), |s| s.parse())?;
    let rt = if std::env::var_os("ORCH_BENCH_CURRENT_THREAD").is_some() {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
    } else {
        tokio::runtime::Runtime::new()?
    };
    let report = |what: &str, r: orch_examples::scale::NoopRun| {
        let d = r.ran;
        println!(
            "{what}: {n} tickets in {:.3} s = {:.0} tickets/s, {:.2} us per ticket (engine built in {:.0} ms before)",
            d.as_secs_f64(),
            n as f64 / d.as_secs_f64(),
            d.as_secs_f64() * 1e6 / n as f64,
            r.built.as_secs_f64() * 1e3
        );
        if let Some(f) = r.faults {
            println!(
                "  {f} page faults during the run ({:.2} per ticket)",
                f as f64 / n as f64
            );
        }
    };
    let which = args.get(2).map_or("both", String::as_str);
    let deps: u32 = args.get(3).map_or(Ok(4), |s| s.parse())?;
    if which != "sqlite" {
        let mem = rt.block_on(run_noop(
            n,
            deps,
            conc,
            Arc::new(orch_state::MemoryStore::new()),
        ));
        report("in-memory", mem);
    }
    if which == "memory" {
        return Ok(());
    }
    let dir = std::env::temp_dir().join(format!("orch-engine-scale-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let store = Arc::new(orch_state::SqliteStore::open(dir.join("state.db"))?);
    let before = fsync_latency(&dir, 500);
    let sql = rt.block_on(run_noop(n, deps, conc, store.clone()));
    let after = fsync_latency(&dir, 500);
    report("sqlite", sql);
    match (before, after) {
        (Ok(before), Ok(after)) => println!(
            "disk: {:.0} us per 4 KiB write + fdatasync (before the run {:.0}, after {:.0})",
            (before + after).as_secs_f64() * 1e6 / 2.0,
            before.as_secs_f64() * 1e6,
            after.as_secs_f64() * 1e6
        ),
        (Err(e), _) | (_, Err(e)) => println!("disk: cannot measure fsync latency here: {e}"),
    }
    let stats = store.stats();
    println!(
        "sqlite writer: {} commits ({} appends), busy {:.3} s of the run's {:.3} s",
        stats.commits(),
        stats.appends(),
        stats.busy().as_secs_f64(),
        sql.ran.as_secs_f64()
    );
    if std::env::var_os("ORCH_BENCH_KEEP").is_none() {
        std::fs::remove_dir_all(&dir)?;
    }
    Ok(())
}
