//! Listeners and connections: accept, set TCP_NODELAY, serve HTTP/1.1 keep-alive and h2c,
//! and drain on shutdown. Knows nothing about tasks or rules.

use std::convert::Infallible;
use std::future::Future;
use std::time::Duration;

use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::proxy::Body;

mod graceful;

/// Connection limits against slow and hostile clients.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// From accept to the first byte, and from the first byte to the end of the headers.
    pub header_read_timeout: Duration,
    /// A keep-alive connection with no request in flight is closed after this long.
    pub idle_timeout: Duration,
    pub max_headers: usize,
    /// Largest buffered request head (HTTP/1.1).
    pub max_header_bytes: usize,
    /// How long open connections may finish their in-flight requests after shutdown.
    pub grace: Duration,
}

/// Serve `handler` on `listener` until `shutdown` turns true, then let open connections
/// finish their in-flight requests for up to `grace`.
pub async fn serve<F, Fut>(
    listener: TcpListener,
    handler: F,
    mut shutdown: watch::Receiver<bool>,
    limits: Limits,
) where
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response<Body>> + Send + 'static,
{
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_headers(limits.max_headers)
        .max_buf_size(limits.max_header_bytes.max(8192))
        .keep_alive(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(Some(limits.idle_timeout))
        .keep_alive_timeout(limits.header_read_timeout)
        .max_header_list_size(limits.max_header_bytes.min(u32::MAX as usize) as u32);
    let open = graceful::Shutdown::new();

    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, _peer) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        // EMFILE and friends: back off instead of spinning.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let handler = handler.clone();
                let builder = builder.clone();
                let watcher = open.watcher();
                let first_byte = limits.header_read_timeout;
                tokio::spawn(async move {
                    // hyper's header timer starts only once it reads a head; the h1/h2
                    // sniffing before it has none. A client that connects and sends
                    // nothing is closed here instead of holding a socket forever.
                    let mut probe = [0u8; 1];
                    match tokio::time::timeout(first_byte, stream.peek(&mut probe)).await {
                        Ok(Ok(n)) if n > 0 => {}
                        _ => return,
                    }
                    let service = service_fn(move |req| {
                        let fut = handler(req);
                        async move { Ok::<_, Infallible>(fut.await) }
                    });
                    let conn = builder.serve_connection(TokioIo::new(stream), service);
                    let conn = watcher.watch(conn, |conn| conn.graceful_shutdown());
                    if let Err(e) = conn.await {
                        tracing::debug!(error = %e, "connection ended with an error");
                    }
                });
            }
            changed = shutdown.changed() => {
                if changed.is_err() || *shutdown.borrow() {
                    break;
                }
            }
        }
    }
    drop(listener);
    let grace = limits.grace;
    if tokio::time::timeout(grace, open.shutdown()).await.is_err() {
        tracing::warn!(
            grace_ms = grace.as_millis() as u64,
            "connections still open after the shutdown deadline"
        );
    }
}
