//! Secrets stay where they belong, through `orch run` as a person runs it:
//! an agent and a gate that print twenty kinds of secret, and write them
//! into a file the checkpoint would commit, leave none of them in the
//! state directory (`state.db`, state files, transcripts), on orch's
//! output, in any prompt, or in any object of the repository; the agent
//! sees no key but those its spec passes.

use std::path::Path;

use assert_cmd::cargo::CommandCargoExt;
use orch_core::{EventKind, StateStore};
use orch_examples::demo;

/// Secrets the test puts in orch's environment: secret-looking names, and
/// a URL with a password. The agent and the gate are passed these three
/// (`env_allow`); the provider keys below are not passed to them.
const SERVICE_TOKEN: &str = "svc-4f9a8b7c6d5e4f3a2b1c";
const DB_PASSWORD: &str = "plainword-77xq";
const DB_URL_PASSWORD: &str = "Pg-pass-9911z";
const URL_SECRET: &str = "p@ss/w0rd+x=yz9";
const ANTHROPIC_KEY: &str = "sk-ant-api03-Qx7Rk2Lm9Np4St6Vw8Yz1Ab3Cd5Ef7Gh9Ij2Kl4Mn6";
const OPENAI_KEY: &str = "sk-proj-Ab12Cd34Ef56Gh78Ij90Kl12Mn34Op56";
const AWS_SECRET: &str = "Wj9rXUtnFEMI/K7MDENG/bPxRfiCYzEXAMPLEKEY";

/// Secrets found only by their shape (they are in no environment).
const SHAPES: &[(&str, &str)] = &[
    ("ANTHROPIC_SHORT", "sk-ant-x9k2"),
    ("AWS_KEY_ID", "AKIAZ7Q3EXAMPLE4KEY1"),
    ("GITHUB", "ghp_R4nd0mT0k3nF0rT3st1ngPurp0s3sOnly12"),
    (
        "GITHUB_PAT",
        "github_pat_11ABCDEFG0123456789_abcdefghijklmnopqrstuvwxyz",
    ),
    ("SLACK", "xoxb-2048-1234567890-AbCdEfGhIjKl"),
    ("GOOGLE", "AIzaSyD-9tSrke72PouQMnMX-a7eZSW0jkFMBWY"),
    (
        "JWT",
        "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJvcmNoLXRlc3QifQ.c2lnbmF0dXJlLW9mLXRoZS10b2tlbg",
    ),
    ("REDIS_PASSWORD", "R3dis-Secret-55"),
    ("HARDCODED", "hunter2-correct-horse"),
    ("APP_TOKEN_VALUE", "tok-abc-123456"),
];

/// A private key block's body lines (the key is printed a line at a
/// time, so every line must go).
const KEY_LINES: &[&str] = &[
    "MIIEowIBAAKCAQEAx3Fq9Rk2Lm9Np4St6Vw8Yz1Ab3Cd5Ef7Gh9Ij2Kl4Mn6Op8Qr",
    "Tz0Vx2Wy4Ab6Cd8Ef0Gh2Ij4Kl6Mn8Op0Qr2St4Uv6Wx8Yz0Ab2Cd4Ef6Gh8Ij0",
];

fn base64(bytes: &[u8]) -> String {
    let out = std::process::Command::new("base64")
        .args(["-w", "0"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            use std::io::Write;
            c.stdin.take().unwrap().write_all(bytes)?;
            c.wait_with_output()
        })
        .unwrap();
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

/// Every secret value the test looks for, with what it is.
fn secrets() -> Vec<(String, String)> {
    let mut all: Vec<(String, String)> = vec![
        ("env token".into(), SERVICE_TOKEN.into()),
        ("env password".into(), DB_PASSWORD.into()),
        ("password in DATABASE_URL".into(), DB_URL_PASSWORD.into()),
        ("env secret".into(), URL_SECRET.into()),
        (
            "URL-encoded env secret".into(),
            "p%40ss%2Fw0rd%2Bx%3Dyz9".into(),
        ),
        ("Anthropic key".into(), ANTHROPIC_KEY.into()),
        ("OpenAI key".into(), OPENAI_KEY.into()),
        ("AWS secret access key".into(), AWS_SECRET.into()),
        (
            "base64 of the env token".into(),
            base64(SERVICE_TOKEN.as_bytes()),
        ),
        (
            "base64 inside a basic auth header".into(),
            base64(format!("app:{DB_PASSWORD}").as_bytes())[4..].to_owned(),
        ),
    ];
    all.extend(
        SHAPES
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned())),
    );
    all.extend(
        KEY_LINES
            .iter()
            .map(|l| ("private key line".to_owned(), (*l).to_owned())),
    );
    all
}

/// The script the agent and the gate share: prints every secret.
fn print_all_script() -> String {
    let mut s = String::from("print_all() {\n");
    for (k, v) in SHAPES {
        let line = match *k {
            "REDIS_PASSWORD" => format!("cache at redis://cache:{v}@cache:6379/0"),
            "HARDCODED" => format!("password = \"{v}\""),
            "APP_TOKEN_VALUE" => format!("MY_APP_TOKEN={v}"),
            _ => format!("{k}: {v}"),
        };
        s.push_str(&format!("  echo '{line}'\n"));
    }
    s.push_str(&format!(
        "  echo 'aws_secret_access_key = {AWS_SECRET}'\n  echo \"token=$ORCH_TEST_SERVICE_TOKEN pw=$ORCH_TEST_DB_PASSWORD url=$DATABASE_URL\"\n  echo \"raw secret $ORCH_TEST_API_SECRET, in a query: ?s=p%40ss%2Fw0rd%2Bx%3Dyz9\"\n  echo \"b64 $(printf %s \"$ORCH_TEST_SERVICE_TOKEN\" | base64 -w 0)\"\n  echo \"Authorization: Basic $(printf 'app:%s' \"$ORCH_TEST_DB_PASSWORD\" | base64 -w 0)\"\n  echo '-----BEGIN RSA PRIVATE KEY-----'\n"
    ));
    for l in KEY_LINES {
        s.push_str(&format!("  echo '{l}'\n"));
    }
    s.push_str("  echo '-----END RSA PRIVATE KEY-----'\n}\n");
    s
}

/// What was found of `secrets` in `haystack` (named `place`).
fn leaks(place: &str, haystack: &[u8], secrets: &[(String, String)]) -> Vec<String> {
    let text = String::from_utf8_lossy(haystack);
    secrets
        .iter()
        .filter(|(_, v)| text.contains(v.as_str()))
        .map(|(k, _)| format!("{k} in {place}"))
        .collect()
}

/// `orch run PLAN --run RUN --repo REPO --state STATE` with `env` added
/// to its environment; what it printed (stdout and stderr), after
/// asserting it exited 0.
fn orch_run(plan: &Path, run: &str, repo: &Path, state: &Path, env: &[(&str, &str)]) -> Vec<u8> {
    let out = std::process::Command::cargo_bin("orch")
        .unwrap()
        .args(["run", plan.to_str().unwrap(), "--run", run, "--repo"])
        .arg(repo)
        .arg("--state")
        .arg(state)
        .envs(env.iter().copied())
        .output()
        .unwrap();
    let said = [out.stdout.as_slice(), out.stderr.as_slice()].concat();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&said)
    );
    said
}

/// Where `secrets` were found: in `said`, in any file under `dirs` (but
/// the agent's own environment dumps, `env-*`), and in any object of the
/// repository at `repo`.
fn leaks_anywhere(
    said: &[u8],
    dirs: &[&Path],
    repo: &Path,
    secrets: &[(String, String)],
) -> Vec<String> {
    let mut found = leaks("orch's output", said, secrets);
    let mut files = Vec::new();
    for d in dirs {
        files_under(d, &mut files);
    }
    for f in &files {
        if f.file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with("env-"))
        {
            continue; // the agent's own view of its environment
        }
        found.extend(leaks(
            &f.display().to_string(),
            &std::fs::read(f).unwrap(),
            secrets,
        ));
    }
    let objects = std::process::Command::new("git")
        .args(["cat-file", "--batch-all-objects", "--batch"])
        .current_dir(repo)
        .output()
        .unwrap();
    assert!(objects.status.success() && objects.stdout.len() > 100);
    found.extend(leaks("the repository's objects", &objects.stdout, secrets));
    found
}

/// The run's journal, from `state/state.db`.
fn events(state: &Path, run: &str) -> Vec<orch_core::StoredEvent> {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let store = orch_state::SqliteStore::open(state.join("state.db")).unwrap();
        store.read(&run.parse().unwrap(), 0, 10_000).await.unwrap()
    })
}

fn files_under(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            files_under(&p, out);
        } else {
            out.push(p);
        }
    }
}

#[test]
fn no_secret_an_agent_or_gate_prints_is_kept_anywhere() {
    let dir = tempfile::tempdir().unwrap();
    let (repo, state, out) = (
        dir.path().join("repo"),
        dir.path().join("state"),
        dir.path().join("out"),
    );
    demo::init_repo(&repo, &[("README.md", "demo\n")]).unwrap();
    std::fs::create_dir_all(&out).unwrap();
    // The agent: keeps its prompt and environment (outside the repo),
    // prints every secret on stdout and stderr; attempt 1 also makes the
    // gate fail, attempt 2 leaves the secrets in a file the checkpoint
    // would commit, attempt 3 cleans up.
    let agent = dir.path().join("agent.sh");
    std::fs::write(
        &agent,
        format!(
            "{}cat > \"$OUT/prompt-$ORCH_ATTEMPT.txt\"\nenv > \"$OUT/env-$ORCH_ATTEMPT.txt\"\nprint_all\nprint_all >&2\ncase $ORCH_ATTEMPT in\n  1) touch .gate-fails; print_all > leak.txt;;\n  2) rm -f .gate-fails;;\n  *) rm -f leak.txt; echo done > work.txt;;\nesac\n",
            print_all_script()
        ),
    )
    .unwrap();
    let gate = dir.path().join("gate.sh");
    std::fs::write(
        &gate,
        format!(
            "{}print_all\nprint_all >&2\nif [ -e .gate-fails ]; then echo 'test_login FAILED' >&2; exit 1; fi\n",
            print_all_script()
        ),
    )
    .unwrap();
    let plan = dir.path().join("plan.toml");
    let allow = r#"["ORCH_TEST_*", "DATABASE_URL"]"#;
    std::fs::write(
        &plan,
        format!(
            r#"
name = "leaky"
default_role = "dev"
[agents.dev]
backend = {{ kind = "command", argv = ["sh", "{agent}"], env_allow = {allow}, env = {{ OUT = "{out}" }} }}
[[phases]]
name = "impl"
max_attempts = 3
gates = [{{ kind = "command", name = "leaky gate", argv = ["sh", "{gate}"], env_allow = {allow} }}]
[[tickets]]
id = "A"
title = "a"
effort = "1h"
"#,
            agent = agent.display(),
            gate = gate.display(),
            out = out.display(),
        ),
    )
    .unwrap();
    let db_url = format!("postgres://app:{DB_URL_PASSWORD}@db.internal:5432/app");
    let said = orch_run(
        &plan,
        "leaky",
        &repo,
        &state,
        &[
            ("ORCH_TEST_SERVICE_TOKEN", SERVICE_TOKEN),
            ("ORCH_TEST_DB_PASSWORD", DB_PASSWORD),
            ("ORCH_TEST_API_SECRET", URL_SECRET),
            ("DATABASE_URL", &db_url),
            ("ANTHROPIC_API_KEY", ANTHROPIC_KEY),
            ("OPENAI_API_KEY", OPENAI_KEY),
            ("AWS_SECRET_ACCESS_KEY", AWS_SECRET),
        ],
    );
    let secrets = secrets();
    assert_eq!(
        secrets.len(),
        22,
        "twenty kinds (a key of two lines, two encodings)"
    );
    let mut files = Vec::new();
    files_under(&state, &mut files);
    assert!(
        files.iter().any(|f| f.ends_with("state.db"))
            && files
                .iter()
                .filter(|f| f.to_string_lossy().contains("transcripts"))
                .count()
                >= 3,
        "the journal and a transcript per attempt: {files:?}"
    );
    let found = leaks_anywhere(&said, &[&state, &out], &repo, &secrets);
    assert!(found.is_empty(), "secrets kept: {found:#?}");

    // The run did what it says: the gate's failure and then the secret
    // scan's were fed back (redacted), and the work was committed without
    // the file.
    let events = events(&state, "leaky");
    let feedback: Vec<String> = events
        .iter()
        .filter_map(|e| match &e.event.kind {
            EventKind::AttemptFailed { feedback, .. } => Some(feedback.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(feedback.len(), 2, "{feedback:#?}");
    assert!(feedback[0].contains("Gate `leaky gate` failed") && feedback[0].contains("[REDACTED]"));
    assert!(
        feedback[1].contains("Gate `no secrets committed` failed")
            && feedback[1].contains("leak.txt:")
            && feedback[1].contains("(AWS access key id)")
            && feedback[1].contains("(a secret value of this run)"),
        "{}",
        feedback[1]
    );
    let prompt3 = std::fs::read_to_string(out.join("prompt-3.txt")).unwrap();
    assert!(prompt3.contains("no secrets committed"), "{prompt3}");
    let tree = demo::git(&repo, &["ls-tree", "-r", "--name-only", "orch/leaky/A"]).unwrap();
    assert!(
        tree.contains("work.txt") && !tree.contains("leak.txt"),
        "{tree}"
    );

    // The agent saw the variables its spec passes, and no provider key.
    let env = std::fs::read_to_string(out.join("env-1.txt")).unwrap();
    assert!(
        env.contains("ORCH_TEST_SERVICE_TOKEN=") && env.contains("ORCH_TICKET=A"),
        "{env}"
    );
    for name in [
        "ANTHROPIC_API_KEY",
        "OPENAI_API_KEY",
        "AWS_SECRET_ACCESS_KEY",
    ] {
        assert!(!env.contains(name), "{name} reached the agent:\n{env}");
    }
}

/// Each CLI backend sees its own provider's variables and what its spec
/// passes, never another provider's key: Claude Code gets `ANTHROPIC_*`,
/// Codex gets `OPENAI_*`, neither gets the AWS or GitHub secrets orch has,
/// unless a spec names one (`env_allow`).
#[test]
fn an_agent_cli_sees_only_its_own_providers_key() {
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("repo");
    demo::init_repo(&repo, &[("README.md", "demo\n")]).unwrap();
    let fixtures = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../crates/orch-agents/tests/fixtures"
    );
    let fake = |name: &str, fixture: &str| {
        let p = dir.path().join(name);
        std::fs::write(
            &p,
            format!(
                "#!/bin/sh\ncat > /dev/null\nenv > \"{}/env-{name}.txt\"\ncat {fixtures}/{fixture}\n",
                dir.path().display()
            ),
        )
        .unwrap();
        std::process::Command::new("chmod")
            .arg("+x")
            .arg(&p)
            .status()
            .unwrap();
        p.display().to_string()
    };
    let (claude, codex) = (
        fake("claude", "claude_tool.jsonl"),
        fake("codex", "codex_ok.jsonl"),
    );
    let plan = dir.path().join("plan.toml");
    std::fs::write(
        &plan,
        format!(
            r#"
name = "keys"
default_role = "claude"
[agents.claude]
backend = {{ kind = "claude_code", binary = "{claude}", env_allow = ["GITHUB_TOKEN"] }}
[agents.codex]
backend = {{ kind = "codex", binary = "{codex}" }}
[[phases]]
name = "one"
role = "claude"
[[phases]]
name = "two"
role = "codex"
[[tickets]]
id = "A"
title = "a"
effort = "1h"
"#
        ),
    )
    .unwrap();
    orch_run(
        &plan,
        "keys",
        &repo,
        &dir.path().join("state"),
        &[
            ("ANTHROPIC_API_KEY", ANTHROPIC_KEY),
            ("ANTHROPIC_BASE_URL", "http://127.0.0.1:9/"),
            ("OPENAI_API_KEY", OPENAI_KEY),
            ("AWS_SECRET_ACCESS_KEY", AWS_SECRET),
            ("GITHUB_TOKEN", "ghp_PassedOnPurposeToClaudeOnly0000000001"),
        ],
    );
    let env =
        |name: &str| std::fs::read_to_string(dir.path().join(format!("env-{name}.txt"))).unwrap();
    let (c, x) = (env("claude"), env("codex"));
    for (seen, has, hasnt) in [
        (
            &c,
            &[
                "ANTHROPIC_API_KEY=",
                "ANTHROPIC_BASE_URL=",
                "GITHUB_TOKEN=",
                "ORCH_PHASE=one",
                "CLAUDE_CODE_MAX_RETRIES=2",
            ][..],
            &["OPENAI_API_KEY", "AWS_SECRET_ACCESS_KEY"][..],
        ),
        (
            &x,
            &["OPENAI_API_KEY=", "ORCH_PHASE=two"][..],
            &[
                "ANTHROPIC_API_KEY",
                "ANTHROPIC_BASE_URL",
                "AWS_SECRET_ACCESS_KEY",
                "GITHUB_TOKEN",
                "CLAUDE_CODE_MAX_RETRIES",
            ][..],
        ),
    ] {
        for v in has {
            assert!(seen.contains(v), "{v} missing:\n{seen}");
        }
        for v in hasnt {
            assert!(!seen.contains(v), "{v} passed:\n{seen}");
        }
    }
}

/// A stand-in LLM API on 127.0.0.1 that answers requests in order (the
/// last answer repeats): each `(status, extra headers, body)`.
fn stand_in_api(replies: Vec<(u16, &'static str, String)>) -> String {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        for (n, conn) in listener.incoming().enumerate() {
            let Ok(mut conn) = conn else { continue };
            // The request: head, then as many body bytes as it says.
            let mut buf = Vec::new();
            let mut chunk = [0u8; 4096];
            let body_start = loop {
                let Ok(k) = conn.read(&mut chunk) else {
                    break None;
                };
                if k == 0 {
                    break None;
                }
                buf.extend_from_slice(&chunk[..k]);
                if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                    break Some(i + 4);
                }
            };
            let Some(start) = body_start else { continue };
            let head = String::from_utf8_lossy(&buf[..start]).to_ascii_lowercase();
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
            while buf.len() < start + len {
                let Ok(k) = conn.read(&mut chunk) else { break };
                if k == 0 {
                    break;
                }
                buf.extend_from_slice(&chunk[..k]);
            }
            let (status, headers, body) = &replies[n.min(replies.len() - 1)];
            let _ = write!(
                conn,
                "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n{headers}\r\n{body}",
                body.len()
            );
        }
    });
    url
}

/// An HTTP agent whose API echoes its key back, in a rate-limit error, in
/// a body that is not JSON, and in the model's answer: after `orch run`,
/// the key is nowhere in orch's output, the state directory or the
/// repository, and the answer was written with the key redacted.
#[test]
fn a_key_an_api_echoes_is_kept_nowhere() {
    const KEY: &str = "llm-key-9Qz4Wx7Rt2Yp5Lm8";
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("repo");
    let state = dir.path().join("state");
    demo::init_repo(&repo, &[("README.md", "demo\n")]).unwrap();
    let answer = serde_json::json!({"id": "m", "type": "message", "role": "assistant", "model": "m",
        "content": [{"type": "text", "text": format!("# Answer\n\nYour key is {KEY}.")}],
        "stop_reason": "end_turn", "usage": {"input_tokens": 1, "output_tokens": 1}});
    let url = stand_in_api(vec![
        (
            429,
            "retry-after: 0\r\n",
            serde_json::json!({"type": "error", "error": {"type": "rate_limit_error",
            "message": format!("slow down, {KEY}")}})
            .to_string(),
        ),
        (200, "", format!("upstream proxy error for key {KEY}")),
        (200, "", answer.to_string()),
    ]);
    let plan = dir.path().join("plan.toml");
    std::fs::write(
        &plan,
        format!(
            r#"
name = "echo"
default_role = "llm"
[agents.llm]
backend = {{ kind = "anthropic", model = "m", base_url = "{url}", api_key_env = "ORCH_TEST_LLM", output_file = "docs/answer.md" }}
[[phases]]
name = "write"
max_attempts = 3
[[tickets]]
id = "A"
title = "a"
effort = "1h"
"#
        ),
    )
    .unwrap();
    let said = orch_run(&plan, "echo", &repo, &state, &[("ORCH_TEST_LLM", KEY)]);
    let secrets = vec![("the API key".to_owned(), KEY.to_owned())];
    let found = leaks_anywhere(&said, &[&state], &repo, &secrets);
    assert!(found.is_empty(), "{found:#?}");
    let written = demo::git(&repo, &["show", "orch/echo/A:docs/answer.md"]).unwrap();
    assert_eq!(written, "# Answer\n\nYour key is [REDACTED].");
    // The echoes really were there to redact: the failed attempt says so.
    let events = events(&state, "echo");
    assert!(
        events.iter().any(|e| matches!(&e.event.kind,
            EventKind::AgentFinished { summary, success: false, .. } if summary.contains("upstream proxy error for key [REDACTED]"))),
        "{events:#?}"
    );
}
