//! The state every handler receives: settings, metrics, the service once the model has
//! loaded, and whether the server is draining.
//!
//! The server binds and answers `/health` before the model is loaded; [`AppState::service`]
//! is `NotReady` until [`AppState::set_service`] is called.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

use super::error::ApiError;
use crate::config::Settings;
use crate::service::Service;
use crate::telemetry::Metrics;

struct Inner {
    settings: Settings,
    metrics: Metrics,
    service: OnceLock<Service>,
    draining: AtomicBool,
}

/// A cheap, cloneable handle to the app's shared state.
#[derive(Clone)]
pub struct AppState(Arc<Inner>);

impl AppState {
    /// State with no model yet: health answers, everything else is 503 until `set_service`.
    pub fn new(settings: Settings, metrics: Metrics) -> AppState {
        metrics.set_ready(false);
        AppState(Arc::new(Inner {
            settings,
            metrics,
            service: OnceLock::new(),
            draining: AtomicBool::new(false),
        }))
    }

    /// Serves `service` from now on and becomes ready.
    pub fn set_service(&self, service: Service) {
        if self.0.service.set(service).is_err() {
            tracing::warn!("set_service called twice; keeping the first model");
        }
        self.0.metrics.set_ready(self.ready());
    }

    /// The service, or `NotReady` while the model loads. Draining does not refuse here: new
    /// work is refused when it arrives (see `http::refuse_while_draining`), and work admitted
    /// before the signal must still be answered, its body upload included.
    pub fn service(&self) -> Result<&Service, ApiError> {
        self.0.service.get().ok_or(ApiError::NotReady)
    }

    /// True when the model is loaded and warmed up, both towers are healthy (live workers, and
    /// not in the cooldown after a run of failed batches: see `Batcher::healthy`), and the
    /// server is not shutting down. Keeps the `ready` gauge in step with what `/ready` says.
    pub fn ready(&self) -> bool {
        let ready = !self.is_draining() && self.0.service.get().is_some_and(Service::healthy);
        self.0.metrics.set_ready(ready);
        ready
    }

    /// Marks the server as shutting down: readiness fails so load balancers stop sending, and
    /// new work is refused while admitted work finishes.
    pub fn start_draining(&self) {
        self.0.draining.store(true, Ordering::SeqCst);
        self.0.metrics.set_ready(false);
    }

    /// True once shutdown has begun.
    pub fn is_draining(&self) -> bool {
        self.0.draining.load(Ordering::SeqCst)
    }

    /// The settings the server runs with.
    pub fn settings(&self) -> &Settings {
        &self.0.settings
    }

    /// The metrics registry.
    pub fn metrics(&self) -> &Metrics {
        &self.0.metrics
    }
}
