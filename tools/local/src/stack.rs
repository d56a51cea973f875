//! The local stack: moto for AWS, the Graph emulator (or a real Graph), the resources of
//! template.yaml, the API on a loopback port, the queue pollers and the schedule tick, all calling
//! the same handler functions as Lambda.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use graph_emulator::{Emulator, EmulatorOptions, Fixture};
use shared::aws::AwsClients;
use shared::graph::GraphSettings;
use shared::services::{Services, Settings, SystemClock};
use tokio::process::{Child, Command};
use tokio::task::JoinHandle;

use crate::gateway::{Gateway, serve};
use crate::pollers::{PollerConfig, poll};
use crate::provision::{Provisioned, provision};
use crate::template::{self, StackSpec};

pub const REGION: &str = "us-east-1";
pub const LOCAL_CLIENT_ID: &str = "5d8f7a2c-0a1b-4c3d-9e8f-a11ce0000001";
pub const SENDER_EMAIL: &str = "account-engagement@notifications.example.com";

/// Which Graph the stack talks to.
pub enum GraphSource {
    Emulator(Box<Fixture>, EmulatorOptions),
    External(GraphSettings),
}

pub struct StackConfig {
    /// An already running moto server; None starts one from `.venv`.
    pub moto_url: Option<String>,
    pub graph: GraphSource,
    pub as_of: Option<DateTime<Utc>>,
    /// Prefix of the table and queue names (tests use a unique one each).
    pub prefix: String,
    pub bucket: String,
    /// Serve the API on this port (0 = any free port); None = no HTTP server.
    pub api_port: Option<u16>,
    /// Run the queue pollers.
    pub workers: bool,
    /// Call the schedule tick this often.
    pub tick: Option<Duration>,
    /// Time a download or score job gets before its deadline.
    pub job_time: Duration,
    /// Seconds before a failed message is delivered again.
    pub retry_delay: i32,
    pub graph_retry: shared::graph::RetryPolicy,
}

impl StackConfig {
    pub fn new(graph: GraphSource) -> Self {
        StackConfig {
            moto_url: std::env::var("MOTO_URL").ok().filter(|u| !u.is_empty()),
            graph,
            as_of: None,
            prefix: "local-".into(),
            bucket: "engagement-local".into(),
            api_port: None,
            workers: true,
            tick: None,
            job_time: Duration::from_secs(900),
            retry_delay: 1,
            graph_retry: shared::graph::RetryPolicy::default(),
        }
    }
}

pub struct LocalStack {
    pub services: Services,
    pub clients: AwsClients,
    pub spec: Arc<StackSpec>,
    pub provisioned: Provisioned,
    pub moto_url: String,
    pub emulator: Option<Emulator>,
    pub api_url: Option<String>,
    moto: Option<Child>,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for LocalStack {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
        if let Some(child) = self.moto.as_mut() {
            let _ = child.start_kill();
        }
    }
}

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn free_port() -> std::io::Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}

async fn wait_until_up(url: &str) -> Result<(), String> {
    let client = reqwest::Client::new();
    for _ in 0..200 {
        if client.get(format!("{url}/moto-api/")).send().await.is_ok() {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err(format!("moto did not answer at {url}"))
}

/// Starts moto from the project's virtualenv on a free loopback port.
pub async fn start_moto() -> Result<(Child, String), String> {
    let binary = repo_root().join(".venv/bin/moto_server");
    if !binary.exists() {
        return Err(format!(
            "{} is missing: run `make tools` first",
            binary.display()
        ));
    }
    let port = free_port().map_err(|e| e.to_string())?;
    let child = Command::new(&binary)
        .args(["-H", "127.0.0.1", "-p", &port.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("starting {}: {e}", binary.display()))?;
    let url = format!("http://127.0.0.1:{port}");
    wait_until_up(&url).await?;
    Ok((child, url))
}

impl LocalStack {
    pub async fn start(config: StackConfig) -> Result<LocalStack, String> {
        let (moto, moto_url) = match &config.moto_url {
            Some(url) => {
                wait_until_up(url).await?;
                (None, url.clone())
            }
            None => {
                let (child, url) = start_moto().await?;
                (Some(child), url)
            }
        };
        let (emulator, graph) = match config.graph {
            GraphSource::Emulator(fixture, mut options) => {
                if let Some(as_of) = config.as_of {
                    options.now = as_of;
                }
                let emulator =
                    graph_emulator::start(*fixture, options, SocketAddr::from(([127, 0, 0, 1], 0)))
                        .await
                        .map_err(|e| format!("graph emulator: {e}"))?;
                let settings = GraphSettings {
                    graph_base_url: emulator.graph_base_url(),
                    login_base_url: emulator.login_base_url(),
                    tenant_id: emulator.tenant_id(),
                    client_id: LOCAL_CLIENT_ID.into(),
                    client_secret: "local-client-secret".into(),
                };
                (Some(emulator), settings)
            }
            GraphSource::External(settings) => (None, settings),
        };
        let clients = AwsClients::for_endpoint(&moto_url, REGION).await;
        let spec = Arc::new(template::load(&repo_root().join("template.yaml"))?);
        let provisioned = provision(
            &clients,
            &spec,
            &config.prefix,
            &config.bucket,
            SENDER_EMAIL,
        )
        .await?;

        let listener = match config.api_port {
            Some(port) => Some(
                tokio::net::TcpListener::bind(("127.0.0.1", port))
                    .await
                    .map_err(|e| format!("port {port}: {e}"))?,
            ),
            None => None,
        };
        let api_url = match &listener {
            Some(l) => Some(format!(
                "http://{}",
                l.local_addr().map_err(|e| e.to_string())?
            )),
            None => None,
        };
        let settings = Settings {
            table_name: provisioned.table_name.clone(),
            bucket: provisioned.bucket.clone(),
            consent_queue_url: provisioned.queue_url("ConsentRequestsQueue"),
            run_queue_url: provisioned.queue_url("RunRequestsQueue"),
            download_queue_url: provisioned.queue_url("DownloadJobsQueue"),
            score_queue_url: provisioned.queue_url("ScoreJobsQueue"),
            graph,
            sender_email: SENDER_EMAIL.into(),
            consent_redirect_uri: format!(
                "{}/consent/callback",
                api_url.clone().unwrap_or_else(|| "http://127.0.0.1".into())
            ),
            consent_link_days: 7,
            state_signing_key: b"local-state-signing-key".to_vec(),
            pseudonymization_key: b"local-pseudonymization-key".to_vec(),
            fixed_as_of: config.as_of,
            graph_retry: config.graph_retry,
        };
        let services =
            Services::new(settings, &clients, Arc::new(SystemClock)).map_err(|e| e.to_string())?;

        let mut tasks = Vec::new();
        if let Some(listener) = listener {
            let gateway = Gateway {
                services: services.clone(),
                spec: spec.clone(),
            };
            tasks.push(tokio::spawn(async move {
                if let Err(e) = serve(listener, gateway).await {
                    tracing::error!(error = %e, "API server stopped");
                }
            }));
        }
        if config.workers {
            for function in &spec.functions {
                for (queue, _batch) in &function.queues {
                    let queue_url = provisioned.queue_url(queue);
                    let poller = PollerConfig {
                        queue_arn: format!(
                            "arn:aws:sqs:{REGION}:000000000000:{}{queue}",
                            config.prefix
                        ),
                        queue_url,
                        binary: function.binary.clone(),
                        concurrency: if function.binary == "download" { 8 } else { 2 },
                        job_time: config.job_time,
                        retry_delay: config.retry_delay,
                    };
                    tasks.push(tokio::spawn(poll(
                        clients.clone(),
                        services.clone(),
                        poller,
                    )));
                }
            }
        }
        if let Some(every) = config.tick {
            let services = services.clone();
            tasks.push(tokio::spawn(async move {
                let mut interval = tokio::time::interval(every);
                loop {
                    interval.tick().await;
                    if let Err(e) = start_run::handle_tick(&services).await {
                        tracing::warn!(error = %e, "schedule tick failed");
                    }
                }
            }));
        }
        Ok(LocalStack {
            services,
            clients,
            spec,
            provisioned,
            moto_url,
            emulator,
            api_url,
            moto,
            tasks,
        })
    }

    /// Uploads a local file as customer data; answers its s3:// URI.
    pub async fn upload_customer_data(
        &self,
        file_name: &str,
        bytes: Vec<u8>,
    ) -> Result<String, String> {
        let key = format!("customer-data/{file_name}");
        let content_type = if file_name.ends_with(".csv") {
            "text/csv"
        } else {
            "application/x-ndjson"
        };
        self.services
            .blobs
            .put(&self.provisioned.bucket, &key, bytes, content_type)
            .await
            .map_err(|e| e.to_string())?;
        Ok(format!("s3://{}/{key}", self.provisioned.bucket))
    }

    /// Emails SES accepted, from moto's state dump.
    pub async fn sent_emails(&self) -> Result<Vec<serde_json::Value>, String> {
        sent_emails(&self.moto_url).await
    }
}

pub async fn sent_emails(moto_url: &str) -> Result<Vec<serde_json::Value>, String> {
    // The dump is built while other clients may write to moto; a failed one is simply retried.
    let mut last_error = String::new();
    for _ in 0..5 {
        match moto_state(moto_url).await {
            // moto keeps the messages SES accepted under ses → Message.
            Ok(data) => {
                return Ok(data["ses"]["Message"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default());
            }
            Err(e) => last_error = e,
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Err(last_error)
}

async fn moto_state(moto_url: &str) -> Result<serde_json::Value, String> {
    reqwest::get(format!("{moto_url}/moto-api/data.json"))
        .await
        .map_err(|e| e.to_string())?
        .json()
        .await
        .map_err(|e| e.to_string())
}
