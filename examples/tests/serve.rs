//! `orch serve` over HTTP: every endpoint's answers, the token check, bad
//! input (unknown run, unknown ticket, malformed decisions), the event
//! stream, and an answer given through the site that a resumed run acts on.
//! The run served is a real `orch run` (command agents, real git, SQLite).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use assert_cmd::cargo::CommandCargoExt;
use orch_core::{Cancellation, RunState, StateStore, TicketStatus};
use orch_examples::serve::{Site, Token};

mod common;

const TOKEN: &str = "test-token-0123456789abcdef";

/// A run of three tickets paused on two decisions: T-1 and T-3 fail their
/// gate (the agent paints only with the person's hint), T-2 waits for T-1.
/// Returns the state directory. `extra`: more arguments for `orch run`.
fn paused_run(dir: &Path, extra: &[&str]) -> PathBuf {
    let repo = dir.join("repo");
    orch_examples::demo::init_repo(&repo, &[("README.md", "demo\n")]).unwrap();
    let plan = dir.join("plan.toml");
    std::fs::write(
        &plan,
        r#"
name = "ask"
default_role = "dev"
[agents.dev]
backend = { kind = "command", argv = ["sh", "-c", "prompt=$(cat); echo working on $ORCH_TICKET; case \"$ORCH_TICKET:$prompt\" in T-2:*|*'use the blue one'*) echo blue > \"$ORCH_TICKET.txt\";; esac"] }
[[phases]]
name = "paint"
max_attempts = 1
gates = [{ kind = "command", name = "painted", argv = ["test", "-s", "{ticket}.txt"] }]
[[batches]]
id = "B1"
title = "The shed"
tickets = ["T-1", "T-2"]
[[tickets]]
id = "T-1"
title = "Paint the shed"
effort = "1h"
[[tickets]]
id = "T-2"
title = "Varnish the shed"
effort = "1h"
depends_on = ["T-1"]
[[tickets]]
id = "T-3"
title = "Mow <the> lawn & \"edges\""
effort = "2h"
"#,
    )
    .unwrap();
    let state = dir.join("state");
    let out = std::process::Command::cargo_bin("orch")
        .unwrap()
        .env_remove("ORCH_DATABASE_URL")
        .args(["run", plan.to_str().unwrap(), "--repo"])
        .arg(&repo)
        .args(["--state", state.to_str().unwrap(), "--run", "shed"])
        .args(extra)
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(3),
        "paused: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    state
}

/// The site of `state` on a free loopback port.
async fn start(state: &Path) -> (SocketAddr, Arc<dyn StateStore>) {
    start_on(state, orch_examples::open_store(state).unwrap()).await
}

/// The site of `store`, with `state`'s transcripts and plan.
async fn start_on(state: &Path, store: Arc<dyn StateStore>) -> (SocketAddr, Arc<dyn StateStore>) {
    let info = orch_examples::RunInfo::load(state).unwrap();
    let plan = orch_core::Plan::from_path(&info.plan).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let site = Site::new(store.clone(), Token::new(TOKEN).unwrap())
        .unwrap()
        .state_dir(state)
        .plan(plan)
        .unwrap()
        .poll(Duration::from_millis(20))
        .at(addr);
    tokio::spawn(orch_examples::serve::serve(
        listener,
        site,
        Cancellation::new(),
    ));
    (addr, store)
}

fn client() -> reqwest::Client {
    // Plain HTTP on loopback; reqwest wants a TLS provider all the same.
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

/// GET `path`: status and body.
async fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    let r = client()
        .get(format!("http://{addr}{path}"))
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

/// POST a decision form with `headers`: status and body.
async fn answer(
    addr: SocketAddr,
    ticket: &str,
    form: &[(&str, &str)],
    headers: &[(&str, &str)],
) -> (u16, String) {
    let mut req = client()
        .post(format!("http://{addr}/runs/shed/tickets/{ticket}/decision"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(
            form.iter()
                .map(|(k, v)| format!("{k}={}", v.replace(' ', "+")))
                .collect::<Vec<_>>()
                .join("&"),
        );
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let r = req.send().await.unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

const BEARER: (&str, &str) = ("authorization", "Bearer test-token-0123456789abcdef");

/// Opens the link orch serve prints; returns the cookie it sets, checked:
/// `HttpOnly`, `SameSite=Strict`, and never the token itself (a cookie is
/// sent to every service on the same host name, whatever its port).
async fn login(addr: SocketAddr) -> String {
    let r = client()
        .get(format!("http://{addr}/login?token={TOKEN}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 303);
    assert_eq!(r.headers()["location"], "/");
    let cookie = r.headers()["set-cookie"].to_str().unwrap().to_owned();
    assert!(
        cookie.starts_with(&format!("orch_token_{}=", addr.port()))
            && cookie.contains("; HttpOnly")
            && cookie.contains("; SameSite=Strict")
            && !cookie.contains(TOKEN),
        "{cookie}"
    );
    cookie.split(';').next().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_page_shows_the_run_as_its_journal_has_it() {
    let dir = tempfile::tempdir().unwrap();
    let state = paused_run(dir.path(), &[]);
    let (addr, store) = start(&state).await;
    let folded = store.state(&"shed".parse().unwrap()).await.unwrap();

    let (code, index) = get(addr, "/").await;
    assert_eq!(code, 200, "{index}");
    assert!(
        index.contains(r#"<a href="/runs/shed">shed</a>"#),
        "{index}"
    );
    assert!(index.contains("paused"), "{index}");

    let (code, page) = get(addr, "/runs/shed").await;
    assert_eq!(code, 200, "{page}");
    // The graph: each ticket a node with its status; T-1 → T-2 is the
    // critical path; B1 drawn as a group.
    for (t, status) in [
        ("T-1", "awaiting_decision"),
        ("T-2", "pending"),
        ("T-3", "awaiting_decision"),
    ] {
        assert!(
            page.contains(&format!(
                r#"id="t-{t}" class="node critical" data-status="{status}""#
            )) || page.contains(&format!(
                r#"id="t-{t}" class="node" data-status="{status}""#
            )),
            "{t} as {status}: {page}"
        );
        assert!(
            page.contains(&format!(r#"<tr id="row-{t}" data-status="{status}">"#)),
            "{page}"
        );
    }
    assert!(
        page.contains(r#"id="t-T-2" class="node critical""#),
        "{page}"
    );
    assert!(page.contains(r#"<g class="band">"#) && page.contains(">B1</text>"));
    // Text from the plan is escaped.
    assert!(
        page.contains("Mow &lt;the&gt; lawn &amp; &quot;edges&quot;"),
        "{page}"
    );
    assert!(!page.contains("Mow <the>"));
    // Figures and the call.
    assert!(
        page.contains(r#"<dd data-count="awaiting_decision">2</dd>"#),
        "{page}"
    );
    assert!(
        page.contains(r#"<dd data-count="pending">1</dd>"#),
        "{page}"
    );
    assert!(
        page.contains(r#"Go/no-go: <strong id="call" data-call="YELLOW">YELLOW</strong>"#),
        "{page}"
    );
    // The queue: two questions, not answerable without the token.
    assert!(page.contains("Decisions: 2 waiting"), "{page}");
    assert_eq!(page.matches("<fieldset disabled>").count(), 2, "{page}");
    assert!(page.contains("/login?token=…"));

    let (code, t1) = get(addr, "/runs/shed/tickets/T-1").await;
    assert_eq!(code, 200, "{t1}");
    assert!(t1.contains("<h3>paint, attempt 1</h3>"), "{t1}");
    assert!(
        t1.contains("Gate <strong>painted</strong>: FAILED"),
        "the failed gate's verdict: {t1}"
    );
    assert!(
        t1.contains("<dt>Exit code</dt><dd>1</dd>"),
        "its evidence: {t1}"
    );
    assert!(
        t1.contains("The attempt failed; the next one is shown:"),
        "{t1}"
    );
    assert!(
        t1.contains("<code>orch/shed/T-1</code>"),
        "its branch: {t1}"
    );
    let agent = folded
        .agents
        .iter()
        .find(|(_, a)| a.ticket.as_str() == "T-1")
        .map(|(id, _)| id.to_string())
        .unwrap();
    let link = format!(r#"<a href="/runs/shed/transcripts/{agent}">Transcript</a>"#);
    assert!(t1.contains(&link), "{t1}");
    assert!(
        !t1.contains("data-events"),
        "a ticket's page holds no connection open: {t1}"
    );
    let (code, transcript) = get(addr, &format!("/runs/shed/transcripts/{agent}")).await;
    assert_eq!(code, 200, "{transcript}");
    assert!(transcript.contains("working on T-1"), "{transcript}");

    let (code, decisions) = get(addr, "/runs/shed/decisions").await;
    assert_eq!(code, 200);
    assert!(decisions.contains(r#"id="decide-T-3""#), "{decisions}");

    let (code, json) = get(addr, "/runs/shed/state.json").await;
    assert_eq!(code, 200);
    let served: RunState = serde_json::from_str(&json).unwrap();
    assert_eq!(served, folded);

    for (path, kind) in [
        ("/assets/app.js", "text/javascript"),
        ("/assets/app.css", "text/css"),
    ] {
        let r = client()
            .get(format!("http://{addr}{path}"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let ct = r.headers()["content-type"].to_str().unwrap().to_owned();
        assert!(ct.starts_with(kind), "{path}: {ct}");
        let csp = r.headers()["content-security-policy"].to_str().unwrap();
        assert!(csp.contains("script-src 'self'"), "{csp}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_are_refused_saying_what_was_wrong_and_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let state = paused_run(dir.path(), &[]);
    let (addr, store) = start(&state).await;
    let run = "shed".parse().unwrap();
    let before = store.state(&run).await.unwrap().events;

    for (path, code, says) in [
        ("/runs/nope", 404, "no run nope"),
        ("/runs/nope/events", 404, "no run nope"),
        ("/runs/nope/tickets/T-1", 404, "no run nope"),
        ("/runs/has%20space", 400, "is not a run id"),
        ("/runs/shed/tickets/T-9", 404, "run shed has no ticket T-9"),
        ("/runs/shed/tickets/bad%2Fid", 400, "is not a ticket id"),
        ("/runs/shed/transcripts/nobody", 404, "no agent \"nobody\""),
        ("/elsewhere", 404, "no such page"),
        ("/login", 400, "/login?token="),
        ("/login?token=wrong", 401, "not this site's token"),
    ] {
        let (got, body) = get(addr, path).await;
        assert_eq!(got, code, "{path}: {body}");
        assert!(body.contains(says), "{path}: {body}");
    }

    let approve = [("answer", "approve")];
    let session = login(addr).await;
    let here = format!("http://{addr}");
    let name = session.split('=').next().unwrap();
    let wrong = format!("{name}=wrong");
    let token_itself = format!("{name}={TOKEN}");
    // Without the token, with a wrong one, with the session cookie but not
    // from this site's page (another origin, an opaque one, none), with
    // the token itself as the cookie: refused.
    for headers in [
        vec![],
        vec![("authorization", "Bearer test-token-0123456789abcdeX")],
        vec![("authorization", "Bearer ")],
        vec![("cookie", &wrong), ("origin", &here)],
        vec![("cookie", &session), ("origin", "http://evil.example")],
        vec![("cookie", &session), ("origin", "null")],
        vec![("cookie", &session)],
        vec![("cookie", &token_itself), ("origin", &here)],
    ] {
        let (code, body) = answer(addr, "T-1", &approve, &headers).await;
        assert_eq!(code, 401, "{headers:?}: {body}");
        assert!(body.contains("needs the token"), "{body}");
    }
    // With it: each malformed answer named.
    for (form, code, says) in [
        (vec![], 400, "answer=approve|retry|skip|abort"),
        (vec![("answer", "maybe")], 400, "\"maybe\" is not an answer"),
        (vec![("answer", "retry")], 400, "a retry needs a note"),
        (
            vec![("answer", "retry"), ("note", "   ")],
            400,
            "a retry needs a note",
        ),
    ] {
        let (got, body) = answer(addr, "T-1", &form, &[BEARER]).await;
        assert_eq!(got, code, "{form:?}: {body}");
        assert!(body.contains(says), "{form:?}: {body}");
    }
    let (code, body) = answer(addr, "T-2", &approve, &[BEARER]).await;
    assert_eq!(code, 409, "{body}");
    assert!(body.contains("T-2 is not waiting for a decision"), "{body}");
    let (code, body) = answer(addr, "T-9", &approve, &[BEARER]).await;
    assert_eq!((code, body.trim()), (404, "run shed has no ticket T-9"));

    // A page elsewhere that names this server by another host is refused
    // (DNS rebinding), whatever it asks.
    let r = client()
        .get(format!("http://{addr}/runs/shed"))
        .header("host", format!("rebound.example:{}", addr.port()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 421);
    for host in [
        format!("localhost:{}", addr.port()),
        format!("[::1]:{}", addr.port()),
        addr.to_string(),
    ] {
        let r = client()
            .get(format!("http://{addr}/runs/shed"))
            .header("host", &host)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "a loopback name: {host}");
    }

    assert_eq!(
        store.state(&run).await.unwrap().events,
        before,
        "nothing refused was recorded"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_from_the_browser_is_recorded_once_and_the_run_acts_on_it() {
    let dir = tempfile::tempdir().unwrap();
    let state = paused_run(dir.path(), &[]);
    let (addr, store) = start(&state).await;
    let run = "shed".parse().unwrap();

    // The link orch serve prints: a session cookie, not the token.
    let jar = login(addr).await;
    let page = client()
        .get(format!("http://{addr}/runs/shed"))
        .header("cookie", &jar)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(!page.contains("<fieldset disabled>"), "answerable: {page}");
    assert!(!page.contains(TOKEN), "the page never holds the token");

    let origin = format!("http://{addr}");
    // A page on another port of this host may have set a cookie of the
    // same name; this site's own still counts.
    let name = jar.split('=').next().unwrap();
    let planted = format!("{name}=planted-under-another-path; {jar}");
    let from_page = [("cookie", planted.as_str()), ("origin", origin.as_str())];
    let retry = [("answer", "retry"), ("note", "use the blue one")];
    let (code, body) = answer(addr, "T-1", &retry, &from_page).await;
    assert_eq!(code, 303, "{body}");
    // Given twice (a double click): the second is refused, saying how the
    // first was answered.
    let (code, body) = answer(addr, "T-1", &retry, &from_page).await;
    assert_eq!(code, 409, "{body}");
    assert!(
        body.contains("T-1 was already answered (Retry, note: \"use the blue one\")"),
        "{body}"
    );
    // A note a person pasted markup into is shown as text.
    let (code, _) = answer(
        addr,
        "T-3",
        &[("answer", "approve"), ("note", "<script>alert(1)</script>")],
        &[BEARER],
    )
    .await;
    assert_eq!(code, 303);

    let st = store.state(&run).await.unwrap();
    let answers: Vec<_> = st
        .decisions
        .iter()
        .map(|d| (d.ticket.as_str(), d.answer, d.note.as_deref()))
        .collect();
    assert_eq!(
        answers,
        [
            (
                "T-1",
                Some(orch_core::Decision::Retry),
                Some("use the blue one")
            ),
            (
                "T-3",
                Some(orch_core::Decision::Approve),
                Some("<script>alert(1)</script>")
            )
        ]
    );

    // The state files, as `orch decide` leaves them.
    let queue = std::fs::read_to_string(state.join("DECISION_QUEUE.md")).unwrap();
    assert!(
        queue.contains("No open questions.") && queue.contains("| retry | use the blue one |"),
        "{queue}"
    );

    for path in [
        "/runs/shed",
        "/runs/shed/decisions",
        "/runs/shed/tickets/T-3",
    ] {
        let (_, page) = get(addr, path).await;
        assert!(
            page.contains("&lt;script&gt;alert(1)&lt;/script&gt;"),
            "{path}: {page}"
        );
        assert!(!page.contains("<script>alert"), "{path}: {page}");
    }

    // The run, resumed, acts on both answers.
    let out = std::process::Command::cargo_bin("orch")
        .unwrap()
        .env_remove("ORCH_DATABASE_URL")
        .args(["resume", "--state", state.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let st = store.state(&run).await.unwrap();
    let status = |t: &str| st.tickets[&t.parse::<orch_core::TicketId>().unwrap()].status;
    assert_eq!(status("T-1"), TicketStatus::Done);
    assert_eq!(status("T-2"), TicketStatus::Done);
    assert_eq!(status("T-3"), TicketStatus::Done);
}

/// Reads the event stream until an event of `kind` whose data contains
/// `needle` arrives; returns its data.
async fn until(
    stream: &mut reqwest::Response,
    buf: &mut String,
    kind: &str,
    needle: &str,
) -> String {
    loop {
        while let Some(end) = buf.find("\n\n") {
            let event: String = buf.drain(..end + 2).collect();
            let data = event
                .lines()
                .filter_map(|l| l.strip_prefix("data: "))
                .collect::<String>();
            if event.contains(&format!("event: {kind}\n")) && data.contains(needle) {
                return data;
            }
        }
        let chunk = tokio::time::timeout(Duration::from_secs(20), stream.chunk())
            .await
            .unwrap_or_else(|_| panic!("no {kind} event with {needle} in 20 s: {buf}"))
            .unwrap()
            .expect("the stream ended");
        buf.push_str(std::str::from_utf8(&chunk).unwrap());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_event_stream_sends_every_ticket_then_what_the_journal_changed() {
    let dir = tempfile::tempdir().unwrap();
    let state = paused_run(dir.path(), &[]);
    let (addr, store) = start(&state).await;
    let run = "shed".parse().unwrap();

    let mut stream = client()
        .get(format!("http://{addr}/runs/shed/events"))
        .send()
        .await
        .unwrap();
    assert_eq!(stream.status(), 200);
    assert!(
        stream.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream")
    );
    let mut buf = String::new();
    let snapshot = until(&mut stream, &mut buf, "snapshot", "T-3").await;
    let v: serde_json::Value = serde_json::from_str(&snapshot).unwrap();
    assert_eq!(v["tickets"].as_array().unwrap().len(), 2, "{v}");
    assert_eq!(v["summary"]["decisions"], 2, "{v}");

    // `orch decide` in another process: the page hears of it.
    let out = std::process::Command::cargo_bin("orch")
        .unwrap()
        .env_remove("ORCH_DATABASE_URL")
        .args([
            "decide",
            "T-3",
            "--skip",
            "--state",
            state.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(out.status.success());
    let update = until(&mut stream, &mut buf, "update", "T-3").await;
    let v: serde_json::Value = serde_json::from_str(&update).unwrap();
    assert_eq!(
        v["tickets"],
        serde_json::json!([{
            "id": "T-3",
            "status": "ready",
            "label": "answered: Skip, acted on when the run goes on"
        }]),
        "only what changed: {v}"
    );
    assert_eq!(v["summary"]["decisions"], 1);
    let seq = store.state(&run).await.unwrap().events;
    assert_eq!(v["seq"], seq);
    // The journal's own events, never the raw journal: a decision is seen
    // as its effect on the ticket.
    assert!(
        !update.contains("decision_recorded"),
        "{update} has no raw events"
    );
    // Nothing else happened: no update until the journal grows.
    assert!(
        tokio::time::timeout(Duration::from_millis(300), stream.chunk())
            .await
            .map_or(true, |c| c.unwrap().is_some_and(|c| c.starts_with(b":"))),
        "only keep-alives while the journal is still"
    );
}

/// The same pages from a run whose journal is in PostgreSQL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs PostgreSQL: set ORCH_TEST_DATABASE_URL (.ci/run does)"]
async fn a_run_in_postgresql_is_served_and_answered_the_same() {
    let db = common::Db::new("serve").await;
    let dir = tempfile::tempdir().unwrap();
    let state = paused_run(dir.path(), &["--database-url", &db.url]);
    assert!(!state.join("state.db").exists());
    let (addr, store) = start_on(&state, db.store().await).await;

    let (code, page) = get(addr, "/runs/shed").await;
    assert_eq!(code, 200, "{page}");
    assert!(
        page.contains(r#"id="t-T-1" class="node critical" data-status="awaiting_decision""#),
        "{page}"
    );
    let mut stream = client()
        .get(format!("http://{addr}/runs/shed/events"))
        .send()
        .await
        .unwrap();
    let mut buf = String::new();
    until(&mut stream, &mut buf, "snapshot", "T-1").await;
    let (code, body) = answer(addr, "T-1", &[("answer", "skip")], &[BEARER]).await;
    assert_eq!(code, 303, "{body}");
    let update = until(&mut stream, &mut buf, "update", "T-1").await;
    let v: serde_json::Value = serde_json::from_str(&update).unwrap();
    assert_eq!(
        v["seq"],
        store.state(&"shed".parse().unwrap()).await.unwrap().events
    );
    assert_eq!(v["summary"]["decisions"], 1, "{v}");
    drop(stream);
    db.drop().await;
}

/// `orch serve` as a person starts it: what it refuses, what it warns of,
/// and that Ctrl-C stops it even while a page follows a run.
#[test]
fn orch_serve_refuses_bad_input_warns_off_loopback_and_stops_on_a_signal() {
    let dir = tempfile::tempdir().unwrap();
    let orch = || {
        let mut c = std::process::Command::cargo_bin("orch").unwrap();
        c.env_remove("ORCH_DATABASE_URL")
            .env_remove("ORCH_SERVE_TOKEN");
        c
    };
    let nothing = dir.path().join("nothing");
    let out = orch()
        .args(["serve", "--state", nothing.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("no journal in") && err.contains("--state"),
        "{err}"
    );

    let state = paused_run(dir.path(), &[]);
    let s = state.to_str().unwrap();
    let out = orch()
        .args(["serve", "--state", s, "--token", "short"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--token: a token needs 16 characters"),
        "{err}"
    );
    let out = orch()
        .args(["serve", "--state", s, "--plan", "/no/such/plan.toml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/no/such/plan.toml"));

    // A transcript written before a secret of the server's environment
    // was known to the writer: served without it.
    const SECRET: &str = "sk-serve-0123456789abcdefghij";
    let transcripts = state.join("transcripts");
    let log = std::fs::read_dir(&transcripts)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.file_name().unwrap().to_str().unwrap().starts_with("T-1."))
        .unwrap();
    let agent = log
        .file_name()
        .unwrap()
        .to_str()
        .unwrap()
        .trim_end_matches(".log")
        .to_owned();
    let mut text = std::fs::read_to_string(&log).unwrap();
    text.push_str(&format!("leaked: {SECRET}\n"));
    std::fs::write(&log, text).unwrap();

    // Off loopback: served, with a warning.
    let mut child = orch()
        .args(["serve", "--state", s, "--bind", "0.0.0.0:0"])
        .env("SERVE_TEST_API_KEY", SECRET)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = String::new();
    let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
    std::io::BufRead::read_line(&mut out, &mut first).unwrap();
    assert!(first.contains("http://0.0.0.0:"), "{first}");
    let port: u16 = first
        .rsplit(':')
        .next()
        .unwrap()
        .trim()
        .trim_end_matches('/')
        .parse()
        .unwrap();
    let mut token_line = String::new();
    std::io::BufRead::read_line(&mut out, &mut token_line).unwrap();
    let token = token_line
        .rsplit("token=")
        .next()
        .unwrap()
        .trim()
        .to_owned();
    assert_eq!(token.len(), 64, "a random token: {token_line}");

    let rt = tokio::runtime::Runtime::new().unwrap();
    let (code, served) = rt.block_on(get(
        format!("127.0.0.1:{port}").parse().unwrap(),
        &format!("/runs/shed/transcripts/{agent}"),
    ));
    assert_eq!(code, 200, "{served}");
    assert!(
        served.contains("leaked: ") && !served.contains(SECRET),
        "{served}"
    );

    // A page follows the run; then Ctrl-C.
    let stream = rt.block_on(async {
        let mut s = client()
            .get(format!("http://127.0.0.1:{port}/runs/shed/events"))
            .send()
            .await
            .unwrap();
        let mut buf = String::new();
        until(&mut s, &mut buf, "snapshot", "T-1").await;
        s
    });
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(i32::try_from(child.id()).unwrap()),
        nix::sys::signal::Signal::SIGINT,
    )
    .unwrap();
    let started = std::time::Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "orch serve still runs 20 s after SIGINT"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "the open stream ended at once, not after the 5 s grace: {:?}",
        started.elapsed()
    );
    drop(stream);
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    assert!(
        err.contains("serving on 0.0.0.0:") && err.contains("not loopback"),
        "{err}"
    );
    assert_eq!(
        status.code(),
        Some(130),
        "128 + SIGINT, as shells report it"
    );
}

/// A run drawn with a plan file that changed since it started says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_drawn_with_a_changed_plan_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let state = paused_run(dir.path(), &[]);
    let info = orch_examples::RunInfo::load(&state).unwrap();
    let mut plan = orch_core::Plan::from_path(&info.plan).unwrap();
    let store: Arc<dyn StateStore> = orch_examples::open_store(&state).unwrap();
    let warning = "The plan file changed since this run started";
    for changed in [false, true] {
        if changed {
            plan.tickets[0].title = "Paint the shed twice".into();
        }
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let site = Site::new(store.clone(), Token::new(TOKEN).unwrap())
            .unwrap()
            .plan(plan.clone())
            .unwrap()
            .at(addr);
        tokio::spawn(orch_examples::serve::serve(
            listener,
            site,
            Cancellation::new(),
        ));
        let (code, page) = get(addr, "/runs/shed").await;
        assert_eq!(code, 200);
        assert_eq!(page.contains(warning), changed, "{page}");
        assert_eq!(page.contains("Paint the shed twice"), changed);
    }
}
