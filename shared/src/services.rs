//! What a function needs, built once per container: settings from the environment, the AWS
//! adapters, the Graph client and the clock.

use std::sync::Arc;

use chrono::{DateTime, Utc};

use crate::aws::{AwsClients, DynamoTable, S3Blobs, SesMailer, SqsQueue};
use crate::graph::{
    DEFAULT_GRAPH_BASE_URL, DEFAULT_LOGIN_BASE_URL, GraphClient, GraphSettings, RetryPolicy,
};
use crate::ports::{Blobs, Directory, Mailer, Queue, Table};

/// Deployment settings, from environment variables (template.yaml sets them in Lambda, the
/// local stack sets them in-process).
#[derive(Clone, Debug)]
pub struct Settings {
    pub table_name: String,
    pub bucket: String,
    pub consent_queue_url: String,
    pub run_queue_url: String,
    pub download_queue_url: String,
    pub score_queue_url: String,
    pub graph: GraphSettings,
    /// Sender of the consent email (an SES-verified identity).
    pub sender_email: String,
    /// Public URL of `GET /consent/callback`, the admin-consent redirect target.
    pub consent_redirect_uri: String,
    /// How long a consent link stays valid.
    pub consent_link_days: i64,
    /// Key that signs consent `state` values.
    pub state_signing_key: Vec<u8>,
    /// Key of the keyed hashes that stand for external addresses.
    pub pseudonymization_key: Vec<u8>,
    /// A fixed as-of instant for runs (the local stack's `AS_OF`); None in production.
    pub fixed_as_of: Option<DateTime<Utc>>,
    /// How Graph requests are retried.
    pub graph_retry: RetryPolicy,
}

#[derive(Debug, thiserror::Error)]
#[error("configuration: {0}")]
pub struct SettingsError(pub String);

fn var(name: &str) -> Result<String, SettingsError> {
    std::env::var(name)
        .ok()
        .filter(|v| !v.trim().is_empty())
        .ok_or_else(|| SettingsError(format!("environment variable {name} is not set")))
}

fn var_or(name: &str, default: &str) -> String {
    var(name).unwrap_or_else(|_| default.to_string())
}

impl Settings {
    /// Reads the environment. Secrets come from `SECRET_ARN` (a JSON secret with `client_secret`
    /// and `master_key`, or explicit `state_signing_key` and `pseudonymization_key`) when set, else
    /// from variables of those names in upper case.
    pub async fn from_env(clients: &AwsClients) -> Result<Self, SettingsError> {
        let secret = match var("SECRET_ARN") {
            Ok(arn) => crate::aws::read_json_secret(&clients.secrets, &arn)
                .await
                .map_err(|e| SettingsError(format!("secret {arn}: {e}")))?,
            Err(_) => Default::default(),
        };
        let secret_value = |key: &str| -> Result<String, SettingsError> {
            secret
                .get(key)
                .cloned()
                .filter(|v| !v.is_empty())
                .map_or_else(|| var(&key.to_uppercase()), Ok)
        };
        let fixed_as_of = match var("AS_OF") {
            Ok(text) => Some(
                DateTime::parse_from_rfc3339(&text)
                    .map_err(|e| SettingsError(format!("AS_OF '{text}' is not RFC 3339: {e}")))?
                    .with_timezone(&Utc),
            ),
            Err(_) => None,
        };
        Ok(Settings {
            table_name: var("TABLE_NAME")?,
            bucket: var("BUCKET_NAME")?,
            consent_queue_url: var_or("CONSENT_QUEUE_URL", ""),
            run_queue_url: var_or("RUN_QUEUE_URL", ""),
            download_queue_url: var_or("DOWNLOAD_QUEUE_URL", ""),
            score_queue_url: var_or("SCORE_QUEUE_URL", ""),
            graph: GraphSettings {
                graph_base_url: var_or("GRAPH_BASE_URL", DEFAULT_GRAPH_BASE_URL),
                login_base_url: var_or("LOGIN_BASE_URL", DEFAULT_LOGIN_BASE_URL),
                tenant_id: var("TENANT_ID")?,
                client_id: var("CLIENT_ID")?,
                client_secret: secret_value("client_secret").unwrap_or_default(),
            },
            sender_email: var_or("SENDER_EMAIL", ""),
            consent_redirect_uri: var_or("CONSENT_REDIRECT_URI", ""),
            consent_link_days: var_or("CONSENT_LINK_DAYS", "7").parse().unwrap_or(7),
            state_signing_key: key_of(&secret_value, "state_signing_key")?,
            pseudonymization_key: key_of(&secret_value, "pseudonymization_key")?,
            fixed_as_of,
            graph_retry: RetryPolicy::default(),
        })
    }
}

/// A key named in the secret (or environment), else derived from the secret's generated
/// `master_key` (HMAC-SHA256 of the key's name), so each purpose gets its own key.
fn key_of(
    secret_value: &dyn Fn(&str) -> Result<String, SettingsError>,
    name: &str,
) -> Result<Vec<u8>, SettingsError> {
    use hmac::Mac;
    if let Ok(key) = secret_value(name) {
        return Ok(key.into_bytes());
    }
    let master = secret_value("master_key").map_err(|_| {
        SettingsError(format!(
            "neither {name} nor master_key is in the secret or the environment"
        ))
    })?;
    let mut mac = <hmac::Hmac<sha2::Sha256> as Mac>::new_from_slice(master.as_bytes())
        .map_err(|e| SettingsError(e.to_string()))?;
    mac.update(name.as_bytes());
    Ok(mac.finalize().into_bytes().to_vec())
}

/// The clock; the local stack and tests fix it.
pub trait Clock: Send + Sync {
    fn now(&self) -> DateTime<Utc>;
}

pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }
}

/// A clock that stands still at one instant, for tests.
pub struct FixedClock(pub DateTime<Utc>);

impl Clock for FixedClock {
    fn now(&self) -> DateTime<Utc> {
        self.0
    }
}

/// Everything a handler calls, built once per container.
#[derive(Clone)]
pub struct Services {
    pub settings: Settings,
    pub table: Arc<dyn Table>,
    pub blobs: Arc<dyn Blobs>,
    pub queue: Arc<dyn Queue>,
    pub mailer: Arc<dyn Mailer>,
    pub directory: Arc<dyn Directory>,
    pub graph: Arc<GraphClient>,
    pub clock: Arc<dyn Clock>,
    /// The as-of instant of new runs when fixed (`AS_OF`); the local demo moves it forward.
    as_of: Arc<std::sync::RwLock<Option<DateTime<Utc>>>>,
}

impl Services {
    /// The production wiring: AWS from the default provider chain, settings from the environment.
    pub async fn from_env() -> Result<Self, SettingsError> {
        let clients = AwsClients::from_env().await;
        let settings = Settings::from_env(&clients).await?;
        Self::new(settings, &clients, Arc::new(SystemClock))
    }

    pub fn new(
        settings: Settings,
        clients: &AwsClients,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, SettingsError> {
        let graph = Arc::new(
            GraphClient::new(settings.graph.clone())
                .map_err(|e| SettingsError(e.to_string()))?
                .with_retry(settings.graph_retry),
        );
        Ok(Services {
            table: Arc::new(DynamoTable::new(
                clients.dynamodb.clone(),
                &settings.table_name,
            )),
            blobs: Arc::new(S3Blobs::new(clients.s3.clone())),
            queue: Arc::new(SqsQueue::new(clients.sqs.clone())),
            mailer: Arc::new(SesMailer::new(clients.ses.clone())),
            directory: graph.clone(),
            graph,
            clock,
            as_of: Arc::new(std::sync::RwLock::new(settings.fixed_as_of)),
            settings,
        })
    }

    pub fn now(&self) -> DateTime<Utc> {
        self.clock.now()
    }

    /// The as-of instant T of a run starting now (DESIGN §7: the run's start, unless fixed).
    pub fn run_as_of(&self) -> DateTime<Utc> {
        self.as_of
            .read()
            .ok()
            .and_then(|fixed| *fixed)
            .unwrap_or_else(|| self.now())
    }

    /// Fixes the as-of instant of the next runs (local stack only).
    pub fn fix_as_of(&self, as_of: DateTime<Utc>) {
        if let Ok(mut fixed) = self.as_of.write() {
            *fixed = Some(as_of);
        }
    }
}

/// JSON logs for Lambda (CloudWatch), level from `RUST_LOG` (default info).
pub fn init_logging() {
    let _ = tracing_subscriber::fmt()
        .json()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_current_span(false)
        .without_time()
        .try_init();
}
