//! download: the incremental Graph sync of one mailbox per job (SQS download-jobs).

use std::time::Instant;

use aws_lambda_events::event::sqs::{SqsBatchResponse, SqsEvent};
use shared::jobs::{Outcome, for_each_record, parse_body, receive_count};
use shared::run::DownloadJob;
use shared::services::Services;

pub async fn handle(services: &Services, event: SqsEvent, deadline: Instant) -> SqsBatchResponse {
    for_each_record(event, |message| async move {
        let Some(job) = parse_body::<DownloadJob>(&message) else {
            return Outcome::Done;
        };
        shared::download::run_download_job(services, &job, receive_count(&message), deadline).await
    })
    .await
}
