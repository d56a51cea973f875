//! End-to-end tests: the emulator on 127.0.0.1:0, driven over HTTP with reqwest.

use chrono::{DateTime, Duration, TimeZone, Utc};
use graph_emulator::{
    Emulator, EmulatorOptions, Fixture, FixtureEvent, FixtureGroup, FixtureMessage, FixtureUser,
    SyntheticOptions, start, synthetic_tenant,
};
use reqwest::StatusCode;
use reqwest::header::HeaderMap;
use serde_json::{Value, json};
use std::collections::BTreeSet;
use std::net::SocketAddr;

const TENANT: &str = "11111111-2222-3333-4444-555555555555";
const ALICE: &str = "aaaaaaaa-0000-0000-0000-000000000001";
const BOB: &str = "aaaaaaaa-0000-0000-0000-000000000002";
const CAROL: &str = "aaaaaaaa-0000-0000-0000-000000000003";
const DAVE: &str = "aaaaaaaa-0000-0000-0000-000000000004";
const G_ALL: &str = "bbbbbbbb-0000-0000-0000-000000000001";
const G_US: &str = "bbbbbbbb-0000-0000-0000-000000000002";
const G_EMEA: &str = "bbbbbbbb-0000-0000-0000-000000000003";

fn now() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 3, 2, 0, 0, 0).unwrap()
}

fn user(id: &str, mail: &str, name: &str, admin: bool, proxies: &[&str]) -> FixtureUser {
    FixtureUser {
        id: id.into(),
        mail: mail.into(),
        display_name: name.into(),
        user_principal_name: String::new(),
        proxy_addresses: proxies.iter().map(|s| s.to_string()).collect(),
        admin,
    }
}

fn msg(mailbox: &str, folder: &str, id: &str, received: DateTime<Utc>) -> FixtureMessage {
    FixtureMessage {
        mailbox: mailbox.into(),
        folder: folder.into(),
        id: id.into(),
        internet_message_id: format!("<{id}@fabrikam.com>"),
        conversation_id: format!("conv-{id}"),
        from: "x@fabrikam.com".into(),
        to: vec!["alice@contoso.com".into()],
        cc: vec![],
        sent_date_time: received - Duration::seconds(5),
        received_date_time: received,
        subject: "Secret subject".into(),
        is_draft: false,
    }
}

fn event(mailbox: &str, id: &str, start: DateTime<Utc>) -> FixtureEvent {
    FixtureEvent {
        mailbox: mailbox.into(),
        id: id.into(),
        ical_uid: format!("ical-{id}"),
        organizer: "alice@contoso.com".into(),
        attendees: vec!["x@fabrikam.com".into(), "bob@contoso.com".into()],
        start,
        end: start + Duration::minutes(30),
        is_cancelled: false,
        is_all_day: false,
        subject: "Meeting".into(),
        event_type: "singleInstance".into(),
        sensitivity: "normal".into(),
    }
}

fn fixture() -> Fixture {
    let t = now();
    let mut messages: Vec<FixtureMessage> = (0..8)
        .map(|i| msg(ALICE, "inbox", &format!("m{i}"), t - Duration::days(i + 1)))
        .collect();
    messages.push(msg(ALICE, "inbox", "m-future", t + Duration::days(2)));
    messages.push(msg(ALICE, "sentitems", "s0", t - Duration::days(1)));
    messages.push(msg(BOB, "inbox", "b0", t - Duration::days(1)));
    let events = vec![
        event(ALICE, "e0", t - Duration::days(10)),
        event(ALICE, "e1", t - Duration::days(5)),
        event(ALICE, "e2", t + Duration::days(3)),
        event(ALICE, "e-old", t - Duration::days(100)),
    ];
    Fixture {
        tenant_id: TENANT.into(),
        domains: vec!["contoso.com".into()],
        users: vec![
            user(
                ALICE,
                "alice@contoso.com",
                "Alice Adams",
                true,
                &["SMTP:alice@contoso.com", "smtp:aa@contoso.com"],
            ),
            user(BOB, "bob@contoso.com", "Bob Brown", false, &[]),
            user(CAROL, "carol@contoso.com", "Carol Cooper", true, &[]),
            user(DAVE, "dave@contoso.com", "Dave Dubois", false, &[]),
        ],
        groups: vec![
            FixtureGroup {
                id: G_ALL.into(),
                mail: "all-sales@contoso.com".into(),
                display_name: "All Sales".into(),
                members: vec![G_US.into(), G_EMEA.into(), ALICE.into()],
            },
            FixtureGroup {
                id: G_US.into(),
                mail: "us-sales@contoso.com".into(),
                display_name: "US Sales".into(),
                members: vec![ALICE.into(), BOB.into()],
            },
            FixtureGroup {
                id: G_EMEA.into(),
                mail: "emea-sales@contoso.com".into(),
                display_name: "EMEA Sales".into(),
                // cycle back to all-sales, and a duplicate
                members: vec![CAROL.into(), BOB.into(), G_ALL.into()],
            },
        ],
        messages,
        events,
    }
}

struct Ctx {
    emu: Emulator,
    http: reqwest::Client,
    token: String,
}

fn any_port() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

async fn setup_with(f: Fixture, opts: EmulatorOptions) -> Ctx {
    let emu = start(f, opts, any_port()).await.expect("start");
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let tenant = emu.tenant_id();
    let (status, body) =
        token_request(&http, &emu.login_base_url(), &tenant, "app", "secret").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let token = body["access_token"].as_str().unwrap().to_string();
    Ctx { emu, http, token }
}

async fn setup() -> Ctx {
    setup_with(
        fixture(),
        EmulatorOptions {
            now: now(),
            ..EmulatorOptions::default()
        },
    )
    .await
}

async fn token_request(
    http: &reqwest::Client,
    login: &str,
    tenant: &str,
    client_id: &str,
    secret: &str,
) -> (StatusCode, Value) {
    let body = format!(
        "grant_type=client_credentials&client_id={client_id}&client_secret={secret}&scope=https%3A%2F%2Fgraph.microsoft.com%2F.default"
    );
    let r = http
        .post(format!("{login}/{tenant}/oauth2/v2.0/token"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(body)
        .send()
        .await
        .unwrap();
    let s = r.status();
    (s, r.json().await.unwrap())
}

impl Ctx {
    async fn get_full(&self, url: &str, page: Option<usize>) -> (StatusCode, HeaderMap, Value) {
        let url = if url.starts_with("http") {
            url.to_string()
        } else {
            format!("{}{}", self.emu.graph_base_url(), url)
        };
        let mut req = self.http.get(url).bearer_auth(&self.token);
        if let Some(n) = page {
            req = req.header("Prefer", format!("odata.maxpagesize={n}"));
        }
        let r = req.send().await.unwrap();
        let status = r.status();
        let headers = r.headers().clone();
        let text = r.text().await.unwrap();
        let v = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        };
        (status, headers, v)
    }

    async fn get(&self, url: &str) -> (StatusCode, Value) {
        let (s, _, v) = self.get_full(url, None).await;
        (s, v)
    }

    async fn control(&self, path: &str, body: Value) -> Value {
        let r = self
            .http
            .post(format!("{}/_emulator/{path}", self.emu.url))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "{path}: {}", r.status());
        r.json().await.unwrap()
    }

    async fn counters(&self) -> Value {
        self.http
            .get(format!("{}/_emulator/counters", self.emu.url))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    /// Follows nextLinks to the end; returns (pages, items, deltaLink).
    async fn drain(&self, first: &str, page: usize) -> (usize, Vec<Value>, String) {
        let mut url = first.to_string();
        let mut items = Vec::new();
        let mut pages = 0;
        loop {
            let (s, h, v) = self.get_full(&url, Some(page)).await;
            assert_eq!(s, StatusCode::OK, "{v}");
            assert_eq!(
                h.get("preference-applied").unwrap().to_str().unwrap(),
                format!("odata.maxpagesize={page}")
            );
            pages += 1;
            let value = v["value"].as_array().unwrap();
            assert!(value.len() <= page);
            items.extend(value.iter().cloned());
            if let Some(next) = v["@odata.nextLink"].as_str() {
                assert!(v.get("@odata.deltaLink").is_none());
                url = next.to_string();
            } else {
                let d = v["@odata.deltaLink"]
                    .as_str()
                    .expect("deltaLink")
                    .to_string();
                return (pages, items, d);
            }
        }
    }
}

fn ids(items: &[Value]) -> Vec<String> {
    items
        .iter()
        .map(|v| v["id"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test]
async fn token_and_auth_required() {
    let c = setup().await;
    let login = c.emu.login_base_url();
    // unknown tenant
    let (s, b) = token_request(&c.http, &login, "nope", "app", "secret").await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    for k in [
        "error",
        "error_description",
        "error_codes",
        "timestamp",
        "trace_id",
        "correlation_id",
    ] {
        assert!(b.get(k).is_some(), "missing {k} in {b}");
    }
    // domain name accepted as tenant
    let (s, b) = token_request(&c.http, &login, "contoso.com", "app", "secret").await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(b["token_type"], "Bearer");
    assert_eq!(b["expires_in"], 3599);
    assert_eq!(b["ext_expires_in"], 3599);
}

#[tokio::test]
async fn token_credentials_checked() {
    let emu = start(
        fixture(),
        EmulatorOptions {
            client_id: "the-app".into(),
            client_secret: "s3cret".into(),
            ..EmulatorOptions::default()
        },
        any_port(),
    )
    .await
    .unwrap();
    let http = reqwest::Client::new();
    let login = emu.login_base_url();
    let (s, b) = token_request(&http, &login, TENANT, "other-app", "s3cret").await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert_eq!(b["error"], "unauthorized_client");
    let (s, b) = token_request(&http, &login, TENANT, "the-app", "wrong").await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert_eq!(b["error"], "invalid_client");
    let (s, b) = token_request(&http, &login, TENANT, "the-app", "s3cret").await;
    assert_eq!(s, StatusCode::OK, "{b}");
    let token = b["access_token"].as_str().unwrap();

    let users = format!("{}/users", emu.graph_base_url());
    let r = http.get(&users).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], "InvalidAuthenticationToken");
    assert!(v["error"]["message"].is_string());
    let r = http.get(&users).bearer_auth("forged").send().await.unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let r = http.get(&users).bearer_auth(token).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);

    let counters: Value = http
        .get(format!("{}/_emulator/counters", emu.url))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(counters["token_requests"], 3);
}

#[tokio::test]
async fn users_filters() {
    let c = setup().await;
    let (s, v) = c.get("/users?$filter=mail eq 'ALICE@contoso.com'").await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(ids(v["value"].as_array().unwrap()), vec![ALICE]);
    let u = &v["value"][0];
    for k in ["id", "displayName", "mail", "userPrincipalName"] {
        assert!(u.get(k).is_some());
    }
    assert!(v["@odata.context"].is_string());

    // proxy address (alias), URL-encoded, with $select
    let (s, v) = c
        .get("/users?$filter=proxyAddresses/any(p%3Ap%20eq%20'smtp%3AAA%40contoso.com')&$select=id,mail,displayName")
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(ids(v["value"].as_array().unwrap()), vec![ALICE]);

    // or-joined
    let (_, v) = c
        .get("/users?$filter=mail eq 'bob@contoso.com' or proxyAddresses/any(x:x eq 'smtp:carol@contoso.com') or userPrincipalName eq 'nobody@contoso.com'")
        .await;
    assert_eq!(ids(v["value"].as_array().unwrap()), vec![BOB, CAROL]);

    // no match
    let (_, v) = c.get("/users?$filter=mail eq 'x@fabrikam.com'").await;
    assert_eq!(v["value"].as_array().unwrap().len(), 0);

    // unsupported filter
    let (s, v) = c.get("/users?$filter=startswith(mail,'a')").await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert!(v["error"]["code"].is_string());

    // list with paging
    let (_, v) = c.get("/users?$top=3").await;
    assert_eq!(v["value"].as_array().unwrap().len(), 3);
    let next = v["@odata.nextLink"].as_str().unwrap().to_string();
    let (_, v) = c.get(&next).await;
    assert_eq!(ids(v["value"].as_array().unwrap()), vec![DAVE]);
    assert!(v.get("@odata.nextLink").is_none());

    // by id and by mail
    let (s, v) = c.get(&format!("/users/{BOB}")).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v["mail"], "bob@contoso.com");
    let (s, v) = c.get("/users/carol@contoso.com").await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v["id"], CAROL);
    let (s, v) = c.get("/users/ghost@contoso.com").await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    assert_eq!(v["error"]["code"], "Request_ResourceNotFound");
}

#[tokio::test]
async fn groups_and_transitive_members() {
    let c = setup().await;
    let (_, v) = c
        .get("/groups?$filter=mail eq 'all-sales@contoso.com'")
        .await;
    assert_eq!(ids(v["value"].as_array().unwrap()), vec![G_ALL]);
    let (s, _) = c.get("/groups/cccccccc-0000-0000-0000-000000000000").await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (s, v) = c.get(&format!("/groups/{G_US}")).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v["mail"], "us-sales@contoso.com");

    let (s, v) = c.get(&format!("/groups/{G_ALL}/transitiveMembers")).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let value = v["value"].as_array().unwrap();
    let users: Vec<&str> = value
        .iter()
        .filter(|m| m["@odata.type"] == "#microsoft.graph.user")
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    let groups: BTreeSet<&str> = value
        .iter()
        .filter(|m| m["@odata.type"] == "#microsoft.graph.group")
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert_eq!(users.len(), 3, "each member once: {users:?}");
    assert_eq!(users.iter().collect::<BTreeSet<_>>().len(), 3);
    assert_eq!(groups, BTreeSet::from([G_US, G_EMEA]));
    for m in value {
        assert!(m.get("displayName").is_some() && m.get("mail").is_some());
    }

    // cast to users, paged by 2
    let (s, v) = c
        .get(&format!("/groups/{G_ALL}/transitiveMembers/microsoft.graph.user?$select=id,mail,displayName&$top=2"))
        .await;
    assert_eq!(s, StatusCode::OK);
    let mut got = ids(v["value"].as_array().unwrap());
    assert_eq!(got.len(), 2);
    let next = v["@odata.nextLink"].as_str().unwrap().to_string();
    let (_, v) = c.get(&next).await;
    got.extend(ids(v["value"].as_array().unwrap()));
    assert!(v.get("@odata.nextLink").is_none());
    assert_eq!(
        got.iter().map(String::as_str).collect::<BTreeSet<_>>(),
        BTreeSet::from([ALICE, BOB, CAROL])
    );

    // nested group with a cycle back: emea -> all-sales -> us-sales ...
    let (_, v) = c
        .get(&format!(
            "/groups/{G_EMEA}/transitiveMembers/microsoft.graph.user"
        ))
        .await;
    assert_eq!(v["value"].as_array().unwrap().len(), 3);
}

#[tokio::test]
async fn directory_role_members_and_domains() {
    let c = setup().await;
    for path in [
        "/directoryRoles(roleTemplateId='62e90394-69f5-4237-9190-012177145e10')/members",
        "/directoryRoles(roleTemplateId%3D%2762e90394-69f5-4237-9190-012177145e10%27)/members",
        "/directoryRoles%28roleTemplateId%3D%2762e90394-69f5-4237-9190-012177145e10%27%29/members",
    ] {
        let (s, v) = c.get(path).await;
        assert_eq!(s, StatusCode::OK, "{path}: {v}");
        let got: BTreeSet<String> = ids(v["value"].as_array().unwrap()).into_iter().collect();
        assert_eq!(got, BTreeSet::from([ALICE.to_string(), CAROL.to_string()]));
        assert!(v["value"][0]["userPrincipalName"].is_string());
    }
    let (s, _) = c
        .get("/directoryRoles(roleTemplateId='00000000-69f5-4237-9190-012177145e10')/members")
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (_, v) = c.get("/domains").await;
    assert_eq!(v["value"][0]["id"], "contoso.com");
    assert_eq!(v["value"][0]["isVerified"], true);
}

#[tokio::test]
async fn message_delta_paging_rounds_and_removals() {
    let c = setup().await;
    let first = format!(
        "/users/{ALICE}/mailFolders/inbox/messages/delta?$select=from,toRecipients,ccRecipients,sentDateTime,receivedDateTime,internetMessageId,conversationId,isDraft"
    );
    let (pages, items, delta) = c.drain(&first, 3).await;
    assert_eq!(pages, 3);
    assert_eq!(items.len(), 8, "future message hidden, sent items separate");
    let got: BTreeSet<String> = ids(&items).into_iter().collect();
    assert_eq!(got.len(), 8);
    assert!(!got.contains("m-future") && !got.contains("s0"));
    for m in &items {
        assert!(m.get("subject").is_none(), "subject not selected");
        for k in [
            "id",
            "from",
            "toRecipients",
            "ccRecipients",
            "sentDateTime",
            "receivedDateTime",
            "internetMessageId",
            "conversationId",
            "isDraft",
        ] {
            assert!(m.get(k).is_some(), "missing {k}");
        }
        assert_eq!(m["from"]["emailAddress"]["address"], "x@fabrikam.com");
    }
    assert!(delta.starts_with(&format!(
        "{}/v1.0/users/{ALICE}/mailFolders/inbox/messages/delta?$deltatoken=",
        c.emu.url
    )));

    // Nothing changed: empty round.
    let (_, items2, delta2) = c.drain(&delta, 3).await;
    assert!(items2.is_empty());

    // New activity: only the new item comes back.
    let t = now();
    c.control(
        "activity",
        json!({"messages": [msg(ALICE, "inbox", "m-new", t - Duration::hours(1))]}),
    )
    .await;
    let (_, items3, delta3) = c.drain(&delta2, 3).await;
    assert_eq!(ids(&items3), vec!["m-new"]);

    // Removal: @removed.
    c.control("remove", json!({"messages": ["m3"]})).await;
    let (_, items4, delta4) = c.drain(&delta3, 3).await;
    assert_eq!(items4.len(), 1);
    assert_eq!(items4[0]["id"], "m3");
    assert_eq!(items4[0]["@removed"]["reason"], "deleted");

    // Time passes: the future message arrives.
    c.control("now", json!({"advance_days": 3})).await;
    let (_, items5, _) = c.drain(&delta4, 3).await;
    assert_eq!(ids(&items5), vec!["m-future"]);

    // Sent items folder, mailFolders('sentitems') form, default page size.
    let (s, h, v) = c
        .get_full(
            "/users/alice@contoso.com/mailFolders('sentitems')/messages/delta",
            None,
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    assert!(h.get("preference-applied").is_none());
    assert_eq!(ids(v["value"].as_array().unwrap()), vec!["s0"]);
    assert_eq!(
        v["value"][0]["subject"], "Secret subject",
        "no $select: subject present"
    );

    let counters = c.counters().await;
    assert_eq!(counters["mailboxes"][ALICE]["messages_delta"], 8);
}

#[tokio::test]
async fn expired_or_unknown_delta_token_is_410() {
    let c = setup().await;
    let (s, v) = c
        .get(&format!(
            "/users/{ALICE}/mailFolders/inbox/messages/delta?$deltatoken=bogus"
        ))
        .await;
    assert_eq!(s, StatusCode::GONE);
    assert_eq!(v["error"]["code"], "syncStateNotFound");
    let (s, _) = c
        .get(&format!(
            "/users/{ALICE}/mailFolders/inbox/messages/delta?$skiptoken=bogus"
        ))
        .await;
    assert_eq!(s, StatusCode::GONE);

    let (_, _, delta) = c
        .drain(
            &format!("/users/{ALICE}/mailFolders/inbox/messages/delta"),
            100,
        )
        .await;
    c.control("tokens/expire", json!({})).await;
    let (s, v) = c.get(&delta).await;
    assert_eq!(s, StatusCode::GONE);
    assert_eq!(v["error"]["code"], "syncStateNotFound");
}

#[tokio::test]
async fn concurrency_limit_and_budget() {
    let c = setup_with(
        fixture(),
        EmulatorOptions {
            now: now(),
            latency_ms: 400,
            ..EmulatorOptions::default()
        },
    )
    .await;
    let url = format!("/users/{ALICE}/mailFolders/inbox/messages/delta");
    let futs: Vec<_> = (0..8).map(|_| c.get_full(&url, Some(50))).collect();
    let results = futures_join_all(futs).await;
    let ok = results.iter().filter(|r| r.0 == StatusCode::OK).count();
    let throttled: Vec<_> = results
        .iter()
        .filter(|r| r.0 == StatusCode::TOO_MANY_REQUESTS)
        .collect();
    assert_eq!(ok + throttled.len(), 8);
    assert!((1..=4).contains(&ok), "ok={ok}");
    assert!(!throttled.is_empty());
    for (_, h, v) in &throttled {
        assert_eq!(h.get("retry-after").unwrap(), "1");
        assert!(v["error"]["code"].is_string());
        assert!(v["error"]["message"].is_string());
    }
    let counters = c.counters().await;
    let mb = &counters["mailboxes"][ALICE];
    assert!(mb["max_in_flight"].as_u64().unwrap() <= 4);
    assert!(mb["max_in_flight"].as_u64().unwrap() >= 1);
    assert_eq!(mb["throttled"].as_u64().unwrap() as usize, throttled.len());

    // Another mailbox is unaffected; budget.
    c.control(
        "options",
        json!({"latency_ms": 0, "request_budget_per_mailbox": 2}),
    )
    .await;
    let bob = format!("/users/{BOB}/mailFolders/inbox/messages/delta");
    assert_eq!(c.get(&bob).await.0, StatusCode::OK);
    assert_eq!(c.get(&bob).await.0, StatusCode::OK);
    let (s, h, _) = c.get_full(&bob, None).await;
    assert_eq!(s, StatusCode::TOO_MANY_REQUESTS);
    assert!(h.get("retry-after").is_some());
    c.control("options", json!({"request_budget_per_mailbox": null}))
        .await;
    assert_eq!(c.get(&bob).await.0, StatusCode::OK);
}

/// Minimal join_all (no futures crate): spawn each onto the runtime.
async fn futures_join_all<F, T>(futs: Vec<F>) -> Vec<T>
where
    F: std::future::Future<Output = T>,
{
    let mut pinned: Vec<std::pin::Pin<Box<F>>> = futs.into_iter().map(Box::pin).collect();
    let mut out: Vec<Option<T>> = (0..pinned.len()).map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (i, f) in pinned.iter_mut().enumerate() {
            if out[i].is_none() {
                match f.as_mut().poll(cx) {
                    std::task::Poll::Ready(v) => out[i] = Some(v),
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(())
        }
    })
    .await;
    out.into_iter().map(Option::unwrap).collect()
}

#[tokio::test]
async fn faults_are_injected() {
    let c = setup().await;
    c.control(
        "faults",
        json!({"mailbox": ALICE, "endpoint": "messages", "status": 503, "count": 2, "retry_after": 2}),
    )
    .await;
    let url = format!("/users/{ALICE}/mailFolders/inbox/messages/delta");
    let cal = format!(
        "/users/{ALICE}/calendarView/delta?startDateTime=2026-01-01T00:00:00Z&endDateTime=2026-04-01T00:00:00Z"
    );
    assert_eq!(
        c.get(&cal).await.0,
        StatusCode::OK,
        "other endpoint unaffected"
    );
    for _ in 0..2 {
        let (s, h, v) = c.get_full(&url, None).await;
        assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(h.get("retry-after").unwrap(), "2");
        assert!(v["error"]["code"].is_string());
    }
    assert_eq!(c.get(&url).await.0, StatusCode::OK);
    c.control(
        "faults",
        json!({"mailbox": null, "endpoint": "calendar", "status": 410, "count": 1}),
    )
    .await;
    let (s, v) = c.get(&cal).await;
    assert_eq!(s, StatusCode::GONE);
    assert_eq!(v["error"]["code"], "syncStateNotFound");
    c.control(
        "faults",
        json!({"endpoint": "any", "status": 500, "count": -1}),
    )
    .await;
    assert_eq!(c.get("/domains").await.0, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(c.get("/domains").await.0, StatusCode::INTERNAL_SERVER_ERROR);
    c.control("faults/clear", json!({})).await;
    assert_eq!(c.get("/domains").await.0, StatusCode::OK);
}

#[tokio::test]
async fn calendar_delta_window_rounds() {
    let c = setup().await;
    let (s, v) = c.get(&format!("/users/{ALICE}/calendarView/delta")).await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    let first = format!(
        "/users/{ALICE}/calendarView/delta?startDateTime=2026-01-15T00:00:00Z&endDateTime=2026-04-01T00:00:00.0000000"
    );
    let (pages, items, delta) = c.drain(&first, 2).await;
    assert_eq!(pages, 2);
    let got: BTreeSet<String> = ids(&items).into_iter().collect();
    assert_eq!(
        got,
        BTreeSet::from(["e0".to_string(), "e1".into(), "e2".into()])
    );
    let e = items.iter().find(|e| e["id"] == "e1").unwrap();
    for k in [
        "iCalUId",
        "subject",
        "organizer",
        "attendees",
        "start",
        "end",
        "isCancelled",
        "isAllDay",
        "sensitivity",
        "type",
        "lastModifiedDateTime",
    ] {
        assert!(e.get(k).is_some(), "missing {k}");
    }
    assert_eq!(e["start"]["timeZone"], "UTC");
    assert!(
        e["start"]["dateTime"]
            .as_str()
            .unwrap()
            .ends_with(":00.0000000")
    );
    assert_eq!(e["attendees"][0]["type"], "required");
    assert!(e["attendees"][0]["status"]["response"].is_string());
    assert_eq!(e["attendees"][1]["emailAddress"]["name"], "Bob Brown");
    assert!(delta.contains("/calendarView/delta?$deltatoken="));

    // Cancel e1, move e0 out of the window, remove e2, add e3 in window, add e4 outside.
    let t = now();
    let mut e1 = event(ALICE, "e1", t - Duration::days(5));
    e1.is_cancelled = true;
    c.control(
        "activity",
        json!({"events": [e1, event(ALICE, "e0", t - Duration::days(200)), event(ALICE, "e3", t - Duration::days(1)), event(ALICE, "e4", t + Duration::days(90))]}),
    )
    .await;
    c.control("remove", json!({"events": ["e2"]})).await;
    let (_, items, _) = c.drain(&delta, 10).await;
    let by_id = |id: &str| items.iter().find(|x| x["id"] == id).cloned();
    assert_eq!(by_id("e1").unwrap()["isCancelled"], true);
    assert_eq!(by_id("e0").unwrap()["@removed"]["reason"], "deleted");
    assert_eq!(by_id("e2").unwrap()["@removed"]["reason"], "deleted");
    assert!(by_id("e3").unwrap().get("@removed").is_none());
    assert!(by_id("e4").is_none_or(|v| v.get("@removed").is_some()));
}

#[tokio::test]
async fn admin_consent_flow_and_service_principal() {
    let c = setup().await;
    let app = "99999999-8888-7777-6666-555555555555";
    let sp_query = format!("/servicePrincipals?$filter=appId eq '{app}'");
    let (_, v) = c.get(&sp_query).await;
    assert_eq!(v["value"].as_array().unwrap().len(), 0);

    let consent = |extra: &str| {
        format!(
            "{}/organizations/v2.0/adminconsent?client_id={app}&scope=https%3A%2F%2Fgraph.microsoft.com%2F.default&redirect_uri=https%3A%2F%2Fapp.example%2Fconsent%2Fcallback&state=st-123{extra}",
            c.emu.login_base_url()
        )
    };
    // deny via query
    let r = c
        .http
        .get(consent("&emulator_decision=deny"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FOUND);
    let loc = r
        .headers()
        .get("location")
        .unwrap()
        .to_str()
        .unwrap()
        .to_string();
    let u = url::Url::parse(&loc).unwrap();
    assert_eq!(u.path(), "/consent/callback");
    let q: std::collections::HashMap<String, String> = u.query_pairs().into_owned().collect();
    assert_eq!(q["error"], "access_denied");
    assert!(q["error_description"].starts_with("AADSTS65004"));
    assert_eq!(q["state"], "st-123");
    assert!(!q.contains_key("admin_consent"));
    // deny via switch
    c.control("consent", json!({"decision": "deny"})).await;
    let r = c.http.get(consent("")).send().await.unwrap();
    let loc = r
        .headers()
        .get("location")
        .unwrap()
        .to_str()
        .unwrap()
        .to_string();
    assert!(loc.contains("error=access_denied"));
    let (_, v) = c.get(&sp_query).await;
    assert_eq!(v["value"].as_array().unwrap().len(), 0);

    // approve
    c.control("consent", json!({"decision": "approve"})).await;
    let r = c.http.get(consent("")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::FOUND);
    let loc = r
        .headers()
        .get("location")
        .unwrap()
        .to_str()
        .unwrap()
        .to_string();
    assert_eq!(
        loc,
        format!(
            "https://app.example/consent/callback?admin_consent=True&tenant={TENANT}&state=st-123"
        )
    );
    let (_, v) = c.get(&sp_query).await;
    let sps = v["value"].as_array().unwrap();
    assert_eq!(sps.len(), 1);
    assert_eq!(sps[0]["appId"], app);
    let sp_id = sps[0]["id"].as_str().unwrap();
    let (s, v) = c
        .get(&format!("/servicePrincipals/{sp_id}/appRoleAssignments"))
        .await;
    assert_eq!(s, StatusCode::OK);
    let roles: BTreeSet<&str> = v["value"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["appRoleId"].as_str().unwrap())
        .collect();
    assert_eq!(roles.len(), 4);
    let a = &v["value"][0];
    for k in [
        "id",
        "createdDateTime",
        "appRoleId",
        "principalDisplayName",
        "principalId",
        "principalType",
        "resourceDisplayName",
        "resourceId",
    ] {
        assert!(a.get(k).is_some(), "missing {k}");
    }
    assert_eq!(a["principalId"], sp_id);

    // missing redirect_uri
    let r = c
        .http
        .get(format!(
            "{}/{TENANT}/v2.0/adminconsent?client_id={app}",
            c.emu.url
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);

    // revoke, then admin-console grant
    c.control("consent/revoke", json!({"client_id": app})).await;
    let (_, v) = c.get(&sp_query).await;
    assert_eq!(v["value"].as_array().unwrap().len(), 0);
    c.control("consent/grant", json!({"client_id": app})).await;
    let (_, v) = c.get(&sp_query).await;
    assert_eq!(v["value"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn control_now_and_fixture() {
    let c = setup().await;
    let v: Value = c
        .http
        .get(format!("{}/_emulator/now", c.emu.url))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["now"], "2026-03-02T00:00:00Z");
    let v = c
        .control("now", json!({"now": "2026-04-01T12:00:00Z"}))
        .await;
    assert_eq!(v["now"], "2026-04-01T12:00:00Z");
    c.control("remove", json!({"messages": ["b0"]})).await;
    let f: Fixture = c
        .http
        .get(format!("{}/_emulator/fixture", c.emu.url))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(f.tenant_id, TENANT);
    assert_eq!(f.messages.len(), fixture().messages.len() - 1);
    assert_eq!(f.users, fixture().users);
    c.control("counters/reset", json!({})).await;
    assert_eq!(c.counters().await["token_requests"], 0);
}

/// A documented Graph response body (copied into testdata/ from Microsoft's Graph documentation).
fn sample(name: &str) -> Value {
    let path = format!(
        "{}/../../testdata/graph-samples/{name}",
        env!("CARGO_MANIFEST_DIR")
    );
    serde_json::from_str(&std::fs::read_to_string(&path).expect("sample file")).unwrap()
}

fn keys(v: &Value) -> BTreeSet<String> {
    v.as_object().unwrap().keys().cloned().collect()
}

#[tokio::test]
async fn responses_carry_the_sample_keys() {
    let c = setup().await;
    for (name, url) in [
        (
            "message-delta.round1.page1.json",
            format!("/users/{ALICE}/mailFolders/inbox/messages/delta"),
        ),
        (
            "event-delta.round1.page1.json",
            format!(
                "/users/{ALICE}/calendarView/delta?startDateTime=2026-01-01T00:00:00Z&endDateTime=2026-04-01T00:00:00Z"
            ),
        ),
    ] {
        let s = sample(name);
        let (status, _, ours) = c.get_full(&url, Some(1)).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(keys(&s), keys(&ours), "{name}: top-level keys");
        let sample_item = keys(&s["value"][0]);
        let our_item = keys(&ours["value"][0]);
        let missing: Vec<_> = sample_item.difference(&our_item).collect();
        assert!(missing.is_empty(), "{name}: item keys missing {missing:?}");
        let next = ours["@odata.nextLink"].as_str().unwrap();
        assert!(next.contains("$skiptoken="));
    }
    // error body shape
    let s = sample("error.example.json");
    let (_, v) = c.get("/groups/unknown").await;
    assert!(keys(&s["error"]).is_subset(&keys(&v["error"])));
    let s = sample("throttling.429.json");
    c.control(
        "faults",
        json!({"endpoint": "any", "status": 429, "count": 1}),
    )
    .await;
    let (st, v) = c.get("/domains").await;
    assert_eq!(st, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(keys(&s["error"]), keys(&v["error"]));
    assert_eq!(
        keys(&s["error"]["innerError"]),
        keys(&v["error"]["innerError"])
    );
    let s = sample("serviceprincipal-approleassignments.json");
    let _ = s;
}

#[test]
fn synthetic_tenant_is_deterministic() {
    let opts = SyntheticOptions {
        mailboxes: 12,
        accounts: 40,
        contacts: 150,
        days: 120,
        ..SyntheticOptions::default()
    };
    let a = synthetic_tenant(7, &opts);
    let b = synthetic_tenant(7, &opts);
    assert_eq!(a.fixture.to_json_pretty(), b.fixture.to_json_pretty());
    assert_eq!(a.customer_csv, b.customer_csv);
    let c = synthetic_tenant(8, &opts);
    assert_ne!(a.fixture.to_json_pretty(), c.fixture.to_json_pretty());
}

#[test]
fn synthetic_tenant_default_shape() {
    let opts = SyntheticOptions::default();
    let t = synthetic_tenant(42, &opts);
    let f = &t.fixture;
    let n_msg = f.messages.len();
    let n_evt = f.events.len();
    assert!((20_000..=40_000).contains(&n_msg), "messages {n_msg}");
    assert!((3_000..=6_000).contains(&n_evt), "events {n_evt}");
    assert_eq!(f.domains, vec!["contoso.com"]);
    assert!(f.users.len() >= 50);
    assert!(f.users.iter().filter(|u| u.admin).count() >= 2);
    assert_eq!(f.groups.len(), 4);
    assert!(f.groups.iter().any(|g| g.mail == "all-sales@contoso.com"));
    // GUID-shaped ids
    for u in &f.users {
        assert_eq!(u.id.len(), 36);
        assert_eq!(u.id.matches('-').count(), 4);
    }
    // customer CSV
    let mut lines = t.customer_csv.lines();
    assert_eq!(lines.next(), Some("AccountId,AccountName,EMail"));
    assert_eq!(t.customer_csv.lines().count(), 1 + opts.contacts);
    assert!(t.customer_csv.contains("ACC-0001,"));
    // no message after now; some future meetings within 30 days
    assert!(
        f.messages
            .iter()
            .all(|m| m.received_date_time <= opts.now + Duration::minutes(1))
    );
    let future = f.events.iter().filter(|e| e.start > opts.now).count();
    assert!(future > 0);
    assert!(
        f.events
            .iter()
            .all(|e| e.start <= opts.now + Duration::days(30))
    );
    assert!(f.events.iter().any(|e| e.is_cancelled));
    assert!(f.events.iter().any(|e| e.sensitivity == "private"));
    // shared copies
    let mut seen = std::collections::HashMap::new();
    for m in &f.messages {
        *seen.entry(&m.internet_message_id).or_insert(0) += 1;
    }
    assert!(seen.values().any(|n| *n > 1));
    assert!(
        f.messages
            .iter()
            .any(|m| m.from == "news@newsletter.example")
    );
}

#[tokio::test]
async fn synthetic_tenant_served() {
    let t = synthetic_tenant(
        1,
        &SyntheticOptions {
            mailboxes: 6,
            accounts: 20,
            contacts: 60,
            days: 60,
            ..SyntheticOptions::default()
        },
    );
    let c = setup_with(t.fixture.clone(), EmulatorOptions::default()).await;
    let (_, v) = c
        .get("/groups?$filter=mail eq 'all-sales@contoso.com'")
        .await;
    let gid = v["value"][0]["id"].as_str().unwrap().to_string();
    let (s, v) = c
        .get(&format!(
            "/groups/{gid}/transitiveMembers/microsoft.graph.user"
        ))
        .await;
    assert_eq!(s, StatusCode::OK);
    assert!(!v["value"].as_array().unwrap().is_empty());
    let mb = &t.fixture.users[0].id;
    let (_, items, _) = c
        .drain(
            &format!("/users/{mb}/mailFolders/inbox/messages/delta"),
            1000,
        )
        .await;
    let expected = t
        .fixture
        .messages
        .iter()
        .filter(|m| &m.mailbox == mb && m.folder == "inbox" && m.received_date_time <= now())
        .count();
    assert_eq!(items.len(), expected);
}

#[tokio::test]
async fn binary_prints_url() {
    use std::io::BufRead;
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_graph-emulator"))
        .args([
            "--seed",
            "3",
            "--mailboxes",
            "4",
            "--accounts",
            "10",
            "--contacts",
            "30",
            "--days",
            "30",
            "--as-of",
            "2026-03-02T00:00:00Z",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let line = tokio::task::spawn_blocking(move || {
        let mut line = String::new();
        std::io::BufReader::new(stdout)
            .read_line(&mut line)
            .unwrap();
        line
    })
    .await
    .unwrap();
    let result = async {
        let url = line
            .trim_end()
            .strip_prefix("GRAPH_EMULATOR_URL=")
            .expect("url line")
            .to_string();
        assert!(url.starts_with("http://127.0.0.1:"), "{url}");
        let v: Value = reqwest::get(format!("{url}/_emulator/now"))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(v["now"], "2026-03-02T00:00:00Z");
    };
    let out = tokio::time::timeout(std::time::Duration::from_secs(20), result).await;
    let _ = child.kill();
    let _ = child.wait();
    out.expect("binary answered in time");
}
