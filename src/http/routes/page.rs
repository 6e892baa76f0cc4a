//! The web page at `/` and its assets under `/static/`: a small tool to rank dropped images
//! against a query and to classify them zero-shot, written against the public API only. The
//! files live in `web/` and are compiled into the binary, so there is no build step and nothing
//! is fetched from elsewhere; the Content-Security-Policy allows this origin only (plus `blob:`
//! images, the previews of the user's own files).

use axum::extract::Path;
use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

use crate::http::error::ApiError;
use crate::http::state::AppState;

const INDEX_HTML: &str = include_str!("../../../web/index.html");
const APP_JS: &str = include_str!("../../../web/app.js");
const STYLE_CSS: &str = include_str!("../../../web/style.css");
const ICON_SVG: &str = include_str!("../../../web/icon.svg");

/// Scripts, styles and requests from this origin only; images also from `blob:` (previews).
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
    style-src 'self'; img-src 'self' blob:; connect-src 'self'; base-uri 'none'; \
    form-action 'none'; frame-ancestors 'none'";

/// The page's routes, open (the page asks for the API key itself when the API needs one).
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/", get(index))
        .route("/static/{file}", get(asset))
}

/// `GET /`: the page.
pub async fn index() -> Response {
    with_headers("text/html; charset=utf-8", INDEX_HTML, "no-cache")
}

/// `GET /static/{file}`: the page's script, stylesheet and icon.
pub async fn asset(Path(file): Path<String>) -> Result<Response, ApiError> {
    let (content_type, body) = match file.as_str() {
        "app.js" => ("text/javascript; charset=utf-8", APP_JS),
        "style.css" => ("text/css; charset=utf-8", STYLE_CSS),
        "icon.svg" => ("image/svg+xml", ICON_SVG),
        _ => return Err(ApiError::NotFound),
    };
    // Assets change only with the binary; `no-cache` revalidates cheaply after an upgrade.
    Ok(with_headers(content_type, body, "no-cache"))
}

fn with_headers(content_type: &'static str, body: &'static str, cache: &'static str) -> Response {
    let mut response = body.into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static(cache));
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    response
}
