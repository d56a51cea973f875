//! send-consent: emails the tenant administrators the admin-consent link (SQS consent-requests).

use aws_lambda_events::event::sqs::{SqsBatchResponse, SqsEvent};
use shared::consent::{ConsentRequestMessage, send_consent_request};
use shared::jobs::{Outcome, for_each_record, parse_body};
use shared::services::Services;

pub async fn handle(services: &Services, event: SqsEvent) -> SqsBatchResponse {
    for_each_record(event, |message| async move {
        match parse_body::<ConsentRequestMessage>(&message) {
            Some(request) => send_consent_request(services, &request).await,
            None => Outcome::Done,
        }
    })
    .await
}
