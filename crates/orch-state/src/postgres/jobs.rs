//! [`JobQueue`] on PostgreSQL: the table `orch_jobs`, claimed the way the
//! PostgreSQL job queues do it (River, Oban, graphile-worker: one
//! `UPDATE` of the row a `FOR UPDATE SKIP LOCKED` sub-select picked), with
//! the claim's token checked inside the journal append's transaction.

use std::collections::HashMap;
use std::time::Duration;

use async_trait::async_trait;
use orch_core::{
    Claim, DriverInfo, Event, Job, JobInfo, JobQueue, JobState, NewJob, RoleName, RunId, Runs,
    StoreError, StoreErrorKind, Timestamp, Work,
};
use tokio_postgres::types::Type;
use tokio_postgres::{Client, Row, Statement};

use super::{Check, Conn, Param, PgStore};
use crate::codec::fenced;

/// The next job a worker can do: waiting, or claimed under a lease that
/// lapsed (a takeover, while any are left), of the run `$4` when `of_run`
/// (by the index of the run's open jobs) or of any run but those in the
/// array `$4`. Rows other workers are claiming or renewing right now are
/// skipped, not waited for.
pub(super) fn claim_sql(of_run: bool) -> String {
    let run = if of_run {
        "run = $4 AND "
    } else {
        "run <> ALL($4::text[]) AND "
    };
    format!(
        "WITH next AS (
          SELECT id, state FROM orch_jobs
          WHERE {run}(state = 'available'
                 OR (state = 'running' AND expires_at <= orch_now_ms()
                     AND takeovers < max_takeovers))
            AND (role IS NULL OR cardinality($2::text[]) = 0 OR role = ANY($2))
          ORDER BY priority, id
          LIMIT 1
          FOR UPDATE SKIP LOCKED)
        UPDATE orch_jobs j
        SET state = 'running', token = j.token + 1,
            takeovers = j.takeovers + (next.state = 'running')::int,
            worker = $1, renewed_at = orch_now_ms(),
            expires_at = orch_now_ms() + $3
        FROM next WHERE j.id = next.id
        RETURNING j.id, j.run, j.token, j.expires_at, j.key, j.work, j.role, j.takeovers"
    )
}

/// How many times one claim of any run tries, passing over a run whose
/// job this build cannot read each time, before it gives up.
const TOO_NEW_RUNS: usize = 8;

/// Opens a claim's transaction. The claim must walk the open jobs' index
/// (`orch_jobs_run_open` for a run's, `orch_jobs_open` for any run's) in
/// claim order and stop at the first job it can take. A planner that
/// takes the table for small (it is not analyzed yet, as after a run's
/// first enqueue, or autovacuum is off) instead fetches every open job by
/// a bitmap and sorts them all, or reads every finished job's entry, on
/// every claim: claims slow down with the jobs a run has, and a run of
/// thousands crawls. These settings leave it the ordered index scan alone,
/// for this transaction.
pub(super) const CLAIM_BEGIN: &str = "BEGIN; SET LOCAL enable_bitmapscan = off; \
     SET LOCAL enable_seqscan = off; SET LOCAL enable_sort = off";

/// The queue's statements, prepared with the connection's others.
pub(super) struct Statements {
    enqueue: Statement,
    ids: Statement,
    claim_run: Statement,
    claim_any: Statement,
    renew: Statement,
    check: Statement,
    finish: Statement,
    give_back: Statement,
    cancel: Statement,
    list: Statement,
    one: Statement,
}

impl Statements {
    pub(super) async fn prepare(store: &PgStore, client: &Client) -> Result<Self, StoreError> {
        let prepare = async |sql: &str, types: &[Type]| {
            client
                .prepare_typed(sql, types)
                .await
                .map_err(|e| store.err(&e))
        };
        Ok(Statements {
            enqueue: prepare(
                "INSERT INTO orch_jobs (run, key, work, role, priority, max_takeovers)
                 SELECT $1, k, w, r, p, m
                 FROM unnest($2::text[], $3::text[], $4::text[], $5::int4[], $6::int4[])
                   AS u(k, w, r, p, m)
                 ON CONFLICT (run, key) DO NOTHING",
                &[
                    Type::TEXT,
                    Type::TEXT_ARRAY,
                    Type::TEXT_ARRAY,
                    Type::TEXT_ARRAY,
                    Type::INT4_ARRAY,
                    Type::INT4_ARRAY,
                ],
            )
            .await?,
            ids: prepare(
                "SELECT key, id, work, role, priority, max_takeovers FROM orch_jobs
                 WHERE run = $1 AND key = ANY($2)",
                &[Type::TEXT, Type::TEXT_ARRAY],
            )
            .await?,
            claim_run: prepare(
                &claim_sql(true),
                &[Type::TEXT, Type::TEXT_ARRAY, Type::INT8, Type::TEXT],
            )
            .await?,
            claim_any: prepare(
                &claim_sql(false),
                &[Type::TEXT, Type::TEXT_ARRAY, Type::INT8, Type::TEXT_ARRAY],
            )
            .await?,
            renew: prepare(
                "UPDATE orch_jobs SET renewed_at = orch_now_ms(), expires_at = orch_now_ms() + $3
                 WHERE id = $1 AND token = $2 AND state = 'running' AND expires_at > orch_now_ms()
                 RETURNING expires_at",
                &[Type::INT8, Type::INT8, Type::INT8],
            )
            .await?,
            // FOR SHARE: a claim taking the job over waits for this
            // append, and this append sees the takeover if it came first.
            check: prepare(
                "SELECT 1 FROM orch_jobs
                 WHERE id = $1 AND run = $2 AND token = $3 AND state = 'running'
                   AND expires_at > orch_now_ms()
                 FOR SHARE",
                &[Type::INT8, Type::TEXT, Type::INT8],
            )
            .await?,
            // Done, if the claim is current; a job this claim finished
            // already stays done (the finish sent again), and says so.
            finish: prepare(
                "WITH old AS (
                   SELECT id, state, expires_at FROM orch_jobs
                   WHERE id = $1 AND run = $2 AND token = $3 FOR UPDATE)
                 UPDATE orch_jobs j
                 SET state = 'done', finished_at = coalesce(j.finished_at, orch_now_ms())
                 FROM old
                 WHERE j.id = old.id
                   AND (old.state = 'done'
                        OR (old.state = 'running' AND old.expires_at > orch_now_ms()))
                 RETURNING old.state = 'done'",
                &[Type::INT8, Type::TEXT, Type::INT8],
            )
            .await?,
            give_back: prepare(
                "UPDATE orch_jobs SET state = 'available', expires_at = 0
                 WHERE id = $1 AND token = $2 AND state = 'running'
                   AND expires_at > orch_now_ms()",
                &[Type::INT8, Type::INT8],
            )
            .await?,
            cancel: prepare(
                "UPDATE orch_jobs SET state = 'cancelled', finished_at = orch_now_ms()
                 WHERE run = $1 AND state IN ('available', 'running')",
                &[Type::TEXT],
            )
            .await?,
            list: prepare(
                "SELECT id, key, work, state, worker, token, takeovers, max_takeovers,
                        renewed_at, expires_at, orch_now_ms()
                 FROM orch_jobs WHERE run = $1 ORDER BY id",
                &[Type::TEXT],
            )
            .await?,
            one: prepare(
                "SELECT id, key, work, state, worker, token, takeovers, max_takeovers,
                        renewed_at, expires_at, orch_now_ms()
                 FROM orch_jobs WHERE id = $1",
                &[Type::INT8],
            )
            .await?,
        })
    }
}

/// A claim's write refused: `why` says what became of it.
pub(super) fn lost(claim: &Claim, why: &str) -> StoreError {
    StoreError::new(
        StoreErrorKind::Fenced,
        format!(
            "job {} of run {} is no longer held by claim {} ({why}); nothing was written, and \
             its worker stops",
            claim.job, claim.run, claim.token
        ),
    )
}

pub(super) fn int(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// A lease in milliseconds, at most about 3,000 years: added to the
/// server's clock, it cannot overflow.
fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis())
        .unwrap_or(i64::MAX)
        .min(i64::MAX / 4)
}

fn time(ms: i64) -> Timestamp {
    Timestamp(ms.max(0) as u64)
}

impl PgStore {
    /// Checks, in an append's transaction, that `claim` is current; with
    /// `finish`, also marks its job done. `Ok(true)`: the job was done
    /// before (by this claim: the finish is being sent again).
    pub(super) async fn check_claim(
        &self,
        c: &Conn,
        claim: &Claim,
        finish: bool,
    ) -> Result<bool, StoreError> {
        let args: [&Param<'_>; 3] = [&int(claim.job), &claim.run.as_str(), &int(claim.token)];
        let stmt = if finish {
            &c.jobs.finish
        } else {
            &c.jobs.check
        };
        let row = c
            .client
            .query_opt(stmt, &args)
            .await
            .map_err(|e| self.err(&e))?;
        match row {
            None => Err(lost(
                claim,
                "its lease lapsed, another worker took it over, or it was cancelled",
            )),
            Some(r) => Ok(finish && r.get::<_, bool>(0)),
        }
    }

    /// Checks that `run` is held under `epoch`, in the transaction `c` has
    /// open.
    async fn check_epoch(&self, c: &Conn, run: &RunId, epoch: u64) -> Result<(), StoreError> {
        let current: i64 = c
            .client
            .query_one(&c.epoch, &[&run.as_str()])
            .await
            .map_err(|e| self.err(&e))?
            .get(0);
        if current as u64 != epoch {
            return Err(fenced(run, epoch, current as u64));
        }
        Ok(())
    }

    /// Ends the transaction `c` has open: committed if `result` is `Ok`,
    /// else rolled back.
    async fn end<T>(&self, c: &Conn, result: Result<T, StoreError>) -> Result<T, StoreError> {
        let end = if result.is_ok() { "COMMIT" } else { "ROLLBACK" };
        c.client
            .batch_execute(end)
            .await
            .map_err(|e| self.err(&e))?;
        result
    }

    /// Adds `jobs` (their work encoded in `work`) in a transaction it
    /// leaves open; their ids in order. A key the run has for another job
    /// is a conflict (and the caller rolls the whole call back).
    async fn enqueue_in(
        &self,
        c: &Conn,
        run: &RunId,
        epoch: u64,
        jobs: &[NewJob],
        work: &[String],
    ) -> Result<Vec<u64>, StoreError> {
        let e = |x: tokio_postgres::Error| self.err(&x);
        c.client.batch_execute("BEGIN").await.map_err(e)?;
        self.check_epoch(c, run, epoch).await?;
        let keys: Vec<&str> = jobs.iter().map(|j| j.key.as_str()).collect();
        let roles: Vec<Option<&str>> = jobs
            .iter()
            .map(|j| j.role.as_ref().map(|r| r.as_str()))
            .collect();
        let priorities: Vec<i32> = jobs.iter().map(|j| j.priority).collect();
        let max: Vec<i32> = jobs
            .iter()
            .map(|j| i32::try_from(j.max_takeovers).unwrap_or(i32::MAX))
            .collect();
        let all: [&Param<'_>; 6] = [&run.as_str(), &keys, &work, &roles, &priorities, &max];
        c.client.execute(&c.jobs.enqueue, &all).await.map_err(e)?;
        let found = c
            .client
            .query(&c.jobs.ids, &[&run.as_str(), &keys])
            .await
            .map_err(e)?;
        let found: HashMap<&str, &Row> = found.iter().map(|r| (r.get(0), r)).collect();
        jobs.iter()
            .zip(work)
            .map(|(job, work)| {
                let r = found.get(job.key.as_str()).ok_or_else(|| {
                    StoreError::new(
                        StoreErrorKind::Io,
                        format!(
                            "{}: job {:?} of run {run} was not stored",
                            self.name, job.key
                        ),
                    )
                })?;
                let same = r.get::<_, &str>(2) == work
                    && r.get::<_, Option<&str>>(3) == job.role.as_ref().map(|r| r.as_str())
                    && r.get::<_, i32>(4) == job.priority
                    && i64::from(r.get::<_, i32>(5)) == i64::from(job.max_takeovers);
                if !same {
                    return Err(StoreError::new(
                        StoreErrorKind::Conflict,
                        format!(
                            "run {run} already has a job {:?} that is not this one ({}); \
                             nothing was enqueued",
                            job.key, job.work
                        ),
                    ));
                }
                Ok(r.get::<_, i64>(1) as u64)
            })
            .collect()
    }

    /// Claims in a transaction it leaves open, so that a job this build
    /// cannot read is rolled back to unclaimed (for a newer worker)
    /// instead of lapsing and using up its takeovers. Claiming from more
    /// than one run, it then leaves that run alone and claims on (in up to
    /// [`TOO_NEW_RUNS`] tries), so that one newer run does not stop an
    /// older worker's work on the others; it answers `TooNew` only when
    /// it found nothing else.
    async fn claim_in(
        &self,
        c: &Conn,
        who: &str,
        runs: Runs<'_>,
        roles: &[&str],
        lease: Duration,
    ) -> Result<Option<Job>, StoreError> {
        let e = |x: tokio_postgres::Error| self.err(&x);
        // A claim of more than one run may go back to here (and claim on);
        // in the same round trip as the transaction's start.
        let begin = match runs {
            Runs::Only(_) => CLAIM_BEGIN.to_owned(),
            Runs::Any | Runs::Except(_) => format!("{CLAIM_BEGIN}; SAVEPOINT claim"),
        };
        c.client.batch_execute(&begin).await.map_err(e)?;
        let lease = millis(lease);
        let mut except: Vec<String> = match runs {
            Runs::Except(runs) => runs.iter().map(|r| r.as_str().to_owned()).collect(),
            _ => Vec::new(),
        };
        let mut too_new = None;
        for _ in 0..TOO_NEW_RUNS {
            let row = match runs {
                Runs::Only(run) => {
                    let args: [&Param<'_>; 4] = [&who, &roles, &lease, &run.as_str()];
                    c.client.query_opt(&c.jobs.claim_run, &args).await
                }
                Runs::Any | Runs::Except(_) => {
                    let args: [&Param<'_>; 4] = [&who, &roles, &lease, &except];
                    c.client.query_opt(&c.jobs.claim_any, &args).await
                }
            }
            .map_err(e)?;
            let Some(r) = row else {
                return too_new.map_or(Ok(None), Err);
            };
            match self.job(&r) {
                Ok(job) => return Ok(Some(job)),
                Err(mut x) => {
                    x.kind = StoreErrorKind::TooNew;
                    x.message = format!(
                        "{}; it is left unclaimed (was it enqueued by a newer orch?)",
                        x.message
                    );
                    if matches!(runs, Runs::Only(_)) {
                        return Err(x);
                    }
                    tracing::debug!(error = %x, "leaving a run's job for a newer worker");
                    // (The savepoint stays, for the next try.)
                    c.client
                        .batch_execute("ROLLBACK TO SAVEPOINT claim")
                        .await
                        .map_err(e)?;
                    except.push(r.get::<_, String>(1));
                    too_new.get_or_insert(x);
                }
            }
        }
        Err(too_new.unwrap_or_else(|| {
            StoreError::new(StoreErrorKind::TooNew, "jobs a newer orch enqueued")
        }))
    }

    async fn cancel_in(&self, c: &Conn, run: &RunId, epoch: u64) -> Result<u64, StoreError> {
        let e = |x: tokio_postgres::Error| self.err(&x);
        c.client.batch_execute("BEGIN").await.map_err(e)?;
        self.check_epoch(c, run, epoch).await?;
        c.client
            .execute(&c.jobs.cancel, &[&run.as_str()])
            .await
            .map_err(e)
    }

    fn corrupt(&self, what: std::fmt::Arguments<'_>) -> StoreError {
        StoreError::new(StoreErrorKind::Corrupt, format!("{}: {what}", self.name))
    }

    fn work(&self, id: i64, json: &str) -> Result<Work, StoreError> {
        serde_json::from_str(json)
            .map_err(|e| self.corrupt(format_args!("job {id} has unreadable work {json:?}: {e}")))
    }

    fn job(&self, r: &Row) -> Result<Job, StoreError> {
        let id: i64 = r.get(0);
        let run: &str = r.get(1);
        let role: Option<&str> = r.get(6);
        Ok(Job {
            claim: Claim {
                job: id as u64,
                run: run
                    .parse()
                    .map_err(|e| self.corrupt(format_args!("job {id} has run {run:?}: {e}")))?,
                token: r.get::<_, i64>(2) as u64,
                expires_at: time(r.get(3)),
            },
            key: r.get(4),
            work: self.work(id, r.get(5))?,
            role: role
                .map(str::parse::<RoleName>)
                .transpose()
                .map_err(|e| self.corrupt(format_args!("job {id} has role {role:?}: {e}")))?,
            takeovers: r.get::<_, i32>(7) as u32,
        })
    }

    fn info(&self, r: &Row) -> Result<JobInfo, StoreError> {
        let id: i64 = r.get(0);
        let (token, takeovers, max): (i64, i32, i32) = (r.get(5), r.get(6), r.get(7));
        let (expires_at, now): (i64, i64) = (r.get(9), r.get(10));
        let state = match r.get::<_, &str>(3) {
            "available" => JobState::Available,
            "running" if expires_at > now => JobState::Running,
            "running" if takeovers < max => JobState::Lapsed,
            "running" => JobState::Abandoned,
            "done" => JobState::Done,
            "cancelled" => JobState::Cancelled,
            other => return Err(self.corrupt(format_args!("job {id} has state {other:?}"))),
        };
        let worker: Option<&str> = r.get(4);
        Ok(JobInfo {
            id: id as u64,
            key: r.get(1),
            work: self.work(id, r.get(2))?,
            state,
            worker: worker
                .map(serde_json::from_str::<DriverInfo>)
                .transpose()
                .map_err(|e| self.corrupt(format_args!("job {id} has worker {worker:?}: {e}")))?,
            token: token as u64,
            takeovers: takeovers as u32,
            renewed_at: r.get::<_, Option<i64>>(8).map(time),
            expires_at: time(expires_at),
            now: time(now),
        })
    }
}

#[async_trait]
impl JobQueue for PgStore {
    async fn enqueue(
        &self,
        run: &RunId,
        epoch: u64,
        jobs: &[NewJob],
    ) -> Result<Vec<u64>, StoreError> {
        let work = jobs
            .iter()
            .map(|j| serde_json::to_string(&j.work))
            .collect::<Result<Vec<String>, _>>()
            .map_err(|e| {
                StoreError::new(StoreErrorKind::Io, format!("cannot encode a job: {e}"))
            })?;
        let work = &work;
        self.with_conn_again(|| {
            self.with_conn(async |c| {
                let result = self.enqueue_in(c, run, epoch, jobs, work).await;
                self.end(c, result).await
            })
        })
        .await
    }

    async fn claim(
        &self,
        worker: &DriverInfo,
        runs: Runs<'_>,
        roles: &[RoleName],
        lease: Duration,
    ) -> Result<Option<Job>, StoreError> {
        let who = serde_json::to_string(worker).map_err(|e| {
            StoreError::new(StoreErrorKind::Io, format!("cannot encode the worker: {e}"))
        })?;
        let roles: Vec<&str> = roles.iter().map(|r| r.as_str()).collect();
        // Not tried again on a new connection: a claim whose answer was
        // lost is a job no one works on, which lapses and is taken over.
        self.with_conn(async |c| {
            let result = self.claim_in(c, &who, runs, &roles, lease).await;
            self.end(c, result).await
        })
        .await
    }

    async fn renew(&self, claim: &Claim, lease: Duration) -> Result<Option<Timestamp>, StoreError> {
        let row = self
            .with_conn(async |c| {
                let args: [&Param<'_>; 3] = [&int(claim.job), &int(claim.token), &millis(lease)];
                c.client
                    .query_opt(&c.jobs.renew, &args)
                    .await
                    .map_err(|e| self.err(&e))
            })
            .await?;
        Ok(row.map(|r| time(r.get(0))))
    }

    async fn record(&self, claim: &Claim, events: &[Event]) -> Result<Vec<u64>, StoreError> {
        self.append_checked(&claim.run, Check::Claim(claim, false), events)
            .await
    }

    async fn finish(&self, claim: &Claim, events: &[Event]) -> Result<Vec<u64>, StoreError> {
        self.append_checked(&claim.run, Check::Claim(claim, true), events)
            .await
    }

    async fn give_back(&self, claim: &Claim) -> Result<bool, StoreError> {
        let n = self
            .with_conn_again(|| {
                self.with_conn(async |c| {
                    let args: [&Param<'_>; 2] = [&int(claim.job), &int(claim.token)];
                    c.client
                        .execute(&c.jobs.give_back, &args)
                        .await
                        .map_err(|e| self.err(&e))
                })
            })
            .await?;
        Ok(n == 1)
    }

    async fn cancel(&self, run: &RunId, epoch: u64) -> Result<u64, StoreError> {
        self.with_conn_again(|| {
            self.with_conn(async |c| {
                let result = self.cancel_in(c, run, epoch).await;
                self.end(c, result).await
            })
        })
        .await
    }

    async fn jobs(&self, run: &RunId) -> Result<Vec<JobInfo>, StoreError> {
        let rows = self
            .with_conn_again(|| {
                self.with_conn(async |c| {
                    c.client
                        .query(&c.jobs.list, &[&run.as_str()])
                        .await
                        .map_err(|e| self.err(&e))
                })
            })
            .await?;
        rows.iter().map(|r| self.info(r)).collect()
    }

    async fn job(&self, id: u64) -> Result<Option<JobInfo>, StoreError> {
        let row = self
            .with_conn_again(|| {
                self.with_conn(async |c| {
                    c.client
                        .query_opt(&c.jobs.one, &[&int(id)])
                        .await
                        .map_err(|e| self.err(&e))
                })
            })
            .await?;
        row.map(|r| self.info(&r)).transpose()
    }
}
