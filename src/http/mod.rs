//! The HTTP API: routes, the middleware stack, and the accept loop.
//!
//! ```text
//! request ─► request id ─► trace span ─► metrics ─► JSON errors ─► panic guard ─► body limit
//!         ─► timeout
//!         ─► (CORS) ─► router ─► (drain refusal, API key: on API routes) ─► extractor
//!         ─► handler ─► service
//! ```
//!
//! Handlers read and validate the request, call [`crate::service::Service`], and shape its
//! answer; `error` maps the service's errors to statuses in one place.

pub mod error;
pub mod extract;
pub mod openapi;
pub mod routes;
pub mod schema;
pub mod server;
pub mod state;
pub mod types;

use std::time::{Duration, Instant};

use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::{header, HeaderName, HeaderValue, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Router};
use subtle::ConstantTimeEq;
use tower::ServiceBuilder;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::cors::{AllowOrigin, CorsLayer};
use tower_http::limit::RequestBodyLimitLayer;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::timeout::TimeoutLayer;
use tower_http::trace::{DefaultOnFailure, TraceLayer};
use tracing::Level;

pub use error::ApiError;
pub use state::AppState;

/// The header that carries the request id, in and out.
pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Builds the whole application: routes plus the middleware stack, in one place.
pub fn router(state: AppState) -> Router {
    let settings = state.settings().clone();
    let api = Router::new()
        .route("/v1/embed/image", post(routes::embed::image))
        .route("/v1/embed/text", post(routes::embed::text))
        .route("/v1/tokenize", post(routes::embed::tokenize_texts))
        .route("/v1/similarity", post(routes::scores::similarity))
        .route("/v1/classify", post(routes::scores::classify))
        .route("/v1/embeddings", post(routes::openai::embeddings))
        .route(
            "/v1/models",
            get(routes::openai::models).layer(Extension(routes::openai::StartedAt::now())),
        )
        .route("/embed", post(routes::tei::embed))
        // immich's protocol: with the API routes, so the API key and the drain apply.
        .route("/ping", get(routes::immich::ping))
        .route(
            "/predict",
            post(routes::immich::predict)
                .layer(Extension(routes::immich::Upstream::new(&settings))),
        )
        .route("/info", get(routes::ops::info))
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            require_api_key,
        ))
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            refuse_while_draining,
        ));
    // Probes, polled every few seconds, log their answers at debug (see `log_response`).
    let probes = Router::new()
        .route("/health", get(routes::ops::health))
        .route("/ready", get(routes::ops::ready))
        .route_layer(middleware::map_response(|mut response: Response| async {
            response.extensions_mut().insert(Probe);
            response
        }));
    let open = Router::new()
        .merge(probes)
        .route("/metrics", get(routes::ops::metrics))
        .merge(routes::page::routes())
        .merge(openapi::docs_router());

    let cors = (!settings.server.cors_origins.is_empty()).then(|| {
        let origins = &settings.server.cors_origins;
        let allow = if origins.iter().any(|o| o == "*") {
            AllowOrigin::any()
        } else {
            AllowOrigin::list(origins.iter().filter_map(|o| HeaderValue::from_str(o).ok()))
        };
        CorsLayer::new()
            .allow_origin(allow)
            .allow_methods([Method::GET, Method::POST])
            .allow_headers([header::CONTENT_TYPE, header::AUTHORIZATION])
    });

    // Order matters; the first layer listed is the outermost:
    // - the request id is set before anything logs, and copied to the response at the end;
    // - the trace span and the metrics see every answer, errors from inner layers included;
    // - `json_errors` rewrites the bodiless errors of the layers inside it (timeout, body
    //   limit, 404/405 from the router) into the API's JSON shape;
    // - panics in handlers become a JSON 500 instead of a dropped connection.
    let stack = ServiceBuilder::new()
        .layer(SetRequestIdLayer::new(REQUEST_ID, MakeRequestUuid))
        .layer(
            TraceLayer::new_for_http().make_span_with(|req: &Request| {
                let id = req
                    .headers()
                    .get(REQUEST_ID)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("-");
                tracing::info_span!("request", method = %req.method(), uri = %req.uri().path(), request_id = %id)
            })
            // One line per answered request; errors already log their cause where they arise.
            .on_response(log_response)
            .on_failure(DefaultOnFailure::new().level(Level::DEBUG)),
        )
        .layer(PropagateRequestIdLayer::new(REQUEST_ID))
        .layer(middleware::from_fn_with_state(state.clone(), record_metrics))
        .layer(middleware::from_fn_with_state(state.clone(), json_errors))
        .layer(CatchPanicLayer::custom(|_| {
            ApiError::Internal {
                log: "a request handler panicked".into(),
            }
            .into_response()
        }))
        .layer(RequestBodyLimitLayer::new(settings.limits.max_body_bytes))
        // axum's extractors (Multipart) would cap bodies at their own 2 MiB default;
        // `limits.max_body_bytes` above, and the extractors' reads, are the limit.
        .layer(DefaultBodyLimit::disable())
        .layer(TimeoutLayer::with_status_code(
            StatusCode::SERVICE_UNAVAILABLE,
            Duration::from_millis(settings.server.request_timeout_ms),
        ));

    let mut app = Router::new()
        .merge(api)
        .merge(open)
        .fallback(|| async { ApiError::NotFound });
    // CORS sits inside the stack (so its preflight answers are counted and traced) and only
    // exists when origins are configured.
    if let Some(cors) = cors {
        app = app.layer(cors);
    }
    // Outermost: errors on the OpenAI and TEI routes take their shape, whichever layer answered.
    app.layer(stack)
        .layer(middleware::from_fn(routes::openai::openai_errors))
        .layer(middleware::from_fn(routes::tei::tei_errors))
        .with_state(state)
}

/// Marks the answers of the probes (`/health`, `/ready`), which are logged at debug.
#[derive(Clone, Copy)]
struct Probe;

/// The trace layer's line per answer: at info, or at debug for the probes.
fn log_response<B>(response: &axum::http::Response<B>, latency: Duration, _span: &tracing::Span) {
    let status = response.status().as_u16();
    let latency_ms = latency.as_secs_f64() * 1000.0;
    if response.extensions().get::<Probe>().is_some() {
        tracing::debug!(status, latency_ms, "finished processing request");
    } else {
        tracing::info!(status, latency_ms, "finished processing request");
    }
}

/// Rejects API requests without the configured bearer key, comparing in constant time.
async fn require_api_key(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let Some(key) = state.settings().server.api_key.as_deref() else {
        return next.run(req).await;
    };
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    if bool::from(given.as_bytes().ct_eq(key.as_bytes())) {
        next.run(req).await
    } else {
        ApiError::Unauthorized.into_response()
    }
}

/// Refuses work that arrives once shutdown has begun (503 + Retry-After, which balancers retry
/// elsewhere). A request admitted before the signal is not refused later: it is served to the
/// end, its body upload included, and the drain waits for it.
async fn refuse_while_draining(
    State(state): State<AppState>,
    req: Request,
    next: Next,
) -> Response {
    if state.is_draining() {
        return ApiError::NotReady.into_response();
    }
    next.run(req).await
}

/// Counts every answer by route template (not raw path, to keep label cardinality bounded).
async fn record_metrics(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let started = Instant::now();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "unmatched".into());
    let method = req.method().to_string();
    let response = next.run(req).await;
    state.metrics().http_request(
        &route,
        &method,
        response.status().as_u16(),
        started.elapsed(),
    );
    response
}

/// Gives bodiless error responses from inner layers the API's JSON error shape.
async fn json_errors(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let response = next.run(req).await;
    let status = response.status();
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if (status.is_client_error() || status.is_server_error()) && !is_json {
        let limit = state.settings().limits.max_body_bytes;
        if let Some(error) = ApiError::from_status(status, limit) {
            return error.into_response();
        }
    }
    response
}
