//! The download under stress (issue 4): throttling, a mailbox that always fails, a duplicated
//! job, cancel — against the Graph emulator's fault injection, through the queue pollers.

use chrono::{DateTime, Utc};
use integration_tests::*;
use serde_json::{Value, json};

fn as_of() -> DateTime<Utc> {
    "2026-11-30T12:00:00Z".parse().expect("instant")
}

async fn emulator(t: &TestStack, path: &str, body: Value) -> Value {
    let response = t
        .http
        .post(format!("{}/_emulator/{path}", t.emulator_url()))
        .json(&body)
        .send()
        .await
        .expect("emulator");
    assert!(response.status().is_success(), "{path}");
    response.json().await.unwrap_or(Value::Null)
}

async fn counters(t: &TestStack) -> Value {
    t.http
        .get(format!("{}/_emulator/counters", t.emulator_url()))
        .send()
        .await
        .expect("counters")
        .json()
        .await
        .expect("json")
}

async fn first_run_id(t: &TestStack, id: &str) -> String {
    t.eventually(20, "the first run", || async {
        let (_, runs) = t
            .admin("GET", &format!("/enrichments/{id}/runs"), None)
            .await;
        runs["items"][0]["id"].as_str().map(str::to_string)
    })
    .await
}

async fn results(t: &TestStack, id: &str) -> Value {
    t.admin("GET", &format!("/enrichments/{id}/results"), None)
        .await
        .1
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throttling_is_honoured_and_no_mailbox_sees_more_than_four_requests() {
    let t = start_at(as_of()).await;
    emulator(&t, "options", json!({"latency_ms": 150})).await;
    emulator(&t, "faults", json!({"mailbox": ALICE, "endpoint": "messages", "status": 429, "count": 3, "retry_after": 1})).await;
    let id = consented(&t).await;
    let run = finished_run(&t, &id, None).await;
    assert_eq!(run["status"], "successful", "{run}");
    assert_eq!(results(&t, &id).await["emails_processed"], 3);
    let c = counters(&t).await;
    assert!(
        c["mailboxes"][ALICE]["throttled"].as_u64().unwrap_or(0) >= 3,
        "{c}"
    );
    for (mailbox, m) in c["mailboxes"].as_object().expect("mailboxes") {
        assert!(
            m["max_in_flight"].as_u64().unwrap_or(0) <= 4,
            "{mailbox}: {m}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mailbox_that_always_fails_ends_in_the_warnings_and_the_dlq() {
    let t = start_at(as_of()).await;
    emulator(
        &t,
        "faults",
        json!({"mailbox": DAVE, "endpoint": "any", "status": 500, "count": -1}),
    )
    .await;
    let id = consented(&t).await;
    let run = t
        .eventually(90, "the run to end", || async {
            let (_, runs) = t
                .admin("GET", &format!("/enrichments/{id}/runs"), None)
                .await;
            let run = runs["items"][0].clone();
            matches!(run["status"].as_str(), Some("successful" | "failure")).then_some(run)
        })
        .await;
    assert_eq!(run["status"], "successful", "the run goes on: {run}");
    let download = &run["tasks"]["download"];
    assert_eq!(download["progress"]["mailboxes_failed"], 1, "{run}");
    assert_eq!(download["progress"]["mailboxes_done"], 3);
    assert!(
        download["warnings"]
            .to_string()
            .contains("dave@contoso.com"),
        "{run}"
    );
    // Dave's outbound email to Northwind is missing; the rest is scored.
    assert_eq!(results(&t, &id).await["emails_processed"], 2);
    let dlq = t.stack.provisioned.queue_url("DownloadJobsDlq");
    let sqs = &t.stack.clients.sqs;
    t.eventually(30, "the job in the DLQ", || async {
        let out = sqs.receive_message().queue_url(&dlq).send().await.ok()?;
        out.messages.filter(|m| !m.is_empty())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_duplicated_job_counts_nothing_twice() {
    let t = start_at(as_of()).await;
    emulator(&t, "options", json!({"latency_ms": 300})).await;
    let id = consented(&t).await;
    let run_id = first_run_id(&t, &id).await;
    // SQS delivers at least once: the same job again, while the first is still running.
    let job = shared::run::DownloadJob {
        enrichment_id: id.clone(),
        run_id: run_id.clone(),
        mailbox_id: ALICE.into(),
        as_of: as_of(),
    };
    let queue = t.stack.services.settings.download_queue_url.clone();
    t.stack
        .services
        .queue
        .send(&queue, serde_json::to_string(&job).expect("json"), None)
        .await
        .expect("send");
    let run = finished_run(&t, &id, Some(&run_id)).await;
    assert_eq!(run["status"], "successful", "{run}");
    assert_eq!(
        run["tasks"]["download"]["progress"]["mailboxes_done"], 4,
        "{run}"
    );
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    let r = results(&t, &id).await;
    assert_eq!(
        (
            r["emails_processed"].clone(),
            r["meetings_processed"].clone()
        ),
        (json!(3), json!(1)),
        "{r}"
    );
    let (_, year) = t
        .admin(
            "GET",
            &format!("/enrichments/{id}/accounts?level=Year"),
            None,
        )
        .await;
    assert_eq!(office_row(&year, "ACC-1")["NoOfEmails_FromAccount"], 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_stops_the_run_and_frees_the_slot() {
    let t = start_at(as_of()).await;
    emulator(&t, "options", json!({"latency_ms": 1500})).await;
    let id = consented(&t).await;
    let run_id = first_run_id(&t, &id).await;
    let (status, canceled) = t
        .admin(
            "POST",
            &format!("/enrichments/{id}/runs/{run_id}/cancel"),
            None,
        )
        .await;
    assert_eq!(status, 200, "{canceled}");
    assert_eq!(canceled["status"], "canceled");
    assert_eq!(canceled["tasks"]["score"]["status"], "canceled");
    let (status, _) = t
        .admin(
            "POST",
            &format!("/enrichments/{id}/runs/{run_id}/cancel"),
            None,
        )
        .await;
    assert_eq!(status, 409, "a finished run cannot be canceled again");
    tokio::time::sleep(std::time::Duration::from_secs(4)).await;
    let (_, after) = t
        .admin("GET", &format!("/enrichments/{id}/runs/{run_id}"), None)
        .await;
    assert_eq!(
        after["status"], "canceled",
        "in-flight jobs stop without reviving it: {after}"
    );
    let (status, _) = t
        .admin("GET", &format!("/enrichments/{id}/results"), None)
        .await;
    assert_eq!(status, 404, "a canceled run publishes no results");
    emulator(&t, "options", json!({"latency_ms": 0})).await;
    let (status, next) = t
        .admin("POST", &format!("/enrichments/{id}/runs"), None)
        .await;
    assert_eq!(status, 202, "{next}");
}
