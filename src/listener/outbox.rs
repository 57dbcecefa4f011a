//! The queue from the broker to one connection task: unbounded, many senders, one receiver.
//!
//! It replaces a tokio `mpsc::unbounded_channel`, whose shared state is cache-padded and comes
//! with a 32-slot block allocated up front: about 1.3 KiB for every connection, idle or not.
//! Here an idle queue is one small allocation (a mutex around an empty `VecDeque`, a waker and
//! a flag), and [`Receiver::shrink`] gives back the room a burst left behind.

use std::collections::VecDeque;
use std::fmt;
use std::future::poll_fn;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Waker};

/// A new queue: any number of [`Sender`] clones, one [`Receiver`].
pub fn channel<T>() -> (Sender<T>, Receiver<T>) {
    let shared = Arc::new(Shared {
        senders: AtomicUsize::new(1),
        state: Mutex::new(State {
            queue: VecDeque::new(),
            waker: None,
            closed: false,
        }),
    });
    (
        Sender {
            shared: Arc::clone(&shared),
        },
        Receiver { shared },
    )
}

struct Shared<T> {
    /// Live senders; the receiver sees the end of the queue when it drops to 0.
    senders: AtomicUsize,
    state: Mutex<State<T>>,
}

struct State<T> {
    queue: VecDeque<T>,
    /// The receiver's task, while it waits.
    waker: Option<Waker>,
    /// The receiver is closed or gone: sends fail and nothing is kept.
    closed: bool,
}

impl<T> Shared<T> {
    fn lock(&self) -> MutexGuard<'_, State<T>> {
        // Nothing here can panic while holding the lock; a poisoned lock still holds a
        // consistent queue.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The sending half. Cloning it is an atomic increment.
pub struct Sender<T> {
    shared: Arc<Shared<T>>,
}

impl<T> Sender<T> {
    /// Queues `value`, or gives it back if the receiver is closed.
    pub fn send(&self, value: T) -> Result<(), T> {
        let waker = {
            let mut state = self.shared.lock();
            if state.closed {
                return Err(value);
            }
            state.queue.push_back(value);
            state.waker.take()
        };
        if let Some(w) = waker {
            w.wake();
        }
        Ok(())
    }

    /// True once the receiver is closed or dropped.
    pub fn is_closed(&self) -> bool {
        self.shared.lock().closed
    }
}

impl<T> Clone for Sender<T> {
    fn clone(&self) -> Self {
        self.shared.senders.fetch_add(1, Ordering::Relaxed);
        Sender {
            shared: Arc::clone(&self.shared),
        }
    }
}

impl<T> Drop for Sender<T> {
    fn drop(&mut self) {
        if self.shared.senders.fetch_sub(1, Ordering::AcqRel) == 1 {
            // The last sender: a waiting receiver must see the end. The receiver reads the
            // count and parks under the lock, so taking the waker under it cannot miss it.
            let waker = self.shared.lock().waker.take();
            if let Some(w) = waker {
                w.wake();
            }
        }
    }
}

impl<T> fmt::Debug for Sender<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sender").finish_non_exhaustive()
    }
}

/// The receiving half, owned by the connection task.
pub struct Receiver<T> {
    shared: Arc<Shared<T>>,
}

impl<T> Receiver<T> {
    /// The next value if one is queued.
    pub fn try_recv(&mut self) -> Option<T> {
        self.shared.lock().queue.pop_front()
    }

    /// The next value; `None` once every sender is gone and the queue is empty.
    pub async fn recv(&mut self) -> Option<T> {
        poll_fn(|cx| self.poll_recv(cx)).await
    }

    pub fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Option<T>> {
        let mut state = self.shared.lock();
        if let Some(value) = state.queue.pop_front() {
            return Poll::Ready(Some(value));
        }
        if self.shared.senders.load(Ordering::Acquire) == 0 {
            return Poll::Ready(None);
        }
        register(&mut state.waker, cx);
        Poll::Pending
    }

    /// Ready when [`Receiver::recv`] would not wait; takes nothing out.
    pub fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let mut state = self.shared.lock();
        if !state.queue.is_empty() || self.shared.senders.load(Ordering::Acquire) == 0 {
            return Poll::Ready(());
        }
        register(&mut state.waker, cx);
        Poll::Pending
    }

    /// Gives back the queue's room if it is empty (after a burst, for an idle connection).
    pub fn shrink(&mut self) {
        let mut state = self.shared.lock();
        if state.queue.is_empty() && state.queue.capacity() > 0 {
            state.queue = VecDeque::new();
        }
    }

    /// Refuses further sends and drops what is queued.
    pub fn close(&mut self) {
        let dropped = {
            let mut state = self.shared.lock();
            state.closed = true;
            state.waker = None;
            std::mem::take(&mut state.queue)
        };
        drop(dropped);
    }
}

impl<T> Drop for Receiver<T> {
    fn drop(&mut self) {
        self.close();
    }
}

fn register(slot: &mut Option<Waker>, cx: &Context<'_>) {
    match slot {
        Some(w) if w.will_wake(cx.waker()) => {}
        _ => *slot = Some(cx.waker().clone()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn delivers_in_order_then_ends_with_the_last_sender() {
        let (tx, mut rx) = channel();
        let tx2 = tx.clone();
        tx.send(1).unwrap();
        tx2.send(2).unwrap();
        assert_eq!(rx.try_recv(), Some(1));
        assert_eq!(rx.recv().await, Some(2));
        assert_eq!(rx.try_recv(), None);
        drop(tx);
        let waiter = tokio::spawn(async move { rx.recv().await });
        tokio::task::yield_now().await;
        drop(tx2);
        assert_eq!(waiter.await.unwrap(), None);
    }

    #[tokio::test]
    async fn wakes_a_waiting_receiver() {
        let (tx, mut rx) = channel();
        let waiter = tokio::spawn(async move {
            poll_fn(|cx| rx.poll_ready(cx)).await;
            rx.try_recv()
        });
        tokio::task::yield_now().await;
        tx.send("x").unwrap();
        assert_eq!(waiter.await.unwrap(), Some("x"));
    }

    #[test]
    fn a_closed_receiver_refuses_and_drops() {
        let (tx, mut rx) = channel();
        let item = Arc::new(());
        tx.send(item.clone()).unwrap();
        rx.close();
        assert_eq!(Arc::strong_count(&item), 1, "queued items are dropped on close");
        assert!(tx.is_closed());
        assert!(tx.send(item).is_err());
        drop(rx);
        let (tx, rx) = channel::<u8>();
        drop(rx);
        assert_eq!(tx.send(7), Err(7));
    }

    #[test]
    fn shrink_gives_back_room() {
        let (tx, mut rx) = channel();
        for i in 0..100 {
            tx.send(i).unwrap();
        }
        while rx.try_recv().is_some() {}
        rx.shrink();
        assert_eq!(rx.shared.lock().queue.capacity(), 0);
    }
}
