//! The compact activity form the downloader writes to S3 and the scorer reads (DESIGN §6, §12).
//!
//! Only metadata survives: keyed hashes of external addresses and of Graph identifiers, internal people by
//! object id, times in epoch milliseconds (UTC). Private/personal events, drafts and internal-only items
//! never reach this form (the downloader drops them); cancelled meetings do (the newest version wins, and a
//! cancelled newest version means the meeting does not count). Delta `@removed` entries only carry the
//! event id, so they are [`MeetingRemoved`] tombstones kept in a separate small stream the scorer loads
//! first.
//!
//! # Binary format (version 1, little-endian, fixed-width)
//!
//! A stream is one or more *blocks*; [`encode`] writes one block, so blocks can simply be appended
//! (e.g. one per download page) and the concatenation is still a valid stream.
//!
//! ```text
//! block   = header record*
//! header  = "AEACT" (5 bytes) version:u8 (=1)
//! record  = 0x01 email | 0x02 meeting | 0x03 removed
//! email   = message_key[16] conversation_key[16] mailbox[16] sent_at_ms:i64 from:party n:u32 party{n}
//! meeting = uid_key[16] event_key[16] mailbox[16] version_ms:i64 start_ms:i64 end_ms:i64
//!           cancelled:u8(0|1) organizer:party n:u32 party{n}
//! removed = mailbox[16] event_key[16] removed_at_ms:i64
//! party   = kind:u8 (0 internal, 1 external) id[16]
//! ```
//!
//! Decoding never panics: truncated or corrupt input yields an [`ActivityError`] and ends the iteration.
//! [`ActivityReader::next_ref`] decodes without allocating (party lists are borrowed slices).

use serde::{Deserialize, Serialize};

use crate::privacy::Id16;

/// A participant: an internal person (mailbox object id bytes, or a keyed hash of an internal address)
/// or an external one (keyed hash of the address).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Party {
    Internal(Id16),
    External(Id16),
}

impl Party {
    pub fn id(&self) -> &Id16 {
        match self {
            Party::Internal(id) | Party::External(id) => id,
        }
    }

    pub fn is_internal(&self) -> bool {
        matches!(self, Party::Internal(_))
    }
}

/// One copy of an email as seen in one mailbox (inbox or sent items).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Email {
    /// Keyed hash of internetMessageId.
    pub message_key: Id16,
    /// Keyed hash of conversationId.
    pub conversation_key: Id16,
    pub mailbox: Id16,
    pub sent_at_ms: i64,
    pub from: Party,
    /// To and cc.
    pub recipients: Vec<Party>,
}

/// One version of a calendar event as seen in one mailbox.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Meeting {
    /// Keyed hash of iCalUId.
    pub uid_key: Id16,
    /// Keyed hash of the mailbox's event id.
    pub event_key: Id16,
    pub mailbox: Id16,
    /// lastModifiedDateTime.
    pub version_ms: i64,
    pub start_ms: i64,
    pub end_ms: i64,
    pub cancelled: bool,
    pub organizer: Party,
    pub attendees: Vec<Party>,
}

/// A delta `@removed` entry: only the event id is known.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct MeetingRemoved {
    pub mailbox: Id16,
    pub event_key: Id16,
    pub removed_at_ms: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Activity {
    Email(Email),
    Meeting(Meeting),
    MeetingRemoved(MeetingRemoved),
}

/// Number of hash partitions of the activity streams.
pub const PARTITIONS: u16 = 16;

/// The partition of a key: uniform because keys are keyed hashes.
pub fn partition_of_key(key: &Id16) -> u16 {
    u16::from_le_bytes([key[0], key[1]]) % PARTITIONS
}

/// Emails by conversation (all copies of a message and the whole reply chain land together), meetings by
/// iCalUId (all versions together). Tombstones have no partition: they go to the separate "removed" stream.
pub fn partition_of(activity: &Activity) -> Option<u16> {
    match activity {
        Activity::Email(e) => Some(partition_of_key(&e.conversation_key)),
        Activity::Meeting(m) => Some(partition_of_key(&m.uid_key)),
        Activity::MeetingRemoved(_) => None,
    }
}

pub const MAGIC: &[u8; 5] = b"AEACT";
pub const FORMAT_VERSION: u8 = 1;
const HEADER_LEN: usize = 6;

const TAG_EMAIL: u8 = 1;
const TAG_MEETING: u8 = 2;
const TAG_REMOVED: u8 = 3;
const PARTY_INTERNAL: u8 = 0;
const PARTY_EXTERNAL: u8 = 1;

const PARTY_LEN: usize = 17;
/// Email fields after the tag, up to and including the party count.
const EMAIL_FIXED: usize = 16 * 3 + 8 + PARTY_LEN + 4;
/// Meeting fields after the tag, up to and including the party count.
const MEETING_FIXED: usize = 16 * 3 + 8 * 3 + 1 + PARTY_LEN + 4;
const REMOVED_FIXED: usize = 16 * 2 + 8;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ActivityError {
    #[error("activity stream does not start with the expected header")]
    BadHeader,
    #[error("unsupported activity format version {0}")]
    UnsupportedVersion(u8),
    #[error("activity stream truncated at byte {offset}")]
    Truncated { offset: usize },
    #[error("unknown record tag {tag} at byte {offset}")]
    BadTag { offset: usize, tag: u8 },
    #[error("invalid value in the record at byte {offset}")]
    BadValue { offset: usize },
}

fn put_party(out: &mut Vec<u8>, p: &Party) {
    match p {
        Party::Internal(id) => {
            out.push(PARTY_INTERNAL);
            out.extend_from_slice(id);
        }
        Party::External(id) => {
            out.push(PARTY_EXTERNAL);
            out.extend_from_slice(id);
        }
    }
}

fn put_parties(out: &mut Vec<u8>, parties: &[Party]) {
    // A party list longer than u32::MAX cannot come from Graph; clamp rather than corrupt the stream.
    let n = parties.len().min(u32::MAX as usize);
    out.extend_from_slice(&(n as u32).to_le_bytes());
    for p in &parties[..n] {
        put_party(out, p);
    }
}

/// Appends one block (header and records) to `out`.
pub fn encode(records: &[Activity], out: &mut Vec<u8>) {
    out.extend_from_slice(MAGIC);
    out.push(FORMAT_VERSION);
    for r in records {
        match r {
            Activity::Email(e) => {
                out.reserve(1 + EMAIL_FIXED + e.recipients.len() * PARTY_LEN);
                out.push(TAG_EMAIL);
                out.extend_from_slice(&e.message_key);
                out.extend_from_slice(&e.conversation_key);
                out.extend_from_slice(&e.mailbox);
                out.extend_from_slice(&e.sent_at_ms.to_le_bytes());
                put_party(out, &e.from);
                put_parties(out, &e.recipients);
            }
            Activity::Meeting(m) => {
                out.reserve(1 + MEETING_FIXED + m.attendees.len() * PARTY_LEN);
                out.push(TAG_MEETING);
                out.extend_from_slice(&m.uid_key);
                out.extend_from_slice(&m.event_key);
                out.extend_from_slice(&m.mailbox);
                out.extend_from_slice(&m.version_ms.to_le_bytes());
                out.extend_from_slice(&m.start_ms.to_le_bytes());
                out.extend_from_slice(&m.end_ms.to_le_bytes());
                out.push(u8::from(m.cancelled));
                put_party(out, &m.organizer);
                put_parties(out, &m.attendees);
            }
            Activity::MeetingRemoved(r) => {
                out.push(TAG_REMOVED);
                out.extend_from_slice(&r.mailbox);
                out.extend_from_slice(&r.event_key);
                out.extend_from_slice(&r.removed_at_ms.to_le_bytes());
            }
        }
    }
}

/// A borrowed, validated party list (`n` × 17 bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PartyList<'a> {
    bytes: &'a [u8],
}

impl<'a> PartyList<'a> {
    pub fn len(&self) -> usize {
        self.bytes.len() / PARTY_LEN
    }

    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    pub fn iter(&self) -> impl ExactSizeIterator<Item = Party> + 'a {
        // Kinds were validated when the list was decoded.
        self.bytes.chunks_exact(PARTY_LEN).map(party_unchecked)
    }

    pub fn to_vec(&self) -> Vec<Party> {
        self.iter().collect()
    }
}

#[inline]
fn id_at(b: &[u8], at: usize) -> Id16 {
    let mut id = [0u8; 16];
    id.copy_from_slice(&b[at..at + 16]);
    id
}

#[inline]
fn i64_at(b: &[u8], at: usize) -> i64 {
    let mut x = [0u8; 8];
    x.copy_from_slice(&b[at..at + 8]);
    i64::from_le_bytes(x)
}

#[inline]
fn u32_at(b: &[u8], at: usize) -> u32 {
    let mut x = [0u8; 4];
    x.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(x)
}

/// Decodes a 17-byte chunk whose kind byte is known to be valid.
#[inline]
fn party_unchecked(c: &[u8]) -> Party {
    let id = id_at(c, 1);
    if c[0] == PARTY_INTERNAL {
        Party::Internal(id)
    } else {
        Party::External(id)
    }
}

#[inline]
fn party_at(b: &[u8], at: usize, offset: usize) -> Result<Party, ActivityError> {
    match b[at] {
        PARTY_INTERNAL => Ok(Party::Internal(id_at(b, at + 1))),
        PARTY_EXTERNAL => Ok(Party::External(id_at(b, at + 1))),
        _ => Err(ActivityError::BadValue {
            offset: offset + at,
        }),
    }
}

/// A decoded email borrowing its recipient list from the input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EmailRef<'a> {
    pub message_key: Id16,
    pub conversation_key: Id16,
    pub mailbox: Id16,
    pub sent_at_ms: i64,
    pub from: Party,
    pub recipients: PartyList<'a>,
}

impl EmailRef<'_> {
    pub fn to_owned(&self) -> Email {
        Email {
            message_key: self.message_key,
            conversation_key: self.conversation_key,
            mailbox: self.mailbox,
            sent_at_ms: self.sent_at_ms,
            from: self.from,
            recipients: self.recipients.to_vec(),
        }
    }
}

/// A decoded meeting borrowing its attendee list from the input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MeetingRef<'a> {
    pub uid_key: Id16,
    pub event_key: Id16,
    pub mailbox: Id16,
    pub version_ms: i64,
    pub start_ms: i64,
    pub end_ms: i64,
    pub cancelled: bool,
    pub organizer: Party,
    pub attendees: PartyList<'a>,
}

impl MeetingRef<'_> {
    pub fn to_owned(&self) -> Meeting {
        Meeting {
            uid_key: self.uid_key,
            event_key: self.event_key,
            mailbox: self.mailbox,
            version_ms: self.version_ms,
            start_ms: self.start_ms,
            end_ms: self.end_ms,
            cancelled: self.cancelled,
            organizer: self.organizer,
            attendees: self.attendees.to_vec(),
        }
    }
}

/// Zero-allocation view of one record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ActivityRef<'a> {
    Email(EmailRef<'a>),
    Meeting(MeetingRef<'a>),
    MeetingRemoved(MeetingRemoved),
}

impl ActivityRef<'_> {
    pub fn to_owned(&self) -> Activity {
        match self {
            ActivityRef::Email(e) => Activity::Email(e.to_owned()),
            ActivityRef::Meeting(m) => Activity::Meeting(m.to_owned()),
            ActivityRef::MeetingRemoved(r) => Activity::MeetingRemoved(*r),
        }
    }
}

/// Streaming decoder over an encoded stream. As an iterator it yields owned [`Activity`] values;
/// [`ActivityReader::next_ref`] yields borrowed views without allocating. After an error it yields nothing.
#[derive(Debug, Clone)]
pub struct ActivityReader<'a> {
    bytes: &'a [u8],
    pos: usize,
    /// A header is expected at `pos` (start of input).
    expect_header: bool,
    failed: bool,
}

impl<'a> ActivityReader<'a> {
    pub fn new(bytes: &'a [u8]) -> Self {
        Self {
            bytes,
            pos: 0,
            expect_header: true,
            failed: false,
        }
    }

    /// Bytes consumed so far.
    pub fn position(&self) -> usize {
        self.pos
    }

    fn read_header(&mut self) -> Result<(), ActivityError> {
        let h = self
            .bytes
            .get(self.pos..self.pos + HEADER_LEN)
            .ok_or(ActivityError::Truncated { offset: self.pos })?;
        if &h[..5] != MAGIC {
            return Err(ActivityError::BadHeader);
        }
        if h[5] != FORMAT_VERSION {
            return Err(ActivityError::UnsupportedVersion(h[5]));
        }
        self.pos += HEADER_LEN;
        Ok(())
    }

    fn fixed(&self, at: usize, len: usize) -> Result<&'a [u8], ActivityError> {
        self.bytes
            .get(at..at + len)
            .ok_or(ActivityError::Truncated { offset: at })
    }

    fn parties(&self, at: usize, n: u32) -> Result<PartyList<'a>, ActivityError> {
        let len = (n as usize)
            .checked_mul(PARTY_LEN)
            .ok_or(ActivityError::Truncated { offset: at })?;
        let bytes = self.fixed(at, len)?;
        for (i, c) in bytes.chunks_exact(PARTY_LEN).enumerate() {
            if c[0] > PARTY_EXTERNAL {
                return Err(ActivityError::BadValue {
                    offset: at + i * PARTY_LEN,
                });
            }
        }
        Ok(PartyList { bytes })
    }

    fn decode_one(&mut self) -> Result<Option<ActivityRef<'a>>, ActivityError> {
        if self.expect_header {
            self.read_header()?;
            self.expect_header = false;
        }
        loop {
            let Some(&tag) = self.bytes.get(self.pos) else {
                return Ok(None);
            };
            let start = self.pos + 1;
            match tag {
                TAG_EMAIL => {
                    let b = self.fixed(start, EMAIL_FIXED)?;
                    let from = party_at(b, 56, start)?;
                    let n = u32_at(b, 73);
                    let recipients = self.parties(start + EMAIL_FIXED, n)?;
                    self.pos = start + EMAIL_FIXED + recipients.bytes.len();
                    return Ok(Some(ActivityRef::Email(EmailRef {
                        message_key: id_at(b, 0),
                        conversation_key: id_at(b, 16),
                        mailbox: id_at(b, 32),
                        sent_at_ms: i64_at(b, 48),
                        from,
                        recipients,
                    })));
                }
                TAG_MEETING => {
                    let b = self.fixed(start, MEETING_FIXED)?;
                    let cancelled = match b[72] {
                        0 => false,
                        1 => true,
                        _ => return Err(ActivityError::BadValue { offset: start + 72 }),
                    };
                    let organizer = party_at(b, 73, start)?;
                    let n = u32_at(b, 90);
                    let attendees = self.parties(start + MEETING_FIXED, n)?;
                    self.pos = start + MEETING_FIXED + attendees.bytes.len();
                    return Ok(Some(ActivityRef::Meeting(MeetingRef {
                        uid_key: id_at(b, 0),
                        event_key: id_at(b, 16),
                        mailbox: id_at(b, 32),
                        version_ms: i64_at(b, 48),
                        start_ms: i64_at(b, 56),
                        end_ms: i64_at(b, 64),
                        cancelled,
                        organizer,
                        attendees,
                    })));
                }
                TAG_REMOVED => {
                    let b = self.fixed(start, REMOVED_FIXED)?;
                    self.pos = start + REMOVED_FIXED;
                    return Ok(Some(ActivityRef::MeetingRemoved(MeetingRemoved {
                        mailbox: id_at(b, 0),
                        event_key: id_at(b, 16),
                        removed_at_ms: i64_at(b, 32),
                    })));
                }
                t if t == MAGIC[0] => {
                    // The next appended block.
                    self.read_header()?;
                }
                t => {
                    return Err(ActivityError::BadTag {
                        offset: self.pos,
                        tag: t,
                    });
                }
            }
        }
    }

    /// The next record as a borrowed view (no allocation).
    #[inline]
    pub fn next_ref(&mut self) -> Option<Result<ActivityRef<'a>, ActivityError>> {
        if self.failed {
            return None;
        }
        match self.decode_one() {
            Ok(Some(r)) => Some(Ok(r)),
            Ok(None) => None,
            Err(e) => {
                self.failed = true;
                Some(Err(e))
            }
        }
    }
}

impl Iterator for ActivityReader<'_> {
    type Item = Result<Activity, ActivityError>;

    fn next(&mut self) -> Option<Self::Item> {
        self.next_ref().map(|r| r.map(|a| a.to_owned()))
    }
}

impl std::iter::FusedIterator for ActivityReader<'_> {}

/// Decodes a whole stream.
pub fn decode_all(bytes: &[u8]) -> Result<Vec<Activity>, ActivityError> {
    ActivityReader::new(bytes).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn id(n: u8) -> Id16 {
        [n; 16]
    }

    fn samples() -> Vec<Activity> {
        vec![
            Activity::Email(Email {
                message_key: id(1),
                conversation_key: id(2),
                mailbox: id(3),
                sent_at_ms: 1_700_000_000_000,
                from: Party::Internal(id(4)),
                recipients: vec![Party::External(id(5)), Party::Internal(id(6))],
            }),
            Activity::Meeting(Meeting {
                uid_key: id(7),
                event_key: id(8),
                mailbox: id(9),
                version_ms: -5,
                start_ms: 10,
                end_ms: 20,
                cancelled: true,
                organizer: Party::External(id(10)),
                attendees: vec![],
            }),
            Activity::MeetingRemoved(MeetingRemoved {
                mailbox: id(11),
                event_key: id(12),
                removed_at_ms: i64::MAX,
            }),
        ]
    }

    #[test]
    fn roundtrip_and_sizes() {
        let recs = samples();
        let mut buf = Vec::new();
        encode(&recs, &mut buf);
        assert_eq!(
            buf.len(),
            HEADER_LEN + (1 + EMAIL_FIXED + 34) + (1 + MEETING_FIXED) + (1 + REMOVED_FIXED)
        );
        assert_eq!(decode_all(&buf).unwrap(), recs);
    }

    #[test]
    fn empty_stream_needs_a_header() {
        let mut buf = Vec::new();
        encode(&[], &mut buf);
        assert_eq!(decode_all(&buf).unwrap(), vec![]);
        assert_eq!(decode_all(&[]), Err(ActivityError::Truncated { offset: 0 }));
        assert_eq!(decode_all(b"XXXXX\x01"), Err(ActivityError::BadHeader));
        assert_eq!(
            decode_all(b"AEACT\x09"),
            Err(ActivityError::UnsupportedVersion(9))
        );
    }

    #[test]
    fn appended_blocks_decode_as_one_stream() {
        let recs = samples();
        let mut buf = Vec::new();
        encode(&recs[..1], &mut buf);
        encode(&recs[1..], &mut buf);
        assert_eq!(decode_all(&buf).unwrap(), recs);
    }

    #[test]
    fn every_truncation_is_an_error_and_never_panics() {
        let recs = samples();
        let mut buf = Vec::new();
        encode(&recs, &mut buf);
        let boundaries = [
            HEADER_LEN,
            HEADER_LEN + 1 + EMAIL_FIXED + 34,
            HEADER_LEN + 1 + EMAIL_FIXED + 34 + 1 + MEETING_FIXED,
            buf.len(),
        ];
        for cut in 0..buf.len() {
            let r = decode_all(&buf[..cut]);
            if boundaries.contains(&cut) {
                assert!(r.is_ok(), "cut at record boundary {cut}");
            } else {
                assert!(r.is_err(), "cut at {cut} must fail");
            }
        }
    }

    #[test]
    fn corrupt_values_are_errors() {
        let mut buf = Vec::new();
        encode(&samples()[..1], &mut buf);
        let mut bad_tag = buf.clone();
        bad_tag[HEADER_LEN] = 9;
        assert!(matches!(
            decode_all(&bad_tag),
            Err(ActivityError::BadTag { tag: 9, .. })
        ));
        let mut bad_party = buf.clone();
        bad_party[HEADER_LEN + 1 + 56] = 7;
        assert!(matches!(
            decode_all(&bad_party),
            Err(ActivityError::BadValue { .. })
        ));
        // A huge party count must not allocate or panic.
        let mut huge = buf.clone();
        huge[HEADER_LEN + 1 + 73..HEADER_LEN + 1 + 77].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(
            decode_all(&huge),
            Err(ActivityError::Truncated { .. })
        ));
        // The reader stops after an error.
        let mut r = ActivityReader::new(&bad_tag);
        assert!(r.next().unwrap().is_err());
        assert!(r.next().is_none());
    }

    #[test]
    fn partitions() {
        let recs = samples();
        assert_eq!(partition_of(&recs[0]), Some(partition_of_key(&id(2))));
        assert_eq!(partition_of(&recs[1]), Some(partition_of_key(&id(7))));
        assert_eq!(partition_of(&recs[2]), None);
        for n in 0..=255u8 {
            assert!(partition_of_key(&id(n)) < PARTITIONS);
        }
    }

    fn arb_id() -> impl Strategy<Value = Id16> {
        any::<[u8; 16]>()
    }

    fn arb_party() -> impl Strategy<Value = Party> {
        prop_oneof![
            arb_id().prop_map(Party::Internal),
            arb_id().prop_map(Party::External)
        ]
    }

    fn arb_activity() -> impl Strategy<Value = Activity> {
        let email = (
            arb_id(),
            arb_id(),
            arb_id(),
            any::<i64>(),
            arb_party(),
            prop::collection::vec(arb_party(), 0..5),
        )
            .prop_map(|(m, c, mb, t, from, recipients)| {
                Activity::Email(Email {
                    message_key: m,
                    conversation_key: c,
                    mailbox: mb,
                    sent_at_ms: t,
                    from,
                    recipients,
                })
            });
        let meeting = (
            (arb_id(), arb_id(), arb_id()),
            (any::<i64>(), any::<i64>(), any::<i64>(), any::<bool>()),
            arb_party(),
            prop::collection::vec(arb_party(), 0..5),
        )
            .prop_map(|((u, e, mb), (v, s, en, c), organizer, attendees)| {
                Activity::Meeting(Meeting {
                    uid_key: u,
                    event_key: e,
                    mailbox: mb,
                    version_ms: v,
                    start_ms: s,
                    end_ms: en,
                    cancelled: c,
                    organizer,
                    attendees,
                })
            });
        let removed = (arb_id(), arb_id(), any::<i64>()).prop_map(|(mb, e, t)| {
            Activity::MeetingRemoved(MeetingRemoved {
                mailbox: mb,
                event_key: e,
                removed_at_ms: t,
            })
        });
        prop_oneof![email, meeting, removed]
    }

    proptest! {
        #[test]
        fn prop_roundtrip(recs in prop::collection::vec(arb_activity(), 0..20)) {
            let mut buf = Vec::new();
            encode(&recs, &mut buf);
            prop_assert_eq!(decode_all(&buf).unwrap(), recs.clone());
            // Borrowed views agree with owned decoding.
            let mut r = ActivityReader::new(&buf);
            let mut views = Vec::new();
            while let Some(v) = r.next_ref() {
                views.push(v.unwrap().to_owned());
            }
            prop_assert_eq!(views, recs);
        }

        #[test]
        fn prop_garbage_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..300), prefix in any::<bool>()) {
            let mut buf = Vec::new();
            if prefix {
                encode(&[], &mut buf);
            }
            buf.extend_from_slice(&bytes);
            let _ = decode_all(&buf);
        }
    }
}
