//! Graceful shutdown of the open connections: on the signal each one finishes its request in
//! flight and closes, and the server waits until all have.
//!
//! hyper-util's `GracefulShutdown` does the same, but its watcher polls a
//! `watch::Receiver::changed()` future every time a connection's task wakes, three times a
//! 0.8 KB request. Each of those polls takes the lock of the `Notify` behind the channel,
//! one lock for all connections: 484 instructions a request (callgrind), and with
//! several workers a lock shared by every connection on the request path. Here the signal's
//! future is polled only when its own waker has fired: on other wake-ups the cost is an
//! `AtomicWaker` registration and a load, and nothing is shared between connections.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, Wake, Waker};

use futures_util::task::AtomicWaker;
use tokio::sync::watch;

/// The signal, and the count of connections still open (the channel's receivers).
pub struct Shutdown {
    tx: watch::Sender<()>,
}

impl Shutdown {
    pub fn new() -> Self {
        Shutdown {
            tx: watch::channel(()).0,
        }
    }

    /// Counts a connection in, at accept: a signal sent from now on reaches it.
    pub fn watcher(&self) -> Watcher {
        Watcher {
            rx: self.tx.subscribe(),
        }
    }

    /// Signal every connection, then wait until all have closed.
    pub async fn shutdown(self) {
        let _ = self.tx.send(());
        self.tx.closed().await;
    }
}

/// One accepted connection's place in the count, before it is served.
pub struct Watcher {
    rx: watch::Receiver<()>,
}

impl Watcher {
    /// Serve `conn` until it ends; on the signal, `finish` asks it to close once its request
    /// in flight is answered (hyper's `graceful_shutdown`).
    pub fn watch<C, F>(self, conn: C, finish: F) -> Watched<C, F>
    where
        C: Future,
        F: FnMut(Pin<&mut C>) + Unpin,
    {
        let mut rx = self.rx;
        Watched {
            conn: Box::pin(conn),
            finish,
            signal: Box::pin(async move {
                // A dropped sender is a signal too.
                let _ = rx.changed().await;
                rx
            }),
            woken: Arc::new(Woken {
                // The first poll polls the signal, which registers its waker.
                fired: AtomicBool::new(true),
                task: AtomicWaker::new(),
            }),
            signalled: None,
        }
    }
}

type Signal = Pin<Box<dyn Future<Output = watch::Receiver<()>> + Send>>;

/// A connection being served, with the shutdown signal beside it.
pub struct Watched<C, F> {
    conn: Pin<Box<C>>,
    finish: F,
    signal: Signal,
    woken: Arc<Woken>,
    /// After the signal: the receiver, held until the connection ends, so that
    /// [`Shutdown::shutdown`] waits for it.
    signalled: Option<watch::Receiver<()>>,
}

/// The signal future's own waker: notes that it fired, then wakes the connection's task.
struct Woken {
    fired: AtomicBool,
    task: AtomicWaker,
}

impl Wake for Woken {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.fired.store(true, Ordering::Release);
        self.task.wake();
    }
}

impl<C, F> Future for Watched<C, F>
where
    C: Future,
    F: FnMut(Pin<&mut C>) + Unpin,
{
    type Output = C::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<C::Output> {
        let this = self.get_mut();
        if this.signalled.is_none() {
            // Registered before the flag is read: a signal that fires after the read wakes
            // this task again.
            this.woken.task.register(cx.waker());
            if this.woken.fired.load(Ordering::Acquire)
                && this.woken.fired.swap(false, Ordering::AcqRel)
            {
                let waker = Waker::from(this.woken.clone());
                if let Poll::Ready(rx) = this.signal.as_mut().poll(&mut Context::from_waker(&waker))
                {
                    this.signalled = Some(rx);
                    (this.finish)(this.conn.as_mut());
                }
            }
        }
        this.conn.as_mut().poll(cx)
    }
}
