//! `keep_claim` under paused time: a worker renews its job's lease, and
//! stops its work once the claim is gone, or before the lease can lapse
//! when the store stops answering.

use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use orch_core::{
    Cancellation, Claim, DriverInfo, Event, Job, JobInfo, JobQueue, NewJob, RoleName, RunId, Runs,
    StoreError, StoreErrorKind, Timestamp,
};
use orch_graph::{Kept, keep_claim};
use tokio::time::Instant;

/// How the scripted store answers a renewal.
#[derive(Clone, Copy, Debug)]
enum Answer {
    Renewed,
    Gone,
    Fails,
    /// Never answers.
    Hangs,
}

/// A queue whose `renew` answers from a script (the last answer repeats),
/// after `delay`, and records when each renewal was sent.
struct Scripted {
    answers: Vec<Answer>,
    delay: Duration,
    sent: Mutex<Vec<Instant>>,
}

impl Scripted {
    fn new(answers: &[Answer], delay: Duration) -> Self {
        Scripted {
            answers: answers.to_vec(),
            delay,
            sent: Mutex::new(Vec::new()),
        }
    }
}

fn not_here() -> StoreError {
    StoreError::new(StoreErrorKind::Io, "not used by keep_claim")
}

#[async_trait]
impl JobQueue for Scripted {
    async fn enqueue(&self, _: &RunId, _: u64, _: &[NewJob]) -> Result<Vec<u64>, StoreError> {
        Err(not_here())
    }
    async fn claim(
        &self,
        _: &DriverInfo,
        _: Runs<'_>,
        _: &[RoleName],
        _: Duration,
    ) -> Result<Option<Job>, StoreError> {
        Err(not_here())
    }
    async fn renew(&self, _: &Claim, _: Duration) -> Result<Option<Timestamp>, StoreError> {
        let n = {
            let mut sent = self.sent.lock().unwrap();
            sent.push(Instant::now());
            sent.len() - 1
        };
        let answer = self.answers[n.min(self.answers.len() - 1)];
        tokio::time::sleep(self.delay).await;
        match answer {
            Answer::Renewed => Ok(Some(Timestamp(1))),
            Answer::Gone => Ok(None),
            Answer::Fails => Err(StoreError::new(
                StoreErrorKind::Unavailable,
                "connection refused",
            )),
            Answer::Hangs => std::future::pending().await,
        }
    }
    async fn record(&self, _: &Claim, _: &[Event]) -> Result<Vec<u64>, StoreError> {
        Err(not_here())
    }
    async fn finish(&self, _: &Claim, _: &[Event]) -> Result<Vec<u64>, StoreError> {
        Err(not_here())
    }
    async fn give_back(&self, _: &Claim) -> Result<bool, StoreError> {
        Err(not_here())
    }
    async fn cancel(&self, _: &RunId, _: u64) -> Result<u64, StoreError> {
        Err(not_here())
    }
    async fn jobs(&self, _: &RunId) -> Result<Vec<JobInfo>, StoreError> {
        Err(not_here())
    }
    async fn job(&self, _: u64) -> Result<Option<JobInfo>, StoreError> {
        Err(not_here())
    }
}

fn claim() -> Claim {
    Claim {
        job: 7,
        run: "r".parse().unwrap(),
        token: 1,
        expires_at: Timestamp(0),
    }
}

const LEASE: Duration = Duration::from_secs(30);

/// Keeps the claim with `queue` until the work stops or the keeper
/// stops it: why, and when (from the start).
async fn keep(queue: &Scripted, work_for: Option<Duration>) -> (Kept, Duration) {
    let start = Instant::now();
    let work = Cancellation::new();
    let doing = async {
        if let Some(d) = work_for {
            tokio::time::sleep(d).await;
            work.cancel();
        }
    };
    let claim = claim();
    // A keeper that never lets go fails here rather than hanging the test.
    let (kept, ()) = tokio::time::timeout(LEASE * 20, async {
        tokio::join!(keep_claim(queue, &claim, LEASE, start, &work), doing)
    })
    .await
    .expect("keep_claim neither kept the claim to the work's end nor let it go");
    assert!(work.is_cancelled(), "the work is stopped either way");
    (kept, start.elapsed())
}

#[tokio::test(start_paused = true)]
async fn answered_renewals_keep_the_claim_until_the_work_ends() {
    let q = Scripted::new(&[Answer::Renewed], Duration::from_millis(200));
    let work = LEASE * 10 - Duration::from_secs(1);
    let (kept, took) = keep(&q, Some(work)).await;
    assert_eq!((kept, took), (Kept::Stopped, work));
    let sent = q.sent.lock().unwrap();
    // Every third of a lease, counted from each renewal's sending.
    assert_eq!(sent.len(), 29, "{sent:?}");
    for w in sent.windows(2) {
        assert_eq!(w[1] - w[0], LEASE / 3);
    }
}

#[tokio::test(start_paused = true)]
async fn a_claim_taken_over_stops_the_work_at_once() {
    let q = Scripted::new(
        &[Answer::Renewed, Answer::Renewed, Answer::Gone],
        Duration::ZERO,
    );
    let (kept, took) = keep(&q, None).await;
    assert_eq!((kept, took), (Kept::Taken, LEASE));
}

/// The store stops answering after one renewal: the work is stopped
/// three quarters of a lease after that renewal was sent, a quarter of a
/// lease before the server (which heard it later still) lets the lease
/// lapse.
#[tokio::test(start_paused = true)]
async fn a_silent_store_stops_the_work_before_the_lease_lapses() {
    let q = Scripted::new(&[Answer::Renewed, Answer::Hangs], Duration::ZERO);
    let (kept, took) = keep(&q, None).await;
    let last_good = LEASE / 3;
    assert_eq!(
        (kept, took),
        (Kept::Unanswered(None), last_good + LEASE * 3 / 4)
    );
    assert!(took < last_good + LEASE);
}

/// A renewal counts from when it was sent, not answered: answers that
/// take 5 s do not push the next renewal back.
#[tokio::test(start_paused = true)]
async fn a_renewal_counts_from_its_sending() {
    let q = Scripted::new(&[Answer::Renewed], Duration::from_secs(5));
    let (kept, took) = keep(&q, Some(Duration::from_secs(55))).await;
    assert_eq!((kept, took), (Kept::Stopped, Duration::from_secs(55)));
    let sent = q.sent.lock().unwrap();
    let at: Vec<u64> = sent.iter().map(|t| (*t - sent[0]).as_secs()).collect();
    assert_eq!(at, [0, 10, 20, 30, 40], "{sent:?}");
}

/// An answer that comes after the deadline is no proof the lease was
/// renewed in time: the work stops at the deadline, three quarters of a
/// lease after the last renewal known good was sent (at 10 s; the one
/// sent at 22 s is answered at 34 s, past 32.5 s).
#[tokio::test(start_paused = true)]
async fn an_answer_later_than_the_deadline_stops_the_work() {
    let q = Scripted::new(&[Answer::Renewed], Duration::from_secs(12));
    let (kept, took) = keep(&q, None).await;
    assert_eq!(
        (kept, took),
        (Kept::Unanswered(None), LEASE / 3 + LEASE * 3 / 4)
    );
}

/// Failing renewals are tried again until the deadline, and then the work
/// is stopped with the store's last error.
#[tokio::test(start_paused = true)]
async fn failing_renewals_are_retried_then_the_work_is_stopped() {
    let q = Scripted::new(&[Answer::Renewed, Answer::Fails], Duration::ZERO);
    let (kept, took) = keep(&q, None).await;
    let Kept::Unanswered(Some(why)) = &kept else {
        panic!("{kept:?}");
    };
    assert!(why.contains("connection refused"), "{why}");
    assert_eq!(took, LEASE / 3 + LEASE * 3 / 4);
    assert!(q.sent.lock().unwrap().len() > 5, "retried");
}
