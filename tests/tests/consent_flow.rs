//! Admin consent (issue 3): the emails, the signed single-use link, grant, denial, re-request,
//! and consent given in the admin console.

use integration_tests::*;
use serde_json::{Value, json};
use shared::consent::{ConsentState, sign_state};

async fn create(t: &TestStack, name: &str) -> String {
    let uri = t.upload_csv("contacts.csv", CONTACTS_CSV).await;
    let mut body = create_body(&uri);
    body["name"] = json!(name);
    let (status, created) = t.admin("POST", "/enrichments", Some(body)).await;
    assert_eq!(status, 201, "{created}");
    created["id"].as_str().expect("id").to_string()
}

fn state_of(link: &str) -> String {
    url::Url::parse(link)
        .expect("link")
        .query_pairs()
        .find(|(k, _)| k == "state")
        .map(|(_, v)| v.into_owned())
        .expect("state")
}

/// Follows the admin-consent link through the emulator to our callback; answers its status and page.
async fn follow(t: &TestStack, link: &str) -> (u16, String) {
    let response = t.http.get(link).send().await.expect("emulator answers");
    assert_eq!(
        response.status().as_u16(),
        302,
        "the identity platform redirects"
    );
    let location = response.headers()["location"]
        .to_str()
        .expect("location")
        .to_string();
    let callback = t
        .http
        .get(&location)
        .send()
        .await
        .expect("callback answers");
    (
        callback.status().as_u16(),
        callback.text().await.unwrap_or_default(),
    )
}

async fn wait_for_emails(t: &TestStack, name: &str, count: usize) -> Vec<Value> {
    t.eventually(20, "consent emails", || async {
        let mut all = t.emails_to("it.admin@contoso.com", name).await;
        all.extend(t.emails_to("global.admin@contoso.com", name).await);
        (all.len() >= count).then_some(all)
    })
    .await
}

async fn enrichment(t: &TestStack, id: &str) -> Value {
    t.admin("GET", &format!("/enrichments/{id}"), None).await.1
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_admin_gets_one_email_and_the_grant_activates() {
    let t = TestStack::start(small_tenant()).await;
    let name = unique("Consent grant ");
    let id = create(&t, &name).await;
    let emails = wait_for_emails(&t, &name, 2).await;
    assert_eq!(emails.len(), 2, "one email per administrator");
    let requested = t
        .eventually(10, "consent recorded as requested", || async {
            let e = enrichment(&t, &id).await;
            (e["consent"]["status"] == "requested").then_some(e)
        })
        .await;
    let mut recipients: Vec<String> = requested["consent"]["recipients"]
        .as_array()
        .expect("recipients")
        .iter()
        .map(|r| r.as_str().unwrap_or("").to_string())
        .collect();
    recipients.sort();
    assert_eq!(
        recipients,
        ["global.admin@contoso.com", "it.admin@contoso.com"]
    );

    // A redelivered queue message sends no second email.
    let request_id = t
        .stack
        .services
        .table
        .get(&format!("ENR#{id}"), "CONFIG")
        .await
        .expect("get")
        .expect("config")
        .doc["consent"]["request_id"]
        .as_str()
        .expect("request id")
        .to_string();
    let message = shared::consent::ConsentRequestMessage {
        enrichment_id: id.clone(),
        request_id,
    };
    assert!(matches!(
        shared::consent::send_consent_request(&t.stack.services, &message).await,
        shared::jobs::Outcome::Done
    ));
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    assert_eq!(
        wait_for_emails(&t, &name, 2).await.len(),
        2,
        "no extra email on redelivery"
    );

    let link = link_in(&emails[0]);
    assert!(link.contains("/v2.0/adminconsent?client_id="), "{link}");
    let (status, page) = follow(&t, &link).await;
    assert_eq!(status, 200, "{page}");
    assert!(page.contains("Consent granted"));
    let granted = enrichment(&t, &id).await;
    assert_eq!(granted["status"], "active");
    assert_eq!(granted["consent"]["status"], "granted");
    assert!(granted["consent"]["decided_at"].is_string());

    // Replaying the link changes nothing.
    let state = state_of(&link);
    let replay = t
        .http
        .get(t.url(&format!(
            "/consent/callback?admin_consent=True&state={state}"
        )))
        .send()
        .await
        .expect("callback");
    assert_eq!(replay.status().as_u16(), 409);
    assert_eq!(enrichment(&t, &id).await["version"], granted["version"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_expired_and_unknown_states_are_refused() {
    let t = TestStack::start(small_tenant()).await;
    let name = unique("Consent refusals ");
    let id = create(&t, &name).await;
    wait_for_emails(&t, &name, 2).await;
    let before = enrichment(&t, &id).await;
    let request_id = t
        .stack
        .services
        .table
        .get(&format!("ENR#{id}"), "CONFIG")
        .await
        .expect("get")
        .expect("config")
        .doc["consent"]["request_id"]
        .as_str()
        .expect("request")
        .to_string();
    let key = t.stack.services.settings.state_signing_key.clone();
    let expired = sign_state(
        &key,
        &ConsentState {
            enrichment_id: id.clone(),
            request_id: request_id.clone(),
            expires_at: chrono::Utc::now().timestamp() - 10,
        },
    );
    let forged = sign_state(
        b"someone else's key",
        &ConsentState {
            enrichment_id: id.clone(),
            request_id: request_id.clone(),
            expires_at: chrono::Utc::now().timestamp() + 3600,
        },
    );
    let unknown = sign_state(
        &key,
        &ConsentState {
            enrichment_id: "nope".into(),
            request_id,
            expires_at: chrono::Utc::now().timestamp() + 3600,
        },
    );
    for (state, expected) in [
        (expired, 410),
        (forged, 400),
        (unknown, 404),
        ("garbage".to_string(), 400),
    ] {
        let response = t
            .http
            .get(t.url("/consent/callback"))
            .query(&[("admin_consent", "True"), ("state", &state)])
            .send()
            .await
            .expect("callback");
        assert_eq!(response.status().as_u16(), expected, "{state}");
        assert!(
            response.headers()["content-type"]
                .to_str()
                .unwrap_or("")
                .starts_with("text/html")
        );
    }
    let response = t
        .http
        .get(t.url("/consent/callback?admin_consent=True"))
        .send()
        .await
        .expect("callback");
    assert_eq!(response.status().as_u16(), 400);
    let after = enrichment(&t, &id).await;
    assert_eq!(after["status"], "pending_consent");
    assert_eq!(after["version"], before["version"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn denial_is_recorded_and_a_new_request_invalidates_the_old_link() {
    let t = TestStack::start(small_tenant()).await;
    let name = unique("Consent denial ");
    let id = create(&t, &name).await;
    let first = link_in(&wait_for_emails(&t, &name, 2).await[0]);

    // Ask again: a new link; the first one stops working.
    let (status, _) = t
        .admin("POST", &format!("/enrichments/{id}/consent/request"), None)
        .await;
    assert_eq!(status, 202);
    let emails = wait_for_emails(&t, &name, 4).await;
    let second = emails
        .iter()
        .map(link_in)
        .find(|l| state_of(l) != state_of(&first))
        .expect("a new link");
    // (Declined at the identity platform too: an approval there would be real consent.)
    let (status, page) = follow(&t, &format!("{first}&emulator_decision=deny")).await;
    assert_eq!(status, 409, "{page}");
    assert_eq!(enrichment(&t, &id).await["status"], "pending_consent");

    // The administrator declines.
    let (status, page) = follow(&t, &format!("{second}&emulator_decision=deny")).await;
    assert_eq!(status, 200, "{page}");
    assert!(page.contains("not granted"));
    let denied = enrichment(&t, &id).await;
    assert_eq!(denied["status"], "consent_denied");
    assert_eq!(denied["consent"]["status"], "denied");
    assert!(
        denied["consent"]["error"]
            .as_str()
            .unwrap_or("")
            .contains("access_denied"),
        "{denied}"
    );
    let (status, _) = t
        .admin("POST", &format!("/enrichments/{id}/runs"), None)
        .await;
    assert_eq!(status, 409, "no run without consent");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consent_given_in_the_admin_console_is_detected() {
    let t = TestStack::start(small_tenant()).await;
    let name = unique("Console consent ");
    let id = create(&t, &name).await;
    wait_for_emails(&t, &name, 2).await;
    let granted = t
        .http
        .post(format!("{}/_emulator/consent/grant", t.emulator_url()))
        .json(&json!({"client_id": local_stack::stack::LOCAL_CLIENT_ID}))
        .send()
        .await
        .expect("emulator");
    assert!(granted.status().is_success());
    // The next schedule tick (or run request) looks at the application's service principal.
    start_run::handle_tick(&t.stack.services)
        .await
        .expect("tick");
    let e = enrichment(&t, &id).await;
    assert_eq!(e["consent"]["status"], "granted", "{e}");
    assert_eq!(e["consent"]["granted_via"], "admin_console");
    assert_eq!(e["status"], "active");
}
