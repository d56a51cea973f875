//! Enrichment configuration: the model of DESIGN §9 and its pure validation.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::contacts::DataFormat;
use crate::problem::FieldError;
use crate::schedule::Schedule;

pub const MIN_MAILBOXES: usize = 2;
pub const MAX_MAILBOXES: usize = 2_500;
pub const MAX_NAME_CHARS: usize = 100;
pub const MAX_EXCLUSIONS: usize = 1_000;
pub const MAX_EXTRA_RECIPIENTS: usize = 20;

/// Which organization mailboxes to learn from, as the administrator named them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MailboxSelection {
    #[serde(default)]
    pub users: Vec<String>,
    #[serde(default)]
    pub groups: Vec<String>,
}

/// Where the customer contact data set is and how its fields map.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CustomerData {
    pub uri: String,
    pub format: DataFormat,
    pub account_id_field: String,
    pub email_field: String,
}

impl CustomerData {
    /// Splits `s3://bucket/key` into its parts.
    pub fn location(&self) -> Option<(String, String)> {
        parse_s3_uri(&self.uri)
    }
}

pub fn parse_s3_uri(uri: &str) -> Option<(String, String)> {
    let rest = uri.strip_prefix("s3://")?;
    let (bucket, key) = rest.split_once('/')?;
    let bucket_ok = (3..=63).contains(&bucket.len())
        && bucket
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.');
    (bucket_ok && !key.is_empty()).then(|| (bucket.to_string(), key.to_string()))
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScoreWeights {
    pub email: f64,
    pub meeting: f64,
    pub breadth: f64,
}

/// Per-enrichment score settings (DESIGN §7).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScoreSettings {
    #[serde(default = "default_half_life")]
    pub half_life_days: f64,
    #[serde(default)]
    pub weights: ScoreWeights,
}

fn default_half_life() -> f64 {
    90.0
}

impl Default for ScoreWeights {
    fn default() -> Self {
        Self {
            email: 0.4,
            meeting: 0.4,
            breadth: 0.2,
        }
    }
}

impl Default for ScoreSettings {
    fn default() -> Self {
        Self {
            half_life_days: default_half_life(),
            weights: ScoreWeights::default(),
        }
    }
}

impl ScoreSettings {
    pub fn params(&self) -> crate::score::ScoreParams {
        crate::score::ScoreParams {
            half_life_days: self.half_life_days,
            weight_email: self.weights.email,
            weight_meeting: self.weights.meeting,
            weight_breadth: self.weights.breadth,
        }
    }
}

/// The body of `POST /enrichments` and `PUT /enrichments/{id}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnrichmentRequest {
    pub name: String,
    pub mailboxes: MailboxSelection,
    pub consent_agreed: bool,
    pub customer_data: CustomerData,
    #[serde(default)]
    pub schedule: Option<Schedule>,
    #[serde(default)]
    pub exclusions: Option<Vec<String>>,
    #[serde(default)]
    pub score: Option<ScoreSettings>,
    /// Addresses that receive the consent email besides the tenant's Global Administrators.
    #[serde(default)]
    pub consent_recipients: Option<Vec<String>>,
}

/// Checks everything that can be checked without I/O; the caller adds what Graph and S3 say.
pub fn validate_request(request: &EnrichmentRequest) -> Vec<FieldError> {
    let mut errors = Vec::new();
    let name = request.name.trim();
    if name.is_empty() {
        errors.push(FieldError::new("name", "must not be empty"));
    } else if name.chars().count() > MAX_NAME_CHARS {
        errors.push(FieldError::new(
            "name",
            format!("must be at most {MAX_NAME_CHARS} characters"),
        ));
    }
    if !request.consent_agreed {
        errors.push(FieldError::new(
            "consent_agreed",
            "the consent statement must be agreed to (true) before mailboxes can be read",
        ));
    }
    let selection = &request.mailboxes;
    if selection.users.is_empty() && selection.groups.is_empty() {
        errors.push(FieldError::new(
            "mailboxes",
            format!("name at least one user or group; {MIN_MAILBOXES} to {MAX_MAILBOXES} addresses are required after groups are resolved"),
        ));
    }
    if selection.users.len() > MAX_MAILBOXES {
        errors.push(FieldError::new(
            "mailboxes.users",
            format!(
                "{} users named; at most {MAX_MAILBOXES} are allowed",
                selection.users.len()
            ),
        ));
    } else {
        for (i, user) in selection.users.iter().enumerate() {
            if !is_email_address(user.trim()) {
                errors.push(FieldError::new(
                    format!("mailboxes.users[{i}]"),
                    format!("'{user}' is not an email address"),
                ));
            }
        }
    }
    if selection.groups.len() > MAX_MAILBOXES {
        errors.push(FieldError::new(
            "mailboxes.groups",
            format!("at most {MAX_MAILBOXES} groups are allowed"),
        ));
    } else {
        for (i, group) in selection.groups.iter().enumerate() {
            let g = group.trim();
            if !(is_email_address(g) || is_guid(g)) {
                errors.push(FieldError::new(
                    format!("mailboxes.groups[{i}]"),
                    format!("'{group}' is neither a group email address nor a group object id"),
                ));
            }
        }
    }
    let data = &request.customer_data;
    if data.location().is_none() {
        errors.push(FieldError::new(
            "customer_data.uri",
            "must be an S3 URI of the form s3://bucket/key",
        ));
    }
    for (field, value) in [
        ("customer_data.account_id_field", &data.account_id_field),
        ("customer_data.email_field", &data.email_field),
    ] {
        if value.trim().is_empty() {
            errors.push(FieldError::new(field, "must name a field of the data set"));
        }
    }
    if let Some(schedule) = &request.schedule {
        errors.extend(schedule.validate("schedule"));
    }
    if let Some(exclusions) = &request.exclusions {
        if exclusions.len() > MAX_EXCLUSIONS {
            errors.push(FieldError::new(
                "exclusions",
                format!(
                    "{} exclusions given; at most {MAX_EXCLUSIONS} are allowed",
                    exclusions.len()
                ),
            ));
        } else {
            for (i, exclusion) in exclusions.iter().enumerate() {
                let e = exclusion.trim();
                let ok = match e.strip_prefix('@') {
                    Some(domain) => is_domain(domain),
                    None => is_email_address(e),
                };
                if !ok {
                    errors.push(FieldError::new(
                        format!("exclusions[{i}]"),
                        format!("'{exclusion}' must be an email address or '@domain'"),
                    ));
                }
            }
        }
    }
    if let Some(score) = &request.score {
        errors.extend(validate_score(score));
    }
    if let Some(recipients) = &request.consent_recipients {
        if recipients.len() > MAX_EXTRA_RECIPIENTS {
            errors.push(FieldError::new(
                "consent_recipients",
                format!("at most {MAX_EXTRA_RECIPIENTS} extra recipients are allowed"),
            ));
        }
        for (i, r) in recipients.iter().enumerate() {
            if !is_email_address(r.trim()) {
                errors.push(FieldError::new(
                    format!("consent_recipients[{i}]"),
                    format!("'{r}' is not an email address"),
                ));
            }
        }
    }
    errors
}

fn validate_score(score: &ScoreSettings) -> Vec<FieldError> {
    let mut errors = Vec::new();
    if !(score.half_life_days.is_finite() && (1.0..=3650.0).contains(&score.half_life_days)) {
        errors.push(FieldError::new(
            "score.half_life_days",
            "must be between 1 and 3650 days",
        ));
    }
    let w = score.weights;
    for (field, value) in [
        ("score.weights.email", w.email),
        ("score.weights.meeting", w.meeting),
        ("score.weights.breadth", w.breadth),
    ] {
        if !(value.is_finite() && (0.0..=1.0).contains(&value)) {
            errors.push(FieldError::new(field, "must be between 0 and 1"));
        }
    }
    let sum = w.email + w.meeting + w.breadth;
    if sum.is_nan() || (sum - 1.0).abs() > 1e-6 {
        errors.push(FieldError::new(
            "score.weights",
            format!("must sum to 1 (they sum to {sum})"),
        ));
    }
    errors
}

/// A deliberately simple syntactic check: one '@', a non-empty local part, a dotted domain, no spaces.
pub fn is_email_address(s: &str) -> bool {
    match s.split_once('@') {
        Some((local, domain)) => {
            !local.is_empty()
                && local.len() <= 64
                && !domain.contains('@')
                && is_domain(domain)
                && !s.chars().any(|c| c.is_whitespace() || c.is_control())
        }
        None => false,
    }
}

fn is_domain(s: &str) -> bool {
    s.len() <= 253
        && s.contains('.')
        && s.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label.chars().all(|c| c.is_alphanumeric() || c == '-')
        })
}

pub fn is_guid(s: &str) -> bool {
    uuid::Uuid::parse_str(s).is_ok() && s.len() == 36
}

/// Enrichment lifecycle (DESIGN §5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EnrichmentStatus {
    PendingConsent,
    Active,
    Inactive,
    ConsentDenied,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum ConsentStatus {
    #[default]
    NotRequested,
    Requested,
    Granted,
    Denied,
}

/// What the API shows about admin consent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct ConsentInfo {
    pub status: ConsentStatus,
    pub requested_at: Option<DateTime<Utc>>,
    #[serde(default)]
    pub recipients: Vec<String>,
    pub decided_at: Option<DateTime<Utc>>,
    pub error: Option<String>,
    /// Id of the latest consent request; a link of an older request is no longer valid.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    /// How consent was detected: `redirect` or `admin_console`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub granted_via: Option<String>,
}

/// A stored enrichment: the API resource of DESIGN §9.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Enrichment {
    pub id: String,
    pub name: String,
    pub status: EnrichmentStatus,
    pub mailbox_count: usize,
    /// The configuration's version: edits (PUT) bump it and `If-Match` names it.
    pub version: u64,
    /// Revision of the stored item: every write bumps it (consent, runs, edits); conditional
    /// writes use it so concurrent writers never lose each other's changes.
    #[serde(skip)]
    pub revision: u64,
    pub consent: ConsentInfo,
    pub mailboxes: MailboxSelection,
    pub customer_data: CustomerData,
    pub schedule: Schedule,
    pub exclusions: Vec<String>,
    pub score: ScoreSettings,
    #[serde(default)]
    pub consent_recipients: Vec<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub last_refreshed: Option<DateTime<Utc>>,
    pub enriched_customers: Option<u64>,
    /// Run id of the newest successful run, whose tables are the latest.
    #[serde(default)]
    pub latest_run_id: Option<String>,
}

impl Enrichment {
    /// Applies a validated request: on create (`existing` None) and on edit.
    pub fn from_request(
        id: String,
        request: EnrichmentRequest,
        mailbox_count: usize,
        now: DateTime<Utc>,
        existing: Option<&Enrichment>,
    ) -> Self {
        let normalize = |v: Vec<String>| -> Vec<String> {
            v.into_iter().map(|s| s.trim().to_lowercase()).collect()
        };
        let mut enrichment = Enrichment {
            id,
            name: request.name.trim().to_string(),
            status: EnrichmentStatus::PendingConsent,
            mailbox_count,
            version: 1,
            revision: 1,
            consent: ConsentInfo::default(),
            mailboxes: request.mailboxes,
            customer_data: request.customer_data,
            schedule: request.schedule.unwrap_or_default(),
            exclusions: normalize(request.exclusions.unwrap_or_default()),
            score: request.score.unwrap_or_default(),
            consent_recipients: normalize(request.consent_recipients.unwrap_or_default()),
            created_at: now,
            updated_at: now,
            last_refreshed: None,
            enriched_customers: None,
            latest_run_id: None,
        };
        if let Some(old) = existing {
            enrichment.status = old.status;
            enrichment.version = old.version + 1;
            enrichment.revision = old.revision + 1;
            enrichment.consent = old.consent.clone();
            enrichment.created_at = old.created_at;
            enrichment.last_refreshed = old.last_refreshed;
            enrichment.enriched_customers = old.enriched_customers;
            enrichment.latest_run_id = old.latest_run_id.clone();
        }
        enrichment
    }

    /// The list entry of `GET /enrichments`.
    pub fn summary(&self) -> serde_json::Value {
        serde_json::json!({
            "id": self.id,
            "name": self.name,
            "status": self.status,
            "mailbox_count": self.mailbox_count,
            "enriched_customers": self.enriched_customers,
            "last_refreshed": self.last_refreshed,
            "version": self.version,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request() -> EnrichmentRequest {
        serde_json::from_value(serde_json::json!({
            "name": "Account engagement",
            "mailboxes": { "users": ["alice@contoso.com"], "groups": ["us-sales@contoso.com"] },
            "consent_agreed": true,
            "customer_data": { "uri": "s3://bucket/contacts.csv", "format": "csv",
                               "account_id_field": "AccountId", "email_field": "EMail" },
            "schedule": { "frequency": "weekly", "days": ["mon"], "times": ["02:00"], "time_zone": "Europe/London" },
            "exclusions": ["@gmail.com", "ceo@fabrikam.com"],
            "score": { "half_life_days": 90, "weights": { "email": 0.4, "meeting": 0.4, "breadth": 0.2 } }
        }))
        .expect("the design's example body parses")
    }

    fn fields(errors: &[FieldError]) -> Vec<&str> {
        errors.iter().map(|e| e.field.as_str()).collect()
    }

    #[test]
    fn the_design_example_is_valid() {
        assert_eq!(validate_request(&request()), vec![]);
    }

    #[test]
    fn consent_must_be_agreed() {
        let mut r = request();
        r.consent_agreed = false;
        assert_eq!(fields(&validate_request(&r)), ["consent_agreed"]);
    }

    #[test]
    fn weights_must_sum_to_one_and_stay_in_range() {
        let mut r = request();
        r.score = Some(ScoreSettings {
            half_life_days: 0.5,
            weights: ScoreWeights {
                email: 0.9,
                meeting: 0.4,
                breadth: -0.1,
            },
        });
        let errors = validate_request(&r);
        assert_eq!(
            fields(&errors),
            [
                "score.half_life_days",
                "score.weights.breadth",
                "score.weights"
            ]
        );
        assert!(errors[2].message.contains("sum to 1"));
    }

    #[test]
    fn bad_addresses_exclusions_and_uri_are_named() {
        let mut r = request();
        r.mailboxes.users = vec!["alice@contoso.com".into(), "not an address".into()];
        r.mailboxes.groups = vec!["nope".into()];
        r.exclusions = Some(vec!["@gmail".into(), "ok@fabrikam.com".into()]);
        r.customer_data.uri = "https://bucket/contacts.csv".into();
        assert_eq!(
            fields(&validate_request(&r)),
            [
                "mailboxes.users[1]",
                "mailboxes.groups[0]",
                "customer_data.uri",
                "exclusions[0]"
            ]
        );
    }

    #[test]
    fn empty_selection_and_name_are_refused() {
        let mut r = request();
        r.name = "  ".into();
        r.mailboxes = MailboxSelection::default();
        assert_eq!(fields(&validate_request(&r)), ["name", "mailboxes"]);
    }

    #[test]
    fn s3_uris_parse() {
        assert_eq!(
            parse_s3_uri("s3://engagement-local/customer-data/c.csv"),
            Some(("engagement-local".into(), "customer-data/c.csv".into()))
        );
        assert_eq!(parse_s3_uri("s3://Bad_Bucket/x"), None);
        assert_eq!(parse_s3_uri("s3://bucket/"), None);
    }
}
