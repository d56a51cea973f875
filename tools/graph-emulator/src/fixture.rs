//! The tenant fixture (DESIGN §11): users, groups, mail and calendar items.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// A whole tenant: the JSON of DESIGN §11.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Fixture {
    pub tenant_id: String,
    #[serde(default)]
    pub domains: Vec<String>,
    #[serde(default)]
    pub users: Vec<FixtureUser>,
    #[serde(default)]
    pub groups: Vec<FixtureGroup>,
    #[serde(default)]
    pub messages: Vec<FixtureMessage>,
    #[serde(default)]
    pub events: Vec<FixtureEvent>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FixtureUser {
    pub id: String,
    #[serde(default)]
    pub mail: String,
    #[serde(default)]
    pub display_name: String,
    /// Defaults to `mail` when empty.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub user_principal_name: String,
    /// e.g. `["SMTP:alice@contoso.com", "smtp:al@contoso.com"]`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub proxy_addresses: Vec<String>,
    /// Member of the Global Administrator directory role.
    #[serde(default)]
    pub admin: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FixtureGroup {
    pub id: String,
    #[serde(default)]
    pub mail: String,
    #[serde(default)]
    pub display_name: String,
    /// User or group ids (nested groups allowed, cycles tolerated).
    #[serde(default)]
    pub members: Vec<String>,
}

fn default_folder() -> String {
    "inbox".to_string()
}
fn default_subject() -> String {
    "Hello".to_string()
}
fn default_meeting_subject() -> String {
    "Meeting".to_string()
}
fn default_event_type() -> String {
    "singleInstance".to_string()
}
fn default_sensitivity() -> String {
    "normal".to_string()
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FixtureMessage {
    /// User id (an address of the user is accepted and normalized to the id on load).
    pub mailbox: String,
    /// `inbox` or `sentitems`.
    #[serde(default = "default_folder")]
    pub folder: String,
    pub id: String,
    #[serde(default)]
    pub internet_message_id: String,
    #[serde(default)]
    pub conversation_id: String,
    #[serde(default)]
    pub from: String,
    #[serde(default)]
    pub to: Vec<String>,
    #[serde(default)]
    pub cc: Vec<String>,
    pub sent_date_time: DateTime<Utc>,
    pub received_date_time: DateTime<Utc>,
    #[serde(default = "default_subject")]
    pub subject: String,
    #[serde(default)]
    pub is_draft: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FixtureEvent {
    /// User id (an address of the user is accepted and normalized to the id on load).
    pub mailbox: String,
    pub id: String,
    #[serde(rename = "iCalUId", default)]
    pub ical_uid: String,
    #[serde(default)]
    pub organizer: String,
    #[serde(default)]
    pub attendees: Vec<String>,
    pub start: DateTime<Utc>,
    pub end: DateTime<Utc>,
    #[serde(default)]
    pub is_cancelled: bool,
    #[serde(default)]
    pub is_all_day: bool,
    #[serde(default = "default_meeting_subject")]
    pub subject: String,
    #[serde(rename = "type", default = "default_event_type")]
    pub event_type: String,
    #[serde(default = "default_sensitivity")]
    pub sensitivity: String,
}

/// Error loading a fixture file.
#[derive(Debug)]
pub enum FixtureError {
    Io(std::io::Error),
    Json(serde_json::Error),
}

impl std::fmt::Display for FixtureError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FixtureError::Io(e) => write!(f, "cannot read fixture: {e}"),
            FixtureError::Json(e) => write!(f, "invalid fixture JSON: {e}"),
        }
    }
}

impl std::error::Error for FixtureError {}

impl Fixture {
    pub fn from_json_file(path: impl AsRef<Path>) -> Result<Fixture, FixtureError> {
        let text = std::fs::read_to_string(path).map_err(FixtureError::Io)?;
        Fixture::from_json_str(&text)
    }

    pub fn from_json_str(text: &str) -> Result<Fixture, FixtureError> {
        serde_json::from_str(text).map_err(FixtureError::Json)
    }

    pub fn to_json_pretty(&self) -> String {
        serde_json::to_string_pretty(self).expect("fixture serializes")
    }
}
