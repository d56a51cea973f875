//! Admin consent (DESIGN §3, §5, §6): the queued request, the email to the tenant administrators
//! with a signed single-use `state`, recording the administrator's answer, and detecting consent
//! granted directly in the admin console.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Duration, Utc};
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use crate::config::{ConsentStatus, Enrichment, EnrichmentStatus};
use crate::jobs::Outcome;
use crate::ports::{Email, Item, PortError, Precondition};
use crate::run::{RunRequest, Trigger};
use crate::services::Services;
use crate::store;

/// A message of the consent-requests queue.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConsentRequestMessage {
    pub enrichment_id: String,
    pub request_id: String,
}

/// What a consent `state` stands for once its signature is verified.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConsentState {
    #[serde(rename = "e")]
    pub enrichment_id: String,
    #[serde(rename = "r")]
    pub request_id: String,
    #[serde(rename = "x")]
    pub expires_at: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StateError {
    #[error("the state is malformed")]
    Malformed,
    #[error("the state's signature does not verify")]
    Forged,
    #[error("the link expired")]
    Expired,
}

type HmacSha256 = Hmac<Sha256>;

fn mac(key: &[u8]) -> HmacSha256 {
    // HMAC accepts keys of any length; this cannot fail.
    <HmacSha256 as Mac>::new_from_slice(key).unwrap_or_else(|_| unreachable!("hmac takes any key"))
}

/// `base64url(payload).base64url(HMAC-SHA256(key, payload))`.
pub fn sign_state(key: &[u8], state: &ConsentState) -> String {
    let payload = serde_json::to_vec(state).unwrap_or_default();
    let mut m = mac(key);
    m.update(&payload);
    format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(&payload),
        URL_SAFE_NO_PAD.encode(m.finalize().into_bytes())
    )
}

pub fn verify_state(
    key: &[u8],
    text: &str,
    now: DateTime<Utc>,
) -> Result<ConsentState, StateError> {
    let (payload, signature) = text.split_once('.').ok_or(StateError::Malformed)?;
    let payload = URL_SAFE_NO_PAD
        .decode(payload)
        .map_err(|_| StateError::Malformed)?;
    let signature = URL_SAFE_NO_PAD
        .decode(signature)
        .map_err(|_| StateError::Malformed)?;
    let mut m = mac(key);
    m.update(&payload);
    m.verify_slice(&signature).map_err(|_| StateError::Forged)?;
    let state: ConsentState =
        serde_json::from_slice(&payload).map_err(|_| StateError::Malformed)?;
    if now.timestamp() >= state.expires_at {
        return Err(StateError::Expired);
    }
    Ok(state)
}

fn state_pk(request_id: &str) -> String {
    format!("STATE#{request_id}")
}

/// The admin-consent URL of DESIGN §6.
pub fn admin_consent_url(services: &Services, state: &str) -> String {
    let graph = &services.settings.graph;
    let mut url = url::Url::parse(&format!(
        "{}/{}/v2.0/adminconsent",
        graph.login_base_url.trim_end_matches('/'),
        graph.tenant_id
    ))
    .unwrap_or_else(|_| unreachable!("login base URL was validated at start-up"));
    url.query_pairs_mut()
        .append_pair("client_id", &graph.client_id)
        .append_pair("scope", "https://graph.microsoft.com/.default")
        .append_pair("redirect_uri", &services.settings.consent_redirect_uri)
        .append_pair("state", state);
    url.to_string()
}

/// The email an administrator receives.
pub fn consent_email(
    enrichment: &Enrichment,
    link: &str,
    expires: DateTime<Utc>,
    from: &str,
    to: &str,
) -> Email {
    let subject = format!(
        "Admin consent requested: Account Engagement enrichment \"{}\"",
        enrichment.name
    );
    let text = format!(
        "Hello,\n\n\
         Your organization set up the Account Engagement enrichment \"{name}\". It learns which customer \
         accounts are engaged from the email and meeting metadata of {count} chosen mailboxes of your \
         Microsoft 365 tenant.\n\n\
         It needs an administrator's consent to read, through Microsoft Graph:\n\
         - email metadata: sender, recipients, sent and received times, message and conversation ids;\n\
         - meeting metadata: organizer, attendees, start, end, cancellation and sensitivity;\n\
         - the members of the chosen groups, the tenant's domains and its administrators.\n\n\
         It never requests message subjects, bodies or attachments and stores none of them (calendar \
         changes arrive with their subject, which is discarded at once). External addresses are stored only \
         as keyed hashes; private and personal meetings are skipped.\n\n\
         To review and grant consent, sign in as a Global Administrator and open:\n{link}\n\n\
         The link is for one use and expires on {expires} UTC. If you did not expect this request, \
         decline it on the consent page or ignore this email.\n",
        name = enrichment.name,
        count = enrichment.mailbox_count,
        expires = expires.format("%Y-%m-%d %H:%M"),
    );
    let html = format!(
        "<p>Hello,</p><p>Your organization set up the Account Engagement enrichment <b>{name}</b>. It learns \
         which customer accounts are engaged from the email and meeting <b>metadata</b> of {count} chosen \
         mailboxes.</p><p>It stores no subjects, bodies or attachments; external addresses are stored \
         only as keyed hashes.</p><p><a href=\"{link}\">Review and grant admin consent</a></p>\
         <p>The link is for one use and expires on {expires} UTC.</p>",
        name = html_escape(&enrichment.name),
        count = enrichment.mailbox_count,
        link = html_escape(link),
        expires = expires.format("%Y-%m-%d %H:%M"),
    );
    Email {
        from: from.to_string(),
        to: to.to_string(),
        subject,
        text,
        html,
    }
}

pub fn html_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&#39;")
}

/// Marks consent granted when the application already has a service principal with app roles
/// in the tenant (consent given in the admin console). Answers whether it is granted now.
pub async fn detect_console_consent(
    services: &Services,
    enrichment_id: &str,
) -> Result<bool, PortError> {
    let granted = services
        .directory
        .app_consent_granted(&services.settings.graph.client_id)
        .await?;
    if !granted {
        return Ok(false);
    }
    let now = services.now();
    let mut newly = false;
    store::update_enrichment(services.table.as_ref(), enrichment_id, |e| {
        newly = grant(e, now, "admin_console");
        newly
    })
    .await?;
    if newly {
        tracing::info!(enrichment_id, "consent given in the admin console detected");
        request_first_run(services, enrichment_id).await?;
    }
    Ok(true)
}

/// Applies a grant; false when it was granted already.
fn grant(e: &mut Enrichment, now: DateTime<Utc>, via: &str) -> bool {
    if e.consent.status == ConsentStatus::Granted {
        return false;
    }
    e.consent.status = ConsentStatus::Granted;
    e.consent.decided_at = Some(now);
    e.consent.error = None;
    e.consent.granted_via = Some(via.into());
    if matches!(
        e.status,
        EnrichmentStatus::PendingConsent | EnrichmentStatus::ConsentDenied
    ) {
        e.status = EnrichmentStatus::Active;
    }
    e.updated_at = now;
    true
}

async fn request_first_run(services: &Services, enrichment_id: &str) -> Result<(), PortError> {
    let request = RunRequest {
        enrichment_id: enrichment_id.to_string(),
        trigger: Trigger::Consent,
    };
    services
        .queue
        .send(
            &services.settings.run_queue_url,
            serde_json::to_string(&request).unwrap_or_default(),
            None,
        )
        .await
}

fn recipient_marker(request_id: &str, recipient: &str) -> String {
    let mut m = mac(b"consent-recipient");
    m.update(recipient.as_bytes());
    format!(
        "CONSENT_SENT#{request_id}#{}",
        hex::encode(&m.finalize().into_bytes()[..8])
    )
}

/// send-consent: emails every tenant administrator (and configured extra recipient) the link,
/// once per request even when the message is delivered again.
pub async fn send_consent_request(services: &Services, message: &ConsentRequestMessage) -> Outcome {
    match send_inner(services, message).await {
        Ok(()) => Outcome::Done,
        Err(e) => Outcome::Retry(e.to_string()),
    }
}

async fn send_inner(services: &Services, message: &ConsentRequestMessage) -> Result<(), PortError> {
    let table = services.table.as_ref();
    let id = message.enrichment_id.as_str();
    let Some(enrichment) = store::get_enrichment(table, id).await? else {
        tracing::info!(
            enrichment_id = id,
            "consent request for a deleted enrichment dropped"
        );
        return Ok(());
    };
    if enrichment.consent.request_id.as_deref() != Some(message.request_id.as_str()) {
        tracing::info!(enrichment_id = id, "superseded consent request dropped");
        return Ok(());
    }
    if enrichment.consent.status == ConsentStatus::Granted {
        return Ok(());
    }
    if detect_console_consent(services, id).await? {
        return Ok(());
    }
    let mut recipients: Vec<String> = services
        .directory
        .tenant_admins()
        .await?
        .into_iter()
        .filter_map(|u| u.mail.map(|m| m.trim().to_lowercase()))
        .chain(enrichment.consent_recipients.iter().cloned())
        .collect();
    recipients.sort();
    recipients.dedup();
    if recipients.is_empty() {
        store::update_enrichment(table, id, |e| {
            e.consent.error = Some(
                "no Global Administrator with an email address was found; add consent_recipients"
                    .into(),
            );
            true
        })
        .await?;
        return Err(PortError::Io("no recipients for the consent email".into()));
    }

    let now = services.now();
    let expires = now + Duration::days(services.settings.consent_link_days);
    let state = ConsentState {
        enrichment_id: id.to_string(),
        request_id: message.request_id.clone(),
        expires_at: expires.timestamp(),
    };
    // The state record makes the link single-use: the callback consumes it.
    let mut record = Item::new(
        state_pk(&message.request_id),
        "STATE",
        serde_json::json!({"enrichment_id": id}),
    );
    record.expires_at = Some(expires.timestamp() + 86_400);
    if table.get(&record.pk, &record.sk).await?.is_none() {
        table.put(record, Precondition::None).await?;
    }
    let link = admin_consent_url(
        services,
        &sign_state(&services.settings.state_signing_key, &state),
    );
    let pk = store::enrichment_pk(id);
    for recipient in &recipients {
        let marker = recipient_marker(&message.request_id, recipient);
        if table.get(&pk, &marker).await?.is_some() {
            continue;
        }
        let email = consent_email(
            &enrichment,
            &link,
            expires,
            &services.settings.sender_email,
            recipient,
        );
        services.mailer.send(&email).await?;
        let mut sent = Item::new(pk.clone(), marker, serde_json::json!({"sent_at": now}));
        sent.expires_at = Some(expires.timestamp() + 86_400);
        table.put(sent, Precondition::None).await?;
    }
    let request_id = message.request_id.clone();
    store::update_enrichment(table, id, |e| {
        if e.consent.request_id.as_deref() != Some(request_id.as_str())
            || e.consent.status == ConsentStatus::Granted
        {
            return false;
        }
        e.consent.status = ConsentStatus::Requested;
        e.consent.requested_at = Some(now);
        e.consent.recipients = recipients.clone();
        e.consent.error = None;
        true
    })
    .await?;
    tracing::info!(
        enrichment_id = id,
        recipients = recipients.len(),
        "consent requested"
    );
    Ok(())
}

/// The outcome of the consent callback, as the HTML page tells it.
#[derive(Debug, Clone, PartialEq)]
pub struct CallbackAnswer {
    pub status: u16,
    pub title: String,
    pub message: String,
}

impl CallbackAnswer {
    fn new(status: u16, title: &str, message: impl Into<String>) -> Self {
        Self {
            status,
            title: title.into(),
            message: message.into(),
        }
    }

    pub fn html(&self) -> String {
        format!(
            "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{t}</title></head>\
             <body style=\"font-family:sans-serif;max-width:40em;margin:3em auto\"><h1>{t}</h1><p>{m}</p></body></html>",
            t = html_escape(&self.title),
            m = html_escape(&self.message)
        )
    }
}

/// The query of `GET /consent/callback`.
#[derive(Debug, Clone, Default)]
pub struct CallbackQuery {
    pub state: Option<String>,
    pub admin_consent: Option<String>,
    pub error: Option<String>,
    pub error_description: Option<String>,
}

/// record-consent: verifies the state (signature, expiry, current request, single use) and
/// records the grant or denial. Never trusts the `tenant` the redirect carries.
pub async fn record_callback(
    services: &Services,
    query: &CallbackQuery,
) -> Result<CallbackAnswer, PortError> {
    let Some(state_text) = query.state.as_deref().filter(|s| !s.is_empty()) else {
        return Ok(CallbackAnswer::new(
            400,
            "Consent link incomplete",
            "The answer carries no state; open the link from the consent email again.",
        ));
    };
    let now = services.now();
    let state = match verify_state(&services.settings.state_signing_key, state_text, now) {
        Ok(s) => s,
        Err(StateError::Expired) => {
            return Ok(CallbackAnswer::new(
                410,
                "Consent link expired",
                "This consent link has expired. Ask for a new one from the enrichment's settings.",
            ));
        }
        Err(e) => {
            tracing::warn!(error = %e, "consent callback with an invalid state");
            return Ok(CallbackAnswer::new(
                400,
                "Consent link not valid",
                "This consent link is not valid.",
            ));
        }
    };
    let table = services.table.as_ref();
    let Some(enrichment) = store::get_enrichment(table, &state.enrichment_id).await? else {
        return Ok(CallbackAnswer::new(
            404,
            "Enrichment not found",
            "The enrichment this link was for no longer exists.",
        ));
    };
    if enrichment.consent.request_id.as_deref() != Some(state.request_id.as_str()) {
        return Ok(CallbackAnswer::new(
            409,
            "Consent link replaced",
            "A newer consent request replaced this link. Use the link of the latest email.",
        ));
    }
    let granted = query
        .admin_consent
        .as_deref()
        .is_some_and(|v| v.eq_ignore_ascii_case("true"));
    if !granted && query.error.is_none() {
        return Ok(CallbackAnswer::new(
            400,
            "Consent answer incomplete",
            "The answer says neither that consent was granted nor why it was not.",
        ));
    }
    // Consuming the state record makes the link single-use.
    match table
        .delete(&state_pk(&state.request_id), "STATE", Precondition::Present)
        .await
    {
        Ok(()) => {}
        Err(PortError::Conflict) => {
            return Ok(CallbackAnswer::new(
                409,
                "Consent link already used",
                "This consent link was already used. Nothing was changed.",
            ));
        }
        Err(e) => return Err(e),
    }
    let id = state.enrichment_id.as_str();
    if granted {
        let mut newly = false;
        store::update_enrichment(table, id, |e| {
            newly = grant(e, now, "redirect");
            newly
        })
        .await?;
        if newly {
            request_first_run(services, id).await?;
        }
        tracing::info!(enrichment_id = id, "admin consent granted");
        Ok(CallbackAnswer::new(
            200,
            "Consent granted",
            format!(
                "Thank you. The enrichment \"{}\" is now active and its first run has been requested.",
                enrichment.name
            ),
        ))
    } else {
        let error = match (&query.error, &query.error_description) {
            (Some(code), Some(description)) => format!("{code}: {description}"),
            (Some(code), None) => code.clone(),
            _ => "denied".into(),
        };
        store::update_enrichment(table, id, |e| {
            if e.consent.status == ConsentStatus::Granted {
                return false;
            }
            e.consent.status = ConsentStatus::Denied;
            e.consent.decided_at = Some(now);
            e.consent.error = Some(error.clone());
            e.status = EnrichmentStatus::ConsentDenied;
            e.updated_at = now;
            true
        })
        .await?;
        tracing::info!(enrichment_id = id, "admin consent denied");
        Ok(CallbackAnswer::new(
            200,
            "Consent not granted",
            format!(
                "The answer was recorded: consent for \"{}\" was not granted ({error}). Nothing will be downloaded.",
                enrichment.name
            ),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s)
            .expect("instant")
            .with_timezone(&Utc)
    }

    fn state() -> ConsentState {
        ConsentState {
            enrichment_id: "e1".into(),
            request_id: "r1".into(),
            expires_at: at("2026-12-11T00:00:00Z").timestamp(),
        }
    }

    #[test]
    fn signed_states_verify_until_they_expire() {
        let text = sign_state(b"key", &state());
        assert_eq!(
            verify_state(b"key", &text, at("2026-12-10T23:59:59Z")),
            Ok(state())
        );
        assert_eq!(
            verify_state(b"key", &text, at("2026-12-11T00:00:00Z")),
            Err(StateError::Expired)
        );
    }

    #[test]
    fn forged_and_malformed_states_are_refused() {
        let text = sign_state(b"key", &state());
        assert_eq!(
            verify_state(b"other", &text, at("2026-12-01T00:00:00Z")),
            Err(StateError::Forged)
        );
        let (payload, sig) = text.split_once('.').expect("two parts");
        let mut other = state();
        other.enrichment_id = "e2".into();
        let swapped = format!(
            "{}.{sig}",
            URL_SAFE_NO_PAD.encode(serde_json::to_vec(&other).expect("json"))
        );
        assert_ne!(payload, swapped.split('.').next().unwrap_or_default());
        assert_eq!(
            verify_state(b"key", &swapped, at("2026-12-01T00:00:00Z")),
            Err(StateError::Forged)
        );
        assert_eq!(
            verify_state(b"key", "nonsense", at("2026-12-01T00:00:00Z")),
            Err(StateError::Malformed)
        );
    }

    #[test]
    fn callback_page_escapes_names() {
        let page = CallbackAnswer::new(200, "Consent granted", "<script>").html();
        assert!(page.contains("&lt;script&gt;") && !page.contains("<script>"));
    }
}
