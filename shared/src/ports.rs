//! The ports through which domain code reaches the outside world. Each has an adapter in
//! `crate::aws` or `crate::graph`; unit tests of pure logic may use the in-memory ones of `crate::memory`.

use async_trait::async_trait;
use serde_json::Value;

/// Failure of an adapter. `Conflict` is a failed conditional write, the rest are I/O problems.
#[derive(Debug, thiserror::Error)]
pub enum PortError {
    #[error("conditional write failed")]
    Conflict,
    #[error("not found: {0}")]
    NotFound(String),
    #[error("throttled by {0}")]
    Throttled(String),
    #[error("{0}")]
    Io(String),
}

pub type PortResult<T> = Result<T, PortError>;

/// One item of the state table: key, a JSON document, and the few attributes that conditional
/// writes and atomic counters need outside the document.
#[derive(Debug, Clone, PartialEq)]
pub struct Item {
    pub pk: String,
    pub sk: String,
    pub doc: Value,
    /// Optimistic-concurrency version (0 when the item does not use one).
    pub version: u64,
    /// Epoch seconds after which the table may expire the item.
    pub expires_at: Option<i64>,
}

impl Item {
    pub fn new(pk: impl Into<String>, sk: impl Into<String>, doc: Value) -> Self {
        Self {
            pk: pk.into(),
            sk: sk.into(),
            doc,
            version: 0,
            expires_at: None,
        }
    }
}

/// When a put may happen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Precondition {
    None,
    /// The item must not exist yet.
    Absent,
    /// The item must exist with exactly this version.
    VersionIs(u64),
    /// The item must exist.
    Present,
}

/// A page of a query.
#[derive(Debug, Clone, Default)]
pub struct ItemPage {
    pub items: Vec<Item>,
    /// Opaque position to continue from.
    pub next: Option<String>,
}

/// The single DynamoDB table of DESIGN §4, seen as documents under (pk, sk).
#[async_trait]
pub trait Table: Send + Sync {
    async fn get(&self, pk: &str, sk: &str) -> PortResult<Option<Item>>;
    async fn put(&self, item: Item, precondition: Precondition) -> PortResult<()>;
    /// Writes many unconditional items (chunked as the store requires).
    async fn put_many(&self, items: Vec<Item>) -> PortResult<()>;
    async fn delete(&self, pk: &str, sk: &str, precondition: Precondition) -> PortResult<()>;
    async fn delete_many(&self, keys: Vec<(String, String)>) -> PortResult<()>;
    /// Items of `pk` whose sort key starts with `sk_prefix`, in sort-key order (descending when asked).
    async fn query(
        &self,
        pk: &str,
        sk_prefix: &str,
        limit: Option<usize>,
        start: Option<String>,
        descending: bool,
    ) -> PortResult<ItemPage>;
    /// Atomically adds to numeric counters of an item (created when absent) and returns their new values.
    async fn add_counters(
        &self,
        pk: &str,
        sk: &str,
        deltas: &[(&str, i64)],
    ) -> PortResult<Vec<(String, i64)>>;
}

/// Object storage (S3).
#[async_trait]
pub trait Blobs: Send + Sync {
    async fn get(&self, bucket: &str, key: &str) -> PortResult<Option<Vec<u8>>>;
    /// The first `max_bytes` of an object (all of it when None); None when the object does not exist.
    async fn get_head(
        &self,
        bucket: &str,
        key: &str,
        max_bytes: Option<usize>,
    ) -> PortResult<Option<Vec<u8>>>;
    async fn put(
        &self,
        bucket: &str,
        key: &str,
        body: Vec<u8>,
        content_type: &str,
    ) -> PortResult<()>;
    async fn list(&self, bucket: &str, prefix: &str) -> PortResult<Vec<String>>;
    async fn delete_prefix(&self, bucket: &str, prefix: &str) -> PortResult<usize>;
}

/// A message queue (SQS).
#[async_trait]
pub trait Queue: Send + Sync {
    async fn send(
        &self,
        queue_url: &str,
        body: String,
        delay_seconds: Option<i32>,
    ) -> PortResult<()>;
    async fn send_many(&self, queue_url: &str, bodies: Vec<String>) -> PortResult<()>;
}

/// An outgoing email.
#[derive(Debug, Clone, PartialEq)]
pub struct Email {
    pub from: String,
    pub to: String,
    pub subject: String,
    pub text: String,
    pub html: String,
}

/// Mail delivery (SES v2).
#[async_trait]
pub trait Mailer: Send + Sync {
    /// Sends one message and answers the provider's message id.
    async fn send(&self, email: &Email) -> PortResult<String>;
}

/// A person of the tenant's directory.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DirectoryUser {
    pub id: String,
    pub mail: Option<String>,
    pub display_name: Option<String>,
}

/// A group of the tenant's directory.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DirectoryGroup {
    pub id: String,
    pub mail: Option<String>,
    pub display_name: Option<String>,
}

/// The tenant directory (Microsoft Graph).
#[async_trait]
pub trait Directory: Send + Sync {
    /// The user whose mail or one of whose proxy addresses is `address`.
    async fn user_by_address(&self, address: &str) -> PortResult<Option<DirectoryUser>>;
    /// The group with this mail address or object id.
    async fn group(&self, address_or_id: &str) -> PortResult<Option<DirectoryGroup>>;
    /// Users that are members of the group, through nested groups too.
    async fn group_users(&self, group_id: &str) -> PortResult<Vec<DirectoryUser>>;
    /// Members of the Global Administrator role.
    async fn tenant_admins(&self) -> PortResult<Vec<DirectoryUser>>;
    /// The organization's domain names.
    async fn domains(&self) -> PortResult<Vec<String>>;
    /// Whether the application has a service principal with granted app roles in the tenant.
    async fn app_consent_granted(&self, app_id: &str) -> PortResult<bool>;
}
