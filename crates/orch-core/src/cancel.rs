//! The cancellation signal every contract takes.

/// A cloneable cancellation signal: cancelling any clone cancels all of
/// them; `cancelled()` is a future that completes once cancelled, and
/// `child_token()` makes a signal that a parent's cancel also cancels.
///
/// It is tokio-util's [`CancellationToken`](tokio_util::sync::CancellationToken),
/// which needs tokio's synchronisation types only, not its runtime.
///
/// ```
/// let c = orch_core::Cancellation::new();
/// let other = c.clone();
/// assert!(!other.is_cancelled());
/// c.cancel();
/// assert!(other.is_cancelled());
/// ```
pub type Cancellation = tokio_util::sync::CancellationToken;

/// The future [`Cancellation::cancelled`] returns.
pub type Cancelled<'a> = tokio_util::sync::WaitForCancellationFuture<'a>;
