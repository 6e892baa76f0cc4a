//! The accept loop: HTTP/1.1 and HTTP/2 on a listener the caller bound, with a header read
//! timeout (a client trickling its headers is cut off instead of holding a connection
//! forever), and graceful shutdown: on the signal readiness turns to 503 and new work is refused
//! with 503 (the listener stays open for that), every connection finishes the requests it has
//! in flight, then the listener closes and the function returns.

use std::future::Future;
use std::time::Duration;

use axum::body::Body;
use axum::extract::Request;
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tower::ServiceExt;

use super::state::AppState;

/// Serves `app` on `listener` until `shutdown` resolves, then drains: no new work (503), in-flight
/// requests answered (for at most `server.shutdown_grace_ms`), then the listener closes.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    state: AppState,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_millis(
            state.settings().server.header_read_timeout_ms,
        ));
    builder.http2().timer(TokioTimer::new());
    let graceful = GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, remote) = match accepted {
                    Ok(c) => c,
                    Err(e) => {
                        // Out of file descriptors and the like: back off instead of spinning.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let service = TowerToHyperService::new(
                    app.clone().map_request(|req: Request<Incoming>| req.map(Body::new)),
                );
                let conn = builder
                    .serve_connection_with_upgrades(TokioIo::new(stream), service)
                    .into_owned();
                let conn = graceful.watch(conn);
                tokio::spawn(async move {
                    if let Err(e) = conn.await {
                        tracing::debug!(%remote, error = %e, "connection ended with an error");
                    }
                });
            }
            () = &mut shutdown => break,
        }
    }
    // Draining: `/ready` answers 503 so balancers take this replica out, and new work is
    // refused with 503 + Retry-After (nginx and most balancers retry it on another replica).
    // The listener stays open meanwhile, so probes and late requests get that answer instead
    // of a refused connection; it closes once the connections that were open at the signal
    // have finished their requests (or the grace period ends).
    state.start_draining();
    let grace = Duration::from_millis(state.settings().server.shutdown_grace_ms);
    tracing::info!(
        grace_ms = grace.as_millis() as u64,
        "shutting down: finishing in-flight requests"
    );
    let drained = graceful.shutdown();
    let mut drained = std::pin::pin!(drained);
    let deadline = tokio::time::sleep(grace);
    let mut deadline = std::pin::pin!(deadline);
    let mut late = tokio::task::JoinSet::new();
    let mut late_builder = auto::Builder::new(TokioExecutor::new());
    late_builder
        .http1()
        .keep_alive(false)
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_millis(
            state.settings().server.header_read_timeout_ms,
        ));
    let mut serve_late = |stream: tokio::net::TcpStream| {
        let service = TowerToHyperService::new(
            app.clone()
                .map_request(|req: Request<Incoming>| req.map(Body::new)),
        );
        let conn = late_builder
            .serve_connection(TokioIo::new(stream), service)
            .into_owned();
        late.spawn(async move {
            let _ = conn.await;
        });
    };
    loop {
        tokio::select! {
            () = &mut drained => {
                tracing::info!("all connections closed");
                break;
            }
            () = &mut deadline => {
                tracing::warn!("shutdown grace period elapsed with requests still open");
                break;
            }
            accepted = listener.accept() => {
                if let Ok((stream, _)) = accepted {
                    serve_late(stream);
                }
            }
        }
    }
    // Connections already waiting in the backlog get their answer, not a reset on close.
    while let Ok(Ok((stream, _))) =
        tokio::time::timeout(Duration::from_millis(20), listener.accept()).await
    {
        serve_late(stream);
    }
    drop(listener);
    // Connections accepted during the drain only get 503s and probe answers: a moment suffices.
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        while late.join_next().await.is_some() {}
    })
    .await;
    Ok(())
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
