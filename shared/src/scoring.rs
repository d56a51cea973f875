//! The score job (DESIGN §3 score, §7, §8): reads the contact data set and the enrichment's
//! activity one partition at a time, scores, and writes the output tables, the customer-card
//! items and the results summary. Deterministic: scoring the same run again gives the same output.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::activity::PARTITIONS;
use crate::config::Enrichment;
use crate::contacts::{ContactsError, parse_contacts};
use crate::jobs::Outcome;
use crate::ports::{Item, PortError, PortResult, Precondition};
use crate::privacy::Pseudonymizer;
use crate::run::{self, Run, ScoreJob, Status};
use crate::score::{AccountCard, ContactIndex, Level, OfficeRow, RunSummary, ScoreOutcome, Scorer};
use crate::services::Services;
use crate::store::{self, encode, enrichment_pk};
use crate::tables;

pub const RESULTS_SK: &str = "RESULTS";
pub const ACCOUNT_PREFIX: &str = "ACCOUNT#";
const MAX_RECEIVE_COUNT: u32 = 5;

/// What `GET /enrichments/{id}/accounts/{accountId}` and `/accounts` read: one item per account.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AccountItem {
    pub run_id: String,
    pub card: AccountCard,
    pub rows: Vec<OfficeRow>,
}

/// Accounts per score band and totals of one level (`GET .../measures`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Measures {
    pub level: Option<Level>,
    pub accounts: u64,
    pub score_bands: ScoreBands,
    pub average_score: Option<f64>,
    pub totals: serde_json::Map<String, serde_json::Value>,
    /// Accounts whose last email and last meeting are both more than 60 days before T.
    pub accounts_silent_60_days: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScoreBands {
    pub low: u64,
    pub medium: u64,
    pub high: u64,
}

/// The latest results of an enrichment (`GET .../results`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Results {
    pub run_id: String,
    pub as_of: DateTime<Utc>,
    pub enriched_customers: u64,
    pub emails_processed: u64,
    pub meetings_processed: u64,
    pub days_aggregated: u32,
    pub enriched_over_time: Vec<EnrichedPoint>,
    pub preview: Vec<serde_json::Map<String, serde_json::Value>>,
    pub measures: Vec<Measures>,
    pub tables: TableLocations,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EnrichedPoint {
    pub date: chrono::NaiveDate,
    pub count: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TableLocations {
    pub office: String,
    pub user_entity: String,
    pub history: String,
    pub latest_prefix: String,
}

/// Bands and totals of the rows of one level.
pub fn measures(rows: &[&OfficeRow], level: Level) -> Measures {
    let mut m = Measures {
        level: Some(level),
        ..Default::default()
    };
    let mut score_sum = 0u64;
    let mut totals = [0u64; 8];
    for row in rows {
        m.accounts += 1;
        score_sum += u64::from(row.engagement_score);
        match row.engagement_score {
            0..=30 => m.score_bands.low += 1,
            31..=70 => m.score_bands.medium += 1,
            _ => m.score_bands.high += 1,
        }
        let counts = [
            row.emails_to_account,
            row.emails_from_account,
            row.meetings_to_account,
            row.meetings_from_account,
            row.contacts_involved_emails,
            row.contacts_involved_meetings,
            row.account_contacts_involved_emails,
            row.account_contacts_involved_meetings,
        ];
        for (t, c) in totals.iter_mut().zip(counts) {
            *t += c;
        }
        let silent = |days: Option<i64>| days.is_none_or(|d| d > 60);
        if silent(row.days_since_last_email) && silent(row.days_since_last_meeting) {
            m.accounts_silent_60_days += 1;
        }
    }
    if m.accounts > 0 {
        m.average_score = Some((score_sum as f64 / m.accounts as f64 * 10.0).round() / 10.0);
    }
    for (name, total) in tables::OFFICE_COLUMNS[4..12].iter().zip(totals) {
        m.totals.insert((*name).to_string(), total.into());
    }
    m
}

#[derive(Debug, thiserror::Error)]
enum ScoreError {
    /// A problem with the inputs that another attempt cannot fix.
    #[error("{0}")]
    Input(String),
    #[error(transparent)]
    Port(#[from] PortError),
}

pub async fn run_score_job(services: &Services, job: &ScoreJob, receive_count: u32) -> Outcome {
    let table = services.table.as_ref();
    let run = match run::get_run(table, &job.enrichment_id, &job.run_id).await {
        Ok(Some(run)) => run,
        Ok(None) => return Outcome::Done,
        Err(e) => return Outcome::Retry(e.to_string()),
    };
    if run.status.is_final() {
        return Outcome::Done;
    }
    let now = services.now();
    if let Err(e) = run::update_run(table, &job.enrichment_id, &job.run_id, |r| {
        r.tasks.score.start(now)
    })
    .await
    {
        return Outcome::Retry(e.to_string());
    }
    match score_run(services, &run).await {
        Ok(()) => Outcome::Done,
        Err(ScoreError::Input(reason)) => {
            let _ = fail(services, &run, reason).await;
            Outcome::Done
        }
        Err(ScoreError::Port(e)) if receive_count >= MAX_RECEIVE_COUNT => {
            let _ = fail(services, &run, format!("scoring kept failing: {e}")).await;
            Outcome::Retry(e.to_string())
        }
        Err(ScoreError::Port(e)) => Outcome::Retry(e.to_string()),
    }
}

async fn fail(services: &Services, run: &Run, reason: String) -> PortResult<()> {
    let now = services.now();
    let table = services.table.as_ref();
    run::update_run(table, &run.enrichment_id, &run.id, |r| {
        r.tasks.score.errors.push(reason.clone());
        r.tasks.score.finish(Status::Failure, now);
        r.derive_status(now);
    })
    .await?;
    run::release_slot(table, &run.enrichment_id, &run.id).await
}

fn input_error(e: ContactsError) -> ScoreError {
    ScoreError::Input(format!("the customer data set cannot be used: {e}"))
}

async fn score_run(services: &Services, run: &Run) -> Result<(), ScoreError> {
    let table = services.table.as_ref();
    let Some(enrichment) = store::get_enrichment(table, &run.enrichment_id).await? else {
        return Err(ScoreError::Input("the enrichment was deleted".into()));
    };
    let data = &enrichment.customer_data;
    let (bucket, key) = data
        .location()
        .ok_or_else(|| ScoreError::Input(format!("'{}' is not an S3 URI", data.uri)))?;
    let bytes = services.blobs.get(&bucket, &key).await?.ok_or_else(|| {
        ScoreError::Input(format!(
            "the customer data set {} no longer exists",
            data.uri
        ))
    })?;
    let contacts = parse_contacts(
        &bytes,
        data.format,
        &data.account_id_field,
        &data.email_field,
    )
    .map_err(input_error)?;
    drop(bytes);
    let warnings = contacts.warnings.clone();
    let pseudonymizer = Pseudonymizer::new(&services.settings.pseudonymization_key);
    let index = ContactIndex::from_contacts(&contacts, &pseudonymizer);
    drop(contacts);

    let mut scorer = Scorer::new(index, run.as_of, enrichment.score.params());
    let activity_bucket = &services.settings.bucket;
    let prefix = format!("activity/{}/", run.enrichment_id);
    for key in services
        .blobs
        .list(activity_bucket, &format!("{prefix}removed/"))
        .await?
    {
        if let Some(bytes) = services.blobs.get(activity_bucket, &key).await? {
            scorer
                .add_removed_bytes(&bytes)
                .map_err(|e| ScoreError::Input(format!("activity object {key} is corrupt: {e}")))?;
        }
    }
    // One partition in memory at a time (DESIGN §12).
    for partition in 0..PARTITIONS {
        let mut bytes = Vec::new();
        for key in services
            .blobs
            .list(activity_bucket, &format!("{prefix}p{partition:02}/"))
            .await?
        {
            if let Some(object) = services.blobs.get(activity_bucket, &key).await? {
                bytes.extend_from_slice(&object);
            }
        }
        if bytes.is_empty() {
            continue;
        }
        scorer.add_partition_bytes(&bytes).map_err(|e| {
            ScoreError::Input(format!("activity partition {partition} is corrupt: {e}"))
        })?;
    }
    let outcome = scorer.finish();
    write_outputs(services, &enrichment, run, &outcome).await?;

    let now = services.now();
    let summary = outcome.summary;
    run::update_run(table, &run.enrichment_id, &run.id, |r| {
        r.tasks.score.warnings.extend(warnings.iter().cloned());
        r.tasks
            .score
            .progress
            .insert("accounts_scored".into(), summary.enriched_customers.into());
        r.tasks
            .score
            .progress
            .insert("emails_processed".into(), summary.emails_processed.into());
        r.tasks.score.progress.insert(
            "meetings_processed".into(),
            summary.meetings_processed.into(),
        );
        r.tasks.score.finish(Status::Successful, now);
        r.derive_status(now);
    })
    .await?;
    let run_id = run.id.clone();
    store::update_enrichment(table, &run.enrichment_id, |e| {
        e.latest_run_id = Some(run_id.clone());
        e.last_refreshed = Some(now);
        e.enriched_customers = Some(summary.enriched_customers);
        true
    })
    .await?;
    run::release_slot(table, &run.enrichment_id, &run.id).await?;
    tracing::info!(enrichment_id = %run.enrichment_id, run_id = %run.id, accounts = summary.enriched_customers, "run scored");
    Ok(())
}

async fn write_outputs(
    services: &Services,
    enrichment: &Enrichment,
    run: &Run,
    outcome: &ScoreOutcome,
) -> Result<(), ScoreError> {
    let table = services.table.as_ref();
    let bucket = &services.settings.bucket;
    let csv_error = |e: csv::Error| ScoreError::Input(format!("writing a table failed: {e}"));
    let mailboxes = store::list_mailboxes(table, &enrichment.id).await?;
    let files = [
        (
            "Office.csv",
            tables::office_csv(&outcome.office).map_err(csv_error)?,
        ),
        (
            "Office_UserEntity.csv",
            tables::user_entity_csv(&mailboxes).map_err(csv_error)?,
        ),
        (
            "Office_History.csv",
            tables::history_csv(&outcome.history).map_err(csv_error)?,
        ),
    ];
    let run_prefix = format!("tables/{}/{}/", enrichment.id, run.id);
    for (name, body) in &files {
        services
            .blobs
            .put(
                bucket,
                &format!("{run_prefix}{name}"),
                body.clone(),
                "text/csv",
            )
            .await?;
    }

    // Customer-card items: this run's accounts, then the removal of accounts it no longer has.
    let pk = enrichment_pk(&enrichment.id);
    let mut rows_by_account: std::collections::BTreeMap<&str, Vec<OfficeRow>> = Default::default();
    for row in &outcome.office {
        rows_by_account
            .entry(row.account_id.as_str())
            .or_default()
            .push(row.clone());
    }
    let mut items = Vec::with_capacity(outcome.cards.len());
    for card in &outcome.cards {
        let item = AccountItem {
            run_id: run.id.clone(),
            card: card.clone(),
            rows: rows_by_account
                .remove(card.account_id.as_str())
                .unwrap_or_default(),
        };
        items.push(Item::new(
            pk.clone(),
            format!("{ACCOUNT_PREFIX}{}", card.account_id),
            encode(&item)?,
        ));
    }
    let current: std::collections::HashSet<String> = items.iter().map(|i| i.sk.clone()).collect();
    table.put_many(items).await?;
    let stale: Vec<(String, String)> = table
        .query(&pk, ACCOUNT_PREFIX, None, None, false)
        .await?
        .items
        .into_iter()
        .filter(|i| !current.contains(&i.sk))
        .map(|i| (i.pk, i.sk))
        .collect();
    table.delete_many(stale).await?;

    // The results summary, with the enriched-customers series of earlier runs.
    let previous: Option<Results> = match table.get(&pk, RESULTS_SK).await? {
        Some(item) => store::decode(&item).ok(),
        None => None,
    };
    let summary: RunSummary = outcome.summary;
    let date = run.as_of.date_naive();
    let mut series: Vec<EnrichedPoint> = previous
        .map(|p| p.enriched_over_time)
        .unwrap_or_default()
        .into_iter()
        .filter(|p| p.date != date)
        .collect();
    series.push(EnrichedPoint {
        date,
        count: summary.enriched_customers,
    });
    series.sort_by_key(|p| p.date);
    let by_level = |level: Level| -> Vec<&OfficeRow> {
        outcome.office.iter().filter(|r| r.level == level).collect()
    };
    let results = Results {
        run_id: run.id.clone(),
        as_of: run.as_of,
        enriched_customers: summary.enriched_customers,
        emails_processed: summary.emails_processed,
        meetings_processed: summary.meetings_processed,
        days_aggregated: summary.days_aggregated,
        enriched_over_time: series,
        preview: outcome
            .office
            .iter()
            .take(10)
            .map(tables::office_row_json)
            .collect(),
        measures: [Level::Week, Level::Month, Level::Year]
            .into_iter()
            .map(|l| measures(&by_level(l), l))
            .collect(),
        tables: TableLocations {
            office: format!("s3://{bucket}/{run_prefix}Office.csv"),
            user_entity: format!("s3://{bucket}/{run_prefix}Office_UserEntity.csv"),
            history: format!("s3://{bucket}/{run_prefix}Office_History.csv"),
            latest_prefix: format!("s3://{bucket}/tables/{}/latest/", enrichment.id),
        },
    };
    // Latest only once everything of the run is written.
    for (name, body) in files {
        services
            .blobs
            .put(
                bucket,
                &format!("tables/{}/latest/{name}", enrichment.id),
                body,
                "text/csv",
            )
            .await?;
    }
    table
        .put(
            Item::new(pk, RESULTS_SK, encode(&results)?),
            Precondition::None,
        )
        .await?;
    Ok(())
}
