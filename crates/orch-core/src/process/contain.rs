//! Containment: every process a command starts is kept where it can be
//! found and killed, whatever it does (`setsid`, double fork) and whatever
//! happens to orch.
//!
//! Each command runs in a **cell**. Where the kernel lets this process make
//! cgroups (cgroup v2, a directory it may write: root, or a delegated
//! subtree), a cell is a cgroup of its own: the command joins it before it
//! execs (a one-line `sh` shim writes its pid to `cgroup.procs`, then
//! `exec`s the program), every descendant stays in it, and `cgroup.kill`
//! kills them all at once. Elsewhere a cell is a **marker**: an environment
//! variable ([`MARKER_VAR`]) every descendant inherits, found by walking
//! `/proc`, together with the command's process group. `setsid` and
//! double forks do not leave a cgroup; a marker is left by a program that
//! clears its environment,
//! so it is the fallback. [`Scope::describe`] says which is in use. A
//! process with the rights to move itself to another cgroup (root, or the
//! owner of a delegated subtree) can leave its cell: containment holds
//! agents that do not have them, or that do not try; run agents as
//! another user where that matters.
//!
//! All cells of one process live under one **scope** (a cgroup, or a
//! marker prefix). When the scope is first used a small watchdog process
//! is started with a pipe from this process that nobody writes: when this
//! process ends, by any signal including `SIGKILL`, the kernel closes the
//! pipe, and the watchdog kills everything in the scope. A later driver of
//! the same run kills what is left of an earlier one's scope too
//! ([`kill_scope`]), before it touches a work tree, in case the watchdog
//! itself was killed.
//!
//! `ORCH_CGROUP` chooses: a directory of the cgroup v2 hierarchy to make
//! the scope in (default: this process's own cgroup), or `off` for the
//! marker.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::Pid;

use crate::DriverInfo;

/// The environment variable that marks a command's processes when cgroups
/// cannot be used: `<scope token>/<cell number>`.
pub const MARKER_VAR: &str = "ORCH_CONTAIN";

/// How long a kill waits for the processes to be gone before it gives up
/// waiting (they were sent `SIGKILL`; only an uninterruptible sleep in the
/// kernel makes them linger).
const GONE_WITHIN: Duration = Duration::from_secs(2);

/// This process's containment: where its commands' cells are made.
#[derive(Debug)]
pub struct Scope {
    kind: ScopeKind,
    next: AtomicU64,
    /// Cells killed whose directories could not be removed yet (their
    /// processes were still dying); removed when the next cell is made.
    leftovers: Mutex<Vec<PathBuf>>,
    /// The watchdog's end of the pipe is its stdin; ours stays open for
    /// as long as this process lives.
    _watchdog: Option<std::os::fd::OwnedFd>,
}

#[derive(Debug)]
enum ScopeKind {
    /// A cgroup v2 directory of this process's own.
    Cgroup(PathBuf),
    /// The marker prefix (`<pid>-<start>`).
    Marker(String),
}

/// One command's containment.
#[derive(Debug)]
pub(crate) enum Cell {
    Cgroup(PathBuf),
    Marker { token: String, pgid: Option<i32> },
}

static SCOPE: OnceLock<Scope> = OnceLock::new();

/// See [`deadman`].
static DEADMAN: OnceLock<Duration> = OnceLock::new();

/// Makes the watchdog also kill this process's commands whenever this
/// process stops answering for `within`: frozen (`SIGSTOP`, a debugger, a
/// machine suspended), not only gone. A thread of this process tells the
/// watchdog it is alive every quarter of `within`; when the watchdog hears
/// nothing for `within` it kills everything in the scope, and goes on
/// watching (commands started after the process resumes are contained as
/// before). For a worker whose agents must stop before another machine
/// may take its job over, however the worker stops. Call it before the
/// first command runs; `false` when the scope was made already, without
/// it.
pub fn deadman(within: Duration) -> bool {
    DEADMAN.set(within).is_ok() && SCOPE.get().is_none()
}

/// This process's scope, made on first use (with its watchdog).
pub fn scope() -> &'static Scope {
    SCOPE.get_or_init(Scope::make)
}

/// `/proc/<pid>/stat`'s start time (clock ticks after boot): with the pid,
/// it names a process across pid reuse.
pub(crate) fn start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces and parentheses: the
    // fields after it start after its last `)`.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

fn read_trimmed(path: &str) -> String {
    std::fs::read_to_string(path)
        .map(|s| s.trim().to_owned())
        .unwrap_or_default()
}

/// This machine and boot: processes of a driver recorded with another
/// host or boot cannot be reached (or are gone with the reboot).
fn host_and_boot() -> (String, String) {
    (
        read_trimmed("/proc/sys/kernel/hostname"),
        read_trimmed("/proc/sys/kernel/random/boot_id"),
    )
}

/// Where the cgroup v2 hierarchy is mounted, if it is.
fn own_cgroup_mount() -> Option<PathBuf> {
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    // `id parent major:minor root mount-point options... - fstype source ...`
    mounts.lines().find_map(|l| {
        let (left, right) = l.split_once(" - ")?;
        (right.split_whitespace().next()? == "cgroup2")
            .then(|| left.split_whitespace().nth(4).map(PathBuf::from))?
    })
}

/// The directory of this process's cgroup in the cgroup v2 hierarchy, if
/// there is one mounted.
fn own_cgroup() -> Option<PathBuf> {
    let cgroup = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    let rel = cgroup.lines().find_map(|l| l.strip_prefix("0::"))?;
    Some(own_cgroup_mount()?.join(rel.trim_start_matches('/')))
}

impl Scope {
    fn make() -> Scope {
        let pid = std::process::id();
        let token = format!("{pid}-{}", start_time(pid).unwrap_or(0));
        let base = match std::env::var("ORCH_CGROUP") {
            Ok(v) if v == "off" => None,
            Ok(v) if !v.is_empty() => Some(PathBuf::from(v)),
            _ => own_cgroup(),
        };
        let cgroup = base.and_then(|b| {
            let dir = b.join(format!("orch-{token}"));
            // A usable cgroup: made, and killable (cgroup.kill, Linux 5.14).
            (std::fs::create_dir(&dir).is_ok() || dir.join("cgroup.procs").exists())
                .then_some(dir)
                .filter(|d| d.join("cgroup.kill").exists())
        });
        let kind = match cgroup {
            Some(dir) => ScopeKind::Cgroup(dir),
            None => ScopeKind::Marker(token),
        };
        let deadman = DEADMAN.get().copied();
        let watchdog = start_watchdog(&kind, deadman).map(std::os::fd::OwnedFd::from);
        if let (Some(fd), Some(within)) = (&watchdog, deadman) {
            // Close-on-exec like the original: no command inherits it.
            if let Ok(fd) = fd.try_clone() {
                let mut alive = std::fs::File::from(fd);
                let every = within / 4;
                std::thread::Builder::new()
                    .name("orch-deadman".into())
                    .spawn(move || {
                        while alive.write_all(b".").is_ok() {
                            std::thread::sleep(every);
                        }
                    })
                    .ok();
            }
        }
        Scope {
            kind,
            next: AtomicU64::new(0),
            leftovers: Mutex::new(Vec::new()),
            _watchdog: watchdog,
        }
    }

    /// Whether commands are contained by cgroups (complete) rather than by
    /// the marker (escapable by clearing the environment).
    pub fn is_cgroup(&self) -> bool {
        matches!(self.kind, ScopeKind::Cgroup(_))
    }

    /// What to record so that a later process can kill what is left of
    /// this one's commands ([`kill_scope`]).
    pub fn describe(&self) -> DriverInfo {
        let (host, boot) = host_and_boot();
        let pid = std::process::id();
        DriverInfo {
            host,
            boot,
            pid,
            start: start_time(pid).unwrap_or(0),
            containment: match &self.kind {
                ScopeKind::Cgroup(d) => format!("cgroup:{}", d.display()),
                ScopeKind::Marker(t) => format!("marker:{t}"),
            },
        }
    }

    /// A new cell for one command.
    pub(crate) fn cell(&self) -> Result<Cell, String> {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        Ok(match &self.kind {
            ScopeKind::Cgroup(root) => {
                self.leftovers
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .retain(|d| std::fs::remove_dir(d).is_err() && d.exists());
                let dir = root.join(format!("c{n}"));
                // Refused (a limit on descendants someone set): the
                // command does not run uncontained.
                std::fs::create_dir(&dir)
                    .map(|()| Cell::Cgroup(dir.clone()))
                    .map_err(|e| {
                        format!(
                            "cannot make the cgroup {} to contain the command: {e}",
                            dir.display()
                        )
                    })?
            }
            ScopeKind::Marker(t) => Cell::Marker {
                token: format!("{t}/{n}"),
                pgid: None,
            },
        })
    }

    fn forget(&self, dir: PathBuf) {
        self.leftovers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(dir);
    }
}

/// Starts the process that kills the scope when this process ends: its
/// stdin is a pipe whose other end only this process holds (close-on-exec,
/// so no command inherits it); end of file on it means we are gone. With
/// `deadman`, silence on it for that long (we are frozen) kills the scope
/// too, and the watchdog goes on watching. It runs in a process group of
/// its own, so a signal to ours (Ctrl-C, `kill -- -<pgid>`) does not take
/// it with us.
fn start_watchdog(kind: &ScopeKind, deadman: Option<Duration>) -> Option<std::process::ChildStdin> {
    let (kill, cleanup, arg) = match kind {
        ScopeKind::Cgroup(dir) => (
            r#"echo 1 > "$0/cgroup.kill" 2>/dev/null
i=0; while [ $i -lt 200 ] && grep -q '^populated 1' "$0/cgroup.events" 2>/dev/null; do sleep 0.01; i=$((i+1)); done"#,
            r#"for d in "$0"/*/; do rmdir "$d" 2>/dev/null; done; rmdir "$0" 2>/dev/null"#,
            dir.display().to_string(),
        ),
        ScopeKind::Marker(token) => (
            r#"for round in 1 2 3; do for f in /proc/[0-9]*/environ; do
if grep -qz "^ORCH_CONTAIN=$0/" "$f" 2>/dev/null; then p=${f#/proc/}; kill -9 "${p%/environ}" 2>/dev/null; fi
done; done"#,
            "",
            token.clone(),
        ),
    };
    // `wait`: until end of file; or, with a deadman, until end of file
    // (dd ends at once with nothing) or silence (timeout's status 124).
    let wait = match deadman {
        None => "read _".to_owned(),
        Some(d) => format!(
            r#"while :; do got=$(timeout {:.3} dd bs=1 count=1 2>/dev/null; echo ":$?")
case "$got" in .:0) ;; *:124) {{ kill_scope; }} ;; *) break ;; esac; done"#,
            d.as_secs_f64()
        ),
    };
    let script = format!("kill_scope() {{\n{kill}\n}}\n{wait}\nkill_scope\n{cleanup}\nexit 0");
    use std::os::unix::process::CommandExt as _;
    let mut child = std::process::Command::new("/bin/sh")
        .args(["-c", &script, &arg])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .env_remove(MARKER_VAR)
        .process_group(0)
        .spawn()
        .ok()?;
    // Its exit status is never read: it exits when we do.
    child.stdin.take()
}

/// Runs `cmd` (a short helper program orch waits for itself: `git`, say)
/// in a cell of its own and returns its output, like
/// `std::process::Command::output`. The cell is killed when the program
/// exits: whatever it started (a hook's daemon) dies with it, and its
/// output is not waited for beyond that. It dies with this process too,
/// whatever kills it, instead of finishing its work (a merge, a commit)
/// under the feet of a later driver. It runs in a process group of its
/// own: Ctrl-C in a terminal signals the whole foreground group, and a
/// helper killed by it mid-way would fail the step it served. The
/// program, arguments, directory and environment changes of `cmd` are
/// used; its standard streams are not (input is empty, output captured).
/// It starts from a clean environment: [`BASE_ENV`](super::BASE_ENV) and
/// the `GIT_*` variables whose names do not look secret, then what `cmd`
/// sets.
///
/// ```
/// let mut echo = std::process::Command::new("echo");
/// echo.arg("hi");
/// let out = orch_core::process::output(&echo).unwrap();
/// assert_eq!(out.stdout, b"hi\n");
/// ```
///
/// # Errors
/// When the program cannot be started or its cell cannot be made.
pub fn output(cmd: &std::process::Command) -> std::io::Result<std::process::Output> {
    use std::io::Read as _;
    use std::os::unix::process::CommandExt as _;
    let cell = scope().cell().map_err(std::io::Error::other)?;
    let program = cmd.get_program().to_string_lossy().into_owned();
    let args: Vec<String> = cmd
        .get_args()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let w = cell.wrap(&program, &args);
    let mut run = std::process::Command::new(&w.program);
    // A clean environment, as for agents and gates: what git runs (hooks,
    // filters, the agents' to configure) sees no key of orch's.
    let env = super::environment(&Default::default(), &["GIT_*".to_owned()]);
    run.args(&w.args)
        .env_clear()
        .envs(
            env.iter()
                .filter(|(k, _)| !crate::secrets::is_secret_name(k)),
        )
        .env("GIT_NO_REPLACE_OBJECTS", "1")
        .process_group(0)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    if let Some(dir) = cmd.get_current_dir() {
        run.current_dir(dir);
    }
    for (k, v) in cmd.get_envs() {
        match v {
            Some(v) => run.env(k, v),
            None => run.env_remove(k),
        };
    }
    if let Some((k, v)) = &w.env {
        run.env(k, v);
    }
    let mut child = match run.spawn() {
        Ok(c) => c,
        Err(e) => {
            cell.remove();
            return Err(e);
        }
    };
    let read = |pipe: Option<Box<dyn std::io::Read + Send>>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            if let Some(mut p) = pipe {
                let _ = p.read_to_end(&mut buf);
            }
            buf
        })
    };
    let out = read(child.stdout.take().map(|p| Box::new(p) as _));
    let err = read(child.stderr.take().map(|p| Box::new(p) as _));
    let status = child.wait();
    // Whatever it left running goes now, so the pipes close.
    cell.kill_blocking();
    Ok(std::process::Output {
        status: status?,
        stdout: out.join().unwrap_or_default(),
        stderr: err.join().unwrap_or_default(),
    })
}

/// What a cell starts: the program and its arguments, and the variables
/// to add to its environment.
pub(crate) struct Wrapped {
    pub(crate) program: String,
    pub(crate) args: Vec<String>,
    pub(crate) env: Option<(&'static str, String)>,
}

/// The shim that puts the command in its cgroup before it runs: it writes
/// its own pid to `cgroup.procs`, then becomes the program.
const JOIN: &str = r#"echo $$ > "$0" || exit 125; exec "$@""#;

impl Cell {
    /// How to start `program` with `args` inside this cell. `program` must
    /// be a path (the shim's `exec` does not search `PATH` the way the
    /// runner does).
    pub(crate) fn wrap(&self, program: &str, args: &[&str]) -> Wrapped {
        match self {
            Cell::Cgroup(dir) => {
                let mut all = vec![
                    "-c".to_owned(),
                    JOIN.to_owned(),
                    dir.join("cgroup.procs").display().to_string(),
                    program.to_owned(),
                ];
                all.extend(args.iter().map(|a| (*a).to_owned()));
                Wrapped {
                    program: "/bin/sh".into(),
                    args: all,
                    env: None,
                }
            }
            Cell::Marker { token, .. } => Wrapped {
                program: program.to_owned(),
                args: args.iter().map(|a| (*a).to_owned()).collect(),
                env: Some((MARKER_VAR, token.clone())),
            },
        }
    }

    /// Notes the process group the command leads (marker cells kill it
    /// too: it holds whatever did not change group).
    pub(crate) fn set_group(&mut self, group: Option<i32>) {
        if let Cell::Marker { pgid, .. } = self {
            *pgid = group;
        }
    }

    /// Whether any process of the cell is still running.
    pub(crate) fn alive(&self) -> bool {
        match self {
            Cell::Cgroup(dir) => populated(dir),
            Cell::Marker { token, pgid } => {
                !marked(&format!("{MARKER_VAR}={token}"), true, *pgid).is_empty()
            }
        }
    }

    /// Sends `SIGKILL` to every process of the cell, without waiting.
    pub(crate) fn kill_now(&self) {
        match self {
            Cell::Cgroup(dir) => cgroup_kill(dir),
            Cell::Marker { token, pgid } => {
                if let Some(g) = pgid {
                    let _ = killpg(Pid::from_raw(*g), Signal::SIGKILL);
                }
                for pid in marked(&format!("{MARKER_VAR}={token}"), true, *pgid) {
                    let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
                }
            }
        }
    }

    /// Kills every process of the cell and waits (briefly) until they are
    /// gone, then removes the cell.
    pub(crate) async fn kill(&self) {
        self.kill_now();
        let deadline = tokio::time::Instant::now() + GONE_WITHIN;
        while self.alive() && tokio::time::Instant::now() < deadline {
            // A forking program may have made a child between the scan
            // and the kill (marker cells): kill again.
            tokio::time::sleep(Duration::from_millis(1)).await;
            self.kill_now();
        }
        self.remove();
    }

    /// [`Cell::kill`] for a caller that is not async (it sleeps the
    /// thread between tries).
    pub(crate) fn kill_blocking(&self) {
        self.kill_now();
        let deadline = std::time::Instant::now() + GONE_WITHIN;
        while self.alive() && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
            self.kill_now();
        }
        self.remove();
    }

    /// Removes the cell's cgroup (later, if it cannot be yet).
    pub(crate) fn remove(&self) {
        if let Cell::Cgroup(dir) = self
            && std::fs::remove_dir(dir).is_err()
            && dir.exists()
        {
            scope().forget(dir.clone());
        }
    }
}

fn populated(dir: &Path) -> bool {
    std::fs::read_to_string(dir.join("cgroup.events"))
        .map(|s| s.lines().any(|l| l == "populated 1"))
        .unwrap_or(false)
}

/// Asks the kernel to kill every process of the cgroup `dir` and of its
/// descendants (`cgroup.kill`, Linux 5.14).
fn write_kill(dir: &Path) -> std::io::Result<()> {
    std::fs::OpenOptions::new()
        .write(true)
        .open(dir.join("cgroup.kill"))
        .and_then(|mut f| f.write_all(b"1"))
}

fn cgroup_kill(dir: &Path) {
    if write_kill(dir).is_err() {
        // No cgroup.kill: one by one.
        if let Ok(procs) = std::fs::read_to_string(dir.join("cgroup.procs")) {
            for pid in procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
                let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            }
        }
    }
}

/// The live processes (zombies are dead: only their parent's `wait` is
/// left) whose environment has `needle` (`NAME=value`) as an entry:
/// exactly, or (`exact` false) as a prefix; or that are in process group
/// `group`.
fn marked(needle: &str, exact: bool, group: Option<i32>) -> Vec<i32> {
    let me = std::process::id() as i32;
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&pid| pid != me)
        .filter(|pid| {
            let Some((state, pgrp)) = state_and_group(*pid) else {
                return false;
            };
            if state == 'Z' {
                return false;
            }
            group == Some(pgrp)
                || std::fs::read(format!("/proc/{pid}/environ")).is_ok_and(|env| {
                    env.split(|b| *b == 0).any(|entry| {
                        if exact {
                            entry == needle.as_bytes()
                        } else {
                            entry.starts_with(needle.as_bytes())
                        }
                    })
                })
        })
        .collect()
}

/// A process's state letter and process group, from `/proc/<pid>/stat`.
fn state_and_group(pid: i32) -> Option<(char, i32)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let mut rest = stat[stat.rfind(')')? + 1..].split_whitespace();
    let state = rest.next()?.chars().next()?;
    let pgrp = rest.nth(1)?.parse().ok()?;
    Some((state, pgrp))
}

/// What [`kill_scope`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Killed {
    /// Nothing of it was running.
    Nothing,
    /// This many processes were killed (a cgroup counts its cells).
    Some(usize),
    /// It is this process's own scope: its commands are its own to stop.
    Ours,
    /// It ran on another machine or before a reboot: not reachable from
    /// here (a reboot ended it; another machine's driver stops its own).
    Elsewhere,
}

/// Whether the driver `d` (recorded by [`Scope::describe`]) is still
/// running: `None` when that cannot be told from here (another machine).
pub fn driver_alive(d: &DriverInfo) -> Option<bool> {
    let (host, boot) = host_and_boot();
    // Another machine, or one with the same name booted apart: cannot
    // tell from here.
    if d.host != host || d.boot != boot {
        return None;
    }
    Some(start_time(d.pid) == Some(d.start))
}

/// Kills whatever is left of the commands of the driver `d` (recorded by
/// an earlier run's [`Scope::describe`]), and waits until they are gone.
/// Call it before touching anything those commands could still write.
///
/// # Errors
/// A message when the recorded scope cannot be killed (a cgroup that
/// exists but cannot be written).
pub async fn kill_scope(d: &DriverInfo) -> Result<Killed, String> {
    let (host, boot) = host_and_boot();
    if d.host != host || d.boot != boot {
        return Ok(Killed::Elsewhere);
    }
    let me = std::process::id();
    if d.pid == me && d.start == start_time(me).unwrap_or(0) {
        return Ok(Killed::Ours);
    }
    let token = format!("{}-{}", d.pid, d.start);
    if let Some(dir) = d.containment.strip_prefix("cgroup:") {
        // The journal says where; only a scope orch makes is acted on:
        // a directory named for that driver, in the cgroup v2 hierarchy,
        // reached without links (a journal anyone could append to must
        // not aim the kill at the machine's services).
        let dir = PathBuf::from(dir);
        let named = dir.file_name().and_then(|n| n.to_str()) == Some(&format!("orch-{token}"));
        let plain = dir.components().all(|c| {
            matches!(
                c,
                std::path::Component::RootDir | std::path::Component::Normal(_)
            )
        });
        let in_hierarchy = own_cgroup_mount().is_some_and(|m| dir.starts_with(m))
            && dir.canonicalize().ok().is_none_or(|real| real == dir);
        if !named || !plain || !in_hierarchy {
            return Err(format!(
                "the journal names {} as the processes of driver {token}, which is not a scope orch makes; nothing was killed",
                dir.display()
            ));
        }
        if !dir.join("cgroup.procs").exists() {
            return Ok(Killed::Nothing);
        }
        let count = count_procs(&dir);
        if count == 0 {
            remove_tree(&dir);
            return Ok(Killed::Nothing);
        }
        write_kill(&dir)
            .map_err(|e| format!("cannot kill the processes in {}: {e}", dir.display()))?;
        let deadline = tokio::time::Instant::now() + GONE_WITHIN;
        while populated(&dir) && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        remove_tree(&dir);
        return Ok(Killed::Some(count));
    }
    if let Some(marker) = d.containment.strip_prefix("marker:") {
        if marker != token {
            return Err(format!(
                "the journal names marker {marker:?} for driver {token}; nothing was killed"
            ));
        }
        let needle = format!("{MARKER_VAR}={token}/");
        let mut killed = 0;
        let deadline = tokio::time::Instant::now() + GONE_WITHIN;
        loop {
            let left = marked(&needle, false, None);
            if left.is_empty() || tokio::time::Instant::now() >= deadline {
                break;
            }
            for pid in left {
                if kill(Pid::from_raw(pid), Signal::SIGKILL).is_ok() {
                    killed += 1;
                }
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        return Ok(if killed == 0 {
            Killed::Nothing
        } else {
            Killed::Some(killed)
        });
    }
    Err(format!("unknown containment {:?}", d.containment))
}

/// Processes in a cgroup and its descendants.
fn count_procs(dir: &Path) -> usize {
    let own = std::fs::read_to_string(dir.join("cgroup.procs"))
        .map(|s| s.lines().count())
        .unwrap_or(0);
    let children: usize = std::fs::read_dir(dir)
        .map(|d| {
            d.filter_map(Result::ok)
                .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                .map(|e| count_procs(&e.path()))
                .sum()
        })
        .unwrap_or(0);
    own + children
}

/// Removes a cgroup and its (empty) descendants.
fn remove_tree(dir: &Path) {
    if let Ok(d) = std::fs::read_dir(dir) {
        for e in d.filter_map(Result::ok) {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                remove_tree(&e.path());
            }
        }
    }
    let _ = std::fs::remove_dir(dir);
}
