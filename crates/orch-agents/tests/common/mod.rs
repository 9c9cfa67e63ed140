//! What the agent tests share: a task to hand an agent, and the request
//! reader of the stand-in HTTP servers. (Each test binary uses a part.)
#![allow(dead_code)]

use std::path::Path;
use std::sync::Arc;

use orch_core::AgentTask;
use tokio::io::AsyncReadExt;

/// A first attempt at `phase` of `ticket`, working in `workdir`.
pub fn task(ticket: &str, phase: &str, role: &str, prompt: &str, workdir: &Path) -> AgentTask {
    AgentTask {
        run: "r".parse().unwrap(),
        agent_id: format!("{ticket}.{phase}.1").parse().unwrap(),
        ticket: Arc::new(
            serde_json::from_value(serde_json::json!({"id": ticket, "title": "t", "effort": "1h"}))
                .unwrap(),
        ),
        phase: phase.parse().unwrap(),
        role: role.parse().unwrap(),
        prompt: prompt.into(),
        workdir: workdir.to_path_buf(),
        feedback: vec![],
        attempt: 1,
        resume: None,
    }
}

/// Reads one HTTP/1.1 request (head and a `content-length` body); `None`
/// when the peer closes first.
pub async fn read_request(sock: &mut tokio::net::TcpStream) -> Option<(String, String)> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        let n = sock.read(&mut chunk).await.unwrap_or(0);
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
        let text = String::from_utf8_lossy(&buf).to_string();
        if let Some(end) = text.find("\r\n\r\n") {
            let len = text[..end]
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().parse::<usize>().unwrap_or(0))
                })
                .unwrap_or(0);
            if buf.len() >= end + 4 + len {
                return Some((text[..end].to_owned(), text[end + 4..].to_owned()));
            }
        }
    }
}
