//! Runs, incremental download and scoring end to end (issues 4 and 5), against moto and the
//! Graph emulator, through the API, the queue pollers and the same handlers as Lambda.

use chrono::{DateTime, Utc};
use integration_tests::*;
use serde_json::{Value, json};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consent_runs_downloads_scores_and_the_next_run_is_incremental() {
    let as_of: DateTime<Utc> = "2026-11-30T12:00:00Z".parse().expect("instant");
    let t = start_at(as_of).await;
    let id = consented(&t).await;

    // The grant asked for the first run.
    let run = finished_run(&t, &id, None).await;
    assert_eq!(run["status"], "successful", "{run}");
    assert_eq!(run["trigger"], "consent");
    assert_eq!(run["as_of"], "2026-11-30T12:00:00Z");
    let progress = &run["tasks"]["download"]["progress"];
    assert_eq!(progress["mailboxes_total"], 4, "{run}");
    assert_eq!(progress["mailboxes_done"], 4, "{run}");
    assert_eq!(progress["mailboxes_failed"], 0);
    assert_eq!(run["tasks"]["score"]["status"], "successful");

    let (status, results) = t
        .admin("GET", &format!("/enrichments/{id}/results"), None)
        .await;
    assert_eq!(status, 200, "{results}");
    assert_eq!(results["enriched_customers"], 2, "{results}");
    assert_eq!(
        results["emails_processed"], 3,
        "m1 once though in two mailboxes, m2, m4: {results}"
    );
    assert_eq!(
        results["meetings_processed"], 1,
        "the private meeting is skipped: {results}"
    );

    let (_, year) = t
        .admin(
            "GET",
            &format!("/enrichments/{id}/accounts?level=Year"),
            None,
        )
        .await;
    let fabrikam = office_row(&year, "ACC-1");
    assert_eq!(fabrikam["NoOfEmails_FromAccount"], 1, "{fabrikam}");
    assert_eq!(fabrikam["NoOfEmails_ToAccount"], 1, "{fabrikam}");
    assert_eq!(fabrikam["NoOfMeetings_ToAccount"], 0);
    assert_eq!(
        fabrikam["AverageDuration_Of_AccountEmailReplies"],
        Value::Null,
        "jo wrote first; alice's answer is no account reply"
    );
    let northwind = office_row(&year, "ACC-2");
    assert_eq!(northwind["NoOfMeetings_ToAccount"], 1, "{northwind}");
    assert_eq!(northwind["AverageDuration_Of_Meetings"], 60.0);
    let (_, month) = t
        .admin(
            "GET",
            &format!("/enrichments/{id}/accounts?level=Month"),
            None,
        )
        .await;
    assert_eq!(
        office_row(&month, "ACC-2")["NoOfEmails_ToAccount"],
        0,
        "m4 is older than the Month window"
    );

    let (status, card) = t
        .admin(
            "GET",
            &format!("/enrichments/{id}/accounts/ACC-1?period=Week"),
            None,
        )
        .await;
    assert_eq!(status, 200, "{card}");
    assert_eq!(card["totals"]["emails_from_account"], 1);
    assert!(card["history"].as_array().is_some_and(|h| !h.is_empty()));
    let (status, measures) = t
        .admin(
            "GET",
            &format!("/enrichments/{id}/measures?level=Year"),
            None,
        )
        .await;
    assert_eq!(status, 200, "{measures}");
    assert_eq!(measures["accounts"], 2);

    let bucket = t.stack.provisioned.bucket.clone();
    let office = t
        .stack
        .services
        .blobs
        .get(&bucket, &format!("tables/{id}/latest/Office.csv"))
        .await
        .expect("get")
        .expect("latest Office.csv");
    assert!(
        String::from_utf8_lossy(&office)
            .starts_with("AccountId,AggregationLevel,AggregationStartDate,EngagementScore")
    );

    // The next run asks only for the changes.
    let emulator = t.emulator_url();
    t.http
        .post(format!("{emulator}/_emulator/counters/reset"))
        .send()
        .await
        .expect("reset");
    let new_mail = json!({"messages": [{"mailbox": ALICE, "folder": "inbox", "id": "m5", "internetMessageId": "<m5@fabrikam.com>",
        "conversationId": "c1", "from": "jo@fabrikam.com", "to": ["alice@contoso.com"], "cc": [],
        "sentDateTime": at(0, -2, as_of), "receivedDateTime": at(0, -2, as_of)}]});
    assert!(
        t.http
            .post(format!("{emulator}/_emulator/activity"))
            .json(&new_mail)
            .send()
            .await
            .expect("add")
            .status()
            .is_success()
    );
    let (status, started) = t
        .admin("POST", &format!("/enrichments/{id}/runs"), None)
        .await;
    assert_eq!(status, 202, "{started}");
    let run_id = started["id"].as_str().expect("run id").to_string();
    let (status, _) = t
        .admin("POST", &format!("/enrichments/{id}/runs"), None)
        .await;
    assert_eq!(status, 409, "one active run per enrichment");
    let second = finished_run(&t, &id, Some(&run_id)).await;
    assert_eq!(second["status"], "successful", "{second}");
    let counters: Value = t
        .http
        .get(format!("{emulator}/_emulator/counters"))
        .send()
        .await
        .expect("counters")
        .json()
        .await
        .expect("json");
    for mailbox in [ALICE, BOB, CAROL, DAVE] {
        let c = &counters["mailboxes"][mailbox];
        assert_eq!(
            c["messages_delta"], 2,
            "one delta page per mail folder for {mailbox}: {counters}"
        );
        assert_eq!(c["calendar_delta"], 1, "{counters}");
    }
    let (_, results) = t
        .admin("GET", &format!("/enrichments/{id}/results"), None)
        .await;
    assert_eq!(
        results["emails_processed"], 4,
        "only the new email is added: {results}"
    );
    let (_, year) = t
        .admin(
            "GET",
            &format!("/enrichments/{id}/accounts?level=Year"),
            None,
        )
        .await;
    assert_eq!(office_row(&year, "ACC-1")["NoOfEmails_FromAccount"], 2);
    assert_eq!(
        office_row(&year, "ACC-1")["AverageDuration_Of_AccountEmailReplies"],
        2760.0,
        "jo replied 46 hours after alice"
    );

    // An expired delta token resyncs the stream without counting anything twice.
    t.http
        .post(format!("{emulator}/_emulator/tokens/expire"))
        .json(&json!({}))
        .send()
        .await
        .expect("expire");
    let (status, third) = t
        .admin("POST", &format!("/enrichments/{id}/runs"), None)
        .await;
    assert_eq!(status, 202, "{third}");
    let third = finished_run(&t, &id, third["id"].as_str()).await;
    assert_eq!(third["status"], "successful", "{third}");
    let (_, again) = t
        .admin("GET", &format!("/enrichments/{id}/results"), None)
        .await;
    assert_eq!(again["emails_processed"], 4, "{again}");
    assert_eq!(again["meetings_processed"], 1);
    let (_, runs) = t
        .admin("GET", &format!("/enrichments/{id}/runs"), None)
        .await;
    assert_eq!(runs["items"].as_array().map(Vec::len), Some(3));
    assert_eq!(runs["items"][0]["id"], third["id"], "newest first");
}
