//! Saving, editing, activating and deleting enrichments (the save-config function).

use crate::config::{
    Enrichment, EnrichmentRequest, EnrichmentStatus, MAX_MAILBOXES, MIN_MAILBOXES, validate_request,
};
use crate::consent::ConsentRequestMessage;
use crate::contacts::{ContactsError, header_fields};
use crate::mailbox::{Resolution, resolve};
use crate::ports::PortError;
use crate::problem::{FieldError, Problem};
use crate::services::Services;
use crate::store;

/// Bytes read from the customer data set to check that it parses and has the mapped fields.
const HEADER_SAMPLE_BYTES: usize = 64 * 1024;

impl From<PortError> for Problem {
    fn from(e: PortError) -> Self {
        match e {
            PortError::Conflict => {
                Problem::conflict("the resource was changed concurrently; retry")
            }
            PortError::NotFound(what) => Problem::not_found(what),
            PortError::Throttled(who) => {
                Problem::unavailable(format!("{who} is throttling requests; retry shortly"))
            }
            PortError::Io(detail) => Problem::unavailable(format!("a dependency failed: {detail}")),
        }
    }
}

pub fn not_found(id: &str) -> Problem {
    Problem::not_found(format!("no enrichment has the id '{id}'"))
}

/// Validates a request completely (syntax, Graph, the data set) without storing anything.
async fn validate_and_resolve(
    services: &Services,
    request: &EnrichmentRequest,
) -> Result<Resolution, Problem> {
    let mut errors = validate_request(request);
    let mailbox_fields_ok = !errors.iter().any(|e| e.field.starts_with("mailboxes"));
    let mut resolution = Resolution::default();
    if mailbox_fields_ok {
        resolution = resolve(services.directory.as_ref(), &request.mailboxes).await?;
        let unknown = !resolution.unknown.is_empty();
        errors.append(&mut resolution.unknown);
        let count = resolution.mailboxes.len();
        if !unknown && !(MIN_MAILBOXES..=MAX_MAILBOXES).contains(&count) {
            errors.push(FieldError::new(
                "mailboxes",
                format!(
                    "{count} mailbox addresses were resolved from the users and groups; between {MIN_MAILBOXES} and {MAX_MAILBOXES} are required"
                ),
            ));
        }
    }
    if !errors.iter().any(|e| e.field.starts_with("customer_data")) {
        errors.extend(check_customer_data(services, request).await);
    }
    if errors.is_empty() {
        Ok(resolution)
    } else {
        Err(Problem::validation(errors))
    }
}

async fn check_customer_data(services: &Services, request: &EnrichmentRequest) -> Vec<FieldError> {
    let data = &request.customer_data;
    let Some((bucket, key)) = data.location() else {
        return vec![];
    };
    let bytes = match services
        .blobs
        .get_head(&bucket, &key, Some(HEADER_SAMPLE_BYTES))
        .await
    {
        Ok(Some(bytes)) => bytes,
        Ok(None) => {
            return vec![FieldError::new(
                "customer_data.uri",
                format!("the object {} does not exist", data.uri),
            )];
        }
        Err(e) => {
            return vec![FieldError::new(
                "customer_data.uri",
                format!("the object {} cannot be read: {e}", data.uri),
            )];
        }
    };
    let fields = match header_fields(&bytes, data.format) {
        Ok(fields) => fields,
        Err(ContactsError::MissingField(f)) => {
            return vec![FieldError::new(
                "customer_data",
                format!("missing field {f}"),
            )];
        }
        Err(e) => {
            return vec![FieldError::new(
                "customer_data.format",
                format!("the object is not readable as {:?}: {e}", data.format),
            )];
        }
    };
    let mut errors = Vec::new();
    for (field, name) in [
        ("customer_data.account_id_field", &data.account_id_field),
        ("customer_data.email_field", &data.email_field),
    ] {
        if !fields.iter().any(|f| f == name) {
            errors.push(FieldError::new(
                field,
                format!(
                    "the data set has no field '{name}' (its fields: {})",
                    fields.join(", ")
                ),
            ));
        }
    }
    errors
}

/// `POST /enrichments`.
pub async fn create(
    services: &Services,
    request: EnrichmentRequest,
) -> Result<Enrichment, Problem> {
    let resolution = validate_and_resolve(services, &request).await?;
    let id = uuid::Uuid::new_v4().to_string();
    let now = services.now();
    let mut enrichment =
        Enrichment::from_request(id, request, resolution.mailboxes.len(), now, None);
    enrichment.consent.request_id = Some(uuid::Uuid::new_v4().to_string());
    // Mailboxes first: the config item is the commit point that makes the enrichment exist.
    store::replace_mailboxes(
        services.table.as_ref(),
        &enrichment.id,
        &resolution.mailboxes,
    )
    .await?;
    store::save_enrichment(services.table.as_ref(), &enrichment).await?;
    tracing::info!(enrichment_id = %enrichment.id, mailboxes = enrichment.mailbox_count, "enrichment created");
    queue_consent_request(services, &enrichment).await;
    Ok(enrichment)
}

/// `PUT /enrichments/{id}` with `If-Match: <version>`.
pub async fn update(
    services: &Services,
    id: &str,
    if_match: Option<&str>,
    request: EnrichmentRequest,
) -> Result<Enrichment, Problem> {
    let expected: u64 = match if_match {
        None => {
            return Err(Problem::precondition_required(
                "send If-Match with the version you last read",
            ));
        }
        Some(v) => v
            .trim()
            .trim_matches('"')
            .trim_start_matches("W/")
            .trim_matches('"')
            .parse()
            .map_err(|_| {
                Problem::bad_request("If-Match must be the enrichment's version number")
            })?,
    };
    let resolution = {
        let existing = store::get_enrichment(services.table.as_ref(), id)
            .await?
            .ok_or_else(|| not_found(id))?;
        if existing.version != expected {
            return Err(stale(existing.version, expected));
        }
        validate_and_resolve(services, &request).await?
    };
    // Consent and runs may write the item meanwhile without changing its version: re-read and
    // re-apply on a lost race, and answer 412 only when the version itself moved.
    for _ in 0..5 {
        let existing = store::get_enrichment(services.table.as_ref(), id)
            .await?
            .ok_or_else(|| not_found(id))?;
        if existing.version != expected {
            return Err(stale(existing.version, expected));
        }
        let enrichment = Enrichment::from_request(
            id.to_string(),
            request.clone(),
            resolution.mailboxes.len(),
            services.now(),
            Some(&existing),
        );
        match store::save_enrichment(services.table.as_ref(), &enrichment).await {
            Err(PortError::Conflict) => continue,
            other => other?,
        }
        store::replace_mailboxes(services.table.as_ref(), id, &resolution.mailboxes).await?;
        return Ok(enrichment);
    }
    Err(Problem::conflict(
        "the enrichment is being changed concurrently; retry",
    ))
}

fn stale(current: u64, expected: u64) -> Problem {
    Problem::precondition_failed(format!(
        "version {expected} is stale: the enrichment is at version {current}; read it again"
    ))
}

/// `DELETE /enrichments/{id}`: config, mailboxes, consent, runs, cursors, accounts, activity, tables.
pub async fn delete(services: &Services, id: &str) -> Result<(), Problem> {
    if store::get_enrichment(services.table.as_ref(), id)
        .await?
        .is_none()
    {
        return Err(not_found(id));
    }
    let bucket = &services.settings.bucket;
    // Objects first: if this fails the enrichment still exists and the delete can be repeated.
    for prefix in [format!("activity/{id}/"), format!("tables/{id}/")] {
        services.blobs.delete_prefix(bucket, &prefix).await?;
    }
    store::delete_enrichment_items(services.table.as_ref(), id).await?;
    tracing::info!(enrichment_id = %id, "enrichment deleted");
    Ok(())
}

/// `POST /enrichments/{id}/activate` and `/deactivate`.
pub async fn set_active(
    services: &Services,
    id: &str,
    active: bool,
) -> Result<Enrichment, Problem> {
    let mut refusal = None;
    let now = services.now();
    let updated = store::update_enrichment(services.table.as_ref(), id, |e| {
        refusal = None;
        let target = if active {
            EnrichmentStatus::Active
        } else {
            EnrichmentStatus::Inactive
        };
        if e.status == target {
            return false;
        }
        match (e.status, active) {
            (EnrichmentStatus::Active, false) | (EnrichmentStatus::Inactive, true) => {
                e.status = target;
                e.updated_at = now;
                true
            }
            (status, _) => {
                refusal = Some(Problem::conflict(format!(
                    "an enrichment in status {} cannot be {}; admin consent must be granted first",
                    serde_json::to_string(&status)
                        .unwrap_or_default()
                        .trim_matches('"'),
                    if active { "activated" } else { "deactivated" }
                )));
                false
            }
        }
    })
    .await?
    .ok_or_else(|| not_found(id))?;
    match refusal {
        Some(problem) => Err(problem),
        None => Ok(updated),
    }
}

/// `POST /enrichments/{id}/consent/request`: a new request; the links of earlier ones stop working.
pub async fn request_consent(services: &Services, id: &str) -> Result<Enrichment, Problem> {
    let request_id = uuid::Uuid::new_v4().to_string();
    let mut refusal = None;
    let enrichment = store::update_enrichment(services.table.as_ref(), id, |e| {
        refusal = None;
        if e.consent.status == crate::config::ConsentStatus::Granted {
            refusal = Some(Problem::conflict("admin consent is already granted"));
            return false;
        }
        e.consent.request_id = Some(request_id.clone());
        true
    })
    .await?
    .ok_or_else(|| not_found(id))?;
    if let Some(problem) = refusal {
        return Err(problem);
    }
    queue_consent_request(services, &enrichment).await;
    Ok(enrichment)
}

async fn queue_consent_request(services: &Services, enrichment: &Enrichment) {
    let Some(request_id) = enrichment.consent.request_id.clone() else {
        return;
    };
    let message = ConsentRequestMessage {
        enrichment_id: enrichment.id.clone(),
        request_id,
    };
    let body = serde_json::to_string(&message).unwrap_or_default();
    if let Err(e) = services
        .queue
        .send(&services.settings.consent_queue_url, body, None)
        .await
    {
        // The enrichment is saved; POST .../consent/request sends the request again.
        tracing::error!(enrichment_id = %enrichment.id, error = %e, "could not queue the consent request");
    }
}
