//! A runtime-agnostic cancellation signal.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

/// A cloneable cancellation signal. Cancelling any clone cancels all of them;
/// [`Cancellation::cancelled`] is a future that completes once cancelled.
///
/// It does not depend on any async runtime, so backend crates can use it
/// with whatever they run on.
///
/// ```
/// use orch_core::Cancellation;
/// let c = Cancellation::new();
/// let child = c.clone();
/// assert!(!child.is_cancelled());
/// c.cancel();
/// assert!(child.is_cancelled());
/// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
/// child.cancelled().await; // completes at once
/// # });
/// ```
#[derive(Clone, Default)]
pub struct Cancellation {
    inner: Arc<Inner>,
}

#[derive(Default)]
struct Inner {
    cancelled: AtomicBool,
    wakers: Mutex<Vec<Waker>>,
}

impl std::fmt::Debug for Cancellation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cancellation")
            .field("cancelled", &self.is_cancelled())
            .finish()
    }
}

impl Cancellation {
    /// A new, not yet cancelled signal.
    pub fn new() -> Self {
        Self::default()
    }

    /// Cancels this signal and every clone of it. Idempotent.
    pub fn cancel(&self) {
        self.inner.cancelled.store(true, Ordering::SeqCst);
        let wakers =
            std::mem::take(&mut *self.inner.wakers.lock().unwrap_or_else(|e| e.into_inner()));
        for w in wakers {
            w.wake();
        }
    }

    /// Whether [`cancel`](Self::cancel) has been called.
    pub fn is_cancelled(&self) -> bool {
        self.inner.cancelled.load(Ordering::SeqCst)
    }

    /// Completes when the signal is cancelled.
    pub fn cancelled(&self) -> Cancelled<'_> {
        Cancelled { c: self }
    }
}

/// Future returned by [`Cancellation::cancelled`].
#[derive(Debug)]
pub struct Cancelled<'a> {
    c: &'a Cancellation,
}

impl Future for Cancelled<'_> {
    type Output = ();
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.c.is_cancelled() {
            return Poll::Ready(());
        }
        let mut wakers = self
            .c
            .inner
            .wakers
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        // Re-check under the lock so a concurrent cancel() is not missed.
        if self.c.is_cancelled() {
            return Poll::Ready(());
        }
        if !wakers.iter().any(|w| w.will_wake(cx.waker())) {
            wakers.push(cx.waker().clone());
        }
        Poll::Pending
    }
}
