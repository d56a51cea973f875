//! HTTP server: identity platform, Microsoft Graph subset, and `/_emulator/` control endpoints.

use crate::EmulatorOptions;
use crate::fixture::{Fixture, FixtureEvent, FixtureGroup, FixtureMessage, FixtureUser};
use crate::store::{Slot, Store};
use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post};
use base64::Engine;
use chrono::{DateTime, Duration, NaiveDate, NaiveDateTime, SecondsFormat, Utc};
use rand::Rng;
use serde_json::{Map, Value, json};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};

pub const GLOBAL_ADMIN_TEMPLATE: &str = "62e90394-69f5-4237-9190-012177145e10";
pub const GRAPH_APP_ID: &str = "00000003-0000-0000-c000-000000000000";
/// (permission, Microsoft Graph application role id)
pub const CONSENTED_ROLES: &[(&str, &str)] = &[
    ("Mail.ReadBasic.All", "693c5e45-0940-467d-9b8a-1022fb9d42ef"),
    (
        "Calendars.ReadBasic.All",
        "8ba4a692-bc31-4128-9094-475872af8a53",
    ),
    ("User.Read.All", "df021288-bdef-4463-88db-98f22de89214"),
    (
        "GroupMember.Read.All",
        "98830695-27a2-44f7-8c18-0c3ebc9698f6",
    ),
];
const ODATA_JSON: &str = "application/json;odata.metadata=minimal;odata.streaming=true;IEEE754Compatible=false;charset=utf-8";

pub(crate) struct App {
    pub base_url: String,
    pub inner: Mutex<Inner>,
}

impl App {
    pub fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[derive(Clone)]
enum SyncKind {
    Mail {
        mailbox: String,
        folder: String,
    },
    Calendar {
        mailbox: String,
        start: DateTime<Utc>,
        end: DateTime<Utc>,
    },
}

#[derive(Clone)]
enum Stage {
    /// A round in progress: the ids of the round, the next position, and the watermark the
    /// round was computed at (it becomes the deltaLink's watermark).
    Page {
        ids: Arc<Vec<String>>,
        pos: usize,
        w_seq: u64,
        w_now: DateTime<Utc>,
    },
    /// A delta link: changes after this watermark.
    Delta { w_seq: u64, w_now: DateTime<Utc> },
}

#[derive(Clone)]
struct SyncState {
    kind: SyncKind,
    stage: Stage,
    select: Option<Vec<String>>,
}

struct ServicePrincipal {
    id: String,
    app_id: String,
    display_name: String,
    created: DateTime<Utc>,
    assignment_ids: Vec<String>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum EndpointKind {
    Messages,
    Calendar,
    Other,
}

struct Fault {
    mailbox: Option<String>,
    endpoint: Option<EndpointKind>,
    status: u16,
    remaining: i64,
    retry_after: u64,
}

#[derive(Default, Clone, serde::Serialize)]
struct MbCounters {
    requests: u64,
    messages_delta: u64,
    calendar_delta: u64,
    throttled: u64,
    max_in_flight: usize,
}

pub(crate) struct Inner {
    pub opts: EmulatorOptions,
    pub now: DateTime<Utc>,
    tenant_id: String,
    domains: Vec<String>,
    users: Vec<FixtureUser>,
    /// lower-case id, mail, upn, proxy address (without prefix) -> user index
    user_idx: HashMap<String, usize>,
    groups: Vec<FixtureGroup>,
    /// lower-case id and mail -> group index
    group_idx: HashMap<String, usize>,
    messages: Store<FixtureMessage>,
    events: Store<FixtureEvent>,
    seq: u64,
    access_tokens: HashSet<String>,
    sync: HashMap<String, SyncState>,
    consent_deny: bool,
    sps: Vec<ServicePrincipal>,
    graph_sp_id: String,
    role_id: String,
    faults: Vec<Fault>,
    token_requests: u64,
    counters: BTreeMap<String, MbCounters>,
    inflight: HashMap<String, usize>,
    budget_used: HashMap<String, u64>,
}

fn random_token(n: usize) -> String {
    const CHARS: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut r = rand::rng();
    (0..n)
        .map(|_| CHARS[r.random_range(0..CHARS.len())] as char)
        .collect()
}

fn random_guid() -> String {
    let bytes: [u8; 16] = rand::rng().random();
    uuid::Builder::from_random_bytes(bytes)
        .into_uuid()
        .hyphenated()
        .to_string()
}

fn msg_coll(mailbox: &str, folder: &str) -> String {
    format!("{mailbox}|{}", folder.to_ascii_lowercase())
}

fn strip_smtp(p: &str) -> &str {
    match p.split_once(':') {
        Some((pre, rest)) if pre.eq_ignore_ascii_case("smtp") => rest,
        _ => p,
    }
}

impl Inner {
    pub fn new(fixture: Fixture, opts: EmulatorOptions) -> Inner {
        let mut inner = Inner {
            now: opts.now,
            opts,
            tenant_id: fixture.tenant_id,
            domains: fixture.domains,
            users: Vec::new(),
            user_idx: HashMap::new(),
            groups: fixture.groups,
            group_idx: HashMap::new(),
            messages: Store::default(),
            events: Store::default(),
            seq: 0,
            access_tokens: HashSet::new(),
            sync: HashMap::new(),
            consent_deny: false,
            sps: Vec::new(),
            graph_sp_id: random_guid(),
            role_id: random_guid(),
            faults: Vec::new(),
            token_requests: 0,
            counters: BTreeMap::new(),
            inflight: HashMap::new(),
            budget_used: HashMap::new(),
        };
        inner.set_users(fixture.users);
        for (i, g) in inner.groups.iter().enumerate() {
            inner.group_idx.insert(g.id.to_ascii_lowercase(), i);
            if !g.mail.is_empty() {
                inner.group_idx.insert(g.mail.to_ascii_lowercase(), i);
            }
        }
        let now = inner.now;
        for m in fixture.messages {
            inner.upsert_message(m, None);
        }
        for e in fixture.events {
            let modified = (e.start - Duration::days(3)).min(now);
            inner.upsert_event(e, Some(modified));
        }
        inner
    }

    fn set_users(&mut self, users: Vec<FixtureUser>) {
        self.user_idx.clear();
        for (i, u) in users.iter().enumerate() {
            for p in &u.proxy_addresses {
                self.user_idx
                    .entry(strip_smtp(p).to_ascii_lowercase())
                    .or_insert(i);
            }
        }
        for (i, u) in users.iter().enumerate() {
            if !u.user_principal_name.is_empty() {
                self.user_idx
                    .insert(u.user_principal_name.to_ascii_lowercase(), i);
            }
            if !u.mail.is_empty() {
                self.user_idx.insert(u.mail.to_ascii_lowercase(), i);
            }
        }
        for (i, u) in users.iter().enumerate() {
            self.user_idx.insert(u.id.to_ascii_lowercase(), i);
        }
        self.users = users;
    }

    fn user(&self, key: &str) -> Option<&FixtureUser> {
        self.user_idx
            .get(&key.to_ascii_lowercase())
            .map(|i| &self.users[*i])
    }

    fn mailbox_id(&self, key: &str) -> String {
        self.user(key)
            .map(|u| u.id.clone())
            .unwrap_or_else(|| key.to_string())
    }

    fn next_seq(&mut self) -> u64 {
        self.seq += 1;
        self.seq
    }

    fn upsert_message(&mut self, mut m: FixtureMessage, modified: Option<DateTime<Utc>>) {
        m.mailbox = self.mailbox_id(&m.mailbox);
        m.folder = m.folder.to_ascii_lowercase();
        let seq = self.next_seq();
        let coll = msg_coll(&m.mailbox, &m.folder);
        let mailbox = m.mailbox.clone();
        let id = m.id.clone();
        let modified = modified.unwrap_or(m.received_date_time);
        self.messages.upsert(&mailbox, &id, coll, m, seq, modified);
    }

    fn upsert_event(&mut self, mut e: FixtureEvent, modified: Option<DateTime<Utc>>) {
        e.mailbox = self.mailbox_id(&e.mailbox);
        let seq = self.next_seq();
        let coll = e.mailbox.clone();
        let id = e.id.clone();
        let modified = modified.unwrap_or(self.now);
        self.events
            .upsert(&coll.clone(), &id, coll, e, seq, modified);
    }

    fn fixture(&self) -> Fixture {
        Fixture {
            tenant_id: self.tenant_id.clone(),
            domains: self.domains.clone(),
            users: self.users.clone(),
            groups: self.groups.clone(),
            messages: self.messages.items().cloned().collect(),
            events: self.events.items().cloned().collect(),
        }
    }

    fn counters_json(&self) -> Value {
        json!({
            "token_requests": self.token_requests,
            "mailboxes": self.counters,
        })
    }

    fn tenant_matches(&self, t: &str) -> bool {
        t.eq_ignore_ascii_case(&self.tenant_id)
            || self.domains.iter().any(|d| d.eq_ignore_ascii_case(t))
    }

    fn grant_consent(&mut self, client_id: &str) {
        if self
            .sps
            .iter()
            .any(|s| s.app_id.eq_ignore_ascii_case(client_id))
        {
            return;
        }
        let short: String = client_id.chars().take(8).collect();
        self.sps.push(ServicePrincipal {
            id: random_guid(),
            app_id: client_id.to_string(),
            display_name: format!("Emulated app {short}"),
            created: self.now,
            assignment_ids: CONSENTED_ROLES.iter().map(|_| random_token(43)).collect(),
        });
    }

    fn display_name_for(&self, addr: &str) -> String {
        if let Some(u) = self.user(addr)
            && !u.display_name.is_empty()
        {
            return u.display_name.clone();
        }
        if let Some(g) = self.group_idx.get(&addr.to_ascii_lowercase()) {
            return self.groups[*g].display_name.clone();
        }
        let local = addr.split('@').next().unwrap_or(addr);
        local
            .split(['.', '_', '-'])
            .filter(|w| !w.is_empty())
            .map(|w| {
                let mut c = w.chars();
                match c.next() {
                    Some(f) => f.to_uppercase().collect::<String>() + c.as_str(),
                    None => String::new(),
                }
            })
            .collect::<Vec<_>>()
            .join(" ")
    }

    fn email_address(&self, addr: &str) -> Value {
        json!({"emailAddress": {"name": self.display_name_for(addr), "address": addr}})
    }
}

// ---------------------------------------------------------------- helpers

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            let h = std::str::from_utf8(&b[i + 1..i + 3])
                .ok()
                .and_then(|h| u8::from_str_radix(h, 16).ok());
            if let Some(v) = h {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn enc(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

/// Query parameters, names lower-cased (so `$top` and `$Top` are the same).
fn parse_query(q: Option<&str>) -> HashMap<String, String> {
    url::form_urlencoded::parse(q.unwrap_or("").as_bytes())
        .map(|(k, v)| (k.to_ascii_lowercase(), v.into_owned()))
        .collect()
}

fn fmt_graph_time(t: &DateTime<Utc>) -> String {
    t.format("%Y-%m-%dT%H:%M:%SZ").to_string()
}

fn fmt_event_time(t: &DateTime<Utc>) -> String {
    format!(
        "{}.{:07}",
        t.format("%Y-%m-%dT%H:%M:%S"),
        t.timestamp_subsec_nanos() / 100
    )
}

fn fmt_modified(t: &DateTime<Utc>) -> String {
    format!("{}Z", fmt_event_time(t))
}

fn parse_time(s: &str) -> Option<DateTime<Utc>> {
    let s = s.trim();
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Some(t.with_timezone(&Utc));
    }
    for f in [
        "%Y-%m-%dT%H:%M:%S%.f",
        "%Y-%m-%dT%H:%M:%S",
        "%Y-%m-%dT%H:%M",
    ] {
        if let Ok(t) = NaiveDateTime::parse_from_str(s, f) {
            return Some(t.and_utc());
        }
    }
    NaiveDate::parse_from_str(s, "%Y-%m-%d")
        .ok()
        .and_then(|d| d.and_hms_opt(0, 0, 0))
        .map(|t| t.and_utc())
}

fn graph_json(status: StatusCode, body: Value) -> Response {
    let mut r = (status, body.to_string()).into_response();
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(ODATA_JSON));
    if let Ok(v) = HeaderValue::from_str(&random_guid()) {
        h.insert("request-id", v);
    }
    r
}

fn plain_json(status: StatusCode, body: Value) -> Response {
    let mut r = (status, body.to_string()).into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

fn graph_error(status: StatusCode, code: &str, message: &str) -> Response {
    graph_json(
        status,
        json!({"error": {"code": code, "message": message, "innerError": {
            "date": fmt_graph_time(&Utc::now()),
            "request-id": random_guid(),
            "client-request-id": random_guid(),
        }}}),
    )
}

fn with_retry_after(mut r: Response, secs: u64) -> Response {
    r.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from(secs));
    r
}

fn throttled(message: &str, retry_after: u64) -> Response {
    let body = json!({"error": {
        "code": "ApplicationThrottled",
        "innerError": {
            "code": "429",
            "date": Utc::now().format("%Y-%m-%dT%H:%M:%S").to_string(),
            "message": "Please retry after",
            "request-id": random_guid(),
            "status": "429"
        },
        "message": message
    }});
    with_retry_after(graph_json(StatusCode::TOO_MANY_REQUESTS, body), retry_after)
}

fn sync_not_found() -> Response {
    graph_error(
        StatusCode::GONE,
        "syncStateNotFound",
        "The sync state generation was not found or has expired. Restart the synchronization.",
    )
}

fn fault_response(status: u16, retry_after: u64) -> Response {
    let sc = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    match status {
        410 => sync_not_found(),
        429 => throttled("Please retry again later.", retry_after),
        503 => with_retry_after(
            graph_error(
                sc,
                "serviceNotAvailable",
                "The service is temporarily unavailable.",
            ),
            retry_after,
        ),
        504 => with_retry_after(
            graph_error(sc, "gatewayTimeout", "The gateway timed out."),
            retry_after,
        ),
        500 => graph_error(sc, "generalException", "An internal server error occurred."),
        _ => graph_error(sc, "emulatedFault", "Injected fault."),
    }
}

#[allow(clippy::result_large_err)]
fn body_json(body: &Bytes) -> Result<Value, Response> {
    if body.iter().all(|b| b.is_ascii_whitespace()) {
        return Ok(json!({}));
    }
    serde_json::from_slice(body).map_err(|e| {
        plain_json(
            StatusCode::BAD_REQUEST,
            json!({"error": format!("invalid JSON body: {e}")}),
        )
    })
}

// ---------------------------------------------------------------- router

pub(crate) fn router(app: Arc<App>) -> Router {
    Router::new()
        .route("/v1.0/{*rest}", any(graph))
        .route("/{tenant}/oauth2/v2.0/token", post(token))
        .route("/{tenant}/v2.0/adminconsent", get(admin_consent))
        .route("/_emulator/activity", post(ctl_activity))
        .route("/_emulator/remove", post(ctl_remove))
        .route("/_emulator/now", get(ctl_get_now).post(ctl_set_now))
        .route("/_emulator/faults", post(ctl_faults))
        .route("/_emulator/faults/clear", post(ctl_faults_clear))
        .route("/_emulator/options", post(ctl_options))
        .route("/_emulator/consent", post(ctl_consent))
        .route("/_emulator/consent/grant", post(ctl_consent_grant))
        .route("/_emulator/consent/revoke", post(ctl_consent_revoke))
        .route("/_emulator/counters", get(ctl_counters))
        .route("/_emulator/counters/reset", post(ctl_counters_reset))
        .route("/_emulator/fixture", get(ctl_fixture))
        .route("/_emulator/tokens/expire", post(ctl_tokens_expire))
        .route("/_emulator/health", get(|| async { "ok" }))
        .fallback(|uri: Uri| async move {
            graph_error(
                StatusCode::NOT_FOUND,
                "NotFound",
                &format!("No emulated endpoint for {}", uri.path()),
            )
        })
        .with_state(app)
}

// ---------------------------------------------------------------- identity

fn token_error(status: StatusCode, error: &str, code: u32, text: &str) -> Response {
    let trace = random_guid();
    let corr = random_guid();
    let ts = Utc::now().format("%Y-%m-%d %H:%M:%SZ").to_string();
    plain_json(
        status,
        json!({
            "error": error,
            "error_description": format!("AADSTS{code}: {text}\r\nTrace ID: {trace}\r\nCorrelation ID: {corr}\r\nTimestamp: {ts}"),
            "error_codes": [code],
            "timestamp": ts,
            "trace_id": trace,
            "correlation_id": corr,
        }),
    )
}

async fn token(State(app): State<Arc<App>>, Path(tenant): Path<String>, body: Bytes) -> Response {
    let form: HashMap<String, String> = url::form_urlencoded::parse(&body)
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    let mut inner = app.lock();
    inner.token_requests += 1;
    let bad = StatusCode::BAD_REQUEST;
    if !inner.tenant_matches(&tenant) {
        return token_error(
            bad,
            "invalid_request",
            90002,
            &format!(
                "Tenant '{tenant}' not found. Check to make sure you have the correct tenant ID and are signing into the correct cloud."
            ),
        );
    }
    let grant = form.get("grant_type").map(String::as_str).unwrap_or("");
    if grant.is_empty() {
        return token_error(
            bad,
            "invalid_request",
            900144,
            "The request body must contain the following parameter: 'grant_type'.",
        );
    }
    if grant != "client_credentials" {
        return token_error(
            bad,
            "unsupported_grant_type",
            70003,
            &format!("The app requested an unsupported grant type '{grant}'."),
        );
    }
    let client_id = form.get("client_id").map(String::as_str).unwrap_or("");
    if client_id.is_empty() {
        return token_error(
            bad,
            "invalid_request",
            900144,
            "The request body must contain the following parameter: 'client_id'.",
        );
    }
    if !inner.opts.client_id.is_empty() && client_id != inner.opts.client_id {
        return token_error(
            bad,
            "unauthorized_client",
            700016,
            &format!(
                "Application with identifier '{client_id}' was not found in the directory '{tenant}'."
            ),
        );
    }
    let secret = form.get("client_secret").map(String::as_str).unwrap_or("");
    if secret.is_empty()
        || (!inner.opts.client_secret.is_empty() && secret != inner.opts.client_secret)
    {
        return token_error(
            bad,
            "invalid_client",
            7000215,
            "Invalid client secret provided. Ensure the secret being sent in the request is the client secret value, not the client secret ID.",
        );
    }
    let scope = form.get("scope").map(String::as_str).unwrap_or("");
    if scope.is_empty() {
        return token_error(
            bad,
            "invalid_request",
            900144,
            "The request body must contain the following parameter: 'scope'.",
        );
    }
    if !scope.ends_with("/.default") {
        return token_error(
            bad,
            "invalid_scope",
            70011,
            &format!(
                "The provided value for the input parameter 'scope' is not valid. The scope {scope} is not valid."
            ),
        );
    }
    let tok = format!("emu.{}", random_token(64));
    inner.access_tokens.insert(tok.clone());
    plain_json(
        StatusCode::OK,
        json!({"token_type": "Bearer", "expires_in": 3599, "ext_expires_in": 3599, "access_token": tok}),
    )
}

fn html_error(text: &str) -> Response {
    let mut r = (
        StatusCode::BAD_REQUEST,
        format!("<!DOCTYPE html><html><head><title>Sign in to your account</title></head><body><h1>Sorry, but we're having trouble signing you in.</h1><p>{text}</p></body></html>"),
    )
        .into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    r
}

async fn admin_consent(
    State(app): State<Arc<App>>,
    Path(tenant): Path<String>,
    uri: Uri,
) -> Response {
    let q: HashMap<String, String> =
        url::form_urlencoded::parse(uri.query().unwrap_or("").as_bytes())
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect();
    let mut inner = app.lock();
    let known = inner.tenant_matches(&tenant)
        || ["common", "organizations"]
            .iter()
            .any(|t| t.eq_ignore_ascii_case(&tenant));
    if !known {
        return html_error(&format!("AADSTS90002: Tenant '{tenant}' not found."));
    }
    let Some(client_id) = q.get("client_id").filter(|c| !c.is_empty()).cloned() else {
        return html_error(
            "AADSTS900144: The request body must contain the following parameter: 'client_id'.",
        );
    };
    let Some(redirect) = q.get("redirect_uri").filter(|c| !c.is_empty()) else {
        return html_error(
            "AADSTS900144: The request body must contain the following parameter: 'redirect_uri'.",
        );
    };
    let Ok(mut target) = url::Url::parse(redirect) else {
        return html_error("AADSTS50011: The redirect URI specified in the request is not valid.");
    };
    if !inner.opts.client_id.is_empty() && client_id != inner.opts.client_id {
        return html_error(&format!(
            "AADSTS700016: Application with identifier '{client_id}' was not found in the directory '{tenant}'."
        ));
    }
    let deny = inner.consent_deny
        || q.get("emulator_decision")
            .is_some_and(|d| d.eq_ignore_ascii_case("deny"));
    {
        let mut pairs = target.query_pairs_mut();
        if deny {
            pairs.append_pair("error", "access_denied");
            pairs.append_pair(
                "error_description",
                "AADSTS65004: User declined to consent to access the app.",
            );
        } else {
            pairs.append_pair("admin_consent", "True");
            pairs.append_pair("tenant", &inner.tenant_id);
        }
        if let Some(state) = q.get("state") {
            pairs.append_pair("state", state);
        }
    }
    if !deny {
        inner.grant_consent(&client_id);
    }
    let mut r = StatusCode::FOUND.into_response();
    if let Ok(v) = HeaderValue::from_str(target.as_str()) {
        r.headers_mut().insert(header::LOCATION, v);
    }
    r
}

// ---------------------------------------------------------------- Graph routing

enum Route {
    Users,
    User(String),
    MailDelta {
        user: String,
        folder: String,
    },
    CalendarDelta {
        user: String,
    },
    MailboxOther {
        user: String,
    },
    Groups,
    Group(String),
    GroupMembers {
        group: String,
        transitive: bool,
        cast: Option<String>,
    },
    DirectoryRoles,
    DirectoryRole(String),
    DirectoryRoleMembers(String),
    Domains,
    Organization,
    ServicePrincipals,
    ServicePrincipal(String),
    SpAssignments(String),
    Unknown,
}

/// `name('arg')` / `name(key='arg')` / `name` -> (lower-case name, arg)
fn seg(s: &str) -> (String, Option<String>) {
    if let Some(open) = s.find('(')
        && s.ends_with(')')
    {
        let name = s[..open].to_ascii_lowercase();
        let mut arg = &s[open + 1..s.len() - 1];
        if let Some((k, v)) = arg.split_once('=')
            && !k.contains('\'')
        {
            arg = v;
        }
        let arg = arg.trim().trim_matches('\'').replace("''", "'");
        return (name, Some(arg));
    }
    (s.to_ascii_lowercase(), None)
}

fn route(path: &str) -> Route {
    let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let parts: Vec<(String, Option<String>)> = segs.iter().map(|s| seg(s)).collect();
    let names: Vec<&str> = parts.iter().map(|(n, _)| n.as_str()).collect();
    let raw = |i: usize| segs[i].to_string();
    let arg = |i: usize| parts[i].1.clone();
    match names.as_slice() {
        ["users"] => match arg(0) {
            Some(k) => Route::User(k),
            None => Route::Users,
        },
        ["users", _] => Route::User(raw(1)),
        ["users", _, "mailfolders", _, "messages", "delta"] => Route::MailDelta {
            user: raw(1),
            folder: raw(3).to_ascii_lowercase(),
        },
        ["users", _, "mailfolders", "messages", "delta"] if arg(2).is_some() => Route::MailDelta {
            user: raw(1),
            folder: arg(2).unwrap_or_default().to_ascii_lowercase(),
        },
        ["users", _, "calendarview", "delta"] => Route::CalendarDelta { user: raw(1) },
        ["users", _, ..] => Route::MailboxOther { user: raw(1) },
        ["groups"] => match arg(0) {
            Some(k) => Route::Group(k),
            None => Route::Groups,
        },
        ["groups", _] => Route::Group(raw(1)),
        ["groups", _, m] | ["groups", _, m, _] if *m == "transitivemembers" || *m == "members" => {
            Route::GroupMembers {
                group: raw(1),
                transitive: *m == "transitivemembers",
                cast: names.get(3).map(|s| s.to_string()),
            }
        }
        ["directoryroles"] => match arg(0) {
            Some(k) => Route::DirectoryRole(k),
            None => Route::DirectoryRoles,
        },
        ["directoryroles", "members"] if arg(0).is_some() => {
            Route::DirectoryRoleMembers(arg(0).unwrap_or_default())
        }
        ["directoryroles", _] => Route::DirectoryRole(raw(1)),
        ["directoryroles", _, "members"] => Route::DirectoryRoleMembers(raw(1)),
        ["domains"] => Route::Domains,
        ["organization"] => Route::Organization,
        ["serviceprincipals"] => match arg(0) {
            Some(k) => Route::ServicePrincipal(k),
            None => Route::ServicePrincipals,
        },
        ["serviceprincipals", "approleassignments"] if arg(0).is_some() => {
            Route::SpAssignments(arg(0).unwrap_or_default())
        }
        ["serviceprincipals", _] => Route::ServicePrincipal(raw(1)),
        ["serviceprincipals", _, "approleassignments"] => Route::SpAssignments(raw(1)),
        _ => Route::Unknown,
    }
}

struct InflightGuard {
    app: Arc<App>,
    mailbox: String,
}

impl Drop for InflightGuard {
    fn drop(&mut self) {
        let mut inner = self.app.lock();
        if let Some(n) = inner.inflight.get_mut(&self.mailbox) {
            *n = n.saturating_sub(1);
        }
    }
}

async fn graph(
    State(app): State<Arc<App>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    let path = percent_decode(uri.path());
    let path = path.strip_prefix("/v1.0").unwrap_or(&path).to_string();
    let q = parse_query(uri.query());
    tracing::debug!(%method, %uri, "graph request");

    // Authentication.
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            let (scheme, tok) = v.split_once(' ')?;
            scheme
                .eq_ignore_ascii_case("bearer")
                .then(|| tok.trim().to_string())
        });
    let r = route(&path);
    let kind = match &r {
        Route::MailDelta { .. } => EndpointKind::Messages,
        Route::CalendarDelta { .. } => EndpointKind::Calendar,
        _ => EndpointKind::Other,
    };
    let mailbox_key = match &r {
        Route::MailDelta { user, .. }
        | Route::CalendarDelta { user }
        | Route::MailboxOther { user } => Some(user.clone()),
        _ => None,
    };

    // Admission (auth, budget, concurrency), all under one lock.
    let (guard, latency, mailbox) = {
        let mut inner = app.lock();
        match &bearer {
            None => {
                return graph_error(
                    StatusCode::UNAUTHORIZED,
                    "InvalidAuthenticationToken",
                    "Access token is empty.",
                );
            }
            Some(t) if !inner.access_tokens.contains(t) => {
                return graph_error(
                    StatusCode::UNAUTHORIZED,
                    "InvalidAuthenticationToken",
                    "Access token validation failure. Invalid audience.",
                );
            }
            _ => {}
        }
        if method != Method::GET {
            return graph_error(
                StatusCode::METHOD_NOT_ALLOWED,
                "Request_BadRequest",
                "The emulator only supports GET on Graph resources.",
            );
        }
        let mailbox = mailbox_key.as_ref().map(|k| inner.mailbox_id(k));
        let mut guard = None;
        if let Some(mb) = &mailbox {
            let max = inner.opts.max_in_flight_per_mailbox.max(1);
            let budget = inner.opts.request_budget_per_mailbox;
            let used = inner.budget_used.get(mb).copied().unwrap_or(0);
            if budget.is_some_and(|b| used >= b) {
                inner.counters.entry(mb.clone()).or_default().throttled += 1;
                return throttled("Application is over its MailboxRequest limit.", 1);
            }
            let cur = inner.inflight.get(mb).copied().unwrap_or(0);
            if cur >= max {
                inner.counters.entry(mb.clone()).or_default().throttled += 1;
                return throttled("Application is over its MailboxConcurrency limit.", 1);
            }
            inner.inflight.insert(mb.clone(), cur + 1);
            *inner.budget_used.entry(mb.clone()).or_default() += 1;
            let c = inner.counters.entry(mb.clone()).or_default();
            c.requests += 1;
            c.max_in_flight = c.max_in_flight.max(cur + 1);
            match kind {
                EndpointKind::Messages => c.messages_delta += 1,
                EndpointKind::Calendar => c.calendar_delta += 1,
                EndpointKind::Other => {}
            }
            guard = Some(InflightGuard {
                app: app.clone(),
                mailbox: mb.clone(),
            });
        }
        (guard, inner.opts.latency_ms, mailbox)
    };

    if latency > 0 {
        tokio::time::sleep(std::time::Duration::from_millis(latency)).await;
    }

    let resp = {
        let mut inner = app.lock();
        // Injected faults.
        let mut fault = None;
        for (i, f) in inner.faults.iter_mut().enumerate() {
            let mb_ok = match (&f.mailbox, &mailbox, &mailbox_key) {
                (None, _, _) => true,
                (Some(want), Some(mb), Some(key)) => {
                    want.eq_ignore_ascii_case(mb) || want.eq_ignore_ascii_case(key)
                }
                _ => false,
            };
            let ep_ok = match f.endpoint {
                None => true,
                Some(k) => k == kind,
            };
            if mb_ok && ep_ok && f.remaining != 0 {
                if f.remaining > 0 {
                    f.remaining -= 1;
                }
                fault = Some((i, f.status, f.retry_after));
                break;
            }
        }
        if let Some((i, status, retry_after)) = fault {
            if inner.faults[i].remaining == 0 {
                inner.faults.remove(i);
            }
            if status == 429
                && let Some(mb) = &mailbox
            {
                inner.counters.entry(mb.clone()).or_default().throttled += 1;
            }
            fault_response(status, retry_after)
        } else {
            dispatch(&app.base_url, &mut inner, r, &q, &headers)
        }
    };
    drop(guard);
    resp
}

fn dispatch(
    base: &str,
    inner: &mut Inner,
    r: Route,
    q: &HashMap<String, String>,
    headers: &HeaderMap,
) -> Response {
    match r {
        Route::Users => list_users(base, inner, q),
        Route::User(k) => match inner.user(&k) {
            Some(u) => {
                let mut v = user_json(u);
                v["@odata.context"] = json!(format!("{base}/v1.0/$metadata#users/$entity"));
                graph_json(StatusCode::OK, v)
            }
            None => not_found(&k),
        },
        Route::MailDelta { user, folder } => {
            if inner.user(&user).is_none() {
                return invalid_user(&user);
            }
            let mb = inner.mailbox_id(&user);
            delta(
                base,
                inner,
                q,
                headers,
                DeltaReq::Mail {
                    mailbox: mb,
                    folder,
                },
            )
        }
        Route::CalendarDelta { user } => {
            if inner.user(&user).is_none() {
                return invalid_user(&user);
            }
            let mb = inner.mailbox_id(&user);
            delta(base, inner, q, headers, DeltaReq::Calendar { mailbox: mb })
        }
        Route::MailboxOther { user } => {
            if inner.user(&user).is_none() {
                return invalid_user(&user);
            }
            unsupported()
        }
        Route::Groups => list_groups(base, inner, q),
        Route::Group(k) => match inner.group_idx.get(&k.to_ascii_lowercase()) {
            Some(i) => {
                let mut v = group_json(&inner.groups[*i]);
                v["@odata.context"] = json!(format!("{base}/v1.0/$metadata#groups/$entity"));
                graph_json(StatusCode::OK, v)
            }
            None => not_found(&k),
        },
        Route::GroupMembers {
            group,
            transitive,
            cast,
        } => group_members(base, inner, q, &group, transitive, cast.as_deref()),
        Route::DirectoryRoles => graph_json(
            StatusCode::OK,
            json!({"@odata.context": format!("{base}/v1.0/$metadata#directoryRoles"),
                   "value": [role_json(inner)]}),
        ),
        Route::DirectoryRole(k) => {
            if k.eq_ignore_ascii_case(GLOBAL_ADMIN_TEMPLATE)
                || k.eq_ignore_ascii_case(&inner.role_id)
            {
                let mut v = role_json(inner);
                v["@odata.context"] =
                    json!(format!("{base}/v1.0/$metadata#directoryRoles/$entity"));
                graph_json(StatusCode::OK, v)
            } else {
                not_found(&k)
            }
        }
        Route::DirectoryRoleMembers(k) => {
            if k.eq_ignore_ascii_case(GLOBAL_ADMIN_TEMPLATE)
                || k.eq_ignore_ascii_case(&inner.role_id)
            {
                let value: Vec<Value> = inner
                    .users
                    .iter()
                    .filter(|u| u.admin)
                    .map(|u| {
                        let (given, sur) = u
                            .display_name
                            .split_once(' ')
                            .unwrap_or((&u.display_name, ""));
                        json!({
                            "@odata.type": "#microsoft.graph.user",
                            "id": u.id,
                            "businessPhones": [],
                            "displayName": u.display_name,
                            "givenName": given,
                            "jobTitle": null,
                            "mail": nonempty(&u.mail),
                            "officeLocation": null,
                            "preferredLanguage": "en-US",
                            "surname": sur,
                            "userPrincipalName": upn(u),
                        })
                    })
                    .collect();
                graph_json(
                    StatusCode::OK,
                    json!({"@odata.context": format!("{base}/v1.0/$metadata#directoryObjects"), "value": value}),
                )
            } else {
                not_found(&k)
            }
        }
        Route::Domains => {
            let value: Vec<Value> = inner
                .domains
                .iter()
                .enumerate()
                .map(|(i, d)| {
                    json!({
                        "authenticationType": "Managed",
                        "availabilityStatus": null,
                        "id": d,
                        "isAdminManaged": true,
                        "isDefault": i == 0,
                        "isInitial": false,
                        "isRoot": true,
                        "isVerified": true,
                        "supportedServices": ["Email", "OfficeCommunicationsOnline"],
                    })
                })
                .collect();
            graph_json(
                StatusCode::OK,
                json!({"@odata.context": format!("{base}/v1.0/$metadata#domains"), "value": value}),
            )
        }
        Route::Organization => graph_json(
            StatusCode::OK,
            json!({"@odata.context": format!("{base}/v1.0/$metadata#organization"),
                   "value": [{"id": inner.tenant_id, "displayName": "Emulated tenant",
                              "verifiedDomains": inner.domains.iter().enumerate().map(|(i, d)| json!({"name": d, "isDefault": i == 0, "isInitial": false, "type": "Managed", "capabilities": "Email, OfficeCommunicationsOnline"})).collect::<Vec<_>>()}]}),
        ),
        Route::ServicePrincipals => list_sps(base, inner, q),
        Route::ServicePrincipal(k) => match sp_json(inner, &k) {
            Some(mut v) => {
                v["@odata.context"] =
                    json!(format!("{base}/v1.0/$metadata#servicePrincipals/$entity"));
                graph_json(StatusCode::OK, v)
            }
            None => not_found(&k),
        },
        Route::SpAssignments(k) => sp_assignments(base, inner, &k),
        Route::Unknown => unsupported(),
    }
}

fn unsupported() -> Response {
    graph_error(
        StatusCode::BAD_REQUEST,
        "BadRequest",
        "Resource not found for the segment (not emulated).",
    )
}

fn not_found(k: &str) -> Response {
    graph_error(
        StatusCode::NOT_FOUND,
        "Request_ResourceNotFound",
        &format!(
            "Resource '{k}' does not exist or one of its queried reference-property objects are not present."
        ),
    )
}

fn invalid_user(k: &str) -> Response {
    graph_error(
        StatusCode::NOT_FOUND,
        "ErrorInvalidUser",
        &format!("The requested user '{k}' is invalid."),
    )
}

fn nonempty(s: &str) -> Value {
    if s.is_empty() { Value::Null } else { json!(s) }
}

fn upn(u: &FixtureUser) -> String {
    if u.user_principal_name.is_empty() {
        if u.mail.is_empty() {
            u.id.clone()
        } else {
            u.mail.clone()
        }
    } else {
        u.user_principal_name.clone()
    }
}

fn user_json(u: &FixtureUser) -> Value {
    json!({"id": u.id, "displayName": u.display_name, "mail": nonempty(&u.mail), "userPrincipalName": upn(u)})
}

fn group_json(g: &FixtureGroup) -> Value {
    json!({"id": g.id, "displayName": g.display_name, "mail": nonempty(&g.mail),
           "mailEnabled": !g.mail.is_empty(), "securityEnabled": false, "groupTypes": ["Unified"]})
}

fn role_json(inner: &Inner) -> Value {
    json!({"id": inner.role_id, "displayName": "Global Administrator",
           "description": "Can manage all aspects of Microsoft Entra ID and Microsoft services that use Microsoft Entra identities.",
           "roleTemplateId": GLOBAL_ADMIN_TEMPLATE})
}

// ---------------------------------------------------------------- $filter

enum Clause {
    Eq(String, String),
    AnyProxy(String),
}

fn quoted(s: &str) -> Option<String> {
    let s = s.trim();
    if s.len() >= 2 && s.starts_with('\'') && s.ends_with('\'') {
        Some(s[1..s.len() - 1].replace("''", "'"))
    } else {
        None
    }
}

fn split_or(f: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut in_q = false;
    let chars: Vec<char> = f.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c == '\'' {
            in_q = !in_q;
        }
        if !in_q && c == ' ' && i + 4 <= chars.len() {
            let w: String = chars[i..(i + 4).min(chars.len())].iter().collect();
            if w.eq_ignore_ascii_case(" or ") {
                out.push(std::mem::take(&mut cur));
                i += 4;
                continue;
            }
        }
        cur.push(c);
        i += 1;
    }
    out.push(cur);
    out
}

fn strip_parens(s: &str) -> &str {
    let mut s = s.trim();
    while s.starts_with('(') && s.ends_with(')') {
        // only strip when the parentheses enclose the whole clause
        let inner = &s[1..s.len() - 1];
        let mut depth = 0i32;
        let mut ok = true;
        let mut in_q = false;
        for c in inner.chars() {
            match c {
                '\'' => in_q = !in_q,
                '(' if !in_q => depth += 1,
                ')' if !in_q => {
                    depth -= 1;
                    if depth < 0 {
                        ok = false;
                        break;
                    }
                }
                _ => {}
            }
        }
        if !ok {
            break;
        }
        s = inner.trim();
    }
    s
}

fn parse_eq(s: &str) -> Option<(String, String)> {
    let lower = s.to_ascii_lowercase();
    let pos = lower.find(" eq ")?;
    let field = s[..pos].trim().to_string();
    let value = quoted(&s[pos + 4..])?;
    Some((field, value))
}

#[allow(clippy::result_large_err)]
fn parse_filter(f: &str) -> Result<Vec<Clause>, Response> {
    let invalid = || {
        graph_error(
            StatusCode::BAD_REQUEST,
            "Request_UnsupportedQuery",
            &format!("Unsupported or invalid query filter clause specified: '{f}'."),
        )
    };
    let mut out = Vec::new();
    for part in split_or(f) {
        let c = strip_parens(&part);
        let lower = c.to_ascii_lowercase();
        if lower.starts_with("proxyaddresses/any(") && c.ends_with(')') {
            let inner = &c["proxyaddresses/any(".len()..c.len() - 1];
            let (var, rest) = inner.split_once(':').ok_or_else(invalid)?;
            let (field, value) = parse_eq(rest).ok_or_else(invalid)?;
            if field.trim() != var.trim() {
                return Err(invalid());
            }
            out.push(Clause::AnyProxy(value));
        } else {
            let (field, value) = parse_eq(c).ok_or_else(invalid)?;
            out.push(Clause::Eq(field, value));
        }
    }
    Ok(out)
}

fn user_matches(u: &FixtureUser, c: &Clause) -> bool {
    match c {
        Clause::Eq(f, v) => match f.to_ascii_lowercase().as_str() {
            "mail" => u.mail.eq_ignore_ascii_case(v),
            "userprincipalname" => upn(u).eq_ignore_ascii_case(v),
            "id" => u.id.eq_ignore_ascii_case(v),
            "displayname" => u.display_name.eq_ignore_ascii_case(v),
            _ => false,
        },
        Clause::AnyProxy(v) => {
            u.proxy_addresses.iter().any(|p| p.eq_ignore_ascii_case(v))
                || (!u.mail.is_empty() && format!("smtp:{}", u.mail).eq_ignore_ascii_case(v))
        }
    }
}

// ---------------------------------------------------------------- lists and paging

fn page_params(q: &HashMap<String, String>, default_top: usize) -> (usize, usize) {
    let top = q
        .get("$top")
        .and_then(|t| t.parse::<usize>().ok())
        .filter(|t| *t > 0)
        .unwrap_or(default_top)
        .min(999);
    let offset = q
        .get("$skiptoken")
        .and_then(|t| {
            base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(t)
                .ok()
        })
        .and_then(|b| String::from_utf8(b).ok())
        .and_then(|s| s.strip_prefix("offset:").and_then(|n| n.parse().ok()))
        .unwrap_or(0);
    (top, offset)
}

fn paged(
    link_base: &str,
    keep: &[(&str, Option<&String>)],
    context: String,
    items: Vec<Value>,
    q: &HashMap<String, String>,
    default_top: usize,
) -> Response {
    let (top, offset) = page_params(q, default_top);
    let total = items.len();
    let end = (offset + top).min(total);
    let value: Vec<Value> = items.into_iter().skip(offset).take(top).collect();
    let mut body = Map::new();
    body.insert("@odata.context".into(), json!(context));
    if q.get("$count")
        .is_some_and(|c| c.eq_ignore_ascii_case("true"))
    {
        body.insert("@odata.count".into(), json!(total));
    }
    if end < total {
        let mut link = format!("{link_base}?");
        for (k, v) in keep {
            if let Some(v) = v {
                link.push_str(&format!("{k}={}&", enc(v)));
            }
        }
        let tok = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(format!("offset:{end}"));
        link.push_str(&format!("$top={top}&$skiptoken={tok}"));
        body.insert("@odata.nextLink".into(), json!(link));
    }
    body.insert("value".into(), Value::Array(value));
    graph_json(StatusCode::OK, Value::Object(body))
}

fn list_users(base: &str, inner: &Inner, q: &HashMap<String, String>) -> Response {
    let filter = q.get("$filter");
    let items: Vec<Value> = match filter {
        Some(f) => {
            let clauses = match parse_filter(f) {
                Ok(c) => c,
                Err(r) => return r,
            };
            inner
                .users
                .iter()
                .filter(|u| clauses.iter().any(|c| user_matches(u, c)))
                .map(user_json)
                .collect()
        }
        None => inner.users.iter().map(user_json).collect(),
    };
    paged(
        &format!("{base}/v1.0/users"),
        &[("$filter", filter)],
        format!("{base}/v1.0/$metadata#users"),
        items,
        q,
        100,
    )
}

fn list_groups(base: &str, inner: &Inner, q: &HashMap<String, String>) -> Response {
    let filter = q.get("$filter");
    let items: Vec<Value> = match filter {
        Some(f) => {
            let clauses = match parse_filter(f) {
                Ok(c) => c,
                Err(r) => return r,
            };
            inner
                .groups
                .iter()
                .filter(|g| {
                    clauses.iter().any(|c| match c {
                        Clause::Eq(f, v) => match f.to_ascii_lowercase().as_str() {
                            "mail" => g.mail.eq_ignore_ascii_case(v),
                            "id" => g.id.eq_ignore_ascii_case(v),
                            "displayname" => g.display_name.eq_ignore_ascii_case(v),
                            _ => false,
                        },
                        Clause::AnyProxy(v) => format!("smtp:{}", g.mail).eq_ignore_ascii_case(v),
                    })
                })
                .map(group_json)
                .collect()
        }
        None => inner.groups.iter().map(group_json).collect(),
    };
    paged(
        &format!("{base}/v1.0/groups"),
        &[("$filter", filter)],
        format!("{base}/v1.0/$metadata#groups"),
        items,
        q,
        100,
    )
}

fn group_members(
    base: &str,
    inner: &Inner,
    q: &HashMap<String, String>,
    group: &str,
    transitive: bool,
    cast: Option<&str>,
) -> Response {
    let Some(&gi) = inner.group_idx.get(&group.to_ascii_lowercase()) else {
        return not_found(group);
    };
    let mut group_by_id: HashMap<String, usize> = HashMap::new();
    for (i, g) in inner.groups.iter().enumerate() {
        group_by_id.insert(g.id.to_ascii_lowercase(), i);
    }
    let user_by_id: HashMap<String, usize> = inner
        .users
        .iter()
        .enumerate()
        .map(|(i, u)| (u.id.to_ascii_lowercase(), i))
        .collect();
    // (is_user, index) in discovery order, each once
    let mut out: Vec<(bool, usize)> = Vec::new();
    let mut seen_users = HashSet::new();
    let mut seen_groups = HashSet::new();
    seen_groups.insert(gi);
    let mut queue = std::collections::VecDeque::from([gi]);
    while let Some(g) = queue.pop_front() {
        for m in &inner.groups[g].members {
            let m = m.to_ascii_lowercase();
            if let Some(&ui) = user_by_id.get(&m) {
                if seen_users.insert(ui) {
                    out.push((true, ui));
                }
            } else if let Some(&gj) = group_by_id.get(&m)
                && seen_groups.insert(gj)
            {
                out.push((false, gj));
                if transitive {
                    queue.push_back(gj);
                }
            }
        }
        if !transitive {
            break;
        }
    }
    let (want_users, want_groups, ctx) = match cast {
        None => (true, true, "directoryObjects"),
        Some("microsoft.graph.user") => (true, false, "users"),
        Some("microsoft.graph.group") => (false, true, "groups"),
        Some(_) => return unsupported(),
    };
    let items: Vec<Value> = out
        .into_iter()
        .filter(|(u, _)| if *u { want_users } else { want_groups })
        .map(|(u, i)| {
            if u {
                let mut v = user_json(&inner.users[i]);
                v["@odata.type"] = json!("#microsoft.graph.user");
                v
            } else {
                let g = &inner.groups[i];
                json!({"@odata.type": "#microsoft.graph.group", "id": g.id, "displayName": g.display_name, "mail": nonempty(&g.mail)})
            }
        })
        .collect();
    let seg = if transitive {
        "transitiveMembers"
    } else {
        "members"
    };
    let link = match cast {
        Some(c) => format!("{base}/v1.0/groups/{}/{seg}/{c}", inner.groups[gi].id),
        None => format!("{base}/v1.0/groups/{}/{seg}", inner.groups[gi].id),
    };
    paged(
        &link,
        &[("$select", q.get("$select"))],
        format!("{base}/v1.0/$metadata#{ctx}"),
        items,
        q,
        100,
    )
}

fn graph_sp_json(inner: &Inner) -> Value {
    let roles: Vec<Value> = CONSENTED_ROLES
        .iter()
        .map(|(name, id)| {
            json!({"allowedMemberTypes": ["Application"], "description": name, "displayName": name,
                   "id": id, "isEnabled": true, "origin": "Application", "value": name})
        })
        .collect();
    json!({"id": inner.graph_sp_id, "appId": GRAPH_APP_ID, "displayName": "Microsoft Graph",
           "accountEnabled": true, "servicePrincipalType": "Application",
           "appOwnerOrganizationId": "f8cdef31-a31e-4b4a-93e4-5f571e91255a", "appRoles": roles})
}

fn sp_json(inner: &Inner, key: &str) -> Option<Value> {
    if key.eq_ignore_ascii_case(&inner.graph_sp_id) || key.eq_ignore_ascii_case(GRAPH_APP_ID) {
        return Some(graph_sp_json(inner));
    }
    inner
        .sps
        .iter()
        .find(|s| s.id.eq_ignore_ascii_case(key) || s.app_id.eq_ignore_ascii_case(key))
        .map(|s| one_sp_json(inner, s))
}

fn one_sp_json(inner: &Inner, s: &ServicePrincipal) -> Value {
    json!({"id": s.id, "appId": s.app_id, "displayName": s.display_name, "appDisplayName": s.display_name,
           "accountEnabled": true, "servicePrincipalType": "Application",
           "appOwnerOrganizationId": inner.tenant_id, "signInAudience": "AzureADMultipleOrgs",
           "appRoles": [], "createdDateTime": fmt_graph_time(&s.created)})
}

fn list_sps(base: &str, inner: &Inner, q: &HashMap<String, String>) -> Response {
    let mut all: Vec<(String, String, Value)> = vec![(
        GRAPH_APP_ID.to_string(),
        "Microsoft Graph".to_string(),
        graph_sp_json(inner),
    )];
    for s in &inner.sps {
        all.push((
            s.app_id.clone(),
            s.display_name.clone(),
            one_sp_json(inner, s),
        ));
    }
    let items: Vec<Value> = match q.get("$filter") {
        Some(f) => {
            let clauses = match parse_filter(f) {
                Ok(c) => c,
                Err(r) => return r,
            };
            all.into_iter()
                .filter(|(app, name, v)| {
                    clauses.iter().any(|c| match c {
                        Clause::Eq(f, val) => match f.to_ascii_lowercase().as_str() {
                            "appid" => app.eq_ignore_ascii_case(val),
                            "displayname" => name.eq_ignore_ascii_case(val),
                            "id" => v["id"]
                                .as_str()
                                .is_some_and(|i| i.eq_ignore_ascii_case(val)),
                            _ => false,
                        },
                        Clause::AnyProxy(_) => false,
                    })
                })
                .map(|(_, _, v)| v)
                .collect()
        }
        None => all.into_iter().map(|(_, _, v)| v).collect(),
    };
    paged(
        &format!("{base}/v1.0/servicePrincipals"),
        &[("$filter", q.get("$filter"))],
        format!("{base}/v1.0/$metadata#servicePrincipals"),
        items,
        q,
        100,
    )
}

fn sp_assignments(base: &str, inner: &Inner, key: &str) -> Response {
    let ctx = format!("{base}/v1.0/$metadata#servicePrincipals('{key}')/appRoleAssignments");
    if key.eq_ignore_ascii_case(&inner.graph_sp_id) || key.eq_ignore_ascii_case(GRAPH_APP_ID) {
        return graph_json(StatusCode::OK, json!({"@odata.context": ctx, "value": []}));
    }
    let Some(s) = inner
        .sps
        .iter()
        .find(|s| s.id.eq_ignore_ascii_case(key) || s.app_id.eq_ignore_ascii_case(key))
    else {
        return not_found(key);
    };
    let value: Vec<Value> = CONSENTED_ROLES
        .iter()
        .zip(&s.assignment_ids)
        .map(|((_, role), aid)| {
            json!({"id": aid, "deletedDateTime": null, "createdDateTime": fmt_modified(&s.created),
                   "appRoleId": role, "principalDisplayName": s.display_name, "principalId": s.id,
                   "principalType": "ServicePrincipal", "resourceDisplayName": "Microsoft Graph",
                   "resourceId": inner.graph_sp_id})
        })
        .collect();
    graph_json(
        StatusCode::OK,
        json!({"@odata.context": ctx, "value": value}),
    )
}

// ---------------------------------------------------------------- delta

enum DeltaReq {
    Mail { mailbox: String, folder: String },
    Calendar { mailbox: String },
}

fn page_size(headers: &HeaderMap) -> (usize, bool) {
    for v in headers.get_all("prefer") {
        let Ok(v) = v.to_str() else { continue };
        for pref in v.split([',', ';']) {
            let pref = pref.trim();
            if let Some((k, n)) = pref.split_once('=')
                && k.trim().eq_ignore_ascii_case("odata.maxpagesize")
                && let Ok(n) = n.trim().trim_matches('"').parse::<usize>()
            {
                return (n.clamp(1, 1000), true);
            }
        }
    }
    (10, false)
}

fn kind_matches(kind: &SyncKind, req: &DeltaReq) -> bool {
    matches!(
        (kind, req),
        (SyncKind::Mail { .. }, DeltaReq::Mail { .. })
            | (SyncKind::Calendar { .. }, DeltaReq::Calendar { .. })
    )
}

fn delta(
    base: &str,
    inner: &mut Inner,
    q: &HashMap<String, String>,
    headers: &HeaderMap,
    req: DeltaReq,
) -> Response {
    let (n, explicit) = page_size(headers);
    let state = if let Some(t) = q.get("$skiptoken") {
        match inner.sync.get(t) {
            Some(s) if matches!(s.stage, Stage::Page { .. }) && kind_matches(&s.kind, &req) => {
                s.clone()
            }
            _ => return sync_not_found(),
        }
    } else if let Some(t) = q.get("$deltatoken") {
        match inner.sync.get(t) {
            Some(s) if kind_matches(&s.kind, &req) => {
                let s = s.clone();
                match s.stage {
                    Stage::Delta { w_seq, w_now } => {
                        start_round(inner, s.kind, s.select, Some((w_seq, w_now)))
                    }
                    Stage::Page { .. } => return sync_not_found(),
                }
            }
            _ => return sync_not_found(),
        }
    } else {
        let select = q.get("$select").map(|s| {
            s.split(',')
                .map(|f| f.trim().to_ascii_lowercase())
                .filter(|f| !f.is_empty())
                .collect::<Vec<_>>()
        });
        let kind = match req {
            DeltaReq::Mail { mailbox, folder } => SyncKind::Mail { mailbox, folder },
            DeltaReq::Calendar { mailbox } => {
                let start = q.get("startdatetime").and_then(|s| parse_time(s));
                let end = q.get("enddatetime").and_then(|s| parse_time(s));
                match (start, end) {
                    (Some(start), Some(end)) if start <= end => SyncKind::Calendar {
                        mailbox,
                        start,
                        end,
                    },
                    _ => {
                        return graph_error(
                            StatusCode::BAD_REQUEST,
                            "ErrorInvalidParameter",
                            "This request requires a time window specified by the query string parameters StartDateTime and EndDateTime.",
                        );
                    }
                }
            }
        };
        start_round(inner, kind, select, None)
    };
    let mut resp = render_page(base, inner, state, n);
    if explicit && let Ok(v) = HeaderValue::from_str(&format!("odata.maxpagesize={n}")) {
        resp.headers_mut().insert("preference-applied", v);
    }
    resp
}

/// Computes the ids of a round (initial when `w` is None) as a fresh Page state.
fn start_round(
    inner: &Inner,
    kind: SyncKind,
    select: Option<Vec<String>>,
    w: Option<(u64, DateTime<Utc>)>,
) -> SyncState {
    let now = inner.now;
    let ids: Vec<String>;
    match &kind {
        SyncKind::Mail { mailbox, folder } => {
            let coll = msg_coll(mailbox, folder);
            let mut live: Vec<&Slot<FixtureMessage>> = inner
                .messages
                .coll(&coll)
                .filter(|s| s.item.received_date_time <= now)
                .filter(|s| match w {
                    None => true,
                    Some((ws, wn)) => s.seq > ws || s.item.received_date_time > wn,
                })
                .collect();
            let mut entries: Vec<(u64, String)> = Vec::new();
            if w.is_none() {
                live.sort_by_key(|s| std::cmp::Reverse(s.item.received_date_time));
                ids = live.iter().map(|s| s.item.id.clone()).collect();
            } else {
                let live_ids: HashSet<&str> = live.iter().map(|s| s.item.id.as_str()).collect();
                entries.extend(live.iter().map(|s| (s.seq, s.item.id.clone())));
                add_tombs(&mut entries, inner.messages.tombs(&coll), w, &live_ids);
                entries.sort();
                ids = entries.into_iter().map(|(_, id)| id).collect();
            }
        }
        SyncKind::Calendar {
            mailbox,
            start,
            end,
        } => {
            let in_window = |e: &FixtureEvent| e.start >= *start && e.start < *end;
            match w {
                None => {
                    let mut live: Vec<&Slot<FixtureEvent>> = inner
                        .events
                        .coll(mailbox)
                        .filter(|s| in_window(&s.item))
                        .collect();
                    live.sort_by_key(|s| s.item.start);
                    ids = live.iter().map(|s| s.item.id.clone()).collect();
                }
                Some((ws, _)) => {
                    let changed: Vec<&Slot<FixtureEvent>> =
                        inner.events.coll(mailbox).filter(|s| s.seq > ws).collect();
                    let live_ids: HashSet<&str> =
                        changed.iter().map(|s| s.item.id.as_str()).collect();
                    let mut entries: Vec<(u64, String)> =
                        changed.iter().map(|s| (s.seq, s.item.id.clone())).collect();
                    add_tombs(&mut entries, inner.events.tombs(mailbox), w, &live_ids);
                    entries.sort();
                    ids = entries.into_iter().map(|(_, id)| id).collect();
                }
            }
        }
    }
    SyncState {
        kind,
        stage: Stage::Page {
            ids: Arc::new(ids),
            pos: 0,
            w_seq: inner.seq,
            w_now: now,
        },
        select,
    }
}

fn add_tombs(
    entries: &mut Vec<(u64, String)>,
    tombs: &[(String, u64)],
    w: Option<(u64, DateTime<Utc>)>,
    live: &HashSet<&str>,
) {
    let Some((ws, _)) = w else { return };
    let mut seen = HashSet::new();
    for (id, s) in tombs.iter().rev() {
        if *s > ws && !live.contains(id.as_str()) && seen.insert(id.clone()) {
            entries.push((*s, id.clone()));
        }
    }
}

fn render_page(base: &str, inner: &mut Inner, state: SyncState, n: usize) -> Response {
    let Stage::Page {
        ids,
        pos,
        w_seq,
        w_now,
    } = state.stage.clone()
    else {
        return sync_not_found();
    };
    let end = (pos + n).min(ids.len());
    let mut value = Vec::with_capacity(end - pos);
    for id in &ids[pos..end] {
        value.push(render_item(inner, &state, id));
    }
    let (link_base, ctx) = match &state.kind {
        SyncKind::Mail { mailbox, folder } => (
            format!("{base}/v1.0/users/{mailbox}/mailFolders/{folder}/messages/delta"),
            "Collection(message)",
        ),
        SyncKind::Calendar { mailbox, .. } => (
            format!("{base}/v1.0/users/{mailbox}/calendarView/delta"),
            "Collection(event)",
        ),
    };
    let tok = random_token(48);
    let mut body = Map::new();
    body.insert(
        "@odata.context".into(),
        json!(format!("{base}/v1.0/$metadata#{ctx}")),
    );
    if end < ids.len() {
        body.insert(
            "@odata.nextLink".into(),
            json!(format!("{link_base}?$skiptoken={tok}")),
        );
        inner.sync.insert(
            tok,
            SyncState {
                kind: state.kind.clone(),
                stage: Stage::Page {
                    ids: ids.clone(),
                    pos: end,
                    w_seq,
                    w_now,
                },
                select: state.select.clone(),
            },
        );
    } else {
        body.insert(
            "@odata.deltaLink".into(),
            json!(format!("{link_base}?$deltatoken={tok}")),
        );
        inner.sync.insert(
            tok,
            SyncState {
                kind: state.kind.clone(),
                stage: Stage::Delta { w_seq, w_now },
                select: state.select.clone(),
            },
        );
    }
    body.insert("value".into(), Value::Array(value));
    graph_json(StatusCode::OK, Value::Object(body))
}

fn removed(odata_type: &str, id: &str) -> Value {
    json!({"@odata.type": odata_type, "id": id, "@removed": {"reason": "deleted"}})
}

fn etag(seq: u64) -> String {
    format!("W/\"CQAAABYAAAARn2vdzPFjSbaPPxzjlzOT{seq:08X}\"")
}

fn render_item(inner: &Inner, state: &SyncState, id: &str) -> Value {
    let wants = |f: &str| match &state.select {
        None => true,
        Some(s) => s.iter().any(|x| x == f),
    };
    let full = state.select.is_none();
    match &state.kind {
        SyncKind::Mail { mailbox, folder } => {
            let coll = msg_coll(mailbox, folder);
            let Some(slot) = inner
                .messages
                .get(mailbox, id)
                .filter(|s| s.coll == coll && s.item.received_date_time <= inner.now)
            else {
                return removed("#microsoft.graph.message", id);
            };
            let m = &slot.item;
            let mut o = Map::new();
            o.insert("@odata.type".into(), json!("#microsoft.graph.message"));
            o.insert("@odata.etag".into(), json!(etag(slot.seq)));
            o.insert("id".into(), json!(m.id));
            if wants("subject") {
                o.insert("subject".into(), json!(m.subject));
            }
            if full || wants("isread") {
                o.insert("isRead".into(), json!(m.folder == "sentitems"));
            }
            if full || wants("sender") {
                o.insert("sender".into(), inner.email_address(&m.from));
            }
            if full || wants("bodypreview") {
                o.insert("bodyPreview".into(), json!(""));
            }
            o.insert("from".into(), inner.email_address(&m.from));
            o.insert(
                "toRecipients".into(),
                Value::Array(m.to.iter().map(|a| inner.email_address(a)).collect()),
            );
            o.insert(
                "ccRecipients".into(),
                Value::Array(m.cc.iter().map(|a| inner.email_address(a)).collect()),
            );
            o.insert(
                "sentDateTime".into(),
                json!(fmt_graph_time(&m.sent_date_time)),
            );
            o.insert(
                "receivedDateTime".into(),
                json!(fmt_graph_time(&m.received_date_time)),
            );
            o.insert("internetMessageId".into(), json!(m.internet_message_id));
            o.insert("conversationId".into(), json!(m.conversation_id));
            o.insert("isDraft".into(), json!(m.is_draft));
            Value::Object(o)
        }
        SyncKind::Calendar {
            mailbox,
            start,
            end,
        } => {
            let Some(slot) = inner
                .events
                .get(mailbox, id)
                .filter(|s| s.item.start >= *start && s.item.start < *end)
            else {
                return removed("#microsoft.graph.event", id);
            };
            let e = &slot.item;
            let modified = fmt_modified(&slot.modified);
            let mut o = Map::new();
            o.insert("@odata.type".into(), json!("#microsoft.graph.event"));
            o.insert("@odata.etag".into(), json!(etag(slot.seq)));
            o.insert("id".into(), json!(e.id));
            o.insert("iCalUId".into(), json!(e.ical_uid));
            if wants("subject") {
                o.insert("subject".into(), json!(e.subject));
            }
            if full || wants("body") {
                o.insert("body".into(), json!({"contentType": "html", "content": ""}));
            }
            o.insert("organizer".into(), inner.email_address(&e.organizer));
            let attendees: Vec<Value> = e
                .attendees
                .iter()
                .map(|a| {
                    let mut v = inner.email_address(a);
                    v["type"] = json!("required");
                    v["status"] = json!({"response": if e.is_cancelled { "none" } else { "accepted" }, "time": modified});
                    v
                })
                .collect();
            o.insert("attendees".into(), Value::Array(attendees));
            o.insert(
                "start".into(),
                json!({"dateTime": fmt_event_time(&e.start), "timeZone": "UTC"}),
            );
            o.insert(
                "end".into(),
                json!({"dateTime": fmt_event_time(&e.end), "timeZone": "UTC"}),
            );
            o.insert("isCancelled".into(), json!(e.is_cancelled));
            o.insert("isAllDay".into(), json!(e.is_all_day));
            o.insert("sensitivity".into(), json!(e.sensitivity));
            o.insert("type".into(), json!(e.event_type));
            o.insert("lastModifiedDateTime".into(), json!(modified));
            Value::Object(o)
        }
    }
}

// ---------------------------------------------------------------- control endpoints

async fn ctl_activity(State(app): State<Arc<App>>, body: Bytes) -> Response {
    #[derive(serde::Deserialize)]
    struct Activity {
        #[serde(default)]
        messages: Vec<FixtureMessage>,
        #[serde(default)]
        events: Vec<FixtureEvent>,
    }
    let a: Activity = match serde_json::from_slice(&body) {
        Ok(a) => a,
        Err(e) => return plain_json(StatusCode::BAD_REQUEST, json!({"error": e.to_string()})),
    };
    let mut inner = app.lock();
    let (nm, ne) = (a.messages.len(), a.events.len());
    let now = inner.now;
    for m in a.messages {
        inner.upsert_message(m, Some(now));
    }
    for e in a.events {
        inner.upsert_event(e, Some(now));
    }
    plain_json(
        StatusCode::OK,
        json!({"messages": nm, "events": ne, "seq": inner.seq}),
    )
}

async fn ctl_remove(State(app): State<Arc<App>>, body: Bytes) -> Response {
    #[derive(serde::Deserialize)]
    struct Remove {
        #[serde(default)]
        messages: Vec<String>,
        #[serde(default)]
        events: Vec<String>,
    }
    let r: Remove = match serde_json::from_slice(&body) {
        Ok(a) => a,
        Err(e) => return plain_json(StatusCode::BAD_REQUEST, json!({"error": e.to_string()})),
    };
    let mut inner = app.lock();
    let mut nm = 0;
    let mut ne = 0;
    for id in &r.messages {
        let seq = inner.next_seq();
        nm += inner.messages.remove_id(id, seq);
    }
    for id in &r.events {
        let seq = inner.next_seq();
        ne += inner.events.remove_id(id, seq);
    }
    plain_json(
        StatusCode::OK,
        json!({"messages": nm, "events": ne, "seq": inner.seq}),
    )
}

fn now_json(inner: &Inner) -> Response {
    plain_json(
        StatusCode::OK,
        json!({"now": inner.now.to_rfc3339_opts(SecondsFormat::Secs, true)}),
    )
}

async fn ctl_get_now(State(app): State<Arc<App>>) -> Response {
    now_json(&app.lock())
}

async fn ctl_set_now(State(app): State<Arc<App>>, body: Bytes) -> Response {
    let v = match body_json(&body) {
        Ok(v) => v,
        Err(r) => return r,
    };
    let mut inner = app.lock();
    if let Some(s) = v.get("now").and_then(Value::as_str) {
        match parse_time(s) {
            Some(t) => inner.now = t,
            None => return plain_json(StatusCode::BAD_REQUEST, json!({"error": "invalid now"})),
        }
    }
    if let Some(d) = v.get("advance_days").and_then(Value::as_f64) {
        inner.now += Duration::seconds((d * 86400.0) as i64);
    }
    if let Some(s) = v.get("advance_seconds").and_then(Value::as_i64) {
        inner.now += Duration::seconds(s);
    }
    now_json(&inner)
}

fn parse_fault(v: &Value) -> Result<Fault, String> {
    let mailbox = v.get("mailbox").and_then(Value::as_str).map(str::to_string);
    let endpoint = match v.get("endpoint").and_then(Value::as_str).unwrap_or("any") {
        "messages" | "mail" => Some(EndpointKind::Messages),
        "calendar" | "events" => Some(EndpointKind::Calendar),
        "any" => None,
        other => {
            return Err(format!(
                "unknown endpoint '{other}' (messages|calendar|any)"
            ));
        }
    };
    let status = v.get("status").and_then(Value::as_u64).unwrap_or(503);
    if !(400..=599).contains(&status) {
        return Err("status must be 4xx or 5xx".into());
    }
    Ok(Fault {
        mailbox,
        endpoint,
        status: status as u16,
        remaining: v.get("count").and_then(Value::as_i64).unwrap_or(1),
        retry_after: v.get("retry_after").and_then(Value::as_u64).unwrap_or(1),
    })
}

async fn ctl_faults(State(app): State<Arc<App>>, body: Bytes) -> Response {
    let v = match body_json(&body) {
        Ok(v) => v,
        Err(r) => return r,
    };
    let list = match v {
        Value::Array(a) => a,
        other => vec![other],
    };
    let mut faults = Vec::new();
    for f in &list {
        match parse_fault(f) {
            Ok(f) => faults.push(f),
            Err(e) => return plain_json(StatusCode::BAD_REQUEST, json!({"error": e})),
        }
    }
    let mut inner = app.lock();
    inner.faults.extend(faults);
    plain_json(StatusCode::OK, json!({"faults": inner.faults.len()}))
}

async fn ctl_faults_clear(State(app): State<Arc<App>>) -> Response {
    app.lock().faults.clear();
    plain_json(StatusCode::OK, json!({"faults": 0}))
}

async fn ctl_options(State(app): State<Arc<App>>, body: Bytes) -> Response {
    let v = match body_json(&body) {
        Ok(v) => v,
        Err(r) => return r,
    };
    let mut inner = app.lock();
    if let Some(l) = v.get("latency_ms").and_then(Value::as_u64) {
        inner.opts.latency_ms = l;
    }
    if let Some(b) = v.get("request_budget_per_mailbox") {
        inner.opts.request_budget_per_mailbox = b.as_u64();
        inner.budget_used.clear();
    }
    if let Some(m) = v.get("max_in_flight_per_mailbox").and_then(Value::as_u64) {
        inner.opts.max_in_flight_per_mailbox = m as usize;
    }
    plain_json(
        StatusCode::OK,
        json!({"latency_ms": inner.opts.latency_ms,
               "request_budget_per_mailbox": inner.opts.request_budget_per_mailbox,
               "max_in_flight_per_mailbox": inner.opts.max_in_flight_per_mailbox}),
    )
}

async fn ctl_consent(State(app): State<Arc<App>>, body: Bytes) -> Response {
    let v = match body_json(&body) {
        Ok(v) => v,
        Err(r) => return r,
    };
    let mut inner = app.lock();
    match v.get("decision").and_then(Value::as_str) {
        Some("approve") => inner.consent_deny = false,
        Some("deny") => inner.consent_deny = true,
        _ => {
            return plain_json(
                StatusCode::BAD_REQUEST,
                json!({"error": "decision must be approve or deny"}),
            );
        }
    }
    plain_json(
        StatusCode::OK,
        json!({"decision": if inner.consent_deny { "deny" } else { "approve" }}),
    )
}

fn consent_client(inner: &Inner, v: &Value) -> Option<String> {
    v.get("client_id")
        .and_then(Value::as_str)
        .map(str::to_string)
        .or_else(|| (!inner.opts.client_id.is_empty()).then(|| inner.opts.client_id.clone()))
}

async fn ctl_consent_grant(State(app): State<Arc<App>>, body: Bytes) -> Response {
    let v = match body_json(&body) {
        Ok(v) => v,
        Err(r) => return r,
    };
    let mut inner = app.lock();
    let Some(client) = consent_client(&inner, &v) else {
        return plain_json(
            StatusCode::BAD_REQUEST,
            json!({"error": "client_id is required (no client_id configured)"}),
        );
    };
    inner.grant_consent(&client);
    let sp = inner
        .sps
        .iter()
        .find(|s| s.app_id.eq_ignore_ascii_case(&client))
        .map(|s| s.id.clone());
    plain_json(
        StatusCode::OK,
        json!({"client_id": client, "service_principal_id": sp}),
    )
}

async fn ctl_consent_revoke(State(app): State<Arc<App>>, body: Bytes) -> Response {
    let v = match body_json(&body) {
        Ok(v) => v,
        Err(r) => return r,
    };
    let mut inner = app.lock();
    let before = inner.sps.len();
    match consent_client(&inner, &v) {
        Some(c) => inner.sps.retain(|s| !s.app_id.eq_ignore_ascii_case(&c)),
        None => inner.sps.clear(),
    }
    let revoked = before - inner.sps.len();
    plain_json(StatusCode::OK, json!({"revoked": revoked}))
}

async fn ctl_counters(State(app): State<Arc<App>>) -> Response {
    plain_json(StatusCode::OK, app.lock().counters_json())
}

async fn ctl_counters_reset(State(app): State<Arc<App>>) -> Response {
    let mut inner = app.lock();
    inner.token_requests = 0;
    inner.counters.clear();
    inner.budget_used.clear();
    plain_json(StatusCode::OK, inner.counters_json())
}

async fn ctl_fixture(State(app): State<Arc<App>>) -> Response {
    let f = app.lock().fixture();
    plain_json(
        StatusCode::OK,
        serde_json::to_value(f).unwrap_or(Value::Null),
    )
}

async fn ctl_tokens_expire(State(app): State<Arc<App>>, body: Bytes) -> Response {
    let v = body_json(&body).unwrap_or(json!({}));
    let mut inner = app.lock();
    let n = inner.sync.len();
    inner.sync.clear();
    let mut revoked_access = 0;
    if v.get("access_tokens").and_then(Value::as_bool) == Some(true) {
        revoked_access = inner.access_tokens.len();
        inner.access_tokens.clear();
    }
    plain_json(
        StatusCode::OK,
        json!({"expired_sync_tokens": n, "revoked_access_tokens": revoked_access}),
    )
}

// ---------------------------------------------------------------- in-process accessors

impl App {
    pub fn fixture(&self) -> Fixture {
        self.lock().fixture()
    }
    pub fn counters(&self) -> Value {
        self.lock().counters_json()
    }
    pub fn tenant_id(&self) -> String {
        self.lock().tenant_id.clone()
    }
}
