//! What a worker on another machine needs to hold a job it claimed from a
//! [`JobQueue`]: [`keep_claim`] renews the claim's lease, and stops the
//! work (cancels it) before the store could give the job to another
//! worker.

use std::time::Duration;

use orch_core::{Cancellation, Claim, JobQueue};
use tokio::time::Instant;

/// Why [`keep_claim`] returned.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Kept {
    /// The work ended (its [`Cancellation`] was cancelled by the caller)
    /// while the claim was held.
    Stopped,
    /// The store answered that the claim is no longer current: the lease
    /// lapsed, another worker took the job over, or it was cancelled.
    Taken,
    /// No renewal was answered in time: the worker cannot know that it
    /// still holds the job, so it stopped the work before the lease could
    /// lapse. The last error the store gave, if any.
    Unanswered(Option<String>),
}

/// Holds `claim` while its work runs: renews the lease (of length
/// `lease`) every `lease / 3` through `queue`, and cancels `work` when the
/// claim is lost, or when no renewal has been answered by three quarters
/// of a lease after the last good one was *sent* (on this machine's clock,
/// which runs at the server's rate if not in step with it): the server
/// counts the lease from when the renewal reached it, which is later, so
/// the work is stopped at least a quarter of a lease before another
/// worker can take the job. Give the work's processes less than that to
/// die.
///
/// `since` is when the claim (or its last renewal) was sent. Returns when
/// `work` is cancelled, by the caller (the work ended) or by this.
///
/// Renew on a store value of its own: one busy with the work's appends
/// would hold the renewals up.
///
/// ```
/// # use std::time::Duration;
/// # use orch_core::{Cancellation, JobQueue, DriverInfo, Runs};
/// # async fn run(queue: &dyn JobQueue, me: &DriverInfo) -> Result<(), orch_core::StoreError> {
/// let lease = Duration::from_secs(30);
/// let sent = tokio::time::Instant::now();
/// if let Some(job) = queue.claim(me, Runs::Any, &[], lease).await? {
///     let work = Cancellation::new();
///     let keeper = orch_graph::keep_claim(queue, &job.claim, lease, sent, &work);
///     let doing = async {
///         // ... the job's work, stopping when `work` is cancelled ...
///         work.cancel();
///     };
///     let (kept, ()) = tokio::join!(keeper, doing);
///     if kept != orch_graph::Kept::Stopped {
///         return Ok(()); // lost: write nothing more for this job
///     }
/// }
/// # Ok(()) }
/// ```
pub async fn keep_claim(
    queue: &dyn JobQueue,
    claim: &Claim,
    lease: Duration,
    since: Instant,
    work: &Cancellation,
) -> Kept {
    let every = lease / 3;
    let safe = lease - lease / 4;
    let mut good = since;
    let mut next = since + every;
    let mut last_error = None;
    loop {
        let deadline = good + safe;
        tokio::select! {
            biased;
            () = work.cancelled() => return Kept::Stopped,
            () = tokio::time::sleep_until(next.min(deadline)) => {}
        }
        if Instant::now() >= deadline {
            tracing::warn!(job = claim.job, error = ?last_error, "no renewal of the job's lease was answered in time; stopping its work");
            work.cancel();
            return Kept::Unanswered(last_error);
        }
        let sent = Instant::now();
        let answer = tokio::select! {
            biased;
            () = work.cancelled() => return Kept::Stopped,
            answer = tokio::time::timeout_at(deadline, queue.renew(claim, lease)) => answer,
        };
        match answer {
            Ok(Ok(Some(_))) => {
                good = sent;
                next = sent + every;
            }
            Ok(Ok(None)) => {
                tracing::warn!(
                    job = claim.job,
                    "the job's claim is no longer current; stopping its work"
                );
                work.cancel();
                return Kept::Taken;
            }
            Ok(Err(e)) => {
                // Tried again soon, until the deadline.
                last_error = Some(e.to_string());
                next = Instant::now() + every / 4;
            }
            // The deadline passed: the loop's check stops the work.
            Err(_) => next = deadline,
        }
    }
}
