//! Plumbing of the SQS-triggered functions: each record is handled on its own and failures are
//! reported per record (`ReportBatchItemFailures`) so one bad message never redelivers the rest.

use std::future::Future;

use aws_lambda_events::event::sqs::{BatchItemFailure, SqsBatchResponse, SqsEvent, SqsMessage};

/// How handling one message ended.
#[derive(Debug)]
pub enum Outcome {
    Done,
    /// Leave the message for redelivery (and, after maxReceiveCount, the DLQ).
    Retry(String),
}

/// How many times SQS has delivered this message (1 on the first delivery).
pub fn receive_count(message: &SqsMessage) -> u32 {
    message
        .attributes
        .get("ApproximateReceiveCount")
        .and_then(|v| v.parse().ok())
        .unwrap_or(1)
}

/// Runs `handle` for every record and collects the ids of those to redeliver.
pub async fn for_each_record<F, Fut>(event: SqsEvent, mut handle: F) -> SqsBatchResponse
where
    F: FnMut(SqsMessage) -> Fut,
    Fut: Future<Output = Outcome>,
{
    let mut failures = Vec::new();
    for message in event.records {
        let id = message.message_id.clone().unwrap_or_default();
        if let Outcome::Retry(reason) = handle(message).await {
            tracing::warn!(message_id = %id, %reason, "message left for redelivery");
            let mut failure = BatchItemFailure::default();
            failure.item_identifier = id;
            failures.push(failure);
        }
    }
    let mut response = SqsBatchResponse::default();
    response.batch_item_failures = failures;
    response
}

/// Parses a message body; a body that can never parse is dropped with an error log instead of
/// being redelivered forever.
pub fn parse_body<T: serde::de::DeserializeOwned>(message: &SqsMessage) -> Option<T> {
    let body = message.body.as_deref().unwrap_or("");
    match serde_json::from_str(body) {
        Ok(v) => Some(v),
        Err(e) => {
            tracing::error!(message_id = ?message.message_id, error = %e, "unreadable message dropped");
            None
        }
    }
}
