//! Queue pollers: what Lambda's SQS event source mappings do, in-process. Each message becomes an
//! SQS event for the function the template maps the queue to; reported failures are made visible
//! again soon (after maxReceiveCount SQS moves them to the dead-letter queue).

use std::sync::Arc;
use std::time::{Duration, Instant};

use aws_lambda_events::event::sqs::{SqsBatchResponse, SqsEvent, SqsMessage};
use shared::aws::AwsClients;
use shared::aws::sqs_sdk::types::MessageSystemAttributeName;
use shared::services::Services;
use tokio::sync::Semaphore;

/// Calls the SQS handler of a function by its binary name.
pub async fn dispatch_sqs(
    services: &Services,
    binary: &str,
    event: SqsEvent,
    deadline: Instant,
) -> SqsBatchResponse {
    match binary {
        "send-consent" => send_consent::handle(services, event).await,
        "start-run" => start_run::handle_queue(services, event).await,
        "download" => download::handle(services, event, deadline).await,
        "score" => score::handle(services, event).await,
        other => {
            tracing::error!(function = other, "no SQS handler");
            SqsBatchResponse::default()
        }
    }
}

pub struct PollerConfig {
    pub queue_url: String,
    pub queue_arn: String,
    pub binary: String,
    pub concurrency: usize,
    pub job_time: Duration,
    /// Seconds before a failed message is delivered again.
    pub retry_delay: i32,
}

fn to_event(message: &shared::aws::sqs_sdk::types::Message, queue_arn: &str) -> SqsEvent {
    let mut record = SqsMessage::default();
    record.message_id = message.message_id().map(str::to_string);
    record.receipt_handle = message.receipt_handle().map(str::to_string);
    record.body = message.body().map(str::to_string);
    record.attributes = message
        .attributes()
        .map(|a| {
            a.iter()
                .map(|(k, v)| (k.as_str().to_string(), v.clone()))
                .collect()
        })
        .unwrap_or_default();
    record.event_source = Some("aws:sqs".into());
    record.event_source_arn = Some(queue_arn.to_string());
    record.aws_region = Some("us-east-1".into());
    let mut event = SqsEvent::default();
    event.records = vec![record];
    event
}

/// Polls one queue forever.
// moto reads only the older `AttributeNames` parameter, which the SDK marks deprecated.
#[allow(deprecated)]
pub async fn poll(clients: AwsClients, services: Services, config: PollerConfig) {
    let permits = Arc::new(Semaphore::new(config.concurrency));
    let config = Arc::new(config);
    loop {
        let available = permits.available_permits();
        if available == 0 {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        }
        let received = clients
            .sqs
            .receive_message()
            .queue_url(&config.queue_url)
            .max_number_of_messages(available.min(10) as i32)
            .wait_time_seconds(1)
            .message_system_attribute_names(MessageSystemAttributeName::All)
            // moto reads the older parameter name.
            .attribute_names(shared::aws::sqs_sdk::types::QueueAttributeName::All)
            .send()
            .await;
        let messages = match received {
            Ok(out) => out.messages.unwrap_or_default(),
            Err(e) => {
                tracing::debug!(error = %e, queue = %config.queue_url, "receive failed");
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            }
        };
        for message in messages {
            let Ok(permit) = permits.clone().acquire_owned().await else {
                return;
            };
            let (clients, services, config) = (clients.clone(), services.clone(), config.clone());
            tokio::spawn(async move {
                let event = to_event(&message, &config.queue_arn);
                let deadline = Instant::now() + config.job_time;
                let response = dispatch_sqs(&services, &config.binary, event, deadline).await;
                let receipt = message.receipt_handle().unwrap_or_default().to_string();
                let failed = !response.batch_item_failures.is_empty();
                let result = if failed {
                    clients
                        .sqs
                        .change_message_visibility()
                        .queue_url(&config.queue_url)
                        .receipt_handle(receipt)
                        .visibility_timeout(config.retry_delay)
                        .send()
                        .await
                        .map(|_| ())
                        .map_err(|e| e.to_string())
                } else {
                    clients
                        .sqs
                        .delete_message()
                        .queue_url(&config.queue_url)
                        .receipt_handle(receipt)
                        .send()
                        .await
                        .map(|_| ())
                        .map_err(|e| e.to_string())
                };
                if let Err(e) = result {
                    tracing::warn!(error = %e, "could not settle a message");
                }
                drop(permit);
            });
        }
    }
}
