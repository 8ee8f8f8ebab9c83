//! The hyper floor: the least a proxy built on hyper can do, to price the HTTP stack apart
//! from triage's own work.
//!
//! hyper's HTTP/1 server in front, hyper's HTTP/1 client behind, and nothing between: every
//! accepted connection gets its own upstream connection (no pool to consult), the request
//! goes upstream as it came, and the answer comes back as it came, its body streamed frame by
//! frame (not read into a buffer, not parsed). One current-thread runtime, `TCP_NODELAY` on
//! both sides, as triage runs. What triage costs beyond this is triage; what this costs
//! beyond nginx is hyper and tokio. A yardstick, not a proxy: an upstream connection that
//! closes is not replaced, and its client connection's later requests are answered 502.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{Either, Empty};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::Result;

#[derive(clap::Args, Clone)]
pub struct FloorArgs {
    /// Address to listen on (port 0: any free port; the bound address is printed).
    #[arg(long, default_value = "127.0.0.1:8081")]
    pub listen: SocketAddr,
    /// The upstream (the mock) every request goes to.
    #[arg(long)]
    pub upstream: SocketAddr,
}

pub fn main(args: FloorArgs) -> Result<()> {
    crate::procs::raise_nofile_limit();
    crate::runtime()?.block_on(async move {
        let listener = crate::listen(args.listen).await?;
        loop {
            let stream = crate::accept(&listener).await;
            let _ = stream.set_nodelay(true);
            let upstream = args.upstream;
            tokio::spawn(async move {
                let Ok(sender) = connect(upstream).await else {
                    return;
                };
                let service = hyper::service::service_fn(move |req| {
                    let mut sender = sender.clone();
                    async move { forward(&mut sender, req).await }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .keep_alive(true)
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    })
}

/// One upstream connection, its driver spawned; the sender is shared by the downstream
/// connection's requests, which hyper serves one at a time.
async fn connect(upstream: SocketAddr) -> Result<Shared> {
    let stream = TcpStream::connect(upstream)
        .await
        .map_err(|e| e.to_string())?;
    let _ = stream.set_nodelay(true);
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    Ok(Shared(Arc::new(tokio::sync::Mutex::new(sender))))
}

/// Never contended: hyper serves a connection's requests one at a time.
#[derive(Clone)]
struct Shared(Arc<tokio::sync::Mutex<SendRequest<Incoming>>>);

type Body = Either<Incoming, Empty<Bytes>>;

async fn forward(
    sender: &mut Shared,
    req: Request<Incoming>,
) -> std::result::Result<Response<Body>, std::convert::Infallible> {
    let mut s = sender.0.lock().await;
    if s.ready().await.is_ok()
        && let Ok(resp) = s.send_request(req).await
    {
        return Ok(resp.map(Either::Left));
    }
    let mut r = Response::new(Either::Right(Empty::new()));
    *r.status_mut() = StatusCode::BAD_GATEWAY;
    Ok(r)
}
