//! The accept loop: HTTP/1.1 and HTTP/2 on a listener the caller bound, with a header read
//! timeout (a client trickling its headers is cut off instead of holding a connection
//! forever), and a graceful drain on the shutdown signal.
//!
//! The drain never closes a connection on which a request may be on its way, because a client
//! sees that as a reset or an incomplete message for a request it did nothing wrong with:
//!
//! ```text
//! signal ─► Draining: /ready and new work answer 503 + Retry-After (refused by the routes);
//!           requests admitted before the signal run to completion, body upload included;
//!           every HTTP/1 answer carries `Connection: close`, so each connection is retired
//!           right after a response; HTTP/2 connections get GOAWAY (their open streams finish)
//!        ─► no request in flight ─► Closing: idle keep-alive connections are closed; one that
//!           has not sent its first request yet gets a moment to send it (and its 503)
//!        ─► those connections gone (or the grace period over) ─► the listener closes
//! ```
//!
//! The listener stays open until the end, so a probe or a late request gets its 503 instead
//! of a refused connection while the replica still has work.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::Request;
use axum::http::{header, HeaderValue, Version};
use axum::middleware::{self, Next};
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::time::Instant;
use tower::ServiceExt;

use super::state::AppState;

/// How long a connection that has not sent a single request may stay open once the drain is
/// closing connections: long enough for a client that just connected to send its request (and
/// get its 503), short enough that an idle pre-opened connection does not hold the exit.
const FIRST_REQUEST_ALLOWANCE: Duration = Duration::from_secs(1);

/// The drain's phases, broadcast to every connection task.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Serving,
    /// The signal came: HTTP/2 connections get GOAWAY; HTTP/1 ones are retired by their next
    /// response (`Connection: close`).
    Draining,
    /// No request is in flight: idle connections close.
    Closing,
}

/// What a connection has spoken so far, learnt from its first request.
const PROTO_UNKNOWN: u8 = 0;
const PROTO_HTTP1: u8 = 1;
const PROTO_HTTP2: u8 = 2;

/// Counts of what is open, shared by the accept loop, the connection tasks and the request
/// layer.
#[derive(Default)]
struct Open {
    /// Requests between the service being called and their response being produced.
    requests: AtomicUsize,
    /// Connections being served.
    connections: AtomicUsize,
    /// Bumped on every change of either count, so the accept loop can wait for zero.
    changed: tokio::sync::Notify,
}

impl Open {
    fn enter(self: &Arc<Self>, count: fn(&Open) -> &AtomicUsize) -> OpenGuard {
        count(self).fetch_add(1, Ordering::SeqCst);
        OpenGuard {
            open: self.clone(),
            count,
        }
    }
}

/// Counts one request or connection out when dropped, however it ends.
struct OpenGuard {
    open: Arc<Open>,
    count: fn(&Open) -> &AtomicUsize,
}

impl Drop for OpenGuard {
    fn drop(&mut self) {
        (self.count)(&self.open).fetch_sub(1, Ordering::SeqCst);
        self.open.changed.notify_waiters();
    }
}

/// Serves `app` on `listener` until `shutdown` resolves, then drains as the module doc says,
/// within `server.shutdown_grace_ms`, and returns.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    state: AppState,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let open = Arc::new(Open::default());
    let (phase_tx, phase_rx) = watch::channel(Phase::Serving);
    let app = app.layer(middleware::from_fn({
        let open = open.clone();
        let state = state.clone();
        move |req: Request, next: Next| {
            let guard = open.enter(|o| &o.requests);
            let state = state.clone();
            async move {
                let http1 = req.version() <= Version::HTTP_11;
                let mut response = next.run(req).await;
                // Checked when the answer is ready: a request admitted before the signal that
                // finishes after it retires its connection too.
                if http1 && state.is_draining() {
                    response
                        .headers_mut()
                        .insert(header::CONNECTION, HeaderValue::from_static("close"));
                }
                drop(guard);
                response
            }
        }
    }));
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_millis(
            state.settings().server.header_read_timeout_ms,
        ));
    builder.http2().timer(TokioTimer::new());
    let spawn = |stream: TcpStream| {
        let _ = stream.set_nodelay(true);
        let info = Arc::new(ConnInfo::default());
        let seen = info.clone();
        let service =
            TowerToHyperService::new(app.clone().map_request(move |req: Request<Incoming>| {
                let proto = if req.version() == Version::HTTP_2 {
                    PROTO_HTTP2
                } else {
                    PROTO_HTTP1
                };
                if seen.proto.swap(proto, Ordering::SeqCst) == PROTO_UNKNOWN {
                    seen.spoke.notify_one();
                }
                req.map(Body::new)
            }));
        let conn = builder
            .serve_connection_with_upgrades(TokioIo::new(stream), service)
            .into_owned();
        let guard = open.enter(|o| &o.connections);
        tokio::spawn(drive(
            conn,
            |c| c.graceful_shutdown(),
            info,
            phase_rx.clone(),
            guard,
        ));
    };

    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => spawn(stream),
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            () = &mut shutdown => break,
        }
    }

    // Draining: `/ready` answers 503 so balancers take this replica out, and new work is
    // refused with 503 + Retry-After, which balancers retry on another replica.
    state.start_draining();
    let _ = phase_tx.send(Phase::Draining);
    let grace = Duration::from_millis(state.settings().server.shutdown_grace_ms);
    let deadline = Instant::now() + grace;
    tracing::info!(
        grace_ms = grace.as_millis() as u64,
        "shutting down: finishing in-flight requests"
    );
    let no_requests = |o: &Open| o.requests.load(Ordering::SeqCst) == 0;
    let mut finished = accept_until(&listener, &open, no_requests, deadline, &spawn).await;
    if finished {
        tracing::info!("no request in flight; closing idle connections");
    }
    let _ = phase_tx.send(Phase::Closing);
    let no_connections = |o: &Open| o.connections.load(Ordering::SeqCst) == 0;
    finished = finished && accept_until(&listener, &open, no_connections, deadline, &spawn).await;
    // Connections already waiting in the backlog get their answer, not a reset on close.
    while let Ok(Ok((stream, _))) =
        tokio::time::timeout(Duration::from_millis(10), listener.accept()).await
    {
        spawn(stream);
    }
    drop(listener);
    let last = (Instant::now() + FIRST_REQUEST_ALLOWANCE * 2).min(deadline.max(Instant::now()));
    finished = wait_until(&open, no_connections, last).await && finished;
    if finished {
        tracing::info!("all connections closed");
    } else {
        tracing::warn!(
            requests = open.requests.load(Ordering::SeqCst),
            connections = open.connections.load(Ordering::SeqCst),
            "shutdown grace period elapsed with requests or connections still open"
        );
    }
    Ok(())
}

/// Accepts (and serves) connections until `done` holds for the open counts or `deadline`
/// passes; true when `done` was reached.
async fn accept_until(
    listener: &TcpListener,
    open: &Open,
    done: impl Fn(&Open) -> bool,
    deadline: Instant,
    spawn: &impl Fn(TcpStream),
) -> bool {
    loop {
        // Registered before the check, so a change between the two is not missed.
        let changed = open.changed.notified();
        if done(open) {
            return true;
        }
        tokio::select! {
            () = changed => {}
            () = tokio::time::sleep_until(deadline) => return done(open),
            accepted = listener.accept() => {
                if let Ok((stream, _)) = accepted {
                    spawn(stream);
                }
            }
        }
    }
}

/// Waits until `done` holds for the open counts or `deadline` passes; true when it holds.
async fn wait_until(open: &Open, done: impl Fn(&Open) -> bool, deadline: Instant) -> bool {
    loop {
        let changed = open.changed.notified();
        if done(open) {
            return true;
        }
        tokio::select! {
            () = changed => {}
            () = tokio::time::sleep_until(deadline) => return done(open),
        }
    }
}

/// Serves one connection, applying the drain's phases to it: HTTP/2 gets GOAWAY when the drain
/// starts; once it is closing, a connection that has spoken closes when idle (hyper finishes a
/// request in progress first), and one that has not sent a request yet gets
/// [`FIRST_REQUEST_ALLOWANCE`] from the moment it was accepted.
async fn drive<C: Future>(
    conn: C,
    shutdown: impl Fn(Pin<&mut C>),
    info: Arc<ConnInfo>,
    mut phase: watch::Receiver<Phase>,
    guard: OpenGuard,
) {
    let accepted = Instant::now();
    let mut conn = std::pin::pin!(conn);
    let mut shut = false;
    loop {
        let current = *phase.borrow_and_update();
        let spoken = info.proto.load(Ordering::SeqCst);
        let act_at = match (current, spoken) {
            _ if shut => None,
            (Phase::Serving, _) | (Phase::Draining, PROTO_UNKNOWN | PROTO_HTTP1) => None,
            (Phase::Closing, PROTO_UNKNOWN) => Some(accepted + FIRST_REQUEST_ALLOWANCE),
            (Phase::Draining | Phase::Closing, _) => Some(Instant::now()),
        };
        let act = async {
            match act_at {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = conn.as_mut() => break,
            changed = phase.changed() => {
                if changed.is_err() {
                    // The accept loop has returned: the server is gone.
                    break;
                }
            }
            // Its first request tells what the connection speaks, which changes what a phase
            // asks of it.
            () = info.spoke.notified(), if spoken == PROTO_UNKNOWN => {}
            () = act => {
                // Unless it spoke while its allowance ran (then look again), retire it: hyper
                // closes an idle connection, and lets one with a request in progress finish
                // that request first; a silent one is dropped.
                if info.proto.load(Ordering::SeqCst) == spoken {
                    shutdown(conn.as_mut());
                    shut = true;
                }
            }
        }
    }
    drop(guard);
}

/// What the drain knows of one connection.
#[derive(Default)]
struct ConnInfo {
    /// `PROTO_*`: unknown until its first request.
    proto: AtomicU8,
    /// Notified once, at its first request.
    spoke: tokio::sync::Notify,
}

/// Resolves on SIGTERM or Ctrl-C.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => tracing::info!("received Ctrl-C"),
        () = terminate => tracing::info!("received SIGTERM"),
    }
}
