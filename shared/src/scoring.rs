//! The score job: reads the contact data set and a run's activity, scores, writes the tables.

use crate::jobs::Outcome;
use crate::run::ScoreJob;
use crate::services::Services;

pub async fn run_score_job(_services: &Services, job: &ScoreJob, _receive_count: u32) -> Outcome {
    tracing::warn!(run_id = %job.run_id, "scoring is not wired yet");
    Outcome::Retry("scoring is not wired yet".into())
}
