//! Microsoft Graph client: client-credentials token cached per container, retries of throttled and
//! failed requests honouring `Retry-After`, paging through `@odata.nextLink`, and the directory port.

use std::time::{Duration, Instant};

use async_trait::async_trait;
use serde::Deserialize;
use serde_json::Value;
use tokio::sync::Mutex;

use crate::ports::{Directory, DirectoryGroup, DirectoryUser, PortError, PortResult};

pub const DEFAULT_GRAPH_BASE_URL: &str = "https://graph.microsoft.com/v1.0";
pub const DEFAULT_LOGIN_BASE_URL: &str = "https://login.microsoftonline.com";
pub const GLOBAL_ADMIN_ROLE_TEMPLATE: &str = "62e90394-69f5-4237-9190-012177145e10";

/// Where Graph is and who we are to it.
#[derive(Clone)]
pub struct GraphSettings {
    pub graph_base_url: String,
    pub login_base_url: String,
    pub tenant_id: String,
    pub client_id: String,
    pub client_secret: String,
}

impl std::fmt::Debug for GraphSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GraphSettings")
            .field("graph_base_url", &self.graph_base_url)
            .field("login_base_url", &self.login_base_url)
            .field("tenant_id", &self.tenant_id)
            .field("client_id", &self.client_id)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum GraphError {
    /// The delta token is no longer valid (410, `syncStateNotFound`, `resyncRequired`): resync the stream.
    #[error("sync state gone: {0}")]
    SyncStateGone(String),
    #[error("graph answered {status} {code}: {message}")]
    Status {
        status: u16,
        code: String,
        message: String,
    },
    #[error("still throttled after {attempts} attempts")]
    Throttled { attempts: u32 },
    #[error("token request failed: {0}")]
    Token(String),
    #[error("transport: {0}")]
    Transport(String),
}

impl GraphError {
    pub fn status(&self) -> Option<u16> {
        match self {
            GraphError::Status { status, .. } => Some(*status),
            GraphError::SyncStateGone(_) => Some(410),
            _ => None,
        }
    }
}

impl From<GraphError> for PortError {
    fn from(e: GraphError) -> Self {
        match e {
            GraphError::Throttled { .. } => PortError::Throttled("Microsoft Graph".into()),
            GraphError::Status { status: 404, .. } => PortError::NotFound(e.to_string()),
            other => PortError::Io(other.to_string()),
        }
    }
}

#[derive(Deserialize)]
struct TokenResponse {
    access_token: String,
    expires_in: u64,
}

#[derive(Deserialize, Default)]
struct GraphErrorBody {
    #[serde(default)]
    error: GraphErrorDetail,
}

#[derive(Deserialize, Default)]
struct GraphErrorDetail {
    #[serde(default)]
    code: String,
    #[serde(default)]
    message: String,
}

/// Retry policy for throttled (429/503/504) and failed (5xx) requests.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    pub max_attempts: u32,
    /// Wait when the answer carries no `Retry-After`; doubles with every attempt.
    pub base_delay: Duration,
    /// Longest wait honoured from `Retry-After`.
    pub max_delay: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 6,
            base_delay: Duration::from_millis(500),
            max_delay: Duration::from_secs(120),
        }
    }
}

pub struct GraphClient {
    http: reqwest::Client,
    settings: GraphSettings,
    retry: RetryPolicy,
    token: Mutex<Option<(String, Instant)>>,
}

/// One page of a collection.
#[derive(Debug, Default)]
pub struct GraphPage {
    pub items: Vec<Value>,
    pub next_link: Option<String>,
    pub delta_link: Option<String>,
}

impl GraphPage {
    fn from_body(mut body: Value) -> Self {
        let take_str = |body: &mut Value, key: &str| {
            body.get_mut(key)
                .and_then(|v| v.as_str().map(str::to_string))
        };
        let next_link = take_str(&mut body, "@odata.nextLink");
        let delta_link = take_str(&mut body, "@odata.deltaLink");
        let items = match body.get_mut("value").map(Value::take) {
            Some(Value::Array(items)) => items,
            _ => Vec::new(),
        };
        Self {
            items,
            next_link,
            delta_link,
        }
    }
}

impl GraphClient {
    pub fn new(settings: GraphSettings) -> Result<Self, GraphError> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(60))
            .connect_timeout(Duration::from_secs(10))
            .build()
            .map_err(|e| GraphError::Transport(e.to_string()))?;
        Ok(Self {
            http,
            settings,
            retry: RetryPolicy::default(),
            token: Mutex::new(None),
        })
    }

    pub fn with_retry(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }

    pub fn settings(&self) -> &GraphSettings {
        &self.settings
    }

    /// A Graph URL from a path relative to the base (`/users`).
    pub fn url(&self, path: &str) -> String {
        format!(
            "{}{}",
            self.settings.graph_base_url.trim_end_matches('/'),
            path
        )
    }

    /// A valid access token, from the container's cache while it has more than a minute left.
    pub async fn access_token(&self) -> Result<String, GraphError> {
        let mut cached = self.token.lock().await;
        if let Some((token, valid_until)) = cached.as_ref()
            && Instant::now() < *valid_until
        {
            return Ok(token.clone());
        }
        let url = format!(
            "{}/{}/oauth2/v2.0/token",
            self.settings.login_base_url.trim_end_matches('/'),
            self.settings.tenant_id
        );
        let form = [
            ("grant_type", "client_credentials"),
            ("client_id", self.settings.client_id.as_str()),
            ("client_secret", self.settings.client_secret.as_str()),
            ("scope", "https://graph.microsoft.com/.default"),
        ];
        let response = self
            .http
            .post(&url)
            .form(&form)
            .send()
            .await
            .map_err(|e| GraphError::Token(e.to_string()))?;
        let status = response.status();
        let text = response
            .text()
            .await
            .map_err(|e| GraphError::Token(e.to_string()))?;
        if !status.is_success() {
            let code = serde_json::from_str::<Value>(&text)
                .ok()
                .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_string))
                .unwrap_or_default();
            return Err(GraphError::Token(format!("{status} {code}")));
        }
        let token: TokenResponse =
            serde_json::from_str(&text).map_err(|e| GraphError::Token(e.to_string()))?;
        let margin = (token.expires_in / 10).clamp(1, 300);
        let valid_until =
            Instant::now() + Duration::from_secs(token.expires_in.saturating_sub(margin));
        *cached = Some((token.access_token.clone(), valid_until));
        Ok(token.access_token)
    }

    /// GET with retries; answers the JSON body of a 2xx.
    pub async fn get_json(&self, url: &str, headers: &[(&str, &str)]) -> Result<Value, GraphError> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let token = self.access_token().await?;
            let mut request = self.http.get(url).bearer_auth(&token);
            for (name, value) in headers {
                request = request.header(*name, *value);
            }
            let response = match request.send().await {
                Ok(r) => r,
                Err(e) if attempt < self.retry.max_attempts => {
                    tracing::warn!(attempt, error = %e, "graph transport error, retrying");
                    tokio::time::sleep(self.backoff(attempt)).await;
                    continue;
                }
                Err(e) => return Err(GraphError::Transport(e.to_string())),
            };
            let status = response.status().as_u16();
            let retry_after = response
                .headers()
                .get("retry-after")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok())
                .map(Duration::from_secs);
            let text = response
                .text()
                .await
                .map_err(|e| GraphError::Transport(e.to_string()))?;
            if (200..300).contains(&status) {
                return serde_json::from_str(&text).map_err(|e| GraphError::Status {
                    status,
                    code: "InvalidJson".into(),
                    message: e.to_string(),
                });
            }
            if status == 401 && attempt < 2 {
                // The cached token may have been revoked or expired early: fetch a new one once.
                *self.token.lock().await = None;
                continue;
            }
            let detail = serde_json::from_str::<GraphErrorBody>(&text)
                .unwrap_or_default()
                .error;
            if status == 410
                || detail.code.eq_ignore_ascii_case("syncStateNotFound")
                || detail.code.eq_ignore_ascii_case("resyncRequired")
            {
                return Err(GraphError::SyncStateGone(detail.code));
            }
            let retryable = matches!(status, 429 | 500 | 502 | 503 | 504);
            if retryable {
                if attempt >= self.retry.max_attempts {
                    return Err(if status == 429 {
                        GraphError::Throttled { attempts: attempt }
                    } else {
                        GraphError::Status {
                            status,
                            code: detail.code,
                            message: detail.message,
                        }
                    });
                }
                let wait = retry_after
                    .map(|d| d.min(self.retry.max_delay))
                    .unwrap_or_else(|| self.backoff(attempt));
                tracing::info!(
                    status,
                    attempt,
                    wait_ms = wait.as_millis() as u64,
                    "graph asked us to wait"
                );
                tokio::time::sleep(wait).await;
                continue;
            }
            return Err(GraphError::Status {
                status,
                code: detail.code,
                message: detail.message,
            });
        }
    }

    fn backoff(&self, attempt: u32) -> Duration {
        (self.retry.base_delay * 2u32.saturating_pow(attempt.saturating_sub(1)))
            .min(self.retry.max_delay)
    }

    pub async fn get_page(
        &self,
        url: &str,
        headers: &[(&str, &str)],
    ) -> Result<GraphPage, GraphError> {
        Ok(GraphPage::from_body(self.get_json(url, headers).await?))
    }

    /// Every item of a collection, following `@odata.nextLink` to the end.
    pub async fn get_all(
        &self,
        url: &str,
        headers: &[(&str, &str)],
    ) -> Result<Vec<Value>, GraphError> {
        let mut items = Vec::new();
        let mut next = Some(url.to_string());
        while let Some(url) = next {
            let page = self.get_page(&url, headers).await?;
            items.extend(page.items);
            next = page.next_link;
        }
        Ok(items)
    }

    fn url_with_query(&self, path: &str, query: &[(&str, &str)]) -> Result<String, GraphError> {
        let mut url =
            url::Url::parse(&self.url(path)).map_err(|e| GraphError::Transport(e.to_string()))?;
        url.query_pairs_mut().extend_pairs(query);
        Ok(url.to_string())
    }
}

/// OData string literal: single quotes doubled.
fn odata_literal(s: &str) -> String {
    s.replace('\'', "''")
}

fn directory_user(v: &Value) -> Option<DirectoryUser> {
    let text = |key: &str| v.get(key).and_then(|x| x.as_str()).map(str::to_string);
    Some(DirectoryUser {
        id: text("id")?,
        mail: text("mail"),
        display_name: text("displayName"),
    })
}

/// An administrator needs only an address to be emailed; the id may be absent.
fn admin_user(v: &Value) -> Option<DirectoryUser> {
    let text = |key: &str| v.get(key).and_then(|x| x.as_str()).map(str::to_string);
    Some(DirectoryUser {
        id: text("id").unwrap_or_default(),
        mail: Some(text("mail")?),
        display_name: text("displayName"),
    })
}

fn is_user(v: &Value) -> bool {
    v.get("@odata.type")
        .and_then(|t| t.as_str())
        .is_none_or(|t| t.eq_ignore_ascii_case("#microsoft.graph.user"))
}

const EVENTUAL: [(&str, &str); 1] = [("ConsistencyLevel", "eventual")];

#[async_trait]
impl Directory for GraphClient {
    async fn user_by_address(&self, address: &str) -> PortResult<Option<DirectoryUser>> {
        let a = odata_literal(address.trim());
        let filter = format!("mail eq '{a}' or proxyAddresses/any(p:p eq 'smtp:{a}')");
        let url = self.url_with_query(
            "/users",
            &[("$filter", &filter), ("$select", "id,mail,displayName")],
        )?;
        let page = self.get_page(&url, &EVENTUAL).await?;
        Ok(page.items.iter().find_map(directory_user))
    }

    async fn group(&self, address_or_id: &str) -> PortResult<Option<DirectoryGroup>> {
        let key = address_or_id.trim();
        let found = if crate::config::is_guid(key) {
            let url = self.url_with_query(
                &format!("/groups/{key}"),
                &[("$select", "id,mail,displayName")],
            )?;
            match self.get_json(&url, &[]).await {
                Ok(v) => Some(v),
                Err(GraphError::Status { status: 404, .. }) => None,
                Err(e) => return Err(e.into()),
            }
        } else {
            let filter = format!("mail eq '{}'", odata_literal(key));
            let url = self.url_with_query(
                "/groups",
                &[("$filter", &filter), ("$select", "id,mail,displayName")],
            )?;
            self.get_page(&url, &EVENTUAL)
                .await?
                .items
                .into_iter()
                .next()
        };
        Ok(found.and_then(|v| {
            directory_user(&v).map(|u| DirectoryGroup {
                id: u.id,
                mail: u.mail,
                display_name: u.display_name,
            })
        }))
    }

    async fn group_users(&self, group_id: &str) -> PortResult<Vec<DirectoryUser>> {
        let url = self.url_with_query(
            &format!("/groups/{group_id}/transitiveMembers/microsoft.graph.user"),
            &[("$select", "id,mail,displayName"), ("$top", "999")],
        )?;
        let items = self.get_all(&url, &EVENTUAL).await?;
        Ok(items
            .iter()
            .filter(|v| is_user(v))
            .filter_map(directory_user)
            .collect())
    }

    async fn tenant_admins(&self) -> PortResult<Vec<DirectoryUser>> {
        let url = self.url_with_query(
            &format!("/directoryRoles(roleTemplateId='{GLOBAL_ADMIN_ROLE_TEMPLATE}')/members"),
            &[("$select", "id,mail,displayName")],
        )?;
        let items = self.get_all(&url, &[]).await?;
        Ok(items
            .iter()
            .filter(|v| is_user(v))
            .filter_map(admin_user)
            .collect())
    }

    async fn domains(&self) -> PortResult<Vec<String>> {
        let items = self.get_all(&self.url("/domains"), &[]).await?;
        Ok(items
            .iter()
            .filter_map(|d| d.get("id").and_then(|v| v.as_str()))
            .map(|d| d.to_lowercase())
            .collect())
    }

    async fn app_consent_granted(&self, app_id: &str) -> PortResult<bool> {
        let filter = format!("appId eq '{}'", odata_literal(app_id));
        let url = self.url_with_query(
            "/servicePrincipals",
            &[("$filter", &filter), ("$select", "id,appId")],
        )?;
        let principals = self.get_page(&url, &[]).await?.items;
        for principal in principals {
            let Some(id) = principal.get("id").and_then(|v| v.as_str()) else {
                continue;
            };
            let assignments = self
                .get_all(
                    &self.url(&format!("/servicePrincipals/{id}/appRoleAssignments")),
                    &[],
                )
                .await?;
            if !assignments.is_empty() {
                return Ok(true);
            }
        }
        Ok(false)
    }
}

/// A documented Graph response body (testdata/graph-samples, copied from Microsoft's Graph
/// documentation; see its README) for parse tests.
#[cfg(test)]
pub(crate) fn sample(name: &str) -> Value {
    let path = format!(
        "{}/../testdata/graph-samples/{name}",
        env!("CARGO_MANIFEST_DIR")
    );
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transitive_members_sample_parses_to_users() {
        let page = GraphPage::from_body(sample("group-transitivemembers.json"));
        let users: Vec<DirectoryUser> = page
            .items
            .iter()
            .filter(|v| is_user(v))
            .filter_map(directory_user)
            .collect();
        assert!(!users.is_empty());
        assert!(users.iter().all(|u| !u.id.is_empty()));
        assert_eq!(
            users.len(),
            page.items.len(),
            "the sample's one member is a user"
        );
    }

    #[test]
    fn directory_role_members_sample_parses() {
        // The documented body has no ids: an administrator is still reachable by mail.
        let page = GraphPage::from_body(sample("directoryrole-members.json"));
        let admins: Vec<DirectoryUser> = page.items.iter().filter_map(admin_user).collect();
        assert_eq!(admins.len(), page.items.len());
        assert_eq!(admins[0].mail.as_deref(), Some("AdeleV@contoso.com"));
    }

    #[test]
    fn delta_pages_carry_links() {
        let first = GraphPage::from_body(sample("message-delta.round1.page1.json"));
        assert!(first.next_link.is_some() && first.delta_link.is_none());
        let last = GraphPage::from_body(sample("message-delta.round1.page3.json"));
        assert!(last.delta_link.is_some() && last.next_link.is_none());
    }

    #[test]
    fn domains_and_users_samples_parse() {
        let domains = GraphPage::from_body(sample("domain-list.json"));
        assert!(domains.items.iter().all(|d| d.get("id").is_some()));
        let users = GraphPage::from_body(sample("user-list.json"));
        assert!(users.items.iter().filter_map(directory_user).count() > 0);
    }

    #[test]
    fn odata_literals_escape_quotes() {
        assert_eq!(odata_literal("o'brien@contoso.com"), "o''brien@contoso.com");
    }
}
