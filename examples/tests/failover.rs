//! Failover as a user meets it: `orch run` with the real Claude Code CLI
//! as a role's backend, against a local stand-in Anthropic API that fails
//! the way real APIs do, and a `command` role as its fallback. Ignored by
//! default (they need the real `claude`); `.ci/run` installs it and runs
//! them with `ORCH_TEST_REAL_CLIS=1 ORCH_TEST_CLAUDE=…`.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use assert_cmd::cargo::CommandCargoExt;
use orch_core::{EventKind, StateStore, TicketStatus};

const RUN: &str = "failover";

/// The real claude binary, or a failure saying what is needed.
fn claude(test: &str) -> PathBuf {
    assert!(
        std::env::var_os("ORCH_TEST_REAL_CLIS").is_some(),
        "{test} needs the real claude CLI: set ORCH_TEST_REAL_CLIS=1 and ORCH_TEST_CLAUDE (.ci/run does)"
    );
    std::env::var_os("ORCH_TEST_CLAUDE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("claude"))
}

/// A stand-in API on 127.0.0.1: answers the n-th request (0-based) to
/// `/v1/messages` (not its `count_tokens`) with `answer(n)` (status, extra
/// headers, body), anything else with 404; notes when each messages
/// request came.
fn stand_in(
    answer: impl Fn(usize) -> (u16, &'static str, String) + Send + 'static,
) -> (String, Arc<Mutex<Vec<Instant>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let seen: Arc<Mutex<Vec<Instant>>> = Arc::default();
    let s = seen.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { return };
            let mut reader = BufReader::new(conn.try_clone().unwrap());
            let mut line = String::new();
            if reader.read_line(&mut line).is_err() {
                continue;
            }
            let path = line.split_whitespace().nth(1).unwrap_or("").to_owned();
            let mut length = 0;
            loop {
                let mut h = String::new();
                if reader.read_line(&mut h).unwrap_or(0) == 0 || h == "\r\n" {
                    break;
                }
                if let Some(v) = h.to_ascii_lowercase().strip_prefix("content-length:") {
                    length = v.trim().parse().unwrap_or(0);
                }
            }
            let mut body = vec![0; length];
            let _ = reader.read_exact(&mut body);
            let messages = path == "/v1/messages" || path.starts_with("/v1/messages?");
            let (status, headers, body) = if messages {
                let n = {
                    let mut s = s.lock().unwrap();
                    s.push(Instant::now());
                    s.len() - 1
                };
                answer(n)
            } else {
                (404, "", String::new())
            };
            let kind = if body.starts_with("event:") {
                "text/event-stream"
            } else {
                "application/json"
            };
            let _ = write!(
                conn,
                "HTTP/1.1 {status} X\r\ncontent-type: {kind}\r\ncontent-length: {}\r\nconnection: close\r\n{headers}\r\n{body}",
                body.len()
            );
        }
    });
    (url, seen)
}

fn error(kind: &str) -> String {
    serde_json::json!({"type": "error", "error": {"type": kind, "message": format!("stand-in: {kind}")}})
        .to_string()
}

/// A successful Messages stream saying "Done."
fn done() -> String {
    use serde_json::json;
    [
        json!({"type": "message_start", "message": {"id": "msg_1", "type": "message", "role": "assistant",
            "model": "claude-sonnet-4-5", "content": [], "stop_reason": null, "stop_sequence": null,
            "usage": {"input_tokens": 50, "output_tokens": 1}}}),
        json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
        json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Done."}}),
        json!({"type": "content_block_stop", "index": 0}),
        json!({"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": null}, "usage": {"output_tokens": 5}}),
        json!({"type": "message_stop"}),
    ]
    .iter()
    .map(|e| format!("event: {}\ndata: {e}\n\n", e["type"].as_str().unwrap()))
    .collect()
}

struct Setup {
    dir: tempfile::TempDir,
    repo: PathBuf,
    state: PathBuf,
    plan: PathBuf,
    /// Lines `start <ns>` and `end <ns>`, one pair per claude run.
    runs: PathBuf,
}

/// A repository, and a plan whose role `dev` runs the real claude (through
/// a wrapper that points it at `api` and notes each run) with `spare` (a
/// command writing `work.txt`) as its fallback.
fn setup(test: &str, api: &str, gate: bool) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("repo");
    orch_examples::demo::init_repo(&repo, &[("README.md", "demo\n")]).unwrap();
    let home = dir.path().join("home");
    std::fs::create_dir_all(&home).unwrap();
    let runs = dir.path().join("runs");
    let wrapper = dir.path().join("claude");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\necho \"start $(date +%s%N)\" >> '{runs}'\nHOME='{home}' ANTHROPIC_BASE_URL='{api}' ANTHROPIC_API_KEY=sk-ant-test-not-a-key '{bin}' \"$@\"\nrc=$?\necho \"end $(date +%s%N)\" >> '{runs}'\nexit $rc\n",
            runs = runs.display(),
            home = home.display(),
            bin = claude(test).display(),
        ),
    )
    .unwrap();
    std::process::Command::new("chmod")
        .arg("+x")
        .arg(&wrapper)
        .status()
        .unwrap();
    let gates = if gate {
        r#"gates = [{ kind = "command", name = "did it", argv = ["test", "-s", "work.txt"] }]"#
    } else {
        ""
    };
    let plan = dir.path().join("plan.toml");
    std::fs::write(
        &plan,
        format!(
            r#"
name = "failover"
default_role = "dev"
[agents.dev]
backend = {{ kind = "claude_code", binary = "{wrapper}" }}
fallback = "spare"
timeout_secs = 60
[agents.spare]
backend = {{ kind = "command", argv = ["sh", "-c", "cat > /dev/null; echo spare > work.txt"] }}
[[phases]]
name = "impl"
{gates}
[[tickets]]
id = "A"
title = "a"
effort = "1h"
"#,
            wrapper = wrapper.display()
        ),
    )
    .unwrap();
    Setup {
        state: dir.path().join("state"),
        dir,
        repo,
        plan,
        runs,
    }
}

/// Runs the plan; the exit code, what orch printed and how long it took.
fn run(s: &Setup) -> (i32, String, Duration) {
    let started = Instant::now();
    let out = std::process::Command::cargo_bin("orch")
        .unwrap()
        .args(["run", s.plan.to_str().unwrap(), "--run", RUN, "--repo"])
        .arg(&s.repo)
        .arg("--state")
        .arg(&s.state)
        .current_dir(s.dir.path())
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text, started.elapsed())
}

/// The claude runs the wrapper noted: (start, end) in nanoseconds.
fn claude_runs(s: &Setup) -> Vec<(u128, u128)> {
    let text = std::fs::read_to_string(&s.runs).unwrap_or_default();
    let times = |what: &str| -> Vec<u128> {
        text.lines()
            .filter_map(|l| l.strip_prefix(what))
            .map(|t| t.trim().parse().unwrap())
            .collect()
    };
    times("start ").into_iter().zip(times("end ")).collect()
}

/// `work.txt` on the ticket's branch (what the fallback writes).
fn work_file(s: &Setup) -> Option<String> {
    orch_examples::demo::git(&s.repo, &["show", &format!("orch/{RUN}/A:work.txt")]).ok()
}

fn final_status(s: &Setup) -> (TicketStatus, usize) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let events = rt.block_on(async {
        orch_state::SqliteStore::open(s.state.join("state.db"))
            .unwrap()
            .read(&RUN.parse().unwrap(), 0, 10_000)
            .await
            .unwrap()
    });
    let failed = events
        .iter()
        .filter(|e| matches!(e.event.kind, EventKind::AttemptFailed { .. }))
        .count();
    let state = orch_core::RunState::fold(events.iter().map(|e| &e.event));
    (state.tickets["A"].status, failed)
}

/// The API answers 529 to everything: Claude Code retries twice by itself
/// (orch bounds it), orch retries the backend with backoff until its
/// breaker opens (after as many failures as the phase has attempts), and
/// that same attempt goes on on the fallback, well within the role's
/// timeout. Nothing escalates.
#[test]
#[ignore = "needs the real claude CLI: ORCH_TEST_REAL_CLIS=1 (.ci/run installs it)"]
fn a_529_storm_falls_back_within_the_roles_timeout() {
    let (api, seen) = stand_in(|_| (529, "", error("overloaded_error")));
    let s = setup(
        "a_529_storm_falls_back_within_the_roles_timeout",
        &api,
        true,
    );
    let (code, text, took) = run(&s);
    assert_eq!(code, 0, "{text}");
    assert_eq!(
        work_file(&s).as_deref(),
        Some("spare"),
        "the fallback did the work"
    );
    assert_eq!(
        final_status(&s),
        (TicketStatus::Done, 0),
        "no attempt failed"
    );
    let runs = claude_runs(&s);
    assert_eq!(
        runs.len(),
        3,
        "claude ran until the breaker opened: {runs:?}"
    );
    assert_eq!(
        seen.lock().unwrap().len(),
        9,
        "each claude run made 1 request and 2 retries (CLAUDE_CODE_MAX_RETRIES=2)"
    );
    assert!(took < Duration::from_secs(60), "took {took:?}");
}

/// The API is not there (connection refused): Claude Code reports it, orch
/// takes it as an outage, backs off between runs, and falls back.
#[test]
#[ignore = "needs the real claude CLI: ORCH_TEST_REAL_CLIS=1 (.ci/run installs it)"]
fn connection_refused_backs_off_then_falls_back() {
    // A port nothing listens on.
    let closed = TcpListener::bind("127.0.0.1:0").unwrap();
    let api = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let s = setup("connection_refused_backs_off_then_falls_back", &api, true);
    let (code, text, took) = run(&s);
    assert_eq!(code, 0, "{text}");
    assert_eq!(work_file(&s).as_deref(), Some("spare"));
    assert_eq!(final_status(&s), (TicketStatus::Done, 0));
    let runs = claude_runs(&s);
    assert_eq!(runs.len(), 3, "{runs:?}");
    for pair in runs.windows(2) {
        let gap = Duration::from_nanos((pair[1].0 - pair[0].1) as u64);
        assert!(
            gap >= Duration::from_millis(950),
            "orch backed off between runs (at least its 1 s base): {gap:?}"
        );
    }
    assert!(took < Duration::from_secs(60), "took {took:?}");
}

/// A 429 whose `retry-after` says 3 s, to Claude Code's first run and its
/// two retries (it waits as told, then gives up): orch waits as long
/// before it runs claude again, which then succeeds. No fallback.
#[test]
#[ignore = "needs the real claude CLI: ORCH_TEST_REAL_CLIS=1 (.ci/run installs it)"]
fn a_429_with_retry_after_is_honoured() {
    let (api, seen) = stand_in(|n| {
        if n < 3 {
            (429, "retry-after: 3\r\n", error("rate_limit_error"))
        } else {
            (200, "", done())
        }
    });
    let s = setup("a_429_with_retry_after_is_honoured", &api, false);
    let (code, text, _) = run(&s);
    assert_eq!(code, 0, "{text}");
    assert_eq!(final_status(&s), (TicketStatus::Done, 0));
    assert_eq!(work_file(&s), None, "the fallback did not run");
    assert_eq!(
        seen.lock().unwrap().len(),
        4,
        "3 refused, then the one answered"
    );
    // Between claude's first run ending and orch starting the next.
    let runs = claude_runs(&s);
    assert_eq!(runs.len(), 2, "{runs:?}");
    let waited = Duration::from_nanos((runs[1].0 - runs[0].1) as u64);
    assert!(
        waited >= Duration::from_secs(3),
        "orch's next run waited for retry-after: {waited:?}"
    );
}
