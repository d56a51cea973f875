//! Every sample event in events/ goes through the handler of its function (the file name starts
//! with the function's name), as Lambda would deliver it: no panic, no 5xx, a well-formed answer.

use std::time::{Duration, Instant};

use aws_lambda_events::event::sqs::SqsEvent;
use integration_tests::*;
use local_stack::gateway::dispatch_http;
use local_stack::pollers::dispatch_sqs;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_sample_event_is_handled() {
    let t = TestStack::start_with(small_tenant(), |c| {
        c.bucket = "engagement-local".into();
        c.workers = false;
    })
    .await;
    t.upload_csv("contacts.csv", CONTACTS_CSV).await;
    let dir = local_stack::stack::repo_root().join("events");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .expect("events/")
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .collect();
    files.sort();
    assert!(files.len() >= 20, "a sample event per route and queue");
    let mut created = false;
    for path in files {
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default()
            .to_string();
        let function = name.split('.').next().unwrap_or_default().to_string();
        let text = std::fs::read_to_string(&path).expect("event file");
        let event: serde_json::Value =
            serde_json::from_str(&text).unwrap_or_else(|e| panic!("{name}: {e}"));
        let services = &t.stack.services;
        match start_run::classify(event.clone()).unwrap_or_else(|e| panic!("{name}: {e}")) {
            start_run::Invocation::Http(request) => {
                let response = dispatch_http(services, &function, *request).await;
                let status = response.status().as_u16();
                assert!(status < 500, "{name} answered {status}");
                let content_type = response
                    .headers()
                    .get("content-type")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("")
                    .to_string();
                if status >= 400 && function != "record-consent" {
                    assert_eq!(content_type, "application/problem+json", "{name}");
                }
                if name == "save-config.create.json" {
                    assert_eq!(status, 201, "the sample create event is a valid request");
                    created = true;
                }
            }
            start_run::Invocation::Queue(_) => {
                let sqs: SqsEvent =
                    serde_json::from_value(event).unwrap_or_else(|e| panic!("{name}: {e}"));
                let deadline = Instant::now() + Duration::from_secs(30);
                let response = dispatch_sqs(services, &function, sqs, deadline).await;
                // The sample ids name no stored enrichment: the message is settled, not retried forever.
                assert!(
                    response.batch_item_failures.is_empty(),
                    "{name}: {:?}",
                    response.batch_item_failures
                );
            }
            start_run::Invocation::Tick => {
                assert_eq!(function, "start-run", "{name}");
                start_run::handle_tick(services)
                    .await
                    .unwrap_or_else(|e| panic!("{name}: {e}"));
            }
        }
    }
    assert!(created);
}
