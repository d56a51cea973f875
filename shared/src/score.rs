//! Aggregation and the engagement score (DESIGN §7), exact and independent of input order.
//!
//! # Flow
//!
//! [`Scorer::new`] takes the contact index (contact hash → accounts), the as-of instant `T` and the
//! enrichment's [`ScoreParams`]. [`Scorer::add_removed`] loads the small tombstone stream first, then
//! [`Scorer::add_partition`] (or [`Scorer::add_partition_bytes`], the zero-allocation path) is called once per
//! activity partition. A partition holds every copy of its emails (partitioned by conversation, so the reply
//! rule sees whole conversations) and every version of its meetings (partitioned by iCalUId). Inside a
//! partition the scorer dedupes and aggregates; afterwards it keeps only per-account accumulators, so memory
//! is bounded by accounts, contacts and internal people plus one partition of activity.
//! [`Scorer::finish`] computes the per-level columns, the percentiles and the scores.
//!
//! # Rules and the choices made where §7 leaves room
//!
//! * `T` is truncated to the millisecond (activity times are milliseconds, so window membership
//!   `T − window < t ≤ T` is unaffected). Future activity (`t > T`) is never counted.
//! * Emails: one per `message_key` (the copies of a message share the conversation, hence the partition).
//!   When copies disagree, the canonical copy is the smallest by (mailbox, sent time, sender, recipients), a
//!   total order, so the choice does not depend on input order. Only `External` parties are matched against
//!   contacts; `Internal` parties are the "internal people" of the contacts-involved columns.
//! * Meetings: versions of one `uid_key` compete; a version is *void* when its `(mailbox, event_key)` has a
//!   [`MeetingRemoved`] with `removed_at_ms ≥ version_ms` (the tombstone removes what that mailbox had seen
//!   up to then; an event re-created or modified after the removal is live again). The live version with the
//!   greatest `version_ms` wins; on a tie a cancelled version wins (cancellation is final), then the smallest
//!   by (mailbox, event key, start, end, organizer, attendees). A cancelled winner, or no live version, means
//!   the meeting does not count. A meeting's time is its start; its duration `max(0, end − start)`.
//! * Reply rule: for each copy of an email from a contact of `a`, the antecedent is the latest email
//!   *strictly* before it in the same mailbox and conversation that was sent by an internal person with a
//!   contact of `a` in to/cc (the antecedent itself may lie outside the window). A reply seen in several
//!   mailboxes counts once per account with its shortest time; it belongs to a level when the reply (its
//!   canonical copy's sent time) is in that level's window. Each copy contributes its own mailbox and sent
//!   time; who sent it and to whom is taken from the canonical copy (Graph copies of one message agree).
//! * Memory: per account a fixed block (three window buckets, 54 week cells once used, a sorted vector of
//!   the internal people met); per (contact, account) pair two bytes; partition working memory is
//!   reused. Large lookups use a flat open-addressing table so a probe is one cache miss.
//! * Recency weights are converted once per activity to fixed point (units of `2^-62`; a to-account email
//!   adds `u = round(w·2^61)`, a from-account email and a meeting `2u`) and summed as integers. Integer sums
//!   are associative, so `E` and `M` — and every `≤` comparison behind the percentiles — are identical
//!   whatever the order of records and partitions. All other aggregates are counts, minima, maxima and set
//!   unions, which are order-independent too.
//! * `EngagementScore = floor(100·(wE·P_E + wM·P_M + wB·P_B) + 0.5 + 1e-9)` clamped to 0..=100 (the epsilon
//!   makes 49.99999999999 from float noise round like 50 would). Averages are computed in integers and
//!   rounded half up to one decimal; days since = floor of whole days.
//! * Summary (§9): `emails_processed`/`meetings_processed` = distinct counted-able emails/meetings (live,
//!   not cancelled) in the Year window with at least one external party, matched or not; `days_aggregated =
//!   min(365, days from the earliest such activity's date to T's date + 1)` (0 when none);
//!   `enriched_customers` = accounts with a Year row.
//!
//! # Sharding across invocations with exact global percentiles
//!
//! Everything before the percentiles is a per-account accumulator that merges exactly: counts and the
//! fixed-point `E`/`M` sums add, first/last times take min/max, the distinct sets (internal people and
//! contacts per account, each stored with the smallest level it was seen at) union. Two ways to split:
//!
//! 1. *By account hash* (what §12 asks for at 100,000+ accounts): invocation `k` of `S` builds its
//!    [`ContactIndex`] only from accounts with `hash(account_id) mod S = k` and reads all partitions; activity
//!    not involving its accounts is skipped, so its memory is ~1/S of the accounts and contacts. Each shard
//!    writes, per account and level, its finished columns plus the exact integer triple `(E, M, B)`. A small
//!    final step collects the triples of all accounts (≈ 100,000 × 3 × 40 bytes), sorts each component per
//!    level and computes `P_X` by counting `≤` on the integers — exactly the single-invocation result,
//!    because `E`/`M` are integers, not order-dependent float sums. The summary counts are computed by one
//!    shard (they do not depend on the contact index).
//! 2. *By partition*: invocation `k` processes a subset of the 16 partitions with the full index and
//!    writes its raw accumulators; a merge step adds/unions them, then ranks as above. Partitions never
//!    share a message or a meeting, so no dedupe crosses shard boundaries.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

use chrono::{DateTime, Duration, NaiveDate, Utc};
use serde::{Deserialize, Serialize};

use crate::activity::{
    Activity, ActivityError, ActivityReader, ActivityRef, MeetingRemoved, Party,
};
use crate::contacts::ContactSet;
use crate::privacy::{Id16, Pseudonymizer};

const DAY_MS: i64 = 86_400_000;
/// Bucket value meaning "not in any window".
const NONE: u8 = 3;
const EMAIL_TO: usize = 0;
const EMAIL_FROM: usize = 1;
const MEET_TO: usize = 2;
const MEET_FROM: usize = 3;
/// Fixed point of a half weight: `u = round(w · 2^61)`.
const HALF_UNIT: f64 = (1u64 << 61) as f64;

// ---------------------------------------------------------------------------------------------------------
// Parameters and levels

/// Per-enrichment score settings (DESIGN §7; weights sum to 1).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ScoreParams {
    pub half_life_days: f64,
    pub weight_email: f64,
    pub weight_meeting: f64,
    pub weight_breadth: f64,
}

impl Default for ScoreParams {
    fn default() -> Self {
        Self {
            half_life_days: 90.0,
            weight_email: 0.4,
            weight_meeting: 0.4,
            weight_breadth: 0.2,
        }
    }
}

impl ScoreParams {
    /// Field errors as `(field, message)`: a positive finite half-life, weights in 0..=1 summing to 1
    /// (within 1e-6).
    pub fn validate(&self) -> Vec<(&'static str, String)> {
        let mut errs = Vec::new();
        if !(self.half_life_days.is_finite() && self.half_life_days > 0.0) {
            errs.push((
                "half_life_days",
                "must be a positive number of days".to_string(),
            ));
        }
        let ws = [
            ("weights.email", self.weight_email),
            ("weights.meeting", self.weight_meeting),
            ("weights.breadth", self.weight_breadth),
        ];
        for (f, w) in ws {
            if !(w.is_finite() && (0.0..=1.0).contains(&w)) {
                errs.push((f, "must be between 0 and 1".to_string()));
            }
        }
        let sum = self.weight_email + self.weight_meeting + self.weight_breadth;
        if errs.is_empty() && (sum - 1.0).abs() > 1e-6 {
            errs.push(("weights", format!("must sum to 1 (they sum to {sum})")));
        }
        errs
    }
}

/// Aggregation level: window of 7, 30 or 365 days ending at T.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Level {
    Week,
    Month,
    Year,
}

impl Level {
    pub const ALL: [Level; 3] = [Level::Week, Level::Month, Level::Year];

    pub fn window_days(self) -> i64 {
        match self {
            Level::Week => 7,
            Level::Month => 30,
            Level::Year => 365,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Level::Week => "Week",
            Level::Month => "Month",
            Level::Year => "Year",
        }
    }

    fn index(self) -> usize {
        self as usize
    }

    /// Date of `T − window + 1 day`.
    pub fn aggregation_start_date(self, as_of: DateTime<Utc>) -> NaiveDate {
        (as_of - Duration::days(self.window_days() - 1)).date_naive()
    }
}

impl std::fmt::Display for Level {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Level {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "Week" => Ok(Level::Week),
            "Month" => Ok(Level::Month),
            "Year" => Ok(Level::Year),
            _ => Err(format!("unknown level '{s}' (Week, Month or Year)")),
        }
    }
}

// ---------------------------------------------------------------------------------------------------------
// Output shapes

/// One `Office` row (DESIGN §8).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OfficeRow {
    pub account_id: String,
    pub level: Level,
    pub aggregation_start_date: NaiveDate,
    pub engagement_score: u8,
    pub emails_to_account: u64,
    pub emails_from_account: u64,
    pub meetings_to_account: u64,
    pub meetings_from_account: u64,
    pub contacts_involved_emails: u64,
    pub contacts_involved_meetings: u64,
    pub account_contacts_involved_emails: u64,
    pub account_contacts_involved_meetings: u64,
    pub engagement_start_date: Option<NaiveDate>,
    pub days_since_last_email: Option<i64>,
    pub days_since_last_meeting: Option<i64>,
    pub average_duration_of_meetings: Option<f64>,
    pub average_duration_of_account_email_replies: Option<f64>,
}

/// One `Office_History` row (DESIGN §8).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryRow {
    pub account_id: String,
    pub week_start: NaiveDate,
    pub emails_to_account: u64,
    pub emails_from_account: u64,
    pub meetings_to_account: u64,
    pub meetings_from_account: u64,
}

/// A weekly point of the customer card (DESIGN §9).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryPoint {
    pub week_start: NaiveDate,
    pub emails_to_account: u64,
    pub emails_from_account: u64,
    pub meetings_to_account: u64,
    pub meetings_from_account: u64,
}

/// The percentiles behind the score, each in 0..=1.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Components {
    pub email: f64,
    pub meeting: f64,
    pub breadth: f64,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Totals {
    pub emails_to_account: u64,
    pub emails_from_account: u64,
    pub meetings_to_account: u64,
    pub meetings_from_account: u64,
}

/// Score, components and totals of one level (all zero when the account has no activity in it).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct CardLevel {
    pub score: u8,
    pub components: Components,
    pub totals: Totals,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct CardLevels {
    pub week: CardLevel,
    pub month: CardLevel,
    pub year: CardLevel,
}

impl CardLevels {
    pub fn get(&self, level: Level) -> &CardLevel {
        match level {
            Level::Week => &self.week,
            Level::Month => &self.month,
            Level::Year => &self.year,
        }
    }

    fn get_mut(&mut self, level: Level) -> &mut CardLevel {
        match level {
            Level::Week => &mut self.week,
            Level::Month => &mut self.month,
            Level::Year => &mut self.year,
        }
    }
}

/// What the customer card needs for an account (cards exist for accounts with a Year row).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AccountCard {
    pub account_id: String,
    pub levels: CardLevels,
    /// Weeks of the Year window with activity, oldest first.
    pub history: Vec<HistoryPoint>,
}

/// The §9 customer-card JSON shape for one period.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CardView {
    pub account_id: String,
    pub period: Level,
    pub score: u8,
    pub components: Components,
    pub totals: Totals,
    pub history: Vec<HistoryPoint>,
}

impl AccountCard {
    pub fn view(&self, period: Level) -> CardView {
        let l = self.levels.get(period);
        CardView {
            account_id: self.account_id.clone(),
            period,
            score: l.score,
            components: l.components,
            totals: l.totals,
            history: self.history.clone(),
        }
    }
}

/// Run summary, as DESIGN §9 "results" defines it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunSummary {
    pub enriched_customers: u64,
    pub emails_processed: u64,
    pub meetings_processed: u64,
    pub days_aggregated: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScoreOutcome {
    /// Sorted by account id, then Week, Month, Year.
    pub office: Vec<OfficeRow>,
    /// Sorted by account id, then week.
    pub history: Vec<HistoryRow>,
    /// Sorted by account id.
    pub cards: Vec<AccountCard>,
    pub summary: RunSummary,
}

// ---------------------------------------------------------------------------------------------------------
// Hashing for 16-byte random ids (keyed hashes / GUIDs; not attacker-controllable without the key)

#[derive(Default, Clone, Copy)]
struct IdHasher(u64);

impl IdHasher {
    #[inline]
    fn mix(&mut self, x: u64) {
        let m = u128::from(self.0 ^ x) * 0x9E37_79B9_7F4A_7C15_u128;
        self.0 = (m as u64) ^ ((m >> 64) as u64);
    }
}

impl Hasher for IdHasher {
    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            let mut b = [0u8; 8];
            b.copy_from_slice(c);
            self.mix(u64::from_le_bytes(b));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut b = [0u8; 8];
            b[..rest.len()].copy_from_slice(rest);
            self.mix(u64::from_le_bytes(b) ^ ((rest.len() as u64) << 59));
        }
    }
    #[inline]
    fn write_u8(&mut self, i: u8) {
        self.mix(u64::from(i));
    }
    #[inline]
    fn write_u32(&mut self, i: u32) {
        self.mix(u64::from(i));
    }
    #[inline]
    fn write_u64(&mut self, i: u64) {
        self.mix(i);
    }
    #[inline]
    fn write_usize(&mut self, i: usize) {
        self.mix(i as u64);
    }
    #[inline]
    fn finish(&self) -> u64 {
        self.0
    }
}

type FastMap<K, V> = HashMap<K, V, BuildHasherDefault<IdHasher>>;

#[derive(Debug, Clone, Copy)]
struct Slot<V> {
    key: Id16,
    full: bool,
    val: V,
}

/// Open-addressing (linear probing) table keyed by 16-byte ids. Key and value share a slot, so a lookup
/// in a large table is normally a single cache miss (a `HashMap` touches its control bytes and its
/// bucket array separately).
#[derive(Debug, Clone)]
struct IdTable<V> {
    slots: Vec<Slot<V>>,
    mask: usize,
    shift: u32,
    len: usize,
}

impl<V: Copy + Default> Default for IdTable<V> {
    fn default() -> Self {
        Self::with_capacity(0)
    }
}

impl<V: Copy + Default> IdTable<V> {
    /// Slots for `n` keys at a load of at most 3/4.
    fn slots_for(n: usize) -> usize {
        (n.max(8) * 4 / 3 + 1).next_power_of_two()
    }

    fn with_capacity(n: usize) -> Self {
        let cap = Self::slots_for(n);
        Self {
            slots: vec![
                Slot {
                    key: [0; 16],
                    full: false,
                    val: V::default(),
                };
                cap
            ],
            mask: cap - 1,
            shift: 64 - cap.trailing_zeros(),
            len: 0,
        }
    }

    /// Empties the table, keeping (or growing to) room for `n` keys.
    fn reset(&mut self, n: usize) {
        if Self::slots_for(n) > self.slots.len() {
            *self = Self::with_capacity(n);
        } else if self.len > 0 {
            for s in &mut self.slots {
                s.full = false;
            }
            self.len = 0;
        }
    }

    fn len(&self) -> usize {
        self.len
    }

    #[inline]
    fn home(&self, key: &Id16) -> usize {
        let mut a = [0u8; 8];
        let mut b = [0u8; 8];
        a.copy_from_slice(&key[..8]);
        b.copy_from_slice(&key[8..]);
        let x = u64::from_le_bytes(a) ^ u64::from_le_bytes(b).rotate_left(29);
        (x.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> self.shift) as usize
    }

    #[inline]
    fn get(&self, key: &Id16) -> Option<V> {
        let mut i = self.home(key);
        loop {
            let s = &self.slots[i];
            if !s.full {
                return None;
            }
            if s.key == *key {
                return Some(s.val);
            }
            i = (i + 1) & self.mask;
        }
    }

    /// The slot of `key`, filled with `val` first when absent; `true` when it was inserted.
    #[inline]
    fn get_or_insert(&mut self, key: &Id16, val: V) -> (&mut V, bool) {
        if (self.len + 1) * 4 > self.slots.len() * 3 {
            self.grow();
        }
        let mut i = self.home(key);
        loop {
            if !self.slots[i].full {
                self.slots[i] = Slot {
                    key: *key,
                    full: true,
                    val,
                };
                self.len += 1;
                return (&mut self.slots[i].val, true);
            }
            if self.slots[i].key == *key {
                return (&mut self.slots[i].val, false);
            }
            i = (i + 1) & self.mask;
        }
    }

    fn grow(&mut self) {
        let old = std::mem::take(&mut self.slots);
        // Twice the slots: the load drops from 3/4 to 3/8.
        *self = Self::with_capacity(old.len() * 3 / 4);
        for s in old {
            if s.full {
                self.get_or_insert(&s.key, s.val);
            }
        }
    }

    fn values(&self) -> impl Iterator<Item = V> + '_ {
        self.slots.iter().filter(|s| s.full).map(|s| s.val)
    }
}

// ---------------------------------------------------------------------------------------------------------
// Contacts

/// Account lookup by contact hash; one contact may map to several accounts.
/// Accounts are numbered in account-id order, which is also the output order.
#[derive(Debug, Clone, Default)]
pub struct ContactIndex {
    accounts: Vec<String>,
    /// contact → range in `pair_accounts`.
    map: IdTable<(u32, u32)>,
    /// Account index of each (contact, account) pair; a pair's position is its id.
    pair_accounts: Vec<u32>,
}

impl ContactIndex {
    pub fn new(pairs: impl IntoIterator<Item = (String, Id16)>) -> Self {
        let mut v: Vec<(String, Id16)> = pairs.into_iter().collect();
        v.sort_unstable();
        v.dedup();
        let mut accounts: Vec<String> = Vec::new();
        let mut by_contact: Vec<(Id16, u32)> = Vec::with_capacity(v.len());
        for (account, hash) in v {
            if accounts.last() != Some(&account) {
                accounts.push(account);
            }
            by_contact.push((hash, (accounts.len() - 1) as u32));
        }
        by_contact.sort_unstable();
        let mut map = IdTable::with_capacity(by_contact.len());
        let mut pair_accounts = Vec::with_capacity(by_contact.len());
        let mut i = 0;
        while i < by_contact.len() {
            let h = by_contact[i].0;
            let start = pair_accounts.len() as u32;
            while i < by_contact.len() && by_contact[i].0 == h {
                pair_accounts.push(by_contact[i].1);
                i += 1;
            }
            map.get_or_insert(&h, (start, pair_accounts.len() as u32 - start));
        }
        Self {
            accounts,
            map,
            pair_accounts,
        }
    }

    /// Hashes a parsed contact set with the enrichment's pseudonymizer.
    pub fn from_contacts(set: &ContactSet, pseudonymizer: &Pseudonymizer) -> Self {
        Self::new(
            set.contacts
                .iter()
                .map(|c| (c.account_id.clone(), pseudonymizer.hash_address(&c.email))),
        )
    }

    /// Account ids, sorted.
    pub fn accounts(&self) -> &[String] {
        &self.accounts
    }

    /// Distinct contact hashes.
    pub fn contact_count(&self) -> usize {
        self.map.len()
    }

    /// The accounts a contact hash belongs to.
    pub fn accounts_of(&self, contact: &Id16) -> Vec<&str> {
        self.range(contact)
            .map(|(a, _)| self.accounts[a as usize].as_str())
            .collect()
    }

    /// `(account index, pair id)` of a contact.
    #[inline]
    fn range(&self, contact: &Id16) -> impl Iterator<Item = (u32, u32)> + '_ {
        let (start, len) = self.map.get(contact).unwrap_or((0, 0));
        (start..start + len).map(move |p| (self.pair_accounts[p as usize], p))
    }
}

// ---------------------------------------------------------------------------------------------------------
// Accumulators

/// Weeks (Monday starts) that can hold a day of the 365-day window.
const WEEKS: usize = 54;

#[derive(Debug, Clone, Copy)]
struct Clock {
    t_ms: i64,
    /// Exclusive lower bounds `T − window` of Week, Month, Year.
    lower: [i64; 3],
    half_life_days: f64,
    /// Day number (since 1970-01-01) of the Monday of the Year window's first day.
    first_monday: i64,
}

/// Day number of the Monday starting the week of `t` (1970-01-01 was a Thursday).
#[inline]
fn monday_of(t: i64) -> i64 {
    let days = t.div_euclid(DAY_MS);
    days - (days + 3).rem_euclid(7)
}

impl Clock {
    fn new(t_ms: i64, half_life_days: f64) -> Self {
        let lower = Level::ALL.map(|l| t_ms.saturating_sub(l.window_days() * DAY_MS));
        Self {
            t_ms,
            lower,
            half_life_days,
            first_monday: monday_of(lower[2].saturating_add(1)),
        }
    }

    /// 0 = Week window, 1 = Month but not Week, 2 = Year but not Month, NONE = outside or future.
    #[inline]
    fn bucket(&self, t: i64) -> u8 {
        if t > self.t_ms {
            NONE
        } else if t > self.lower[0] {
            0
        } else if t > self.lower[1] {
            1
        } else if t > self.lower[2] {
            2
        } else {
            NONE
        }
    }

    /// Fixed-point half weight `round(0.5^(age_days/H) · 2^61)`.
    #[inline]
    fn unit(&self, t: i64) -> u128 {
        let age_days = (self.t_ms - t) as f64 / DAY_MS as f64;
        let w = if self.half_life_days.is_finite() && self.half_life_days > 0.0 {
            0.5f64.powf(age_days / self.half_life_days)
        } else {
            1.0
        };
        (w * HALF_UNIT).round() as u128
    }

    /// Week slot of a time inside the Year window.
    #[inline]
    fn week(&self, t: i64) -> usize {
        ((monday_of(t) - self.first_monday) / 7) as usize
    }
}

/// What one window bucket of one account accumulated (levels are prefix sums of buckets).
/// Cache-line aligned; an email updates only the first line.
#[derive(Debug, Clone, Copy)]
#[repr(C, align(64))]
struct Bucket {
    counts: [u64; 4],
    e: u128,
    first_ms: i64,
    last_email_ms: i64,
    m: u128,
    last_meeting_ms: i64,
    replies: u64,
    meeting_ms: i128,
    reply_ms: i128,
}

impl Default for Bucket {
    fn default() -> Self {
        Self {
            counts: [0; 4],
            e: 0,
            m: 0,
            first_ms: i64::MAX,
            last_email_ms: i64::MIN,
            last_meeting_ms: i64::MIN,
            meeting_ms: 0,
            reply_ms: 0,
            replies: 0,
        }
    }
}

impl Bucket {
    fn merge(&mut self, o: &Bucket) {
        for k in 0..4 {
            self.counts[k] += o.counts[k];
        }
        self.e += o.e;
        self.m += o.m;
        self.first_ms = self.first_ms.min(o.first_ms);
        self.last_email_ms = self.last_email_ms.max(o.last_email_ms);
        self.last_meeting_ms = self.last_meeting_ms.max(o.last_meeting_ms);
        self.meeting_ms += o.meeting_ms;
        self.reply_ms += o.reply_ms;
        self.replies += o.replies;
    }

    fn active(&self) -> bool {
        self.counts.iter().any(|&c| c > 0)
    }
}

/// Everything kept about one account across partitions.
#[derive(Debug, Clone, Default)]
struct AccountAcc {
    buckets: [Bucket; 3],
    /// Counts by kind per week of the Year window (`WEEKS` entries once used).
    weeks: Vec<[u32; 4]>,
    /// Distinct internal people, sorted: `iid << 16 | email bucket << 8 | meeting bucket`.
    internal: Vec<u64>,
}

impl AccountAcc {
    #[inline]
    fn week_add(&mut self, week: usize, kind: usize) {
        if self.weeks.is_empty() {
            self.weeks = vec![[0; 4]; WEEKS];
        }
        if let Some(w) = self.weeks.get_mut(week) {
            w[kind] = w[kind].saturating_add(1);
        }
    }

    /// Records internal person `iid` in a counted email (`which` 0) or meeting (1) of bucket `b`.
    #[inline]
    fn internal_seen(&mut self, iid: u32, which: usize, b: u8) {
        let iid = u64::from(iid);
        let shift = if which == 0 { 8 } else { 0 };
        let pos = self.internal.partition_point(|&x| (x >> 16) < iid);
        match self.internal.get_mut(pos) {
            Some(x) if (*x >> 16) == iid => {
                let cur = (*x >> shift) & 0xFF;
                if u64::from(b) < cur {
                    *x = (*x & !(0xFF << shift)) | (u64::from(b) << shift);
                }
            }
            _ => {
                let none = u64::from(NONE);
                let v = (iid << 16) | (none << 8) | none;
                let v = (v & !(0xFF << shift)) | (u64::from(b) << shift);
                self.internal.insert(pos, v);
            }
        }
    }
}

#[derive(Debug, Default)]
struct Agg {
    /// By account index.
    accs: Vec<AccountAcc>,
    /// Per (contact, account) pair: smallest bucket seen in a counted email / meeting.
    pair_levels: Vec<[u8; 2]>,
    internal_ids: FastMap<Id16, u32>,
    emails_processed: u64,
    meetings_processed: u64,
    earliest_ms: Option<i64>,
}

impl Agg {
    #[inline]
    fn processed(&mut self, t: i64) {
        self.earliest_ms = Some(self.earliest_ms.map_or(t, |e| e.min(t)));
    }

    #[inline]
    fn intern(&mut self, id: &Id16) -> u32 {
        let next = self.internal_ids.len() as u32;
        *self.internal_ids.entry(*id).or_insert(next)
    }
}

// ---------------------------------------------------------------------------------------------------------
// Partition buffer

#[derive(Debug, Clone, Copy)]
struct EmailRow {
    message_key: Id16,
    conversation_key: Id16,
    mailbox: Id16,
    sent_at_ms: i64,
    from: Party,
    start: usize,
    len: u32,
}

#[derive(Debug, Clone, Copy)]
struct MeetingRow {
    uid_key: Id16,
    event_key: Id16,
    mailbox: Id16,
    version_ms: i64,
    start_ms: i64,
    end_ms: i64,
    cancelled: bool,
    organizer: Party,
    start: usize,
    len: u32,
}

#[derive(Debug, Default)]
struct PartitionBuf {
    emails: Vec<EmailRow>,
    meetings: Vec<MeetingRow>,
    parties: Vec<Party>,
    removed: Vec<MeetingRemoved>,
}

impl PartitionBuf {
    fn clear(&mut self) {
        self.emails.clear();
        self.meetings.clear();
        self.parties.clear();
        self.removed.clear();
    }

    fn push_parties(&mut self, parties: impl Iterator<Item = Party>) -> (usize, u32) {
        let start = self.parties.len();
        self.parties.extend(parties);
        (start, (self.parties.len() - start) as u32)
    }

    fn push_ref(&mut self, r: ActivityRef<'_>) {
        match r {
            ActivityRef::Email(e) => {
                let (start, len) = self.push_parties(e.recipients.iter());
                self.emails.push(EmailRow {
                    message_key: e.message_key,
                    conversation_key: e.conversation_key,
                    mailbox: e.mailbox,
                    sent_at_ms: e.sent_at_ms,
                    from: e.from,
                    start,
                    len,
                });
            }
            ActivityRef::Meeting(m) => {
                let (start, len) = self.push_parties(m.attendees.iter());
                self.meetings.push(MeetingRow {
                    uid_key: m.uid_key,
                    event_key: m.event_key,
                    mailbox: m.mailbox,
                    version_ms: m.version_ms,
                    start_ms: m.start_ms,
                    end_ms: m.end_ms,
                    cancelled: m.cancelled,
                    organizer: m.organizer,
                    start,
                    len,
                });
            }
            ActivityRef::MeetingRemoved(r) => self.removed.push(r),
        }
    }

    fn push(&mut self, a: Activity) {
        match a {
            Activity::Email(e) => {
                let (start, len) = self.push_parties(e.recipients.into_iter());
                self.emails.push(EmailRow {
                    message_key: e.message_key,
                    conversation_key: e.conversation_key,
                    mailbox: e.mailbox,
                    sent_at_ms: e.sent_at_ms,
                    from: e.from,
                    start,
                    len,
                });
            }
            Activity::Meeting(m) => {
                let (start, len) = self.push_parties(m.attendees.into_iter());
                self.meetings.push(MeetingRow {
                    uid_key: m.uid_key,
                    event_key: m.event_key,
                    mailbox: m.mailbox,
                    version_ms: m.version_ms,
                    start_ms: m.start_ms,
                    end_ms: m.end_ms,
                    cancelled: m.cancelled,
                    organizer: m.organizer,
                    start,
                    len,
                });
            }
            Activity::MeetingRemoved(r) => self.removed.push(r),
        }
    }

    #[inline]
    fn parties_of(&self, start: usize, len: u32) -> &[Party] {
        &self.parties[start..start + len as usize]
    }
}

/// Canonical copy order of an email (smaller wins).
fn email_cmp(buf: &PartitionBuf, a: &EmailRow, b: &EmailRow) -> std::cmp::Ordering {
    (a.mailbox, a.sent_at_ms, a.from)
        .cmp(&(b.mailbox, b.sent_at_ms, b.from))
        .then_with(|| {
            buf.parties_of(a.start, a.len)
                .cmp(buf.parties_of(b.start, b.len))
        })
}

/// Meeting version order (greater wins).
fn meeting_cmp(buf: &PartitionBuf, a: &MeetingRow, b: &MeetingRow) -> std::cmp::Ordering {
    (a.version_ms, a.cancelled)
        .cmp(&(b.version_ms, b.cancelled))
        .then_with(|| {
            // Smaller content wins the tie, so compare reversed.
            (b.mailbox, b.event_key, b.start_ms, b.end_ms, b.organizer).cmp(&(
                a.mailbox,
                a.event_key,
                a.start_ms,
                a.end_ms,
                a.organizer,
            ))
        })
        .then_with(|| {
            buf.parties_of(b.start, b.len)
                .cmp(buf.parties_of(a.start, a.len))
        })
}

/// Per-partition working memory, reused across partitions.
#[derive(Debug, Default)]
struct Scratch {
    /// message key → index of its first copy.
    first: IdTable<u32>,
    /// Per copy: index of the first copy of its message.
    copy_first: Vec<u32>,
    /// Per first copy: index of the canonical copy.
    canon: Vec<u32>,
    /// Per first copy: range in `msg_accounts` of the accounts the message concerns (sender's accounts
    /// for a contact's email, recipients' accounts for an internal person's email).
    msg_range: Vec<(u32, u32)>,
    msg_accounts: Vec<u32>,
    groups: IdTable<u32>,
    antecedents: Vec<(u64, i64)>,
    candidates: Vec<(u64, i64, u32)>,
    replies: Vec<(u64, i64)>,
    winners: IdTable<u32>,
    ext: Vec<(u32, u32)>,
    counted: Vec<u32>,
    org: Vec<u32>,
    internal: Vec<u32>,
}

// ---------------------------------------------------------------------------------------------------------
// The scorer

/// Streaming scorer: tombstones first, then one partition at a time, then [`Scorer::finish`].
#[derive(Debug)]
pub struct Scorer {
    contacts: ContactIndex,
    as_of: DateTime<Utc>,
    params: ScoreParams,
    clock: Clock,
    tombstones: FastMap<(Id16, Id16), i64>,
    agg: Agg,
    buf: PartitionBuf,
    scratch: Scratch,
}

impl Scorer {
    pub fn new(contacts: ContactIndex, as_of: DateTime<Utc>, params: ScoreParams) -> Self {
        let agg = Agg {
            accs: vec![AccountAcc::default(); contacts.accounts.len()],
            pair_levels: vec![[NONE, NONE]; contacts.pair_accounts.len()],
            ..Agg::default()
        };
        Self {
            clock: Clock::new(as_of.timestamp_millis(), params.half_life_days),
            contacts,
            as_of,
            params,
            tombstones: FastMap::default(),
            agg,
            buf: PartitionBuf::default(),
            scratch: Scratch::default(),
        }
    }

    /// Loads meeting tombstones; call before the partitions.
    pub fn add_removed(&mut self, removed: impl IntoIterator<Item = MeetingRemoved>) {
        for r in removed {
            self.tombstone(&r);
        }
    }

    /// Loads the encoded "removed" stream. Other record kinds in it are ignored; returns how many
    /// tombstones were read. On a decoding error nothing is applied.
    pub fn add_removed_bytes(&mut self, bytes: &[u8]) -> Result<usize, ActivityError> {
        let mut got = Vec::new();
        let mut reader = ActivityReader::new(bytes);
        while let Some(r) = reader.next_ref() {
            if let ActivityRef::MeetingRemoved(m) = r? {
                got.push(m);
            }
        }
        let n = got.len();
        self.add_removed(got);
        Ok(n)
    }

    fn tombstone(&mut self, r: &MeetingRemoved) {
        let e = self
            .tombstones
            .entry((r.mailbox, r.event_key))
            .or_insert(i64::MIN);
        *e = (*e).max(r.removed_at_ms);
    }

    /// Aggregates one partition (all copies of its emails, all versions of its meetings). Tombstones found
    /// inside it are applied before its meetings are resolved.
    pub fn add_partition(&mut self, records: impl IntoIterator<Item = Activity>) {
        let mut buf = std::mem::take(&mut self.buf);
        buf.clear();
        for r in records {
            buf.push(r);
        }
        self.process(&buf);
        buf.clear();
        self.buf = buf;
    }

    /// Decodes and aggregates one encoded partition without per-record allocation. On a decoding error
    /// nothing of the partition is applied.
    pub fn add_partition_bytes(&mut self, bytes: &[u8]) -> Result<(), ActivityError> {
        let mut buf = std::mem::take(&mut self.buf);
        buf.clear();
        let mut reader = ActivityReader::new(bytes);
        let mut result = Ok(());
        while let Some(r) = reader.next_ref() {
            match r {
                Ok(r) => buf.push_ref(r),
                Err(e) => {
                    result = Err(e);
                    break;
                }
            }
        }
        if result.is_ok() {
            self.process(&buf);
        }
        buf.clear();
        self.buf = buf;
        result
    }

    fn process(&mut self, buf: &PartitionBuf) {
        for r in &buf.removed {
            self.tombstone(r);
        }
        self.process_emails(buf);
        self.replies(buf);
        self.process_meetings(buf);
    }

    #[inline(never)]
    fn process_emails(&mut self, buf: &PartitionBuf) {
        let Self {
            contacts,
            clock,
            agg,
            scratch: s,
            ..
        } = self;
        let n = buf.emails.len();
        // Dedupe: first copy and canonical copy per message.
        s.first.reset(n);
        s.copy_first.clear();
        s.canon.clear();
        s.canon.resize(n, 0);
        for (i, row) in buf.emails.iter().enumerate() {
            let i = i as u32;
            let (f, inserted) = s.first.get_or_insert(&row.message_key, i);
            let f = *f;
            s.copy_first.push(f);
            if inserted {
                s.canon[i as usize] = i;
            } else if email_cmp(buf, row, &buf.emails[s.canon[f as usize] as usize]).is_lt() {
                s.canon[f as usize] = i;
            }
        }
        s.msg_range.clear();
        s.msg_range.resize(n, (0, 0));
        s.msg_accounts.clear();
        let mut es = EmailScratch {
            ext: &mut s.ext,
            counted: &mut s.counted,
            internal: &mut s.internal,
        };
        for f in 0..n {
            if s.copy_first[f] as usize != f {
                continue;
            }
            let row = &buf.emails[s.canon[f] as usize];
            count_email(contacts, clock, agg, &mut es, buf, row);
            let start = s.msg_accounts.len() as u32;
            s.msg_accounts.extend_from_slice(es.counted);
            s.msg_range[f] = (start, es.counted.len() as u32);
        }
    }

    /// The reply rule over all copies of the partition's emails.
    #[inline(never)]
    fn replies(&mut self, buf: &PartitionBuf) {
        let Self {
            clock,
            agg,
            scratch: s,
            ..
        } = self;
        s.groups.reset(0);
        s.antecedents.clear();
        s.candidates.clear();
        for (i, row) in buf.emails.iter().enumerate() {
            let f = s.copy_first[i];
            let (start, len) = s.msg_range[f as usize];
            if len == 0 {
                continue;
            }
            let canon = &buf.emails[s.canon[f as usize] as usize];
            let internal_sender = canon.from.is_internal();
            if !internal_sender && clock.bucket(canon.sent_at_ms) == NONE {
                continue;
            }
            // Copies of one conversation in one mailbox; conversation keys are keyed hashes, so the
            // xor with the mailbox id is as collision-free as the keys themselves.
            let mut gkey = row.conversation_key;
            for (g, m) in gkey.iter_mut().zip(row.mailbox) {
                *g ^= m;
            }
            let next = s.groups.len() as u32;
            let g = u64::from(*s.groups.get_or_insert(&gkey, next).0) << 32;
            let accounts = &s.msg_accounts[start as usize..(start + len) as usize];
            if internal_sender {
                for &a in accounts {
                    s.antecedents.push((g | u64::from(a), row.sent_at_ms));
                }
            } else {
                for &a in accounts {
                    s.candidates.push((g | u64::from(a), row.sent_at_ms, f));
                }
            }
        }
        if s.candidates.is_empty() || s.antecedents.is_empty() {
            return;
        }
        s.antecedents.sort_unstable();
        s.replies.clear();
        for &(key, t, f) in &s.candidates {
            let lo = s.antecedents.partition_point(|&(k, _)| k < key);
            let hi = lo + s.antecedents[lo..].partition_point(|&(k, at)| k == key && at < t);
            if hi == lo {
                continue;
            }
            let account = key & 0xFFFF_FFFF;
            s.replies
                .push(((account << 32) | u64::from(f), t - s.antecedents[hi - 1].1));
        }
        // Several copies of one reply: count it once, with its shortest time.
        s.replies.sort_unstable();
        let mut i = 0;
        while i < s.replies.len() {
            let (key, shortest) = s.replies[i];
            while i < s.replies.len() && s.replies[i].0 == key {
                i += 1;
            }
            let f = (key & 0xFFFF_FFFF) as usize;
            let b = clock.bucket(buf.emails[s.canon[f] as usize].sent_at_ms);
            if b == NONE {
                continue;
            }
            let bk = &mut agg.accs[(key >> 32) as usize].buckets[b as usize];
            bk.reply_ms += i128::from(shortest);
            bk.replies += 1;
        }
    }

    #[inline(never)]
    fn process_meetings(&mut self, buf: &PartitionBuf) {
        let Self {
            contacts,
            clock,
            agg,
            scratch: s,
            tombstones,
            ..
        } = self;
        s.winners.reset(buf.meetings.len());
        for (i, m) in buf.meetings.iter().enumerate() {
            if let Some(&removed_at) = tombstones.get(&(m.mailbox, m.event_key))
                && removed_at >= m.version_ms
            {
                continue;
            }
            let (w, inserted) = s.winners.get_or_insert(&m.uid_key, i as u32);
            if !inserted && meeting_cmp(buf, m, &buf.meetings[*w as usize]).is_gt() {
                *w = i as u32;
            }
        }
        for wi in s.winners.values() {
            let m = &buf.meetings[wi as usize];
            if m.cancelled {
                continue;
            }
            let b = clock.bucket(m.start_ms);
            if b == NONE {
                continue;
            }
            let attendees = buf.parties_of(m.start, m.len);
            if m.organizer.is_internal() && attendees.iter().all(Party::is_internal) {
                continue;
            }
            agg.meetings_processed += 1;
            agg.processed(m.start_ms);

            s.ext.clear();
            s.org.clear();
            if let Party::External(id) = &m.organizer {
                for (a, p) in contacts.range(id) {
                    s.ext.push((a, p));
                    s.org.push(a);
                }
            }
            for p in attendees {
                if let Party::External(id) = p {
                    s.ext.extend(contacts.range(id));
                }
            }
            if s.ext.is_empty() {
                continue;
            }
            s.org.sort_unstable();
            s.org.dedup();
            s.counted.clear();
            s.counted.extend(s.ext.iter().map(|&(a, _)| a));
            s.counted.sort_unstable();
            s.counted.dedup();

            s.internal.clear();
            for p in std::iter::once(&m.organizer).chain(attendees) {
                if let Party::Internal(id) = p {
                    let iid = agg.intern(id);
                    s.internal.push(iid);
                }
            }
            s.internal.sort_unstable();
            s.internal.dedup();

            let u2 = 2 * clock.unit(m.start_ms);
            let duration = i128::from(m.end_ms.saturating_sub(m.start_ms).max(0));
            let week = clock.week(m.start_ms);
            for &a in s.counted.iter() {
                let kind = if s.org.binary_search(&a).is_ok() {
                    MEET_FROM
                } else {
                    MEET_TO
                };
                let acc = &mut agg.accs[a as usize];
                let bk = &mut acc.buckets[b as usize];
                bk.counts[kind] += 1;
                bk.m += u2;
                bk.meeting_ms += duration;
                bk.first_ms = bk.first_ms.min(m.start_ms);
                bk.last_meeting_ms = bk.last_meeting_ms.max(m.start_ms);
                acc.week_add(week, kind);
                for &iid in s.internal.iter() {
                    acc.internal_seen(iid, 1, b);
                }
            }
            // Every matched contact's account is counted for this meeting.
            for &(_, p) in s.ext.iter() {
                let lv = &mut agg.pair_levels[p as usize][1];
                *lv = (*lv).min(b);
            }
        }
    }

    /// Computes the columns, percentiles and scores.
    pub fn finish(self) -> ScoreOutcome {
        let Scorer {
            contacts,
            as_of,
            params,
            clock,
            agg,
            ..
        } = self;
        let n = agg.accs.len();

        #[derive(Clone, Copy, Default)]
        struct Distinct {
            internal_e: u64,
            internal_m: u64,
            contacts_e: u64,
            contacts_m: u64,
            breadth: u64,
        }
        // Per account and level: cumulative buckets and distinct counts.
        let levels: Vec<[Bucket; 3]> = agg
            .accs
            .iter()
            .map(|acc| {
                let mut out = [Bucket::default(); 3];
                let mut run = Bucket::default();
                for (o, b) in out.iter_mut().zip(&acc.buckets) {
                    run.merge(b);
                    *o = run;
                }
                out
            })
            .collect();
        let mut distinct = vec![[Distinct::default(); 3]; n];
        for (p, lv) in agg.pair_levels.iter().enumerate() {
            if *lv == [NONE, NONE] {
                continue;
            }
            let d = &mut distinct[contacts.pair_accounts[p] as usize];
            for (l, dl) in d.iter_mut().enumerate() {
                let l = l as u8;
                dl.contacts_e += u64::from(lv[0] <= l);
                dl.contacts_m += u64::from(lv[1] <= l);
                dl.breadth += u64::from(lv[0].min(lv[1]) <= l);
            }
        }
        for (acc, d) in agg.accs.iter().zip(distinct.iter_mut()) {
            for &x in &acc.internal {
                let (e, m) = (((x >> 8) & 0xFF) as u8, (x & 0xFF) as u8);
                for (l, dl) in d.iter_mut().enumerate() {
                    let l = l as u8;
                    dl.internal_e += u64::from(e <= l);
                    dl.internal_m += u64::from(m <= l);
                }
            }
        }

        // Percentiles and scores per level.
        let mut scores = vec![[(0u8, Components::default()); 3]; n];
        for l in 0..3 {
            let mut e_vals = Vec::new();
            let mut m_vals = Vec::new();
            let mut b_vals = Vec::new();
            for (a, lv) in levels.iter().enumerate() {
                let bk = &lv[l];
                if !bk.active() {
                    continue;
                }
                if bk.e > 0 {
                    e_vals.push(bk.e);
                }
                if bk.m > 0 {
                    m_vals.push(bk.m);
                }
                let b = distinct[a][l].breadth;
                if b > 0 {
                    b_vals.push(u128::from(b));
                }
            }
            e_vals.sort_unstable();
            m_vals.sort_unstable();
            b_vals.sort_unstable();
            for (a, lv) in levels.iter().enumerate() {
                let bk = &lv[l];
                if !bk.active() {
                    continue;
                }
                let c = Components {
                    email: percentile(&e_vals, bk.e),
                    meeting: percentile(&m_vals, bk.m),
                    breadth: percentile(&b_vals, u128::from(distinct[a][l].breadth)),
                };
                scores[a][l] = (engagement_score(&params, &c), c);
            }
        }

        // Rows, in account order.
        let mut office = Vec::new();
        let mut cards = Vec::new();
        let mut history = Vec::new();
        for (a, account_id) in contacts.accounts.iter().enumerate() {
            if !levels[a][Level::Year.index()].active() {
                continue;
            }
            let points: Vec<HistoryPoint> = agg.accs[a]
                .weeks
                .iter()
                .enumerate()
                .filter(|(_, w)| w.iter().any(|&c| c > 0))
                .filter_map(|(i, w)| {
                    Some(HistoryPoint {
                        week_start: date_of_day(clock.first_monday + 7 * i as i64)?,
                        emails_to_account: u64::from(w[EMAIL_TO]),
                        emails_from_account: u64::from(w[EMAIL_FROM]),
                        meetings_to_account: u64::from(w[MEET_TO]),
                        meetings_from_account: u64::from(w[MEET_FROM]),
                    })
                })
                .collect();
            let mut card = AccountCard {
                account_id: account_id.clone(),
                levels: CardLevels::default(),
                history: points,
            };
            for level in Level::ALL {
                let l = level.index();
                let bk = &levels[a][l];
                if !bk.active() {
                    continue;
                }
                let d = distinct[a][l];
                let (score, components) = scores[a][l];
                let totals = Totals {
                    emails_to_account: bk.counts[EMAIL_TO],
                    emails_from_account: bk.counts[EMAIL_FROM],
                    meetings_to_account: bk.counts[MEET_TO],
                    meetings_from_account: bk.counts[MEET_FROM],
                };
                *card.levels.get_mut(level) = CardLevel {
                    score,
                    components,
                    totals,
                };
                let meetings = bk.counts[MEET_TO] + bk.counts[MEET_FROM];
                let emails = bk.counts[EMAIL_TO] + bk.counts[EMAIL_FROM];
                office.push(OfficeRow {
                    account_id: account_id.clone(),
                    level,
                    aggregation_start_date: level.aggregation_start_date(as_of),
                    engagement_score: score,
                    emails_to_account: totals.emails_to_account,
                    emails_from_account: totals.emails_from_account,
                    meetings_to_account: totals.meetings_to_account,
                    meetings_from_account: totals.meetings_from_account,
                    contacts_involved_emails: d.internal_e,
                    contacts_involved_meetings: d.internal_m,
                    account_contacts_involved_emails: d.contacts_e,
                    account_contacts_involved_meetings: d.contacts_m,
                    engagement_start_date: date_of_ms(bk.first_ms),
                    days_since_last_email: (emails > 0)
                        .then(|| (clock.t_ms - bk.last_email_ms).div_euclid(DAY_MS)),
                    days_since_last_meeting: (meetings > 0)
                        .then(|| (clock.t_ms - bk.last_meeting_ms).div_euclid(DAY_MS)),
                    average_duration_of_meetings: mean_minutes_1dp(bk.meeting_ms, meetings),
                    average_duration_of_account_email_replies: mean_minutes_1dp(
                        bk.reply_ms,
                        bk.replies,
                    ),
                });
            }
            for p in &card.history {
                history.push(HistoryRow {
                    account_id: account_id.clone(),
                    week_start: p.week_start,
                    emails_to_account: p.emails_to_account,
                    emails_from_account: p.emails_from_account,
                    meetings_to_account: p.meetings_to_account,
                    meetings_from_account: p.meetings_from_account,
                });
            }
            cards.push(card);
        }

        let days_aggregated = match agg.earliest_ms.and_then(date_of_ms) {
            Some(d) => ((as_of.date_naive() - d).num_days() + 1).clamp(0, 365) as u32,
            None => 0,
        };
        let summary = RunSummary {
            enriched_customers: cards.len() as u64,
            emails_processed: agg.emails_processed,
            meetings_processed: agg.meetings_processed,
            days_aggregated,
        };
        ScoreOutcome {
            office,
            history,
            cards,
            summary,
        }
    }
}

struct EmailScratch<'s> {
    ext: &'s mut Vec<(u32, u32)>,
    counted: &'s mut Vec<u32>,
    internal: &'s mut Vec<u32>,
}

/// Resolves the accounts a deduplicated email concerns (left in `s.counted`, also for emails outside the
/// window, which can still be reply antecedents) and counts it when it lies in the Year window.
#[inline]
fn count_email(
    contacts: &ContactIndex,
    clock: &Clock,
    agg: &mut Agg,
    s: &mut EmailScratch<'_>,
    buf: &PartitionBuf,
    row: &EmailRow,
) {
    s.ext.clear();
    s.counted.clear();
    let t = row.sent_at_ms;
    let b = clock.bucket(t);
    let recipients = buf.parties_of(row.start, row.len);
    let kind = match &row.from {
        Party::External(id) => {
            if b == NONE {
                return; // neither counted nor a reply antecedent
            }
            for (a, p) in contacts.range(id) {
                s.ext.push((a, p));
                s.counted.push(a);
            }
            EMAIL_FROM
        }
        Party::Internal(_) => {
            if t > clock.t_ms {
                return; // future: cannot precede a counted reply
            }
            EMAIL_TO
        }
    };
    let mut has_external = kind == EMAIL_FROM;
    for p in recipients {
        if let Party::External(id) = p {
            has_external = true;
            for (a, pair) in contacts.range(id) {
                s.ext.push((a, pair));
                if kind == EMAIL_TO {
                    s.counted.push(a);
                }
            }
        }
    }
    s.counted.sort_unstable();
    s.counted.dedup();
    if b == NONE || !has_external {
        return; // internal-only mail is dropped by the downloader; defensive
    }
    agg.emails_processed += 1;
    agg.processed(t);
    if s.counted.is_empty() {
        return;
    }

    s.internal.clear();
    for p in std::iter::once(&row.from).chain(recipients) {
        if let Party::Internal(id) = p {
            let iid = agg.intern(id);
            s.internal.push(iid);
        }
    }
    s.internal.sort_unstable();
    s.internal.dedup();

    let u = clock.unit(t);
    let weight = if kind == EMAIL_FROM { 2 * u } else { u };
    let week = clock.week(t);
    for &a in s.counted.iter() {
        let acc = &mut agg.accs[a as usize];
        let bk = &mut acc.buckets[b as usize];
        bk.counts[kind] += 1;
        bk.e += weight;
        bk.first_ms = bk.first_ms.min(t);
        bk.last_email_ms = bk.last_email_ms.max(t);
        acc.week_add(week, kind);
        for &iid in s.internal.iter() {
            acc.internal_seen(iid, 0, b);
        }
    }
    for &(a, p) in s.ext.iter() {
        if kind == EMAIL_TO || s.counted.binary_search(&a).is_ok() {
            let lv = &mut agg.pair_levels[p as usize][0];
            *lv = (*lv).min(b);
        }
    }
}

/// `P_X(a)`: 0 when `x = 0`, else the share of positive values `≤ x`.
fn percentile(sorted_positive: &[u128], x: u128) -> f64 {
    if x == 0 || sorted_positive.is_empty() {
        return 0.0;
    }
    let le = sorted_positive.partition_point(|&v| v <= x);
    le as f64 / sorted_positive.len() as f64
}

/// `round_half_up(100 · (wE·P_E + wM·P_M + wB·P_B))`, with a tiny epsilon against float noise.
pub fn engagement_score(params: &ScoreParams, c: &Components) -> u8 {
    let raw = 100.0
        * (params.weight_email * c.email
            + params.weight_meeting * c.meeting
            + params.weight_breadth * c.breadth);
    if !raw.is_finite() {
        return 0;
    }
    (raw + 0.5 + 1e-9).floor().clamp(0.0, 100.0) as u8
}

/// Mean of `sum_ms / n` in minutes, rounded half up to one decimal, computed in integers.
fn mean_minutes_1dp(sum_ms: i128, n: u64) -> Option<f64> {
    if n == 0 {
        return None;
    }
    let num = sum_ms.max(0) * 10;
    let den = i128::from(n) * 60_000;
    let tenths = (2 * num + den) / (2 * den);
    Some(tenths as f64 / 10.0)
}

fn date_of_ms(ms: i64) -> Option<NaiveDate> {
    DateTime::<Utc>::from_timestamp_millis(ms).map(|d| d.date_naive())
}

fn date_of_day(days_since_epoch: i64) -> Option<NaiveDate> {
    date_of_ms(days_since_epoch.checked_mul(DAY_MS)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::activity::{Email, Meeting, PARTITIONS, encode, partition_of};
    use proptest::prelude::*;

    const MIN: i64 = 60_000;
    const HOUR: i64 = 3_600_000;

    fn as_of() -> DateTime<Utc> {
        "2026-03-10T12:00:00Z".parse().unwrap()
    }
    fn t0() -> i64 {
        as_of().timestamp_millis()
    }
    fn pz() -> Pseudonymizer {
        Pseudonymizer::new(b"test-key")
    }
    fn k(tag: &str) -> Id16 {
        pz().hash_value(tag)
    }
    /// External party by address.
    fn x(addr: &str) -> Party {
        Party::External(pz().hash_address(addr))
    }
    /// Internal party by name.
    fn i(name: &str) -> Party {
        Party::Internal(k(&format!("internal:{name}")))
    }
    fn index(pairs: &[(&str, &str)]) -> ContactIndex {
        ContactIndex::new(
            pairs
                .iter()
                .map(|(a, e)| (a.to_string(), pz().hash_address(e))),
        )
    }
    fn email(msg: &str, conv: &str, mailbox: &str, at: i64, from: Party, to: &[Party]) -> Activity {
        Activity::Email(Email {
            message_key: k(msg),
            conversation_key: k(conv),
            mailbox: k(mailbox),
            sent_at_ms: at,
            from,
            recipients: to.to_vec(),
        })
    }
    #[allow(clippy::too_many_arguments)]
    fn meeting(
        uid: &str,
        mailbox: &str,
        version: i64,
        start: i64,
        minutes: i64,
        cancelled: bool,
        organizer: Party,
        attendees: &[Party],
    ) -> Activity {
        Activity::Meeting(Meeting {
            uid_key: k(uid),
            event_key: k(&format!("{uid}@{mailbox}")),
            mailbox: k(mailbox),
            version_ms: version,
            start_ms: start,
            end_ms: start + minutes * MIN,
            cancelled,
            organizer,
            attendees: attendees.to_vec(),
        })
    }
    fn removed(uid: &str, mailbox: &str, at: i64) -> MeetingRemoved {
        MeetingRemoved {
            mailbox: k(mailbox),
            event_key: k(&format!("{uid}@{mailbox}")),
            removed_at_ms: at,
        }
    }

    fn partitions(records: &[Activity]) -> Vec<Vec<Activity>> {
        let mut parts = vec![Vec::new(); PARTITIONS as usize];
        for r in records {
            if let Some(p) = partition_of(r) {
                parts[p as usize].push(r.clone());
            }
        }
        parts
    }

    /// Scores through the encoded (zero-allocation) path.
    fn run_with(
        idx: ContactIndex,
        params: ScoreParams,
        tombstones: &[MeetingRemoved],
        records: &[Activity],
    ) -> ScoreOutcome {
        let mut s = Scorer::new(idx, as_of(), params);
        let mut rb = Vec::new();
        let ts: Vec<Activity> = tombstones
            .iter()
            .map(|r| Activity::MeetingRemoved(*r))
            .collect();
        encode(&ts, &mut rb);
        assert_eq!(s.add_removed_bytes(&rb).unwrap(), tombstones.len());
        for p in partitions(records) {
            let mut bytes = Vec::new();
            encode(&p, &mut bytes);
            s.add_partition_bytes(&bytes).unwrap();
        }
        s.finish()
    }

    fn run(idx: ContactIndex, tombstones: &[MeetingRemoved], records: &[Activity]) -> ScoreOutcome {
        run_with(idx, ScoreParams::default(), tombstones, records)
    }

    fn row<'a>(o: &'a ScoreOutcome, account: &str, level: Level) -> Option<&'a OfficeRow> {
        o.office
            .iter()
            .find(|r| r.account_id == account && r.level == level)
    }

    fn date(y: i32, m: u32, d: u32) -> NaiveDate {
        NaiveDate::from_ymd_opt(y, m, d).unwrap()
    }

    #[test]
    fn window_boundaries() {
        let t = t0();
        let bob = x("bob@fabrikam.com");
        let alice = i("alice");
        let recs = vec![
            email("e1", "c1", "mA", t - 7 * DAY_MS, bob, &[alice]), // exactly 7 days: Month, not Week
            email("e2", "c2", "mA", t - 7 * DAY_MS + 1, bob, &[alice]), // 7 days − 1 ms: Week
            email("e3", "c3", "mA", t + 1, bob, &[alice]),          // future
            email("e4", "c4", "mA", t, bob, &[alice]),              // exactly T: in
            email("e5", "c5", "mA", t - 30 * DAY_MS, bob, &[alice]), // Year only
            email("e6", "c6", "mA", t - 365 * DAY_MS, bob, &[alice]), // out
            email("e7", "c7", "mA", t - 365 * DAY_MS + 1, bob, &[alice]), // Year
            meeting("m1", "mA", 1, t + HOUR, 30, false, alice, &[bob]), // future meeting
            meeting("m2", "mA", 1, t - DAY_MS, 30, false, alice, &[bob]),
        ];
        let o = run(index(&[("A", "bob@fabrikam.com")]), &[], &recs);
        let w = row(&o, "A", Level::Week).unwrap();
        let m = row(&o, "A", Level::Month).unwrap();
        let y = row(&o, "A", Level::Year).unwrap();
        assert_eq!(
            (
                w.emails_from_account,
                m.emails_from_account,
                y.emails_from_account
            ),
            (2, 3, 5)
        );
        assert_eq!(
            (
                w.meetings_to_account,
                m.meetings_to_account,
                y.meetings_to_account
            ),
            (1, 1, 1)
        );
        assert_eq!(w.aggregation_start_date, date(2026, 3, 4));
        assert_eq!(m.aggregation_start_date, date(2026, 2, 9));
        assert_eq!(y.aggregation_start_date, date(2025, 3, 11));
        assert_eq!(w.engagement_start_date, Some(date(2026, 3, 3)));
        assert_eq!(m.engagement_start_date, Some(date(2026, 3, 3)));
        assert_eq!(y.engagement_start_date, Some(date(2025, 3, 10)));
        assert_eq!(w.days_since_last_email, Some(0));
        assert_eq!(w.days_since_last_meeting, Some(1));
        assert_eq!(w.average_duration_of_meetings, Some(30.0));
        assert_eq!(w.average_duration_of_account_email_replies, None);
        assert_eq!(
            (
                w.contacts_involved_emails,
                w.contacts_involved_meetings,
                w.account_contacts_involved_emails,
                w.account_contacts_involved_meetings
            ),
            (1, 1, 1, 1)
        );
        assert_eq!(w.engagement_score, 100);
        assert_eq!(
            o.summary,
            RunSummary {
                enriched_customers: 1,
                emails_processed: 5,
                meetings_processed: 1,
                days_aggregated: 365,
            }
        );
    }

    #[test]
    fn reply_rule() {
        let t = t0();
        let (alice, erin, frank) = (i("alice"), i("erin"), i("frank"));
        let (bob, carol, dave) = (
            x("bob@fabrikam.com"),
            x("carol@fabrikam.com"),
            x("dave@northwind.com"),
        );
        let idx = index(&[
            ("A", "bob@fabrikam.com"),
            ("A", "carol@fabrikam.com"),
            ("B", "dave@northwind.com"),
        ]);
        let recs = vec![
            email("x1", "C1", "M1", t - 10 * HOUR, alice, &[bob]),
            email("x2", "C1", "M1", t - 5 * HOUR, alice, &[bob]),
            // The reply, seen in two mailboxes: 3 h after x2 in M1, 1 h after x4 in M2 → 60 min.
            email("x3", "C1", "M1", t - 2 * HOUR, bob, &[alice, erin]),
            email("x3", "C1", "M2", t - 2 * HOUR, bob, &[alice, erin]),
            email("x4", "C1", "M2", t - 3 * HOUR, erin, &[carol]),
            // 4 h after x2 (x3 is not internal, so not an antecedent) → 240 min.
            email("x5", "C1", "M1", t - HOUR, bob, &[alice]),
            // B: 60 min; x6 is not an antecedent for A.
            email("x6", "C1", "M2", t - 90 * MIN, erin, &[dave]),
            email("x7", "C1", "M2", t - 30 * MIN, dave, &[erin]),
            // No internal email to A before it in M3 → not a reply.
            email("x9", "C1", "M3", t - 20 * MIN, bob, &[frank]),
            // Other conversation in M1 → not a reply.
            email("x10", "C2", "M1", t - 30 * MIN, bob, &[alice]),
            // Month, not Week: 1 day = 1440 min.
            email("y1", "C3", "M1", t - 9 * DAY_MS, alice, &[bob]),
            email("y2", "C3", "M1", t - 8 * DAY_MS, bob, &[alice]),
            // Year: antecedent outside the window, reply inside: 100 days = 144000 min.
            email("y3", "C4", "M1", t - 400 * DAY_MS, alice, &[carol]),
            email("y4", "C4", "M1", t - 300 * DAY_MS, carol, &[alice]),
            // Equal time is not "before": no reply.
            email("z1", "C5", "M1", t - 3 * DAY_MS, alice, &[dave]),
            email("z2", "C5", "M1", t - 3 * DAY_MS, dave, &[alice]),
        ];
        let o = run(idx, &[], &recs);
        let aw = row(&o, "A", Level::Week).unwrap();
        assert_eq!(aw.average_duration_of_account_email_replies, Some(150.0));
        assert_eq!((aw.emails_to_account, aw.emails_from_account), (3, 4));
        assert_eq!(aw.contacts_involved_emails, 3);
        assert_eq!(aw.account_contacts_involved_emails, 2);
        assert_eq!(
            row(&o, "A", Level::Month)
                .unwrap()
                .average_duration_of_account_email_replies,
            Some(580.0)
        );
        assert_eq!(
            row(&o, "A", Level::Year)
                .unwrap()
                .average_duration_of_account_email_replies,
            Some(36435.0)
        );
        let bw = row(&o, "B", Level::Week).unwrap();
        assert_eq!(bw.average_duration_of_account_email_replies, Some(60.0));
        assert_eq!((bw.emails_to_account, bw.emails_from_account), (2, 2));
    }

    #[test]
    fn shared_contact_and_hand_computed_scores() {
        let t = t0();
        let alice = i("alice");
        let idx = index(&[
            ("A", "bob@fabrikam.com"),
            ("B", "bob@fabrikam.com"),
            ("B", "zed@fabrikam.com"),
            ("C", "yan@contoso.example"),
        ]);
        let recs = vec![
            email(
                "e1",
                "c1",
                "M1",
                t - DAY_MS,
                x("bob@fabrikam.com"),
                &[alice],
            ),
            email(
                "e2",
                "c2",
                "M1",
                t - DAY_MS,
                x("zed@fabrikam.com"),
                &[alice],
            ),
            meeting(
                "m1",
                "M1",
                1,
                t - DAY_MS,
                30,
                false,
                alice,
                &[x("yan@contoso.example")],
            ),
        ];
        let o = run(idx, &[], &recs);
        let y = |a| row(&o, a, Level::Year).unwrap();
        assert_eq!(y("A").emails_from_account, 1);
        assert_eq!(y("B").emails_from_account, 2);
        assert_eq!(y("B").account_contacts_involved_emails, 2);
        assert_eq!(y("C").meetings_to_account, 1);
        // E: A=w, B=2w, C=0 → ½, 1, 0. M: only C → 1. B: 1,2,1 → ⅔, 1, ⅔.
        assert_eq!(y("A").engagement_score, 33); // 20 + 13.33
        assert_eq!(y("B").engagement_score, 60); // 40 + 20
        assert_eq!(y("C").engagement_score, 53); // 40 + 13.33
        let card = o.cards.iter().find(|c| c.account_id == "A").unwrap();
        assert_eq!(card.levels.year.components.email, 0.5);
        assert_eq!(card.levels.year.components.meeting, 0.0);
        assert!((card.levels.year.components.breadth - 2.0 / 3.0).abs() < 1e-12);
        assert_eq!(card.levels.week, card.levels.year);
        assert_eq!(o.summary.enriched_customers, 3);
        assert_eq!(o.cards.len(), 3);
        let v = card.view(Level::Month);
        assert_eq!(v.period, Level::Month);
        assert_eq!(v.totals.emails_from_account, 1);
        assert_eq!(v.history.len(), 1);
        assert_eq!(v.history[0].week_start, date(2026, 3, 9));
    }

    #[test]
    fn meetings_cancelled_removed_future_and_versions() {
        let t = t0();
        let (alice, bob) = (i("alice"), x("bob@fabrikam.com"));
        let d1 = t - DAY_MS;
        let recs = vec![
            // m1: newest version cancelled → out.
            meeting("m1", "M1", 1, d1, 60, false, alice, &[bob]),
            meeting("m1", "M1", 2, d1, 60, true, alice, &[bob]),
            // m2: older cancelled, newer (other mailbox) live → counted, 45 min.
            meeting("m2", "M1", 1, d1, 45, true, alice, &[bob]),
            meeting("m2", "M2", 2, d1, 45, false, alice, &[bob]),
            // m3: its only copy removed after its version → out.
            meeting("m3", "M1", 100, d1, 60, false, alice, &[bob]),
            // m4: one copy removed, the other live → counted, 60 min.
            meeting("m4", "M1", 100, d1, 60, false, alice, &[bob]),
            meeting("m4", "M2", 100, d1, 60, false, alice, &[bob]),
            // m5: modified after the removal → live again; organized by the contact, 30 min.
            meeting("m5", "M1", 300, d1, 30, false, bob, &[alice]),
            // m6: future.
            meeting("m6", "M1", 1, t + DAY_MS, 60, false, alice, &[bob]),
            // m7: newest version moved from Week (60 min) to Month (30 min).
            meeting("m7", "M1", 1, t - 2 * DAY_MS, 60, false, alice, &[bob]),
            meeting("m7", "M1", 2, t - 20 * DAY_MS, 30, false, alice, &[bob]),
            // m8: tie on version, the cancelled one wins.
            meeting("m8", "M1", 5, d1, 60, false, alice, &[bob]),
            meeting("m8", "M2", 5, d1, 60, true, alice, &[bob]),
            // m9: processed but matches no contact.
            meeting(
                "m9",
                "M1",
                1,
                d1,
                60,
                false,
                alice,
                &[x("stranger@x.example")],
            ),
        ];
        let tomb = [
            removed("m3", "M1", 200),
            removed("m4", "M1", 200),
            removed("m5", "M1", 200),
        ];
        let o = run(index(&[("A", "bob@fabrikam.com")]), &tomb, &recs);
        let w = row(&o, "A", Level::Week).unwrap();
        assert_eq!((w.meetings_to_account, w.meetings_from_account), (2, 1));
        assert_eq!(w.average_duration_of_meetings, Some(45.0));
        let m = row(&o, "A", Level::Month).unwrap();
        assert_eq!((m.meetings_to_account, m.meetings_from_account), (3, 1));
        // (45 + 60 + 30 + 30) / 4 = 41.25 → 41.3 (half up).
        assert_eq!(m.average_duration_of_meetings, Some(41.3));
        assert_eq!(m.days_since_last_meeting, Some(1));
        assert_eq!(m.days_since_last_email, None);
        assert_eq!(m.contacts_involved_meetings, 1);
        assert_eq!(m.account_contacts_involved_meetings, 1);
        assert_eq!(o.summary.meetings_processed, 5);
        assert_eq!(o.summary.emails_processed, 0);
        assert_eq!(o.summary.days_aggregated, 21);
    }

    #[test]
    fn email_in_three_mailboxes_counts_once() {
        let t = t0();
        let (alice, erin, frank) = (i("alice"), i("erin"), i("frank"));
        let bob = x("bob@fabrikam.com");
        let recs: Vec<Activity> = ["M1", "M2", "M3"]
            .iter()
            .map(|mb| email("e1", "c1", mb, t - HOUR, bob, &[alice, erin, frank]))
            .collect();
        let o = run(index(&[("A", "bob@fabrikam.com")]), &[], &recs);
        let w = row(&o, "A", Level::Week).unwrap();
        assert_eq!(w.emails_from_account, 1);
        assert_eq!(w.contacts_involved_emails, 3);
        assert_eq!(o.summary.emails_processed, 1);
        assert_eq!(o.summary.days_aggregated, 1);
        assert_eq!(o.history.len(), 1);
        assert_eq!(o.history[0].emails_from_account, 1);
    }

    #[test]
    fn half_up_rounding_over_sixteen_accounts() {
        let t = t0();
        let alice = i("alice");
        let mut pairs = Vec::new();
        let mut recs = Vec::new();
        for n in 1..=16 {
            pairs.push((format!("A{n:02}"), format!("c{n}@fabrikam.com")));
            for j in 0..n {
                recs.push(email(
                    &format!("m{n}-{j}"),
                    &format!("conv{n}-{j}"),
                    "M1",
                    t - DAY_MS,
                    x(&format!("c{n}@fabrikam.com")),
                    &[alice],
                ));
            }
        }
        let idx = ContactIndex::new(pairs.iter().map(|(a, e)| (a.clone(), pz().hash_address(e))));
        let o = run(idx, &[], &recs);
        for n in 1..=16u64 {
            // 100·(0.4·n/16 + 0.2·1) = 20 + 2.5n, half up.
            let expected = ((200 + 25 * n + 5) / 10) as u8;
            let r = row(&o, &format!("A{n:02}"), Level::Year).unwrap();
            assert_eq!(r.engagement_score, expected, "account {n}");
        }
        assert_eq!(row(&o, "A01", Level::Week).unwrap().engagement_score, 23);
    }

    #[test]
    fn history_weeks_start_on_monday() {
        let t = t0(); // Tuesday 2026-03-10
        let (alice, bob) = (i("alice"), x("bob@fabrikam.com"));
        let recs = vec![
            email("e1", "c1", "M1", t - DAY_MS, alice, &[bob]), // Mon 03-09
            email("e2", "c2", "M1", t - 2 * DAY_MS, bob, &[alice]), // Sun 03-08
            meeting("m1", "M1", 1, t - 2 * DAY_MS, 30, false, bob, &[alice]),
            email("e3", "c3", "M1", t - 400 * DAY_MS, bob, &[alice]), // outside Year
        ];
        let o = run(index(&[("A", "bob@fabrikam.com")]), &[], &recs);
        assert_eq!(
            o.history,
            vec![
                HistoryRow {
                    account_id: "A".into(),
                    week_start: date(2026, 3, 2),
                    emails_to_account: 0,
                    emails_from_account: 1,
                    meetings_to_account: 0,
                    meetings_from_account: 1,
                },
                HistoryRow {
                    account_id: "A".into(),
                    week_start: date(2026, 3, 9),
                    emails_to_account: 1,
                    emails_from_account: 0,
                    meetings_to_account: 0,
                    meetings_from_account: 0,
                },
            ]
        );
    }

    #[test]
    fn unmatched_activity_counts_in_summary_only() {
        let t = t0();
        let recs = vec![
            email(
                "e1",
                "c1",
                "M1",
                t - 2 * DAY_MS,
                i("alice"),
                &[x("who@else.example")],
            ),
            email("e2", "c2", "M1", t - DAY_MS, i("alice"), &[i("erin")]), // internal-only
        ];
        let o = run(index(&[("A", "bob@fabrikam.com")]), &[], &recs);
        assert!(o.office.is_empty() && o.cards.is_empty() && o.history.is_empty());
        assert_eq!(
            o.summary,
            RunSummary {
                enriched_customers: 0,
                emails_processed: 1,
                meetings_processed: 0,
                days_aggregated: 3,
            }
        );
    }

    #[test]
    fn rows_sorted_by_account_then_level() {
        let t = t0();
        let alice = i("alice");
        let recs = vec![
            email("e1", "c1", "M1", t - DAY_MS, x("b@z.com"), &[alice]),
            email("e2", "c2", "M1", t - 10 * DAY_MS, x("a@z.com"), &[alice]),
        ];
        let o = run(index(&[("Zed", "a@z.com"), ("Abe", "b@z.com")]), &[], &recs);
        let keys: Vec<(&str, Level)> = o
            .office
            .iter()
            .map(|r| (r.account_id.as_str(), r.level))
            .collect();
        assert_eq!(
            keys,
            vec![
                ("Abe", Level::Week),
                ("Abe", Level::Month),
                ("Abe", Level::Year),
                ("Zed", Level::Month),
                ("Zed", Level::Year),
            ]
        );
    }

    #[test]
    fn owned_and_encoded_paths_agree_and_corrupt_partitions_change_nothing() {
        let t = t0();
        let alice = i("alice");
        let recs = vec![
            email("e1", "c1", "M1", t - DAY_MS, x("b@z.com"), &[alice]),
            meeting("m1", "M1", 1, t - DAY_MS, 30, false, alice, &[x("b@z.com")]),
        ];
        let idx = index(&[("A", "b@z.com")]);
        let encoded = run(idx.clone(), &[], &recs);
        let mut s = Scorer::new(idx.clone(), as_of(), ScoreParams::default());
        let mut garbage = Vec::new();
        encode(&recs, &mut garbage);
        garbage.truncate(garbage.len() - 3);
        assert!(s.add_partition_bytes(&garbage).is_err());
        for p in partitions(&recs) {
            s.add_partition(p);
        }
        assert_eq!(s.finish(), encoded);
    }

    #[test]
    fn serde_names() {
        assert_eq!(serde_json::to_string(&Level::Week).unwrap(), "\"Week\"");
        assert_eq!("Year".parse::<Level>().unwrap(), Level::Year);
        assert!("year".parse::<Level>().is_err());
        assert!(ScoreParams::default().validate().is_empty());
        let bad = ScoreParams {
            half_life_days: 0.0,
            weight_email: 0.5,
            weight_meeting: 0.5,
            weight_breadth: 0.5,
        };
        assert_eq!(bad.validate().len(), 1);
    }

    #[test]
    fn score_rounding_epsilon_and_bounds() {
        let p = ScoreParams::default();
        let c = |e, m, b| Components {
            email: e,
            meeting: m,
            breadth: b,
        };
        assert_eq!(engagement_score(&p, &c(1.0, 1.0, 1.0)), 100);
        assert_eq!(engagement_score(&p, &c(0.0, 0.0, 0.0)), 0);
        // 0.4·0.0625 = 0.025 → 2.5 → 3 (half up, despite float noise).
        assert_eq!(engagement_score(&p, &c(0.0625, 0.0, 0.0)), 3);
        assert_eq!(mean_minutes_1dp(41 * MIN as i128 + 15_000, 1), Some(41.3));
        assert_eq!(mean_minutes_1dp(165 * MIN as i128, 4), Some(41.3));
        assert_eq!(mean_minutes_1dp(164 * MIN as i128, 4), Some(41.0));
        assert_eq!(mean_minutes_1dp(0, 0), None);
    }

    // ----- properties -----

    #[derive(Debug, Clone)]
    struct World {
        pairs: Vec<(String, String)>,
        records: Vec<Activity>,
        tombstones: Vec<MeetingRemoved>,
    }

    fn party_strategy() -> impl Strategy<Value = Party> {
        prop_oneof![
            (0..3u8).prop_map(|n| i(&format!("p{n}"))),
            (0..6u8).prop_map(|n| x(&format!("c{n}@f.com"))),
            Just(x("stranger@x.com")),
        ]
    }

    fn time_strategy() -> impl Strategy<Value = i64> {
        prop_oneof![
            (-2 * DAY_MS..400 * DAY_MS).prop_map(|age| t0() - age),
            prop::sample::select(vec![7, 30, 365]).prop_map(|d| t0() - d * DAY_MS),
            prop::sample::select(vec![7, 30, 365]).prop_map(|d| t0() - d * DAY_MS + 1),
        ]
    }

    fn world_strategy() -> impl Strategy<Value = World> {
        let pairs = prop::collection::vec((0..4u8, 0..6u8), 1..10).prop_map(|v| {
            let mut p: Vec<(String, String)> = v
                .into_iter()
                .map(|(a, c)| (format!("A{a}"), format!("c{c}@f.com")))
                .collect();
            p.push(("A0".into(), "only-a0@f.com".into()));
            p
        });
        let email_s = (
            0..12u8,
            0..3u8,
            0..3u8,
            time_strategy(),
            party_strategy(),
            prop::collection::vec(party_strategy(), 0..4),
        )
            .prop_map(|(m, c, mb, at, from, to)| {
                email(
                    &format!("msg{m}"),
                    &format!("conv{c}"),
                    &format!("mb{mb}"),
                    at,
                    from,
                    &to,
                )
            });
        let meeting_s = (
            0..6u8,
            0..3u8,
            0..4i64,
            time_strategy(),
            0..120i64,
            any::<bool>(),
            party_strategy(),
            prop::collection::vec(party_strategy(), 0..4),
        )
            .prop_map(|(u, mb, v, at, mins, c, org, att)| {
                meeting(
                    &format!("uid{u}"),
                    &format!("mb{mb}"),
                    v,
                    at,
                    mins,
                    c,
                    org,
                    &att,
                )
            });
        let records = prop::collection::vec(prop_oneof![email_s, meeting_s], 0..40);
        let tombstones = prop::collection::vec(
            (0..6u8, 0..3u8, 0..4i64)
                .prop_map(|(u, mb, at)| removed(&format!("uid{u}"), &format!("mb{mb}"), at)),
            0..4,
        );
        (pairs, records, tombstones).prop_map(|(pairs, records, tombstones)| World {
            pairs,
            records,
            tombstones,
        })
    }

    fn world_index(w: &World) -> ContactIndex {
        ContactIndex::new(
            w.pairs
                .iter()
                .map(|(a, e)| (a.clone(), pz().hash_address(e))),
        )
    }

    fn score_of(o: &ScoreOutcome, account: &str, level: Level) -> u8 {
        row(o, account, level).map_or(0, |r| r.engagement_score)
    }

    /// Deterministic Fisher–Yates driven by a seed.
    fn shuffle<T>(v: &mut [T], mut seed: u64) {
        for n in (1..v.len()).rev() {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let j = (seed % (n as u64 + 1)) as usize;
            v.swap(n, j);
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]

        #[test]
        fn prop_order_does_not_matter(w in world_strategy(), seed in 1..u64::MAX) {
            let a = run(world_index(&w), &w.tombstones, &w.records);
            // Shuffle records, tombstones and the contact pairs; feed partitions in reverse, owned path.
            let mut recs = w.records.clone();
            shuffle(&mut recs, seed);
            let mut tomb = w.tombstones.clone();
            shuffle(&mut tomb, seed ^ 0x5555);
            let mut pairs = w.pairs.clone();
            shuffle(&mut pairs, seed ^ 0xAAAA);
            let idx = ContactIndex::new(pairs.iter().map(|(a, e)| (a.clone(), pz().hash_address(e))));
            let mut s = Scorer::new(idx, as_of(), ScoreParams::default());
            s.add_removed(tomb);
            let mut parts = partitions(&recs);
            parts.reverse();
            for p in parts {
                s.add_partition(p);
            }
            prop_assert_eq!(s.finish(), a);
        }

        #[test]
        fn prop_bounded_and_first_everywhere_is_100(w in world_strategy()) {
            let o = run(world_index(&w), &w.tombstones, &w.records);
            for c in &o.cards {
                for l in Level::ALL {
                    let cl = c.levels.get(l);
                    prop_assert!(cl.score <= 100);
                    for v in [cl.components.email, cl.components.meeting, cl.components.breadth] {
                        prop_assert!((0.0..=1.0).contains(&v));
                    }
                    if cl.components.email == 1.0 && cl.components.meeting == 1.0 && cl.components.breadth == 1.0 {
                        prop_assert_eq!(cl.score, 100);
                    }
                }
            }
            for r in &o.office {
                prop_assert!(r.engagement_score <= 100);
                prop_assert!(r.emails_to_account + r.emails_from_account + r.meetings_to_account + r.meetings_from_account > 0);
            }
            prop_assert_eq!(o.summary.enriched_customers as usize, o.cards.len());
        }

        #[test]
        fn prop_more_activity_never_lowers_own_score(
            w in world_strategy(),
            kind in 0..3u8,
            age in 0..364 * DAY_MS,
            seq in any::<u32>(),
        ) {
            let before = run(world_index(&w), &w.tombstones, &w.records);
            let at = t0() - age;
            let only = x("only-a0@f.com");
            let extra = match kind {
                0 => email(&format!("extra{seq}"), &format!("xconv{seq}"), "mb0", at, only, &[i("p0")]),
                1 => email(&format!("extra{seq}"), &format!("xconv{seq}"), "mb0", at, i("p0"), &[only]),
                _ => meeting(&format!("xuid{seq}"), "mb0", 1, at, 30, false, i("p0"), &[only]),
            };
            let mut recs = w.records.clone();
            recs.push(extra);
            let after = run(world_index(&w), &w.tombstones, &recs);
            for l in Level::ALL {
                prop_assert!(
                    score_of(&after, "A0", l) >= score_of(&before, "A0", l),
                    "level {:?}: {} < {}", l, score_of(&after, "A0", l), score_of(&before, "A0", l)
                );
            }
        }
    }
}
