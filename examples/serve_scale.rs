//! `orch serve` on a run of N tickets (default 10,000): the real `orch
//! serve` process, its event stream followed while the run goes (a random
//! DAG, 3 dependencies a ticket, 16 at once, an agent that takes 5 ms, the
//! SQLite journal), then the run's page loaded once it is done: bytes, time,
//! the server's peak memory, and, where Chromium and chromedriver are
//! installed, the browser's time to first paint. Beside them, the peer a
//! page without the stream would poll: the run's folded state as JSON.
//!
//! ```text
//! cargo build --release -p orch-examples --bin orch
//! cargo run --release -p orch-examples --example serve_scale -- [N]
//! ```

use std::io::BufRead;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use orch_core::{
    Agent, AgentContext, AgentError, AgentOutcome, AgentTask, Cancellation, RunOutcome, SharedDir,
    StateStore,
};
use orch_examples::Error;

/// An agent that takes a few milliseconds and succeeds.
struct Brief;

#[async_trait]
impl Agent for Brief {
    fn backend(&self) -> &str {
        "brief"
    }
    async fn run(&self, _: AgentTask, _: &AgentContext) -> Result<AgentOutcome, AgentError> {
        tokio::time::sleep(Duration::from_millis(5)).await;
        Ok(AgentOutcome {
            success: true,
            ..AgentOutcome::default()
        })
    }
}

/// Kills the server when dropped.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Server {
    /// The process's peak and current resident memory, in MiB.
    fn memory(&self) -> (f64, f64) {
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", self.0.id())).unwrap_or_default();
        let kib = |key: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(key))
                .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
                .unwrap_or(f64::NAN)
        };
        (kib("VmHWM:") / 1024.0, kib("VmRSS:") / 1024.0)
    }
}

fn mib(bytes: usize) -> String {
    if bytes < 1 << 20 {
        format!("{:.1} KiB", bytes as f64 / 1024.0)
    } else {
        format!("{:.2} MiB", bytes as f64 / (1024.0 * 1024.0))
    }
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    let n: usize = std::env::args().nth(1).map_or(Ok(10_000), |s| s.parse())?;
    let orch = std::env::current_exe()?
        .parent()
        .and_then(|examples| examples.parent())
        .map(|release| release.join("orch"))
        .filter(|p| p.is_file())
        .ok_or("build the orch command first: cargo build --release -p orch-examples --bin orch")?;
    let dir = tempfile::tempdir()?;
    let state = dir.path().join("state");
    let store: Arc<dyn StateStore> = orch_examples::open_store(&state)?;
    let plan = orch_graph::random::random_plan(n, 3, 42);
    let plan_file = dir.path().join("plan.json");
    std::fs::write(&plan_file, serde_json::to_vec(&plan)?)?;

    let mut server = Command::new(&orch);
    server
        .args(["serve", "--bind", "127.0.0.1:0", "--state"])
        .arg(&state)
        .arg("--plan")
        .arg(&plan_file)
        .env_remove("ORCH_DATABASE_URL")
        .stdout(Stdio::piped());
    let mut server = Server(server.spawn()?);
    let mut out = std::io::BufReader::new(server.0.stdout.take().ok_or("no stdout")?);
    let mut first = String::new();
    out.read_line(&mut first)?;
    std::thread::spawn(move || std::io::copy(&mut out, &mut std::io::sink()));
    let base = first
        .split_whitespace()
        .find(|w| w.starts_with("http://"))
        .ok_or_else(|| format!("no address in {first:?}"))?
        .trim_end_matches('/')
        .to_owned();
    let (idle, _) = server.memory();

    let _ = rustls::crypto::ring::default_provider().install_default();
    let http = reqwest::Client::new();
    let run: orch_core::RunId = "serve-scale".parse()?;
    let engine = orch_graph::Engine::new(plan, Arc::new(Brief), store.clone())?
        .workspace(Arc::new(SharedDir::new(std::env::temp_dir())))
        .max_concurrency(16);
    let started = Instant::now();
    let going = {
        let run = run.clone();
        tokio::spawn(async move { engine.run(&run, Cancellation::new()).await })
    };
    while store.state(&run).await?.events == 0 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }

    // The stream, from the first event to the last.
    let mut stream = http
        .get(format!("{base}/runs/{run}/events"))
        .send()
        .await?
        .error_for_status()?;
    let (mut bytes, mut messages, mut biggest) = (0usize, 0usize, 0usize);
    let (mut snapshot, mut first_at) = (0usize, None);
    let mut buf = String::new();
    let mut finished = None;
    let mut ended = false;
    while !ended {
        let chunk = match tokio::time::timeout(Duration::from_secs(2), stream.chunk()).await {
            Ok(c) => c?.ok_or("the stream ended")?,
            // Quiet for 2 s after the run finished: all was sent.
            Err(_) if finished.is_some() => break,
            Err(_) => continue,
        };
        bytes += chunk.len();
        buf.push_str(std::str::from_utf8(&chunk)?);
        while let Some(end) = buf.find("\n\n") {
            let message: String = buf.drain(..end + 2).collect();
            if message.starts_with(':') {
                continue;
            }
            messages += 1;
            biggest = biggest.max(message.len());
            if message.starts_with("event: snapshot") {
                snapshot = message.len();
                first_at = Some(started.elapsed());
            }
            if message.contains(r#""status":"completed""#) {
                ended = true;
            }
        }
        if finished.is_none() && going.is_finished() {
            finished = Some(started.elapsed());
        }
    }
    let report = going.await??;
    if report.outcome != RunOutcome::Completed {
        return Err(format!("the run ended {:?}", report.outcome).into());
    }
    let ran = finished.unwrap_or_else(|| started.elapsed());
    let (peak_live, _) = server.memory();
    let events = store.state(&run).await?.events;
    println!(
        "run: {n} tickets, {events} journal events, {:.1} s (the agent takes 5 ms, 16 at once)",
        ran.as_secs_f64()
    );
    println!(
        "event stream, the whole run: {} in {messages} messages; the snapshot {} ({} ms after the run started), the largest message {}",
        mib(bytes),
        mib(snapshot),
        first_at.map_or(0, |d| d.as_millis()),
        mib(biggest)
    );

    // A page opened on the finished run: its stream's first message holds
    // every ticket.
    let t = Instant::now();
    let mut late = http
        .get(format!("{base}/runs/{run}/events"))
        .send()
        .await?
        .error_for_status()?;
    let mut first = String::new();
    while !first.contains("\n\n") {
        let chunk = late.chunk().await?.ok_or("the stream ended")?;
        first.push_str(std::str::from_utf8(&chunk)?);
    }
    println!(
        "event stream opened on the finished run: the snapshot of {n} tickets, {} in {} ms",
        mib(first.len()),
        t.elapsed().as_millis()
    );
    drop(late);

    // The page of the finished run, as a browser first loads it.
    let mut loads = Vec::new();
    let mut page_bytes = 0;
    for _ in 0..5 {
        let t = Instant::now();
        let body = http
            .get(format!("{base}/runs/{run}"))
            .send()
            .await?
            .error_for_status()?
            .bytes()
            .await?;
        loads.push(t.elapsed());
        page_bytes = body.len();
    }
    let t = Instant::now();
    let json = http
        .get(format!("{base}/runs/{run}/state.json"))
        .send()
        .await?
        .error_for_status()?
        .bytes()
        .await?;
    let json_took = t.elapsed();
    loads.sort();
    println!(
        "run page: {} of HTML (the graph inline), served in {} ms (median of 5; first {} ms)",
        mib(page_bytes),
        loads[2].as_millis(),
        loads[0].as_millis()
    );
    println!(
        "peer: the folded state a polling page would fetch each time, /runs/{run}/state.json: {} in {} ms",
        mib(json.len()),
        json_took.as_millis()
    );
    match paint(&base, &run).await {
        Ok((fcp, lcp, load)) => println!(
            "headless Chromium: first contentful paint {fcp:.0} ms, largest contentful paint {lcp:.0} ms, load event (the page and its graph parsed and laid out) {load:.0} ms"
        ),
        Err(e) => println!("headless Chromium: not measured ({e})"),
    }
    let (peak, now) = server.memory();
    println!(
        "orch serve memory: {idle:.1} MiB idle, peak {peak_live:.1} MiB while streaming the run, peak {peak:.1} MiB after the page loads ({now:.1} MiB now)"
    );
    Ok(())
}

/// The browser's paint timings of the run's page (ms after navigation).
async fn paint(base: &str, run: &orch_core::RunId) -> Result<(f64, f64, f64), Error> {
    let chromium = PathBuf::from("/usr/bin/chromium");
    let driver = PathBuf::from("/usr/bin/chromedriver");
    if !chromium.exists() || !driver.exists() {
        return Err("no /usr/bin/chromium and /usr/bin/chromedriver".into());
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let _driver = Server(
        Command::new(&driver)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?,
    );
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        serde_json::json!({
            "binary": chromium,
            "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1400,1000"],
        }),
    );
    let connector = hyper_util::client::legacy::connect::HttpConnector::new();
    let mut client = None;
    for _ in 0..100 {
        if let Ok(c) = fantoccini::ClientBuilder::new(connector.clone())
            .capabilities(caps.clone())
            .connect(&format!("http://127.0.0.1:{port}"))
            .await
        {
            client = Some(c);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let c = client.ok_or("chromedriver did not start")?;
    c.goto(&format!("{base}/runs/{run}")).await?;
    let script = r"
        const done = arguments[arguments.length - 1];
        new PerformanceObserver((list) => {
          const lcp = list.getEntries().at(-1).startTime;
          const fcp = performance.getEntriesByName('first-contentful-paint')[0].startTime;
          const nav = performance.getEntriesByType('navigation')[0];
          done([fcp, lcp, nav.loadEventEnd]);
        }).observe({ type: 'largest-contentful-paint', buffered: true });
    ";
    let v = c.execute_async(script, vec![]).await?;
    c.close().await?;
    let f = |i: usize| v[i].as_f64().unwrap_or(f64::NAN);
    Ok((f(0), f(1), f(2)))
}
