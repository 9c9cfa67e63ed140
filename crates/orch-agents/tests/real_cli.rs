//! The real Claude Code, Codex, Gemini CLI and Qwen Code CLIs, driven by
//! orch-agents, against a local stand-in API that answers like the real
//! ones (Anthropic Messages SSE, OpenAI Responses SSE, Gemini
//! `streamGenerateContent` SSE, OpenAI Chat Completions SSE). Ignored by
//! default, because the binaries are not part of the build; `.ci/run`
//! installs them and runs these:
//!
//! ```text
//! npm install --prefix /tmp/clis @anthropic-ai/claude-code @openai/codex @google/gemini-cli @qwen-code/qwen-code
//! ORCH_TEST_REAL_CLIS=1 \
//!   ORCH_TEST_CLAUDE=/tmp/clis/node_modules/.bin/claude \
//!   ORCH_TEST_CODEX=/tmp/clis/node_modules/.bin/codex \
//!   ORCH_TEST_GEMINI=/tmp/clis/node_modules/.bin/gemini \
//!   ORCH_TEST_QWEN=/tmp/clis/node_modules/.bin/qwen \
//!   cargo test -p orch-agents --test real_cli -- --ignored
//! ```
//!
//! (Without `ORCH_TEST_<CLI>`, the binary is looked up on the PATH.)
//! Claude Code finds the stand-in through `ANTHROPIC_BASE_URL`; Codex
//! through a model provider given with `-c model_providers.<name>.base_url=...`
//! (it ignores `OPENAI_BASE_URL`); Gemini CLI through
//! `GOOGLE_GEMINI_BASE_URL`; Qwen Code through `OPENAI_BASE_URL`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use orch_agents::{AgentDefaults, from_spec};
use orch_core::{AgentContext, AgentSpec, AgentTask};

mod common;

/// The binary to test, or why the test is skipped.
fn binary(var: &str, name: &str) -> Result<PathBuf, String> {
    if std::env::var_os("ORCH_TEST_REAL_CLIS").is_none() {
        return Err("set ORCH_TEST_REAL_CLIS=1 (see this file's docs)".into());
    }
    if let Some(p) = std::env::var_os(var) {
        return Ok(PathBuf::from(p));
    }
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .ok_or_else(|| format!("{name} is not on the PATH and {var} is not set"))
}

/// The binary, or a failure naming the test and what it needs (these
/// tests are ignored by default; `.ci/run` installs the CLIs and runs them).
macro_rules! require {
    ($var:literal, $name:literal, $test:literal) => {
        binary($var, $name).unwrap_or_else(|why| panic!("{} needs {}: {why}", $test, $name))
    };
}

/// Every request body the stand-in has seen, joined.
fn seen_all(seen: &common::Seen) -> String {
    seen.lock()
        .unwrap()
        .iter()
        .map(|r| r.body.as_str())
        .collect()
}

/// Answers every request with 200 and `reply(path, body)`: (content
/// type, body).
async fn stand_in(
    reply: impl Fn(&str, &str) -> (&'static str, String) + Send + Sync + 'static,
) -> (String, common::Seen) {
    common::stand_in(move |path, body| {
        let (content_type, body) = reply(path, body);
        Some(common::Reply {
            status: 200,
            headers: String::new(),
            content_type,
            body,
        })
    })
    .await
}

fn sse(events: &[serde_json::Value]) -> String {
    events
        .iter()
        .map(|e| format!("event: {}\ndata: {e}\n\n", e["type"].as_str().unwrap_or("")))
        .collect()
}

/// An Anthropic Messages stream with one content block.
fn anthropic_stream(block: serde_json::Value, delta: serde_json::Value, stop: &str) -> String {
    use serde_json::json;
    sse(&[
        json!({"type": "message_start", "message": {"id": "msg_01", "type": "message", "role": "assistant",
            "model": "claude-sonnet-4-5", "content": [], "stop_reason": null, "stop_sequence": null,
            "usage": {"input_tokens": 120, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0, "output_tokens": 1}}}),
        json!({"type": "content_block_start", "index": 0, "content_block": block}),
        json!({"type": "content_block_delta", "index": 0, "delta": delta}),
        json!({"type": "content_block_stop", "index": 0}),
        json!({"type": "message_delta", "delta": {"stop_reason": stop, "stop_sequence": null}, "usage": {"output_tokens": 30}}),
        json!({"type": "message_stop"}),
    ])
}

/// A wrapper that sets the environment and runs `bin` (the agent specs
/// name a binary, and tests cannot set their own environment safely).
fn wrapper(dir: &Path, bin: &Path, env: &[(&str, &str)]) -> PathBuf {
    let mut script = String::from("#!/bin/sh\n");
    for (k, v) in env {
        script.push_str(&format!("export {k}='{v}'\n"));
    }
    script.push_str(&format!("exec '{}' \"$@\"\n", bin.display()));
    let path = dir.join(format!(
        "run-{}",
        bin.file_name().unwrap_or_default().to_string_lossy()
    ));
    std::fs::write(&path, script).unwrap();
    std::process::Command::new("chmod")
        .arg("+x")
        .arg(&path)
        .status()
        .unwrap();
    path
}

fn task(dir: &Path, prompt: &str) -> AgentTask {
    common::task("T-1", "implement", "dev", prompt, dir)
}

fn defaults(dir: &Path) -> AgentDefaults {
    AgentDefaults {
        timeout: Duration::from_secs(120),
        stall: Duration::from_secs(60),
        transcripts: Some(dir.join("transcripts")),
        ..AgentDefaults::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the real claude CLI: ORCH_TEST_REAL_CLIS=1 (.ci/run installs it)"]
async fn claude_code_writes_a_file_through_its_tool_and_reports_usage() {
    use serde_json::json;
    let claude = require!(
        "ORCH_TEST_CLAUDE",
        "claude",
        "claude_code_writes_a_file_through_its_tool_and_reports_usage"
    );
    let tmp = tempfile::tempdir().unwrap();
    let work = tmp.path().join("work");
    let home = tmp.path().join("home");
    std::fs::create_dir_all(&work).unwrap();
    std::fs::create_dir_all(&home).unwrap();
    let target = work.join("hello.txt");
    let file = target.to_string_lossy().into_owned();
    // The agent loop: ask for the Write tool, then finish once the tool's
    // result comes back. Side requests (no tools) get a short text.
    let (url, seen) = stand_in(move |path, body| {
        if !path.starts_with("/v1/messages") {
            return ("application/json", "{}".into());
        }
        if path.contains("count_tokens") {
            return ("application/json", r#"{"input_tokens": 12}"#.into());
        }
        let text = |t: &str| {
            anthropic_stream(
                json!({"type": "text", "text": ""}),
                json!({"type": "text_delta", "text": t}),
                "end_turn",
            )
        };
        let out = if !body.contains("\"tools\"") {
            text("ok")
        } else if body.contains("tool_result") {
            text("Wrote hello.txt as asked.")
        } else {
            let input = json!({"file_path": file, "content": "hello from claude\n"}).to_string();
            anthropic_stream(
                json!({"type": "tool_use", "id": "toolu_01", "name": "Write", "input": {}}),
                json!({"type": "input_json_delta", "partial_json": input}),
                "tool_use",
            )
        };
        ("text/event-stream", out)
    })
    .await;
    let bin = wrapper(
        tmp.path(),
        &claude,
        &[
            ("ANTHROPIC_BASE_URL", url.as_str()),
            ("ANTHROPIC_API_KEY", "sk-ant-test-not-a-key"),
            ("HOME", home.to_str().unwrap()),
            ("CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC", "1"),
            ("DISABLE_AUTOUPDATER", "1"),
        ],
    );
    let spec: AgentSpec = serde_json::from_value(json!({"backend": {
        "kind": "claude_code", "binary": bin, "model": "sonnet", "max_turns": 4,
        "allowed_tools": ["Write"], "permission_mode": "acceptEdits"}}))
    .unwrap();
    let agent = from_spec(&spec, &defaults(tmp.path())).unwrap();
    let out = agent
        .run(
            task(&work, "Create hello.txt saying hello."),
            &AgentContext::detached(),
        )
        .await
        .unwrap_or_else(|e| panic!("claude failed: {e}; requests: {:#?}", seen.lock().unwrap()));
    assert!(out.success, "{out:?}");
    assert_eq!(out.summary, "Wrote hello.txt as asked.");
    assert_eq!(
        std::fs::read_to_string(&target).unwrap(),
        "hello from claude\n"
    );
    assert!(out.session_id.is_some());
    assert!(
        out.usage.input_tokens >= 240,
        "two model calls of 120: {:?}",
        out.usage
    );
    let seen = seen.lock().unwrap();
    assert!(
        seen.iter()
            .any(|r| r.body.contains("Create hello.txt saying hello."))
    );
    assert!(out.transcript.as_ref().is_some_and(|t| t.exists()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the real codex CLI: ORCH_TEST_REAL_CLIS=1 (.ci/run installs it)"]
async fn codex_answers_through_a_custom_provider_and_reports_usage() {
    use serde_json::json;
    let codex = require!(
        "ORCH_TEST_CODEX",
        "codex",
        "codex_answers_through_a_custom_provider_and_reports_usage"
    );
    let tmp = tempfile::tempdir().unwrap();
    let work = tmp.path().join("work");
    let home = tmp.path().join("codex-home");
    std::fs::create_dir_all(&work).unwrap();
    std::fs::create_dir_all(&home).unwrap();
    let (url, seen) = stand_in(|path, _| {
        if !path.ends_with("/responses") {
            return ("application/json", r#"{"object": "list", "data": []}"#.into());
        }
        let msg = json!({"type": "message", "id": "msg_1", "status": "completed", "role": "assistant",
            "content": [{"type": "output_text", "text": "Nothing to change.", "annotations": []}]});
        let out = sse(&[
            json!({"type": "response.created", "response": {"id": "resp_1", "object": "response", "status": "in_progress", "output": []}}),
            json!({"type": "response.output_item.added", "output_index": 0, "item": {"type": "message", "id": "msg_1", "status": "in_progress", "role": "assistant", "content": []}}),
            json!({"type": "response.output_text.delta", "item_id": "msg_1", "output_index": 0, "content_index": 0, "delta": "Nothing to change."}),
            json!({"type": "response.output_item.done", "output_index": 0, "item": msg}),
            json!({"type": "response.completed", "response": {"id": "resp_1", "object": "response", "status": "completed", "output": [msg],
                "usage": {"input_tokens": 200, "input_tokens_details": {"cached_tokens": 0}, "output_tokens": 12,
                          "output_tokens_details": {"reasoning_tokens": 0}, "total_tokens": 212}}}),
        ]);
        ("text/event-stream", out)
    })
    .await;
    let seen_handle = seen.clone();
    let bin = wrapper(
        tmp.path(),
        &codex,
        &[
            ("ORCH_TEST_KEY", "sk-test-not-a-key"),
            ("CODEX_HOME", home.to_str().unwrap()),
        ],
    );
    let base = format!("{url}/v1");
    let c = |kv: String| ["-c".to_owned(), kv];
    let mut extra: Vec<String> = Vec::new();
    for kv in [
        "model_provider=\"orchtest\"".to_owned(),
        "model_providers.orchtest.name=\"orch test\"".to_owned(),
        format!("model_providers.orchtest.base_url=\"{base}\""),
        "model_providers.orchtest.env_key=\"ORCH_TEST_KEY\"".to_owned(),
        "model_providers.orchtest.wire_api=\"responses\"".to_owned(),
    ] {
        extra.extend(c(kv));
    }
    extra.push("--skip-git-repo-check".into());
    let spec: AgentSpec = serde_json::from_value(json!({"backend": {
        "kind": "codex", "binary": bin, "model": "gpt-5-codex", "sandbox": "workspace-write",
        "extra_args": extra}}))
    .unwrap();
    let agent = from_spec(&spec, &defaults(tmp.path())).unwrap();
    let out = agent
        .run(
            task(&work, "Check the work tree."),
            &AgentContext::detached(),
        )
        .await
        .unwrap_or_else(|e| panic!("codex failed: {e}; requests: {:#?}", seen.lock().unwrap()));
    assert!(out.success, "{out:?}");
    assert_eq!(out.summary, "Nothing to change.");
    assert_eq!((out.usage.input_tokens, out.usage.output_tokens), (200, 12));
    let thread = out.session_id.clone().expect("thread id");
    assert!(
        seen.lock()
            .unwrap()
            .iter()
            .any(|r| r.body.contains("Check the work tree."))
    );
    // A retry resumes the thread: the model sees the first exchange (from
    // Codex's own session file) before the new prompt.
    let mut again = task(&work, "Now add a test.");
    again.resume = Some(thread.clone());
    let out = agent
        .run(again, &AgentContext::detached())
        .await
        .unwrap_or_else(|e| {
            panic!(
                "codex resume failed: {e}; requests: {:#?}",
                seen.lock().unwrap()
            )
        });
    assert!(out.success, "{out:?}");
    assert_eq!(
        out.session_id.as_deref(),
        Some(thread.as_str()),
        "same thread"
    );
    {
        let seen = seen.lock().unwrap();
        let last = seen
            .iter()
            .rev()
            .find(|r| r.path.ends_with("/responses"))
            .map(|r| r.body.as_str())
            .unwrap_or_default();
        let first = last.find("Check the work tree.");
        let reply = last.find("Nothing to change.");
        let next = last.find("Now add a test.");
        assert!(
            first.is_some() && reply.is_some() && next.is_some() && first < next && reply < next,
            "the resumed request carries the earlier exchange before the new prompt: {last}"
        );
    }
    // A 200 KiB prompt (long gate feedback): past the kernel's limit for
    // one argument, so it must go on stdin.
    let long = format!(
        "Fix the failing tests.\n{}END-OF-FEEDBACK",
        "a line of gate feedback, repeated\n".repeat(7_000)
    );
    assert!(long.len() > 200 * 1024);
    let out = agent
        .run(task(&work, &long), &AgentContext::detached())
        .await
        .unwrap_or_else(|e| panic!("codex with a long prompt failed: {e}"));
    assert!(out.success, "{out:?}");
    assert!(
        seen_all(&seen_handle).contains("END-OF-FEEDBACK"),
        "the whole prompt reached the model"
    );
}

/// The real Gemini CLI, headless, against a stand-in Gemini API
/// (`GOOGLE_GEMINI_BASE_URL`): it writes a file through its `write_file`
/// tool, answers, and its usage is recorded from the `result` line.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the real gemini CLI: ORCH_TEST_REAL_CLIS=1 (.ci/run installs it)"]
async fn gemini_cli_writes_a_file_through_its_tool_and_reports_usage() {
    use serde_json::json;
    let gemini = require!(
        "ORCH_TEST_GEMINI",
        "gemini",
        "gemini_cli_writes_a_file_through_its_tool_and_reports_usage"
    );
    let tmp = tempfile::tempdir().unwrap();
    let work = tmp.path().join("work");
    let home = tmp.path().join("gemini-home");
    std::fs::create_dir_all(&work).unwrap();
    std::fs::create_dir_all(home.join(".gemini")).unwrap();
    // How a user who set up an API key has it: Gemini CLI takes a base URL
    // only with an auth type chosen in its settings.
    std::fs::write(
        home.join(".gemini/settings.json"),
        r#"{"security": {"auth": {"selectedType": "gemini-api-key"}}}"#,
    )
    .unwrap();
    let (url, seen) = stand_in(|path, body| {
        if !path.contains(":streamGenerateContent") {
            return ("application/json", json!({"totalTokens": 1}).to_string());
        }
        let part = if body.contains("functionResponse") {
            json!({"text": "Wrote hello.txt."})
        } else {
            json!({"functionCall": {"name": "write_file",
                "args": {"file_path": "hello.txt", "content": "hello from gemini\n"}}})
        };
        let chunk = json!({"candidates": [{"content": {"role": "model", "parts": [part]},
            "finishReason": "STOP", "index": 0}],
            "usageMetadata": {"promptTokenCount": 300, "candidatesTokenCount": 20, "totalTokenCount": 320}});
        ("text/event-stream", format!("data: {chunk}\r\n\r\n"))
    })
    .await;
    let bin = wrapper(
        tmp.path(),
        &gemini,
        &[
            ("HOME", home.to_str().unwrap()),
            ("GEMINI_API_KEY", "test-not-a-key"),
            ("GOOGLE_GEMINI_BASE_URL", &url),
        ],
    );
    let spec: AgentSpec = serde_json::from_value(json!({"backend": {
        "kind": "gemini_cli", "binary": bin, "model": "gemini-2.5-pro"}}))
    .unwrap();
    let agent = from_spec(&spec, &defaults(tmp.path())).unwrap();
    let out = agent
        .run(task(&work, "Write hello.txt."), &AgentContext::detached())
        .await
        .unwrap_or_else(|e| panic!("gemini failed: {e}; requests: {:#?}", seen.lock().unwrap()));
    assert!(out.success, "{out:?}");
    assert_eq!(out.summary, "Wrote hello.txt.");
    assert_eq!(
        std::fs::read_to_string(work.join("hello.txt")).unwrap(),
        "hello from gemini\n"
    );
    // Two model turns (the tool call, then the answer).
    assert_eq!((out.usage.input_tokens, out.usage.output_tokens), (600, 40));
    assert!(out.session_id.is_some());
    assert!(
        seen_all(&seen).contains("Write hello.txt."),
        "the prompt reached the API (through stdin)"
    );
    let transcripts = std::fs::read_dir(tmp.path().join("transcripts"))
        .unwrap()
        .count();
    assert_eq!(transcripts, 1);
}

/// The real Qwen Code, headless, against a stand-in OpenAI-compatible
/// Chat Completions API (`OPENAI_BASE_URL`): it runs a shell command
/// through its tool, answers, and its usage is recorded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the real qwen CLI: ORCH_TEST_REAL_CLIS=1 (.ci/run installs it)"]
async fn qwen_code_runs_a_tool_on_an_openai_compatible_endpoint_and_reports_usage() {
    use serde_json::json;
    let qwen = require!(
        "ORCH_TEST_QWEN",
        "qwen",
        "qwen_code_runs_a_tool_on_an_openai_compatible_endpoint_and_reports_usage"
    );
    let tmp = tempfile::tempdir().unwrap();
    let work = tmp.path().join("work");
    let home = tmp.path().join("qwen-home");
    std::fs::create_dir_all(&work).unwrap();
    std::fs::create_dir_all(&home).unwrap();
    let (url, seen) = stand_in(|path, body| {
        if !path.ends_with("/chat/completions") {
            return ("application/json", json!({"object": "list", "data": []}).to_string());
        }
        let chunk = |delta: serde_json::Value, finish: Option<&str>| {
            json!({"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "qwen3-coder",
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})
        };
        let answered = body.contains(r#""role":"tool""#) || body.contains(r#""role": "tool""#);
        let events = if answered {
            vec![
                chunk(json!({"role": "assistant", "content": "Wrote hello.txt."}), None),
                chunk(json!({}), Some("stop")),
            ]
        } else {
            vec![
                chunk(
                    json!({"role": "assistant", "tool_calls": [{"index": 0, "id": "call_1", "type": "function",
                        "function": {"name": "run_shell_command",
                            "arguments": json!({"command": "echo hello from qwen > hello.txt", "description": "write"}).to_string()}}]}),
                    None,
                ),
                chunk(json!({}), Some("tool_calls")),
            ]
        };
        let usage = json!({"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "qwen3-coder",
            "choices": [], "usage": {"prompt_tokens": 400, "completion_tokens": 25, "total_tokens": 425}});
        let mut out: String = events.iter().chain([&usage]).map(|e| format!("data: {e}\n\n")).collect();
        out.push_str("data: [DONE]\n\n");
        ("text/event-stream", out)
    })
    .await;
    let bin = wrapper(
        tmp.path(),
        &qwen,
        &[
            ("HOME", home.to_str().unwrap()),
            ("OPENAI_API_KEY", "test-not-a-key"),
            ("OPENAI_BASE_URL", &format!("{url}/v1")),
            ("OPENAI_MODEL", "qwen3-coder"),
        ],
    );
    let spec: AgentSpec =
        serde_json::from_value(json!({"backend": {"kind": "qwen_code", "binary": bin}})).unwrap();
    let agent = from_spec(&spec, &defaults(tmp.path())).unwrap();
    let out = agent
        .run(task(&work, "Write hello.txt."), &AgentContext::detached())
        .await
        .unwrap_or_else(|e| panic!("qwen failed: {e}; requests: {:#?}", seen.lock().unwrap()));
    assert!(out.success, "{out:?}");
    assert_eq!(out.summary, "Wrote hello.txt.");
    assert_eq!(
        std::fs::read_to_string(work.join("hello.txt")).unwrap(),
        "hello from qwen\n"
    );
    assert_eq!((out.usage.input_tokens, out.usage.output_tokens), (800, 50));
    assert!(seen_all(&seen).contains("Write hello.txt."));
}
