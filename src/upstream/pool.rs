//! Keep-alive HTTP/1.1 connections to the model servers: one list of idle connections per
//! authority, most recently used first.
//!
//! This replaces hyper-util's pooled client (11.6k instructions of a 0.8 KB request went to
//! it beyond hyper's own connection work, callgrind) and keeps what of its behaviour
//! matters here: only a connection ready for another request is pooled or taken (one the
//! model server closed, or one still busy, is dropped), a request hyper hands back unsent
//! goes again on the next idle connection or a new one, and each address of a name gets
//! its share of the connect timeout. A request that was written and then lost is never
//! resent: the model may have run it.
//!
//! The lock (tokio's, uncontended in the common case) guards a push or a pop and is never
//! held across anything else; reloads and the metrics exporter never take it.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::uri::Authority;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::sync::Mutex;

/// Idle connections kept per authority; beyond that, a returned connection is closed.
const MAX_IDLE_PER_AUTHORITY: usize = 256;

type Sender = SendRequest<Full<Bytes>>;

pub struct Pool {
    idle: Mutex<Vec<(Authority, VecDeque<Idle>)>>,
    connect_timeout: Duration,
    idle_timeout: Duration,
}

struct Idle {
    sender: Sender,
    since: Instant,
}

/// A connection a response came back on; [`Pool::put_back`] it once the body is read.
pub struct Conn {
    sender: Sender,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("connecting to {0}: timed out")]
    ConnectTimeout(Authority),
    #[error("connecting to {0}")]
    Connect(Authority, #[source] std::io::Error),
    #[error("HTTP/1.1 handshake with {0}")]
    Handshake(Authority, #[source] hyper::Error),
    #[error("exchange with the upstream")]
    Send(#[source] hyper::Error),
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("connect_timeout", &self.connect_timeout)
            .field("idle_timeout", &self.idle_timeout)
            .finish_non_exhaustive()
    }
}

impl Pool {
    pub fn new(connect_timeout: Duration, idle_timeout: Duration) -> Self {
        Pool {
            idle: Mutex::new(Vec::new()),
            connect_timeout,
            idle_timeout,
        }
    }

    /// Send `req` (origin-form URI, `host` set) to `authority`: on an idle connection when
    /// there is one, else on a new one.
    pub async fn send(
        &self,
        authority: &Authority,
        mut req: Request<Full<Bytes>>,
    ) -> Result<(Response<Incoming>, Conn), Error> {
        while let Some(mut sender) = self.checkout(authority).await {
            match sender.try_send_request(req).await {
                Ok(resp) => return Ok((resp, Conn { sender })),
                Err(mut e) => match e.take_message() {
                    // Never written: closed under us. Again, on the next one.
                    Some(unsent) => req = unsent,
                    None => return Err(Error::Send(e.into_error())),
                },
            }
        }
        // Boxed: resolving and dialing would otherwise add their state to every request's
        // future, and only a request that finds no idle connection awaits them.
        let mut sender = Box::pin(self.connect(authority)).await?;
        let resp = sender.send_request(req).await.map_err(Error::Send)?;
        Ok((resp, Conn { sender }))
    }

    /// Give a connection back once its response body has been read to the end. Only one
    /// ready for the next request is kept: one still busy (say, still sending a request
    /// body the server answered early) is closed rather than left for a request to wait on.
    pub async fn put_back(&self, authority: &Authority, conn: Conn) {
        if !conn.sender.is_ready() {
            return;
        }
        let now = Instant::now();
        let mut idle = self.idle.lock().await;
        // The oldest sit at the front of each list: let the ones idle too long go, for every
        // authority, so that those of an upstream no longer used (its URL changed) go too,
        // and its entry with them.
        idle.retain_mut(|(a, list)| {
            while list
                .front()
                .is_some_and(|c| now.duration_since(c.since) > self.idle_timeout)
            {
                list.pop_front();
            }
            !list.is_empty() || a == authority
        });
        let at = idle
            .iter()
            .position(|(a, _)| a == authority)
            .unwrap_or_else(|| {
                idle.push((authority.clone(), VecDeque::new()));
                idle.len() - 1
            });
        let list = &mut idle[at].1;
        if list.len() < MAX_IDLE_PER_AUTHORITY {
            list.push_back(Idle {
                sender: conn.sender,
                since: now,
            });
        }
    }

    /// The most recently used idle connection that is still ready and fresh.
    async fn checkout(&self, authority: &Authority) -> Option<Sender> {
        let mut idle = self.idle.lock().await;
        let list = &mut idle.iter_mut().find(|(a, _)| a == authority)?.1;
        while let Some(c) = list.pop_back() {
            if c.since.elapsed() > self.idle_timeout {
                // Everything before it is older still.
                list.clear();
                return None;
            }
            if c.sender.is_ready() {
                return Some(c.sender);
            }
        }
        None
    }

    async fn connect(&self, authority: &Authority) -> Result<Sender, Error> {
        let host = authority.host();
        // An IPv6 literal comes bracketed in a URL, not in a socket address.
        let host = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host);
        let port = authority.port_u16().unwrap_or(80);
        let stream = self.dial(authority, host, port).await?;
        // Headers and body go out in one write already; no Nagle delay on top.
        stream
            .set_nodelay(true)
            .map_err(|e| Error::Connect(authority.clone(), e))?;
        let (sender, connection) = http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| Error::Handshake(authority.clone(), e))?;
        let authority = authority.clone();
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(%authority, error = %e, "upstream connection ended");
            }
        });
        Ok(sender)
    }

    /// Resolve, then try each address in turn with an equal share of what is left of the
    /// connect timeout, as hyper-util's connector did: a dead first address (a gone pod
    /// still in DNS) does not eat the whole budget of the live ones.
    async fn dial(&self, authority: &Authority, host: &str, port: u16) -> Result<TcpStream, Error> {
        let started = Instant::now();
        let addrs: Vec<SocketAddr> =
            tokio::time::timeout(self.connect_timeout, tokio::net::lookup_host((host, port)))
                .await
                .map_err(|_| Error::ConnectTimeout(authority.clone()))?
                .map_err(|e| Error::Connect(authority.clone(), e))?
                .collect();
        // The lookup counts against the same budget.
        let left = self.connect_timeout.saturating_sub(started.elapsed());
        connect_any(authority, &addrs, left).await
    }
}

/// The first of `addrs` that accepts, each given an equal share of `budget`.
async fn connect_any(
    authority: &Authority,
    addrs: &[SocketAddr],
    budget: Duration,
) -> Result<TcpStream, Error> {
    let timed_out = || Error::ConnectTimeout(authority.clone());
    let share = budget / u32::try_from(addrs.len().max(1)).unwrap_or(u32::MAX);
    let mut last = Error::Connect(
        authority.clone(),
        std::io::Error::new(std::io::ErrorKind::NotFound, "resolved to no address"),
    );
    for addr in addrs {
        match tokio::time::timeout(share, TcpStream::connect(addr)).await {
            Ok(Ok(stream)) => return Ok(stream),
            Ok(Err(e)) => last = Error::Connect(authority.clone(), e),
            Err(_) => last = timed_out(),
        }
    }
    Err(last)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A server answering every request on a connection with an empty 200; counts accepts.
    async fn server() -> (Authority, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let authority = listener.local_addr().unwrap().to_string().parse().unwrap();
        let accepted = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let count = accepted.clone();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                tokio::spawn(async move {
                    let mut buf = [0u8; 4096];
                    // Requests here have no body: one read, one answer.
                    while let Ok(n) = stream.read(&mut buf).await {
                        let answer = b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n";
                        if n == 0 || stream.write_all(answer).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        (authority, accepted)
    }

    async fn exchange(pool: &Pool, authority: &Authority) {
        let req = Request::get("/")
            .header("host", authority.as_str())
            .body(Full::new(Bytes::new()))
            .unwrap();
        let (resp, conn) = pool.send(authority, req).await.unwrap();
        assert_eq!(resp.status(), 200);
        resp.into_body().collect().await.unwrap();
        pool.put_back(authority, conn).await;
    }

    #[tokio::test]
    async fn idle_connections_are_reused_until_they_have_idled_too_long() {
        let (authority, accepted) = server().await;
        let pool = Pool::new(Duration::from_secs(1), Duration::from_millis(200));
        let accepted = || accepted.load(std::sync::atomic::Ordering::SeqCst);
        for _ in 0..5 {
            exchange(&pool, &authority).await;
        }
        assert_eq!(accepted(), 1, "one connection serves them all");
        tokio::time::sleep(Duration::from_millis(300)).await;
        exchange(&pool, &authority).await;
        assert_eq!(accepted(), 2, "the idle one expired; a new one was made");
        assert_eq!(pool.idle.lock().await[0].1.len(), 1, "and only it is kept");

        // An authority no longer used: its idle connection, and its entry, go when another
        // one's connection returns.
        let (other, _) = server().await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        exchange(&pool, &other).await;
        let idle = pool.idle.lock().await;
        let kept = |a: &Authority| idle.iter().find(|(k, _)| k == a).map(|(_, l)| l.len());
        assert_eq!(kept(&authority), None);
        assert_eq!(kept(&other), Some(1));
    }

    /// The server answers before reading the request body (a 413, say) and keeps the
    /// connection: hyper is still sending the body, so the connection is not ready and must
    /// not be pooled, or the next request would wait on it.
    #[tokio::test]
    async fn a_connection_still_sending_is_not_pooled() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let authority: Authority = listener.local_addr().unwrap().to_string().parse().unwrap();
        tokio::spawn(async move {
            let mut open = Vec::new();
            while let Ok((mut stream, _)) = listener.accept().await {
                let mut buf = [0u8; 1024];
                let _ = stream.read(&mut buf).await;
                let _ = stream
                    .write_all(b"HTTP/1.1 413 Payload Too Large\r\ncontent-length: 0\r\n\r\n")
                    .await;
                open.push(stream); // never read again, never closed
            }
        });
        let pool = Pool::new(Duration::from_secs(1), Duration::from_secs(60));
        for _ in 0..2 {
            let req = Request::post("/")
                .header("host", authority.as_str())
                .body(Full::new(Bytes::from(vec![b'x'; 16 << 20])))
                .unwrap();
            let sent = tokio::time::timeout(Duration::from_secs(5), pool.send(&authority, req));
            let (resp, conn) = sent.await.expect("no wait on a busy connection").unwrap();
            assert_eq!(resp.status(), 413);
            resp.into_body().collect().await.unwrap();
            pool.put_back(&authority, conn).await;
        }
        assert!(pool.idle.lock().await.iter().all(|(_, l)| l.is_empty()));
    }

    /// A name with several addresses: a refused one is passed over for the next.
    #[tokio::test]
    async fn every_address_of_a_name_is_tried() {
        let (live, accepted) = server().await;
        let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let dead = closed.local_addr().unwrap();
        drop(closed);
        let live_addr: SocketAddr = live.as_str().parse().unwrap();
        let stream = connect_any(&live, &[dead, live_addr], Duration::from_secs(2)).await;
        assert_eq!(stream.unwrap().peer_addr().unwrap(), live_addr);
        let only_dead = connect_any(&live, &[dead], Duration::from_secs(2)).await;
        assert!(
            matches!(only_dead, Err(Error::Connect(..))),
            "{only_dead:?}"
        );
        assert!(matches!(
            connect_any(&live, &[], Duration::from_secs(2)).await,
            Err(Error::Connect(..))
        ));
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 1);
    }
}
