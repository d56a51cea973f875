//! Runs (DESIGN §3, §5): starting one (manually, on schedule, after consent) with at most one
//! active per enrichment, task statuses and progress, completion of the download task, cancel.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::config::{ConsentStatus, Enrichment, EnrichmentStatus};
use crate::ports::{Item, PortError, PortResult, Precondition, Table};
use crate::services::Services;
use crate::store::{self, decode, encode, enrichment_pk};

pub const ACTIVE_RUN_SK: &str = "ACTIVE_RUN";
pub const SCHEDULE_SK: &str = "SCHEDULE";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Trigger {
    Manual,
    Schedule,
    Consent,
}

/// The six statuses of DESIGN §5, for runs and tasks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Queued,
    Processing,
    Successful,
    Failure,
    Skipped,
    Canceled,
}

impl Status {
    pub fn is_final(self) -> bool {
        !matches!(self, Status::Queued | Status::Processing)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Task {
    pub status: Status,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    pub processing_ms: Option<i64>,
    #[serde(default)]
    pub errors: Vec<String>,
    #[serde(default)]
    pub warnings: Vec<String>,
    #[serde(default)]
    pub progress: serde_json::Map<String, serde_json::Value>,
    /// When the task last made progress.
    #[serde(default)]
    pub last_processing_at: Option<DateTime<Utc>>,
}

impl Task {
    fn new(status: Status, now: DateTime<Utc>) -> Self {
        Task {
            status,
            started_at: (status == Status::Processing).then_some(now),
            finished_at: status.is_final().then_some(now),
            processing_ms: status.is_final().then_some(0),
            errors: vec![],
            warnings: vec![],
            progress: Default::default(),
            last_processing_at: None,
        }
    }

    pub fn start(&mut self, now: DateTime<Utc>) {
        if self.status.is_final() {
            return;
        }
        self.status = Status::Processing;
        self.started_at.get_or_insert(now);
        self.last_processing_at = Some(now);
    }

    pub fn finish(&mut self, status: Status, now: DateTime<Utc>) {
        if self.status.is_final() {
            return;
        }
        self.status = status;
        self.finished_at = Some(now);
        self.processing_ms = Some(
            self.started_at
                .map(|s| (now - s).num_milliseconds().max(0))
                .unwrap_or(0),
        );
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Tasks {
    pub download: Task,
    pub score: Task,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Run {
    pub id: String,
    pub enrichment_id: String,
    pub status: Status,
    pub as_of: DateTime<Utc>,
    pub started_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
    pub trigger: Trigger,
    pub tasks: Tasks,
    /// Why a run was skipped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The organization's domains when the run started: read from Graph once per run rather than
    /// once per mailbox (internal = one of these domains or a chosen mailbox).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub organization_domains: Vec<String>,
    /// Revision of the stored item, for conditional writes (several jobs update a run).
    #[serde(skip)]
    pub revision: u64,
}

impl Run {
    fn sk(&self) -> String {
        run_sk(self.started_at, &self.id)
    }

    /// The run status follows from its tasks.
    pub fn derive_status(&mut self, now: DateTime<Utc>) {
        let (d, s) = (self.tasks.download.status, self.tasks.score.status);
        let status = if d == Status::Canceled || s == Status::Canceled {
            Status::Canceled
        } else if d == Status::Failure || s == Status::Failure {
            Status::Failure
        } else if d == Status::Skipped {
            Status::Skipped
        } else if d == Status::Successful && s == Status::Successful {
            Status::Successful
        } else {
            Status::Processing
        };
        self.status = status;
        if status.is_final() && self.finished_at.is_none() {
            self.finished_at = Some(now);
        }
    }
}

fn run_sk(started_at: DateTime<Utc>, id: &str) -> String {
    format!("RUN#{}#{id}", started_at.format("%Y-%m-%dT%H:%M:%S%.3fZ"))
}

fn run_pointer_sk(id: &str) -> String {
    format!("RUNID#{id}")
}

fn progress_sk(id: &str) -> String {
    format!("PROGRESS#{id}")
}

/// A message of the run-requests queue.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunRequest {
    pub enrichment_id: String,
    pub trigger: Trigger,
}

/// A message of the download-jobs queue: one mailbox of one run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DownloadJob {
    pub enrichment_id: String,
    pub run_id: String,
    pub mailbox_id: String,
    pub as_of: DateTime<Utc>,
}

/// A message of the score-jobs queue.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScoreJob {
    pub enrichment_id: String,
    pub run_id: String,
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("no enrichment has the id '{0}'")]
    NotFound(String),
    #[error("admin consent has not been granted for this enrichment")]
    NoConsent,
    #[error("the enrichment is inactive; activate it first")]
    Inactive,
    #[error("run {0} is still active")]
    AlreadyActive(String),
    #[error(transparent)]
    Port(#[from] PortError),
}

/// Stores a run whose `revision` was read with it: the write fails with `Conflict` when someone
/// else wrote the run in between. A new run has revision 0.
pub async fn save_run(table: &dyn Table, run: &Run) -> PortResult<()> {
    let mut item = Item::new(enrichment_pk(&run.enrichment_id), run.sk(), encode(run)?);
    item.version = run.revision + 1;
    let precondition = if run.revision == 0 {
        Precondition::Absent
    } else {
        Precondition::VersionIs(run.revision)
    };
    table.put(item, precondition).await
}

/// A run with its live progress counters merged in.
pub async fn get_run(
    table: &dyn Table,
    enrichment_id: &str,
    run_id: &str,
) -> PortResult<Option<Run>> {
    let pk = enrichment_pk(enrichment_id);
    let Some(pointer) = table.get(&pk, &run_pointer_sk(run_id)).await? else {
        return Ok(None);
    };
    let Some(sk) = pointer.doc.get("sk").and_then(|v| v.as_str()) else {
        return Ok(None);
    };
    let Some(item) = table.get(&pk, sk).await? else {
        return Ok(None);
    };
    let mut run: Run = decode(&item)?;
    run.revision = item.version;
    merge_progress(table, &mut run).await?;
    Ok(Some(run))
}

async fn merge_progress(table: &dyn Table, run: &mut Run) -> PortResult<()> {
    if let Some(counters) = table
        .get(&enrichment_pk(&run.enrichment_id), &progress_sk(&run.id))
        .await?
        && let Some(map) = counters.doc.as_object()
    {
        for (k, v) in map {
            run.tasks.download.progress.insert(k.clone(), v.clone());
        }
    }
    Ok(())
}

/// Runs of an enrichment, newest first.
pub async fn list_runs(
    table: &dyn Table,
    enrichment_id: &str,
    limit: usize,
    cursor: Option<String>,
) -> PortResult<(Vec<Run>, Option<String>)> {
    let page = table
        .query(
            &enrichment_pk(enrichment_id),
            "RUN#",
            Some(limit),
            cursor,
            true,
        )
        .await?;
    let mut runs = Vec::with_capacity(page.items.len());
    for item in &page.items {
        let mut run: Run = decode(item)?;
        run.revision = item.version;
        merge_progress(table, &mut run).await?;
        runs.push(run);
    }
    Ok((runs, page.next))
}

/// Records a scheduled run that could not start, with the reason.
async fn record_skipped(
    services: &Services,
    enrichment: &Enrichment,
    trigger: Trigger,
    reason: &str,
) -> PortResult<Run> {
    let now = services.now();
    let id = uuid::Uuid::new_v4().to_string();
    let mut run = Run {
        id: id.clone(),
        enrichment_id: enrichment.id.clone(),
        status: Status::Skipped,
        as_of: now,
        started_at: now,
        finished_at: Some(now),
        trigger,
        tasks: Tasks {
            download: Task::new(Status::Skipped, now),
            score: Task::new(Status::Skipped, now),
        },
        reason: Some(reason.to_string()),
        organization_domains: vec![],
        revision: 0,
    };
    run.tasks.download.warnings.push(reason.to_string());
    save_pointer(services.table.as_ref(), &run).await?;
    save_run(services.table.as_ref(), &run).await?;
    Ok(run)
}

async fn save_pointer(table: &dyn Table, run: &Run) -> PortResult<()> {
    table
        .put(
            Item::new(
                enrichment_pk(&run.enrichment_id),
                run_pointer_sk(&run.id),
                serde_json::json!({"sk": run.sk()}),
            ),
            Precondition::None,
        )
        .await
}

/// Takes the enrichment's single active-run slot; a slot left by a finished run is reclaimed.
async fn take_slot(table: &dyn Table, enrichment_id: &str, run_id: &str) -> Result<(), StartError> {
    let pk = enrichment_pk(enrichment_id);
    for _ in 0..2 {
        let slot = Item::new(
            pk.clone(),
            ACTIVE_RUN_SK,
            serde_json::json!({"run_id": run_id}),
        );
        match table.put(slot, Precondition::Absent).await {
            Ok(()) => return Ok(()),
            Err(PortError::Conflict) => {
                let Some(holder) = table.get(&pk, ACTIVE_RUN_SK).await? else {
                    continue;
                };
                let holder_id = holder
                    .doc
                    .get("run_id")
                    .and_then(|v| v.as_str())
                    .unwrap_or_default()
                    .to_string();
                match get_run(table, enrichment_id, &holder_id).await? {
                    Some(run) if !run.status.is_final() => {
                        return Err(StartError::AlreadyActive(holder_id));
                    }
                    _ => {
                        table
                            .delete(&pk, ACTIVE_RUN_SK, Precondition::Present)
                            .await
                            .or_else(|e| match e {
                                PortError::Conflict => Ok(()),
                                other => Err(other),
                            })?;
                    }
                }
            }
            Err(e) => return Err(e.into()),
        }
    }
    Err(StartError::Port(PortError::Conflict))
}

/// Frees the active-run slot if `run_id` holds it.
pub async fn release_slot(table: &dyn Table, enrichment_id: &str, run_id: &str) -> PortResult<()> {
    let pk = enrichment_pk(enrichment_id);
    if let Some(holder) = table.get(&pk, ACTIVE_RUN_SK).await?
        && holder.doc.get("run_id").and_then(|v| v.as_str()) == Some(run_id)
    {
        match table
            .delete(&pk, ACTIVE_RUN_SK, Precondition::Present)
            .await
        {
            Ok(()) | Err(PortError::Conflict) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// start-run: checks consent and activation, takes the slot, records the run and queues one
/// download job per mailbox.
pub async fn start_run(
    services: &Services,
    enrichment_id: &str,
    trigger: Trigger,
) -> Result<Run, StartError> {
    let table = services.table.as_ref();
    let enrichment = store::get_enrichment(table, enrichment_id)
        .await?
        .ok_or_else(|| StartError::NotFound(enrichment_id.to_string()))?;
    let consented = enrichment.consent.status == ConsentStatus::Granted
        || crate::consent::detect_console_consent(services, enrichment_id).await?;
    let refusal = if !consented {
        Some(StartError::NoConsent)
    } else if enrichment.status == EnrichmentStatus::Inactive {
        Some(StartError::Inactive)
    } else {
        None
    };
    if let Some(refusal) = refusal {
        if trigger == Trigger::Schedule {
            record_skipped(services, &enrichment, trigger, &refusal.to_string()).await?;
        }
        return Err(refusal);
    }

    let now = services.now();
    let id = uuid::Uuid::new_v4().to_string();
    take_slot(table, enrichment_id, &id).await?;
    let as_of = services.run_as_of();
    let mailboxes = store::list_mailboxes(table, enrichment_id).await?;
    let organization_domains = match services.directory.domains().await {
        Ok(domains) => domains,
        Err(e) => {
            release_slot(table, enrichment_id, &id).await?;
            return Err(e.into());
        }
    };
    let mut download = Task::new(Status::Processing, now);
    download
        .progress
        .insert("mailboxes_total".into(), mailboxes.len().into());
    for key in [
        "mailboxes_done",
        "mailboxes_failed",
        "messages_seen",
        "events_seen",
    ] {
        download.progress.insert(key.into(), 0.into());
    }
    let run = Run {
        id: id.clone(),
        enrichment_id: enrichment_id.to_string(),
        status: Status::Processing,
        as_of,
        started_at: now,
        finished_at: None,
        trigger,
        tasks: Tasks {
            download,
            score: Task::new(Status::Queued, now),
        },
        reason: None,
        organization_domains,
        revision: 0,
    };
    save_pointer(table, &run).await?;
    save_run(table, &run).await?;
    let jobs: Vec<String> = mailboxes
        .iter()
        .map(|m| {
            serde_json::to_string(&DownloadJob {
                enrichment_id: enrichment_id.to_string(),
                run_id: id.clone(),
                mailbox_id: m.user_id.clone(),
                as_of,
            })
            .unwrap_or_default()
        })
        .collect();
    if let Err(e) = services
        .queue
        .send_many(&services.settings.download_queue_url, jobs)
        .await
    {
        // Without its jobs the run can never finish: fail it and free the slot.
        let reason = format!("could not queue the download jobs: {e}");
        update_run(table, enrichment_id, &id, |failed| {
            failed.tasks.download.errors.push(reason.clone());
            failed.tasks.download.finish(Status::Failure, now);
            failed.tasks.score.finish(Status::Skipped, now);
            failed.derive_status(now);
        })
        .await?;
        release_slot(table, enrichment_id, &id).await?;
        return Err(e.into());
    }
    tracing::info!(enrichment_id, run_id = %id, mailboxes = mailboxes.len(), ?trigger, "run started");
    Ok(run)
}

/// Applies `change` to a stored run with a conditional write, re-reading and re-applying when
/// another job wrote it in between (so a cancel is never overwritten by a finishing job).
/// Counters that many jobs bump live in the progress item instead.
pub async fn update_run<F>(
    table: &dyn Table,
    enrichment_id: &str,
    run_id: &str,
    mut change: F,
) -> PortResult<Option<Run>>
where
    F: FnMut(&mut Run),
{
    for attempt in 0..12u64 {
        let Some(mut run) = get_run(table, enrichment_id, run_id).await? else {
            return Ok(None);
        };
        change(&mut run);
        match save_run(table, &run).await {
            Ok(()) => {
                run.revision += 1;
                return Ok(Some(run));
            }
            Err(PortError::Conflict) => {
                // Spread the retries of writers that collided.
                let pause = 5 * attempt + u64::from(uuid::Uuid::new_v4().as_bytes()[0] % 20);
                tokio::time::sleep(std::time::Duration::from_millis(pause)).await;
            }
            Err(e) => return Err(e),
        }
    }
    Err(PortError::Conflict)
}

/// Counts of one finished mailbox job.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MailboxOutcome {
    pub failed: bool,
    pub messages_seen: i64,
    pub events_seen: i64,
    pub warning: Option<String>,
}

/// Records that one mailbox of a run is done (or failed for good). Counted exactly once per
/// mailbox (a marker item); the call that completes the last mailbox ends the download task and
/// queues the score job. A redelivered job whose first attempt died before the score job was
/// queued queues it then (scoring the same run twice is harmless: it is idempotent).
pub async fn finish_mailbox(
    services: &Services,
    job: &DownloadJob,
    outcome: &MailboxOutcome,
) -> PortResult<()> {
    let table = services.table.as_ref();
    let pk = enrichment_pk(&job.enrichment_id);
    let marker = Item::new(
        pk.clone(),
        format!("RUNMB#{}#{}", job.run_id, job.mailbox_id),
        serde_json::json!({"failed": outcome.failed}),
    );
    let first_time = match table.put(marker, Precondition::Absent).await {
        Ok(()) => true,
        Err(PortError::Conflict) => false,
        Err(e) => return Err(e),
    };
    let now = services.now();
    if first_time {
        table
            .add_counters(
                &pk,
                &progress_sk(&job.run_id),
                &[
                    ("mailboxes_done", i64::from(!outcome.failed)),
                    ("mailboxes_failed", i64::from(outcome.failed)),
                    ("messages_seen", outcome.messages_seen),
                    ("events_seen", outcome.events_seen),
                ],
            )
            .await?;
        // Only a warning touches the run document: mailboxes finishing together would otherwise
        // all contend for it (their counts live in the progress item).
        if let Some(warning) = &outcome.warning {
            update_run(table, &job.enrichment_id, &job.run_id, |run| {
                run.tasks.download.warnings.push(warning.clone());
                run.tasks.download.last_processing_at = Some(now);
            })
            .await?;
        }
    }
    let Some(run) = get_run(table, &job.enrichment_id, &job.run_id).await? else {
        return Ok(());
    };
    let count = |name: &str| {
        run.tasks
            .download
            .progress
            .get(name)
            .and_then(|v| v.as_i64())
            .unwrap_or(0)
    };
    let (total, done, failed) = (
        count("mailboxes_total"),
        count("mailboxes_done"),
        count("mailboxes_failed"),
    );
    if run.status.is_final() || done + failed < total {
        return Ok(());
    }
    let queue_score = match run.tasks.download.status {
        Status::Processing => complete_download(services, job, total, done, failed).await?,
        // A redelivery after the score job could not be queued.
        Status::Successful => !first_time && run.tasks.score.status == Status::Queued,
        _ => false,
    };
    if queue_score {
        let message = ScoreJob {
            enrichment_id: job.enrichment_id.clone(),
            run_id: job.run_id.clone(),
        };
        services
            .queue
            .send(
                &services.settings.score_queue_url,
                serde_json::to_string(&message).unwrap_or_default(),
                None,
            )
            .await?;
    }
    Ok(())
}

/// Ends the download task once every mailbox is accounted for; answers whether this call made
/// the transition and the score job should be queued.
async fn complete_download(
    services: &Services,
    job: &DownloadJob,
    total: i64,
    done: i64,
    failed: i64,
) -> PortResult<bool> {
    let table = services.table.as_ref();
    let now = services.now();
    let all_failed = done == 0;
    let mut transitioned = false;
    update_run(table, &job.enrichment_id, &job.run_id, |run| {
        transitioned = run.tasks.download.status == Status::Processing;
        if !transitioned {
            return;
        }
        if failed > 0 {
            run.tasks.download.warnings.push(format!(
                "{failed} of {total} mailboxes failed and were left out"
            ));
        }
        if all_failed {
            run.tasks
                .download
                .errors
                .push("every mailbox failed; nothing to score".into());
            run.tasks.download.finish(Status::Failure, now);
            run.tasks.score.finish(Status::Skipped, now);
        } else {
            run.tasks.download.finish(Status::Successful, now);
        }
        run.derive_status(now);
    })
    .await?;
    if transitioned && all_failed {
        release_slot(table, &job.enrichment_id, &job.run_id).await?;
        return Ok(false);
    }
    Ok(transitioned)
}

/// Adds to a run's download counters (items seen), for progress while a mailbox is still running.
pub async fn add_progress(
    table: &dyn Table,
    job: &DownloadJob,
    messages: i64,
    events: i64,
) -> PortResult<()> {
    if messages == 0 && events == 0 {
        return Ok(());
    }
    table
        .add_counters(
            &enrichment_pk(&job.enrichment_id),
            &progress_sk(&job.run_id),
            &[("messages_seen", messages), ("events_seen", events)],
        )
        .await
        .map(|_| ())
}

/// `POST .../runs/{runId}/cancel`.
pub async fn cancel_run(
    services: &Services,
    enrichment_id: &str,
    run_id: &str,
) -> PortResult<Option<Run>> {
    let now = services.now();
    let table = services.table.as_ref();
    let run = update_run(table, enrichment_id, run_id, |run| {
        if run.status.is_final() {
            return;
        }
        run.tasks.download.finish(Status::Canceled, now);
        run.tasks.score.finish(Status::Canceled, now);
        run.derive_status(now);
    })
    .await?;
    if run.as_ref().is_some_and(|r| r.status == Status::Canceled) {
        release_slot(table, enrichment_id, run_id).await?;
    }
    Ok(run)
}

/// The schedule tick: starts the runs of active enrichments that are due, records skipped runs of
/// those that cannot start, and looks for consent given in the admin console.
pub async fn schedule_tick(
    services: &Services,
) -> PortResult<Vec<(String, Result<String, String>)>> {
    let table = services.table.as_ref();
    let now = services.now();
    let mut started = Vec::new();
    for id in store::all_enrichment_ids(table).await? {
        let Some(enrichment) = store::get_enrichment(table, &id).await? else {
            continue;
        };
        if enrichment.status == EnrichmentStatus::PendingConsent {
            if let Err(e) = crate::consent::detect_console_consent(services, &id).await {
                tracing::warn!(enrichment_id = %id, error = %e, "console consent check failed");
            }
            continue;
        }
        let checked = table.get(&enrichment_pk(&id), SCHEDULE_SK).await?;
        let after = checked
            .as_ref()
            .and_then(|i| i.doc.get("checked_until"))
            .and_then(|v| serde_json::from_value::<DateTime<Utc>>(v.clone()).ok())
            .unwrap_or(enrichment.created_at);
        let due = enrichment.schedule.latest_due(after, now);
        table
            .put(
                Item::new(
                    enrichment_pk(&id),
                    SCHEDULE_SK,
                    serde_json::json!({"checked_until": now}),
                ),
                Precondition::None,
            )
            .await?;
        if due.is_none() {
            continue;
        }
        let outcome = match start_run(services, &id, Trigger::Schedule).await {
            Ok(run) => Ok(run.id),
            Err(StartError::Port(e)) => return Err(e),
            Err(e) => Err(e.to_string()),
        };
        started.push((id, outcome));
    }
    Ok(started)
}
