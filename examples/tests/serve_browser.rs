//! `orch serve` in a real browser: headless Chromium, driven through
//! chromedriver by fantoccini, watches the bundled production-readiness
//! plan run (the README's main job: scripted agents, real git, real `cargo
//! test` gates, SQLite), sees tickets change status without reloading,
//! opens the evidence of the gate that failed, answers the escalation from
//! the page, and sees the resumed run finish. Screenshots go to
//! `target/serve-screenshots/` for a person to look at.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use assert_cmd::cargo::CommandCargoExt;
use fantoccini::{Client, ClientBuilder, Locator};
use orch_core::{Cancellation, Decision, Plan, RunOutcome, StateStore, TicketStatus};
use orch_examples::{Setup, demo, open_store};

const TOKEN: &str = "browser-test-token-0123456789";

/// Kills a child process when dropped.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A program this test needs, from `env` or the Debian package's path.
fn program(env: &str, default: &str) -> PathBuf {
    let p = std::env::var_os(env).map_or_else(|| PathBuf::from(default), PathBuf::from);
    assert!(
        p.exists(),
        "{} is not there: install Debian's chromium and chromium-driver (.ci/run does), or set {env}",
        p.display()
    );
    p
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Polls `check` every 100 ms until it gives a value; fails naming `what`
/// after `limit`.
async fn eventually<T, F: std::future::Future<Output = Option<T>>>(
    what: &str,
    limit: Duration,
    mut check: impl FnMut() -> F,
) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(start.elapsed() < limit, "{what}: not within {limit:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn status_of(c: &Client, id: &str) -> Option<String> {
    let el = c.find(Locator::Id(&format!("t-{id}"))).await.ok()?;
    el.attr("data-status").await.ok().flatten()
}

async fn shot(c: &Client, dir: &Path, name: &str) {
    let png = c.screenshot().await.unwrap();
    std::fs::write(dir.join(format!("{name}.png")), png).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Chromium and chromedriver (Debian's chromium, chromium-driver; .ci/run installs them)"]
async fn a_person_watches_the_bundled_plan_and_answers_its_escalation_in_the_browser() {
    let chromium = program("ORCH_TEST_CHROMIUM", "/usr/bin/chromium");
    let chromedriver = program("ORCH_TEST_CHROMEDRIVER", "/usr/bin/chromedriver");
    let shots = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/serve-screenshots");
    std::fs::create_dir_all(&shots).unwrap();

    // The README's main job, started as the example starts it.
    let dir = tempfile::tempdir().unwrap();
    let plan_path = Path::new(env!("CARGO_MANIFEST_DIR")).join("plans/production-readiness.toml");
    let plan = Plan::from_path(&plan_path).unwrap();
    let repo = dir.path().join("shop-backend");
    demo::init_repo(&repo, demo::BACKEND_FILES).unwrap();
    let state_dir = dir.path().join("state");
    let store = open_store(&state_dir).unwrap();
    let setup = Setup::new(plan.clone(), &repo, &state_dir, demo::backend_agent());
    let run: orch_core::RunId = "production-readiness-demo".parse().unwrap();

    // orch serve, as a person starts it, on a port of its choosing.
    let mut serve = Command::cargo_bin("orch").unwrap();
    serve
        .args(["serve", "--bind", "127.0.0.1:0", "--state"])
        .arg(&state_dir)
        .arg("--plan")
        .arg(&plan_path)
        .env("ORCH_SERVE_TOKEN", TOKEN)
        .env_remove("ORCH_DATABASE_URL")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    let mut serve = Killed(serve.spawn().unwrap());
    let mut out = std::io::BufReader::new(serve.0.stdout.take().unwrap());
    let mut first = String::new();
    std::io::BufRead::read_line(&mut out, &mut first).unwrap();
    // The rest of what it prints, read so that it can print.
    std::thread::spawn(move || std::io::copy(&mut out, &mut std::io::sink()));
    let base = first
        .split_whitespace()
        .find(|w| w.starts_with("http://"))
        .unwrap_or_else(|| panic!("no address in {first:?}"))
        .trim_end_matches('/')
        .to_owned();

    let port = free_port();
    let _driver = Killed(
        Command::new(&chromedriver)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        serde_json::json!({
            "binary": chromium,
            "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1400,1100"],
        }),
    );
    let connector = hyper_util::client::legacy::connect::HttpConnector::new();
    let c = eventually("chromedriver starts", Duration::from_secs(30), || async {
        ClientBuilder::new(connector.clone())
            .capabilities(caps.clone())
            .connect(&format!("http://127.0.0.1:{port}"))
            .await
            .ok()
    })
    .await;

    // The run goes on in the background while the page is open.
    let first_run = {
        let engine = setup.engine(store.clone()).unwrap();
        let run = run.clone();
        tokio::spawn(async move { engine.run(&run, Cancellation::new()).await })
    };
    let page = format!("{base}/runs/{run}");
    eventually("the run's first event", Duration::from_secs(30), || async {
        (store.state(&run).await.ok()?.events > 0).then_some(())
    })
    .await;
    c.goto(&format!("{base}/login?token={TOKEN}"))
        .await
        .unwrap();
    c.goto(&page).await.unwrap();
    // A mark on this page: gone if the page were loaded again.
    c.execute("window.orchMark = 'same page'; return null;", vec![])
        .await
        .unwrap();
    let done_at_load: usize = c
        .find(Locator::Css(r#"[data-count="done"]"#))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
        .parse()
        .unwrap();
    shot(&c, &shots, "1-running").await;

    // Tickets change status on the page as the journal grows: the
    // escalated ticket turns orange and its question appears, live.
    let escalated = demo::ESCALATED;
    eventually(
        "the escalation reaches the open page",
        Duration::from_secs(300),
        || async {
            let s = status_of(&c, escalated).await?;
            let q = c
                .find(Locator::Id(&format!("decide-{escalated}")))
                .await
                .ok()?;
            (s == "awaiting_decision" && q.is_displayed().await.ok()?).then_some(())
        },
    )
    .await;
    let report = first_run.await.unwrap().unwrap();
    assert_eq!(report.outcome, RunOutcome::Paused);
    // Every ticket's node shows what the journal says, without a reload.
    let state = store.state(&run).await.unwrap();
    let mut done = 0;
    for t in &plan.tickets {
        let want = state
            .tickets
            .get(&t.id)
            .map_or(TicketStatus::Pending, |s| s.status);
        let want = serde_json::to_value(want).unwrap();
        let got = eventually("the node catches up", Duration::from_secs(10), || async {
            let s = status_of(&c, t.id.as_str()).await?;
            (serde_json::Value::String(s.clone()) == want).then_some(s)
        })
        .await;
        done += usize::from(got == "done");
    }
    assert!(
        done >= 10 && done_at_load + 10 <= done,
        "tickets done after the page loaded, seen live: {done_at_load} at load, {done} now"
    );
    let mark = c.execute("return window.orchMark;", vec![]).await.unwrap();
    assert_eq!(mark, "same page", "the page was never reloaded");
    let count = c
        .find(Locator::Css(r#"[data-count="done"]"#))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(count, done.to_string());
    shot(&c, &shots, "2-escalated").await;

    // The ticket whose gate failed once: its evidence opens on a click.
    c.find(Locator::Id(&format!("t-{}", demo::RETRIED)))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    let failed = c
        .wait()
        .for_element(Locator::Css("details.gate.failed"))
        .await
        .unwrap();
    let failing = failed.find(Locator::Css("ul.failures")).await.unwrap();
    assert!(!failing.is_displayed().await.unwrap(), "closed at first");
    failed
        .find(Locator::Css("summary"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    assert!(
        failing.is_displayed().await.unwrap(),
        "open after the click"
    );
    let evidence = failing.text().await.unwrap();
    assert!(evidence.contains("backoff_doubles"), "{evidence}");
    shot(&c, &shots, "3-failed-gate").await;

    // The answer, from the page.
    c.goto(&page).await.unwrap();
    let form = c
        .find(Locator::Css(&format!("#decide-{escalated} form")))
        .await
        .unwrap();
    form.find(Locator::Css(r#"input[value="approve"]"#))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    form.find(Locator::Css(r#"button[type="submit"]"#))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    eventually(
        "the answer is recorded",
        Duration::from_secs(10),
        || async {
            let st = store.state(&run).await.ok()?;
            let d = st
                .decisions
                .iter()
                .find(|d| d.ticket.as_str() == escalated)?;
            (d.answer == Some(Decision::Approve)).then_some(())
        },
    )
    .await;
    assert!(
        c.current_url()
            .await
            .unwrap()
            .path()
            .ends_with(run.as_str()),
        "back on the run's page"
    );
    c.execute("window.orchMark = 'after the answer'; return null;", vec![])
        .await
        .unwrap();

    // The run resumes and the page follows it to the end.
    let resumed = setup
        .engine(store.clone())
        .unwrap()
        .run(&run, Cancellation::new())
        .await
        .unwrap();
    assert_eq!(resumed.outcome, RunOutcome::Completed);
    eventually(
        "the page shows the end",
        Duration::from_secs(20),
        || async {
            let s = c
                .find(Locator::Id("run-status"))
                .await
                .ok()?
                .text()
                .await
                .ok()?;
            let t = status_of(&c, escalated).await?;
            (s == "completed" && t == "done").then_some(())
        },
    )
    .await;
    let mark = c.execute("return window.orchMark;", vec![]).await.unwrap();
    assert_eq!(mark, "after the answer", "followed live, not reloaded");
    let left = c
        .find(Locator::Css(r#"[data-count="awaiting_decision"]"#))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(left, "0");
    let events = store.state(&run).await.unwrap().events.to_string();
    eventually(
        "the event count is the journal's",
        Duration::from_secs(10),
        || async {
            let n = c
                .find(Locator::Id("events"))
                .await
                .ok()?
                .text()
                .await
                .ok()?;
            (n == events).then_some(())
        },
    )
    .await;
    shot(&c, &shots, "4-completed").await;
    let graph = c.find(Locator::Css("svg.dag")).await.unwrap();
    let png = graph.screenshot().await.unwrap();
    std::fs::write(shots.join("5-graph.png"), png).unwrap();
    c.close().await.unwrap();
}
