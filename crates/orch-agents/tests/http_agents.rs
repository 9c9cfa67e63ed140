//! HTTP agents against a local stand-in server answering with the real
//! APIs' response shapes, 429 with retry-after, 529, 500 and malformed JSON.

use std::sync::Arc;
use std::time::Duration;

use orch_agents::{AgentDefaults, from_spec};
use orch_core::{AgentContext, AgentErrorKind, AgentSpec, AgentTask};

mod common;

/// Serves `replies` (status, extra headers, body) in order, one per
/// connection (then closes connections unanswered); records each request.
async fn server(replies: Vec<(u16, &'static str, String)>) -> (String, common::Seen) {
    let next = std::sync::atomic::AtomicUsize::new(0);
    common::stand_in(move |_, _| {
        let i = next.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        replies.get(i).map(|(status, headers, body)| common::Reply {
            status: *status,
            headers: (*headers).to_owned(),
            content_type: "application/json",
            body: body.clone(),
        })
    })
    .await
}

/// A recorded request as it came: head, blank line, body.
fn text(seen: &common::Seen, i: usize) -> String {
    let r = seen.lock().unwrap()[i].clone();
    format!("{}\r\n\r\n{}", r.head, r.body)
}

fn task(dir: &std::path::Path) -> AgentTask {
    common::task("ADR-1", "docs", "docs", "Write the ADR", dir)
}

fn agent(json: serde_json::Value) -> Arc<dyn orch_core::Agent> {
    let spec: AgentSpec = serde_json::from_value(json).unwrap();
    let d = AgentDefaults {
        timeout: Duration::from_secs(10),
        ..AgentDefaults::default()
    };
    from_spec(&spec, &d).unwrap()
}

const MESSAGE: &str = r##"{"id":"msg_01","type":"message","role":"assistant","model":"claude-sonnet-4-5","content":[{"type":"text","text":"# ADR-1\n\nLatency target: 100 ms."}],"stop_reason":"end_turn","stop_sequence":null,"usage":{"input_tokens":50,"cache_creation_input_tokens":0,"cache_read_input_tokens":10,"output_tokens":12}}"##;

#[tokio::test]
async fn anthropic_messages_writes_the_artifact() {
    let d = tempfile::tempdir().unwrap();
    let (url, seen) = server(vec![(200, "", MESSAGE.into())]).await;
    // PATH is always set: use it as the "key" variable so no environment is changed.
    let a = agent(
        serde_json::json!({"backend": {"kind": "anthropic", "model": "claude-sonnet-4-5", "base_url": url,
        "api_key_env": "PATH", "output_file": "docs/adr/ADR-{ticket}.md"}}),
    );
    let out = a
        .run(task(d.path()), &AgentContext::detached())
        .await
        .unwrap();
    assert!(out.success);
    assert_eq!((out.usage.input_tokens, out.usage.output_tokens), (60, 12));
    assert_eq!(
        std::fs::read_to_string(d.path().join("docs/adr/ADR-ADR-1.md")).unwrap(),
        "# ADR-1\n\nLatency target: 100 ms."
    );
    let req = text(&seen, 0);
    assert!(req.starts_with("POST /v1/messages HTTP/1.1"), "{req}");
    assert!(
        req.to_ascii_lowercase()
            .contains("anthropic-version: 2023-06-01")
    );
    let body: serde_json::Value =
        serde_json::from_str(&req[req.find("\r\n\r\n").unwrap() + 4..]).unwrap();
    assert_eq!(body["messages"][0]["content"], "Write the ADR");
    assert_eq!(body["model"], "claude-sonnet-4-5");
}

#[tokio::test]
async fn statuses_map_to_error_kinds() {
    let d = tempfile::tempdir().unwrap();
    let (url, _) = server(vec![
        (429, "retry-after: 7\r\n", r#"{"type":"error","error":{"type":"rate_limit_error","message":"Number of request tokens has exceeded your per-minute rate limit"}}"#.into()),
        (529, "", r#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#.into()),
        (500, "", r#"{"type":"error","error":{"type":"api_error","message":"Internal server error"}}"#.into()),
        (401, "", r#"{"type":"error","error":{"type":"authentication_error","message":"invalid x-api-key"}}"#.into()),
        (400, "", r#"{"type":"error","error":{"type":"invalid_request_error","message":"max_tokens: too large"}}"#.into()),
        (200, "", "{not json".into()),
    ])
    .await;
    let a = agent(
        serde_json::json!({"backend": {"kind": "anthropic", "model": "m", "base_url": url, "api_key_env": "PATH"}}),
    );
    let ctx = AgentContext::detached();
    let e = a.run(task(d.path()), &ctx).await.unwrap_err();
    assert_eq!(e.kind, AgentErrorKind::RateLimited);
    assert_eq!(e.retry_after, Some(Duration::from_secs(7)));
    assert_eq!(
        e.message,
        "HTTP 429: Number of request tokens has exceeded your per-minute rate limit"
    );
    assert_eq!(
        a.run(task(d.path()), &ctx).await.unwrap_err().kind,
        AgentErrorKind::Overloaded
    );
    assert_eq!(
        a.run(task(d.path()), &ctx).await.unwrap_err().kind,
        AgentErrorKind::Overloaded
    );
    assert_eq!(
        a.run(task(d.path()), &ctx).await.unwrap_err().kind,
        AgentErrorKind::Auth
    );
    let e = a.run(task(d.path()), &ctx).await.unwrap_err();
    assert_eq!(e.kind, AgentErrorKind::Config);
    assert!(!e.is_retryable());
    assert_eq!(
        a.run(task(d.path()), &ctx).await.unwrap_err().kind,
        AgentErrorKind::Protocol
    );
}

#[tokio::test]
async fn openai_compatible_and_missing_key() {
    let d = tempfile::tempdir().unwrap();
    let body = r#"{"id":"chatcmpl-1","object":"chat.completion","created":1,"model":"local","choices":[{"index":0,"message":{"role":"assistant","content":"Review: looks good."},"finish_reason":"stop"}],"usage":{"prompt_tokens":30,"completion_tokens":5,"total_tokens":35}}"#;
    let (url, seen) = server(vec![(200, "", body.into())]).await;
    let a = agent(
        serde_json::json!({"backend": {"kind": "openai_compatible", "model": "local", "base_url": format!("{url}/v1")}}),
    );
    let out = a
        .run(task(d.path()), &AgentContext::detached())
        .await
        .unwrap();
    assert_eq!(out.summary, "Review: looks good.");
    assert_eq!(out.usage.total_tokens(), 35);
    let req = text(&seen, 0);
    assert!(
        req.starts_with("POST /v1/chat/completions HTTP/1.1"),
        "{req}"
    );
    assert!(
        !req.to_ascii_lowercase().contains("authorization"),
        "no key, no header"
    );

    let a = agent(
        serde_json::json!({"backend": {"kind": "anthropic", "model": "m", "base_url": url, "api_key_env": "ORCH_SURELY_UNSET_KEY"}}),
    );
    let e = a
        .run(task(d.path()), &AgentContext::detached())
        .await
        .unwrap_err();
    assert_eq!(e.kind, AgentErrorKind::Auth);
    assert_eq!(
        e.message,
        "the API key variable ORCH_SURELY_UNSET_KEY is not set"
    );
    // The engine's check before a run says the same, without a request.
    let dev: orch_core::RoleName = "dev".parse().unwrap();
    let e = a.check(&dev).unwrap_err();
    assert_eq!(e.kind, AgentErrorKind::Auth);
    assert_eq!(
        e.message,
        "the API key variable ORCH_SURELY_UNSET_KEY is not set"
    );
    let keyed = agent(
        serde_json::json!({"backend": {"kind": "anthropic", "model": "m", "base_url": url, "api_key_env": "PATH"}}),
    );
    keyed.check(&dev).unwrap();
}

#[test]
fn debug_never_shows_the_key() {
    let a = orch_agents::HttpAgent::builder(orch_agents::Api::Anthropic, "http://127.0.0.1:1", "m")
        .api_key_env("ANTHROPIC_API_KEY")
        .timeout(Duration::from_secs(1))
        .build()
        .unwrap();
    let dbg = format!("{a:?}");
    assert!(dbg.contains("$ANTHROPIC_API_KEY ([REDACTED])"), "{dbg}");
}

/// A server that echoes the API key (and a key of another shape) in its
/// error bodies, in a body that is not JSON, and in the model's answer:
/// no error message, summary, progress or written file holds either.
#[tokio::test]
async fn a_key_the_server_echoes_is_never_passed_on() {
    let d = tempfile::tempdir().unwrap();
    // The "key" is PATH's value (a variable every test process has).
    let key = std::env::var("PATH").unwrap();
    let other = "sk-ant-api03-EchoedBackByTheServer0123456789";
    let answer = serde_json::json!({"id": "m", "type": "message", "role": "assistant", "model": "m",
        "content": [{"type": "text", "text": format!("Your key is {key}; another is {other}.")}],
        "stop_reason": "end_turn", "usage": {"input_tokens": 1, "output_tokens": 1}});
    let (url, _) = server(vec![
        (
            500,
            "",
            serde_json::json!({"type": "error", "error": {"type": "api_error",
            "message": format!("upstream rejected key {key} and {other}")}})
            .to_string(),
        ),
        (401, "", format!("<html>bad key {key} {other}</html>")),
        (200, "", format!("oops, not JSON: {key} {other}")),
        (200, "", answer.to_string()),
    ])
    .await;
    let a = agent(
        serde_json::json!({"backend": {"kind": "anthropic", "model": "m", "base_url": url,
        "api_key_env": "PATH", "output_file": "answer.md"}}),
    );
    let seen: Arc<std::sync::Mutex<Vec<String>>> = Arc::default();
    let sink = seen.clone();
    let ctx = AgentContext {
        cancel: orch_core::Cancellation::new(),
        progress: Arc::new(move |_: &orch_core::AgentId, p: orch_core::Progress| {
            sink.lock().unwrap().push(format!("{p:?}"));
        }),
    };
    let mut said = Vec::new();
    for _ in 0..3 {
        let e = a.run(task(d.path()), &ctx).await.unwrap_err();
        said.push(e.message);
    }
    let out = a.run(task(d.path()), &ctx).await.unwrap();
    said.push(out.summary);
    said.push(std::fs::read_to_string(d.path().join("answer.md")).unwrap());
    said.extend(seen.lock().unwrap().iter().cloned());
    for text in &said {
        assert!(
            !text.contains(&key) && !text.contains(other),
            "leaked: {text}"
        );
    }
    assert!(
        said[0].contains("upstream rejected key [REDACTED] and [REDACTED]"),
        "{}",
        said[0]
    );
    assert!(
        said[2].contains("unexpected response body: oops, not JSON: [REDACTED]"),
        "{}",
        said[2]
    );
    assert_eq!(said[4], "Your key is [REDACTED]; another is [REDACTED].");
}

/// Building an HTTP agent installs no process-wide TLS provider: the
/// program that embeds orch keeps that choice.
#[test]
fn an_http_agent_installs_no_process_wide_tls_provider() {
    let _ = agent(
        serde_json::json!({"backend": {"kind": "anthropic", "model": "m", "base_url": "https://127.0.0.1:1", "api_key_env": "PATH"}}),
    );
    assert!(rustls::crypto::CryptoProvider::get_default().is_none());
}

/// A server that is not there (connection refused) is a transient outage
/// the backend retries with backoff, not a crash retried at once; the
/// message says what happened.
#[tokio::test]
async fn a_refused_connection_is_a_transient_outage() {
    let d = tempfile::tempdir().unwrap();
    // A port nothing listens on: bound, then closed.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let a = agent(
        serde_json::json!({"backend": {"kind": "anthropic", "model": "m", "base_url": format!("http://127.0.0.1:{port}"), "api_key_env": "PATH"}}),
    );
    let e = a
        .run(task(d.path()), &AgentContext::detached())
        .await
        .unwrap_err();
    assert_eq!(e.kind, AgentErrorKind::Overloaded, "{e}");
    assert!(e.message.contains("could not connect"), "{e}");
}
