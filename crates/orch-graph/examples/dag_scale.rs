//! Times build + validate + full analysis of a random DAG and reports
//! memory; optionally writes the graph for `benches/compare_python.py`.
//!
//! ```text
//! cargo run --release -p orch-graph --example dag_scale -- [N] [DEPS] [SEED] [EDGE_FILE]
//! ```
//!
//! The edge file holds `n m`, then n efforts (minutes), then m lines
//! `ticket dependency` (0-based indices).

use std::io::Write;
use std::time::Instant;

use orch_graph::random::random_dag;
use orch_graph::{Analysis, PlanGraph};

fn peak_rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let arg = |i: usize, default: u64| -> Result<u64, Box<dyn std::error::Error>> {
        Ok(match args.get(i) {
            Some(s) => s
                .parse()
                .map_err(|_| format!("argument {} ({s:?}) must be a number", i + 1))?,
            None => default,
        })
    };
    let n = arg(0, 1_000_000)? as usize;
    let deps = arg(1, 4)? as u32;
    let seed = arg(2, 42)?;
    let rss_before = peak_rss_kib();
    let (nodes, edges) = random_dag(n, deps, seed);
    let rss_input = peak_rss_kib();
    let mut best = f64::MAX;
    let mut summary = String::new();
    let mut graph_bytes = 0;
    for _ in 0..5 {
        let t = Instant::now();
        let g = PlanGraph::build(&nodes, &edges)?;
        let a = Analysis::new(&g);
        let waves = a.waves().len();
        let secs = t.elapsed().as_secs_f64();
        if secs < best {
            best = secs;
            graph_bytes = g.heap_bytes() + a.tail.capacity() * 8;
            summary = format!(
                "{} waves, critical path {} tickets / {} min",
                waves,
                a.critical_path.len(),
                a.length
            );
        }
    }
    println!("tickets {n} edges {} ({summary})", edges.len());
    println!("rust build+validate+analysis: best of 5 {:.3} s", best);
    println!(
        "memory: graph + analysis {:.0} bytes/ticket (heap); peak RSS {} MiB (input {} MiB)",
        graph_bytes as f64 / n as f64,
        peak_rss_kib().unwrap_or(0) / 1024,
        rss_input
            .unwrap_or(0)
            .saturating_sub(rss_before.unwrap_or(0))
            / 1024,
    );
    if let Some(path) = args.get(3) {
        let mut f = std::io::BufWriter::new(std::fs::File::create(path)?);
        writeln!(f, "{} {}", n, edges.len())?;
        for nd in &nodes {
            writeln!(f, "{}", nd.effort_minutes)?;
        }
        for (t, d) in &edges {
            writeln!(f, "{t} {d}")?;
        }
        println!("wrote {path}");
    }
    Ok(())
}
