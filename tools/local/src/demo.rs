//! `make demo`: the whole story on the synthetic tenant, told on stdout, then exit 0.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use local_stack::stack::{LocalStack, StackConfig};
use serde_json::{Value, json};

struct Client {
    http: reqwest::Client,
    api: String,
    token: String,
}

impl Client {
    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<(u16, Value), String> {
        let mut request = self
            .http
            .request(method, format!("{}{path}", self.api))
            .bearer_auth(&self.token);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.map_err(|e| e.to_string())?;
        let status = response.status().as_u16();
        let body = response.json().await.unwrap_or(Value::Null);
        Ok((status, body))
    }

    async fn get(&self, path: &str) -> Result<Value, String> {
        match self.call(reqwest::Method::GET, path, None).await? {
            (200, body) => Ok(body),
            (status, body) => Err(format!("GET {path} answered {status}: {body}")),
        }
    }
}

fn rule(title: &str) {
    println!(
        "\n== {title} {}",
        "=".repeat(76usize.saturating_sub(title.len()))
    );
}

fn num(v: &Value) -> i64 {
    v.as_i64().unwrap_or(0)
}

fn thousands(n: i64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

async fn wait_for_run(client: &Client, id: &str, run_id: Option<&str>) -> Result<Value, String> {
    let started = Instant::now();
    let mut last = String::new();
    loop {
        let runs = client.get(&format!("/enrichments/{id}/runs")).await?;
        let run = match run_id {
            Some(r) => runs["items"]
                .as_array()
                .and_then(|a| a.iter().find(|x| x["id"] == r))
                .cloned(),
            None => runs["items"].as_array().and_then(|a| a.first()).cloned(),
        };
        if let Some(run) = run {
            let p = &run["tasks"]["download"]["progress"];
            let line = format!(
                "  [{:>5.1}s] download {:<10} {:>3}/{} mailboxes done, {} failed, {:>7} messages and {:>6} events seen; score {}",
                started.elapsed().as_secs_f64(),
                run["tasks"]["download"]["status"].as_str().unwrap_or("?"),
                num(&p["mailboxes_done"]),
                num(&p["mailboxes_total"]),
                num(&p["mailboxes_failed"]),
                thousands(num(&p["messages_seen"])),
                thousands(num(&p["events_seen"])),
                run["tasks"]["score"]["status"].as_str().unwrap_or("?"),
            );
            if line[10..] != last.get(10..).unwrap_or("")[..] {
                println!("{line}");
                last = line;
            }
            let status = run["status"].as_str().unwrap_or("");
            if !matches!(status, "processing" | "queued" | "") {
                return Ok(run);
            }
        }
        if started.elapsed() > Duration::from_secs(600) {
            return Err("the run did not finish within 10 minutes".into());
        }
        tokio::time::sleep(Duration::from_millis(400)).await;
    }
}

async fn requests_per_mailbox(emulator: &str) -> Result<(i64, usize), String> {
    let counters: Value = reqwest::get(format!("{emulator}/_emulator/counters"))
        .await
        .map_err(|e| e.to_string())?
        .json()
        .await
        .map_err(|e| e.to_string())?;
    let mailboxes = counters["mailboxes"]
        .as_object()
        .cloned()
        .unwrap_or_default();
    let delta_requests: i64 = mailboxes
        .values()
        .map(|m| num(&m["messages_delta"]) + num(&m["calendar_delta"]))
        .sum();
    let downloaded = mailboxes
        .values()
        .filter(|m| num(&m["messages_delta"]) > 0)
        .count();
    Ok((delta_requests, downloaded))
}

async fn print_results(client: &Client, id: &str) -> Result<Value, String> {
    let results = client.get(&format!("/enrichments/{id}/results")).await?;
    println!(
        "  enriched customers {} | emails processed {} | meetings processed {} | days aggregated {}",
        results["enriched_customers"],
        thousands(num(&results["emails_processed"])),
        thousands(num(&results["meetings_processed"])),
        results["days_aggregated"]
    );
    let over_time: Vec<String> = results["enriched_over_time"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|p| format!("{} → {}", p["date"].as_str().unwrap_or(""), p["count"]))
                .collect()
        })
        .unwrap_or_default();
    println!("  enriched customers over time: {}", over_time.join(", "));
    Ok(results)
}

async fn all_accounts(client: &Client, id: &str) -> Result<Vec<Value>, String> {
    let mut rows = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut path = format!("/enrichments/{id}/accounts?level=Year&limit=500");
        if let Some(c) = &cursor {
            path.push_str(&format!(
                "&cursor={}",
                url::form_urlencoded::byte_serialize(c.as_bytes()).collect::<String>()
            ));
        }
        let page = client.get(&path).await?;
        rows.extend(page["items"].as_array().cloned().unwrap_or_default());
        match page["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_string()),
            None => return Ok(rows),
        }
    }
}

fn print_top(rows: &[Value], previous: &BTreeMap<String, i64>) -> Vec<Value> {
    let mut sorted = rows.to_vec();
    sorted.sort_by(|a, b| {
        num(&b["EngagementScore"])
            .cmp(&num(&a["EngagementScore"]))
            .then_with(|| a["AccountId"].as_str().cmp(&b["AccountId"].as_str()))
    });
    println!(
        "  {:<10} {:>5} {:>7} {:>9} {:>9} {:>11} {:>9} {:>9}",
        "AccountId", "Score", "change", "Emails→", "Emails←", "Meetings→", "Meetings←", "LastMail"
    );
    for row in sorted.iter().take(10) {
        let account = row["AccountId"].as_str().unwrap_or("");
        let score = num(&row["EngagementScore"]);
        let change = previous
            .get(account)
            .map(|p| format!("{:+}", score - p))
            .unwrap_or_else(|| "".into());
        println!(
            "  {:<10} {:>5} {:>7} {:>9} {:>9} {:>11} {:>9} {:>8}d",
            account,
            score,
            change,
            num(&row["NoOfEmails_ToAccount"]),
            num(&row["NoOfEmails_FromAccount"]),
            num(&row["NoOfMeetings_ToAccount"]),
            num(&row["NoOfMeetings_FromAccount"]),
            row["DaysSinceLastEmail"]
                .as_i64()
                .map(|d| d.to_string())
                .unwrap_or_else(|| "-".into()),
        );
    }
    sorted
}

fn print_card(card: &Value) {
    println!(
        "  {}  score {} (period {})  components: email {:.2}, meeting {:.2}, breadth {:.2}",
        card["account_id"].as_str().unwrap_or(""),
        card["score"],
        card["period"].as_str().unwrap_or(""),
        card["components"]["email"].as_f64().unwrap_or(0.0),
        card["components"]["meeting"].as_f64().unwrap_or(0.0),
        card["components"]["breadth"].as_f64().unwrap_or(0.0),
    );
    let t = &card["totals"];
    println!(
        "  totals: emails to {} / from {}, meetings to {} / from {}",
        t["emails_to_account"],
        t["emails_from_account"],
        t["meetings_to_account"],
        t["meetings_from_account"]
    );
    let history = card["history"].as_array().cloned().unwrap_or_default();
    let recent: Vec<&Value> = history
        .iter()
        .rev()
        .take(16)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect();
    let widest = recent
        .iter()
        .map(|w| {
            num(&w["emails_to_account"])
                + num(&w["emails_from_account"])
                + num(&w["meetings_to_account"])
                + num(&w["meetings_from_account"])
        })
        .max()
        .unwrap_or(1)
        .max(1);
    println!(
        "  weekly history (last {} active weeks; # email, @ meeting):",
        recent.len()
    );
    for week in recent {
        let emails = num(&week["emails_to_account"]) + num(&week["emails_from_account"]);
        let meetings = num(&week["meetings_to_account"]) + num(&week["meetings_from_account"]);
        let scale = |n: i64| ((n * 40) as f64 / widest as f64).ceil() as usize;
        println!(
            "    {} {}{} {} emails, {} meetings",
            week["week_start"].as_str().unwrap_or(""),
            "#".repeat(scale(emails)),
            "@".repeat(scale(meetings)),
            emails,
            meetings
        );
    }
}

/// A week like the last one, a week later: copies of the last seven days of activity.
fn next_week_of_activity(fixture: &graph_emulator::Fixture, now: DateTime<Utc>) -> Value {
    let week = chrono::Duration::days(7);
    let recent = |t: DateTime<Utc>| t > now - week && t <= now;
    let messages: Vec<Value> = fixture
        .messages
        .iter()
        .filter(|m| recent(m.sent_date_time))
        .map(|m| {
            let mut copy = m.clone();
            copy.id = format!("{}-w2", m.id);
            copy.internet_message_id = format!("{}-w2", m.internet_message_id);
            copy.sent_date_time += week;
            copy.received_date_time += week;
            serde_json::to_value(copy).unwrap_or(Value::Null)
        })
        .collect();
    let events: Vec<Value> = fixture
        .events
        .iter()
        .filter(|e| recent(e.start))
        .map(|e| {
            let mut copy = e.clone();
            copy.id = format!("{}-w2", e.id);
            copy.ical_uid = format!("{}-w2", e.ical_uid);
            copy.start += week;
            copy.end += week;
            serde_json::to_value(copy).unwrap_or(Value::Null)
        })
        .collect();
    json!({"messages": messages, "events": events})
}

pub async fn run() -> Result<(), String> {
    let began = Instant::now();
    let story = crate::story(crate::as_of()?)?;
    if story.external {
        return Err(
            "make demo runs on the Graph emulator; use make local against a real tenant".into(),
        );
    }
    let as_of = match &story.graph {
        local_stack::stack::GraphSource::Emulator(_, options) => options.now,
        local_stack::stack::GraphSource::External(_) => Utc::now(),
    };
    let mut config = StackConfig::new(story.graph);
    config.as_of = Some(as_of);
    config.api_port = Some(0);
    config.prefix = format!("demo{}-", &uuid::Uuid::new_v4().simple().to_string()[..6]);
    let stack = LocalStack::start(config).await?;
    let emulator = stack
        .emulator
        .as_ref()
        .map(|e| e.url.clone())
        .unwrap_or_default();
    let api = stack.api_url.clone().unwrap_or_default();
    rule("Account Engagement — local demo");
    println!("MOTO_URL={}", stack.moto_url);
    println!("GRAPH_EMULATOR_URL={emulator}");
    println!("API_URL={api}");
    let fixture = stack
        .emulator
        .as_ref()
        .map(|e| e.fixture())
        .unwrap_or_default();
    println!(
        "Synthetic tenant {}: {} users, {} groups, {} messages and {} events in a year ending {}",
        fixture.tenant_id,
        fixture.users.len(),
        fixture.groups.len(),
        thousands(fixture.messages.len() as i64),
        thousands(fixture.events.len() as i64),
        as_of.format("%Y-%m-%d %H:%M UTC")
    );
    let (file, bytes) = story.customer_data.ok_or("no customer data")?;
    let contacts = bytes
        .iter()
        .filter(|b| **b == b'\n')
        .count()
        .saturating_sub(1);
    let uri = stack.upload_customer_data(&file, bytes).await?;
    println!("Customer data: {uri} ({contacts} contact rows)");
    let client = Client {
        http: reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| e.to_string())?,
        api,
        token: local_stack::token::issue("admin", 2)?,
    };

    rule("1. An administrator configures the enrichment");
    let body = json!({
        "name": "Contoso account engagement",
        "mailboxes": { "users": [], "groups": ["all-sales@contoso.com", "customer-success@contoso.com"] },
        "consent_agreed": true,
        "customer_data": { "uri": uri, "format": "csv", "account_id_field": "AccountId", "email_field": "EMail" },
        "schedule": { "frequency": "weekly", "days": ["mon"], "times": ["02:00"], "time_zone": "Europe/London" },
        "exclusions": ["@gmail.com", "news@newsletter.example"]
    });
    println!("POST /enrichments  groups all-sales@contoso.com, customer-success@contoso.com");
    let (status, created) = client
        .call(reqwest::Method::POST, "/enrichments", Some(body))
        .await?;
    if status != 201 {
        return Err(format!("create answered {status}: {created}"));
    }
    let id = created["id"].as_str().unwrap_or_default().to_string();
    println!(
        "→ 201 enrichment {id}: status {}, {} mailboxes resolved",
        created["status"], created["mailbox_count"]
    );

    rule("2. The tenant administrators receive the consent email (read from moto)");
    let deadline = Instant::now() + Duration::from_secs(30);
    let emails = loop {
        let all = stack.sent_emails().await?;
        let mine: Vec<Value> = all
            .into_iter()
            .filter(|m| m.to_string().contains("Contoso account engagement"))
            .collect();
        if !mine.is_empty() {
            break mine;
        }
        if Instant::now() > deadline {
            return Err("no consent email arrived".into());
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    for email in &emails {
        println!(
            "  to {}: \"{}\"",
            email["destinations"]["ToAddresses"][0]
                .as_str()
                .unwrap_or(""),
            email["subject"].as_str().unwrap_or("")
        );
    }
    let html = emails[0]["body"].as_str().unwrap_or("");
    let link = html
        .split("href=\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .ok_or("no link in the consent email")?
        .replace("&amp;", "&");
    println!("  link: {}…", &link[..link.len().min(110)]);

    rule("3. An administrator approves (Graph emulator → /consent/callback)");
    let redirect = client
        .http
        .get(&link)
        .send()
        .await
        .map_err(|e| e.to_string())?;
    let location = redirect
        .headers()
        .get("location")
        .and_then(|v| v.to_str().ok())
        .ok_or("the consent endpoint did not redirect")?
        .to_string();
    let page = client
        .http
        .get(&location)
        .send()
        .await
        .map_err(|e| e.to_string())?;
    let status = page.status().as_u16();
    let text = page.text().await.unwrap_or_default();
    let title = text
        .split("<h1>")
        .nth(1)
        .and_then(|t| t.split("</h1>").next())
        .unwrap_or("");
    println!("  callback answered {status}: {title}");
    let enrichment = client.get(&format!("/enrichments/{id}")).await?;
    println!(
        "  enrichment status: {}, consent: {}",
        enrichment["status"], enrichment["consent"]["status"]
    );

    rule("4. The first run downloads and scores (started by the consent)");
    let run = wait_for_run(&client, &id, None).await?;
    println!(
        "  run {} {} (trigger {}, as of {})",
        run["id"].as_str().unwrap_or(""),
        run["status"],
        run["trigger"],
        run["as_of"].as_str().unwrap_or("")
    );
    if run["status"] != "successful" {
        return Err(format!("the run ended {}: {}", run["status"], run["tasks"]));
    }
    let (first_requests, mailboxes) = requests_per_mailbox(&emulator).await?;
    println!(
        "  Graph delta requests: {first_requests} for {mailboxes} mailboxes ({:.1} per mailbox; the minimum is 3: inbox, sent items, calendar)",
        first_requests as f64 / mailboxes.max(1) as f64
    );

    rule("5. Results");
    print_results(&client, &id).await?;
    let rows = all_accounts(&client, &id).await?;
    println!("\n  Top accounts (Year):");
    let sorted = print_top(&rows, &BTreeMap::new());
    let previous: BTreeMap<String, i64> = rows
        .iter()
        .map(|r| {
            (
                r["AccountId"].as_str().unwrap_or("").to_string(),
                num(&r["EngagementScore"]),
            )
        })
        .collect();
    let top = sorted
        .first()
        .and_then(|r| r["AccountId"].as_str())
        .unwrap_or("")
        .to_string();
    println!("\n  Customer card:");
    let card = client
        .get(&format!("/enrichments/{id}/accounts/{top}?period=Year"))
        .await?;
    print_card(&card);
    let measures = client
        .get(&format!("/enrichments/{id}/measures?level=Year"))
        .await?;
    println!(
        "\n  Measures (Year): score bands low {} / medium {} / high {}, average {}, silent 60+ days {}",
        measures["score_bands"]["low"],
        measures["score_bands"]["medium"],
        measures["score_bands"]["high"],
        measures["average_score"],
        measures["accounts_silent_60_days"]
    );
    let results = client.get(&format!("/enrichments/{id}/results")).await?;
    println!("\n  Output tables:");
    for key in ["office", "user_entity", "history"] {
        println!("    {}", results["tables"][key].as_str().unwrap_or(""));
    }
    println!(
        "    latest: {}",
        results["tables"]["latest_prefix"].as_str().unwrap_or("")
    );
    let office_key = format!("tables/{id}/latest/Office.csv");
    if let Ok(Some(office)) = stack
        .services
        .blobs
        .get(&stack.provisioned.bucket, &office_key)
        .await
    {
        println!("\n  The first rows of Office.csv:");
        for line in String::from_utf8_lossy(&office).lines().take(4) {
            println!("    {line}");
        }
    }

    rule("6. A week later: the emulator adds a week of activity, the next run is incremental");
    let next = as_of + chrono::Duration::days(7);
    let activity = next_week_of_activity(&fixture, as_of);
    println!(
        "  adding {} messages and {} events; now = {}",
        activity["messages"].as_array().map(Vec::len).unwrap_or(0),
        activity["events"].as_array().map(Vec::len).unwrap_or(0),
        next.format("%Y-%m-%d %H:%M UTC")
    );
    let http = reqwest::Client::new();
    for (path, body) in [
        ("activity", activity),
        ("now", json!({"now": next})),
        ("counters/reset", json!({})),
    ] {
        http.post(format!("{emulator}/_emulator/{path}"))
            .json(&body)
            .send()
            .await
            .map_err(|e| e.to_string())?;
    }
    stack.services.fix_as_of(next);
    let (status, started) = client
        .call(
            reqwest::Method::POST,
            &format!("/enrichments/{id}/runs"),
            None,
        )
        .await?;
    if status != 202 {
        return Err(format!("starting the run answered {status}: {started}"));
    }
    let second = wait_for_run(&client, &id, started["id"].as_str()).await?;
    println!(
        "  run {} {}",
        second["id"].as_str().unwrap_or(""),
        second["status"]
    );
    let (second_requests, _) = requests_per_mailbox(&emulator).await?;
    let seen = |run: &Value, key: &str| num(&run["tasks"]["download"]["progress"][key]);
    println!(
        "  Graph delta requests: {second_requests} (first run: {first_requests}); they returned only the changes: {} messages and {} events (first run: {} and {})",
        thousands(seen(&second, "messages_seen")),
        thousands(seen(&second, "events_seen")),
        thousands(seen(&run, "messages_seen")),
        thousands(seen(&run, "events_seen")),
    );
    print_results(&client, &id).await?;
    let rows = all_accounts(&client, &id).await?;
    println!("\n  Top accounts (Year), with the change since the first run:");
    print_top(&rows, &previous);

    rule("Done");
    println!(
        "The story took {:.1}s. `make local` leaves the same stack running.",
        began.elapsed().as_secs_f64()
    );
    drop(stack);
    Ok(())
}
