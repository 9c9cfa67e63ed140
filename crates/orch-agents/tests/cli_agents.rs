//! Process agents against stand-ins: small scripts that replay the lines
//! the real CLIs printed (tests/fixtures), hang, stall, flood or leak.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use orch_agents::{AgentDefaults, REDACTED, from_spec};
use orch_core::{
    AgentContext, AgentErrorKind, AgentId, AgentSpec, AgentTask, Cancellation, Progress,
};

mod common;

fn fixture(name: &str) -> String {
    format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"))
}

/// An executable script in `dir`.
fn script(dir: &Path, name: &str, body: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    p.to_string_lossy().into_owned()
}

fn task(dir: &Path, prompt: &str) -> AgentTask {
    common::task("T-1", "implement", "dev", prompt, dir)
}

fn spec(json: serde_json::Value) -> AgentSpec {
    serde_json::from_value(json).unwrap()
}

fn defaults(transcripts: Option<PathBuf>) -> AgentDefaults {
    AgentDefaults {
        timeout: Duration::from_secs(60),
        stall: Duration::from_secs(60),
        transcripts,
        ..AgentDefaults::default()
    }
}

type Seen = Arc<Mutex<Vec<Progress>>>;

fn ctx() -> (AgentContext, Seen) {
    let seen: Seen = Arc::default();
    let s = seen.clone();
    (
        AgentContext {
            cancel: Cancellation::new(),
            progress: Arc::new(move |_: &AgentId, p: Progress| s.lock().unwrap().push(p)),
        },
        seen,
    )
}

fn alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => false,
        Ok(stat) => !matches!(
            stat.rsplit(')')
                .next()
                .and_then(|r| r.split_whitespace().next()),
            Some("Z" | "X")
        ),
    }
}

#[tokio::test]
async fn claude_code_stand_in_success_and_argv() {
    let d = tempfile::tempdir().unwrap();
    let claude = script(
        d.path(),
        "claude",
        &format!(
            "printf '%s\\n' \"$@\" > argv.txt\ncat > prompt.txt\ncat {}",
            fixture("claude_tool.jsonl")
        ),
    );
    let agent = from_spec(&spec(serde_json::json!({"backend": {"kind": "claude_code", "binary": claude,
        "model": "sonnet", "max_turns": 7, "allowed_tools": ["Bash", "Edit"], "permission_mode": "acceptEdits"}})),
        &defaults(None)).unwrap();
    let (c, seen) = ctx();
    let out = agent.run(task(d.path(), "Fix the XSS"), &c).await.unwrap();
    assert!(out.success);
    assert_eq!(out.summary, "Hello from the mock.");
    assert_eq!(out.usage.output_tokens, 37);
    let argv = std::fs::read_to_string(d.path().join("argv.txt")).unwrap();
    assert_eq!(
        argv,
        "-p\n--output-format\nstream-json\n--verbose\n--model\nsonnet\n--max-turns\n7\n--allowedTools\nBash,Edit\n--permission-mode\nacceptEdits\n"
    );
    assert_eq!(
        std::fs::read_to_string(d.path().join("prompt.txt")).unwrap(),
        "Fix the XSS",
        "prompt on stdin"
    );
    // A retry continues the previous attempt's session.
    let mut retry = task(d.path(), "Fix the XSS; the test still fails");
    retry.resume = Some("6a1f0c7e-session".into());
    agent.run(retry, &c).await.unwrap();
    let argv = std::fs::read_to_string(d.path().join("argv.txt")).unwrap();
    assert!(
        argv.ends_with("acceptEdits\n--resume\n6a1f0c7e-session\n"),
        "{argv}"
    );
    assert!(
        seen.lock()
            .unwrap()
            .iter()
            .any(|p| matches!(p, Progress::ToolUse { name, .. } if name == "Bash"))
    );
}

#[tokio::test]
async fn claude_code_failures_are_classified() {
    let d = tempfile::tempdir().unwrap();
    for (fixture_name, code, kind) in [
        ("claude_maxturns.jsonl", 1, AgentErrorKind::MaxTurns),
        ("claude_529.jsonl", 1, AgentErrorKind::Overloaded),
    ] {
        let claude = script(
            d.path(),
            "claude",
            &format!("cat >/dev/null\ncat {}\nexit {code}", fixture(fixture_name)),
        );
        let agent = from_spec(
            &spec(serde_json::json!({"backend": {"kind": "claude_code", "binary": claude}})),
            &defaults(None),
        )
        .unwrap();
        let e = agent.run(task(d.path(), "p"), &ctx().0).await.unwrap_err();
        assert_eq!(e.kind, kind, "{fixture_name}: {e}");
    }
    // Non-zero exit mid-stream: two lines, then exit 3.
    let claude = script(
        d.path(),
        "claude",
        &format!(
            "cat >/dev/null\nhead -n 2 {}\nexit 3",
            fixture("claude_tool.jsonl")
        ),
    );
    let agent = from_spec(
        &spec(serde_json::json!({"backend": {"kind": "claude_code", "binary": claude}})),
        &defaults(None),
    )
    .unwrap();
    let e = agent.run(task(d.path(), "p"), &ctx().0).await.unwrap_err();
    assert_eq!(e.kind, AgentErrorKind::Crashed);
    assert_eq!(
        e.message,
        "the stream ended after 2 lines without a result (exit status 3)"
    );
    // Not installed.
    let agent = from_spec(&spec(serde_json::json!({"backend": {"kind": "claude_code", "binary": "no-such-claude-orch"}})), &defaults(None)).unwrap();
    let e = agent.run(task(d.path(), "p"), &ctx().0).await.unwrap_err();
    assert_eq!(e.kind, AgentErrorKind::Spawn);
    assert_eq!(
        e.message,
        "no-such-claude-orch is not installed or not on PATH"
    );
}

#[tokio::test]
async fn codex_stand_in() {
    let d = tempfile::tempdir().unwrap();
    let codex = script(
        d.path(),
        "codex",
        &format!(
            "printf '%s\\n' \"$@\" > argv.txt\ncat > prompt.txt\ncat {}",
            fixture("codex_tool.jsonl")
        ),
    );
    let agent = from_spec(&spec(serde_json::json!({"backend": {"kind": "codex", "binary": codex, "sandbox": "workspace-write"}})), &defaults(None)).unwrap();
    // A prompt past the kernel's 128 KiB limit for one argument.
    let long = format!("Add retries\n{}", "feedback line\n".repeat(15_000));
    let out = agent.run(task(d.path(), &long), &ctx().0).await.unwrap();
    assert_eq!(out.summary, "Hello from the mock.");
    assert_eq!(
        std::fs::read_to_string(d.path().join("argv.txt")).unwrap(),
        "exec\n--json\n--sandbox\nworkspace-write\n-\n"
    );
    assert_eq!(
        std::fs::read_to_string(d.path().join("prompt.txt")).unwrap(),
        long,
        "the prompt on stdin"
    );
    // A retry continues the previous attempt's thread.
    let mut retry = task(d.path(), "Add retries; two tests fail");
    retry.resume = Some("0199a213-81c0-7800-8aa1-bbab2a035a53".into());
    agent.run(retry, &ctx().0).await.unwrap();
    assert_eq!(
        std::fs::read_to_string(d.path().join("argv.txt")).unwrap(),
        "exec\n--json\n--sandbox\nworkspace-write\nresume\n0199a213-81c0-7800-8aa1-bbab2a035a53\n-\n"
    );
    assert_eq!(
        std::fs::read_to_string(d.path().join("prompt.txt")).unwrap(),
        "Add retries; two tests fail"
    );
}

#[tokio::test]
async fn hung_agents_are_killed_on_timeout_stall_and_cancel_leaving_no_process() {
    let d = tempfile::tempdir().unwrap();
    let hang = script(
        d.path(),
        "hang",
        "echo $$ > hang.pid\nsleep 300 &\necho $! > child.pid\necho started\nwait",
    );
    let pids = |d: &Path| -> Vec<i32> {
        ["hang.pid", "child.pid"]
            .iter()
            .map(|f| {
                std::fs::read_to_string(d.join(f))
                    .unwrap()
                    .trim()
                    .parse()
                    .unwrap()
            })
            .collect()
    };
    // Timeout.
    let mut df = defaults(None);
    df.timeout = Duration::from_secs(1);
    let agent = from_spec(
        &spec(serde_json::json!({"backend": {"kind": "command", "argv": [hang]}})),
        &df,
    )
    .unwrap();
    let e = agent.run(task(d.path(), ""), &ctx().0).await.unwrap_err();
    assert_eq!(e.kind, AgentErrorKind::TimedOut, "{e}");
    assert!(
        pids(d.path()).iter().all(|p| !alive(*p)),
        "process group gone after timeout"
    );
    // Stall: prints one line, then nothing.
    let mut df = defaults(None);
    df.stall = Duration::from_secs(1);
    let agent = from_spec(
        &spec(serde_json::json!({"backend": {"kind": "command", "argv": [hang]}})),
        &df,
    )
    .unwrap();
    let e = agent.run(task(d.path(), ""), &ctx().0).await.unwrap_err();
    assert_eq!(e.kind, AgentErrorKind::Stalled, "{e}");
    assert!(e.is_retryable());
    assert!(
        pids(d.path()).iter().all(|p| !alive(*p)),
        "process group gone after stall"
    );
    // Cancellation.
    let agent = from_spec(
        &spec(serde_json::json!({"backend": {"kind": "command", "argv": [hang]}})),
        &defaults(None),
    )
    .unwrap();
    let (c, _) = ctx();
    let cancel = c.cancel.clone();
    let t = task(d.path(), "");
    std::fs::remove_file(d.path().join("child.pid")).unwrap();
    let h = tokio::spawn(async move { agent.run(t, &c).await });
    // Cancel once the script has started its child.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !std::fs::read_to_string(d.path().join("child.pid")).is_ok_and(|s| s.ends_with('\n')) {
        assert!(
            std::time::Instant::now() < deadline,
            "the script never started"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    cancel.cancel();
    let e = h.await.unwrap().unwrap_err();
    assert_eq!(e.kind, AgentErrorKind::Cancelled);
    assert!(
        pids(d.path()).iter().all(|p| !alive(*p)),
        "process group gone after cancel"
    );
}

#[tokio::test]
async fn ten_megabytes_of_output_stay_bounded_and_secrets_are_redacted() {
    let d = tempfile::tempdir().unwrap();
    let logs = d.path().join("transcripts");
    let flood = script(
        d.path(),
        "flood",
        "i=0\nwhile [ $i -lt 100000 ]; do echo \"line $i of a long run with a hundred characters of padding ...............................\"; i=$((i+1)); done\nhead -c 2000000 /dev/zero | tr '\\0' y\necho\necho \"key is $MY_API_KEY and sk-ant-api03-ABCDEFGHIJKLMNOPQRSTUVWX\"\necho done",
    );
    let agent = from_spec(
        &spec(
            serde_json::json!({"backend": {"kind": "command", "argv": [flood],
        "env": {"MY_API_KEY": "s3cr3t-value-123456"}}}),
        ),
        &defaults(Some(logs.clone())),
    )
    .unwrap();
    let (c, seen) = ctx();
    let out = agent.run(task(d.path(), ""), &c).await.unwrap();
    assert!(out.success);
    assert_eq!(out.summary, "done");
    let transcript = std::fs::read_to_string(out.transcript.unwrap()).unwrap();
    assert!(
        transcript.len() < 1_100_000,
        "transcript capped: {} bytes",
        transcript.len()
    );
    assert!(transcript.contains("bytes dropped ...]"));
    assert!(
        !transcript.contains("s3cr3t-value-123456") && !transcript.contains("sk-ant-api03"),
        "secrets redacted"
    );
    assert!(transcript.contains(&format!("key is {REDACTED} and {REDACTED}")));
    let seen = seen.lock().unwrap();
    assert!(seen.iter().any(|p| matches!(p, Progress::Text { text } if text == &format!("key is {REDACTED} and {REDACTED}"))));
    assert!(
        !seen
            .iter()
            .any(|p| matches!(p, Progress::Text { text } if text.contains("s3cr3t")))
    );
    let long = seen
        .iter()
        .filter_map(|p| match p {
            Progress::Text { text } => Some(text.len()),
            _ => None,
        })
        .max()
        .unwrap();
    assert!(
        long <= orch_core::process::MAX_LINE_BYTES,
        "the 2 MB line was cut to {long}"
    );
}

#[tokio::test]
async fn command_agent_prompt_paths_and_environment() {
    let d = tempfile::tempdir().unwrap();
    let show = script(
        d.path(),
        "show",
        "echo \"arg=$1\"\n[ -n \"$2\" ] && echo \"file=$(cat \"$2\")\"\necho \"stdin=$(cat)\"\necho \"ticket=$ORCH_TICKET home=${HOME:+set} leak=${CARGO_PKG_NAME:-unset}\"",
    );
    let run = |json: serde_json::Value| {
        let d = d.path().to_path_buf();
        async move {
            let agent = from_spec(&spec(json), &defaults(None)).unwrap();
            let (c, seen) = ctx();
            agent.run(task(&d, "the prompt"), &c).await.unwrap();
            let texts: Vec<String> = seen
                .lock()
                .unwrap()
                .iter()
                .filter_map(|p| match p {
                    Progress::Text { text } => Some(text.clone()),
                    _ => None,
                })
                .collect();
            texts
        }
    };
    let t = run(serde_json::json!({"backend": {"kind": "command", "argv": [show]}})).await;
    assert_eq!(
        t,
        ["arg=", "stdin=the prompt", "ticket=T-1 home=set leak=unset"]
    );
    let t = run(serde_json::json!({"backend": {"kind": "command", "argv": [show, "{prompt}"], "prompt_via": "arg"}})).await;
    assert_eq!(t[0], "arg=the prompt");
    let t = run(serde_json::json!({"backend": {"kind": "command", "argv": [show, "x", "{prompt_file}"], "prompt_via": "file", "env_allow": ["CARGO_PKG_NAME"]}})).await;
    assert_eq!(t[1], "file=the prompt");
    assert_eq!(
        t[3], "ticket=T-1 home=set leak=orch-agents",
        "allow-listed variables pass"
    );
    // Failure: non-zero exit is an outcome, not an error.
    let fail = script(
        d.path(),
        "fail",
        "echo working\necho 'cannot compile' >&2\nexit 2",
    );
    let agent = from_spec(
        &spec(serde_json::json!({"backend": {"kind": "command", "argv": [fail]}})),
        &defaults(None),
    )
    .unwrap();
    let out = agent.run(task(d.path(), ""), &ctx().0).await.unwrap();
    assert!(!out.success);
    assert!(
        out.summary
            .ends_with("exited with status 2: cannot compile"),
        "{}",
        out.summary
    );
    // A bad spec is refused.
    let e = from_spec(
        &spec(
            serde_json::json!({"backend": {"kind": "command", "argv": ["x"], "prompt_via": "arg"}}),
        ),
        &defaults(None),
    )
    .err()
    .unwrap();
    assert_eq!(e.kind, AgentErrorKind::Config);
}

/// `Agent::check`: what the engine asks before a run, without running.
#[test]
fn check_names_a_missing_or_unusable_program_and_how_to_install_it() {
    let d = tempfile::tempdir().unwrap();
    let dev: orch_core::RoleName = "dev".parse().unwrap();
    let check = |backend: serde_json::Value| {
        from_spec(
            &spec(serde_json::json!({ "backend": backend })),
            &defaults(None),
        )
        .unwrap()
        .check(&dev)
    };
    let command = |argv: &[&str]| check(serde_json::json!({"kind": "command", "argv": argv}));
    let e = command(&["no-such-agent-orch", "-p"]).unwrap_err();
    assert_eq!(e.kind, AgentErrorKind::Spawn);
    assert_eq!(
        e.message,
        "no-such-agent-orch is not installed or not on PATH"
    );
    command(&["sh", "-c", "true"]).unwrap();
    let agent = script(d.path(), "agent", "true");
    command(&[&agent]).unwrap();
    let plain = d.path().join("plain");
    std::fs::write(&plain, "not a program").unwrap();
    let e = command(&[plain.to_str().unwrap()]).unwrap_err();
    assert_eq!(
        e.message,
        format!("{} is not an executable file", plain.display())
    );
    let gone = d.path().join("gone");
    let e = command(&[gone.to_str().unwrap()]).unwrap_err();
    assert_eq!(e.message, format!("{} does not exist", gone.display()));
    // Relative to the work tree, which may not exist before the run.
    command(&["./scripts/agent.sh"]).unwrap();
    // Looked up on the PATH the agent's environment gives it.
    let own_path = |path: &str| {
        check(serde_json::json!({"kind": "command", "argv": ["agent"], "env": {"PATH": path}}))
    };
    own_path(d.path().to_str().unwrap()).unwrap();
    assert!(own_path("/nonexistent").is_err());

    let e = check(serde_json::json!({"kind": "claude_code", "binary": "no-such-claude-orch"}))
        .unwrap_err();
    assert_eq!(e.kind, AgentErrorKind::Spawn);
    assert!(
        e.message
            .starts_with("no-such-claude-orch is not installed or not on PATH")
            && e.message
                .contains("npm install -g @anthropic-ai/claude-code"),
        "{e}"
    );
    check(serde_json::json!({"kind": "claude_code", "binary": agent})).unwrap();
    let e =
        check(serde_json::json!({"kind": "codex", "binary": "no-such-codex-orch"})).unwrap_err();
    assert!(e.message.contains("npm install -g @openai/codex"), "{e}");
}

/// Each run of a task (a retry by the resilience layer, a fallback) gets
/// a transcript of its own: the second does not overwrite the first.
#[tokio::test]
async fn every_run_of_a_task_keeps_its_own_transcript() {
    let d = tempfile::tempdir().unwrap();
    let logs = d.path().join("transcripts");
    let n = d.path().join("n");
    let agent_sh = script(
        d.path(),
        "agent",
        &format!(
            "echo x >> {n}; echo \"run $(wc -l < {n})\"",
            n = n.display()
        ),
    );
    let agent = from_spec(
        &spec(serde_json::json!({"backend": {"kind": "command", "argv": [agent_sh]}})),
        &defaults(Some(logs.clone())),
    )
    .unwrap();
    let (c, _) = ctx();
    let first = agent.run(task(d.path(), ""), &c).await.unwrap();
    let second = agent.run(task(d.path(), ""), &c).await.unwrap();
    let (first, second) = (first.transcript.unwrap(), second.transcript.unwrap());
    assert_eq!(first, logs.join("T-1.implement.1.log"));
    assert_eq!(second, logs.join("T-1.implement.1.2.log"));
    assert!(std::fs::read_to_string(first).unwrap().contains("run 1"));
    assert!(std::fs::read_to_string(second).unwrap().contains("run 2"));
}

/// A stream line that quotes a private key header (an edit to PEM-parsing
/// code) and a token does not break the stream: the result is still read,
/// and what reaches progress and the summary is redacted.
#[tokio::test]
async fn secrets_in_an_event_stream_are_redacted_without_breaking_it() {
    let d = tempfile::tempdir().unwrap();
    let quoting = r#"{"type":"assistant","message":{"id":"m1","type":"message","role":"assistant","model":"claude-sonnet-4-5","content":[{"type":"text","text":"const H: &str = \"-----BEGIN RSA PRIVATE KEY-----\"; token\nghp_R4nd0mT0k3nF0rT3st1ngPurp0s3sOnly12"}],"stop_reason":null,"usage":{"input_tokens":1,"output_tokens":1}},"session_id":"s"}"#;
    let claude = script(
        d.path(),
        "claude",
        &format!(
            "cat > /dev/null\ncat <<'EOF'\n{quoting}\nEOF\ncat {}",
            fixture("claude_tool.jsonl")
        ),
    );
    let logs = d.path().join("transcripts");
    let agent = from_spec(
        &spec(serde_json::json!({"backend": {"kind": "claude_code", "binary": claude}})),
        &defaults(Some(logs)),
    )
    .unwrap();
    let (c, seen) = ctx();
    let out = agent.run(task(d.path(), "x"), &c).await.unwrap();
    assert!(out.success, "the result line after the quote was read");
    assert_eq!(out.summary, "Hello from the mock.");
    let seen = format!("{:?}", seen.lock().unwrap());
    assert!(seen.contains(REDACTED), "{seen}");
    assert!(!seen.contains("ghp_R4nd0m"), "{seen}");
    let transcript = std::fs::read_to_string(out.transcript.unwrap()).unwrap();
    assert!(!transcript.contains("ghp_R4nd0m"), "{transcript}");
}

/// A `command` backend that says where its usage is has it recorded: by
/// JSON pointers (the last line with usage), by a regex added up over the
/// lines, and on a failed run too.
#[tokio::test]
async fn a_command_backends_usage_is_read_from_its_output() {
    let d = tempfile::tempdir().unwrap();
    let json_cli = script(
        d.path(),
        "json-cli",
        r#"echo '{"type":"start"}'
echo '{"type":"turn","usage":{"in":100,"out":10},"cost":0.001}'
echo 'plain text'
echo '{"type":"result","usage":{"in":250,"out":40},"cost":"0.0042"}'"#,
    );
    let agent = from_spec(
        &spec(serde_json::json!({"backend": {"kind": "command", "argv": [json_cli],
            "usage": {"input_tokens": "/usage/in", "output_tokens": "/usage/out", "cost_usd": "/cost"}}})),
        &defaults(None),
    )
    .unwrap();
    let out = agent.run(task(d.path(), ""), &ctx().0).await.unwrap();
    assert_eq!((out.usage.input_tokens, out.usage.output_tokens), (250, 40));
    assert!(
        (out.usage.cost_usd - 0.0042).abs() < 1e-12,
        "{:?}",
        out.usage
    );

    let text_cli = script(
        d.path(),
        "text-cli",
        "echo 'step: tokens in=300 out=20'\necho 'step: tokens in=200 out=30'\nexit 3",
    );
    let agent = from_spec(
        &spec(serde_json::json!({"backend": {"kind": "command", "argv": [text_cli],
            "usage": {"regex": r"in=(?<input_tokens>\d+) out=(?<output_tokens>\d+)", "sum": true}}})),
        &defaults(None),
    )
    .unwrap();
    let out = agent.run(task(d.path(), ""), &ctx().0).await.unwrap();
    assert!(!out.success);
    assert_eq!(
        (out.usage.input_tokens, out.usage.output_tokens),
        (500, 50),
        "a failed run's usage counts too"
    );

    let Err(e) = from_spec(
        &spec(
            serde_json::json!({"backend": {"kind": "command", "argv": ["true"],
            "usage": {"regex": r"(?<tokens>\d+)"}}}),
        ),
        &defaults(None),
    ) else {
        panic!("a regex with none of the groups is refused")
    };
    assert!(e.message.contains("name at least one group"), "{e}");
}
