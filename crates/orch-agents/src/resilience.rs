//! Resilience around a backend: retry with backoff that honours
//! `retry-after`, a circuit breaker, admission control, routing by role
//! with fallback, and token/cost accounting (the run's budget is the
//! engine's to enforce: it folds every agent's usage into the run state).
//!
//! The teams' rule: 429 → wait longer (the time asked for), 529/5xx →
//! retry, other 4xx → fail fast.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use orch_core::plan::Prices;
use orch_core::{
    Agent, AgentContext, AgentError, AgentErrorKind, AgentOutcome, AgentTask, Plan, RoleName,
    TicketId, Usage,
};
use tokio::time::Instant;

use crate::cli::{AgentDefaults, from_spec};

/// Circuit breaker settings.
#[derive(Debug, Clone, Copy)]
pub struct BreakerConfig {
    /// Consecutive failures that open the circuit (default 5).
    pub failures: u32,
    /// How long it stays open before one probe is let through (default 30 s).
    pub cooldown: Duration,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        BreakerConfig {
            failures: 5,
            cooldown: Duration::from_secs(30),
        }
    }
}

/// Where a circuit breaker stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    /// Calls go through.
    Closed,
    /// Calls are refused until the cool-down has passed.
    Open,
    /// One probe call is let through; its result closes or reopens it.
    HalfOpen,
}

#[derive(Debug)]
struct BreakerInner {
    state: BreakerState,
    failures: u32,
    open_until: Option<Instant>,
    probing: bool,
}

/// A circuit breaker: opens after N consecutive failures, half-opens after
/// a cool-down.
#[derive(Debug)]
pub struct Breaker {
    cfg: BreakerConfig,
    inner: Mutex<BreakerInner>,
}

impl Breaker {
    /// A closed breaker.
    pub fn new(cfg: BreakerConfig) -> Self {
        Breaker {
            cfg,
            inner: Mutex::new(BreakerInner {
                state: BreakerState::Closed,
                failures: 0,
                open_until: None,
                probing: false,
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BreakerInner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Its state now (an open breaker whose cool-down has passed reads as
    /// half-open).
    pub fn state(&self) -> BreakerState {
        let b = self.lock();
        match (b.state, b.open_until) {
            (BreakerState::Open, Some(t)) if Instant::now() >= t => BreakerState::HalfOpen,
            (s, _) => s,
        }
    }

    /// Whether a call may go through now (takes the probe slot when
    /// half-open).
    pub fn allow(&self) -> bool {
        let mut b = self.lock();
        if b.state == BreakerState::Open && b.open_until.is_some_and(|t| Instant::now() >= t) {
            b.state = BreakerState::HalfOpen;
            b.probing = false;
        }
        match b.state {
            BreakerState::Closed => true,
            BreakerState::Open => false,
            BreakerState::HalfOpen if b.probing => false,
            BreakerState::HalfOpen => {
                b.probing = true;
                true
            }
        }
    }

    /// A call succeeded: close.
    pub fn success(&self) {
        let mut b = self.lock();
        b.state = BreakerState::Closed;
        b.failures = 0;
        b.probing = false;
        b.open_until = None;
    }

    /// A call failed in a way no retry of this backend can mend (its
    /// program is not installed, its key is refused): open at once, so
    /// work goes to the fallback until the cool-down has passed.
    pub fn trip(&self) {
        let mut b = self.lock();
        b.failures = b.failures.max(self.cfg.failures);
        b.state = BreakerState::Open;
        b.open_until = Some(Instant::now() + self.cfg.cooldown);
        b.probing = false;
    }

    /// A call failed in a way that says the backend is unwell.
    pub fn failure(&self) {
        let mut b = self.lock();
        b.failures += 1;
        if b.state == BreakerState::HalfOpen || b.failures >= self.cfg.failures {
            b.state = BreakerState::Open;
            b.open_until = Some(Instant::now() + self.cfg.cooldown);
            b.probing = false;
        }
    }
}

/// Retry settings for errors a retry can fix (rate limited, overloaded).
#[derive(Debug, Clone, Copy)]
pub struct RetryConfig {
    /// Retries after the first call (default 3).
    pub retries: u32,
    /// First backoff (default 1 s), doubled each retry.
    pub base: Duration,
    /// Longest backoff (default 60 s).
    pub max: Duration,
}

impl Default for RetryConfig {
    fn default() -> Self {
        RetryConfig {
            retries: 3,
            base: Duration::from_secs(1),
            max: Duration::from_secs(60),
        }
    }
}

impl RetryConfig {
    /// The waits before each retry: `base`, doubled each time up to `max`,
    /// plus a random part up to as much again (so tasks that failed
    /// together do not retry together); `retries` of them.
    ///
    /// ```
    /// use std::time::Duration;
    /// let r = orch_agents::RetryConfig { retries: 2, base: Duration::from_secs(1), max: Duration::from_secs(60) };
    /// let waits: Vec<Duration> = r.backoff().collect();
    /// assert_eq!(waits.len(), 2);
    /// assert!(waits[0] >= Duration::from_secs(1) && waits[0] < Duration::from_secs(2));
    /// assert!(waits[1] >= Duration::from_secs(2) && waits[1] < Duration::from_secs(4));
    /// ```
    pub fn backoff(&self) -> backon::ExponentialBackoff {
        use backon::BackoffBuilder;
        backon::ExponentialBuilder::new()
            .with_min_delay(self.base)
            .with_max_delay(self.max)
            .with_factor(2.0)
            .with_max_times(self.retries as usize)
            .with_jitter()
            .build()
    }
}

/// The longest a `retry-after` is waited (10 minutes).
pub const LONGEST_PAUSE: Duration = Duration::from_secs(600);

/// Whether an error says the backend (not the task) is unwell.
fn counts_against_backend(kind: AgentErrorKind) -> bool {
    matches!(
        kind,
        AgentErrorKind::Overloaded
            | AgentErrorKind::RateLimited
            | AgentErrorKind::Crashed
            | AgentErrorKind::Spawn
            | AgentErrorKind::Protocol
            | AgentErrorKind::Auth
            | AgentErrorKind::Stalled
            | AgentErrorKind::TimedOut
    )
}

/// An agent wrapped with a circuit breaker, admission control and retries.
///
/// * At most `max_concurrency` tasks run on it at once; the others wait.
/// * When it answers "rate limited" with a delay, every task for it waits
///   that long, not just the one that was told.
/// * Rate-limited and overloaded calls are retried with backoff and jitter.
/// * After N consecutive failures its circuit opens: calls fail at once with
///   [`AgentErrorKind::Unavailable`] until the cool-down has passed.
pub struct Backend {
    name: String,
    agent: Arc<dyn Agent>,
    breaker: Breaker,
    permits: tokio::sync::Semaphore,
    paused_until: Mutex<Option<Instant>>,
    retry: RetryConfig,
    prices: Option<Prices>,
}

impl std::fmt::Debug for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Backend")
            .field("name", &self.name)
            .field("breaker", &self.breaker.state())
            .finish_non_exhaustive()
    }
}

impl Backend {
    /// Wraps `agent`.
    pub fn new(
        name: impl Into<String>,
        agent: Arc<dyn Agent>,
        max_concurrency: u32,
        breaker: BreakerConfig,
        retry: RetryConfig,
    ) -> Self {
        Backend {
            name: name.into(),
            agent,
            breaker: Breaker::new(breaker),
            permits: tokio::sync::Semaphore::new(max_concurrency.max(1) as usize),
            paused_until: Mutex::new(None),
            retry,
            prices: None,
        }
    }

    /// Prices tokens the backend reports without a cost.
    pub fn with_prices(mut self, prices: Option<Prices>) -> Self {
        self.prices = prices;
        self
    }

    /// `usage` with its cost at least what the prices make of its tokens
    /// (a backend that reports no cost, or less than its tokens cost, is
    /// counted at the plan's prices); a cost that is not a finite,
    /// non-negative number counts as none.
    fn priced(&self, mut usage: Usage) -> Usage {
        if !usage.cost_usd.is_finite() || usage.cost_usd < 0.0 {
            usage.cost_usd = 0.0;
        }
        if let Some(p) = &self.prices {
            usage.cost_usd = usage.cost_usd.max(p.cost(&usage));
        }
        usage
    }

    /// Its circuit breaker.
    pub fn breaker(&self) -> &Breaker {
        &self.breaker
    }

    /// Until when every task for it waits (after a rate limit).
    pub fn paused_until(&self) -> Option<Instant> {
        *self.paused_until.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn pause(&self, d: Duration) {
        let until = Instant::now() + d;
        let mut p = self.paused_until.lock().unwrap_or_else(|e| e.into_inner());
        if p.is_none_or(|t| t < until) {
            *p = Some(until);
        }
    }
}

#[async_trait]
impl Agent for Backend {
    fn backend(&self) -> &str {
        self.agent.backend()
    }

    fn check(&self, role: &RoleName) -> Result<(), AgentError> {
        self.agent.check(role)
    }

    async fn run(&self, task: AgentTask, ctx: &AgentContext) -> Result<AgentOutcome, AgentError> {
        let mut backoff = self.retry.backoff();
        let mut spent = Usage::default();
        loop {
            if !self.breaker.allow() {
                return Err(AgentError::new(
                    AgentErrorKind::Unavailable,
                    format!("backend {} is unavailable: its circuit is open", self.name),
                )
                .with_usage(spent));
            }
            if let Some(until) = self.paused_until() {
                tokio::select! {
                    () = tokio::time::sleep_until(until) => {}
                    () = ctx.cancel.cancelled() => return Err(AgentError::new(AgentErrorKind::Cancelled, "cancelled while waiting for the backend")),
                }
            }
            let permit = tokio::select! {
                p = self.permits.acquire() => p.map_err(|_| AgentError::new(AgentErrorKind::Unavailable, "backend closed"))?,
                () = ctx.cancel.cancelled() => return Err(AgentError::new(AgentErrorKind::Cancelled, "cancelled while waiting for a slot")),
            };
            let result = match self.agent.run(task.clone(), ctx).await {
                Ok(mut out) => {
                    out.usage = self.priced(out.usage);
                    Ok(out)
                }
                Err(mut e) => {
                    e.usage = self.priced(e.usage);
                    Err(e)
                }
            };
            drop(permit);
            match result {
                Ok(mut out) => {
                    // An agent that ran but reports it did not finish (a
                    // command's non-zero exit) is no sign of a healthy
                    // backend: consecutive ones open the circuit too.
                    if out.success {
                        self.breaker.success();
                    } else {
                        self.breaker.failure();
                    }
                    out.usage += spent;
                    return Ok(out);
                }
                Err(e) => {
                    spent += e.usage;
                    // Cannot run as configured (not installed, key refused,
                    // a setting the CLI or API refuses): no retry helps.
                    if matches!(
                        e.kind,
                        AgentErrorKind::Spawn | AgentErrorKind::Auth | AgentErrorKind::Config
                    ) {
                        self.breaker.trip();
                    } else if counts_against_backend(e.kind) {
                        self.breaker.failure();
                    }
                    // What the backend asked for, when it said, at most
                    // LONGEST_PAUSE (a server asking for a day does not stop
                    // the backend for a day: the role's timeout and its
                    // breaker decide).
                    let asked = e.retry_after.map(|d| d.min(LONGEST_PAUSE));
                    if e.kind == AgentErrorKind::RateLimited
                        && let Some(d) = asked
                    {
                        self.pause(d);
                    }
                    let retryable = matches!(
                        e.kind,
                        AgentErrorKind::RateLimited | AgentErrorKind::Overloaded
                    );
                    // The failure that opened the circuit is reported as
                    // itself, at once, not as "unavailable" after a wait.
                    let open = self.breaker.state() == BreakerState::Open;
                    let next = backoff.next();
                    let (true, false, Some(next)) = (retryable, open, next) else {
                        return Err(e.with_usage(spent));
                    };
                    let wait = asked.unwrap_or(next);
                    tokio::select! {
                        () = tokio::time::sleep(wait) => {}
                        () = ctx.cancel.cancelled() => return Err(AgentError::new(AgentErrorKind::Cancelled, "cancelled during backoff")),
                    }
                }
            }
        }
    }
}

/// Tokens and cost per ticket, per role and for the run.
#[derive(Debug, Default, Clone)]
#[non_exhaustive]
pub struct Ledger {
    /// Per ticket.
    pub per_ticket: BTreeMap<TicketId, Usage>,
    /// Per role.
    pub per_role: BTreeMap<RoleName, Usage>,
    /// The whole run.
    pub total: Usage,
}

impl Ledger {
    /// Records usage.
    pub fn record(&mut self, ticket: &TicketId, role: &RoleName, usage: Usage) {
        *self.per_ticket.entry(ticket.clone()).or_default() += usage;
        *self.per_role.entry(role.clone()).or_default() += usage;
        self.total += usage;
    }
}

/// A role's breaker: what its spec says, else open after as many
/// failures in a row as the plan's phases have attempts (the fewest), at
/// most the default 5, so a backend that fails every attempt of a phase
/// reaches its fallback before the phase's attempts are spent.
fn breaker_config(plan: &Plan, spec: &orch_core::AgentSpec) -> BreakerConfig {
    if let Some(b) = spec.breaker {
        return BreakerConfig {
            failures: b.failures.max(1),
            cooldown: Duration::from_secs(b.cooldown_secs),
        };
    }
    let fewest = plan
        .phases
        .iter()
        .map(|p| p.max_attempts.unwrap_or(plan.policy.max_attempts))
        .min()
        .unwrap_or(plan.policy.max_attempts);
    let default = BreakerConfig::default();
    BreakerConfig {
        failures: fewest.clamp(1, default.failures),
        ..default
    }
}

/// The agents of a plan by role, with fallbacks and a ledger.
pub struct Router {
    backends: BTreeMap<RoleName, Arc<Backend>>,
    fallback: BTreeMap<RoleName, RoleName>,
    ledger: Mutex<Ledger>,
    /// Which role's backend made each session an outcome named, so that a
    /// retry resumes it only there.
    sessions: Mutex<HashMap<String, RoleName>>,
}

impl std::fmt::Debug for Router {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Router")
            .field("roles", &self.backends.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl Router {
    /// Builds every role of `plan`: `custom` agents (by role name) take
    /// precedence, then `custom` backends registered by name for
    /// `kind = "custom"`, then the built-in backends ([`from_spec`]).
    ///
    /// # Errors
    /// [`AgentErrorKind::Config`] for a role that cannot be built.
    pub fn from_plan(
        plan: &Plan,
        defaults: &AgentDefaults,
        custom: &HashMap<String, Arc<dyn Agent>>,
    ) -> Result<Router, AgentError> {
        let mut backends = BTreeMap::new();
        let mut fallback = BTreeMap::new();
        for (role, spec) in &plan.agents {
            let agent: Arc<dyn Agent> = match (custom.get(role.as_str()), &spec.backend) {
                (Some(a), _) => Arc::clone(a),
                (None, orch_core::BackendSpec::Custom { name, .. }) => {
                    custom.get(name).cloned().ok_or_else(|| {
                        AgentError::new(
                            AgentErrorKind::Config,
                            format!("role {role}: no custom backend registered as {name:?}"),
                        )
                    })?
                }
                (None, _) => from_spec(spec, defaults)
                    .map_err(|e| AgentError::new(e.kind, format!("role {role}: {}", e.message)))?,
            };
            // Agent runs on this backend at once, whoever's work they are
            // (its role's or a role falling back to it). How many tickets
            // of a role are in flight is the scheduler's
            // (`policy.role_concurrency`).
            let max = spec.max_concurrency.unwrap_or(plan.policy.max_concurrency);
            backends.insert(
                role.clone(),
                Arc::new(
                    Backend::new(
                        role.as_str(),
                        agent,
                        max,
                        breaker_config(plan, spec),
                        RetryConfig::default(),
                    )
                    .with_prices(spec.prices),
                ),
            );
            if let Some(fb) = &spec.fallback {
                fallback.insert(role.clone(), fb.clone());
            }
        }
        Ok(Router {
            backends,
            fallback,
            ledger: Mutex::new(Ledger::default()),
            sessions: Mutex::default(),
        })
    }

    /// A router over explicit backends.
    pub fn new(
        backends: BTreeMap<RoleName, Arc<Backend>>,
        fallback: BTreeMap<RoleName, RoleName>,
    ) -> Router {
        Router {
            backends,
            fallback,
            ledger: Mutex::new(Ledger::default()),
            sessions: Mutex::default(),
        }
    }

    /// The backend of `role`.
    pub fn backend(&self, role: &RoleName) -> Option<&Arc<Backend>> {
        self.backends.get(role)
    }

    /// The role that should run work meant for `role`: `role` itself, or the
    /// first fallback in its chain whose circuit is not open.
    ///
    /// # Errors
    /// [`AgentErrorKind::Unavailable`] when every backend in the chain is
    /// open; [`AgentErrorKind::Config`] for an unknown role.
    pub fn route(&self, role: &RoleName) -> Result<(RoleName, Arc<Backend>), AgentError> {
        self.route_past(role, &[])
    }

    /// [`Router::route`], passing over the roles already `tried` for this
    /// task (a backend whose circuit half-opened again at once is not
    /// asked twice in one call).
    fn route_past(
        &self,
        role: &RoleName,
        tried: &[RoleName],
    ) -> Result<(RoleName, Arc<Backend>), AgentError> {
        let picked = self.walk(role, |r, b| {
            (!tried.contains(r) && b.breaker().state() != BreakerState::Open)
                .then(|| (r.clone(), Arc::clone(b)))
        })?;
        picked.map_err(|seen| {
            let chain: Vec<&str> = seen.iter().map(RoleName::as_str).collect();
            AgentError::new(
                AgentErrorKind::Unavailable,
                format!(
                    "no backend available for role {role}: open circuit on {}",
                    chain.join(" -> ")
                ),
            )
        })
    }

    /// Walks `role`'s chain (the role, then its fallbacks, each once) until
    /// `pick` takes one of its backends: what `pick` returned, or the roles
    /// walked when it took none.
    ///
    /// # Errors
    /// [`AgentErrorKind::Config`] for a role in the chain with no backend.
    fn walk<T>(
        &self,
        role: &RoleName,
        mut pick: impl FnMut(&RoleName, &Arc<Backend>) -> Option<T>,
    ) -> Result<Result<T, Vec<RoleName>>, AgentError> {
        let mut seen = Vec::new();
        let mut r = role.clone();
        loop {
            let b = self.backends.get(&r).ok_or_else(|| {
                AgentError::new(AgentErrorKind::Config, format!("no agent for role {r}"))
            })?;
            if let Some(t) = pick(&r, b) {
                return Ok(Ok(t));
            }
            seen.push(r.clone());
            match self.fallback.get(&r) {
                Some(next) if !seen.contains(next) => r = next.clone(),
                _ => return Ok(Err(seen)),
            }
        }
    }

    /// Routes, runs and records usage. A backend that cannot run at all
    /// (its program is not installed, its key is refused: its breaker
    /// opens at once), whose circuit is open, or whose failure just opened
    /// it hands the task to the next role of the chain in the same call,
    /// so the fallback runs within the phase's attempts rather than after
    /// a person is asked.
    ///
    /// # Errors
    /// As [`Router::route`], and the agent's error (the first backend's,
    /// when no fallback could take the task either).
    pub async fn run(
        &self,
        role: &RoleName,
        task: AgentTask,
        ctx: &AgentContext,
    ) -> Result<(RoleName, AgentOutcome), AgentError> {
        let ticket = task.ticket.id.clone();
        let mut tried: Vec<RoleName> = Vec::new();
        let mut first: Option<AgentError> = None;
        // What every backend of the chain spent on this task: whatever is
        // returned carries all of it (the run's budget counts it).
        let mut spent = Usage::default();
        let failed = |first: Option<AgentError>, e: AgentError, spent: Usage| {
            let mut e = first.unwrap_or(e);
            e.usage = spent;
            e
        };
        loop {
            let (used, backend) = match self.route_past(role, &tried) {
                Ok(r) => r,
                Err(e) => return Err(failed(first, e, spent)),
            };
            // A session is resumed only on the backend that made it.
            let mut task = task.clone();
            if let Some(session) = &task.resume {
                let made_by = self
                    .sessions
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .get(session)
                    .cloned();
                if made_by.is_some_and(|r| r != used) {
                    task.resume = None;
                }
            }
            let res = backend.run(task, ctx).await;
            let usage = match &res {
                Ok(o) => o.usage,
                Err(e) => e.usage,
            };
            spent += usage;
            self.ledger
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .record(&ticket, &used, usage);
            if let Ok(o) = &res
                && let Some(session) = &o.session_id
            {
                self.sessions
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(session.clone(), used.clone());
            }
            match res {
                // Cannot run at all, or this failure opened its circuit
                // (its retries are spent and it keeps failing): the next
                // role of the chain takes the task now.
                Err(e)
                    if matches!(
                        e.kind,
                        AgentErrorKind::Spawn
                            | AgentErrorKind::Auth
                            | AgentErrorKind::Config
                            | AgentErrorKind::Unavailable
                    ) || backend.breaker().state() == BreakerState::Open =>
                {
                    tried.push(used);
                    first.get_or_insert(e);
                }
                Ok(mut o) => {
                    o.usage = spent;
                    return Ok((used, o));
                }
                Err(mut e) => {
                    e.usage = spent;
                    return Err(e);
                }
            }
        }
    }

    /// A copy of the ledger.
    pub fn ledger(&self) -> Ledger {
        self.ledger
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

/// The router is itself an agent: it runs each task on the backend of
/// `task.role` (or its fallback), so the engine needs only one agent.
#[async_trait]
impl Agent for Router {
    fn backend(&self) -> &str {
        "router"
    }

    /// `role` can run when its backend, or one in its fallback chain, can.
    /// A backend that cannot (its CLI is not installed, its key is not set)
    /// has its circuit opened now, so the role's first attempt runs on
    /// the fallback, and says so in a warning.
    fn check(&self, role: &RoleName) -> Result<(), AgentError> {
        let mut why = Vec::new();
        let picked = self.walk(role, |r, b| match b.check(r) {
            Ok(()) => Some(r.clone()),
            Err(e) => {
                b.breaker().trip();
                why.push((r.clone(), e));
                None
            }
        })?;
        if let Ok(on) = picked {
            if let Some((_, e)) = why.first() {
                tracing::warn!("role {role} runs on its fallback {on}: {}", e.message);
            }
            return Ok(());
        }
        let (_, first) = why.remove(0);
        let mut message = first.message.clone();
        for (r, e) in why {
            if e.message == first.message {
                message.push_str(&format!("; its fallback {r}: the same"));
            } else {
                message.push_str(&format!("; its fallback {r}: {}", e.message));
            }
        }
        Err(AgentError::new(first.kind, message))
    }

    fn backend_for(&self, role: &RoleName) -> &str {
        match self.route(role) {
            Ok((used, _)) => self.backends.get(&used).map_or("router", |b| b.backend()),
            Err(_) => self.backends.get(role).map_or("router", |b| b.backend()),
        }
    }

    async fn run(&self, task: AgentTask, ctx: &AgentContext) -> Result<AgentOutcome, AgentError> {
        let role = task.role.clone();
        Router::run(self, &role, task, ctx).await.map(|(_, o)| o)
    }
}
