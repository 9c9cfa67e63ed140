//! The stream parsers on lines the real CLIs printed (tests/fixtures).

use orch_agents::stream::{ClaudeStream, CodexStream, Exit};
use orch_core::{AgentErrorKind, Progress};

fn lines(name: &str) -> Vec<String> {
    std::fs::read_to_string(format!(
        "{}/tests/fixtures/{name}",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap()
    .lines()
    .map(str::to_owned)
    .collect()
}

fn claude(name: &str) -> (ClaudeStream, Vec<Progress>) {
    let mut s = ClaudeStream::new();
    let mut p = Vec::new();
    for l in lines(name) {
        p.extend(s.push_line(&l));
    }
    (s, p)
}

#[test]
fn claude_success_with_a_tool_call() {
    let (s, progress) = claude("claude_tool.jsonl");
    assert!(s.malformed.is_empty() && s.unknown.is_empty());
    assert_eq!(progress.len(), 4, "{progress:?}");
    assert!(
        matches!(&progress[0], Progress::System { message } if message == "session 3a8fb9d6-62e5-43a6-be55-161fac85ac09 started (model claude-sonnet-4-5)")
    );
    assert!(
        matches!(&progress[1], Progress::ToolUse { name, input } if name == "Bash" && input.contains("echo hello-from-tool"))
    );
    assert!(
        matches!(&progress[2], Progress::ToolResult { is_error: false, excerpt } if excerpt == "hello-from-tool")
    );
    assert!(matches!(&progress[3], Progress::Text { text } if text == "Hello from the mock."));
    let out = s.finish(Exit::Code(0)).unwrap();
    assert!(out.success);
    assert_eq!(out.summary, "Hello from the mock.");
    assert_eq!((out.usage.input_tokens, out.usage.output_tokens), (240, 37));
    assert!((out.usage.cost_usd - 0.001275).abs() < 1e-9);
    assert_eq!(
        out.session_id.as_deref(),
        Some("3a8fb9d6-62e5-43a6-be55-161fac85ac09")
    );
}

#[test]
fn claude_max_turns() {
    let (s, _) = claude("claude_maxturns.jsonl");
    let e = s.finish(Exit::Code(1)).unwrap_err();
    assert_eq!(e.kind, AgentErrorKind::MaxTurns);
    assert_eq!(e.message, "Reached maximum number of turns (1)");
    assert!(e.is_retryable());
    assert!(
        e.usage.cost_usd > 0.0,
        "usage spent before the failure is kept"
    );
}

#[test]
fn claude_529_is_overloaded_although_subtype_says_success() {
    let (s, progress) = claude("claude_529.jsonl");
    let retries: Vec<&str> = progress
        .iter()
        .filter_map(|p| match p {
            Progress::System { message } if message.starts_with("API retry") => {
                Some(message.as_str())
            }
            _ => None,
        })
        .collect();
    assert_eq!(
        retries,
        [
            "API retry 1/2 after 529 overloaded",
            "API retry 2/2 after 529 overloaded"
        ]
    );
    let e = s.finish(Exit::Code(1)).unwrap_err();
    assert_eq!(e.kind, AgentErrorKind::Overloaded);
    assert!(
        e.message.starts_with("API Error: 529 Overloaded."),
        "{}",
        e.message
    );
    assert!(e.is_retryable());
}

#[test]
fn claude_malformed_lines_unknown_events_and_cut_streams() {
    let mut all = lines("claude_tool.jsonl");
    all.insert(2, "{\"type\": \"assistant\", \"message\": {".into());
    all.insert(3, r#"{"type":"rate_limit_event","remaining":3}"#.into());
    let mut s = ClaudeStream::new();
    for l in &all {
        s.push_line(l);
    }
    assert_eq!(s.malformed.len(), 1);
    assert_eq!(s.malformed[0].line, 3);
    assert_eq!(s.unknown, ["rate_limit_event"]);
    assert!(
        s.finish(Exit::Code(0)).is_ok(),
        "the rest of the stream still counts"
    );

    // Killed mid-stream: no result line.
    let mut s = ClaudeStream::new();
    for l in &lines("claude_tool.jsonl")[..3] {
        s.push_line(l);
    }
    let e = s.finish(Exit::Signal(9)).unwrap_err();
    assert_eq!(e.kind, AgentErrorKind::Crashed);
    assert_eq!(
        e.message,
        "the stream ended after 3 lines without a result (signal 9)"
    );
    // A success result but a non-zero exit is not trusted.
    let (s, _) = claude("claude_tool.jsonl");
    assert_eq!(
        s.finish(Exit::Code(2)).unwrap_err().kind,
        AgentErrorKind::Crashed
    );
}

fn codex(name: &str) -> (CodexStream, Vec<Progress>) {
    let mut s = CodexStream::new();
    let mut p = Vec::new();
    for l in lines(name) {
        p.extend(s.push_line(&l));
    }
    (s, p)
}

#[test]
fn codex_success_and_tool_use() {
    let (s, progress) = codex("codex_ok.jsonl");
    assert!(progress.iter().any(|p| matches!(p, Progress::System { message } if message.starts_with("warning: Model metadata"))));
    let out = s.finish(Exit::Code(0)).unwrap();
    assert_eq!(out.summary, "Hello from the mock.");
    assert_eq!(
        (out.usage.input_tokens, out.usage.output_tokens),
        (1200, 20)
    );
    assert_eq!(
        out.session_id.as_deref(),
        Some("01a20740-f756-79f0-a180-f8e00d0115fc")
    );

    let (s, progress) = codex("codex_tool.jsonl");
    assert!(progress.iter().any(|p| matches!(p, Progress::ToolUse { name, input } if name == "shell" && input == "/bin/bash -lc 'echo hello-from-tool'")));
    assert!(progress.iter().any(|p| matches!(p, Progress::ToolResult { is_error: false, excerpt } if excerpt == "hello-from-tool\n")));
    assert!(s.finish(Exit::Code(0)).is_ok());
}

#[test]
fn codex_only_turn_failed_means_failure() {
    // A top-level error line (a retry that continues) does not fail the run.
    let mut all = lines("codex_ok.jsonl");
    all.insert(
        2,
        r#"{"type":"error","message":"Reconnecting... 1/5"}"#.into(),
    );
    let mut s = CodexStream::new();
    all.iter().for_each(|l| {
        s.push_line(l);
    });
    assert!(s.finish(Exit::Code(0)).is_ok());
    // turn.failed does, classified from its message.
    let mut s = CodexStream::new();
    for l in &lines("codex_ok.jsonl")[..3] {
        s.push_line(l);
    }
    s.push_line(r#"{"type":"turn.failed","error":{"message":"exceeded retry limit, last status: 429 Too Many Requests"}}"#);
    let e = s.finish(Exit::Code(1)).unwrap_err();
    assert_eq!(e.kind, AgentErrorKind::RateLimited);
    // No completed turn at all.
    let mut s = CodexStream::new();
    s.push_line(&lines("codex_ok.jsonl")[0]);
    assert_eq!(
        s.finish(Exit::Code(0)).unwrap_err().kind,
        AgentErrorKind::Crashed
    );
}

/// Claude Code that could not reach its API (connection refused, after
/// its own retries): an outage to back off from and fail over, not a
/// crash.
#[test]
fn claude_connection_refused_is_an_outage() {
    let (s, _) = claude("claude_connection_refused.jsonl");
    let e = s.finish(Exit::Code(1)).unwrap_err();
    assert_eq!(e.kind, AgentErrorKind::Overloaded, "{e}");
    assert!(
        e.message.starts_with("API Error: Connection refused"),
        "{}",
        e.message
    );
    assert!(e.is_retryable());
}

fn gemini(name: &str) -> (orch_agents::stream::GeminiStream, Vec<Progress>) {
    let mut s = orch_agents::stream::GeminiStream::new();
    let mut p = Vec::new();
    for l in lines(name) {
        p.extend(s.push_line(&l));
    }
    (s, p)
}

#[test]
fn gemini_success_with_a_tool_call() {
    let (s, progress) = gemini("gemini_tool.jsonl");
    assert!(s.malformed.is_empty() && s.unknown.is_empty());
    assert_eq!(progress.len(), 4, "{progress:?}");
    assert!(
        matches!(&progress[0], Progress::System { message } if message.contains("model gemini-2.5-pro"))
    );
    assert!(
        matches!(&progress[1], Progress::ToolUse { name, input } if name == "write_file" && input.contains("hello.txt"))
    );
    assert!(matches!(
        &progress[2],
        Progress::ToolResult {
            is_error: false,
            ..
        }
    ));
    assert!(matches!(&progress[3], Progress::Text { text } if text == "Done writing."));
    let out = s.finish(Exit::Code(0)).unwrap();
    assert_eq!(out.summary, "Done writing.");
    assert_eq!((out.usage.input_tokens, out.usage.output_tokens), (642, 24));
    assert_eq!(
        out.session_id.as_deref(),
        Some("9471a6ac-ae5a-41a9-9424-5f778c73e425")
    );
}

#[test]
fn gemini_api_errors_are_classified_by_the_status_they_quote() {
    // The real CLI's line for a 400 (it exits with the status, 400 & 255).
    let (s, _) = gemini("gemini_api_error.jsonl");
    let e = s.finish(Exit::Code(144)).unwrap_err();
    assert_eq!(e.kind, AgentErrorKind::Config, "{e}");
    assert!(e.message.contains("stand-in says 400"), "{e}");
    for (status, kind) in [
        (429, AgentErrorKind::RateLimited),
        (503, AgentErrorKind::Overloaded),
        (401, AgentErrorKind::Auth),
    ] {
        let line = lines("gemini_api_error.jsonl")
            .last()
            .unwrap()
            .replace("400", &status.to_string());
        let mut s = orch_agents::stream::GeminiStream::new();
        s.push_line(&line);
        assert_eq!(s.finish(Exit::Code(1)).unwrap_err().kind, kind, "{status}");
    }
    // No result line: the CLI's own exit codes.
    for (code, kind) in [
        (41, AgentErrorKind::Auth),
        (55, AgentErrorKind::Config),
        (53, AgentErrorKind::MaxTurns),
        (1, AgentErrorKind::Crashed),
    ] {
        let e = orch_agents::stream::GeminiStream::new()
            .finish(Exit::Code(code))
            .unwrap_err();
        assert_eq!(e.kind, kind, "exit {code}: {e}");
    }
    // A success line with a failing exit is not a success.
    let (s, _) = gemini("gemini_tool.jsonl");
    assert_eq!(
        s.finish(Exit::Code(1)).unwrap_err().kind,
        AgentErrorKind::Crashed
    );
}

/// Qwen Code's stream has Claude Code's shape: the same parser reads it.
#[test]
fn qwen_code_success_with_a_tool_call_reads_as_claude_codes_shape() {
    let (s, progress) = claude("qwen_tool.jsonl");
    assert!(s.malformed.is_empty());
    assert!(
        progress
            .iter()
            .any(|p| matches!(p, Progress::ToolUse { name, input } if name == "run_shell_command" && input.contains("hello.txt")))
    );
    assert!(progress.iter().any(|p| matches!(
        p,
        Progress::ToolResult {
            is_error: false,
            ..
        }
    )));
    let out = s.finish(Exit::Code(0)).unwrap();
    assert_eq!(out.summary, "Wrote hello.txt.");
    assert_eq!((out.usage.input_tokens, out.usage.output_tokens), (800, 50));
}

/// Qwen Code's API errors quote the status in the error's message: a
/// refused key is an auth failure (the backend's circuit opens at once).
#[test]
fn qwen_code_api_errors_are_classified_by_the_status_they_quote() {
    let (s, _) = claude("qwen_401.jsonl");
    let e = s.finish(Exit::Code(1)).unwrap_err();
    assert_eq!(e.kind, AgentErrorKind::Auth, "{e}");
    assert!(e.message.contains("Incorrect API key"), "{e}");
    for (status, kind) in [
        ("429", AgentErrorKind::RateLimited),
        ("503", AgentErrorKind::Overloaded),
    ] {
        let mut s = ClaudeStream::new();
        s.push_line(
            &lines("qwen_401.jsonl")
                .last()
                .unwrap()
                .replace("401", status),
        );
        assert_eq!(s.finish(Exit::Code(1)).unwrap_err().kind, kind, "{status}");
    }
}
