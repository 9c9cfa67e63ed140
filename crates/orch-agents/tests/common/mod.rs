//! What the agent tests share: a task to hand an agent, and the request
//! reader of the stand-in HTTP servers. (Each test binary uses a part.)
#![allow(dead_code)]

use std::path::Path;
use std::sync::{Arc, Mutex};

use orch_core::AgentTask;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

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
        workdir: workdir.into(),
        feedback: vec![],
        attempt: 1,
        resume: None,
    }
}

/// A request the stand-in server received.
#[derive(Debug, Clone)]
pub struct Request {
    /// The path of the request line.
    pub path: String,
    /// The request line and headers.
    pub head: String,
    pub body: String,
}

/// What the stand-in server answers.
pub struct Reply {
    pub status: u16,
    /// Extra header lines, each ending in `\r\n`.
    pub headers: String,
    pub content_type: &'static str,
    pub body: String,
}

pub type Seen = Arc<Mutex<Vec<Request>>>;

/// A local HTTP server answering each request, on its own connection, with
/// `reply(path, body)` (`None`: close without answering); records every
/// request. Returns its base URL.
pub async fn stand_in(
    reply: impl Fn(&str, &str) -> Option<Reply> + Send + Sync + 'static,
) -> (String, Seen) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen: Seen = Arc::default();
    let (s, reply) = (seen.clone(), Arc::new(reply));
    tokio::spawn(async move {
        loop {
            let Ok((mut sock, _)) = listener.accept().await else {
                return;
            };
            let (s, reply) = (s.clone(), reply.clone());
            tokio::spawn(async move {
                let Some((head, body)) = read_request(&mut sock).await else {
                    return;
                };
                let path = head.split_whitespace().nth(1).unwrap_or("/").to_owned();
                let answer = reply(&path, &body);
                s.lock().unwrap().push(Request { path, head, body });
                let Some(r) = answer else {
                    return;
                };
                let resp = format!(
                    "HTTP/1.1 {} {}\r\ncontent-type: {}\r\ncontent-length: {}\r\nconnection: close\r\n{}\r\n{}",
                    r.status,
                    if r.status == 200 { "OK" } else { "Error" },
                    r.content_type,
                    r.body.len(),
                    r.headers,
                    r.body
                );
                let _ = sock.write_all(resp.as_bytes()).await;
                let _ = sock.shutdown().await;
            });
        }
    });
    (format!("http://{addr}"), seen)
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
