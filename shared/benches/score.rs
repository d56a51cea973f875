//! Scoring benchmark (DESIGN §12): ~5 million synthetic activity records over 100,000 accounts and
//! 300,000 contacts, encoded into 16 partitions (written to a temporary directory, as the downloader
//! writes S3 objects), then decoded and scored single-threaded one partition at a time.
//! Prints records/second and the peak RSS of the scoring phase (VmHWM, reset after generation).
//!
//! Run: `cargo run -p shared --release --example score_bench` (or `cargo bench -p shared --bench score`
//! once `[[bench]] name = "score" harness = false` is in shared/Cargo.toml).
#![cfg_attr(test, allow(dead_code, unused_imports))]

use std::time::Instant;

use chrono::{DateTime, Utc};
use shared::activity::{
    Activity, ActivityReader, Email, Meeting, MeetingRemoved, PARTITIONS, Party, encode,
    partition_of,
};
use shared::privacy::Id16;
use shared::score::{ContactIndex, ScoreParams, Scorer};

const ACCOUNTS: usize = 100_000;
const CONTACTS: usize = 300_000;
const MAILBOXES: usize = 2_500;
const TARGET_EMAIL_COPIES: usize = 4_000_000;
const TARGET_MEETING_COPIES: usize = 1_000_000;
const DAY: i64 = 86_400_000;

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        // xorshift64*
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn id(&mut self) -> Id16 {
        let mut b = [0u8; 16];
        b[..8].copy_from_slice(&self.next().to_le_bytes());
        b[8..].copy_from_slice(&self.next().to_le_bytes());
        b
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

fn vm(field: &str) -> String {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .map(|l| l[field.len()..].trim().to_string())
        })
        .unwrap_or_else(|| "n/a".into())
}

pub fn main() {
    let as_of: DateTime<Utc> = "2026-03-10T12:00:00Z".parse().unwrap_or_default();
    let t = as_of.timestamp_millis();
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);

    // Contacts: 3 per account, every 100th also under the next account (shared addresses).
    let contact_ids: Vec<Id16> = (0..CONTACTS).map(|_| rng.id()).collect();
    let account_names: Vec<String> = (0..ACCOUNTS).map(|a| format!("ACC{a:06}")).collect();
    let mut pairs = Vec::with_capacity(CONTACTS + CONTACTS / 100);
    for (j, c) in contact_ids.iter().enumerate() {
        let a = j / 3;
        pairs.push((account_names[a].clone(), *c));
        if j % 100 == 0 {
            pairs.push((account_names[(a + 1) % ACCOUNTS].clone(), *c));
        }
    }
    let mailboxes: Vec<Id16> = (0..MAILBOXES).map(|_| rng.id()).collect();

    // Skewed account popularity: a = N·u².
    let pick_account = |rng: &mut Rng| -> usize {
        let u = (rng.next() >> 11) as f64 / (1u64 << 53) as f64;
        ((u * u) * ACCOUNTS as f64) as usize % ACCOUNTS
    };

    let mut parts: Vec<Vec<Activity>> = vec![Vec::new(); PARTITIONS as usize];
    let mut tombstones = Vec::new();
    let push = |parts: &mut Vec<Vec<Activity>>, a: Activity| {
        if let Some(p) = partition_of(&a) {
            parts[p as usize].push(a);
        }
    };

    // Emails: conversations alternating internal → contact and contact → internal; one copy per
    // internal mailbox involved (sender's sent items, recipients' inboxes).
    let mut email_copies = 0;
    while email_copies < TARGET_EMAIL_COPIES {
        let conv = rng.id();
        let a = pick_account(&mut rng);
        let contact = Party::External(contact_ids[a * 3 + rng.below(3) as usize]);
        let p = rng.below(MAILBOXES as u64) as usize;
        let q = rng.chance(30).then(|| rng.below(MAILBOXES as u64) as usize);
        let stranger = rng.chance(10).then(|| Party::External(rng.id()));
        let n = 1 + rng.below(4);
        let mut at = t - rng.below(400 * DAY as u64) as i64;
        for i in 0..n {
            let msg = rng.id();
            let internal_sender = i % 2 == 0;
            let mut recipients = Vec::with_capacity(3);
            let from;
            let mut copies = Vec::with_capacity(2);
            if internal_sender {
                from = Party::Internal(mailboxes[p]);
                recipients.push(contact);
                copies.push(p);
            } else {
                from = contact;
                recipients.push(Party::Internal(mailboxes[p]));
                copies.push(p);
            }
            if let Some(q) = q {
                recipients.push(Party::Internal(mailboxes[q]));
                copies.push(q);
            }
            if let Some(s) = stranger {
                recipients.push(s);
            }
            for &mb in &copies {
                push(
                    &mut parts,
                    Activity::Email(Email {
                        message_key: msg,
                        conversation_key: conv,
                        mailbox: mailboxes[mb],
                        sent_at_ms: at,
                        from,
                        recipients: recipients.clone(),
                    }),
                );
                email_copies += 1;
            }
            at += rng.below(3 * DAY as u64) as i64;
        }
    }

    // Meetings: one copy per internal participant's mailbox, 10% with a newer version, 5% cancelled,
    // 1% of copies removed.
    let mut meeting_copies = 0;
    while meeting_copies < TARGET_MEETING_COPIES {
        let uid = rng.id();
        let a = pick_account(&mut rng);
        let p = rng.below(MAILBOXES as u64) as usize;
        let q = rng.below(MAILBOXES as u64) as usize;
        let contact = Party::External(contact_ids[a * 3 + rng.below(3) as usize]);
        let (organizer, mut attendees) = if rng.chance(20) {
            (contact, vec![Party::Internal(mailboxes[p])])
        } else {
            (Party::Internal(mailboxes[p]), vec![contact])
        };
        attendees.push(Party::Internal(mailboxes[q]));
        if rng.chance(30) {
            attendees.push(Party::External(contact_ids[a * 3 + rng.below(3) as usize]));
        }
        let versions = if rng.chance(10) { 2 } else { 1 };
        for v in 0..versions {
            let start = t - rng.below(430 * DAY as u64) as i64 + 30 * DAY;
            let cancelled = v == versions - 1 && rng.chance(5);
            for mb in [p, q] {
                let event_key = rng.id();
                let version_ms = start - DAY + v;
                if rng.chance(1) {
                    tombstones.push(MeetingRemoved {
                        mailbox: mailboxes[mb],
                        event_key,
                        removed_at_ms: version_ms + 1,
                    });
                }
                push(
                    &mut parts,
                    Activity::Meeting(Meeting {
                        uid_key: uid,
                        event_key,
                        mailbox: mailboxes[mb],
                        version_ms,
                        start_ms: start,
                        end_ms: start + (15 + rng.below(90) as i64) * 60_000,
                        cancelled,
                        organizer,
                        attendees: attendees.clone(),
                    }),
                );
                meeting_copies += 1;
            }
        }
    }
    let records = email_copies + meeting_copies;

    // Encode and write the partitions and the removed stream, as the downloader would.
    let dir = std::env::temp_dir().join(format!("score_bench_{}", std::process::id()));
    if let Err(e) = std::fs::create_dir_all(&dir) {
        eprintln!("cannot create {}: {e}", dir.display());
        return;
    }
    let mut total_bytes = 0usize;
    for (i, p) in parts.iter_mut().enumerate() {
        // Shuffle-free but interleaved order is irrelevant to the scorer; write as generated.
        let mut bytes = Vec::new();
        encode(p, &mut bytes);
        total_bytes += bytes.len();
        if let Err(e) = std::fs::write(dir.join(format!("p{i:02}.bin")), &bytes) {
            eprintln!("write failed: {e}");
            return;
        }
        *p = Vec::new();
    }
    let mut removed_bytes = Vec::new();
    let removed_records: Vec<Activity> = tombstones
        .iter()
        .map(|r| Activity::MeetingRemoved(*r))
        .collect();
    encode(&removed_records, &mut removed_bytes);
    drop(parts);
    drop(removed_records);
    println!(
        "generated {records} records ({email_copies} email copies, {meeting_copies} meeting versions/copies, {} tombstones), {:.0} MB encoded, {} accounts, {} contact pairs",
        tombstones.len(),
        total_bytes as f64 / 1e6,
        ACCOUNTS,
        pairs.len()
    );

    // Decode-only throughput (one partition in memory at a time).
    let mut decode_secs = 0.0;
    let mut decoded = 0usize;
    for i in 0..PARTITIONS {
        let bytes = std::fs::read(dir.join(format!("p{i:02}.bin"))).unwrap_or_default();
        let start = Instant::now();
        let mut r = ActivityReader::new(&bytes);
        while let Some(x) = r.next_ref() {
            if x.is_ok() {
                decoded += 1;
            }
        }
        decode_secs += start.elapsed().as_secs_f64();
    }
    println!(
        "decode only: {decoded} records in {decode_secs:.3} s = {:.1} M records/s",
        decoded as f64 / decode_secs / 1e6
    );

    // Reset the peak RSS so VmHWM reflects the scoring phase only.
    let reset = std::fs::write("/proc/self/clear_refs", "5").is_ok();
    println!("RSS before scoring: {} (peak reset: {reset})", vm("VmRSS:"));

    let start_all = Instant::now();
    let index = ContactIndex::new(pairs);
    let index_secs = start_all.elapsed().as_secs_f64();
    let mut scorer = Scorer::new(index, as_of, ScoreParams::default());
    let start = Instant::now();
    if let Err(e) = scorer.add_removed_bytes(&removed_bytes) {
        eprintln!("removed stream: {e}");
    }
    let mut read_secs = 0.0;
    for i in 0..PARTITIONS {
        let r0 = Instant::now();
        let bytes = std::fs::read(dir.join(format!("p{i:02}.bin"))).unwrap_or_default();
        read_secs += r0.elapsed().as_secs_f64();
        if let Err(e) = scorer.add_partition_bytes(&bytes) {
            eprintln!("partition {i}: {e}");
        }
    }
    let aggregate_secs = start.elapsed().as_secs_f64() - read_secs;
    let rss_aggregated = vm("VmRSS:");
    let hwm_aggregated = vm("VmHWM:");
    let f0 = Instant::now();
    let outcome = scorer.finish();
    let finish_secs = f0.elapsed().as_secs_f64();
    let score_secs = aggregate_secs + finish_secs;
    println!(
        "after all partitions (accumulators + last partition buffers): VmRSS {rss_aggregated}, VmHWM {hwm_aggregated}"
    );
    println!("contact index build: {index_secs:.3} s");
    println!(
        "decode+aggregate: {aggregate_secs:.3} s, finish (percentiles, rows): {finish_secs:.3} s, file reads (excluded): {read_secs:.3} s"
    );
    println!(
        "decode+score: {records} records in {score_secs:.3} s = {:.2} M records/s (single thread)",
        records as f64 / score_secs / 1e6
    );
    println!(
        "peak RSS during scoring (VmHWM): {}; office rows {}, history rows {}, cards {}; summary {:?}",
        vm("VmHWM:"),
        outcome.office.len(),
        outcome.history.len(),
        outcome.cards.len(),
        outcome.summary
    );
    let _ = std::fs::remove_dir_all(&dir);
}
