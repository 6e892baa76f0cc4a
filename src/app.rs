//! Wiring for the `serve` command: settings -> model folder -> engine -> service -> server.
//!
//! The listener is bound by the caller (tests bind port 0). The server answers `/health` at
//! once and `/ready` only after the model has loaded and warmed up, so a load balancer never
//! sends traffic to a replica that is still loading.

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use tokio::net::TcpListener;

use crate::config::Settings;
use crate::engine::Engine;
use crate::http::{self, AppState};
use crate::hub::{self, HubOptions, RepoId};
use crate::service::{engine_settings, Service};
use crate::telemetry::Metrics;

/// Finds the model folder for `settings.model.source`: a local folder, or a hub repository
/// downloaded into the cache.
/// A folder that exists wins over a repository id of the same spelling.
pub async fn resolve_model(settings: &Settings) -> anyhow::Result<PathBuf> {
    let source = &settings.model.source;
    let folder = PathBuf::from(source);
    if folder.is_dir() {
        return Ok(folder);
    }
    let Some(repo) = RepoId::parse(source) else {
        anyhow::bail!(
            "model source `{source}` is neither a folder nor a Hugging Face repository id (owner/name)"
        );
    };
    let options = HubOptions::from_settings(settings, repo);
    hub::fetch_model(&options).await.with_context(|| {
        format!(
            "model source `{source}` is not a folder, so it was fetched as a Hugging Face repository (revision `{}`)",
            options.revision
        )
    })
}

/// Loads the model on the blocking pool, starts the service on it and hands that to the
/// state.
pub async fn load_model(settings: &Settings, state: &AppState) -> anyhow::Result<()> {
    let folder = resolve_model(settings).await?;
    let from_hub = folder.as_path() != std::path::Path::new(&settings.model.source);
    let engine_settings = engine_settings(&settings.model);
    let mut engine = tokio::task::spawn_blocking(move || Engine::load(&folder, &engine_settings))
        .await
        .context("the model loading task failed")?
        .context("loading the model")?;
    if from_hub {
        // A snapshot folder is named by its commit; answers name the repository instead.
        engine.folder.name = settings.model.source.clone();
    }
    let service = Service::start(Arc::new(engine), settings, state.metrics().clone())
        .context("starting the inference threads")?;
    state.set_service(service);
    tracing::info!("ready");
    Ok(())
}

/// Runs the service on `listener` until `shutdown` resolves. A model that fails to load ends
/// the process with the error instead of leaving a server that can never become ready.
pub async fn run(
    settings: Settings,
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let state = AppState::new(settings, Metrics::new());
    run_with_state(state, listener, shutdown).await
}

/// [`run`] with a state the caller keeps a handle to (tests use it to watch readiness and
/// metrics, and to inject faults).
pub async fn run_with_state(
    state: AppState,
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let settings = state.settings().clone();
    let app = http::router(state.clone());
    tracing::info!(addr = %listener.local_addr()?, model = %settings.model.source, "listening");
    let server = http::server::serve(listener, app, state.clone(), shutdown);
    let load = load_model(&settings, &state);
    tokio::pin!(server);
    tokio::select! {
        result = &mut server => return result.context("serving"),
        result = load => result?,
    }
    server.await.context("serving")
}
