//! The PostgreSQL store against a real server: `ORCH_TEST_DATABASE_URL`
//! names it (`.ci/run` sets it); without it these tests say they are
//! skipped. Each test works in a schema of its own, dropped at its end.
#![cfg(feature = "postgres")]

use std::sync::Arc;

use std::time::Duration;

use orch_core::{
    DriverInfo, Event, EventId, EventKind, JobQueue, JobState, NewJob, Runs, StateStore,
    StoreErrorKind, Timestamp, Work,
};
use orch_state::{Fence, PG_SCHEMA_VERSION, PgStore, Written, conformance};
use tokio_postgres::{Client, NoTls};

/// A fresh schema in the test database, and a connection string that
/// puts a store's tables in it.
struct Scratch {
    admin: Client,
    schema: String,
    url: String,
}

impl Scratch {
    /// Fails, naming the test, when no database is configured: these
    /// tests are ignored by default and run where one is (`.ci/run`).
    async fn new(test: &str) -> Scratch {
        let base = std::env::var("ORCH_TEST_DATABASE_URL").unwrap_or_else(|_| {
            panic!("{test} needs ORCH_TEST_DATABASE_URL, a PostgreSQL database (.ci/run sets it)")
        });
        let (admin, conn) = tokio_postgres::connect(&base, NoTls)
            .await
            .expect("ORCH_TEST_DATABASE_URL is reachable");
        tokio::spawn(conn);
        // Tests start at once on several threads: the clock alone can
        // give two of them one name.
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        let schema = format!("orch_test_{}_{n}_{nanos}", std::process::id());
        admin
            .batch_execute(&format!("CREATE SCHEMA {schema}"))
            .await
            .unwrap();
        let sep = if base.contains('?') { '&' } else { '?' };
        let url =
            format!("{base}{sep}options=-c%20search_path%3D{schema}&application_name={schema}");
        Scratch { admin, schema, url }
    }

    async fn store(&self) -> PgStore {
        PgStore::connect(&self.url).await.unwrap()
    }

    /// Runs statements in the schema; the rows of a single query.
    async fn sql(&self, sql: &str) -> Vec<tokio_postgres::Row> {
        self.admin
            .batch_execute(&format!("SET search_path = {}", self.schema))
            .await
            .unwrap();
        if sql.contains(';') {
            self.admin.batch_execute(sql).await.unwrap();
            return Vec::new();
        }
        self.admin.query(sql, &[]).await.unwrap()
    }

    /// Waits (a few seconds at most) until `n` of the stores' sessions
    /// are idle in a transaction; how many are at the end.
    async fn idle_in_transaction(&self, n: i64) -> i64 {
        let open = format!(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = '{}' AND state LIKE 'idle in transaction%'",
            self.schema
        );
        let mut now = -1;
        for _ in 0..250 {
            now = self.sql(&open).await[0].get::<_, i64>(0);
            if now == n {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        now
    }

    async fn drop(self) {
        self.admin
            .batch_execute(&format!("DROP SCHEMA {} CASCADE", self.schema))
            .await
            .unwrap();
    }
}

/// `call` polled once (what it sends first goes out) and left pending.
async fn polled_once<F: std::future::Future>(call: F) -> std::pin::Pin<Box<F>> {
    let mut call = Box::pin(call);
    std::future::poll_fn(|cx| {
        assert!(
            call.as_mut().poll(cx).is_pending(),
            "cannot finish in one poll"
        );
        std::task::Poll::Ready(())
    })
    .await;
    call
}

fn ready(i: u128) -> Event {
    Event {
        id: EventId(i),
        at: Timestamp(1_700_000_000_000 + i as u64),
        kind: EventKind::TicketReady {
            ticket: format!("T-{i}").parse().unwrap(),
        },
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "needs PostgreSQL: ORCH_TEST_DATABASE_URL (.ci/run sets it)"]
async fn pg_store_conforms() {
    let db = Scratch::new("pg_store_conforms").await;
    let url = db.url.clone();
    // Every call connects afresh: durability across reopen is real.
    let open = move || {
        let url = url.clone();
        tokio::task::block_in_place(|| {
            tokio::runtime::Handle::current().block_on(async {
                Arc::new(PgStore::connect(&url).await.unwrap()) as Arc<dyn StateStore>
            })
        })
    };
    conformance::run_all(&open).await;
    db.drop().await;
}

/// Stores on separate connections (as processes on separate machines
/// would be) append to one run at once: seqs have no gaps and every
/// acknowledged seq holds its event.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "needs PostgreSQL: ORCH_TEST_DATABASE_URL (.ci/run sets it)"]
async fn appenders_on_separate_connections_share_one_gapless_journal() {
    let db = Scratch::new("appenders_on_separate_connections_share_one_gapless_journal").await;
    let run: orch_core::RunId = "shared".parse().unwrap();
    let mut tasks = Vec::new();
    for w in 0..4u128 {
        let store = db.store().await;
        let run = run.clone();
        tasks.push(tokio::spawn(async move {
            let mut acked = Vec::new();
            for i in 0..25u128 {
                let batch = [ready(w * 1000 + 2 * i + 1), ready(w * 1000 + 2 * i + 2)];
                let seqs = store.append(&run, &batch).await.unwrap();
                acked.extend(batch.iter().map(|e| e.id).zip(seqs));
            }
            acked
        }));
    }
    let reader = db.store().await;
    let all = reader.read(&run, 0, 1000).await.unwrap();
    let mut acked = Vec::new();
    for t in tasks {
        acked.extend(t.await.unwrap());
    }
    let all = if all.len() == 200 {
        all
    } else {
        reader.read(&run, 0, 1000).await.unwrap()
    };
    assert_eq!(all.len(), 200);
    assert!(all.iter().zip(1..).all(|(e, seq)| e.seq == seq), "no gaps");
    for (id, seq) in acked {
        assert_eq!(
            all[seq as usize - 1].event.id,
            id,
            "seq {seq} holds its event"
        );
    }
    // A two-event append is never split by another appender.
    for pair in all.chunks(2) {
        assert_eq!(
            pair[0].event.id.0 + 1,
            pair[1].event.id.0,
            "batch kept whole"
        );
    }
    db.drop().await;
}

fn worker(n: u32) -> DriverInfo {
    DriverInfo {
        host: format!("host-{n}"),
        boot: "boot".into(),
        pid: 1000 + n,
        start: 7,
        containment: String::new(),
    }
}

fn phase(ticket: &str, phase: &str) -> Work {
    Work::Phase {
        ticket: ticket.parse().unwrap(),
        phase: phase.parse().unwrap(),
    }
}

fn job(key: &str, work: Work, role: Option<&str>, priority: i32) -> NewJob {
    let mut j = NewJob::new(key, work);
    j.role = role.map(|r| r.parse().unwrap());
    j.priority = priority;
    j
}

const LONG: Duration = Duration::from_secs(600);

/// The `JobQueue` contract on one connection per worker: jobs go in only
/// under the run's current epoch and once per key; a worker gets the
/// first job it can do; a lapsed claim is taken over with a larger token,
/// and from then on its holder can neither renew, record, finish nor
/// give back; a finish sent again stores nothing twice; a job taken over
/// too often is abandoned; cancelling fences the claims.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "needs PostgreSQL: ORCH_TEST_DATABASE_URL (.ci/run sets it)"]
async fn jobs_go_to_one_worker_and_a_lapsed_claim_writes_nothing() {
    let db = Scratch::new("jobs_go_to_one_worker_and_a_lapsed_claim_writes_nothing").await;
    let (coord, a, b) = (db.store().await, db.store().await, db.store().await);
    let run: orch_core::RunId = "r".parse().unwrap();
    let ev = |i: u128| ready(i);
    let journal = async |s: &PgStore| s.read(&run, 0, 100).await.unwrap().len();

    // Enqueued under the coordinator's epoch, once per key.
    let old = coord.lock_run(&run).await.unwrap();
    let old_epoch = old.epoch().unwrap();
    drop(old);
    let lock = coord.lock_run(&run).await.unwrap();
    let epoch = lock.epoch().unwrap();
    assert!(epoch > old_epoch);
    let jobs = [
        job("T-1/plan", phase("T-1", "plan"), Some("dev"), 5),
        job("T-2/plan", phase("T-2", "plan"), Some("qa"), 1),
        job("T-3/plan", phase("T-3", "plan"), Some("dev"), 2),
    ];
    let stale = coord.enqueue(&run, old_epoch, &jobs).await.unwrap_err();
    assert_eq!(stale.kind, StoreErrorKind::Fenced, "{stale}");
    assert!(
        coord.jobs(&run).await.unwrap().is_empty(),
        "a stale coordinator adds nothing"
    );
    let ids = coord.enqueue(&run, epoch, &jobs).await.unwrap();
    assert_eq!(
        coord.enqueue(&run, epoch, &jobs).await.unwrap(),
        ids,
        "same keys, same jobs"
    );
    assert_eq!(coord.jobs(&run).await.unwrap().len(), 3);

    // A developer gets the first developer's job: T-3 (priority 2), not
    // T-2 (a tester's, though it comes first).
    let dev = ["dev".parse().unwrap()];
    // Another run's job, first in claim order: skipped by a worker that
    // leaves that run alone.
    let other: orch_core::RunId = "another-run".parse().unwrap();
    let other_lock = coord.lock_run(&other).await.unwrap();
    let other_epoch = other_lock.epoch().unwrap();
    let first = job("O-1/plan", phase("O-1", "plan"), Some("dev"), 0);
    coord.enqueue(&other, other_epoch, &[first]).await.unwrap();
    let nobody: orch_core::RunId = "no-jobs".parse().unwrap();
    assert!(
        a.claim(&worker(1), Runs::Only(&nobody), &dev, LONG)
            .await
            .unwrap()
            .is_none(),
        "a worker of another run takes none of this one's"
    );
    assert!(
        a.claim(
            &worker(1),
            Runs::Except(&[other.clone(), run.clone()]),
            &dev,
            LONG
        )
        .await
        .unwrap()
        .is_none(),
        "a worker that leaves both runs alone takes none of their jobs"
    );
    // Leaving the other run alone, it takes this one's.
    let ja = a
        .claim(
            &worker(1),
            Runs::Except(std::slice::from_ref(&other)),
            &dev,
            LONG,
        )
        .await
        .unwrap()
        .unwrap();
    assert_eq!(coord.cancel(&other, other_epoch).await.unwrap(), 1);
    drop(other_lock);
    assert_eq!(
        (ja.key.as_str(), ja.claim.token, ja.takeovers),
        ("T-3/plan", 1, 0)
    );
    assert!(ja.claim.expires_at > Timestamp::now());
    let renewed = a.renew(&ja.claim, LONG).await.unwrap();
    assert!(
        renewed.is_some_and(|t| t >= ja.claim.expires_at),
        "{renewed:?}"
    );
    assert_eq!(a.record(&ja.claim, &[ev(1)]).await.unwrap(), [1]);

    // A claim that lapses (no time to live) is taken over.
    let jb = b
        .claim(&worker(2), Runs::Any, &dev, Duration::ZERO)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(jb.key, "T-1/plan");
    let taken = a
        .claim(&worker(1), Runs::Any, &dev, LONG)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (taken.claim.job, taken.claim.token, taken.takeovers),
        (jb.claim.job, 2, 1)
    );
    for refused in [
        b.record(&jb.claim, &[ev(2)]).await.unwrap_err(),
        b.finish(&jb.claim, &[ev(2)]).await.unwrap_err(),
    ] {
        assert_eq!(refused.kind, StoreErrorKind::Fenced, "{refused}");
        assert!(
            refused.message.contains(&format!("job {}", jb.claim.job)),
            "{refused}"
        );
    }
    assert_eq!(b.renew(&jb.claim, LONG).await.unwrap(), None);
    assert!(!b.give_back(&jb.claim).await.unwrap());
    assert_eq!(journal(&coord).await, 1, "the lapsed worker wrote nothing");

    // A lapsed claim no one took yet writes nothing either, and cannot
    // give its job back.
    let qa: [orch_core::RoleName; 1] = ["qa".parse().unwrap()];
    let tester = b
        .claim(&worker(2), Runs::Any, &qa, Duration::ZERO)
        .await
        .unwrap()
        .unwrap();
    for lapsed in [
        b.record(&tester.claim, &[ev(3)]).await.unwrap_err(),
        b.finish(&tester.claim, &[ev(3)]).await.unwrap_err(),
    ] {
        assert_eq!(lapsed.kind, StoreErrorKind::Fenced, "{lapsed}");
    }
    assert!(!b.give_back(&tester.claim).await.unwrap());
    // Taken over, then given back while held: free again, and the give
    // back is no takeover.
    let again = b
        .claim(&worker(2), Runs::Any, &qa, LONG)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (again.claim.token, again.takeovers),
        (tester.claim.token + 1, 1)
    );
    assert!(b.give_back(&again.claim).await.unwrap());
    let third = b
        .claim(&worker(2), Runs::Any, &qa, LONG)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (third.claim.token, third.takeovers),
        (again.claim.token + 1, 1)
    );

    // Another job under a key the run has is a conflict, and nothing of
    // its call goes in.
    let mut moved = jobs[0].clone();
    moved.priority = 9;
    let new = job("T-9/plan", phase("T-9", "plan"), None, 0);
    let clash = coord.enqueue(&run, epoch, &[new, moved]).await.unwrap_err();
    assert_eq!(clash.kind, StoreErrorKind::Conflict, "{clash}");
    assert!(clash.message.contains("T-1/plan"), "{clash}");
    assert_eq!(
        coord.jobs(&run).await.unwrap().len(),
        3,
        "T-9 was not added"
    );

    // Finished with its events, in one transaction; sent again, nothing
    // twice; with anything new, refused.
    let seqs = a.finish(&taken.claim, &[ev(4), ev(5)]).await.unwrap();
    assert_eq!(seqs, [2, 3]);
    assert_eq!(a.finish(&taken.claim, &[ev(4), ev(5)]).await.unwrap(), seqs);
    let more = a.finish(&taken.claim, &[ev(6)]).await.unwrap_err();
    assert_eq!(more.kind, StoreErrorKind::Fenced, "{more}");
    let after = a.record(&taken.claim, &[ev(6)]).await.unwrap_err();
    assert_eq!(after.kind, StoreErrorKind::Fenced, "{after}");
    assert_eq!(journal(&coord).await, 3);
    // A claim cannot write to another run.
    let mut elsewhere = ja.claim.clone();
    elsewhere.run = "other".parse().unwrap();
    for cross in [
        a.record(&elsewhere, &[ev(7)]).await.unwrap_err(),
        a.finish(&elsewhere, &[ev(7)]).await.unwrap_err(),
    ] {
        assert_eq!(cross.kind, StoreErrorKind::Fenced, "{cross}");
    }

    let listed = coord.jobs(&run).await.unwrap();
    let state = |key: &str| listed.iter().find(|j| j.key == key).unwrap().clone();
    assert_eq!(state("T-1/plan").state, JobState::Done);
    assert_eq!(state("T-1/plan").worker.unwrap().host, "host-1");
    assert_eq!(state("T-3/plan").state, JobState::Running);
    assert_eq!(state("T-2/plan").state, JobState::Running);
    assert!(state("T-3/plan").renewed_at.unwrap() <= state("T-3/plan").now);

    // Taken over once at most: after that it is abandoned, not claimed.
    let mut fragile = job("T-4/plan", phase("T-4", "plan"), None, 0);
    fragile.max_takeovers = 1;
    coord.enqueue(&run, epoch, &[fragile]).await.unwrap();
    let first = b
        .claim(&worker(2), Runs::Any, &[], Duration::ZERO)
        .await
        .unwrap()
        .unwrap();
    let second = b
        .claim(&worker(2), Runs::Any, &[], Duration::ZERO)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (first.key.as_str(), second.key.as_str(), second.takeovers),
        ("T-4/plan", "T-4/plan", 1)
    );
    assert!(
        b.claim(&worker(2), Runs::Any, &[], LONG)
            .await
            .unwrap()
            .is_none()
    );
    assert!(
        !b.give_back(&second.claim).await.unwrap(),
        "an abandoned job stays so"
    );
    let t4 = coord.jobs(&run).await.unwrap();
    assert_eq!(
        t4.iter().find(|j| j.key == "T-4/plan").unwrap().state,
        JobState::Abandoned
    );

    // Cancelled (by the current coordinator only), claims are fenced.
    let stale = coord.cancel(&run, old_epoch).await.unwrap_err();
    assert_eq!(stale.kind, StoreErrorKind::Fenced);
    assert_eq!(coord.cancel(&run, epoch).await.unwrap(), 3);
    assert_eq!(a.renew(&ja.claim, LONG).await.unwrap(), None);
    // A record sent again (its first answer lost) is answered with its
    // seqs though the claim is gone since; with anything new, refused.
    assert_eq!(a.record(&ja.claim, &[ev(1)]).await.unwrap(), [1]);
    let new = a.record(&ja.claim, &[ev(1), ev(9)]).await.unwrap_err();
    assert_eq!(new.kind, StoreErrorKind::Fenced, "{new}");
    // Work this build cannot read (a newer orch's) is left unclaimed.
    db.sql(
        "INSERT INTO orch_jobs (run, key, work, priority, max_takeovers)
         VALUES ('r', 'future', '{\"kind\":\"teleport\"}', 0, 3);",
    )
    .await;
    let future = a.claim(&worker(1), Runs::Any, &[], LONG).await.unwrap_err();
    assert_eq!(future.kind, StoreErrorKind::TooNew, "{future}");
    assert!(future.message.contains("teleport"), "{future}");
    let unclaimed = async || {
        let row = db
            .sql("SELECT state, token FROM orch_jobs WHERE key = 'future'")
            .await;
        assert_eq!(
            (row[0].get::<_, &str>(0), row[0].get::<_, i64>(1)),
            ("available", 0)
        );
    };
    unclaimed().await;
    // It holds up no other run's: a claim of any run passes over it (a
    // claim of its run alone still says why it took nothing).
    let other_lock = coord.lock_run(&other).await.unwrap();
    let later = job("O-2/plan", phase("O-2", "plan"), None, 5);
    (coord.enqueue(&other, other_lock.epoch().unwrap(), &[later]))
        .await
        .unwrap();
    let passed_over = a.claim(&worker(1), Runs::Any, &[], LONG).await.unwrap();
    assert_eq!(passed_over.map(|j| j.key), Some("O-2/plan".to_owned()));
    let only = a.claim(&worker(1), Runs::Only(&run), &[], LONG).await;
    assert_eq!(only.unwrap_err().kind, StoreErrorKind::TooNew);
    unclaimed().await;
    drop(other_lock);
    let gone = a.finish(&ja.claim, &[ev(8)]).await.unwrap_err();
    assert_eq!(gone.kind, StoreErrorKind::Fenced);
    assert_eq!(journal(&coord).await, 3);

    // Each event names what it was appended under: the claims above, the
    // coordinator's epoch, or nothing (an answer of `orch decide`).
    coord
        .append_if(&run, orch_core::Expect::Epoch(epoch), &[ev(10)])
        .await
        .unwrap();
    coord.append(&run, &[ev(11)]).await.unwrap();
    // And who appended it: the claim's worker, the epoch's holder.
    let claim = |seq: u64, c: &orch_core::Claim, w: u32| Written {
        seq,
        fence: Some(Fence::Claim {
            job: c.job,
            token: c.token,
        }),
        writer: Some(worker(w)),
    };
    let holder = orch_core::process::scope().describe();
    assert_eq!(
        coord.fences(&run).await.unwrap(),
        [
            claim(1, &ja.claim, 1),
            claim(2, &taken.claim, 1),
            claim(3, &taken.claim, 1),
            Written {
                seq: 4,
                fence: Some(Fence::Epoch(epoch)),
                writer: Some(holder),
            },
            Written {
                seq: 5,
                fence: None,
                writer: None,
            },
        ]
    );
    assert!(coord.fences(&other).await.unwrap().is_empty());
    db.sql("UPDATE orch_events SET fence = 'epoch four' WHERE seq = 4")
        .await;
    let bad = coord.fences(&run).await.unwrap_err();
    assert_eq!(bad.kind, StoreErrorKind::Corrupt, "{bad}");
    assert!(bad.message.contains("event 4 of run r"), "{bad}");
    db.sql("UPDATE orch_events SET fence = 'epoch 4', writer = '{' WHERE seq = 4")
        .await;
    let bad = coord.fences(&run).await.unwrap_err();
    assert_eq!(bad.kind, StoreErrorKind::Corrupt, "{bad}");
    assert!(
        bad.message.contains("event 4 of run r: not a writer"),
        "{bad}"
    );
    drop(lock);
    db.drop().await;
}

/// Eight workers on their own connections drain a queue: every job is
/// claimed once. Then a lapsed holder's finish races the takeover of its
/// job, many times: exactly one of them wins each time.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "needs PostgreSQL: ORCH_TEST_DATABASE_URL (.ci/run sets it)"]
async fn racing_workers_claim_each_job_once_and_a_late_finish_loses_to_a_takeover() {
    let db =
        Scratch::new("racing_workers_claim_each_job_once_and_a_late_finish_loses_to_a_takeover")
            .await;
    let coord = db.store().await;
    let run: orch_core::RunId = "race".parse().unwrap();
    let lock = coord.lock_run(&run).await.unwrap();
    let epoch = lock.epoch().unwrap();
    let jobs: Vec<NewJob> = (0..40)
        .map(|i| {
            job(
                &format!("T-{i}/build"),
                phase(&format!("T-{i}"), "build"),
                None,
                0,
            )
        })
        .collect();
    coord.enqueue(&run, epoch, &jobs).await.unwrap();
    let mut workers = Vec::new();
    for w in 0..8 {
        let store = db.store().await;
        workers.push(tokio::spawn(async move {
            let mut mine = Vec::new();
            while let Some(j) = store.claim(&worker(w), Runs::Any, &[], LONG).await.unwrap() {
                mine.push(j.claim.job);
            }
            mine
        }));
    }
    let mut claimed = Vec::new();
    for w in workers {
        claimed.extend(w.await.unwrap());
    }
    claimed.sort_unstable();
    let total = claimed.len();
    claimed.dedup();
    assert_eq!(
        (total, claimed.len()),
        (40, 40),
        "each job claimed exactly once"
    );

    // The lease runs out while the finish and the takeover are on their
    // way: either may come first, or neither (the finish too late, the
    // takeover too early); never both.
    let (late, taker) = (Arc::new(db.store().await), Arc::new(db.store().await));
    let (mut finished, mut taken) = (0, 0);
    for i in 0..30u128 {
        let key = format!("race-{i}");
        coord
            .enqueue(
                &run,
                epoch,
                &[job(&key, phase("R", "go"), Some("racer"), 0)],
            )
            .await
            .unwrap();
        let racer: [orch_core::RoleName; 1] = ["racer".parse().unwrap()];
        let lease = Duration::from_millis(3);
        let held = late
            .claim(&worker(1), Runs::Any, &racer, lease)
            .await
            .unwrap()
            .unwrap();
        let (l, t) = (late.clone(), taker.clone());
        let claim = held.claim.clone();
        let finish = tokio::spawn(async move { l.finish(&claim, &[ready(1000 + i)]).await });
        let roles = racer.clone();
        let take = tokio::spawn(async move {
            let mut took = None;
            for _ in 0..3 {
                took = took.or(t.claim(&worker(2), Runs::Any, &roles, LONG).await.unwrap());
            }
            took
        });
        let (done, took) = (finish.await.unwrap(), take.await.unwrap());
        let info = coord.jobs(&run).await.unwrap();
        let now = info.iter().find(|j| j.key == key).unwrap();
        match (&done, &took) {
            (Ok(_), Some(t)) => panic!("both the late finish and the takeover {t:?} won"),
            (Ok(_), None) => {
                finished += 1;
                assert_eq!(now.state, JobState::Done);
            }
            (Err(e), took) => {
                assert_eq!(e.kind, StoreErrorKind::Fenced, "{e}");
                if let Some(t) = took {
                    taken += 1;
                    assert_eq!(
                        (now.token, t.claim.token),
                        (held.claim.token + 1, now.token)
                    );
                    taker.finish(&t.claim, &[]).await.unwrap();
                } else {
                    // Neither: the job waits, lapsed, for the next worker.
                    let t = taker
                        .claim(&worker(2), Runs::Any, &racer, LONG)
                        .await
                        .unwrap()
                        .unwrap();
                    taker.finish(&t.claim, &[]).await.unwrap();
                }
            }
        }
    }
    let events = coord.read(&run, 0, 100).await.unwrap();
    assert_eq!(
        events.len(),
        finished,
        "the journal holds exactly the finishes that won"
    );
    eprintln!("late finishes that won: {finished}; takeovers: {taken}");
    drop(lock);
    db.drop().await;
}

/// A database set up by the first version of the store (no leases) is
/// migrated on connect and keeps its journal.
#[tokio::test]
#[ignore = "needs PostgreSQL: ORCH_TEST_DATABASE_URL (.ci/run sets it)"]
async fn a_version_1_schema_is_migrated_and_keeps_its_journal() {
    let db = Scratch::new("a_version_1_schema_is_migrated_and_keeps_its_journal").await;
    let first = ready(1);
    let body = serde_json::to_string(&first).unwrap().replace('\'', "''");
    let id: String = first
        .id
        .0
        .to_be_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    // Version 1 as that store made it.
    db.sql(&format!(
        "CREATE TABLE orch_meta (key text PRIMARY KEY, value bigint NOT NULL);
         INSERT INTO orch_meta VALUES ('schema_version', 1);
         CREATE TABLE orch_runs (
            n bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            run text NOT NULL UNIQUE,
            created_at bigint NOT NULL,
            last_seq bigint NOT NULL DEFAULT 0);
         CREATE TABLE orch_events (
            run bigint NOT NULL REFERENCES orch_runs (n),
            seq bigint NOT NULL,
            id bytea NOT NULL,
            body text NOT NULL,
            PRIMARY KEY (run, seq),
            UNIQUE (run, id));
         INSERT INTO orch_runs (run, created_at, last_seq) VALUES ('old', 1, 1);
         INSERT INTO orch_events VALUES (1, 1, '\\x{id}', '{body}');"
    ))
    .await;
    let store = db.store().await;
    let version = db
        .sql("SELECT value FROM orch_meta WHERE key = 'schema_version'")
        .await;
    assert_eq!(version[0].get::<_, i64>(0), PG_SCHEMA_VERSION);
    let run: orch_core::RunId = "old".parse().unwrap();
    let back = store.read(&run, 0, 10).await.unwrap();
    assert_eq!(back.len(), 1);
    assert_eq!((back[0].seq, &back[0].event), (1, &first));
    assert_eq!(
        store
            .append(&run, std::slice::from_ref(&first))
            .await
            .unwrap(),
        [1],
        "same event, same seq"
    );
    assert_eq!(store.append(&run, &[ready(2)]).await.unwrap(), [2]);
    // What an older schema had no room for is unknown, not made up.
    assert_eq!(
        store.fences(&run).await.unwrap()[0],
        Written {
            seq: 1,
            fence: None,
            writer: None
        }
    );
    let lock = store.lock_run(&run).await.unwrap();
    let epoch = lock.epoch().unwrap();
    store
        .enqueue(&run, epoch, &[NewJob::new("J", phase("T-1", "plan"))])
        .await
        .unwrap();
    let job = store.claim(&worker(1), Runs::Any, &[], LONG).await.unwrap();
    assert_eq!(
        job.map(|j| j.claim.token),
        Some(1),
        "the job queue works after the migration"
    );
    db.drop().await;
}

#[tokio::test]
#[ignore = "needs PostgreSQL: ORCH_TEST_DATABASE_URL (.ci/run sets it)"]
async fn a_newer_schema_is_refused_untouched() {
    let db = Scratch::new("a_newer_schema_is_refused_untouched").await;
    let run: orch_core::RunId = "r".parse().unwrap();
    db.store().await.append(&run, &[ready(1)]).await.unwrap();
    let newer = PG_SCHEMA_VERSION + 1;
    db.sql(&format!(
        "UPDATE orch_meta SET value = {newer} WHERE key = 'schema_version'"
    ))
    .await;
    let e = PgStore::connect(&db.url).await.unwrap_err();
    assert_eq!(e.kind, StoreErrorKind::TooNew, "{e}");
    assert!(
        e.message.contains(&format!("version {newer}"))
            && e.message.contains("PostgreSQL database"),
        "{e}"
    );
    let left = db.sql("SELECT value FROM orch_meta").await;
    assert_eq!(left[0].get::<_, i64>(0), newer, "version left as it was");
    let events = db.sql("SELECT count(*) FROM orch_events").await;
    assert_eq!(events[0].get::<_, i64>(0), 1, "journal left as it was");
    db.drop().await;
}

#[tokio::test]
#[ignore = "needs PostgreSQL: ORCH_TEST_DATABASE_URL (.ci/run sets it)"]
async fn tables_orch_did_not_make_are_refused_untouched() {
    let db = Scratch::new("tables_orch_did_not_make_are_refused_untouched").await;
    db.sql("CREATE TABLE orch_events (payload text); INSERT INTO orch_events VALUES ('theirs')")
        .await;
    let e = PgStore::connect(&db.url).await.unwrap_err();
    assert_eq!(e.kind, StoreErrorKind::Corrupt, "{e}");
    assert!(e.message.contains("orch_events"), "{e}");
    let rows = db.sql("SELECT payload FROM orch_events").await;
    assert_eq!(rows[0].get::<_, &str>(0), "theirs");
    assert!(
        db.sql("SELECT 1 FROM pg_tables WHERE tablename = 'orch_runs' AND schemaname = current_schema()")
            .await
            .is_empty(),
        "nothing created beside them"
    );
    db.drop().await;
    // A table of a later version's name, too.
    let db = Scratch::new("tables_orch_did_not_make_are_refused_untouched").await;
    db.sql("CREATE TABLE orch_leases (payload text); INSERT INTO orch_leases VALUES ('theirs')")
        .await;
    let e = PgStore::connect(&db.url).await.unwrap_err();
    assert_eq!(e.kind, StoreErrorKind::Corrupt, "{e}");
    assert!(e.message.contains("orch_leases"), "{e}");
    let rows = db.sql("SELECT payload FROM orch_leases").await;
    assert_eq!(rows[0].get::<_, &str>(0), "theirs");
    db.drop().await;
}

/// The server drops the store's connection while it idles (a restart, a
/// failover, an idle timeout): the next call connects again and the
/// journal goes on where it was, without an error (appends are idempotent
/// and reads change nothing, so the store tries them again itself).
#[tokio::test]
#[ignore = "needs PostgreSQL: ORCH_TEST_DATABASE_URL (.ci/run sets it)"]
async fn a_lost_connection_is_made_again() {
    let db = Scratch::new("a_lost_connection_is_made_again").await;
    let store = db.store().await;
    let run: orch_core::RunId = "r".parse().unwrap();
    assert_eq!(store.append(&run, &[ready(1)]).await.unwrap(), [1]);
    for (i, call) in ["append", "read", "runs"].into_iter().enumerate() {
        let killed = db
            .sql(&format!(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                 WHERE application_name = '{}'",
                db.schema
            ))
            .await;
        assert_eq!(killed.len(), 1, "the store had one connection");
        match call {
            "append" => assert_eq!(
                store.append(&run, &[ready(i as u128 + 2)]).await.unwrap(),
                [2]
            ),
            "read" => assert_eq!(store.read(&run, 0, 10).await.unwrap().len(), 2),
            _ => assert_eq!(store.runs().await.unwrap(), std::slice::from_ref(&run)),
        }
    }
    db.drop().await;
}

/// The connection that holds a run's lock is lost: the lock says so
/// (the engine stops the run on it), and the run is free again.
#[tokio::test]
#[ignore = "needs PostgreSQL: ORCH_TEST_DATABASE_URL (.ci/run sets it)"]
async fn a_lost_lock_connection_is_reported_and_frees_the_run() {
    let db = Scratch::new("a_lost_lock_connection_is_reported_and_frees_the_run").await;
    let store = db.store().await;
    let run: orch_core::RunId = "r".parse().unwrap();
    let lock = store.lock_run(&run).await.unwrap();
    assert!(lock.can_be_lost());
    let refused = store.lock_run(&run).await.unwrap_err();
    assert_eq!(refused.kind, StoreErrorKind::Locked, "{refused}");
    assert!(
        tokio::time::timeout(Duration::from_millis(200), lock.lost())
            .await
            .is_err(),
        "not lost while its connection lives"
    );
    // The lock's connection is named after the store's and the run.
    let killed = db
        .sql(&format!(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE application_name = '{} (orch run r)'",
            db.schema
        ))
        .await;
    assert_eq!(killed.len(), 1, "the lock had one connection");
    let lost = tokio::time::timeout(Duration::from_secs(10), lock.lost())
        .await
        .expect("the loss is reported");
    assert_eq!(lost.kind, StoreErrorKind::Unavailable, "{lost}");
    assert!(lost.message.contains("that held it closed"), "{lost}");
    // The server freed it: another holder gets the run.
    let again = store.lock_run(&run).await.unwrap();
    drop((again, lock));
    db.drop().await;
}

/// A server that closes idle sessions (`idle_session_timeout`, set here
/// for the store's connections) does not close the one holding the lock,
/// which idles for the whole run.
#[tokio::test]
#[ignore = "needs PostgreSQL: ORCH_TEST_DATABASE_URL (.ci/run sets it)"]
async fn an_idle_session_timeout_does_not_take_the_lock() {
    let db = Scratch::new("an_idle_session_timeout_does_not_take_the_lock").await;
    let url = db.url.replace(
        "options=-c%20search_path",
        "options=-c%20idle_session_timeout%3D200%20-c%20search_path",
    );
    assert_ne!(url, db.url);
    let store = PgStore::connect(&url).await.unwrap();
    let run: orch_core::RunId = "r".parse().unwrap();
    let lock = store.lock_run(&run).await.unwrap();
    assert!(
        tokio::time::timeout(Duration::from_millis(1500), lock.lost())
            .await
            .is_err(),
        "the server's idle timeout must not close the lock's connection"
    );
    assert_eq!(
        store.lock_run(&run).await.unwrap_err().kind,
        StoreErrorKind::Locked
    );
    drop(lock);
    db.drop().await;
}

/// An append dropped half-way (its caller cancelled) leaves no
/// transaction open on the server: its connection goes, the next call
/// connects again and finds the journal whole.
#[tokio::test]
#[ignore = "needs PostgreSQL: ORCH_TEST_DATABASE_URL (.ci/run sets it)"]
async fn a_cancelled_append_leaves_no_transaction_open() {
    let db = Scratch::new("a_cancelled_append_leaves_no_transaction_open").await;
    let store = db.store().await;
    let run: orch_core::RunId = "r".parse().unwrap();
    assert_eq!(store.append(&run, &[ready(1)]).await.unwrap(), [1]);
    // Polled once (BEGIN and the look-ups go out, nothing is written),
    // then dropped, as a cancelled caller does.
    let two = [ready(2)];
    drop(polled_once(store.append(&run, &two)).await);
    assert_eq!(
        db.idle_in_transaction(0).await,
        0,
        "a transaction was left open"
    );
    assert_eq!(store.append(&run, &[ready(3)]).await.unwrap(), [2]);
    let all = store.read(&run, 0, 10).await.unwrap();
    assert_eq!(
        all.iter().map(|e| e.event.id.0).collect::<Vec<_>>(),
        [1, 3],
        "the cut append stored nothing"
    );
    db.drop().await;
}

/// A client frozen in the middle of an append (its run's row locked, the
/// rest never sent) holds the run's other writers up only until the
/// server ends its session, seconds later, not a whole call deadline.
#[tokio::test]
#[ignore = "needs PostgreSQL: ORCH_TEST_DATABASE_URL (.ci/run sets it)"]
async fn a_client_frozen_mid_append_holds_the_run_up_for_seconds() {
    let db = Scratch::new("a_client_frozen_mid_append_holds_the_run_up_for_seconds").await;
    let (frozen, other) = (db.store().await, db.store().await);
    let run: orch_core::RunId = "r".parse().unwrap();
    assert_eq!(frozen.append(&run, &[ready(1)]).await.unwrap(), [1]);
    // Polled once (BEGIN and the look-ups that lock the run's row go
    // out), then never again: a process stopped there.
    let two = [ready(2)];
    let stopped = polled_once(frozen.append(&run, &two)).await;
    assert_eq!(
        db.idle_in_transaction(1).await,
        1,
        "the frozen append holds the run's row"
    );
    let t = std::time::Instant::now();
    assert_eq!(other.append(&run, &[ready(3)]).await.unwrap(), [2]);
    let waited = t.elapsed();
    assert!(
        waited < Duration::from_secs(12),
        "another writer waited {waited:?} for the frozen one"
    );
    drop(stopped);
    // The frozen store writes again, on a new session.
    assert_eq!(frozen.append(&run, &[ready(4)]).await.unwrap(), [3]);
    let all = other.read(&run, 0, 10).await.unwrap();
    assert_eq!(
        all.iter().map(|e| e.event.id.0).collect::<Vec<_>>(),
        [1, 3, 4],
        "the frozen append stored nothing"
    );
    db.drop().await;
}

/// Bad connection strings and unreachable servers fail clearly; the
/// message never repeats a password.
#[tokio::test]
async fn bad_connection_strings_and_absent_servers_fail_clearly() {
    let e = PgStore::connect("postgres://me:hunter2@localhost:notaport/db")
        .await
        .unwrap_err();
    assert_eq!(e.kind, StoreErrorKind::Io, "{e}");
    assert!(e.message.contains("connection string"), "{e}");
    assert!(!e.message.contains("hunter2"), "{e}");
    // Port 1 on this machine: nothing listens.
    let e = PgStore::connect("postgres://me:hunter2@127.0.0.1:1/db")
        .await
        .unwrap_err();
    assert_eq!(e.kind, StoreErrorKind::Unavailable, "{e}");
    assert!(e.is_retryable());
    assert!(e.message.contains("`db` at me@127.0.0.1:1"), "{e}");
    assert!(!e.message.contains("hunter2"), "{e}");
}

/// Whether each connection named `app` uses TLS, as the server sees it.
async fn tls_of(db: &Scratch, app: &str) -> Vec<bool> {
    db.admin
        .query(
            "SELECT s.ssl FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid)
             WHERE a.application_name = $1",
            &[&app],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

#[tokio::test]
#[ignore = "needs PostgreSQL: ORCH_TEST_DATABASE_URL (.ci/run sets it)"]
async fn connections_use_tls_as_sslmode_says() {
    let db = Scratch::new("connections_use_tls_as_sslmode_says").await;
    let ssl: String = db.admin.query_one("SHOW ssl", &[]).await.unwrap().get(0);
    assert_eq!(ssl, "on", "this test needs a server with TLS on (ssl = on)");
    let run = "r".parse().unwrap();
    for (i, (mode, tls)) in [
        ("", true), // libpq's default, prefer: TLS when the server offers it
        ("&sslmode=prefer", true),
        ("&sslmode=require", true),
        ("&sslmode=disable", false),
    ]
    .into_iter()
    .enumerate()
    {
        let app = format!("{}_{i}", db.schema);
        let store = PgStore::connect(&format!("{}{mode}&application_name={app}", db.url))
            .await
            .unwrap();
        store.append(&run, &[ready(i as u128 + 1)]).await.unwrap();
        assert_eq!(tls_of(&db, &app).await, [tls], "{mode:?}");
    }

    // verify-full: the certificate must chain to a trusted root and name
    // the host. The server's own certificate is the root here; Debian's
    // names `localhost`.
    let cert: String = db
        .admin
        .query_one("SHOW ssl_cert_file", &[])
        .await
        .unwrap()
        .get(0);
    let url = db.url.clone();
    assert!(
        std::path::Path::new(&cert).is_absolute() && url.contains("@127.0.0.1:"),
        "this test needs the server's own certificate file ({cert}) and a URL naming 127.0.0.1"
    );
    let by_name = url.replace("@127.0.0.1:", "@localhost:");
    let root = cert.replace('/', "%2F");
    let app = format!("{}_full", db.schema);
    let store = PgStore::connect(&format!(
        "{by_name}&sslmode=verify-full&sslrootcert={root}&application_name={app}"
    ))
    .await
    .unwrap();
    assert_eq!(store.read(&run, 0, 10).await.unwrap().len(), 4);
    assert_eq!(tls_of(&db, &app).await, [true]);
    // The same root, but the certificate does not name 127.0.0.1.
    let e = PgStore::connect(&format!("{url}&sslmode=verify-full&sslrootcert={root}"))
        .await
        .unwrap_err();
    assert_eq!(e.kind, StoreErrorKind::Io, "not worth retrying: {e}");
    assert!(e.message.contains("certificate"), "{e}");
    // Roots that did not sign it (the public CAs) do not vouch for it.
    let public = "/etc/ssl/certs/ca-certificates.crt";
    if std::path::Path::new(public).exists() {
        let e = PgStore::connect(&format!(
            "{by_name}&sslmode=verify-full&sslrootcert={}",
            public.replace('/', "%2F")
        ))
        .await
        .unwrap_err();
        assert_eq!(e.kind, StoreErrorKind::Io, "{e}");
        assert!(e.message.contains("UnknownIssuer"), "{e}");
    }
    // verify-ca: the same root vouches for the certificate whatever host
    // it names, so 127.0.0.1 is accepted; the public CAs still do not.
    let app = format!("{}_ca", db.schema);
    let store = PgStore::connect(&format!(
        "{url}&sslmode=verify-ca&sslrootcert={root}&application_name={app}"
    ))
    .await
    .unwrap();
    assert_eq!(store.read(&run, 0, 10).await.unwrap().len(), 4);
    assert_eq!(tls_of(&db, &app).await, [true]);
    if std::path::Path::new(public).exists() {
        let e = PgStore::connect(&format!(
            "{url}&sslmode=verify-ca&sslrootcert={}",
            public.replace('/', "%2F")
        ))
        .await
        .unwrap_err();
        assert_eq!(e.kind, StoreErrorKind::Io, "{e}");
        assert!(e.message.contains("UnknownIssuer"), "{e}");
    }
    // A root file that is not there.
    let e = PgStore::new(&format!(
        "{url}&sslmode=verify-full&sslrootcert=/nonexistent.pem"
    ))
    .unwrap_err();
    assert!(e.message.contains("sslrootcert /nonexistent.pem"), "{e}");
    db.drop().await;
}

/// Under a verify mode, a server (or someone in between) that answers the
/// TLS request with "no TLS" is refused: nothing is sent in plain text.
/// (A stand-in server on a local port; no database needed.)
#[tokio::test]
async fn verify_modes_never_fall_back_to_plain_text() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    for mode in ["verify-ca", "verify-full"] {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = tokio::spawn(async move {
            let (mut sock, _) = listener.accept().await.unwrap();
            let mut request = [0u8; 8];
            sock.read_exact(&mut request).await.unwrap();
            sock.write_all(b"N").await.unwrap();
            // What follows: the client hangs up, or (wrongly) starts up
            // in plain text.
            let mut after = Vec::new();
            let _ =
                tokio::time::timeout(Duration::from_secs(5), sock.read_to_end(&mut after)).await;
            (request, after)
        });
        let e = PgStore::connect(&format!(
            "postgres://someone@127.0.0.1:{port}/db?sslmode={mode}"
        ))
        .await
        .unwrap_err();
        let (request, after) = server.await.unwrap();
        // An SSLRequest (length 8, code 80877103), then nothing.
        assert_eq!(request, [0, 0, 0, 8, 4, 210, 22, 47], "{mode}");
        assert!(after.is_empty(), "{mode}: sent in plain text: {after:?}");
        assert!(e.message.contains("TLS"), "{mode}: {e}");
    }
}
