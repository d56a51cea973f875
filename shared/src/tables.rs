//! The output tables of DESIGN §8: RFC 4180 CSV (CRLF line ends, quoting only where needed) with a header
//! row of exactly the §8 column names in order; dates `YYYY-MM-DD`, empty cells for missing values,
//! averages with one decimal. Also the JSON object form of an `Office` row (the API's `/accounts` items).

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::score::{HistoryRow, OfficeRow};

pub const OFFICE_COLUMNS: [&str; 17] = [
    "AccountId",
    "AggregationLevel",
    "AggregationStartDate",
    "EngagementScore",
    "NoOfEmails_ToAccount",
    "NoOfEmails_FromAccount",
    "NoOfMeetings_ToAccount",
    "NoOfMeetings_FromAccount",
    "NoOfContactsInvolved_Emails",
    "NoOfContactsInvolved_Meetings",
    "NoOfAccountContactsInvolved_Emails",
    "NoOfAccountContactsInvolved_Meetings",
    "EngagementStartDate",
    "DaysSinceLastEmail",
    "DaysSinceLastMeeting",
    "AverageDuration_Of_Meetings",
    "AverageDuration_Of_AccountEmailReplies",
];

pub const HISTORY_COLUMNS: [&str; 6] = [
    "AccountId",
    "WeekStart",
    "NoOfEmails_ToAccount",
    "NoOfEmails_FromAccount",
    "NoOfMeetings_ToAccount",
    "NoOfMeetings_FromAccount",
];

pub const USER_ENTITY_COLUMNS: [&str; 4] = ["UserId", "Email", "DisplayName", "Source"];

/// One `Office_UserEntity` row: a chosen mailbox. `source` is `user` or `group:<group mail>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserEntityRow {
    pub user_id: String,
    pub email: String,
    pub display_name: String,
    pub source: String,
}

fn date(d: chrono::NaiveDate) -> String {
    d.format("%Y-%m-%d").to_string()
}

fn opt<T: ToString>(v: Option<T>) -> String {
    v.map(|v| v.to_string()).unwrap_or_default()
}

fn one_decimal(v: Option<f64>) -> String {
    v.map(|v| format!("{v:.1}")).unwrap_or_default()
}

/// The 17 cells of an `Office` row, as written to the CSV.
pub fn office_cells(r: &OfficeRow) -> [String; 17] {
    [
        r.account_id.clone(),
        r.level.as_str().to_string(),
        date(r.aggregation_start_date),
        r.engagement_score.to_string(),
        r.emails_to_account.to_string(),
        r.emails_from_account.to_string(),
        r.meetings_to_account.to_string(),
        r.meetings_from_account.to_string(),
        r.contacts_involved_emails.to_string(),
        r.contacts_involved_meetings.to_string(),
        r.account_contacts_involved_emails.to_string(),
        r.account_contacts_involved_meetings.to_string(),
        opt(r.engagement_start_date.map(date)),
        opt(r.days_since_last_email),
        opt(r.days_since_last_meeting),
        one_decimal(r.average_duration_of_meetings),
        one_decimal(r.average_duration_of_account_email_replies),
    ]
}

fn write_csv<const N: usize>(
    header: [&str; N],
    rows: impl Iterator<Item = [String; N]>,
) -> Result<Vec<u8>, csv::Error> {
    let mut out = Vec::new();
    {
        let mut w = csv::WriterBuilder::new()
            .terminator(csv::Terminator::CRLF)
            .from_writer(&mut out);
        w.write_record(header)?;
        for r in rows {
            w.write_record(&r)?;
        }
        w.flush()?;
    }
    Ok(out)
}

/// `Office.csv`.
pub fn office_csv(rows: &[OfficeRow]) -> Result<Vec<u8>, csv::Error> {
    write_csv(OFFICE_COLUMNS, rows.iter().map(office_cells))
}

/// `Office_History.csv`.
pub fn history_csv(rows: &[HistoryRow]) -> Result<Vec<u8>, csv::Error> {
    write_csv(
        HISTORY_COLUMNS,
        rows.iter().map(|r| {
            [
                r.account_id.clone(),
                date(r.week_start),
                r.emails_to_account.to_string(),
                r.emails_from_account.to_string(),
                r.meetings_to_account.to_string(),
                r.meetings_from_account.to_string(),
            ]
        }),
    )
}

/// `Office_UserEntity.csv`.
pub fn user_entity_csv(rows: &[UserEntityRow]) -> Result<Vec<u8>, csv::Error> {
    write_csv(
        USER_ENTITY_COLUMNS,
        rows.iter().map(|r| {
            [
                r.user_id.clone(),
                r.email.clone(),
                r.display_name.clone(),
                r.source.clone(),
            ]
        }),
    )
}

/// An `Office` row as a JSON object keyed by the §8 column names (null for empty cells; dates as
/// `YYYY-MM-DD` strings; numbers as numbers).
pub fn office_row_json(row: &OfficeRow) -> Map<String, Value> {
    let values: [Value; 17] = [
        Value::from(row.account_id.clone()),
        Value::from(row.level.as_str()),
        Value::from(date(row.aggregation_start_date)),
        Value::from(row.engagement_score),
        Value::from(row.emails_to_account),
        Value::from(row.emails_from_account),
        Value::from(row.meetings_to_account),
        Value::from(row.meetings_from_account),
        Value::from(row.contacts_involved_emails),
        Value::from(row.contacts_involved_meetings),
        Value::from(row.account_contacts_involved_emails),
        Value::from(row.account_contacts_involved_meetings),
        row.engagement_start_date
            .map(|d| Value::from(date(d)))
            .unwrap_or(Value::Null),
        row.days_since_last_email
            .map(Value::from)
            .unwrap_or(Value::Null),
        row.days_since_last_meeting
            .map(Value::from)
            .unwrap_or(Value::Null),
        row.average_duration_of_meetings
            .map(Value::from)
            .unwrap_or(Value::Null),
        row.average_duration_of_account_email_replies
            .map(Value::from)
            .unwrap_or(Value::Null),
    ];
    OFFICE_COLUMNS
        .iter()
        .zip(values)
        .map(|(k, v)| (k.to_string(), v))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::score::Level;
    use chrono::NaiveDate;

    fn d(y: i32, m: u32, day: u32) -> NaiveDate {
        NaiveDate::from_ymd_opt(y, m, day).unwrap()
    }

    fn sample() -> OfficeRow {
        OfficeRow {
            account_id: "ACC, 1".into(),
            level: Level::Month,
            aggregation_start_date: d(2026, 2, 9),
            engagement_score: 67,
            emails_to_account: 3,
            emails_from_account: 2,
            meetings_to_account: 1,
            meetings_from_account: 0,
            contacts_involved_emails: 4,
            contacts_involved_meetings: 1,
            account_contacts_involved_emails: 2,
            account_contacts_involved_meetings: 1,
            engagement_start_date: Some(d(2026, 2, 10)),
            days_since_last_email: Some(0),
            days_since_last_meeting: None,
            average_duration_of_meetings: Some(30.0),
            average_duration_of_account_email_replies: None,
        }
    }

    #[test]
    fn office_header_and_row_exact() {
        let csv = String::from_utf8(office_csv(&[sample()]).unwrap()).unwrap();
        assert_eq!(
            csv,
            "AccountId,AggregationLevel,AggregationStartDate,EngagementScore,NoOfEmails_ToAccount,\
NoOfEmails_FromAccount,NoOfMeetings_ToAccount,NoOfMeetings_FromAccount,NoOfContactsInvolved_Emails,\
NoOfContactsInvolved_Meetings,NoOfAccountContactsInvolved_Emails,NoOfAccountContactsInvolved_Meetings,\
EngagementStartDate,DaysSinceLastEmail,DaysSinceLastMeeting,AverageDuration_Of_Meetings,\
AverageDuration_Of_AccountEmailReplies\r\n\
\"ACC, 1\",Month,2026-02-09,67,3,2,1,0,4,1,2,1,2026-02-10,0,,30.0,\r\n"
        );
    }

    #[test]
    fn empty_tables_have_headers() {
        assert_eq!(
            String::from_utf8(history_csv(&[]).unwrap()).unwrap(),
            "AccountId,WeekStart,NoOfEmails_ToAccount,NoOfEmails_FromAccount,NoOfMeetings_ToAccount,NoOfMeetings_FromAccount\r\n"
        );
        assert_eq!(
            String::from_utf8(user_entity_csv(&[]).unwrap()).unwrap(),
            "UserId,Email,DisplayName,Source\r\n"
        );
    }

    #[test]
    fn history_and_users_rows() {
        let h = HistoryRow {
            account_id: "A1".into(),
            week_start: d(2026, 3, 9),
            emails_to_account: 1,
            emails_from_account: 2,
            meetings_to_account: 0,
            meetings_from_account: 3,
        };
        let csv = String::from_utf8(history_csv(&[h]).unwrap()).unwrap();
        assert!(csv.ends_with("\r\nA1,2026-03-09,1,2,0,3\r\n"));
        let u = UserEntityRow {
            user_id: "6e7b768e-07e2-4810-8459-485f84f8f204".into(),
            email: "alice@contoso.com".into(),
            display_name: "Alice \"Al\" Smith".into(),
            source: "group:us-sales@contoso.com".into(),
        };
        let csv = String::from_utf8(user_entity_csv(&[u]).unwrap()).unwrap();
        assert!(csv.ends_with(
            "\r\n6e7b768e-07e2-4810-8459-485f84f8f204,alice@contoso.com,\"Alice \"\"Al\"\" Smith\",group:us-sales@contoso.com\r\n"
        ));
    }

    #[test]
    fn averages_have_one_decimal() {
        let mut r = sample();
        r.average_duration_of_meetings = Some(12.35_f64.max(12.4));
        r.average_duration_of_account_email_replies = Some(150.0);
        let cells = office_cells(&r);
        assert_eq!(cells[15], "12.4");
        assert_eq!(cells[16], "150.0");
    }

    #[test]
    fn json_row_uses_column_names() {
        let j = office_row_json(&sample());
        assert_eq!(j.len(), 17);
        let keys: Vec<&str> = j.keys().map(String::as_str).collect();
        for c in OFFICE_COLUMNS {
            assert!(keys.contains(&c), "{c}");
        }
        assert_eq!(j["AccountId"], "ACC, 1");
        assert_eq!(j["AggregationLevel"], "Month");
        assert_eq!(j["AggregationStartDate"], "2026-02-09");
        assert_eq!(j["EngagementScore"], 67);
        assert_eq!(j["NoOfEmails_ToAccount"], 3);
        assert_eq!(j["DaysSinceLastMeeting"], Value::Null);
        assert_eq!(j["AverageDuration_Of_Meetings"], 30.0);
        assert_eq!(j["AverageDuration_Of_AccountEmailReplies"], Value::Null);
    }
}
