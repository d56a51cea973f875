//! score: aggregates a run's activity, computes the scores and writes the output tables (SQS score-jobs).

use aws_lambda_events::event::sqs::{SqsBatchResponse, SqsEvent};
use shared::jobs::{Outcome, for_each_record, parse_body, receive_count};
use shared::run::ScoreJob;
use shared::services::Services;

pub async fn handle(services: &Services, event: SqsEvent) -> SqsBatchResponse {
    for_each_record(event, |message| async move {
        let Some(job) = parse_body::<ScoreJob>(&message) else {
            return Outcome::Done;
        };
        shared::scoring::run_score_job(services, &job, receive_count(&message)).await
    })
    .await
}
