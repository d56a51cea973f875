//! start-run: `POST /enrichments/{id}/runs`, run requests from the queue (first run after
//! consent), and the schedule tick.

use aws_lambda_events::event::sqs::{SqsBatchResponse, SqsEvent};
use http::Method;
use lambda_http::{Body, Request, Response};
use shared::api::{self, authorize, path_segments};
use shared::jobs::{Outcome, for_each_record, parse_body};
use shared::problem::Problem;
use shared::run::{RunRequest, StartError, Trigger, schedule_tick, start_run};
use shared::services::Services;

/// What invoked the function: the one binary serves three event sources.
pub enum Invocation {
    Http(Box<Request>),
    Queue(SqsEvent),
    Tick,
}

/// Tells the event sources apart by their shape.
pub fn classify(event: serde_json::Value) -> Result<Invocation, String> {
    if event.get("requestContext").is_some() {
        lambda_http::request::from_str(&event.to_string())
            .map(|r| Invocation::Http(Box::new(r)))
            .map_err(|e| format!("unreadable HTTP event: {e}"))
    } else if event.get("Records").is_some() {
        serde_json::from_value(event)
            .map(Invocation::Queue)
            .map_err(|e| format!("unreadable SQS event: {e}"))
    } else {
        Ok(Invocation::Tick)
    }
}

pub async fn handle_http(services: &Services, request: Request) -> Response<Body> {
    api::respond(route(services, &request).await)
}

async fn route(services: &Services, request: &Request) -> Result<Response<Body>, Problem> {
    authorize(request)?;
    let segments = path_segments(request);
    let segments: Vec<&str> = segments.iter().map(String::as_str).collect();
    match (request.method().clone(), segments.as_slice()) {
        (Method::POST, ["enrichments", id, "runs"]) => {
            match start_run(services, id, Trigger::Manual).await {
                Ok(run) => Ok(api::json_response(202, &run)),
                Err(StartError::NotFound(id)) => Err(shared::enrichment::not_found(&id)),
                Err(StartError::Port(e)) => Err(e.into()),
                Err(refusal) => Err(Problem::conflict(refusal.to_string())),
            }
        }
        _ => Err(Problem::not_found("no such route")),
    }
}

pub async fn handle_queue(services: &Services, event: SqsEvent) -> SqsBatchResponse {
    for_each_record(event, |message| async move {
        let Some(request) = parse_body::<RunRequest>(&message) else {
            return Outcome::Done;
        };
        match start_run(services, &request.enrichment_id, request.trigger).await {
            Ok(_) => Outcome::Done,
            // A run that cannot start now is not retried: the next request or tick starts one.
            Err(StartError::Port(e)) => Outcome::Retry(e.to_string()),
            Err(refusal) => {
                tracing::info!(enrichment_id = %request.enrichment_id, reason = %refusal, "run request not started");
                Outcome::Done
            }
        }
    })
    .await
}

pub async fn handle_tick(services: &Services) -> Result<serde_json::Value, String> {
    let started = schedule_tick(services).await.map_err(|e| e.to_string())?;
    let report: Vec<_> = started
        .into_iter()
        .map(|(enrichment_id, outcome)| match outcome {
            Ok(run_id) => serde_json::json!({"enrichment_id": enrichment_id, "run_id": run_id}),
            Err(reason) => serde_json::json!({"enrichment_id": enrichment_id, "skipped": reason}),
        })
        .collect();
    Ok(serde_json::json!({ "runs": report }))
}
