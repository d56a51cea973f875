//! Deterministic synthetic tenant: a pure function of (seed, options).

use crate::fixture::{Fixture, FixtureEvent, FixtureGroup, FixtureMessage, FixtureUser};
use chrono::{DateTime, Datelike, Duration, TimeZone, Timelike, Utc, Weekday};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::{BTreeMap, BTreeSet};

/// The fixed instant used as "now" by the default options (2026-03-02T00:00:00Z).
pub fn default_now() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 3, 2, 0, 0, 0).unwrap()
}

#[derive(Debug, Clone)]
pub struct SyntheticOptions {
    pub mailboxes: usize,
    pub groups: usize,
    pub accounts: usize,
    pub contacts: usize,
    pub days: i64,
    pub now: DateTime<Utc>,
}

impl Default for SyntheticOptions {
    fn default() -> Self {
        SyntheticOptions {
            mailboxes: 50,
            groups: 4,
            accounts: 300,
            contacts: 1000,
            days: 365,
            now: default_now(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct SyntheticTenant {
    pub fixture: Fixture,
    /// `AccountId,AccountName,EMail` header and rows.
    pub customer_csv: String,
}

pub const TENANT_DOMAIN: &str = "contoso.com";

const FIRST: &[&str] = &[
    "Adele", "Alex", "Allan", "Bianca", "Brian", "Carla", "Cameron", "Chen", "Christie", "Dana",
    "Daniel", "Debra", "Diego", "Elena", "Emily", "Enrico", "Farah", "Felix", "Grace", "Gustav",
    "Hana", "Henry", "Irvin", "Isaiah", "Jana", "Johanna", "Joni", "Jordan", "Kai", "Karim",
    "Laura", "Lee", "Lidia", "Lynne", "Maja", "Megan", "Miriam", "Nestor", "Nina", "Omar", "Patti",
    "Pradeep", "Priya", "Quentin", "Raul", "Rosa", "Samantha", "Sanjay", "Sofia", "Tariq", "Tomas",
    "Uma", "Victor", "Wen", "Xavier", "Yara", "Yusuf", "Zoe", "Ines", "Mateo",
];
const LAST: &[&str] = &[
    "Vance",
    "Wilber",
    "Deyoung",
    "Brown",
    "Holt",
    "Sampson",
    "Cooper",
    "Wu",
    "Cline",
    "Swope",
    "Berg",
    "Gonzalez",
    "Ramos",
    "Petrova",
    "Braun",
    "Rossi",
    "Haddad",
    "Weber",
    "Taft",
    "Nilsson",
    "Sato",
    "Ford",
    "Delgado",
    "Okafor",
    "Novak",
    "Lindqvist",
    "Sherman",
    "Reyes",
    "Schmidt",
    "Nakamura",
    "Moreau",
    "Kim",
    "Garcia",
    "Olsen",
    "Kowalski",
    "Bowen",
    "Cohen",
    "Celeste",
    "Fischer",
    "Farouk",
    "Fernandez",
    "Patel",
    "Shah",
    "Quinn",
    "Lopez",
    "Bianchi",
    "Booth",
    "Rao",
    "Costa",
    "Aziz",
    "Horvat",
    "Iyer",
    "Jensen",
    "Li",
    "Mendes",
    "Dubois",
    "Yilmaz",
    "Adams",
    "Park",
    "Sharp",
];
const COMPANY: &[&str] = &[
    "Fabrikam",
    "Northwind",
    "Tailspin",
    "Adventure Works",
    "Wingtip",
    "Litware",
    "Proseware",
    "Woodgrove",
    "Alpine Ski",
    "Coho Winery",
    "Contoso Pharma",
    "Fourth Coffee",
    "Lucerne",
    "Margie's Travel",
    "Relecloud",
    "Trey Research",
    "Wide World",
    "Blue Yonder",
    "Graphic Design",
    "Humongous",
    "City Power",
    "Consolidated Messenger",
    "School of Fine Art",
    "Bellows College",
    "Datum",
    "Olympia",
    "VanArsdel",
    "Lamna",
    "Munson's Pickles",
    "Best For You",
];
const SUFFIX: &[&str] = &[
    "Inc.", "Ltd", "GmbH", "Group", "Partners", "Holdings", "Corp.", "LLC", "AG", "SA",
];
const MAIL_SUBJECTS: &[&str] = &[
    "Renewal quote",
    "Follow-up on our call",
    "Pricing question",
    "Contract redlines",
    "Onboarding plan",
    "Support escalation",
    "Quarterly business review",
    "Invoice clarification",
    "Product roadmap",
    "Intro",
    "Pilot results",
    "Security questionnaire",
];
const INTERNAL_SUBJECTS: &[&str] = &[
    "Pipeline review",
    "Team lunch",
    "Forecast numbers",
    "Expense report",
    "Deal desk approval",
    "Hiring update",
    "Weekly sync notes",
];
const MEETING_SUBJECTS: &[&str] = &[
    "Discovery call",
    "Demo",
    "QBR",
    "Renewal discussion",
    "Technical deep dive",
    "Executive briefing",
    "Implementation check-in",
];
const INTERNAL_MEETINGS: &[&str] = &[
    "Sales standup",
    "Pipeline review",
    "1:1",
    "All hands",
    "Enablement session",
];
const NEWS_SENDERS: &[&str] = &[
    "news@newsletter.example",
    "updates@saas-tools.example",
    "events@conference.example",
];
const INVALID_EMAILS: &[&str] = &[
    "not-an-email",
    "john.doe@",
    "@DOMAIN",
    "jane doe@DOMAIN",
    "",
    "first.last@@DOMAIN",
    "n/a",
];

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Tier {
    VeryActive,
    Active,
    Moderate,
    Dormant,
    None,
}

struct Account {
    id: String,
    name: String,
    domain: String,
    tier: Tier,
    owners: Vec<usize>,
    contacts: Vec<String>,
}

struct Gen {
    rng: StdRng,
    now: DateTime<Utc>,
    start: DateTime<Utc>,
    users: Vec<FixtureUser>,
    /// user index -> alias address (proxy)
    aliases: Vec<String>,
    /// lower-case mail or alias -> user index
    addr_index: BTreeMap<String, usize>,
    groups: Vec<FixtureGroup>,
    messages: Vec<FixtureMessage>,
    events: Vec<FixtureEvent>,
}

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

fn slug(s: &str) -> String {
    s.chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .collect::<String>()
        .to_ascii_lowercase()
}

impl Gen {
    fn id(&mut self) -> String {
        let bytes: [u8; 16] = self.rng.random();
        uuid::Builder::from_random_bytes(bytes)
            .into_uuid()
            .hyphenated()
            .to_string()
    }

    fn hex(&mut self, n: usize) -> String {
        let mut s = String::with_capacity(n);
        for _ in 0..n {
            let d: u8 = self.rng.random_range(0..16);
            s.push(char::from_digit(d as u32, 16).unwrap().to_ascii_uppercase());
        }
        s
    }

    fn chance(&mut self, p: f64) -> bool {
        self.rng.random_bool(p.clamp(0.0, 1.0))
    }

    fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            self.rng.random_range(0..n)
        }
    }

    /// Expected count `x` turned into an integer (floor + Bernoulli(fraction)).
    fn count(&mut self, x: f64) -> usize {
        let base = x.floor();
        let frac = x - base;
        base as usize + usize::from(self.chance(frac))
    }

    /// A business-hours instant between `from` and `to` (clamped to `to`).
    fn time_in(&mut self, from: DateTime<Utc>, to: DateTime<Utc>) -> DateTime<Utc> {
        let span = (to - from).num_seconds().max(1);
        let t = from + Duration::seconds(self.rng.random_range(0..span));
        let mut t = t
            .with_hour(self.rng.random_range(7..18))
            .unwrap()
            .with_minute(self.rng.random_range(0..60))
            .unwrap()
            .with_second(self.rng.random_range(0..60))
            .unwrap()
            .with_nanosecond(0)
            .unwrap();
        match t.weekday() {
            Weekday::Sat => t -= Duration::days(1),
            Weekday::Sun => t += Duration::days(1),
            _ => {}
        }
        if t > to {
            t = to - Duration::seconds(self.rng.random_range(60..3600));
        }
        if t < from {
            t = from;
        }
        t
    }

    fn meeting_time(&mut self, from: DateTime<Utc>, to: DateTime<Utc>) -> DateTime<Utc> {
        let t = self.time_in(from, to);
        let minute = if self.chance(0.5) { 0 } else { 30 };
        t.with_hour(self.rng.random_range(8..17))
            .unwrap()
            .with_minute(minute)
            .unwrap()
            .with_second(0)
            .unwrap()
    }

    fn user_mail(&self, i: usize) -> String {
        self.users[i].mail.clone()
    }

    /// Internal mailboxes reached by an address (user mail, alias, or group mail, transitively).
    fn internal_targets(&self, addr: &str, out: &mut Vec<usize>) {
        let a = addr.to_ascii_lowercase();
        if let Some(&i) = self.addr_index.get(&a) {
            out.push(i);
            return;
        }
        if let Some(g) = self.groups.iter().position(|g| g.mail == a) {
            let mut seen = BTreeSet::new();
            let mut stack = vec![self.groups[g].id.clone()];
            while let Some(gid) = stack.pop() {
                if !seen.insert(gid.clone()) {
                    continue;
                }
                if let Some(gr) = self.groups.iter().find(|x| x.id == gid) {
                    for m in &gr.members {
                        if let Some(ui) = self.users.iter().position(|u| &u.id == m) {
                            out.push(ui);
                        } else {
                            stack.push(m.clone());
                        }
                    }
                }
            }
        }
    }

    /// Stores one sent message in every internal mailbox that has it.
    #[allow(clippy::too_many_arguments)]
    fn deliver(
        &mut self,
        from: &str,
        to: Vec<String>,
        cc: Vec<String>,
        sent: DateTime<Utc>,
        subject: String,
        conversation_id: &str,
        internet_message_id: String,
    ) {
        let mut sender = Vec::new();
        self.internal_targets(from, &mut sender);
        if let Some(&s) = sender.first() {
            let id = self.id();
            let is_draft = self.chance(0.002);
            self.messages.push(FixtureMessage {
                mailbox: self.users[s].id.clone(),
                folder: "sentitems".into(),
                id,
                internet_message_id: internet_message_id.clone(),
                conversation_id: conversation_id.to_string(),
                from: from.to_string(),
                to: to.clone(),
                cc: cc.clone(),
                sent_date_time: sent,
                received_date_time: sent,
                subject: subject.clone(),
                is_draft,
            });
        }
        let mut recipients = Vec::new();
        for a in to.iter().chain(cc.iter()) {
            self.internal_targets(a, &mut recipients);
        }
        let mut seen = BTreeSet::new();
        for r in recipients {
            if !seen.insert(r) || sender.first() == Some(&r) {
                continue;
            }
            let id = self.id();
            let delay = self.rng.random_range(1..40);
            self.messages.push(FixtureMessage {
                mailbox: self.users[r].id.clone(),
                folder: "inbox".into(),
                id,
                internet_message_id: internet_message_id.clone(),
                conversation_id: conversation_id.to_string(),
                from: from.to_string(),
                to: to.clone(),
                cc: cc.clone(),
                sent_date_time: sent,
                received_date_time: sent + Duration::seconds(delay),
                subject: subject.clone(),
                is_draft: false,
            });
        }
    }

    fn imid(&mut self, from: &str) -> String {
        let domain = from.rsplit('@').next().unwrap_or(TENANT_DOMAIN).to_string();
        format!("<{}@{}>", self.hex(32).to_ascii_lowercase(), domain)
    }

    fn reply_count(&mut self, max: usize) -> usize {
        let r: f64 = self.rng.random();
        let n = if r < 0.3 {
            0
        } else if r < 0.6 {
            1
        } else if r < 0.8 {
            2
        } else if r < 0.92 {
            3
        } else {
            4
        };
        n.min(max)
    }

    /// A conversation between party A (first sender) and party B, with optional cc.
    #[allow(clippy::too_many_arguments)]
    fn thread(
        &mut self,
        a: String,
        b: Vec<String>,
        cc: Vec<String>,
        t0: DateTime<Utc>,
        base_subject: &str,
        max_replies: usize,
    ) {
        let conversation_id = self.id();
        let replies = self.reply_count(max_replies);
        let mut t = t0;
        let mut from = a.clone();
        let mut to = b.clone();
        for k in 0..=replies {
            if t > self.now {
                break;
            }
            let subject = if k == 0 {
                base_subject.to_string()
            } else {
                format!("RE: {base_subject}")
            };
            let imid = self.imid(&from);
            self.deliver(
                &from,
                to.clone(),
                cc.clone(),
                t,
                subject,
                &conversation_id,
                imid,
            );
            // The reply goes back from the first recipient to the sender.
            let next_from = to[0].clone();
            let mut next_to = vec![from.clone()];
            for x in to.iter().skip(1) {
                next_to.push(x.clone());
            }
            from = next_from;
            to = next_to;
            t += Duration::minutes(self.rng.random_range(10..(60 * 48)));
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn meeting(
        &mut self,
        organizer: String,
        attendees: Vec<String>,
        start: DateTime<Utc>,
        minutes: i64,
        subject: &str,
        all_day: bool,
        cancelled_p: f64,
        private_p: f64,
    ) {
        let ical = format!("040000008200E00074C5B7101A82E00800000000{}", self.hex(32));
        let cancelled = self.chance(cancelled_p);
        let sensitivity = if self.chance(private_p) {
            if self.chance(0.8) {
                "private"
            } else {
                "personal"
            }
        } else {
            "normal"
        };
        let event_type = if self.chance(0.05) {
            "occurrence"
        } else {
            "singleInstance"
        };
        let (start, end) = if all_day {
            let d = start.date_naive().and_hms_opt(0, 0, 0).unwrap().and_utc();
            (d, d + Duration::days(1))
        } else {
            (start, start + Duration::minutes(minutes))
        };
        let mut holders = Vec::new();
        self.internal_targets(&organizer, &mut holders);
        for a in &attendees {
            self.internal_targets(a, &mut holders);
        }
        let mut seen = BTreeSet::new();
        for h in holders {
            if !seen.insert(h) {
                continue;
            }
            let id = self.id();
            self.events.push(FixtureEvent {
                mailbox: self.users[h].id.clone(),
                id,
                ical_uid: ical.clone(),
                organizer: organizer.clone(),
                attendees: attendees.clone(),
                start,
                end,
                is_cancelled: cancelled,
                is_all_day: all_day,
                subject: subject.to_string(),
                event_type: event_type.to_string(),
                sensitivity: sensitivity.to_string(),
            });
        }
    }
}

/// Builds the synthetic tenant. Pure function of `(seed, opts)`.
pub fn synthetic_tenant(seed: u64, opts: &SyntheticOptions) -> SyntheticTenant {
    let now = opts.now;
    let days = opts.days.max(1);
    let mut g = Gen {
        rng: StdRng::seed_from_u64(seed),
        now,
        start: now - Duration::days(days),
        users: Vec::new(),
        aliases: Vec::new(),
        addr_index: BTreeMap::new(),
        groups: Vec::new(),
        messages: Vec::new(),
        events: Vec::new(),
    };
    let tenant_id = g.id();

    // ---- users
    let mut used = BTreeSet::new();
    let mut used_alias = BTreeSet::new();
    for i in 0..opts.mailboxes {
        let (mut first, mut last);
        let mut tries = 0;
        loop {
            first = FIRST[g.below(FIRST.len())].to_string();
            last = LAST[g.below(LAST.len())].to_string();
            tries += 1;
            if tries > 50 {
                last = format!("{last}{i}");
            }
            if used.insert(format!("{first}.{last}").to_ascii_lowercase()) {
                break;
            }
        }
        let mail = format!("{first}.{last}@{TENANT_DOMAIN}").to_ascii_lowercase();
        let mut alias = format!("{}{}", &first[..1], last).to_ascii_lowercase();
        let mut n = 2;
        while !used_alias.insert(alias.clone()) {
            alias = format!("{}{}{}", &first[..1], last, n).to_ascii_lowercase();
            n += 1;
        }
        let alias = format!("{alias}@{TENANT_DOMAIN}");
        let id = g.id();
        g.users.push(FixtureUser {
            id,
            mail: mail.clone(),
            display_name: format!("{first} {last}"),
            user_principal_name: mail.clone(),
            proxy_addresses: vec![format!("SMTP:{mail}"), format!("smtp:{alias}")],
            admin: i == 0 || (opts.mailboxes > 2 && i == opts.mailboxes / 2),
        });
        g.aliases.push(alias);
    }
    let admin_id = g.id();
    let admin_mail = format!("it.admin@{TENANT_DOMAIN}");
    g.users.push(FixtureUser {
        id: admin_id,
        mail: admin_mail.clone(),
        display_name: "IT Admin".into(),
        user_principal_name: admin_mail.clone(),
        proxy_addresses: vec![format!("SMTP:{admin_mail}")],
        admin: true,
    });
    g.aliases.push(String::new());
    for (i, u) in g.users.iter().enumerate() {
        g.addr_index.insert(u.mail.clone(), i);
        if !g.aliases[i].is_empty() {
            g.addr_index.insert(g.aliases[i].clone(), i);
        }
    }
    let mb = opts.mailboxes;
    // Index ranges: us-sales 0..40%, emea 40..70%, customer-success 70..85% (+2 from us-sales), staff rest.
    let us_end = mb * 40 / 100;
    let emea_end = mb * 70 / 100;
    let cs_end = mb * 85 / 100;
    let reps: Vec<usize> = if opts.groups >= 3 && cs_end > 0 {
        (0..cs_end).collect()
    } else {
        (0..mb).collect()
    };
    let staff: Vec<usize> = (reps.len()..mb).collect();

    // ---- groups
    let ids_of = |g: &Gen, r: std::ops::Range<usize>| -> Vec<String> {
        r.map(|i| g.users[i].id.clone()).collect()
    };
    let us_id = g.id();
    let emea_id = g.id();
    let cs_id = g.id();
    let all_id = g.id();
    let mut cs_members = ids_of(&g, emea_end..cs_end);
    for i in 0..2.min(us_end) {
        cs_members.push(g.users[i].id.clone());
    }
    let mut all_members = vec![us_id.clone(), emea_id.clone()];
    for i in 0..2.min(us_end) {
        all_members.push(g.users[i].id.clone()); // duplicates through us-sales
    }
    if let Some(&s) = staff.first() {
        all_members.push(g.users[s].id.clone());
    }
    let base_groups = vec![
        FixtureGroup {
            id: us_id,
            mail: format!("us-sales@{TENANT_DOMAIN}"),
            display_name: "US Sales".into(),
            members: ids_of(&g, 0..us_end),
        },
        FixtureGroup {
            id: emea_id,
            mail: format!("emea-sales@{TENANT_DOMAIN}"),
            display_name: "EMEA Sales".into(),
            members: ids_of(&g, us_end..emea_end),
        },
        FixtureGroup {
            id: cs_id,
            mail: format!("customer-success@{TENANT_DOMAIN}"),
            display_name: "Customer Success".into(),
            members: cs_members,
        },
        FixtureGroup {
            id: all_id,
            mail: format!("all-sales@{TENANT_DOMAIN}"),
            display_name: "All Sales".into(),
            members: all_members,
        },
    ];
    g.groups = base_groups.into_iter().take(opts.groups).collect();
    for n in 4..opts.groups {
        let id = g.id();
        let k = 3 + g.below(4);
        let mut members = Vec::new();
        for _ in 0..k {
            if mb > 0 {
                let u = g.below(mb);
                let uid = g.users[u].id.clone();
                if !members.contains(&uid) {
                    members.push(uid);
                }
            }
        }
        g.groups.push(FixtureGroup {
            id,
            mail: format!("team-{}@{TENANT_DOMAIN}", n - 3),
            display_name: format!("Team {}", n - 3),
            members,
        });
    }

    // ---- accounts and contacts
    let mut accounts: Vec<Account> = Vec::with_capacity(opts.accounts);
    for i in 1..=opts.accounts {
        let prefix = COMPANY[g.below(COMPANY.len())];
        let suffix = SUFFIX[g.below(SUFFIX.len())];
        let name = if g.chance(0.1) {
            format!("{prefix} Industries, {suffix}")
        } else {
            format!("{prefix} {suffix}")
        };
        let r: f64 = g.rng.random();
        let tier = if r < 0.05 {
            Tier::VeryActive
        } else if r < 0.25 {
            Tier::Active
        } else if r < 0.65 {
            Tier::Moderate
        } else if r < 0.80 {
            Tier::Dormant
        } else {
            Tier::None
        };
        let mut owners = Vec::new();
        if !reps.is_empty() {
            let k = 1 + g.below(3);
            for _ in 0..k {
                let o = reps[g.below(reps.len())];
                if !owners.contains(&o) {
                    owners.push(o);
                }
            }
        }
        accounts.push(Account {
            id: format!("ACC-{i:04}"),
            name,
            domain: format!("{}-{i:04}.com", slug(prefix)),
            tier,
            owners,
            contacts: Vec::new(),
        });
    }
    // CSV rows: (account index, email as written)
    let mut rows: Vec<(usize, String)> = Vec::new();
    if !accounts.is_empty() {
        let na = accounts.len();
        let n_dup = opts.contacts / 100;
        let n_invalid = opts.contacts / 200;
        let n_real = opts.contacts.saturating_sub(n_dup + n_invalid);
        for k in 0..n_real {
            let ai = if k < na { k } else { g.below(na) };
            let first = FIRST[g.below(FIRST.len())];
            let last = LAST[g.below(LAST.len())];
            let base = format!("{first}.{last}").to_ascii_lowercase();
            let mut email = format!("{base}@{}", accounts[ai].domain);
            let mut n = 2;
            while accounts[ai].contacts.contains(&email) {
                email = format!("{base}{n}@{}", accounts[ai].domain);
                n += 1;
            }
            accounts[ai].contacts.push(email.clone());
            let written = if g.chance(0.03) {
                format!("{first}.{last}@{}", accounts[ai].domain)
            } else {
                email
            };
            rows.push((ai, written));
        }
        for _ in 0..n_dup {
            let src = g.below(na);
            if accounts[src].contacts.is_empty() {
                continue;
            }
            let email = accounts[src].contacts[g.below(accounts[src].contacts.len())].clone();
            let mut other = g.below(na);
            if other == src {
                other = (other + 1) % na;
            }
            if other != src {
                rows.push((other, email));
            }
        }
        for _ in 0..n_invalid {
            let ai = g.below(na);
            let bad = INVALID_EMAILS[g.below(INVALID_EMAILS.len())]
                .replace("DOMAIN", &accounts[ai].domain);
            rows.push((ai, bad));
        }
        rows.sort_by_key(|r| r.0);
    }
    let mut customer_csv = String::from("AccountId,AccountName,EMail\n");
    for (ai, email) in &rows {
        let a = &accounts[*ai];
        customer_csv.push_str(&format!(
            "{},{},{}\n",
            csv_field(&a.id),
            csv_field(&a.name),
            csv_field(email)
        ));
    }

    // ---- customer activity
    let year = 365.0;
    let period_days = days as f64;
    for acc in &accounts {
        let tier = acc.tier;
        if tier == Tier::None || acc.contacts.is_empty() || acc.owners.is_empty() {
            continue;
        }
        let (from, to) = if tier == Tier::Dormant {
            (g.start, now - Duration::days(120))
        } else {
            (g.start, now)
        };
        if to <= from {
            continue;
        }
        let span_days = (to - from).num_days() as f64;
        let (mail_rate, meet_rate) = match tier {
            Tier::VeryActive => (120.0, 30.0),
            Tier::Active => (40.0, 10.0),
            Tier::Moderate => (10.0, 3.0),
            Tier::Dormant => (12.0, 3.0),
            Tier::None => (0.0, 0.0),
        };
        let owners = acc.owners.clone();
        let contacts = acc.contacts.clone();
        let n_threads = g.count(mail_rate * span_days / year);
        for _ in 0..n_threads {
            let rep = owners[g.below(owners.len())];
            let c1 = contacts[g.below(contacts.len())].clone();
            let mut ext = vec![c1.clone()];
            if contacts.len() > 1 && g.chance(0.25) {
                let c2 = contacts[g.below(contacts.len())].clone();
                if c2 != c1 {
                    ext.push(c2);
                }
            }
            let mut cc = Vec::new();
            if g.chance(0.3) && mb > 1 {
                let other = g.below(mb);
                if other != rep {
                    cc.push(g.user_mail(other));
                }
            }
            let t0 = g.time_in(from, to);
            let subject = MAIL_SUBJECTS[g.below(MAIL_SUBJECTS.len())];
            if g.chance(0.45) {
                // inbound: contact writes to the rep (sometimes to an alias or a group)
                let target = if g.chance(0.02) && !g.groups.is_empty() {
                    let gi = g.below(g.groups.len().min(3));
                    g.groups[gi].mail.clone()
                } else if g.chance(0.1) {
                    g.aliases[rep].clone()
                } else {
                    g.user_mail(rep)
                };
                let mut to_list = vec![target];
                to_list.extend(ext.iter().skip(1).cloned());
                g.thread(ext[0].clone(), to_list, cc, t0, subject, 4);
            } else {
                let from_addr = g.user_mail(rep);
                g.thread(from_addr, ext, cc, t0, subject, 4);
            }
        }
        let n_meet = g.count(meet_rate * span_days / year);
        let n_future = if tier == Tier::Dormant {
            0
        } else {
            g.count(meet_rate * 30.0 / year * 0.8)
        };
        for m in 0..(n_meet + n_future) {
            let start = if m < n_meet {
                g.meeting_time(from, to)
            } else {
                g.meeting_time(now + Duration::hours(1), now + Duration::days(29))
            };
            let mut atts = Vec::new();
            let k = 1 + g.below(3);
            for _ in 0..k {
                let c = contacts[g.below(contacts.len())].clone();
                if !atts.contains(&c) {
                    atts.push(c);
                }
            }
            let rep = owners[g.below(owners.len())];
            let organizer = if g.chance(0.7) {
                g.user_mail(rep)
            } else {
                let org = atts.remove(0);
                atts.push(g.user_mail(rep));
                org
            };
            for &o in &owners {
                let a = g.user_mail(o);
                if a != organizer && !atts.contains(&a) && g.chance(0.5) {
                    atts.push(a);
                }
            }
            if g.chance(0.2) && mb > 0 {
                let r = g.below(mb);
                let a = g.user_mail(r);
                if a != organizer && !atts.contains(&a) {
                    atts.push(a);
                }
            }
            let minutes = if g.chance(0.6) { 30 } else { 60 };
            let subject = MEETING_SUBJECTS[g.below(MEETING_SUBJECTS.len())];
            g.meeting(organizer, atts, start, minutes, subject, false, 0.03, 0.03);
        }
    }

    // ---- noise: internal-only mail
    if mb > 1 {
        let n = g.count(mb as f64 * 20.0 * period_days / year);
        for _ in 0..n {
            let s = g.below(mb);
            let mut to = Vec::new();
            if g.chance(0.05) && !g.groups.is_empty() {
                let gi = g.below(g.groups.len());
                to.push(g.groups[gi].mail.clone());
            } else {
                let k = 1 + g.below(3);
                for _ in 0..k {
                    let r = g.below(mb);
                    let a = g.user_mail(r);
                    if r != s && !to.contains(&a) {
                        to.push(a);
                    }
                }
            }
            if to.is_empty() {
                continue;
            }
            let t0 = g.time_in(g.start, now);
            let subject = INTERNAL_SUBJECTS[g.below(INTERNAL_SUBJECTS.len())];
            let from = g.user_mail(s);
            g.thread(from, to, Vec::new(), t0, subject, 2);
        }
    }
    // ---- noise: newsletters (one issue reaches several mailboxes)
    if mb > 0 {
        for sender in NEWS_SENDERS {
            let issues = (period_days / 7.0) as usize;
            for w in 0..issues {
                let sent = g.start
                    + Duration::days(w as i64 * 7 + g.rng.random_range(0..7))
                    + Duration::minutes(g.rng.random_range(0..600));
                if sent > now {
                    continue;
                }
                let mut to = Vec::new();
                for u in 0..mb {
                    if g.chance(0.3) {
                        to.push(g.user_mail(u));
                    }
                }
                if to.is_empty() {
                    continue;
                }
                // Each recipient gets their own copy of the same message (Bcc style: To is the recipient).
                let imid = g.imid(sender);
                let conv = g.id();
                for a in to {
                    g.deliver(
                        sender,
                        vec![a],
                        Vec::new(),
                        sent,
                        "Weekly digest".into(),
                        &conv,
                        imid.clone(),
                    );
                }
            }
        }
        // ---- noise: external addresses that are not in the customer data
        let n = g.count(mb as f64 * 6.0 * period_days / year);
        for _ in 0..n {
            let u = g.below(mb);
            let first = FIRST[g.below(FIRST.len())].to_ascii_lowercase();
            let k = g.below(500);
            let ext = if g.chance(0.3) {
                format!("{first}{k}@freemail.example")
            } else {
                format!("{first}@prospect-{k:03}.example")
            };
            let t0 = g.time_in(g.start, now);
            let subject = MAIL_SUBJECTS[g.below(MAIL_SUBJECTS.len())];
            if g.chance(0.5) {
                let to = g.user_mail(u);
                g.thread(ext, vec![to], Vec::new(), t0, subject, 2);
            } else {
                let from = g.user_mail(u);
                g.thread(from, vec![ext], Vec::new(), t0, subject, 2);
            }
        }
        // ---- noise: internal meetings
        let n = g.count(mb as f64 * 8.0 * period_days / year);
        let n_future = g.count(mb as f64 * 8.0 * 30.0 / year);
        for m in 0..(n + n_future) {
            let start = if m < n {
                g.meeting_time(g.start, now)
            } else {
                g.meeting_time(now + Duration::hours(1), now + Duration::days(29))
            };
            let org = g.below(mb);
            let organizer = g.user_mail(org);
            let mut atts = Vec::new();
            let k = 2 + g.below(4);
            for _ in 0..k {
                let r = g.below(mb);
                let a = g.user_mail(r);
                if a != organizer && !atts.contains(&a) {
                    atts.push(a);
                }
            }
            let all_day = g.chance(0.04);
            let subject = INTERNAL_MEETINGS[g.below(INTERNAL_MEETINGS.len())];
            g.meeting(organizer, atts, start, 30, subject, all_day, 0.03, 0.05);
        }
    }

    let fixture = Fixture {
        tenant_id,
        domains: vec![TENANT_DOMAIN.to_string()],
        users: g.users,
        groups: g.groups,
        messages: g.messages,
        events: g.events,
    };
    SyntheticTenant {
        fixture,
        customer_csv,
    }
}
