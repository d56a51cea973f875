//! Harness of the cross-function integration tests: a local stack per test (its own table,
//! queues and bucket in the shared moto server, its own Graph emulator) and an HTTP client that
//! calls the API through the same gateway and handlers as `make local`.

use std::time::Duration;

use graph_emulator::{EmulatorOptions, Fixture, FixtureGroup, FixtureUser};
use local_stack::stack::{GraphSource, LocalStack, StackConfig};
use serde_json::{Value, json};

pub struct TestStack {
    pub stack: LocalStack,
    pub http: reqwest::Client,
    pub admin: String,
    pub reader: String,
}

pub fn unique(prefix: &str) -> String {
    format!(
        "{prefix}{}",
        &uuid::Uuid::new_v4().simple().to_string()[..10]
    )
}

impl TestStack {
    pub async fn start(fixture: Fixture) -> TestStack {
        Self::start_with(fixture, |_| {}).await
    }

    pub async fn start_with(fixture: Fixture, adjust: impl FnOnce(&mut StackConfig)) -> TestStack {
        let options = EmulatorOptions {
            now: chrono::Utc::now(),
            ..EmulatorOptions::default()
        };
        let mut config = StackConfig::new(GraphSource::Emulator(Box::new(fixture), options));
        let id = unique("t");
        config.prefix = format!("{id}-");
        config.bucket = format!("{id}-engagement");
        config.api_port = Some(0);
        adjust(&mut config);
        let stack = LocalStack::start(config)
            .await
            .expect("local stack starts (is MOTO_URL set? run through `make test`)");
        TestStack {
            stack,
            http: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .expect("http client"),
            admin: local_stack::token::issue("admin", 1).expect("token"),
            reader: local_stack::token::issue("reader", 1).expect("token"),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.stack.api_url.clone().unwrap_or_default())
    }

    pub fn emulator_url(&self) -> String {
        self.stack
            .emulator
            .as_ref()
            .map(|e| e.url.clone())
            .unwrap_or_default()
    }

    /// Calls the API; answers the status, the headers and the JSON body (Null when none).
    pub async fn call(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
        headers: &[(&str, &str)],
    ) -> (u16, reqwest::header::HeaderMap, Value) {
        let method = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
        let mut request = self.http.request(method, self.url(path));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request
                .header("content-type", "application/json")
                .body(body.to_string());
        }
        for (k, v) in headers {
            request = request.header(*k, *v);
        }
        let response = request.send().await.expect("API answers");
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let text = response.text().await.unwrap_or_default();
        let body = serde_json::from_str(&text).unwrap_or(if text.is_empty() {
            Value::Null
        } else {
            Value::String(text)
        });
        (status, headers, body)
    }

    pub async fn admin(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        let (status, _, body) = self
            .call(method, path, Some(&self.admin.clone()), body, &[])
            .await;
        (status, body)
    }

    pub async fn upload_csv(&self, name: &str, csv: &str) -> String {
        self.stack
            .upload_customer_data(name, csv.as_bytes().to_vec())
            .await
            .expect("upload")
    }

    /// Polls `check` until it answers Some, or panics after `seconds`.
    pub async fn eventually<T, F, Fut>(&self, seconds: u64, what: &str, mut check: F) -> T
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Option<T>>,
    {
        let deadline = std::time::Instant::now() + Duration::from_secs(seconds);
        loop {
            if let Some(v) = check().await {
                return v;
            }
            if std::time::Instant::now() > deadline {
                panic!("timed out after {seconds}s waiting for {what}");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    pub async fn sent_emails(&self) -> Vec<Value> {
        // moto's state dump can fail while other tests write to it; callers poll, so try again later.
        self.stack.sent_emails().await.unwrap_or_default()
    }

    /// Emails to `to` whose text mentions `marker` (tests share one moto server).
    pub async fn emails_to(&self, to: &str, marker: &str) -> Vec<Value> {
        self.sent_emails()
            .await
            .into_iter()
            .filter(|m| m.to_string().contains(to) && m.to_string().contains(marker))
            .collect()
    }
}

pub fn user(id: &str, mail: &str, name: &str, admin: bool) -> FixtureUser {
    FixtureUser {
        id: id.into(),
        mail: mail.into(),
        display_name: name.into(),
        user_principal_name: mail.into(),
        proxy_addresses: vec![],
        admin,
    }
}

pub fn group(id: &str, mail: &str, members: &[&str]) -> FixtureGroup {
    FixtureGroup {
        id: id.into(),
        mail: mail.into(),
        display_name: mail.split('@').next().unwrap_or_default().into(),
        members: members.iter().map(|m| m.to_string()).collect(),
    }
}

pub const ALICE: &str = "00000000-0000-0000-0000-00000000a11c";
pub const BOB: &str = "00000000-0000-0000-0000-000000000b0b";
pub const CAROL: &str = "00000000-0000-0000-0000-0000000ca201";
pub const DAVE: &str = "00000000-0000-0000-0000-00000000da7e";
pub const ADMIN1: &str = "00000000-0000-0000-0000-0000000ad001";
pub const ADMIN2: &str = "00000000-0000-0000-0000-0000000ad002";
pub const SALES: &str = "10000000-0000-0000-0000-000000000001";
pub const US_SALES: &str = "10000000-0000-0000-0000-000000000002";

/// A small tenant: four mailboxes, two admins, `all-sales` nesting `us-sales` and naming bob twice.
pub fn small_tenant() -> Fixture {
    let mut alice = user(ALICE, "alice@contoso.com", "Alice Adams", false);
    alice.proxy_addresses = vec!["smtp:a.adams@contoso.com".into()];
    Fixture {
        tenant_id: "7a1b2c3d-0000-4000-8000-00000000c0de".into(),
        domains: vec!["contoso.com".into()],
        users: vec![
            alice,
            user(BOB, "bob@contoso.com", "Bob Brown", false),
            user(CAROL, "carol@contoso.com", "Carol Clark", false),
            user(DAVE, "dave@contoso.com", "Dave Davis", false),
            user(ADMIN1, "it.admin@contoso.com", "IT Admin", true),
            user(ADMIN2, "global.admin@contoso.com", "Global Admin", true),
        ],
        groups: vec![
            group(US_SALES, "us-sales@contoso.com", &[BOB, CAROL]),
            group(SALES, "all-sales@contoso.com", &[US_SALES, BOB, DAVE]),
        ],
        messages: vec![],
        events: vec![],
    }
}

pub const CONTACTS_CSV: &str = "AccountId,AccountName,EMail\nACC-1,Fabrikam,jo@fabrikam.com\nACC-2,Northwind,max@northwind.com\n";

/// A valid create body for the small tenant.
pub fn create_body(uri: &str) -> Value {
    json!({
        "name": "Account engagement",
        "mailboxes": { "users": ["alice@contoso.com"], "groups": ["all-sales@contoso.com"] },
        "consent_agreed": true,
        "customer_data": { "uri": uri, "format": "csv", "account_id_field": "AccountId", "email_field": "EMail" },
        "schedule": { "frequency": "weekly", "days": ["mon"], "times": ["02:00"], "time_zone": "Europe/London" },
        "exclusions": ["@gmail.com"],
        "score": { "half_life_days": 90, "weights": { "email": 0.4, "meeting": 0.4, "breadth": 0.2 } }
    })
}

// ---- Runs: a tenant with activity, consent through the emailed link, waiting for runs.

use chrono::{DateTime, Duration as Days, Utc};

pub fn at(days_before: i64, hours: i64, as_of: DateTime<Utc>) -> String {
    (as_of - Days::days(days_before) + Days::hours(hours)).to_rfc3339()
}

/// The small tenant with a few emails and meetings around `as_of`.
pub fn tenant_with_activity(as_of: DateTime<Utc>) -> Fixture {
    let mut tenant = serde_json::to_value(small_tenant()).expect("fixture json");
    let t = |d, h| at(d, h, as_of);
    tenant["messages"] = json!([
        // One inbound email, copied into alice's and bob's inboxes.
        {"mailbox": ALICE, "folder": "inbox", "id": "m1-a", "internetMessageId": "<m1@fabrikam.com>", "conversationId": "c1",
         "from": "jo@fabrikam.com", "to": ["alice@contoso.com", "bob@contoso.com"], "cc": [],
         "sentDateTime": t(3, 0), "receivedDateTime": t(3, 0)},
        {"mailbox": BOB, "folder": "inbox", "id": "m1-b", "internetMessageId": "<m1@fabrikam.com>", "conversationId": "c1",
         "from": "jo@fabrikam.com", "to": ["alice@contoso.com", "bob@contoso.com"], "cc": [],
         "sentDateTime": t(3, 0), "receivedDateTime": t(3, 0)},
        // alice answers.
        {"mailbox": ALICE, "folder": "sentitems", "id": "m2", "internetMessageId": "<m2@contoso.com>", "conversationId": "c1",
         "from": "alice@contoso.com", "to": ["jo@fabrikam.com"], "cc": ["carol@contoso.com"],
         "sentDateTime": t(2, 0), "receivedDateTime": t(2, 0)},
        // Internal only: ignored.
        {"mailbox": CAROL, "folder": "inbox", "id": "m3", "internetMessageId": "<m3@contoso.com>", "conversationId": "c3",
         "from": "bob@contoso.com", "to": ["carol@contoso.com"], "cc": [],
         "sentDateTime": t(1, 0), "receivedDateTime": t(1, 0)},
        // An old email to Northwind, 40 days ago: Year and not Month.
        {"mailbox": DAVE, "folder": "sentitems", "id": "m4", "internetMessageId": "<m4@contoso.com>", "conversationId": "c4",
         "from": "dave@contoso.com", "to": ["max@northwind.com"], "cc": [],
         "sentDateTime": t(40, 0), "receivedDateTime": t(40, 0)}
    ]);
    tenant["events"] = json!([
        {"mailbox": ALICE, "id": "e1-a", "iCalUId": "ical-1", "organizer": "alice@contoso.com",
         "attendees": ["carol@contoso.com", "max@northwind.com"], "start": t(1, 0), "end": t(1, 1), "isCancelled": false, "sensitivity": "normal"},
        {"mailbox": CAROL, "id": "e1-c", "iCalUId": "ical-1", "organizer": "alice@contoso.com",
         "attendees": ["carol@contoso.com", "max@northwind.com"], "start": t(1, 0), "end": t(1, 1), "isCancelled": false, "sensitivity": "normal"},
        {"mailbox": BOB, "id": "e2", "iCalUId": "ical-2", "organizer": "bob@contoso.com",
         "attendees": ["jo@fabrikam.com"], "start": t(5, 0), "end": t(5, 1), "isCancelled": false, "sensitivity": "private"}
    ]);
    Fixture::from_json_str(&tenant.to_string()).expect("fixture")
}

pub async fn start_at(as_of: DateTime<Utc>) -> TestStack {
    start_at_with(as_of, |_| {}).await
}

/// A stack on the tenant with activity, with quick Graph retries for tests.
pub async fn start_at_with(
    as_of: DateTime<Utc>,
    adjust: impl FnOnce(&mut StackConfig),
) -> TestStack {
    TestStack::start_with(tenant_with_activity(as_of), |c| {
        c.as_of = Some(as_of);
        c.graph_retry = shared::graph::RetryPolicy {
            max_attempts: 3,
            base_delay: Duration::from_millis(50),
            max_delay: Duration::from_secs(2),
        };
        adjust(c);
    })
    .await
}

/// Creates an enrichment and grants consent through the emailed link; answers its id.
pub async fn consented(t: &TestStack) -> String {
    let uri = t.upload_csv("contacts.csv", CONTACTS_CSV).await;
    let name = unique("Runs ");
    let mut body = create_body(&uri);
    body["name"] = json!(name);
    let (status, created) = t.admin("POST", "/enrichments", Some(body)).await;
    assert_eq!(status, 201, "{created}");
    let id = created["id"].as_str().expect("id").to_string();
    let email = t
        .eventually(20, "consent email", || async {
            t.emails_to("it.admin@contoso.com", &name)
                .await
                .into_iter()
                .next()
        })
        .await;
    let link = link_in(&email);
    let redirect = t.http.get(&link).send().await.expect("emulator");
    let location = redirect.headers()["location"]
        .to_str()
        .expect("location")
        .to_string();
    assert_eq!(
        t.http
            .get(&location)
            .send()
            .await
            .expect("callback")
            .status()
            .as_u16(),
        200
    );
    id
}

pub async fn finished_run(t: &TestStack, id: &str, run_id: Option<&str>) -> Value {
    t.eventually(60, "the run to end", || async {
        let (_, runs) = t
            .admin("GET", &format!("/enrichments/{id}/runs"), None)
            .await;
        let run = match run_id {
            Some(r) => runs["items"]
                .as_array()?
                .iter()
                .find(|x| x["id"] == r)?
                .clone(),
            None => runs["items"][0].clone(),
        };
        let status = run["status"].as_str()?.to_string();
        (status != "processing" && status != "queued").then_some(run)
    })
    .await
}

pub fn office_row<'a>(rows: &'a Value, account: &str) -> &'a Value {
    rows["items"]
        .as_array()
        .expect("items")
        .iter()
        .find(|r| r["AccountId"] == account)
        .expect("account row")
}

/// The admin-consent link in a consent email as moto stores it (HTML, `&amp;`-escaped).
pub fn link_in(email: &Value) -> String {
    let text = email.to_string();
    let start = text.find("http://127.0.0.1").expect("a link in the email");
    let rest = &text[start..];
    let end = rest.find(['"', '\\', '<', ' ']).unwrap_or(rest.len());
    rest[..end].replace("&amp;", "&")
}
