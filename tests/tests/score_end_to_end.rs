//! Configuration → consent → run → download → score → API on a small fixture whose every
//! `Office` value is computed by hand below (issue 5). T = 2026-11-30T12:00Z (a Monday).
//!
//! Activity (see `tenant_with_activity`): m1 jo@fabrikam (ACC-1) → alice, bob at T−3d, copied in
//! two mailboxes; m2 alice → jo, cc carol at T−2d (same conversation); m3 internal only; m4 dave →
//! max@northwind (ACC-2) at T−40d; e1 alice organizes carol + max at T−1d for 60 minutes, copied in
//! two mailboxes; e2 a private meeting with jo (skipped).
//!
//! Components (half-life 90 days, w(t) = 0.5^(age/90)):
//! - Week and Month (m4 is outside): E(ACC-1) = w(3d)·1 + w(2d)·0.5 > 0, E(ACC-2) = 0 → P_E 1 / 0;
//!   M(ACC-2) = w(1d) → P_M 0 / 1; B = 1 contact each → P_B 1 / 1. Scores 100·(0.4+0+0.2) = 60 and
//!   100·(0+0.4+0.2) = 60.
//! - Year: E(ACC-2) = 0.5·w(40d) ≈ 0.37 < E(ACC-1) ≈ 1.47 → P_E 1 / 0.5; P_M 0 / 1; P_B 1 / 1.
//!   Scores 60 and 100·(0.2+0.4+0.2) = 80.

use chrono::{DateTime, Utc};
use integration_tests::*;
use serde_json::{Value, json};

/// The `Office` columns of DESIGN §8, in order.
use shared::tables::OFFICE_COLUMNS as COLUMNS;

fn row(values: [Value; 17]) -> serde_json::Map<String, Value> {
    COLUMNS.iter().map(|c| c.to_string()).zip(values).collect()
}

/// Every expected row, by hand.
fn expected() -> Vec<serde_json::Map<String, Value>> {
    let n = Value::Null;
    // ACC-1: m1 from jo (alice, bob internal), m2 to jo (alice, carol internal); no meetings.
    let acc1 = |level: &str, start: &str| {
        row([
            json!("ACC-1"),
            json!(level),
            json!(start),
            json!(60),
            json!(1),
            json!(1),
            json!(0),
            json!(0),
            json!(3),
            json!(0),
            json!(1),
            json!(0),
            json!("2026-11-27"),
            json!(2),
            n.clone(),
            n.clone(),
            n.clone(),
        ])
    };
    // ACC-2 Week/Month: the meeting e1 only (alice, carol internal; max), 60 minutes, 1 day ago.
    let acc2_recent = |level: &str, start: &str| {
        row([
            json!("ACC-2"),
            json!(level),
            json!(start),
            json!(60),
            json!(0),
            json!(0),
            json!(1),
            json!(0),
            json!(0),
            json!(2),
            json!(0),
            json!(1),
            json!("2026-11-29"),
            n.clone(),
            json!(1),
            json!(60.0),
            n.clone(),
        ])
    };
    vec![
        acc1("Week", "2026-11-24"),
        acc1("Month", "2026-11-01"),
        acc1("Year", "2025-12-01"),
        acc2_recent("Week", "2026-11-24"),
        acc2_recent("Month", "2026-11-01"),
        // Year adds m4 (dave → max, 40 days ago).
        row([
            json!("ACC-2"),
            json!("Year"),
            json!("2025-12-01"),
            json!(80),
            json!(1),
            json!(0),
            json!(1),
            json!(0),
            json!(1),
            json!(2),
            json!(1),
            json!(1),
            json!("2026-10-21"),
            json!(40),
            json!(1),
            json!(60.0),
            n,
        ]),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_office_value_matches_the_hand_computed_table() {
    let as_of: DateTime<Utc> = "2026-11-30T12:00:00Z".parse().expect("instant");
    let t = start_at(as_of).await;
    let id = consented(&t).await;
    let run = finished_run(&t, &id, None).await;
    assert_eq!(run["status"], "successful", "{run}");

    let mut actual = Vec::new();
    for level in ["Week", "Month", "Year"] {
        let (status, page) = t
            .admin(
                "GET",
                &format!("/enrichments/{id}/accounts?level={level}"),
                None,
            )
            .await;
        assert_eq!(status, 200, "{page}");
        actual.extend(
            page["items"]
                .as_array()
                .expect("items")
                .iter()
                .filter_map(|r| r.as_object().cloned()),
        );
    }
    actual.sort_by_key(|r| {
        (
            r["AccountId"].to_string(),
            ["Week", "Month", "Year"]
                .iter()
                .position(|l| r["AggregationLevel"] == *l),
        )
    });
    let expected = expected();
    assert_eq!(actual.len(), expected.len(), "{actual:#?}");
    for (got, want) in actual.iter().zip(&expected) {
        for column in COLUMNS {
            assert_eq!(
                got[column], want[column],
                "{column} of {} {}",
                want["AccountId"], want["AggregationLevel"]
            );
        }
    }

    // The same rows in Office.csv, in the order of DESIGN §8.
    let bucket = t.stack.provisioned.bucket.clone();
    let csv = t
        .stack
        .services
        .blobs
        .get(&bucket, &format!("tables/{id}/latest/Office.csv"))
        .await
        .expect("get")
        .expect("Office.csv");
    let csv = String::from_utf8(csv).expect("utf-8");
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(lines[0], COLUMNS.join(","));
    assert_eq!(lines.len(), 7);
    assert_eq!(
        lines[6],
        "ACC-2,Year,2025-12-01,80,1,0,1,0,1,2,1,1,2026-10-21,40,1,60.0,"
    );

    let (_, results) = t
        .admin("GET", &format!("/enrichments/{id}/results"), None)
        .await;
    assert_eq!(results["enriched_customers"], 2);
    assert_eq!(results["emails_processed"], 3);
    assert_eq!(results["meetings_processed"], 1);
    assert_eq!(
        results["days_aggregated"], 41,
        "2026-10-21 to 2026-11-30, both counted"
    );
    assert_eq!(results["preview"].as_array().map(Vec::len), Some(6));
    assert_eq!(
        results["enriched_over_time"],
        json!([{"date": "2026-11-30", "count": 2}])
    );

    // A segment: the engaged accounts of the Year.
    let (_, high) = t
        .admin(
            "GET",
            &format!("/enrichments/{id}/accounts?level=Year&min_score=70"),
            None,
        )
        .await;
    let ids: Vec<&str> = high["items"]
        .as_array()
        .expect("items")
        .iter()
        .filter_map(|r| r["AccountId"].as_str())
        .collect();
    assert_eq!(ids, ["ACC-2"]);

    // The customer card explains the 80.
    let (_, card) = t
        .admin(
            "GET",
            &format!("/enrichments/{id}/accounts/ACC-2?period=Year"),
            None,
        )
        .await;
    assert_eq!(card["score"], 80);
    assert_eq!(
        card["components"],
        json!({"email": 0.5, "meeting": 1.0, "breadth": 1.0})
    );
    assert_eq!(
        card["totals"],
        json!({"emails_to_account": 1, "emails_from_account": 0, "meetings_to_account": 1, "meetings_from_account": 0})
    );
    assert_eq!(
        card["history"],
        json!([
            {"week_start": "2026-10-19", "emails_to_account": 1, "emails_from_account": 0, "meetings_to_account": 0, "meetings_from_account": 0},
            {"week_start": "2026-11-23", "emails_to_account": 0, "emails_from_account": 0, "meetings_to_account": 1, "meetings_from_account": 0}
        ])
    );
    let (status, _) = t
        .admin(
            "GET",
            &format!("/enrichments/{id}/accounts/ACC-404?period=Year"),
            None,
        )
        .await;
    assert_eq!(status, 404);

    // Scoring the same run again gives identical tables.
    let before = csv.clone();
    let run_id = run["id"].as_str().expect("run id");
    let again = t
        .stack
        .services
        .blobs
        .get(&bucket, &format!("tables/{id}/{run_id}/Office.csv"))
        .await
        .expect("get")
        .expect("run table");
    assert_eq!(String::from_utf8(again).expect("utf-8"), before);
}
