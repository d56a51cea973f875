//! Download wall time against the ideal (DESIGN §12): one mailbox with several pages per stream,
//! the Graph emulator adding `LATENCY_MS` to every request. Streams run side by side and pages of a
//! stream follow each other, so the ideal is `max(pages of a stream) × latency`.
//!
//! Run: `tools/local/with-moto.sh cargo run --release -p local-stack --example download_bench`

use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use graph_emulator::{EmulatorOptions, Fixture};
use local_stack::stack::{GraphSource, LocalStack, StackConfig};
use serde_json::json;
use shared::run::DownloadJob;

const MAILBOX: &str = "00000000-0000-0000-0000-00000000a11c";
const LATENCY_MS: u64 = 200;

fn fixture(as_of: DateTime<Utc>, inbox: usize, sent: usize, events: usize) -> Fixture {
    let t = |i: usize| (as_of - chrono::Duration::minutes(10 * i as i64 + 5)).to_rfc3339();
    let mut messages = Vec::new();
    for i in 0..inbox {
        messages.push(json!({"mailbox": MAILBOX, "folder": "inbox", "id": format!("in-{i}"),
            "internetMessageId": format!("<in-{i}@fabrikam.com>"), "conversationId": format!("c{}", i % 500),
            "from": format!("p{}@fabrikam.com", i % 300), "to": ["alice@contoso.com"], "cc": [],
            "sentDateTime": t(i), "receivedDateTime": t(i)}));
    }
    for i in 0..sent {
        messages.push(json!({"mailbox": MAILBOX, "folder": "sentitems", "id": format!("out-{i}"),
            "internetMessageId": format!("<out-{i}@contoso.com>"), "conversationId": format!("c{}", i % 500),
            "from": "alice@contoso.com", "to": [format!("p{}@fabrikam.com", i % 300)], "cc": [],
            "sentDateTime": t(i), "receivedDateTime": t(i)}));
    }
    let events: Vec<_> = (0..events)
        .map(|i| {
            json!({"mailbox": MAILBOX, "id": format!("ev-{i}"), "iCalUId": format!("ical-{i}"),
            "organizer": "alice@contoso.com", "attendees": [format!("p{}@fabrikam.com", i % 300)],
            "start": t(i), "end": t(i), "isCancelled": false, "sensitivity": "normal"})
        })
        .collect();
    let tenant = json!({"tenant_id": "7a1b2c3d-0000-4000-8000-00000000c0de", "domains": ["contoso.com"],
        "users": [{"id": MAILBOX, "mail": "alice@contoso.com", "displayName": "Alice", "admin": true}],
        "groups": [], "messages": messages, "events": events});
    Fixture::from_json_str(&tenant.to_string()).expect("fixture")
}

#[tokio::main]
async fn main() -> Result<(), String> {
    let as_of: DateTime<Utc> = "2026-11-30T12:00:00Z".parse().map_err(|e| format!("{e}"))?;
    let (inbox, sent, events) = (5_000, 3_000, 900);
    let options = EmulatorOptions {
        now: as_of,
        latency_ms: LATENCY_MS,
        ..EmulatorOptions::default()
    };
    let mut config = StackConfig::new(GraphSource::Emulator(
        Box::new(fixture(as_of, inbox, sent, events)),
        options,
    ));
    let id = uuid::Uuid::new_v4().simple().to_string();
    config.prefix = format!("bench{}-", &id[..6]);
    config.bucket = format!("bench{}-engagement", &id[..6]);
    config.workers = false;
    config.as_of = Some(as_of);
    let stack = LocalStack::start(config).await?;
    let services = &stack.services;

    // A stored enrichment, mailbox and run, as save-config and start-run leave them.
    let uri = stack
        .upload_customer_data(
            "contacts.csv",
            b"AccountId,EMail\nA,p1@fabrikam.com\n".to_vec(),
        )
        .await?;
    let request: shared::config::EnrichmentRequest = serde_json::from_value(json!({
        "name": "bench", "mailboxes": {"users": ["alice@contoso.com"]}, "consent_agreed": true,
        "customer_data": {"uri": uri, "format": "csv", "account_id_field": "AccountId", "email_field": "EMail"}}))
    .map_err(|e| e.to_string())?;
    let mut enrichment =
        shared::config::Enrichment::from_request(id.clone(), request, 1, as_of, None);
    enrichment.status = shared::config::EnrichmentStatus::Active;
    enrichment.consent.status = shared::config::ConsentStatus::Granted;
    let row = shared::tables::UserEntityRow {
        user_id: MAILBOX.into(),
        email: "alice@contoso.com".into(),
        display_name: "Alice".into(),
        source: "user".into(),
    };
    shared::store::replace_mailboxes(services.table.as_ref(), &id, &[row])
        .await
        .map_err(|e| e.to_string())?;
    shared::store::save_enrichment(services.table.as_ref(), &enrichment)
        .await
        .map_err(|e| e.to_string())?;
    let run = shared::run::start_run(services, &id, shared::run::Trigger::Manual)
        .await
        .map_err(|e| e.to_string())?;
    let job = DownloadJob {
        enrichment_id: id.clone(),
        run_id: run.id.clone(),
        mailbox_id: MAILBOX.into(),
        as_of,
    };

    let started = Instant::now();
    let outcome = shared::download::run_download_job(
        services,
        &job,
        1,
        Instant::now() + Duration::from_secs(900),
    )
    .await;
    let elapsed = started.elapsed();
    let pages = |n: usize| n.div_ceil(1000).max(1);
    let ideal_pages = pages(inbox).max(pages(sent)).max(pages(events));
    let ideal = Duration::from_millis(ideal_pages as u64 * LATENCY_MS);
    let counters: serde_json::Value = reqwest::get(format!(
        "{}/_emulator/counters",
        stack
            .emulator
            .as_ref()
            .map(|e| e.url.clone())
            .unwrap_or_default()
    ))
    .await
    .map_err(|e| e.to_string())?
    .json()
    .await
    .map_err(|e| e.to_string())?;
    let c = &counters["mailboxes"][MAILBOX];
    println!("outcome: {outcome:?}");
    println!(
        "{inbox} inbox + {sent} sent messages, {events} events; latency {LATENCY_MS} ms per request; page size 1000"
    );
    println!(
        "requests: {} mail + {} calendar = {} (minimum {}), max in flight {}",
        c["messages_delta"],
        c["calendar_delta"],
        c["messages_delta"].as_u64().unwrap_or(0) + c["calendar_delta"].as_u64().unwrap_or(0),
        pages(inbox) + pages(sent) + pages(events),
        c["max_in_flight"]
    );
    println!(
        "wall time {:.0} ms; ideal {} ms ({} pages in the longest stream × latency); ratio {:.2}",
        elapsed.as_secs_f64() * 1000.0,
        ideal.as_millis(),
        ideal_pages,
        elapsed.as_secs_f64() / ideal.as_secs_f64()
    );
    Ok(())
}
