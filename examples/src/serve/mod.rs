//! `orch serve`: the runs of a journal as web pages, live while they go.
//!
//! A [`Site`] reads one [`StateStore`] (the SQLite journal of a state
//! directory, or a PostgreSQL database) and serves:
//!
//! | | |
//! |---|---|
//! | `GET /` | the runs, newest first |
//! | `GET /runs/{run}` | the run: its plan's graph coloured by status (critical path marked, batches grouped), counts, cost, elapsed against the estimate, the go/no-go call, the decision queue, every ticket |
//! | `GET /runs/{run}/tickets/{ticket}` | a ticket: its phases and attempts, each gate's verdict and evidence, the feedback each attempt was given, its agents' transcripts, branch and checkpoints |
//! | `GET /runs/{run}/decisions` | the decision queue alone |
//! | `GET /runs/{run}/transcripts/{agent}` | an agent's transcripts (redacted) |
//! | `GET /runs/{run}/state.json` | the folded state, as `orch status --json` prints it |
//! | `GET /runs/{run}/events` | server-sent events: a snapshot of every ticket, then what changed, read from the journal as it grows |
//! | `POST /runs/{run}/tickets/{ticket}/decision` | a person's answer (`answer=approve\|retry\|skip\|abort`, `note`), recorded through [`orch_graph::decide`] as `orch decide` records it |
//! | `GET /login?token=…` | keeps the token in a cookie for the browser that opened the link |
//!
//! Reading needs nothing. Answering needs the site's [`Token`]: in an
//! `Authorization: Bearer` header, or in the cookie `/login` sets
//! (`HttpOnly`, `SameSite=Strict`, and only with a same-origin `Origin`).
//! A site bound to loopback answers only requests that name it by a
//! loopback host, so a web page elsewhere cannot reach it through a name
//! that resolves to 127.0.0.1.
//!
//! ```no_run
//! # async fn f() -> Result<(), orch_examples::Error> {
//! use orch_examples::serve::{Site, Token};
//! let store = orch_examples::open_store(std::path::Path::new(".orch/state"))?;
//! let token = Token::random()?;
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:7777").await?;
//! println!("http://127.0.0.1:7777/login?token={}", token.as_str());
//! let site = Site::new(store, token)?.at(listener.local_addr()?);
//! orch_examples::serve::serve(listener, site, orch_core::Cancellation::new()).await?;
//! # Ok(()) }
//! ```

mod live;
mod page;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{Form, Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use orch_core::secrets::Redactor;
use orch_core::{Cancellation, Decision, Plan, RunId, RunState, StateStore, TicketId};

/// The secret that lets a request change a run (answer a decision).
///
/// Compared in constant time; never shown by `Debug`.
#[derive(Clone)]
pub struct Token(String);

impl Token {
    /// 32 random bytes from the operating system, as 64 hex digits.
    ///
    /// # Errors
    /// When the system has no randomness to give.
    pub fn random() -> Result<Token, crate::Error> {
        let mut bytes = [0u8; 32];
        getrandom::fill(&mut bytes).map_err(|e| format!("no randomness for a token: {e}"))?;
        Ok(Token(bytes.iter().map(|b| format!("{b:02x}")).collect()))
    }

    /// A token a person chose.
    ///
    /// # Errors
    /// When it is shorter than 16 characters or holds anything but
    /// letters, digits, `-`, `_` and `.` (it travels in a cookie and a
    /// URL).
    pub fn new(token: impl Into<String>) -> Result<Token, crate::Error> {
        let token = token.into();
        if token.len() < 16 {
            return Err("a token needs 16 characters or more".into());
        }
        if !token
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        {
            return Err("a token holds only letters, digits, '-', '_' and '.'".into());
        }
        Ok(Token(token))
    }

    /// The token, to print once for the person who started the site.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether `given` is the token, in time that does not depend on
    /// where they differ.
    fn matches(&self, given: &str) -> bool {
        let (a, b) = (self.0.as_bytes(), given.as_bytes());
        a.len() == b.len() && a.iter().zip(b).fold(0u8, |d, (x, y)| d | (x ^ y)) == 0
    }
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(…)")
    }
}

/// How much of each transcript file is served: its last 2 MiB.
const TRANSCRIPT_TAIL: u64 = 2 << 20;

/// How many of an agent's transcript files are served (one a retry).
const MAX_TRANSCRIPTS: u32 = 20;

/// The last [`TRANSCRIPT_TAIL`] bytes of a file, as text, saying what was
/// left out: where a run ended is what a person needs.
async fn tail(path: &std::path::Path) -> std::io::Result<String> {
    use tokio::io::{AsyncReadExt, AsyncSeekExt};
    let mut f = tokio::fs::File::open(path).await?;
    let len = f.metadata().await?.len();
    let from = len.saturating_sub(TRANSCRIPT_TAIL);
    f.seek(std::io::SeekFrom::Start(from)).await?;
    let mut bytes = Vec::new();
    f.read_to_end(&mut bytes).await?;
    let text = String::from_utf8_lossy(&bytes);
    Ok(if from > 0 {
        format!("[… the first {from} bytes left out]\n{text}")
    } else {
        text.into_owned()
    })
}

/// The name of the cookie `/login` sets, before the port (`orch_token_7777`):
/// cookies are kept per host name, not per port, so two sites on one host
/// each keep their own.
const COOKIE: &str = "orch_token";

/// A plan the site knows, with what the pages draw from it.
#[derive(Clone)]
struct Known {
    plan: Plan,
    fingerprint: String,
    layout: page::Layout,
}

/// What `orch serve` serves: the runs of one journal.
#[derive(Clone)]
pub struct Site(Arc<Inner>);

#[derive(Clone)]
struct Inner {
    store: Arc<dyn StateStore>,
    token: Token,
    /// What the `/login` cookie holds: a value of this process's own, so
    /// the token itself never travels in a cookie (which every service
    /// on the same host name would be sent).
    session: Token,
    /// Fired when the server stops: event streams end with it.
    stop: Cancellation,
    /// The name of the session cookie.
    cookie: String,
    state_dir: Option<PathBuf>,
    plans: Vec<Known>,
    hosts: Option<Vec<String>>,
    redactor: Redactor,
    poll: Duration,
}

impl Site {
    /// A site for the runs in `store`, answering decisions for requests
    /// that carry `token`.
    ///
    /// # Errors
    /// When the system has no randomness for the browser session.
    pub fn new(store: Arc<dyn StateStore>, token: Token) -> Result<Site, crate::Error> {
        Ok(Site(Arc::new(Inner {
            store,
            token,
            session: Token::random()?,
            stop: Cancellation::new(),
            cookie: COOKIE.to_owned(),
            state_dir: None,
            plans: Vec::new(),
            hosts: None,
            redactor: Redactor::from_process_env(),
            poll: Duration::from_millis(200),
        })))
    }

    fn inner(&mut self) -> &mut Inner {
        Arc::make_mut(&mut self.0)
    }

    /// Also removes the password of `url` (the database URL the site
    /// reads) from everything served. The process's own secrets and
    /// those of the site's plans are always removed.
    #[must_use]
    pub fn with_url(mut self, url: &str) -> Site {
        let inner = self.inner();
        inner.redactor = inner.redactor.clone().with_url(url);
        self
    }

    /// The state directory whose `transcripts/` hold the agents'
    /// transcripts.
    #[must_use]
    pub fn state_dir(mut self, dir: impl Into<PathBuf>) -> Site {
        self.inner().state_dir = Some(dir.into());
        self
    }

    /// A plan the runs may have been started with: a run is drawn with
    /// the plan of its name (the one whose fingerprint it recorded, if
    /// several); without one its tickets are listed but not drawn as a
    /// graph. Secrets the plan names are redacted from what is served.
    ///
    /// # Errors
    /// When the plan's tickets do not form a graph.
    pub fn plan(mut self, plan: Plan) -> Result<Site, crate::Error> {
        let layout = page::Layout::new(&plan)?;
        let fingerprint = plan.fingerprint().0;
        let inner = self.inner();
        inner.redactor = inner.redactor.clone().with_values(plan.known_secrets());
        inner.plans.push(Known {
            plan,
            fingerprint,
            layout,
        });
        Ok(self)
    }

    /// The address the site is served at: its session cookie is named
    /// after the port, and, when `addr` is a loopback address, only
    /// requests whose `Host` names it by a loopback name (`127.0.0.1`,
    /// `localhost`, `[::1]` or the address itself, with its port) are
    /// answered, so a page on another site cannot read this one through a
    /// name of its own that resolves to 127.0.0.1.
    #[must_use]
    pub fn at(mut self, addr: SocketAddr) -> Site {
        let port = addr.port();
        let inner = self.inner();
        inner.cookie = format!("{COOKIE}_{port}");
        let ip = addr.ip().to_canonical();
        if ip.is_loopback() {
            let named = [
                SocketAddr::new(ip, port).to_string(),
                format!("127.0.0.1:{port}"),
                format!("localhost:{port}"),
                format!("[::1]:{port}"),
            ];
            let mut hosts = named.to_vec();
            if port == 80 {
                // Browsers leave the default port out.
                hosts.extend(
                    named
                        .iter()
                        .filter_map(|h| Some(h.rsplit_once(':')?.0.to_owned())),
                );
            }
            hosts.dedup();
            inner.hosts = Some(hosts);
        }
        self
    }

    /// How often an event stream looks at the journal for new events
    /// (default 200 ms).
    #[must_use]
    pub fn poll(mut self, every: Duration) -> Site {
        self.inner().poll = every;
        self
    }

    /// The routes, for [`serve`] or any server of your own.
    pub fn router(self) -> Router {
        Router::new()
            .route("/", get(index))
            .route("/login", get(login))
            .route("/assets/app.css", get(css))
            .route("/assets/app.js", get(js))
            .route("/runs/{run}", get(run_page))
            .route("/runs/{run}/decisions", get(decisions_page))
            .route("/runs/{run}/state.json", get(state_json))
            .route("/runs/{run}/events", get(live::events))
            .route("/runs/{run}/tickets/{ticket}", get(ticket_page))
            .route("/runs/{run}/tickets/{ticket}/decision", post(decide))
            .route("/runs/{run}/transcripts/{agent}", get(transcript))
            .fallback(|| async { Problem::new(StatusCode::NOT_FOUND, "no such page") })
            .layer(axum::middleware::from_fn_with_state(self.clone(), guard))
            .with_state(self)
    }

    /// The plan `state`'s run was started with, if the site knows it, and
    /// whether it is the very plan (its fingerprint is the one the run
    /// recorded) rather than one of the same name.
    fn plan_of(&self, state: &RunState) -> Option<(&Known, bool)> {
        let named = || self.0.plans.iter().filter(|k| k.plan.name == state.plan);
        named()
            .find(|k| k.fingerprint == state.fingerprint)
            .map(|k| (k, true))
            .or_else(|| named().next().map(|k| (k, false)))
    }

    /// The run named `run`, folded.
    async fn run(&self, run: &str) -> Result<(RunId, RunState), Problem> {
        let id: RunId = run.parse().map_err(|e| {
            Problem::new(
                StatusCode::BAD_REQUEST,
                format!("{run:?} is not a run id: {e}"),
            )
        })?;
        let state = self.0.store.state(&id).await.map_err(|e| self.failed(&e))?;
        if state.events == 0 {
            return Err(Problem::new(
                StatusCode::NOT_FOUND,
                format!("no run {id} in this journal"),
            ));
        }
        Ok((id, state))
    }

    /// A store that failed, as a 503 whose message names no secret.
    fn failed(&self, e: &dyn std::fmt::Display) -> Problem {
        Problem::new(
            StatusCode::SERVICE_UNAVAILABLE,
            self.0
                .redactor
                .redact(&format!("the journal cannot be read: {e}")),
        )
    }

    /// Whether the request may change a run: it carries the token, or
    /// the browser session `/login` started and comes from this site's
    /// own page.
    fn allowed(&self, headers: &HeaderMap) -> bool {
        if let Some(bearer) = bearer(headers) {
            return self.0.token.matches(bearer);
        }
        // A browser names the page a form was posted from in `Origin`:
        // another site's, or `null`, is refused, and so is a request
        // without one.
        let host = headers.get(header::HOST).and_then(|h| h.to_str().ok());
        let same_origin = headers
            .get(header::ORIGIN)
            .and_then(|o| o.to_str().ok())
            .zip(host)
            .is_some_and(|(origin, h)| {
                origin.strip_prefix("http://") == Some(h)
                    || origin.strip_prefix("https://") == Some(h)
            });
        same_origin && self.signed_in(headers)
    }

    /// Whether the request comes with the token or the browser session
    /// (the pages then offer their forms).
    fn signed_in(&self, headers: &HeaderMap) -> bool {
        match bearer(headers) {
            Some(b) => self.0.token.matches(b),
            None => cookies(headers, &self.0.cookie).any(|c| self.0.session.matches(c)),
        }
    }
}

/// The token of an `Authorization: Bearer` header.
fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
}

/// The values of the request's cookies called `name` (a page elsewhere may
/// have set one of its own beside this site's, under another path).
fn cookies<'h>(headers: &'h HeaderMap, name: &'h str) -> impl Iterator<Item = &'h str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(move |kv| kv.trim().strip_prefix(name)?.strip_prefix('='))
}

/// Serves `site` on `listener` until `cancel` fires: then the pages'
/// event streams end, and requests still being answered get up to 5 s.
///
/// # Errors
/// When the listener fails.
pub async fn serve(
    listener: tokio::net::TcpListener,
    site: Site,
    cancel: Cancellation,
) -> std::io::Result<()> {
    let stop = site.0.stop.clone();
    let server = axum::serve(listener, site.router()).with_graceful_shutdown({
        let cancel = cancel.clone();
        async move {
            cancel.cancelled().await;
            stop.cancel();
        }
    });
    tokio::select! {
        r = server => r,
        () = async {
            cancel.cancelled().await;
            tokio::time::sleep(Duration::from_secs(5)).await;
        } => Ok(()),
    }
}

/// Refuses requests that name another host than a loopback site's, and
/// gives every answer headers that keep the pages to themselves.
async fn guard(
    State(site): State<Site>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    if let Some(hosts) = &site.0.hosts {
        let host = request
            .headers()
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .unwrap_or("");
        if !hosts.iter().any(|h| h == host) {
            return Problem::new(
                StatusCode::MISDIRECTED_REQUEST,
                format!(
                    "this orch serve answers to {} only, not to Host {host:?}",
                    hosts.join(", ")
                ),
            )
            .into_response();
        }
    }
    let mut response = next.run(request).await;
    let h = response.headers_mut();
    for (name, value) in [
        (
            header::CONTENT_SECURITY_POLICY,
            "default-src 'self'; style-src 'self'; script-src 'self'; frame-ancestors 'none'; form-action 'self'",
        ),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::REFERRER_POLICY, "same-origin"),
        (header::X_FRAME_OPTIONS, "DENY"),
    ] {
        h.insert(name, HeaderValue::from_static(value));
    }
    response
}

/// An error answer: its status and a message naming what was wrong.
#[derive(Debug)]
struct Problem(StatusCode, String);

impl Problem {
    fn new(status: StatusCode, message: impl Into<String>) -> Problem {
        Problem(status, message.into())
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        (
            self.0,
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            format!("{}\n", self.1),
        )
            .into_response()
    }
}

impl Site {
    /// An answer of `kind` holding `body`, with every secret the site
    /// knows removed (the journal was redacted as it was written, by what
    /// the writing process knew; this is what the site knows besides).
    fn answer(&self, kind: &'static str, body: &str) -> Response {
        (
            [
                (header::CONTENT_TYPE, kind),
                (header::CACHE_CONTROL, "no-store"),
            ],
            self.0.redactor.redact(body).into_owned(),
        )
            .into_response()
    }

    fn html(&self, body: &str) -> Response {
        self.answer("text/html; charset=utf-8", body)
    }
}

async fn css() -> Response {
    (
        [(header::CONTENT_TYPE, "text/css; charset=utf-8")],
        include_str!("app.css"),
    )
        .into_response()
}

async fn js() -> Response {
    (
        [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
        include_str!("app.js"),
    )
        .into_response()
}

async fn index(State(site): State<Site>) -> Result<Response, Problem> {
    let runs = site.0.store.runs().await.map_err(|e| site.failed(&e))?;
    let mut states = Vec::with_capacity(runs.len());
    for run in runs {
        let state = site
            .0
            .store
            .state(&run)
            .await
            .map_err(|e| site.failed(&e))?;
        states.push((run, state));
    }
    // Newest first.
    states.sort_by_key(|(_, s)| std::cmp::Reverse(s.started_at));
    Ok(site.html(&page::index(&states)))
}

async fn run_page(
    State(site): State<Site>,
    Path(run): Path<String>,
    headers: HeaderMap,
) -> Result<Response, Problem> {
    let (id, state) = site.run(&run).await?;
    let known = site.plan_of(&state);
    Ok(site.html(&page::run(
        &id,
        &state,
        known.map(|(k, exact)| (&k.plan, &k.layout, exact)),
        site.signed_in(&headers),
    )))
}

async fn decisions_page(
    State(site): State<Site>,
    Path(run): Path<String>,
    headers: HeaderMap,
) -> Result<Response, Problem> {
    let (id, state) = site.run(&run).await?;
    Ok(site.html(&page::decisions_page(&id, &state, site.signed_in(&headers))))
}

async fn state_json(
    State(site): State<Site>,
    Path(run): Path<String>,
) -> Result<Response, Problem> {
    let (_, state) = site.run(&run).await?;
    let json = serde_json::to_string(&state).map_err(|e| {
        Problem::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("the state as JSON: {e}"),
        )
    })?;
    Ok(site.answer("application/json", &json))
}

async fn ticket_page(
    State(site): State<Site>,
    Path((run, ticket)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Response, Problem> {
    let (id, state) = site.run(&run).await?;
    let t = known_ticket(&site, &state, &ticket)?;
    // What happened to the ticket, from the journal: the feedback each
    // attempt was given is in its events, not in the folded state.
    let mut history = Vec::new();
    let mut after = 0;
    loop {
        let page = site
            .0
            .store
            .read(&id, after, 10_000)
            .await
            .map_err(|e| site.failed(&e))?;
        let n = page.len();
        for e in page {
            after = e.seq;
            if about(&e.event.kind, &t) {
                history.push(e.event);
            }
        }
        if n < 10_000 {
            break;
        }
    }
    let transcripts = site
        .0
        .state_dir
        .as_ref()
        .map(|d| d.join("transcripts"))
        .filter(|d| d.is_dir());
    let known = site.plan_of(&state);
    Ok(site.html(&page::ticket(
        &id,
        &state,
        &t,
        known.map(|(k, _)| &k.plan),
        &history,
        transcripts.is_some(),
        site.signed_in(&headers),
    )))
}

/// Whether an event is about ticket `t` (gate events through their scope).
fn about(kind: &orch_core::EventKind, t: &TicketId) -> bool {
    match kind {
        orch_core::EventKind::GateFinished { scope, .. }
        | orch_core::EventKind::GateStarted { scope, .. } => {
            matches!(scope, orch_core::GateScope::Phase { ticket, .. } if ticket == t)
        }
        k => k.ticket() == Some(t),
    }
}

/// The ticket `ticket` of a run: in its journal or in its plan.
fn known_ticket(site: &Site, state: &RunState, ticket: &str) -> Result<TicketId, Problem> {
    let t: TicketId = ticket.parse().map_err(|e| {
        Problem::new(
            StatusCode::BAD_REQUEST,
            format!("{ticket:?} is not a ticket id: {e}"),
        )
    })?;
    let in_plan = site
        .plan_of(state)
        .is_some_and(|(k, _)| k.plan.ticket(t.as_str()).is_some());
    if !state.tickets.contains_key(&t) && !in_plan {
        return Err(Problem::new(
            StatusCode::NOT_FOUND,
            format!(
                "run {} has no ticket {t}",
                state.run.as_ref().map_or("?", |r| r.as_str())
            ),
        ));
    }
    Ok(t)
}

async fn transcript(
    State(site): State<Site>,
    Path((run, agent)): Path<(String, String)>,
) -> Result<Response, Problem> {
    let (_, state) = site.run(&run).await?;
    let Some((id, _)) = state.agents.iter().find(|(id, _)| id.as_str() == agent) else {
        return Err(Problem::new(
            StatusCode::NOT_FOUND,
            format!("the run has no agent {agent:?}"),
        ));
    };
    let Some(dir) = site.0.state_dir.as_ref().map(|d| d.join("transcripts")) else {
        return Err(Problem::new(
            StatusCode::NOT_FOUND,
            "transcripts are kept in a state directory: start orch serve with --state",
        ));
    };
    // `<agent>.log`, then each retry's `<agent>.2.log`, `<agent>.3.log`, ….
    let mut text = String::new();
    for n in 1..=MAX_TRANSCRIPTS {
        let name = match n {
            1 => format!("{id}.log"),
            n => format!("{id}.{n}.log"),
        };
        let Ok(tail) = tail(&dir.join(&name)).await else {
            break;
        };
        text.push_str(&format!("=== {name}\n"));
        text.push_str(&tail);
    }
    if text.is_empty() {
        return Err(Problem::new(
            StatusCode::NOT_FOUND,
            format!("no transcript of {id} in {}", dir.display()),
        ));
    }
    // Written redacted; redacted again with what this process knows.
    Ok(site.answer("text/plain; charset=utf-8", &text))
}

async fn login(
    State(site): State<Site>,
    Query(q): Query<std::collections::HashMap<String, String>>,
) -> Response {
    match q.get("token") {
        Some(t) if site.0.token.matches(t) => {
            let mut r = Redirect::to("/").into_response();
            let cookie = format!(
                "{}={}; HttpOnly; SameSite=Strict; Path=/",
                site.0.cookie,
                site.0.session.as_str()
            );
            if let Ok(v) = HeaderValue::from_str(&cookie) {
                r.headers_mut().insert(header::SET_COOKIE, v);
            }
            r
        }
        Some(_) => {
            Problem::new(StatusCode::UNAUTHORIZED, "that is not this site's token").into_response()
        }
        None => Problem::new(
            StatusCode::BAD_REQUEST,
            "open the /login?token=… link orch serve printed",
        )
        .into_response(),
    }
}

/// A person's answer, as the page's form sends it.
#[derive(serde::Deserialize)]
struct Answer {
    answer: String,
    #[serde(default)]
    note: String,
}

async fn decide(
    State(site): State<Site>,
    Path((run, ticket)): Path<(String, String)>,
    headers: HeaderMap,
    form: Result<Form<Answer>, axum::extract::rejection::FormRejection>,
) -> Result<Response, Problem> {
    if !site.allowed(&headers) {
        return Err(Problem::new(
            StatusCode::UNAUTHORIZED,
            "answering needs the token orch serve printed (open its /login link, or send Authorization: Bearer TOKEN)",
        ));
    }
    let Form(answer) = form.map_err(|e| {
        Problem::new(
            StatusCode::BAD_REQUEST,
            format!("a decision is a form with answer=approve|retry|skip|abort and a note: {e}"),
        )
    })?;
    let decision = match answer.answer.as_str() {
        "approve" => Decision::Approve,
        "retry" => Decision::Retry,
        "skip" => Decision::Skip,
        "abort" => Decision::Abort,
        other => {
            return Err(Problem::new(
                StatusCode::BAD_REQUEST,
                format!("{other:?} is not an answer: approve, retry, skip or abort"),
            ));
        }
    };
    let note = answer.note.trim();
    if decision == Decision::Retry && note.is_empty() {
        return Err(Problem::new(
            StatusCode::BAD_REQUEST,
            "a retry needs a note: what the agent should do differently",
        ));
    }
    let (id, state) = site.run(&run).await?;
    let t = known_ticket(&site, &state, &ticket)?;
    let note = (!note.is_empty()).then(|| note.to_owned());
    match orch_graph::decide(site.0.store.as_ref(), &id, &t, decision, note).await {
        Ok(()) => {
            // The state files, as `orch decide` leaves them: they are the
            // latest run's, so only for an answer to it.
            if let Some(dir) = site.0.state_dir.clone()
                && crate::RunInfo::load(&dir).is_ok_and(|info| info.run == id)
                && let Ok(st) = site.0.store.state(&id).await
            {
                let plan = site.plan_of(&st).map(|(k, _)| k.plan.clone());
                let _ = tokio::task::spawn_blocking(move || {
                    orch_state::views::write_views(&dir, &st, plan.as_ref())
                })
                .await;
            }
            // Back to where the answer came from (the run's page).
            let to = format!("/runs/{id}#decisions");
            Ok(Redirect::to(&to).into_response())
        }
        Err(orch_graph::EngineError::Store(e)) => Err(site.failed(&e)),
        Err(e) => Err(Problem::new(StatusCode::CONFLICT, e.to_string())),
    }
}
