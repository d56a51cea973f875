//! download: the incremental Microsoft Graph sync of one mailbox of one run (DESIGN §3, §6).
//!
//! One download job (an SQS message, [`DownloadJob`]) covers one mailbox of one run. The mailbox has three
//! *streams*, synced concurrently so that at most three requests are in flight per mailbox (Outlook allows 4):
//! `inbox` and `sentitems` (mail-folder message delta with the `$select` of §6) and `calendar` (calendarView
//! delta over `[as_of − 365 days, as_of + 30 days]`). Every request asks for the largest page
//! (`Prefer: odata.maxpagesize=1000`; the calendar also asks for `outlook.timezone="UTC"`).
//!
//! # State
//!
//! * **Activity** (S3, compact form of [`crate::activity`]), hash-partitioned for the scorer:
//!   `activity/{enr}/p{NN}/{mailbox}/{stream}/{run}-{chunk:05}.bin` per partition, and the meeting
//!   tombstones under `activity/{enr}/removed/{mailbox}/{run}-{chunk:05}.bin`.
//! * **Cursor** (table, `ENR#{enr}` / `CURSOR#{mailbox}#{stream}`), a [`Cursor`]:
//!   `delta_link` (where the next round starts: the `@odata.deltaLink` of the last *completed* round),
//!   `next_link` (where this run's unfinished round continues), `run_id` (the run that wrote it),
//!   `chunk` (the number of the next activity chunk this run will write for the stream) and `complete`
//!   (this run's round of the stream is finished). Links are opaque and stored verbatim.
//!
//! # Protocol
//!
//! 1. *Resume* ([`resume_point`]): a cursor of the same run that is `complete` → nothing to do; with a
//!    `next_link` → continue there (the job was re-queued near its deadline, or redelivered); else a
//!    `delta_link` → incremental round; else the initial URL (full sync). A cursor of another run only
//!    contributes its `delta_link` (an interrupted round of a canceled run is abandoned, not continued), and
//!    chunk numbering restarts at 0 for the new run (object keys carry the run id).
//! 2. *Pages* are converted as they arrive ([`Converter`]) and buffered. Before every page request the run
//!    status is read (concurrently with the request, so it costs no latency): once the run is canceled (or
//!    gone) the page is discarded and the job stops without writing anything more.
//! 3. *Flush and commit* ([`FLUSH_PAGES`] pages, [`FLUSH_RECORDS`] records, a pause, the end of the round):
//!    first the buffered records are written as chunk `chunk` (one object per partition that has records,
//!    plus the tombstones), then `chunk` is incremented, then the cursor is saved with the link the stream
//!    goes on from, then the counts of items seen since the last commit are added to the run's progress.
//!    At the end of the round the cursor becomes `{delta_link: new, next_link: null, complete: true}`.
//! 4. *Deadline*: before each request, when less than [`safety_margin`] (60 s, or a quarter of the time the
//!    job had if that is less) remains, the stream commits with `next_link` = the URL it was about to fetch;
//!    a page request itself (with the Graph client's retries) is cut off so that at least half the margin
//!    is left, and then counts as a pause at that URL. When every stream has either
//!    finished or paused, a paused job is re-queued as the same message and answered Done.
//! 5. *Sync state gone* (410, `syncStateNotFound`, `resyncRequired`): the stream's links are dropped and it
//!    restarts with a full sync (once per invocation); records already buffered are kept.
//! 6. The job that completes all three streams calls [`run::finish_mailbox`] (idempotent per mailbox and
//!    run); counts there are 0 because they were reported by [`run::add_progress`] at every commit.
//! 7. *Errors* after the Graph client's own retries, or of S3 / the table: the message is left for
//!    redelivery ([`Outcome::Retry`]); from the 5th delivery on the mailbox is first recorded as failed (named
//!    in the run's warnings) so the run can finish without it once the message has gone to the DLQ.
//!
//! # Why nothing is lost or double-counted
//!
//! * The cursor only ever moves past pages whose records are already in S3 (write, *then* save the cursor),
//!   so a crash at any point resumes from a link whose data may be written again but was never skipped.
//! * Object keys are a function of (run, stream, chunk) and `chunk` is persisted in the cursor together with
//!   the link it belongs to: a redelivered or re-queued job writes the chunk numbers after the last commit
//!   again, overwriting what a crashed attempt may have written instead of adding to it. Chunks before the
//!   committed number are never rewritten by the run. (A crashed attempt's object for a partition that the
//!   retry happens not to touch can survive; it only holds copies of items the retry writes again.)
//! * Re-reading is harmless anyway: the scorer dedupes emails by `internetMessageId` and meetings by
//!   `iCalUId` (newest version wins), which is also what makes a full resync after 410 safe.
//! * Progress counters are added after the cursor commit, so a redelivered job never re-adds the counts of
//!   pages it re-reads; a crash between the commit and the counter update can only under-count progress
//!   (progress is informational; the run summary's counts come from the scorer).
//! * `finish_mailbox` is guarded by a per-mailbox marker, so a duplicate delivery never counts twice.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant};

use chrono::{DateTime, NaiveDateTime, TimeZone, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tracing::Instrument;

use crate::activity::{self, Activity, Email, Meeting, MeetingRemoved, Party};
use crate::graph::{GraphError, GraphPage};
use crate::jobs::Outcome;
use crate::ports::{Blobs, Item, PortError, Precondition, Table};
use crate::privacy::{Id16, Pseudonymizer, guid_bytes};
use crate::run::{self, DownloadJob, MailboxOutcome};
use crate::services::Services;
use crate::store;

/// Largest page Graph serves for message and event delta.
pub const PAGE_SIZE: u32 = 1000;
/// Commit (flush activity, save the cursor) at least every this many pages of a stream.
pub const FLUSH_PAGES: u32 = 20;
/// ... or as soon as this many records are buffered for a stream.
pub const FLUSH_RECORDS: usize = 50_000;
/// The download queue's maxReceiveCount: from this delivery on a failure marks the mailbox failed.
pub const MAX_RECEIVE_COUNT: u32 = 5;
/// Upper bound of the safety margin kept before the invocation deadline.
pub const MAX_SAFETY_MARGIN: Duration = Duration::from_secs(60);
/// The fields of §6, nothing more.
pub const MAIL_SELECT: &str = "from,toRecipients,ccRecipients,sentDateTime,receivedDateTime,internetMessageId,conversationId,isDraft";
/// The calendar window around the run's as-of instant.
pub const CALENDAR_DAYS_BEFORE: i64 = 365;
pub const CALENDAR_DAYS_AFTER: i64 = 30;

// ------------------------------------------------------------------------------------------ streams

/// The three delta streams of a mailbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Stream {
    Inbox,
    SentItems,
    Calendar,
}

impl Stream {
    pub const ALL: [Stream; 3] = [Stream::Inbox, Stream::SentItems, Stream::Calendar];

    /// The name used in cursor keys and object keys.
    pub fn name(self) -> &'static str {
        match self {
            Stream::Inbox => "inbox",
            Stream::SentItems => "sentitems",
            Stream::Calendar => "calendar",
        }
    }

    pub fn is_mail(self) -> bool {
        !matches!(self, Stream::Calendar)
    }

    /// The path (relative to the Graph base URL) that starts a full sync.
    pub fn initial_path(self, mailbox_id: &str, as_of: DateTime<Utc>) -> String {
        match self {
            Stream::Inbox | Stream::SentItems => format!(
                "/users/{mailbox_id}/mailFolders/{}/messages/delta?$select={MAIL_SELECT}",
                self.name()
            ),
            Stream::Calendar => {
                let (start, end) = calendar_window(as_of);
                format!(
                    "/users/{mailbox_id}/calendarView/delta?startDateTime={}&endDateTime={}",
                    rfc3339_utc(start),
                    rfc3339_utc(end)
                )
            }
        }
    }

    /// The `Prefer` header value of every request of the stream.
    pub fn prefer(self) -> &'static str {
        match self {
            Stream::Inbox | Stream::SentItems => "odata.maxpagesize=1000",
            Stream::Calendar => "odata.maxpagesize=1000, outlook.timezone=\"UTC\"",
        }
    }
}

/// `[as_of − 365 days, as_of + 30 days]`.
pub fn calendar_window(as_of: DateTime<Utc>) -> (DateTime<Utc>, DateTime<Utc>) {
    (
        as_of - chrono::Duration::days(CALENDAR_DAYS_BEFORE),
        as_of + chrono::Duration::days(CALENDAR_DAYS_AFTER),
    )
}

fn rfc3339_utc(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%dT%H:%M:%SZ").to_string()
}

// ------------------------------------------------------------------------------------------ cursors

/// The stored position of one stream of one mailbox (`ENR#{enr}` / `CURSOR#{mailbox}#{stream}`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cursor {
    /// `@odata.deltaLink` of the last completed round: where the next run's round starts.
    #[serde(default)]
    pub delta_link: Option<String>,
    /// Where the unfinished round of `run_id` continues.
    #[serde(default)]
    pub next_link: Option<String>,
    /// The run that wrote the cursor.
    #[serde(default)]
    pub run_id: String,
    /// The number of the next activity chunk `run_id` writes for this stream.
    #[serde(default)]
    pub chunk: u32,
    /// The round of `run_id` is finished.
    #[serde(default)]
    pub complete: bool,
    /// For the calendar: the as-of instant whose window (−365 d … +30 d) the delta token keeps.
    #[serde(default)]
    pub window_as_of: Option<DateTime<Utc>>,
}

/// The calendar delta keeps the window of its first request; a window older than this is renewed
/// with a full calendar sync so that new meetings beyond the old window's end are seen (dedupe by
/// iCalUId keeps the counts right).
pub const CALENDAR_WINDOW_RENEW_DAYS: i64 = 7;

/// Whether an incremental calendar round must start over with a window around `as_of`.
pub fn calendar_window_stale(window_as_of: Option<DateTime<Utc>>, as_of: DateTime<Utc>) -> bool {
    window_as_of.is_none_or(|w| as_of - w > chrono::Duration::days(CALENDAR_WINDOW_RENEW_DAYS))
}

pub fn cursor_sk(mailbox_id: &str, stream: Stream) -> String {
    format!("CURSOR#{mailbox_id}#{}", stream.name())
}

pub async fn load_cursor(
    table: &dyn Table,
    enrichment_id: &str,
    mailbox_id: &str,
    stream: Stream,
) -> Result<Option<Cursor>, PortError> {
    match table
        .get(
            &store::enrichment_pk(enrichment_id),
            &cursor_sk(mailbox_id, stream),
        )
        .await?
    {
        Some(item) => store::decode(&item).map(Some),
        None => Ok(None),
    }
}

pub async fn save_cursor(
    table: &dyn Table,
    enrichment_id: &str,
    mailbox_id: &str,
    stream: Stream,
    cursor: &Cursor,
) -> Result<(), PortError> {
    let item = Item::new(
        store::enrichment_pk(enrichment_id),
        cursor_sk(mailbox_id, stream),
        store::encode(cursor)?,
    );
    table.put(item, Precondition::None).await
}

/// Where a stream starts in this job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resume {
    /// This run already finished the stream.
    AlreadyComplete,
    /// Continue this run's round at a saved link.
    Continue(String),
    /// Start an incremental round at the last delta link.
    Incremental(String),
    /// Start a full sync at the initial URL.
    Full,
}

/// The resume choice of protocol step 1, and the chunk number to write next.
pub fn resume_point(cursor: Option<&Cursor>, run_id: &str) -> (Resume, u32) {
    let Some(cursor) = cursor else {
        return (Resume::Full, 0);
    };
    let same_run = cursor.run_id == run_id;
    let chunk = if same_run { cursor.chunk } else { 0 };
    let resume = match (&cursor.next_link, &cursor.delta_link) {
        _ if same_run && cursor.complete => Resume::AlreadyComplete,
        (Some(next), _) if same_run => Resume::Continue(next.clone()),
        (_, Some(delta)) => Resume::Incremental(delta.clone()),
        _ => Resume::Full,
    };
    (resume, chunk)
}

// ------------------------------------------------------------------------------------------ time budget

/// `min(60 s, total / 4)`: what is kept free before the deadline to commit and re-queue.
pub fn safety_margin(total: Duration) -> Duration {
    MAX_SAFETY_MARGIN.min(total / 4)
}

/// The job's time: its deadline and the safety margin derived from the time it had when it started.
#[derive(Debug, Clone, Copy)]
pub struct TimeBudget {
    deadline: Instant,
    margin: Duration,
}

impl TimeBudget {
    pub fn new(started: Instant, deadline: Instant) -> Self {
        Self {
            deadline,
            margin: safety_margin(deadline.saturating_duration_since(started)),
        }
    }

    pub fn margin(&self) -> Duration {
        self.margin
    }

    /// No new request may start: it is time to commit and hand over.
    pub fn must_stop(&self, now: Instant) -> bool {
        self.deadline.saturating_duration_since(now) <= self.margin
    }

    /// How long a request started now may take: it must end with half the margin still left.
    pub fn request_limit(&self, now: Instant) -> Duration {
        self.deadline
            .saturating_duration_since(now)
            .saturating_sub(self.margin / 2)
    }
}

// ------------------------------------------------------------------------------------------ participants

fn normalize_address(address: &str) -> String {
    address.trim().to_lowercase()
}

/// The enrichment's exclusions: exact addresses, or `@domain` suffixes.
#[derive(Debug, Clone, Default)]
pub struct Exclusions {
    addresses: HashSet<String>,
    domains: Vec<String>,
}

impl Exclusions {
    pub fn new(list: &[String]) -> Self {
        let mut exclusions = Self::default();
        for entry in list
            .iter()
            .map(|e| normalize_address(e))
            .filter(|e| !e.is_empty())
        {
            if entry.starts_with('@') {
                exclusions.domains.push(entry);
            } else {
                exclusions.addresses.insert(entry);
            }
        }
        exclusions
    }

    /// Whether a normalized address is excluded.
    pub fn excludes(&self, address: &str) -> bool {
        self.addresses.contains(address)
            || self.domains.iter().any(|d| address.ends_with(d.as_str()))
    }
}

/// Who is internal: the organization's domains and the enrichment's mailboxes (address → object-id key).
#[derive(Debug, Clone, Default)]
pub struct Organization {
    domains: HashSet<String>,
    mailboxes: HashMap<String, Id16>,
}

impl Organization {
    /// `mailboxes` are (address, object-id key) pairs.
    pub fn new(
        domains: impl IntoIterator<Item = String>,
        mailboxes: impl IntoIterator<Item = (String, Id16)>,
    ) -> Self {
        Self {
            domains: domains.into_iter().map(|d| normalize_address(&d)).collect(),
            mailboxes: mailboxes
                .into_iter()
                .map(|(address, key)| (normalize_address(&address), key))
                .collect(),
        }
    }

    /// The object-id key of a chosen mailbox's (normalized) address.
    pub fn mailbox(&self, address: &str) -> Option<Id16> {
        self.mailboxes.get(address).copied()
    }

    /// Whether a normalized address belongs to the organization. Addresses without a domain are
    /// Exchange-internal (legacy DN) forms, hence internal.
    pub fn is_internal(&self, address: &str) -> bool {
        if self.mailboxes.contains_key(address) {
            return true;
        }
        match address.rsplit_once('@') {
            Some((_, domain)) => self.domains.contains(domain),
            None => true,
        }
    }
}

/// The 16-byte key of a directory object id: its GUID bytes, or a keyed hash when it is not a GUID.
pub fn object_key(pseudonymizer: &Pseudonymizer, object_id: &str) -> Id16 {
    guid_bytes(object_id).unwrap_or_else(|| pseudonymizer.hash_value(object_id))
}

// ------------------------------------------------------------------------------------------ conversion

/// Turns Graph delta items of one mailbox into activity records (DESIGN §6: what is kept).
#[derive(Debug, Clone)]
pub struct Converter {
    pseudonymizer: Pseudonymizer,
    organization: Organization,
    exclusions: Exclusions,
    mailbox_id: String,
    mailbox: Id16,
}

impl Converter {
    pub fn new(
        pseudonymizer: Pseudonymizer,
        organization: Organization,
        exclusions: Exclusions,
        mailbox_id: &str,
    ) -> Self {
        let mailbox = object_key(&pseudonymizer, mailbox_id);
        Self {
            pseudonymizer,
            organization,
            exclusions,
            mailbox_id: mailbox_id.to_string(),
            mailbox,
        }
    }

    /// The mailbox key written into every record.
    pub fn mailbox(&self) -> Id16 {
        self.mailbox
    }

    /// A participant, or None when the address is empty or excluded (dropped before hashing).
    pub fn party(&self, address: &str) -> Option<Party> {
        let address = normalize_address(address);
        if address.is_empty() || self.exclusions.excludes(&address) {
            return None;
        }
        if let Some(key) = self.organization.mailbox(&address) {
            return Some(Party::Internal(key));
        }
        let key = self.pseudonymizer.hash_address(&address);
        Some(if self.organization.is_internal(&address) {
            Party::Internal(key)
        } else {
            Party::External(key)
        })
    }

    fn recipient_party(&self, recipient: &Value) -> Option<Party> {
        recipient
            .pointer("/emailAddress/address")
            .and_then(Value::as_str)
            .and_then(|a| self.party(a))
    }

    /// The distinct parties of the recipient arrays `fields` of `item`.
    fn parties_of(&self, item: &Value, fields: &[&str]) -> Vec<Party> {
        let mut parties: Vec<Party> = Vec::new();
        for field in fields {
            let Some(list) = item.get(*field).and_then(Value::as_array) else {
                continue;
            };
            for party in list.iter().filter_map(|r| self.recipient_party(r)) {
                if !parties.contains(&party) {
                    parties.push(party);
                }
            }
        }
        parties
    }

    /// The record of one delta item of `stream`, or None when it is not kept.
    pub fn convert(&self, stream: Stream, item: &Value, now_ms: i64) -> Option<Activity> {
        if stream.is_mail() {
            self.message(item)
        } else {
            self.event(item, now_ms)
        }
    }

    /// A message: drafts, `@removed` entries (a deleted email still happened), messages without a sender
    /// (or with an excluded one) or a time, and internal-only messages are not kept.
    pub fn message(&self, item: &Value) -> Option<Activity> {
        if is_removed(item) || item.get("isDraft").and_then(Value::as_bool) == Some(true) {
            return None;
        }
        let sent_at_ms = text(item, "sentDateTime")
            .and_then(parse_instant_ms)
            .or_else(|| text(item, "receivedDateTime").and_then(parse_instant_ms))?;
        let from = item.get("from").and_then(|f| self.recipient_party(f))?;
        let recipients = self.parties_of(item, &["toRecipients", "ccRecipients"]);
        if !has_external(&from, &recipients) {
            return None;
        }
        let message_id = text(item, "internetMessageId").or_else(|| text(item, "id"))?;
        let conversation_id = text(item, "conversationId").unwrap_or(message_id);
        Some(Activity::Email(Email {
            message_key: self.pseudonymizer.hash_value(message_id),
            conversation_key: self.pseudonymizer.hash_value(conversation_id),
            mailbox: self.mailbox,
            sent_at_ms,
            from,
            recipients,
        }))
    }

    /// An event: `@removed` → a tombstone; private/personal → a tombstone too (an event that became private
    /// must not keep counting through versions seen before), nothing else of it is kept; events without a
    /// start or an organizer (or with an excluded one), and internal-only events are not kept.
    pub fn event(&self, item: &Value, now_ms: i64) -> Option<Activity> {
        let event_id = text(item, "id")?;
        if is_removed(item) || is_private(item) {
            return Some(Activity::MeetingRemoved(MeetingRemoved {
                mailbox: self.mailbox,
                event_key: self.event_key(event_id),
                removed_at_ms: now_ms,
            }));
        }
        let start_ms = item.get("start").and_then(parse_date_time_zone)?;
        let end_ms = item
            .get("end")
            .and_then(parse_date_time_zone)
            .unwrap_or(start_ms);
        let organizer = item
            .get("organizer")
            .and_then(|o| self.recipient_party(o))?;
        let attendees = self.parties_of(item, &["attendees"]);
        if !has_external(&organizer, &attendees) {
            return None;
        }
        let uid = text(item, "iCalUId").unwrap_or(event_id);
        let version_ms = text(item, "lastModifiedDateTime")
            .and_then(parse_instant_ms)
            .unwrap_or(now_ms);
        Some(Activity::Meeting(Meeting {
            uid_key: self.pseudonymizer.hash_value(uid),
            event_key: self.event_key(event_id),
            mailbox: self.mailbox,
            version_ms,
            start_ms,
            end_ms,
            cancelled: item.get("isCancelled").and_then(Value::as_bool) == Some(true),
            organizer,
            attendees,
        }))
    }

    /// `hash_value(mailbox id + event id)`: event ids are only unique within a mailbox.
    pub fn event_key(&self, event_id: &str) -> Id16 {
        self.pseudonymizer
            .hash_value(&format!("{}{event_id}", self.mailbox_id))
    }
}

fn text<'a>(item: &'a Value, key: &str) -> Option<&'a str> {
    item.get(key)
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
}

fn is_removed(item: &Value) -> bool {
    item.get("@removed").is_some()
}

fn is_private(item: &Value) -> bool {
    text(item, "sensitivity")
        .is_some_and(|s| s.eq_ignore_ascii_case("private") || s.eq_ignore_ascii_case("personal"))
}

fn has_external(first: &Party, rest: &[Party]) -> bool {
    !first.is_internal() || rest.iter().any(|p| !p.is_internal())
}

/// An instant with an offset (RFC 3339), or without one read as UTC; epoch milliseconds.
pub fn parse_instant_ms(s: &str) -> Option<i64> {
    let s = s.trim();
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Some(t.timestamp_millis());
    }
    parse_naive(s).map(|n| n.and_utc().timestamp_millis())
}

fn parse_naive(s: &str) -> Option<NaiveDateTime> {
    NaiveDateTime::parse_from_str(s.trim(), "%Y-%m-%dT%H:%M:%S%.f").ok()
}

/// A Graph `dateTimeTimeZone` in epoch milliseconds: UTC when the zone is UTC, else the IANA zone it
/// names, else (a Windows zone name, an unknown zone) read as UTC.
pub fn parse_date_time_zone(value: &Value) -> Option<i64> {
    let date_time = text(value, "dateTime")?;
    if let Ok(t) = DateTime::parse_from_rfc3339(date_time.trim()) {
        return Some(t.timestamp_millis());
    }
    let naive = parse_naive(date_time)?;
    let zone = text(value, "timeZone").map(str::trim).unwrap_or("UTC");
    let utc = || naive.and_utc().timestamp_millis();
    if zone.eq_ignore_ascii_case("utc") || zone.eq_ignore_ascii_case("tzone://Microsoft/Utc") {
        return Some(utc());
    }
    match zone.parse::<chrono_tz::Tz>() {
        Ok(tz) => Some(
            tz.from_local_datetime(&naive)
                .earliest()
                .map(|t| t.timestamp_millis())
                .unwrap_or_else(utc),
        ),
        Err(_) => Some(utc()),
    }
}

// ------------------------------------------------------------------------------------------ S3 layout

/// Which chunk of which stream a flush writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChunkId<'a> {
    pub enrichment_id: &'a str,
    pub mailbox_id: &'a str,
    pub stream: Stream,
    pub run_id: &'a str,
    pub chunk: u32,
}

/// `activity/{enr}/p{NN}/{mailbox}/{stream}/{run}-{chunk:05}.bin` for a partition,
/// `activity/{enr}/removed/{mailbox}/{run}-{chunk:05}.bin` for tombstones (`partition` None).
pub fn activity_key(id: &ChunkId<'_>, partition: Option<u16>) -> String {
    match partition {
        Some(p) => format!(
            "activity/{}/p{p:02}/{}/{}/{}-{:05}.bin",
            id.enrichment_id,
            id.mailbox_id,
            id.stream.name(),
            id.run_id,
            id.chunk
        ),
        None => format!(
            "activity/{}/removed/{}/{}-{:05}.bin",
            id.enrichment_id, id.mailbox_id, id.run_id, id.chunk
        ),
    }
}

/// Records grouped by [`activity::partition_of`] (None: the tombstones), in record order within a group.
pub fn group_by_partition(records: Vec<Activity>) -> BTreeMap<Option<u16>, Vec<Activity>> {
    let mut groups: BTreeMap<Option<u16>, Vec<Activity>> = BTreeMap::new();
    for record in records {
        groups
            .entry(activity::partition_of(&record))
            .or_default()
            .push(record);
    }
    groups
}

/// Writes one chunk: an object per non-empty group. Answers how many objects were written.
pub async fn write_chunk(
    blobs: &dyn Blobs,
    bucket: &str,
    id: &ChunkId<'_>,
    records: Vec<Activity>,
) -> Result<usize, PortError> {
    let writes: Vec<_> = group_by_partition(records)
        .into_iter()
        .map(|(partition, group)| {
            let mut body = Vec::new();
            activity::encode(&group, &mut body);
            let key = activity_key(id, partition);
            async move {
                blobs
                    .put(bucket, &key, body, "application/octet-stream")
                    .await
            }
        })
        .collect();
    let written = writes.len();
    futures::future::try_join_all(writes).await?;
    Ok(written)
}

// ------------------------------------------------------------------------------------------ errors

/// Why a mailbox download failed. The texts are safe to log: no addresses, links or tokens.
#[derive(Debug, thiserror::Error)]
pub enum DownloadError {
    #[error("Microsoft Graph: {}", graph_summary(.0))]
    Graph(GraphError),
    #[error("storage: {0}")]
    Port(#[from] PortError),
}

impl From<GraphError> for DownloadError {
    fn from(e: GraphError) -> Self {
        DownloadError::Graph(e)
    }
}

fn graph_summary(e: &GraphError) -> String {
    match e {
        GraphError::SyncStateGone(code) => format!("sync state gone ({code})"),
        GraphError::Status { status, code, .. } => format!("HTTP {status} {code}"),
        GraphError::Throttled { attempts } => format!("still throttled after {attempts} attempts"),
        GraphError::Token(detail) => format!("token request failed ({detail})"),
        GraphError::Transport(_) => "transport error".into(),
    }
}

// ------------------------------------------------------------------------------------------ the job

/// How a stream (or the whole job) ended without an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamEnd {
    /// The round is finished and committed.
    Complete,
    /// Stopped near the deadline; committed with the link to go on from.
    Paused,
    /// The run was canceled or is gone; nothing more was written.
    Stopped,
}

/// The job's verdict from its streams: an error wins, then a stop, then a pause.
pub fn combine_ends(
    ends: Vec<Result<StreamEnd, DownloadError>>,
) -> Result<StreamEnd, DownloadError> {
    let mut combined = StreamEnd::Complete;
    for end in ends {
        combined = match (end?, combined) {
            (StreamEnd::Stopped, _) | (_, StreamEnd::Stopped) => StreamEnd::Stopped,
            (StreamEnd::Paused, _) | (_, StreamEnd::Paused) => StreamEnd::Paused,
            _ => StreamEnd::Complete,
        };
    }
    Ok(combined)
}

/// Whether the run still wants this download (exists, not final, download task not final).
pub async fn run_is_active(table: &dyn Table, job: &DownloadJob) -> Result<bool, PortError> {
    Ok(run::get_run(table, &job.enrichment_id, &job.run_id)
        .await?
        .is_some_and(|r| wants_download(&r)))
}

fn wants_download(run: &run::Run) -> bool {
    !run.status.is_final() && !run.tasks.download.status.is_final()
}

/// Downloads one mailbox of one run (the download function's handler body). See the module docs.
pub async fn run_download_job(
    services: &Services,
    job: &DownloadJob,
    receive_count: u32,
    deadline: Instant,
) -> Outcome {
    let span = tracing::info_span!(
        "download",
        enrichment_id = %job.enrichment_id,
        run_id = %job.run_id,
        mailbox_id = %job.mailbox_id,
    );
    async move {
        let budget = TimeBudget::new(Instant::now(), deadline);
        match download_mailbox(services, job, budget).await {
            Ok(StreamEnd::Complete) => finish_successfully(services, job).await,
            Ok(StreamEnd::Paused) => requeue(services, job).await,
            Ok(StreamEnd::Stopped) => {
                tracing::info!("run canceled or gone; download stopped");
                Outcome::Done
            }
            Err(e) => fail(services, job, receive_count, &e).await,
        }
    }
    .instrument(span)
    .await
}

async fn download_mailbox(
    services: &Services,
    job: &DownloadJob,
    budget: TimeBudget,
) -> Result<StreamEnd, DownloadError> {
    if budget.must_stop(Instant::now()) {
        return Ok(StreamEnd::Paused);
    }
    let table = services.table.as_ref();
    let Some(run) = run::get_run(table, &job.enrichment_id, &job.run_id)
        .await?
        .filter(wants_download)
    else {
        return Ok(StreamEnd::Stopped);
    };
    let Some(converter) = build_converter(services, job, run.organization_domains).await? else {
        return Ok(StreamEnd::Stopped);
    };
    let ctx = JobContext {
        services,
        job,
        converter,
        budget,
    };
    let (inbox, sent, calendar) = tokio::join!(
        sync_stream(&ctx, Stream::Inbox),
        sync_stream(&ctx, Stream::SentItems),
        sync_stream(&ctx, Stream::Calendar),
    );
    combine_ends(vec![inbox, sent, calendar])
}

/// The converter of the job's mailbox: exclusions of the enrichment, its mailboxes and the tenant's
/// domains. None when the enrichment is gone.
async fn build_converter(
    services: &Services,
    job: &DownloadJob,
    snapshot: Vec<String>,
) -> Result<Option<Converter>, DownloadError> {
    let table = services.table.as_ref();
    let Some(enrichment) = store::get_enrichment(table, &job.enrichment_id).await? else {
        return Ok(None);
    };
    let pseudonymizer = Pseudonymizer::new(&services.settings.pseudonymization_key);
    let mailboxes = store::list_mailboxes(table, &job.enrichment_id).await?;
    // Snapshotted by start-run; runs started before that field existed ask Graph.
    let domains = if snapshot.is_empty() {
        services.directory.domains().await?
    } else {
        snapshot
    };
    let organization = Organization::new(
        domains,
        mailboxes
            .iter()
            .map(|m| (m.email.clone(), object_key(&pseudonymizer, &m.user_id))),
    );
    Ok(Some(Converter::new(
        pseudonymizer,
        organization,
        Exclusions::new(&enrichment.exclusions),
        &job.mailbox_id,
    )))
}

async fn finish_successfully(services: &Services, job: &DownloadJob) -> Outcome {
    // Counts were already added at every commit.
    let outcome = MailboxOutcome::default();
    match run::finish_mailbox(services, job, &outcome).await {
        Ok(()) => {
            tracing::info!("mailbox downloaded");
            Outcome::Done
        }
        Err(e) => Outcome::Retry(format!("could not record the finished mailbox: {e}")),
    }
}

async fn requeue(services: &Services, job: &DownloadJob) -> Outcome {
    let body = match serde_json::to_string(job) {
        Ok(body) => body,
        Err(e) => return Outcome::Retry(format!("could not re-queue the job: {e}")),
    };
    match services
        .queue
        .send(&services.settings.download_queue_url, body, None)
        .await
    {
        Ok(()) => {
            tracing::info!("deadline near; progress saved and the job re-queued");
            Outcome::Done
        }
        // The cursors are saved: redelivery resumes where this attempt stopped.
        Err(e) => Outcome::Retry(format!("could not re-queue the job: {e}")),
    }
}

async fn fail(
    services: &Services,
    job: &DownloadJob,
    receive_count: u32,
    error: &DownloadError,
) -> Outcome {
    let reason = error.to_string();
    tracing::warn!(error = %reason, receive_count, "mailbox download failed");
    if receive_count >= MAX_RECEIVE_COUNT {
        let email = mailbox_email(services, job).await;
        let outcome = MailboxOutcome {
            failed: true,
            warning: Some(format!("mailbox {email} could not be downloaded: {reason}")),
            ..MailboxOutcome::default()
        };
        if let Err(e) = run::finish_mailbox(services, job, &outcome).await {
            tracing::warn!(error = %e, "could not record the failed mailbox");
        }
    }
    Outcome::Retry(reason)
}

/// The address of the job's mailbox for a warning (its id when it cannot be found).
async fn mailbox_email(services: &Services, job: &DownloadJob) -> String {
    store::list_mailboxes(services.table.as_ref(), &job.enrichment_id)
        .await
        .ok()
        .and_then(|rows| rows.into_iter().find(|r| r.user_id == job.mailbox_id))
        .map(|r| r.email)
        .unwrap_or_else(|| job.mailbox_id.clone())
}

// ------------------------------------------------------------------------------------------ one stream

struct JobContext<'a> {
    services: &'a Services,
    job: &'a DownloadJob,
    converter: Converter,
    budget: TimeBudget,
}

/// What one page request gave.
enum Fetched {
    Page(GraphPage),
    RunInactive,
    OutOfTime,
}

/// The state of one stream while it syncs.
struct StreamSync<'a> {
    ctx: &'a JobContext<'a>,
    stream: Stream,
    initial_url: String,
    cursor: Cursor,
    url: String,
    buffer: Vec<Activity>,
    pages_since_commit: u32,
    seen_since_commit: i64,
    restarted: bool,
}

async fn sync_stream(ctx: &JobContext<'_>, stream: Stream) -> Result<StreamEnd, DownloadError> {
    let Some(mut sync) = StreamSync::open(ctx, stream).await? else {
        return Ok(StreamEnd::Complete);
    };
    sync.run().await
}

impl<'a> StreamSync<'a> {
    /// Loads the cursor and picks where to start; None when this run already finished the stream.
    async fn open(ctx: &'a JobContext<'a>, stream: Stream) -> Result<Option<Self>, DownloadError> {
        let job = ctx.job;
        let stored = load_cursor(
            ctx.services.table.as_ref(),
            &job.enrichment_id,
            &job.mailbox_id,
            stream,
        )
        .await?;
        let (mut resume, chunk) = resume_point(stored.as_ref(), &job.run_id);
        let mut window_as_of = stored.as_ref().and_then(|c| c.window_as_of);
        if stream == Stream::Calendar
            && matches!(resume, Resume::Incremental(_))
            && calendar_window_stale(window_as_of, job.as_of)
        {
            resume = Resume::Full;
        }
        if resume == Resume::Full {
            window_as_of = Some(job.as_of);
        }
        let initial_url = ctx
            .services
            .graph
            .url(&stream.initial_path(&job.mailbox_id, job.as_of));
        let url = match resume {
            Resume::AlreadyComplete => return Ok(None),
            Resume::Continue(link) | Resume::Incremental(link) => link,
            Resume::Full => initial_url.clone(),
        };
        let cursor = Cursor {
            delta_link: stored.and_then(|c| c.delta_link),
            next_link: None,
            run_id: job.run_id.clone(),
            chunk,
            complete: false,
            window_as_of,
        };
        Ok(Some(Self {
            ctx,
            stream,
            initial_url,
            cursor,
            url,
            buffer: Vec::new(),
            pages_since_commit: 0,
            seen_since_commit: 0,
            restarted: false,
        }))
    }

    async fn run(&mut self) -> Result<StreamEnd, DownloadError> {
        loop {
            if self.ctx.budget.must_stop(Instant::now()) {
                self.commit_position().await?;
                return Ok(StreamEnd::Paused);
            }
            let page = match self.fetch().await {
                Ok(Fetched::Page(page)) => page,
                Ok(Fetched::RunInactive) => return Ok(StreamEnd::Stopped),
                Ok(Fetched::OutOfTime) => {
                    self.commit_position().await?;
                    return Ok(StreamEnd::Paused);
                }
                Err(DownloadError::Graph(GraphError::SyncStateGone(code)))
                    if self.can_restart() =>
                {
                    self.restart_full_sync(&code);
                    continue;
                }
                Err(e) => return Err(self.commit_after_error(e).await),
            };
            self.absorb(&page.items);
            match page.next_link {
                Some(next) => {
                    self.url = next;
                    if self.commit_due() {
                        self.commit_position().await?;
                    }
                }
                None => {
                    self.commit_complete(page.delta_link).await?;
                    return Ok(StreamEnd::Complete);
                }
            }
        }
    }

    /// Requests the page at `self.url` while checking that the run is still active; bounded by the
    /// time budget.
    async fn fetch(&self) -> Result<Fetched, DownloadError> {
        let services = self.ctx.services;
        let limit = self.ctx.budget.request_limit(Instant::now());
        let headers = [("Prefer", self.stream.prefer())];
        let request = tokio::time::timeout(limit, services.graph.get_page(&self.url, &headers));
        let (active, page) = tokio::join!(
            run_is_active(services.table.as_ref(), self.ctx.job),
            request
        );
        if !active? {
            return Ok(Fetched::RunInactive);
        }
        match page {
            Ok(page) => Ok(Fetched::Page(page?)),
            Err(_elapsed) => Ok(Fetched::OutOfTime),
        }
    }

    fn can_restart(&self) -> bool {
        !self.restarted && self.url != self.initial_url
    }

    /// Drops the stream's links and starts over with a full sync (buffered records stay).
    fn restart_full_sync(&mut self, code: &str) {
        tracing::warn!(
            stream = self.stream.name(),
            code,
            "delta state gone; restarting with a full sync"
        );
        self.restarted = true;
        self.cursor.delta_link = None;
        self.url = self.initial_url.clone();
    }

    /// Converts and buffers the items of a page.
    fn absorb(&mut self, items: &[Value]) {
        let now_ms = self.ctx.services.now().timestamp_millis();
        for item in items {
            if !is_removed(item) {
                self.seen_since_commit += 1;
            }
            if let Some(record) = self.ctx.converter.convert(self.stream, item, now_ms) {
                self.buffer.push(record);
            }
        }
        self.pages_since_commit += 1;
    }

    fn commit_due(&self) -> bool {
        self.pages_since_commit >= FLUSH_PAGES || self.buffer.len() >= FLUSH_RECORDS
    }

    /// Commit with the round still open at `self.url`.
    async fn commit_position(&mut self) -> Result<(), DownloadError> {
        self.cursor.next_link = Some(self.url.clone());
        self.cursor.complete = false;
        self.commit().await
    }

    /// Commit at the end of the round: the new delta link is where the next run starts.
    async fn commit_complete(&mut self, delta_link: Option<String>) -> Result<(), DownloadError> {
        if delta_link.is_none() {
            tracing::warn!(
                stream = self.stream.name(),
                "round ended without a delta link"
            );
        }
        self.cursor.delta_link = delta_link.or(self.cursor.delta_link.take());
        self.cursor.next_link = None;
        self.cursor.complete = true;
        self.commit().await
    }

    /// After a failed request, saves what was read so far (best effort) and answers the error.
    async fn commit_after_error(&mut self, error: DownloadError) -> DownloadError {
        if self.pages_since_commit > 0
            && let Err(e) = self.commit_position().await
        {
            tracing::warn!(stream = self.stream.name(), error = %e, "could not save progress after a failure");
        }
        error
    }

    /// Flush, then save the cursor, then report progress (the order the module docs rely on).
    async fn commit(&mut self) -> Result<(), DownloadError> {
        self.flush().await?;
        let job = self.ctx.job;
        let table = self.ctx.services.table.as_ref();
        save_cursor(
            table,
            &job.enrichment_id,
            &job.mailbox_id,
            self.stream,
            &self.cursor,
        )
        .await?;
        self.report_progress().await;
        self.pages_since_commit = 0;
        Ok(())
    }

    /// Writes the buffer as chunk `cursor.chunk` and moves the chunk number on.
    async fn flush(&mut self) -> Result<(), DownloadError> {
        if self.buffer.is_empty() {
            return Ok(());
        }
        let job = self.ctx.job;
        let id = ChunkId {
            enrichment_id: &job.enrichment_id,
            mailbox_id: &job.mailbox_id,
            stream: self.stream,
            run_id: &job.run_id,
            chunk: self.cursor.chunk,
        };
        let records = std::mem::take(&mut self.buffer);
        let count = records.len();
        let services = self.ctx.services;
        let objects = write_chunk(
            services.blobs.as_ref(),
            &services.settings.bucket,
            &id,
            records,
        )
        .await?;
        tracing::debug!(
            stream = self.stream.name(),
            chunk = id.chunk,
            records = count,
            objects,
            "activity flushed"
        );
        self.cursor.chunk += 1;
        Ok(())
    }

    /// Adds the items seen since the last commit to the run's progress. Progress is informational: a
    /// failure is logged, not retried (a retry would resume after the commit and could not re-add them).
    async fn report_progress(&mut self) {
        let seen = std::mem::take(&mut self.seen_since_commit);
        let (messages, events) = if self.stream.is_mail() {
            (seen, 0)
        } else {
            (0, seen)
        };
        if let Err(e) = run::add_progress(
            self.ctx.services.table.as_ref(),
            self.ctx.job,
            messages,
            events,
        )
        .await
        {
            tracing::warn!(stream = self.stream.name(), error = %e, "could not add download progress");
        }
    }
}

// ------------------------------------------------------------------------------------------ tests

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    use async_trait::async_trait;

    use crate::activity::{ActivityReader, PARTITIONS};

    const MAILBOX: &str = "48d31887-5fad-4d73-a9f5-3c356e68a038";
    const COLLEAGUE: &str = "6e7b768e-07e2-4810-8459-485f84f8f204";

    use crate::graph::sample;

    fn items(name: &str) -> Vec<Value> {
        let v = sample(name);
        match v.get("value").and_then(Value::as_array) {
            Some(items) => items.clone(),
            None => vec![v],
        }
    }

    fn pz() -> Pseudonymizer {
        Pseudonymizer::new(b"test-key")
    }

    /// Org domain contoso.com; the mailbox and a colleague are chosen mailboxes.
    fn converter(exclusions: &[&str]) -> Converter {
        let p = pz();
        let org = Organization::new(
            ["contoso.com".to_string()],
            [
                ("owner@contoso.com".to_string(), object_key(&p, MAILBOX)),
                (
                    "colleague@contoso.com".to_string(),
                    object_key(&p, COLLEAGUE),
                ),
            ],
        );
        let exclusions: Vec<String> = exclusions.iter().map(|s| s.to_string()).collect();
        Converter::new(p, org, Exclusions::new(&exclusions), MAILBOX)
    }

    fn ext(addr: &str) -> Party {
        Party::External(pz().hash_address(addr))
    }

    fn addr(a: &str) -> Value {
        serde_json::json!({"emailAddress": {"name": "X", "address": a}})
    }

    fn message(from: &str, to: &[&str], cc: &[&str]) -> Value {
        serde_json::json!({
            "id": "AAMk-msg",
            "from": addr(from),
            "toRecipients": to.iter().map(|a| addr(a)).collect::<Vec<_>>(),
            "ccRecipients": cc.iter().map(|a| addr(a)).collect::<Vec<_>>(),
            "sentDateTime": "2026-03-01T10:00:00Z",
            "receivedDateTime": "2026-03-01T10:00:05Z",
            "internetMessageId": "<m1@fabrikam.com>",
            "conversationId": "conv-1",
            "isDraft": false
        })
    }

    fn event(organizer: &str, attendees: &[&str]) -> Value {
        serde_json::json!({
            "id": "AAMk-evt",
            "iCalUId": "uid-1",
            "organizer": addr(organizer),
            "attendees": attendees.iter().map(|a| {
                let mut v = addr(a);
                v["type"] = "required".into();
                v
            }).collect::<Vec<_>>(),
            "start": {"dateTime": "2026-03-02T15:00:00.0000000", "timeZone": "UTC"},
            "end": {"dateTime": "2026-03-02T15:30:00.0000000", "timeZone": "UTC"},
            "isCancelled": false,
            "isAllDay": false,
            "sensitivity": "normal",
            "type": "singleInstance",
            "lastModifiedDateTime": "2026-02-20T08:00:00.0000000Z"
        })
    }

    fn ms(s: &str) -> i64 {
        DateTime::parse_from_rfc3339(s).unwrap().timestamp_millis()
    }

    // ---- conversion of messages

    #[test]
    fn message_keeps_only_the_metadata() {
        let c = converter(&[]);
        let Some(Activity::Email(e)) = c.message(&message(
            "owner@contoso.com",
            &["bob@fabrikam.com"],
            &["Colleague@Contoso.com"],
        )) else {
            panic!("kept")
        };
        assert_eq!(e.message_key, pz().hash_value("<m1@fabrikam.com>"));
        assert_eq!(e.conversation_key, pz().hash_value("conv-1"));
        assert_eq!(e.mailbox, guid_bytes(MAILBOX).unwrap());
        assert_eq!(e.sent_at_ms, ms("2026-03-01T10:00:00Z"));
        assert_eq!(e.from, Party::Internal(guid_bytes(MAILBOX).unwrap()));
        assert_eq!(
            e.recipients,
            vec![
                ext("bob@fabrikam.com"),
                Party::Internal(guid_bytes(COLLEAGUE).unwrap())
            ]
        );
    }

    #[test]
    fn message_internal_only_drafts_and_removed_are_dropped() {
        let c = converter(&[]);
        assert!(
            c.message(&message("owner@contoso.com", &["someone@contoso.com"], &[]))
                .is_none()
        );
        let mut draft = message("owner@contoso.com", &["bob@fabrikam.com"], &[]);
        draft["isDraft"] = true.into();
        assert!(c.message(&draft).is_none());
        let removed = serde_json::json!({"id": "x", "@removed": {"reason": "deleted"}});
        assert!(c.message(&removed).is_none());
    }

    #[test]
    fn message_falls_back_to_received_time_and_item_id() {
        let c = converter(&[]);
        let mut m = message("bob@fabrikam.com", &["owner@contoso.com"], &[]);
        m.as_object_mut().unwrap().remove("sentDateTime");
        m.as_object_mut().unwrap().remove("internetMessageId");
        let Some(Activity::Email(e)) = c.message(&m) else {
            panic!("kept")
        };
        assert_eq!(e.sent_at_ms, ms("2026-03-01T10:00:05Z"));
        assert_eq!(e.message_key, pz().hash_value("AAMk-msg"));
        assert_eq!(e.from, ext("bob@fabrikam.com"));
    }

    #[test]
    fn exclusions_drop_participants_before_hashing() {
        let c = converter(&["@gmail.com", "CEO@fabrikam.com"]);
        // Excluded recipients vanish; what is left must still involve an external party.
        let Some(Activity::Email(e)) = c.message(&message(
            "owner@contoso.com",
            &["x@gmail.com", "ceo@fabrikam.com", "bob@fabrikam.com"],
            &[],
        )) else {
            panic!("kept")
        };
        assert_eq!(e.recipients, vec![ext("bob@fabrikam.com")]);
        assert!(
            c.message(&message("owner@contoso.com", &["x@gmail.com"], &[]))
                .is_none()
        );
        // An excluded sender drops the message.
        assert!(
            c.message(&message(
                "x@gmail.com",
                &["owner@contoso.com", "bob@fabrikam.com"],
                &[]
            ))
            .is_none()
        );
    }

    #[test]
    fn exclusion_matching() {
        let x = Exclusions::new(&[" @Gmail.com ".into(), "ceo@fabrikam.com".into(), "".into()]);
        assert!(x.excludes("a@gmail.com"));
        assert!(!x.excludes("a@notgmail.com"));
        assert!(!x.excludes("a@gmail.com.evil"));
        assert!(x.excludes("ceo@fabrikam.com"));
        assert!(!x.excludes("cfo@fabrikam.com"));
    }

    #[test]
    fn internal_detection() {
        let org = Organization::new(
            [
                "Contoso.com".to_string(),
                "contoso.onmicrosoft.com".to_string(),
            ],
            [("owner@fabrikam-partner.com".to_string(), [1u8; 16])],
        );
        assert!(org.is_internal("a@contoso.com"));
        assert!(org.is_internal("a@contoso.onmicrosoft.com"));
        assert!(!org.is_internal("a@sub.contoso.com"));
        assert!(!org.is_internal("a@fabrikam.com"));
        // A chosen mailbox outside the org domains is internal.
        assert!(org.is_internal("owner@fabrikam-partner.com"));
        // Exchange legacy DN forms carry no domain and are internal.
        assert!(
            org.is_internal(
                "/o=exchangelabs/ou=exchange administrative group/cn=recipients/cn=abc"
            )
        );
        let c = converter(&[]);
        assert_eq!(
            c.party("Someone@Contoso.com"),
            Some(Party::Internal(pz().hash_address("someone@contoso.com")))
        );
        assert_eq!(
            c.party("owner@contoso.com"),
            Some(Party::Internal(guid_bytes(MAILBOX).unwrap()))
        );
        assert_eq!(c.party("bob@fabrikam.com"), Some(ext("bob@fabrikam.com")));
        assert_eq!(c.party("  "), None);
    }

    #[test]
    fn non_guid_object_ids_are_hashed() {
        let p = pz();
        assert_eq!(object_key(&p, MAILBOX), guid_bytes(MAILBOX).unwrap());
        assert_eq!(object_key(&p, "not-a-guid"), p.hash_value("not-a-guid"));
    }

    #[test]
    fn message_delta_doc_sample_parses_without_keeping_anything() {
        // The doc sample selects sender/subject only (no from, no times): nothing usable, nothing kept,
        // and in particular no subject ever reaches a record.
        let c = converter(&[]);
        let page = items("message-delta.round1.page1.json");
        assert_eq!(page.len(), 2);
        assert!(
            page.iter()
                .all(|m| c.convert(Stream::Inbox, m, 0).is_none())
        );
        // With the fields of §6 present, the same items are kept when they involve an external party.
        let mut m = page[0].clone();
        m["from"] = m["sender"].clone();
        m["toRecipients"] = serde_json::json!([addr("bob@fabrikam.com")]);
        m["sentDateTime"] = "2016-12-09T20:30:00Z".into();
        let Some(Activity::Email(e)) = c.convert(Stream::Inbox, &m, 0) else {
            panic!("kept")
        };
        assert_eq!(e.message_key, pz().hash_value("AAMkADNkNAAASq35xAAA="));
        assert_eq!(
            e.from,
            Party::Internal(pz().hash_address("danas@contoso.com"))
        );
    }

    // ---- conversion of events

    #[test]
    fn event_keeps_times_parties_and_version() {
        let c = converter(&[]);
        let Some(Activity::Meeting(m)) = c.event(
            &event(
                "owner@contoso.com",
                &["bob@fabrikam.com", "room@contoso.com"],
            ),
            1,
        ) else {
            panic!("kept")
        };
        assert_eq!(m.uid_key, pz().hash_value("uid-1"));
        assert_eq!(m.event_key, pz().hash_value(&format!("{MAILBOX}AAMk-evt")));
        assert_eq!(m.mailbox, guid_bytes(MAILBOX).unwrap());
        assert_eq!(m.version_ms, ms("2026-02-20T08:00:00Z"));
        assert_eq!(m.start_ms, ms("2026-03-02T15:00:00Z"));
        assert_eq!(m.end_ms, ms("2026-03-02T15:30:00Z"));
        assert!(!m.cancelled);
        assert_eq!(m.organizer, Party::Internal(guid_bytes(MAILBOX).unwrap()));
        assert_eq!(
            m.attendees,
            vec![
                ext("bob@fabrikam.com"),
                Party::Internal(pz().hash_address("room@contoso.com"))
            ]
        );
    }

    #[test]
    fn event_cancelled_internal_only_private_and_missing_version() {
        let c = converter(&[]);
        let mut e = event("bob@fabrikam.com", &["owner@contoso.com"]);
        e["isCancelled"] = true.into();
        e.as_object_mut().unwrap().remove("lastModifiedDateTime");
        let Some(Activity::Meeting(m)) = c.event(&e, 42) else {
            panic!("kept")
        };
        assert!(m.cancelled);
        assert_eq!(m.version_ms, 42);
        assert!(
            c.event(&event("owner@contoso.com", &["a@contoso.com"]), 1)
                .is_none()
        );
        for sensitivity in ["private", "Personal"] {
            let mut p = event("owner@contoso.com", &["bob@fabrikam.com"]);
            p["sensitivity"] = sensitivity.into();
            assert_eq!(
                c.event(&p, 7),
                Some(Activity::MeetingRemoved(MeetingRemoved {
                    mailbox: c.mailbox(),
                    event_key: c.event_key("AAMk-evt"),
                    removed_at_ms: 7
                })),
                "a private event leaves only a tombstone"
            );
        }
    }

    #[test]
    fn event_delta_round1_sample() {
        // Organizer samanthab@contoso.onmicrosoft.com, no attendees: external for a tenant without that
        // domain, internal-only (dropped) for one with it.
        let c = converter(&[]);
        let page = items("event-delta.round1.page1.json");
        let kept: Vec<Activity> = page
            .iter()
            .filter_map(|e| c.convert(Stream::Calendar, e, 5))
            .collect();
        assert_eq!(kept.len(), 2);
        let Activity::Meeting(m) = &kept[0] else {
            panic!("meeting")
        };
        assert_eq!(m.start_ms, ms("2016-12-09T20:30:00Z"));
        assert_eq!(m.end_ms, ms("2016-12-09T22:00:00Z"));
        assert_eq!(m.organizer, ext("samanthab@contoso.onmicrosoft.com"));
        // No iCalUId in the doc sample: the event id stands in; no lastModifiedDateTime: now.
        assert_eq!(m.uid_key, pz().hash_value("AAMkADNVxRAAA="));
        assert_eq!(m.version_ms, 5);
        let own = Converter::new(
            pz(),
            Organization::new(["contoso.onmicrosoft.com".to_string()], []),
            Exclusions::default(),
            MAILBOX,
        );
        assert!(
            page.iter()
                .all(|e| own.convert(Stream::Calendar, e, 5).is_none())
        );
    }

    #[test]
    fn event_delta_round2_sample_has_a_tombstone() {
        let c = converter(&[]);
        let page = items("event-delta.round2.page1.json");
        let kept: Vec<Activity> = page
            .iter()
            .filter_map(|e| c.convert(Stream::Calendar, e, 99))
            .collect();
        assert_eq!(kept.len(), 2);
        assert_eq!(
            kept[0],
            Activity::MeetingRemoved(MeetingRemoved {
                mailbox: guid_bytes(MAILBOX).unwrap(),
                event_key: pz().hash_value(&format!(
                    "{MAILBOX}AAMkADk0MGFkODE3LWE4MmYtNDRhOS04OGQLkRkXbBznTvAADb6ytyAAA="
                )),
                removed_at_ms: 99,
            })
        );
        assert!(
            matches!(&kept[1], Activity::Meeting(m) if m.start_ms == ms("2016-12-25T06:00:00Z"))
        );
        // Removed message entries are ignored instead.
        let messages = items("message-delta.round2.page1.json");
        assert!(
            messages
                .iter()
                .all(|m| c.convert(Stream::Inbox, m, 99).is_none())
        );
    }

    #[test]
    fn event_get_attendees_sample() {
        let c = converter(&[]);
        let e = &items("event-get.attendees.json")[0];
        let Some(Activity::Meeting(m)) = c.convert(Stream::Calendar, e, 0) else {
            panic!("kept")
        };
        assert_eq!(m.organizer, ext("engineering@m365x214355.onmicrosoft.com"));
        assert_eq!(
            m.attendees,
            vec![
                ext("engineering@M365x214355.onmicrosoft.com"),
                ext("irvins@m365x214355.onmicrosoft.com")
            ]
        );
        assert_eq!(m.start_ms, ms("2014-11-03T17:00:00Z"));
        assert_eq!(m.end_ms - m.start_ms, 30 * 60 * 1000);
        // Excluding the organizer's domain drops the whole event.
        let c = converter(&["@m365x214355.onmicrosoft.com"]);
        assert!(c.convert(Stream::Calendar, e, 0).is_none());
    }

    #[test]
    fn date_time_zones() {
        let utc = serde_json::json!({"dateTime": "2026-03-02T15:00:00.0000000", "timeZone": "UTC"});
        assert_eq!(parse_date_time_zone(&utc), Some(ms("2026-03-02T15:00:00Z")));
        let ny = serde_json::json!({"dateTime": "2026-07-01T09:00:00.0000000", "timeZone": "America/New_York"});
        assert_eq!(parse_date_time_zone(&ny), Some(ms("2026-07-01T13:00:00Z")));
        let windows = serde_json::json!({"dateTime": "2026-07-01T09:00:00", "timeZone": "Pacific Standard Time"});
        assert_eq!(
            parse_date_time_zone(&windows),
            Some(ms("2026-07-01T09:00:00Z"))
        );
        let offset =
            serde_json::json!({"dateTime": "2026-07-01T09:00:00+02:00", "timeZone": "UTC"});
        assert_eq!(
            parse_date_time_zone(&offset),
            Some(ms("2026-07-01T07:00:00Z"))
        );
        // A local time skipped by a DST change falls back to UTC instead of failing.
        let gap =
            serde_json::json!({"dateTime": "2026-03-08T02:30:00", "timeZone": "America/New_York"});
        assert_eq!(parse_date_time_zone(&gap), Some(ms("2026-03-08T02:30:00Z")));
        assert_eq!(
            parse_date_time_zone(&serde_json::json!({"dateTime": "garbage"})),
            None
        );
        assert_eq!(
            parse_instant_ms("2026-02-20T08:00:00.1234567Z"),
            Some(ms("2026-02-20T08:00:00.123Z"))
        );
    }

    // ---- URLs

    #[test]
    fn initial_urls() {
        let as_of: DateTime<Utc> = "2026-03-10T12:00:00Z".parse().unwrap();
        assert_eq!(
            Stream::SentItems.initial_path("u1", as_of),
            "/users/u1/mailFolders/sentitems/messages/delta?$select=from,toRecipients,ccRecipients,sentDateTime,receivedDateTime,internetMessageId,conversationId,isDraft"
        );
        assert_eq!(
            Stream::Calendar.initial_path("u1", as_of),
            "/users/u1/calendarView/delta?startDateTime=2025-03-10T12:00:00Z&endDateTime=2026-04-09T12:00:00Z"
        );
        assert!(
            Stream::Calendar
                .prefer()
                .contains("outlook.timezone=\"UTC\"")
        );
        assert!(
            Stream::ALL
                .iter()
                .all(|s| s.prefer().contains("odata.maxpagesize=1000"))
        );
    }

    // ---- cursors

    fn cursor(
        run: &str,
        next: Option<&str>,
        delta: Option<&str>,
        chunk: u32,
        complete: bool,
    ) -> Cursor {
        Cursor {
            delta_link: delta.map(str::to_string),
            next_link: next.map(str::to_string),
            run_id: run.into(),
            chunk,
            complete,
            window_as_of: None,
        }
    }

    #[test]
    fn calendar_windows_are_renewed_weekly() {
        let t: DateTime<Utc> = "2026-11-30T00:00:00Z".parse().expect("instant");
        assert!(
            calendar_window_stale(None, t),
            "a cursor without a window is renewed"
        );
        assert!(!calendar_window_stale(
            Some(t - chrono::Duration::days(7)),
            t
        ));
        assert!(calendar_window_stale(
            Some(t - chrono::Duration::days(8)),
            t
        ));
    }

    #[test]
    fn resume_choice() {
        assert_eq!(resume_point(None, "r2"), (Resume::Full, 0));
        // Same run: continue at the saved link, keeping the chunk numbering.
        let c = cursor("r2", Some("N"), Some("D"), 3, false);
        assert_eq!(
            resume_point(Some(&c), "r2"),
            (Resume::Continue("N".into()), 3)
        );
        // Another run's unfinished round is abandoned: its last delta link starts the new round.
        assert_eq!(
            resume_point(Some(&c), "r3"),
            (Resume::Incremental("D".into()), 0)
        );
        let c = cursor("r1", None, Some("D"), 7, true);
        assert_eq!(
            resume_point(Some(&c), "r2"),
            (Resume::Incremental("D".into()), 0)
        );
        assert_eq!(resume_point(Some(&c), "r1").0, Resume::AlreadyComplete);
        let c = cursor("r1", Some("N"), None, 2, false);
        assert_eq!(resume_point(Some(&c), "r2"), (Resume::Full, 0));
        // Same run after a dropped sync state: links gone, numbering kept.
        let c = cursor("r2", None, None, 4, false);
        assert_eq!(resume_point(Some(&c), "r2"), (Resume::Full, 4));
    }

    #[test]
    fn cursor_document_shape() {
        let c = cursor("r1", Some("N"), None, 2, false);
        let v = serde_json::to_value(&c).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"delta_link": null, "next_link": "N", "run_id": "r1", "chunk": 2, "complete": false, "window_as_of": null})
        );
        let old: Cursor = serde_json::from_value(serde_json::json!({"delta_link": "D"})).unwrap();
        assert_eq!(old, cursor("", None, Some("D"), 0, false));
        assert_eq!(cursor_sk("mb", Stream::Calendar), "CURSOR#mb#calendar");
    }

    // ---- deadline

    #[test]
    fn deadline_margin() {
        assert_eq!(
            safety_margin(Duration::from_secs(900)),
            Duration::from_secs(60)
        );
        assert_eq!(
            safety_margin(Duration::from_secs(8)),
            Duration::from_secs(2)
        );
        assert_eq!(safety_margin(Duration::ZERO), Duration::ZERO);
        let start = Instant::now();
        let budget = TimeBudget::new(start, start + Duration::from_secs(8));
        assert_eq!(budget.margin(), Duration::from_secs(2));
        assert!(!budget.must_stop(start));
        assert!(!budget.must_stop(start + Duration::from_millis(5_999)));
        assert!(budget.must_stop(start + Duration::from_secs(6)));
        assert!(budget.must_stop(start + Duration::from_secs(60)));
        assert_eq!(budget.request_limit(start), Duration::from_secs(7));
        assert_eq!(
            budget.request_limit(start + Duration::from_secs(9)),
            Duration::ZERO
        );
        let past = TimeBudget::new(start, start);
        assert!(past.must_stop(start));
    }

    #[test]
    fn stream_ends_combine() {
        use StreamEnd::*;
        assert_eq!(
            combine_ends(vec![Ok(Complete), Ok(Complete), Ok(Complete)]).unwrap(),
            Complete
        );
        assert_eq!(
            combine_ends(vec![Ok(Complete), Ok(Paused), Ok(Complete)]).unwrap(),
            Paused
        );
        assert_eq!(
            combine_ends(vec![Ok(Paused), Ok(Stopped), Ok(Complete)]).unwrap(),
            Stopped
        );
        let failed = combine_ends(vec![
            Ok(Paused),
            Err(PortError::Io("s3 down".into()).into()),
            Ok(Stopped),
        ]);
        assert!(matches!(failed, Err(DownloadError::Port(_))));
    }

    #[test]
    fn error_texts_are_log_safe() {
        let e: DownloadError = GraphError::Status {
            status: 404,
            code: "ErrorMailboxNotFound".into(),
            message: "mailbox alice@contoso.com not found".into(),
        }
        .into();
        assert_eq!(
            e.to_string(),
            "Microsoft Graph: HTTP 404 ErrorMailboxNotFound"
        );
        let e: DownloadError = GraphError::Transport(
            "error sending request for url (https://x/?$skiptoken=abc)".into(),
        )
        .into();
        assert!(!e.to_string().contains("skiptoken"));
    }

    // ---- S3 layout

    fn chunk_id(stream: Stream, chunk: u32) -> ChunkId<'static> {
        ChunkId {
            enrichment_id: "enr1",
            mailbox_id: MAILBOX,
            stream,
            run_id: "run1",
            chunk,
        }
    }

    #[test]
    fn object_keys() {
        assert_eq!(
            activity_key(&chunk_id(Stream::Inbox, 7), Some(3)),
            format!("activity/enr1/p03/{MAILBOX}/inbox/run1-00007.bin")
        );
        assert_eq!(
            activity_key(&chunk_id(Stream::Calendar, 12), None),
            format!("activity/enr1/removed/{MAILBOX}/run1-00012.bin")
        );
    }

    fn sample_records() -> Vec<Activity> {
        let c = converter(&[]);
        let mut records = Vec::new();
        for i in 0..40 {
            let mut m = message("owner@contoso.com", &["bob@fabrikam.com"], &[]);
            m["conversationId"] = format!("conv-{i}").into();
            m["internetMessageId"] = format!("<{i}@x>").into();
            records.extend(c.message(&m));
        }
        records.extend(c.event(
            &serde_json::json!({"id": "gone", "@removed": {"reason": "deleted"}}),
            1,
        ));
        records
    }

    #[test]
    fn grouping_by_partition() {
        let records = sample_records();
        let groups = group_by_partition(records.clone());
        assert_eq!(groups.values().map(Vec::len).sum::<usize>(), records.len());
        assert_eq!(groups.get(&None).map(Vec::len), Some(1));
        assert!(
            groups.len() > 2,
            "40 conversations spread over several partitions"
        );
        for (p, group) in &groups {
            assert!(p.is_none_or(|p| p < PARTITIONS));
            assert!(group.iter().all(|r| activity::partition_of(r) == *p));
        }
    }

    #[derive(Default)]
    struct MemBlobs(Mutex<BTreeMap<String, Vec<u8>>>);

    #[async_trait]
    impl Blobs for MemBlobs {
        async fn get(&self, _: &str, key: &str) -> Result<Option<Vec<u8>>, PortError> {
            Ok(self.0.lock().unwrap().get(key).cloned())
        }
        async fn get_head(
            &self,
            b: &str,
            key: &str,
            _: Option<usize>,
        ) -> Result<Option<Vec<u8>>, PortError> {
            self.get(b, key).await
        }
        async fn put(&self, _: &str, key: &str, body: Vec<u8>, _: &str) -> Result<(), PortError> {
            self.0.lock().unwrap().insert(key.to_string(), body);
            Ok(())
        }
        async fn list(&self, _: &str, prefix: &str) -> Result<Vec<String>, PortError> {
            Ok(self
                .0
                .lock()
                .unwrap()
                .keys()
                .filter(|k| k.starts_with(prefix))
                .cloned()
                .collect())
        }
        async fn delete_prefix(&self, _: &str, _: &str) -> Result<usize, PortError> {
            Ok(0)
        }
    }

    #[tokio::test]
    async fn chunks_round_trip_and_rewrites_overwrite() {
        let blobs = MemBlobs::default();
        let records = sample_records();
        let written = write_chunk(&blobs, "b", &chunk_id(Stream::Calendar, 0), records.clone())
            .await
            .unwrap();
        // Writing the same chunk again (a redelivered job) replaces the objects instead of adding.
        assert_eq!(
            write_chunk(&blobs, "b", &chunk_id(Stream::Calendar, 0), records.clone())
                .await
                .unwrap(),
            written
        );
        let keys = blobs.list("b", "activity/enr1/").await.unwrap();
        assert_eq!(keys.len(), written);
        let mut decoded = Vec::new();
        for key in &keys {
            let body = blobs.get("b", key).await.unwrap().unwrap();
            let group: Vec<Activity> = ActivityReader::new(&body).map(|r| r.unwrap()).collect();
            if key.contains("/removed/") {
                assert!(
                    group
                        .iter()
                        .all(|r| matches!(r, Activity::MeetingRemoved(_)))
                );
            } else {
                let p: u16 = key["activity/enr1/p".len()..][..2].parse().unwrap();
                assert!(group.iter().all(|r| activity::partition_of(r) == Some(p)));
            }
            decoded.extend(group);
        }
        assert_eq!(decoded.len(), records.len());
        assert!(records.iter().all(|r| decoded.contains(r)));
        assert_eq!(
            write_chunk(&blobs, "b", &chunk_id(Stream::Inbox, 1), Vec::new())
                .await
                .unwrap(),
            0
        );
    }
}
