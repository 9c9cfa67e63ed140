//! Running a command the way every gate and agent does: argv (no shell
//! unless asked), a cell that holds every process it starts (a cgroup of
//! its own where the kernel allows, see [`Scope`]), a timeout and
//! cancellation that kill the whole cell, output captured with a cap that
//! keeps head and tail, and detection of processes that outlive the
//! command (they are killed, `setsid` or not, and reported). Nothing a
//! command starts outlives it, nor this process: see [`Scope`] for what
//! happens when orch itself is killed.

use std::collections::{BTreeMap, VecDeque};
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use crate::Cancellation;
use nix::sys::signal::Signal;

mod contain;
pub use contain::{Killed, MARKER_VAR, Scope, deadman, driver_alive, kill_scope, output, scope};
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWriteExt};

/// Bytes kept from the start and from the end of each output stream.
pub const KEEP_BYTES: usize = 512 * 1024;

/// Longest stdout line delivered to a line callback; the rest of a longer
/// line is dropped, so memory stays bounded whatever a program prints.
pub const MAX_LINE_BYTES: usize = 1024 * 1024;

/// Output of one stream, capped: the first and last [`KEEP_BYTES`] bytes.
#[derive(Debug, Default, Clone)]
#[non_exhaustive]
pub struct Captured {
    head: Vec<u8>,
    tail: VecDeque<u8>,
    total: u64,
    keep: usize,
}

impl Captured {
    fn new(keep: usize) -> Self {
        Captured {
            keep,
            ..Captured::default()
        }
    }

    fn push(&mut self, mut bytes: &[u8]) {
        self.total += bytes.len() as u64;
        let room = self.keep.saturating_sub(self.head.len());
        let take = room.min(bytes.len());
        self.head.extend_from_slice(&bytes[..take]);
        bytes = &bytes[take..];
        if bytes.len() >= self.keep {
            bytes = &bytes[bytes.len() - self.keep..];
            self.tail.clear();
        }
        let overflow = (self.tail.len() + bytes.len()).saturating_sub(self.keep);
        self.tail.drain(..overflow);
        self.tail.extend(bytes);
    }

    /// Counts `n` bytes the program wrote that were not kept (the excess of
    /// an overlong line).
    fn skipped(&mut self, n: u64) {
        self.total += n;
    }

    /// Bytes written to the stream in all.
    pub fn total(&self) -> u64 {
        self.total
    }

    /// Bytes dropped from the middle.
    pub fn dropped(&self) -> u64 {
        self.total - (self.head.len() + self.tail.len()) as u64
    }

    /// The kept text (lossy UTF-8), with a marker where bytes were dropped.
    pub fn text(&self) -> String {
        let mut s = String::from_utf8_lossy(&self.head).into_owned();
        if self.dropped() > 0 {
            s.push_str(&format!("\n[... {} bytes dropped ...]\n", self.dropped()));
        }
        let (a, b) = self.tail.as_slices();
        let mut tail = Vec::with_capacity(a.len() + b.len());
        tail.extend_from_slice(a);
        tail.extend_from_slice(b);
        s.push_str(&String::from_utf8_lossy(&tail));
        s
    }
}

/// How the command ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Exit {
    /// It exited with this status.
    Code(i32),
    /// It was killed by this signal (not by us).
    Signal(i32),
    /// It ran past its time limit; everything it started was killed.
    TimedOut(Duration),
    /// It printed nothing for this long; everything it started was killed.
    Stalled(Duration),
    /// It was cancelled; everything it started was killed.
    Cancelled,
    /// The program does not exist.
    NotFound(String),
    /// The program could not be started for another reason.
    SpawnFailed(String),
}

/// What running a command produced.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Output {
    /// How it ended.
    pub exit: Exit,
    /// Standard output.
    pub stdout: Captured,
    /// Standard error.
    pub stderr: Captured,
    /// Processes it started were still running after it exited (they
    /// were killed).
    pub lingering: bool,
    /// Wall time.
    pub duration: Duration,
}

impl Output {
    /// Whether it exited with status 0 and left nothing running.
    pub fn success(&self) -> bool {
        self.exit == Exit::Code(0) && !self.lingering
    }

    /// A one-line description of how it ended, for reports.
    pub fn describe(&self) -> String {
        let base = match &self.exit {
            Exit::Code(0) => "exited with status 0".to_owned(),
            Exit::Code(c) => format!("exited with status {c}"),
            Exit::Signal(s) => format!(
                "was killed by signal {s}{}",
                Signal::try_from(*s)
                    .map(|x| format!(" ({x})"))
                    .unwrap_or_default()
            ),
            Exit::TimedOut(t) => format!(
                "timed out after {}s; it and every process it started were killed",
                t.as_secs_f64().round()
            ),
            Exit::Stalled(t) => format!(
                "printed nothing for {}s and was stopped; it and every process it started were killed",
                t.as_secs_f64().round()
            ),
            Exit::Cancelled => {
                "was cancelled; it and every process it started were killed".to_owned()
            }
            Exit::NotFound(p) => format!("was not found (is `{p}` installed and on PATH?)"),
            Exit::SpawnFailed(e) => format!("could not be started: {e}"),
        };
        if self.lingering {
            format!("{base}, but left processes running (they were killed)")
        } else {
            base
        }
    }

    /// The last `lines` lines of stdout and of stderr, labelled.
    pub fn excerpt(&self, lines: usize) -> String {
        let mut s = String::new();
        for (name, c) in [("stdout", &self.stdout), ("stderr", &self.stderr)] {
            let text = c.text();
            let text = text.trim_end();
            if text.is_empty() {
                continue;
            }
            let all: Vec<&str> = text.lines().collect();
            let start = all.len().saturating_sub(lines);
            s.push_str(&format!(
                "--- {name} (last {} of {} lines)\n",
                all.len() - start,
                all.len()
            ));
            for l in &all[start..] {
                let l: String = l.chars().take(300).collect();
                s.push_str(&l);
                s.push('\n');
            }
        }
        s
    }
}

/// What to run.
#[derive(Debug, Clone)]
pub struct Command {
    /// Program and arguments; with `shell`, one command string.
    pub argv: Vec<String>,
    /// Run `argv[0]` with `sh -c`.
    pub shell: bool,
    /// Working directory.
    pub cwd: PathBuf,
    /// Variables set for the program (over any passed through).
    pub env: BTreeMap<String, String>,
    /// Names of orch's environment variables passed through, besides
    /// [`BASE_ENV`]; a name ending in `*` passes every variable it
    /// begins. Nothing else of orch's environment reaches the program.
    pub env_allow: Vec<String>,
    /// Written to standard input, which is then closed (default: no input).
    pub stdin: Option<Vec<u8>>,
    /// Time limit.
    pub timeout: Duration,
    /// Stop the program when it prints nothing on stdout for this long.
    pub stall: Option<Duration>,
}

impl Default for Command {
    /// No program, the current directory, 30 minutes, no stall limit.
    fn default() -> Self {
        Command {
            argv: Vec::new(),
            shell: false,
            cwd: PathBuf::from("."),
            env: BTreeMap::new(),
            env_allow: Vec::new(),
            stdin: None,
            timeout: Duration::from_secs(1800),
            stall: None,
        }
    }
}

/// The variables of orch's environment every command it starts keeps:
/// where programs and home are, who and where the user is, the locale,
/// the terminal and the temporary directory, and where the Rust
/// toolchain lives. No key, token or password: anything else must be
/// named (`env_allow`) or set (`env`) by the plan.
pub const BASE_ENV: &[&str] = &[
    "PATH",
    "HOME",
    "USER",
    "LOGNAME",
    "SHELL",
    "TERM",
    "TMPDIR",
    "TZ",
    "LANG",
    "LANGUAGE",
    "LC_*",
    "CARGO_HOME",
    "RUSTUP_HOME",
    "RUSTUP_TOOLCHAIN",
];

/// Whether `name` is allowed by `allow` (exact names, or prefixes ending
/// in `*`).
fn allowed(allow: &[impl AsRef<str>], name: &str) -> bool {
    allow.iter().any(|a| {
        let a = a.as_ref();
        match a.strip_suffix('*') {
            Some(prefix) => name.starts_with(prefix),
            None => a == name,
        }
    })
}

/// The environment a command runs with: [`BASE_ENV`] and the names in
/// `env_allow` from orch's own environment, then `env` over them.
pub fn environment(
    env: &BTreeMap<String, String>,
    env_allow: &[String],
) -> BTreeMap<String, String> {
    let mut out: BTreeMap<String, String> = std::env::vars_os()
        .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
        .filter(|(k, _)| k != contain::MARKER_VAR)
        .filter(|(k, _)| allowed(BASE_ENV, k) || allowed(env_allow, k))
        .collect();
    out.extend(env.iter().map(|(k, v)| (k.clone(), v.clone())));
    out
}

/// Kills every process of a command's cell when dropped (the future was
/// dropped, or we are done and want no orphans).
struct CellGuard(Option<contain::Cell>);

impl Drop for CellGuard {
    fn drop(&mut self) {
        if let Some(cell) = self.0.take() {
            cell.kill_now();
            cell.remove();
        }
    }
}

/// Where `program` is, as `execvp` would find it: a name is looked up in
/// the `PATH` the command runs with, a path with a `/` is taken relative
/// to the working directory.
fn locate(cmd: &Command, program: &str) -> Result<String, Exit> {
    use std::os::unix::fs::PermissionsExt;
    let runnable = |p: &std::path::Path| {
        std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    if !cmd.cwd.is_dir() {
        return Err(Exit::SpawnFailed(format!(
            "working directory {} does not exist",
            cmd.cwd.display()
        )));
    }
    if program.contains('/') {
        let path = cmd.cwd.join(program);
        return if runnable(&path) {
            Ok(path.display().to_string())
        } else if path.exists() {
            Err(Exit::SpawnFailed(format!(
                "{program}: not an executable file"
            )))
        } else {
            Err(Exit::NotFound(program.to_owned()))
        };
    }
    let search = match cmd.env.get("PATH") {
        Some(p) => p.clone(),
        None => std::env::var("PATH").unwrap_or_else(|_| "/usr/local/bin:/usr/bin:/bin".to_owned()),
    };
    std::env::split_paths(&search)
        .map(|d| cmd.cwd.join(d).join(program))
        .find(|p| runnable(p))
        .map(|p| p.display().to_string())
        .ok_or_else(|| Exit::NotFound(program.to_owned()))
}

async fn pump<R: AsyncRead + Unpin>(mut r: R, keep: usize) -> Captured {
    let mut c = Captured::new(keep);
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match r.read(&mut buf).await {
            Ok(0) | Err(_) => return c,
            Ok(n) => c.push(&buf[..n]),
        }
    }
}

/// Reads one line (up to and including `\n`) into `buf`, keeping at most
/// `cap` bytes of it, and adds every byte it consumes to `consumed` as it
/// goes. Returns `true` when the line ended, `false` at the end of the
/// stream. Cancel-safe: a read dropped half-way (by `select!`) leaves the
/// bytes it took in `buf` and counted in `consumed`.
async fn read_line_capped<R: AsyncBufRead + Unpin>(
    r: &mut R,
    buf: &mut Vec<u8>,
    cap: usize,
    consumed: &mut usize,
) -> std::io::Result<bool> {
    loop {
        let available = r.fill_buf().await?;
        if available.is_empty() {
            return Ok(false);
        }
        let (used, done) = match available.iter().position(|b| *b == b'\n') {
            Some(i) => (i + 1, true),
            None => (available.len(), false),
        };
        let room = cap.saturating_sub(buf.len());
        buf.extend_from_slice(&available[..used.min(room)]);
        r.consume(used);
        *consumed += used;
        if done {
            return Ok(true);
        }
    }
}

/// Kills every process of the guarded cell and waits until they are gone.
async fn kill_all(group: &CellGuard) {
    if let Some(cell) = &group.0 {
        cell.kill().await;
    }
}

/// Runs `cmd` to the end, its time limit, or cancellation.
pub async fn run(cmd: &Command, cancel: &Cancellation) -> Output {
    run_lines(cmd, cancel, &mut |_: &str| {}).await
}

/// Runs `cmd` like [`run`], handing each stdout line (without its line
/// end, at most [`MAX_LINE_BYTES`]) to `on_line` as it arrives. With
/// `cmd.stall`, a program that prints nothing on stdout for that long is
/// stopped ([`Exit::Stalled`]).
pub async fn run_lines(
    cmd: &Command,
    cancel: &Cancellation,
    on_line: &mut (dyn FnMut(&str) + Send),
) -> Output {
    let started = Instant::now();
    let finish = |exit, stdout, stderr, lingering| Output {
        exit,
        stdout,
        stderr,
        lingering,
        duration: started.elapsed(),
    };
    let (program, args): (&str, Vec<&str>) = if cmd.shell {
        (
            "sh",
            vec!["-c", cmd.argv.first().map_or("", String::as_str)],
        )
    } else {
        match cmd.argv.split_first() {
            Some((p, rest)) => (p.as_str(), rest.iter().map(String::as_str).collect()),
            None => {
                return finish(
                    Exit::SpawnFailed("empty argv".into()),
                    Captured::default(),
                    Captured::default(),
                    false,
                );
            }
        }
    };
    let located = match locate(cmd, program) {
        Ok(p) => p,
        Err(exit) => return finish(exit, Captured::default(), Captured::default(), false),
    };
    // Every process the command starts stays in its cell, where it can be
    // found and killed, `setsid` or not.
    let mut cell = match contain::scope().cell() {
        Ok(cell) => cell,
        Err(e) => {
            return finish(
                Exit::SpawnFailed(e),
                Captured::default(),
                Captured::default(),
                false,
            );
        }
    };
    let wrapped = cell.wrap(&located, &args);
    let mut command = tokio::process::Command::new(&wrapped.program);
    command
        .env_clear()
        .envs(environment(&cmd.env, &cmd.env_allow))
        .args(&wrapped.args)
        .current_dir(&cmd.cwd)
        .stdin(if cmd.stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    if let Some((k, v)) = &wrapped.env {
        command.env(k, v);
    }
    let mut child = match command.spawn() {
        Ok(c) => c,
        Err(e) => {
            cell.remove();
            return finish(
                Exit::SpawnFailed(format!("{program}: {e}")),
                Captured::default(),
                Captured::default(),
                false,
            );
        }
    };
    cell.set_group(child.id().and_then(|p| i32::try_from(p).ok()));
    let mut group = CellGuard(Some(cell));
    if let (Some(input), Some(mut pipe)) = (cmd.stdin.clone(), child.stdin.take()) {
        // A program that does not read its input must not block us.
        tokio::spawn(async move {
            let _ = pipe.write_all(&input).await;
            let _ = pipe.shutdown().await;
        });
    }
    let err = tokio::spawn(pump(child.stderr.take().expect("piped"), KEEP_BYTES));
    let mut reader = tokio::io::BufReader::new(child.stdout.take().expect("piped"));
    let mut stdout = Captured::new(KEEP_BYTES);
    let mut line: Vec<u8> = Vec::new();
    // Bytes of the current line read so far (more than `line` holds when
    // the line is longer than MAX_LINE_BYTES).
    let mut consumed = 0usize;
    let mut eof = false;
    let mut deliver = |line: &mut Vec<u8>, consumed: &mut usize, stdout: &mut Captured| {
        stdout.push(line);
        stdout.skipped((*consumed - line.len()) as u64);
        *consumed = 0;
        let text = String::from_utf8_lossy(line);
        on_line(text.trim_end_matches(['\n', '\r']));
        line.clear();
    };
    let deadline = tokio::time::Instant::now() + cmd.timeout;
    let mut last_output = tokio::time::Instant::now();
    let exit = loop {
        // Not clamped to the deadline: when the time limit comes first it
        // must be reported as a timeout. Without a stall limit the branch is
        // disabled and this value unused.
        let stall_at = cmd.stall.map_or(deadline, |s| last_output + s);
        tokio::select! {
            r = read_line_capped(&mut reader, &mut line, MAX_LINE_BYTES, &mut consumed), if !eof => match r {
                Ok(true) => {
                    last_output = tokio::time::Instant::now();
                    deliver(&mut line, &mut consumed, &mut stdout);
                }
                _ => {
                    eof = true;
                    if consumed > 0 {
                        deliver(&mut line, &mut consumed, &mut stdout);
                    }
                }
            },
            status = child.wait() => break match status {
                Ok(s) => {
                    use std::os::unix::process::ExitStatusExt;
                    match (s.code(), s.signal()) {
                        (Some(c), _) => Exit::Code(c),
                        (None, Some(sig)) => Exit::Signal(sig),
                        (None, None) => Exit::SpawnFailed("no exit status".into()),
                    }
                }
                Err(e) => Exit::SpawnFailed(format!("waiting for {program}: {e}")),
            },
            () = tokio::time::sleep_until(deadline) => {
                let _ = child.start_kill();
                kill_all(&group).await;
                let _ = child.wait().await;
                break Exit::TimedOut(cmd.timeout);
            }
            () = tokio::time::sleep_until(stall_at), if cmd.stall.is_some() => {
                let _ = child.start_kill();
                kill_all(&group).await;
                let _ = child.wait().await;
                break Exit::Stalled(cmd.stall.unwrap_or_default());
            }
            () = cancel.cancelled() => {
                // The child itself too: killed before its shim joined the
                // cell, it is not in it yet.
                let _ = child.start_kill();
                kill_all(&group).await;
                let _ = child.wait().await;
                break Exit::Cancelled;
            }
        }
    };
    // Anything left in the cell outlived the command: kill it, so its
    // pipes close and nothing runs on after us.
    let lingering = matches!(exit, Exit::Code(_) | Exit::Signal(_))
        && group.0.as_ref().is_some_and(contain::Cell::alive);
    kill_all(&group).await;
    group.0 = None;
    // The rest of stdout. Everything in the cell is dead, so the pipes
    // have closed, unless a marker cell was escaped (a process that
    // cleared its environment): stop waiting for it soon.
    let grace = Duration::from_secs(1);
    if !eof {
        let _ = tokio::time::timeout(grace, async {
            while let Ok(true) =
                read_line_capped(&mut reader, &mut line, MAX_LINE_BYTES, &mut consumed).await
            {
                deliver(&mut line, &mut consumed, &mut stdout);
            }
        })
        .await;
        if consumed > 0 {
            deliver(&mut line, &mut consumed, &mut stdout);
        }
    }
    let stderr = tokio::time::timeout(grace, err)
        .await
        .ok()
        .and_then(Result::ok)
        .unwrap_or_default();
    finish(exit, stdout, stderr, lingering)
}

/// Checks, before anything runs, that `program` (an argv's first element)
/// can be started: a bare name must be an executable file in a directory
/// of `search` (the `PATH` the command will run with; `None`: this
/// process's), a path must be an executable file. A relative path with a
/// `/` is resolved in the work tree when it runs, which may not exist yet,
/// so it is not checked.
///
/// ```
/// use orch_core::process::check_program;
/// assert!(check_program("sh", None).is_ok());
/// let e = check_program("no-such-program-orch", None).unwrap_err();
/// assert_eq!(e, "no-such-program-orch is not installed or not on PATH");
/// // Not on the PATH the command is given.
/// assert!(check_program("sh", Some("/nonexistent".as_ref())).is_err());
/// ```
///
/// # Errors
/// A message naming the program and what is wrong with it.
pub fn check_program(program: &str, search: Option<&std::ffi::OsStr>) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    let executable = |p: &std::path::Path| {
        std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    if program.is_empty() {
        return Err("the command is empty".into());
    }
    let path = std::path::Path::new(program);
    if path.is_absolute() {
        return if executable(path) {
            Ok(())
        } else if path.exists() {
            Err(format!("{program} is not an executable file"))
        } else {
            Err(format!("{program} does not exist"))
        };
    }
    if program.contains('/') {
        return Ok(());
    }
    let ours = std::env::var_os("PATH");
    let found = search
        .or(ours.as_deref())
        .is_some_and(|dirs| std::env::split_paths(dirs).any(|d| executable(&d.join(program))));
    if found {
        Ok(())
    } else {
        Err(not_installed(program))
    }
}

/// What to say about a program that cannot be found, the same before a
/// run ([`check_program`]) as when starting it fails.
pub fn not_installed(program: &str) -> String {
    format!("{program} is not installed or not on PATH")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A line read in pieces, with the read dropped between them (as
    /// `select!` does when the child exits first), is counted whole:
    /// counting only what a finished read returned lost the first piece
    /// and underflowed the skipped-bytes count.
    #[tokio::test]
    async fn a_line_read_across_a_dropped_read_is_counted_whole() {
        use tokio::io::AsyncWriteExt;
        let (mut w, r) = tokio::io::duplex(64);
        let mut reader = tokio::io::BufReader::new(r);
        let (mut line, mut consumed) = (Vec::new(), 0);
        w.write_all(b"abcdef").await.unwrap();
        let first = tokio::time::timeout(
            Duration::from_millis(50),
            read_line_capped(&mut reader, &mut line, 4, &mut consumed),
        )
        .await;
        assert!(first.is_err(), "no line end yet: the read waits");
        assert_eq!((line.as_slice(), consumed), (&b"abcd"[..], 6));
        w.write_all(b"gh\n").await.unwrap();
        let ended = read_line_capped(&mut reader, &mut line, 4, &mut consumed).await;
        assert!(ended.unwrap());
        assert_eq!((line.as_slice(), consumed), (&b"abcd"[..], 9));
        drop(w);
        assert!(
            !read_line_capped(&mut reader, &mut line, 4, &mut consumed)
                .await
                .unwrap()
        );
    }

    #[test]
    fn captured_keeps_head_and_tail() {
        let mut c = Captured::new(4);
        c.push(b"abcdefgh");
        c.push(b"ij");
        c.push(b"klmnop");
        assert_eq!(c.total(), 16);
        assert_eq!(c.dropped(), 8);
        assert_eq!(c.text(), "abcd\n[... 8 bytes dropped ...]\nmnop");
        let mut small = Captured::new(10);
        small.push(b"hello");
        assert_eq!(small.text(), "hello");
    }
}
