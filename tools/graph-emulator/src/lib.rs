//! `graph-emulator`: a Microsoft Graph + identity platform test double (DESIGN §6, §11).
//!
//! Start it in-process with [`start`], or run the `graph-emulator` binary.

mod fixture;
mod server;
mod store;
mod synth;

pub use fixture::{Fixture, FixtureError, FixtureEvent, FixtureGroup, FixtureMessage, FixtureUser};
pub use server::{CONSENTED_ROLES, GLOBAL_ADMIN_TEMPLATE, GRAPH_APP_ID};
pub use synth::{SyntheticOptions, SyntheticTenant, TENANT_DOMAIN, default_now, synthetic_tenant};

use chrono::{DateTime, Utc};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};

/// Runtime options of the emulator.
#[derive(Debug, Clone)]
pub struct EmulatorOptions {
    /// The emulator's clock ("now"): messages received after it are not visible yet.
    pub now: DateTime<Utc>,
    /// Sleep injected into every /v1.0 request (while it counts as in flight).
    pub latency_ms: u64,
    /// More concurrent requests than this for one mailbox get 429 (default 4).
    pub max_in_flight_per_mailbox: usize,
    /// After this many admitted requests for a mailbox, further requests get 429.
    pub request_budget_per_mailbox: Option<u64>,
    /// Accepted client id (any when empty).
    pub client_id: String,
    /// Accepted client secret (any non-empty when empty).
    pub client_secret: String,
}

impl Default for EmulatorOptions {
    fn default() -> Self {
        EmulatorOptions {
            now: default_now(),
            latency_ms: 0,
            max_in_flight_per_mailbox: 4,
            request_budget_per_mailbox: None,
            client_id: String::new(),
            client_secret: String::new(),
        }
    }
}

/// A running emulator (the server task lives on the tokio runtime it was started on).
pub struct Emulator {
    /// `http://127.0.0.1:PORT`
    pub url: String,
    app: Arc<server::App>,
    task: tokio::task::JoinHandle<()>,
}

impl Emulator {
    /// `{url}/v1.0`
    pub fn graph_base_url(&self) -> String {
        format!("{}/v1.0", self.url)
    }
    /// `{url}` (token endpoint is `{url}/{tenant}/oauth2/v2.0/token`)
    pub fn login_base_url(&self) -> String {
        self.url.clone()
    }
    pub fn tenant_id(&self) -> String {
        self.app.tenant_id()
    }
    /// The current fixture (including activity added at runtime, minus removed items).
    pub fn fixture(&self) -> Fixture {
        self.app.fixture()
    }
    /// Same JSON as `GET /_emulator/counters`.
    pub fn counters(&self) -> serde_json::Value {
        self.app.counters()
    }
    /// The emulator's clock.
    pub fn now(&self) -> DateTime<Utc> {
        self.app.lock().now
    }
    pub fn set_now(&self, now: DateTime<Utc>) {
        self.app.lock().now = now;
    }
    /// Stops the server task.
    pub fn shutdown(&self) {
        self.task.abort();
    }
}

/// Binds `addr` (port 0 = a free port), spawns the server on the current tokio runtime and
/// returns at once.
pub async fn start(
    fixture: Fixture,
    opts: EmulatorOptions,
    addr: SocketAddr,
) -> std::io::Result<Emulator> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    let ip = if local.ip().is_unspecified() {
        IpAddr::V4(Ipv4Addr::LOCALHOST)
    } else {
        local.ip()
    };
    let url = format!("http://{}", SocketAddr::new(ip, local.port()));
    let app = Arc::new(server::App {
        base_url: url.clone(),
        inner: Mutex::new(server::Inner::new(fixture, opts)),
    });
    let router = server::router(app.clone());
    let task = tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, router).await {
            tracing::error!(error = %e, "graph emulator server stopped");
        }
    });
    Ok(Emulator { url, app, task })
}
