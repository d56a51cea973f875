//! When an enrichment's scheduled runs are due: weekly or daily, at one or more local times, in an
//! IANA time zone. Local times that a DST change skips run at the first instant after the gap;
//! local times that happen twice run once, at the first of them.

use chrono::{DateTime, Datelike, Duration, LocalResult, NaiveDate, NaiveTime, TimeZone, Utc};
use chrono_tz::Tz;
use serde::{Deserialize, Serialize};

use crate::problem::FieldError;

pub const MAX_TIMES_PER_DAY: usize = 24;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Frequency {
    Weekly,
    Daily,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Schedule {
    pub frequency: Frequency,
    /// Days of the week (`mon` … `sun`) for weekly schedules.
    #[serde(default)]
    pub days: Vec<String>,
    /// Local times `HH:MM`; several make a schedule run several times a day.
    pub times: Vec<String>,
    #[serde(default = "utc")]
    pub time_zone: String,
}

fn utc() -> String {
    "UTC".into()
}

impl Default for Schedule {
    fn default() -> Self {
        Self {
            frequency: Frequency::Weekly,
            days: vec!["mon".into()],
            times: vec!["02:00".into()],
            time_zone: utc(),
        }
    }
}

const DAY_NAMES: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];

fn parse_day(day: &str) -> Option<u32> {
    DAY_NAMES
        .iter()
        .position(|d| d.eq_ignore_ascii_case(day.trim()))
        .map(|p| p as u32)
}

fn parse_time(time: &str) -> Option<NaiveTime> {
    let t = time.trim();
    if t.len() != 5 {
        return None;
    }
    NaiveTime::parse_from_str(t, "%H:%M").ok()
}

impl Schedule {
    /// Field errors, each named under `prefix`.
    pub fn validate(&self, prefix: &str) -> Vec<FieldError> {
        let mut errors = Vec::new();
        if self.time_zone.parse::<Tz>().is_err() {
            errors.push(FieldError::new(
                format!("{prefix}.time_zone"),
                format!("'{}' is not an IANA time zone", self.time_zone),
            ));
        }
        if self.times.is_empty() || self.times.len() > MAX_TIMES_PER_DAY {
            errors.push(FieldError::new(
                format!("{prefix}.times"),
                format!("give 1 to {MAX_TIMES_PER_DAY} times of day"),
            ));
        }
        for (i, time) in self.times.iter().enumerate() {
            if parse_time(time).is_none() {
                errors.push(FieldError::new(
                    format!("{prefix}.times[{i}]"),
                    format!("'{time}' is not a time HH:MM (00:00 to 23:59)"),
                ));
            }
        }
        match self.frequency {
            Frequency::Weekly => {
                if self.days.is_empty() {
                    errors.push(FieldError::new(
                        format!("{prefix}.days"),
                        "a weekly schedule needs at least one day (mon … sun)",
                    ));
                }
                for (i, day) in self.days.iter().enumerate() {
                    if parse_day(day).is_none() {
                        errors.push(FieldError::new(
                            format!("{prefix}.days[{i}]"),
                            format!("'{day}' is not one of mon, tue, wed, thu, fri, sat, sun"),
                        ));
                    }
                }
            }
            Frequency::Daily => {
                if !self.days.is_empty() {
                    errors.push(FieldError::new(
                        format!("{prefix}.days"),
                        "a daily schedule runs every day: leave days out",
                    ));
                }
            }
        }
        errors
    }

    /// The latest scheduled instant in `(after, until]`, if any.
    pub fn latest_due(&self, after: DateTime<Utc>, until: DateTime<Utc>) -> Option<DateTime<Utc>> {
        if until <= after {
            return None;
        }
        let tz: Tz = self.time_zone.parse().ok()?;
        let times: Vec<NaiveTime> = self.times.iter().filter_map(|t| parse_time(t)).collect();
        let days: Vec<u32> = self.days.iter().filter_map(|d| parse_day(d)).collect();
        let first = after.with_timezone(&tz).date_naive() - Duration::days(1);
        let last = until.with_timezone(&tz).date_naive() + Duration::days(1);
        let mut best = None;
        let mut date = first;
        while date <= last {
            let runs_today = match self.frequency {
                Frequency::Daily => true,
                Frequency::Weekly => days.contains(&date.weekday().num_days_from_monday()),
            };
            if runs_today {
                for time in &times {
                    if let Some(instant) = local_instant(tz, date, *time)
                        && instant > after
                        && instant <= until
                        && best.is_none_or(|b| instant > b)
                    {
                        best = Some(instant);
                    }
                }
            }
            date += Duration::days(1);
        }
        best
    }
}

/// The UTC instant of a local wall-clock time, resolving DST gaps and folds.
fn local_instant(tz: Tz, date: NaiveDate, time: NaiveTime) -> Option<DateTime<Utc>> {
    let naive = date.and_time(time);
    match tz.from_local_datetime(&naive) {
        LocalResult::Single(t) => Some(t.with_timezone(&Utc)),
        LocalResult::Ambiguous(first, _) => Some(first.with_timezone(&Utc)),
        LocalResult::None => {
            // Skipped by a spring-forward change: run at the first valid minute after the gap.
            (1..=180).find_map(|minutes| {
                tz.from_local_datetime(&(naive + Duration::minutes(minutes)))
                    .earliest()
                    .map(|t| t.with_timezone(&Utc))
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s)
            .expect("test instant")
            .with_timezone(&Utc)
    }

    fn weekly(days: &[&str], times: &[&str], tz: &str) -> Schedule {
        Schedule {
            frequency: Frequency::Weekly,
            days: days.iter().map(|d| d.to_string()).collect(),
            times: times.iter().map(|d| d.to_string()).collect(),
            time_zone: tz.into(),
        }
    }

    #[test]
    fn default_is_monday_two_utc() {
        let s = Schedule::default();
        // 2026-11-30 is a Monday.
        assert_eq!(
            s.latest_due(at("2026-11-29T00:00:00Z"), at("2026-12-04T00:00:00Z")),
            Some(at("2026-11-30T02:00:00Z"))
        );
        assert_eq!(
            s.latest_due(at("2026-11-30T02:00:00Z"), at("2026-12-06T23:59:59Z")),
            None,
            "the boundary instant belongs to the earlier tick"
        );
    }

    #[test]
    fn london_follows_summer_time() {
        let s = weekly(&["mon"], &["02:00"], "Europe/London");
        // Summer (BST, UTC+1): 02:00 local is 01:00 UTC.
        assert_eq!(
            s.latest_due(at("2026-07-05T00:00:00Z"), at("2026-07-07T00:00:00Z")),
            Some(at("2026-07-06T01:00:00Z"))
        );
        // Winter (GMT).
        assert_eq!(
            s.latest_due(at("2026-12-06T00:00:00Z"), at("2026-12-08T00:00:00Z")),
            Some(at("2026-12-07T02:00:00Z"))
        );
    }

    #[test]
    fn new_york_spring_forward_gap_runs_after_the_gap() {
        // 2026-03-08 02:30 does not exist in New York (clocks jump 02:00 -> 03:00 EDT).
        let s = weekly(&["sun"], &["02:30"], "America/New_York");
        assert_eq!(
            s.latest_due(at("2026-03-08T00:00:00Z"), at("2026-03-09T00:00:00Z")),
            Some(at("2026-03-08T07:00:00Z")),
            "03:00 EDT = 07:00 UTC"
        );
    }

    #[test]
    fn fall_back_fold_runs_once() {
        // 2026-11-01 01:30 happens twice in New York; the first is 05:30 UTC (EDT).
        let s = Schedule {
            frequency: Frequency::Daily,
            days: vec![],
            times: vec!["01:30".into()],
            time_zone: "America/New_York".into(),
        };
        assert_eq!(
            s.latest_due(at("2026-11-01T04:00:00Z"), at("2026-11-01T07:00:00Z")),
            Some(at("2026-11-01T05:30:00Z"))
        );
        assert_eq!(
            s.latest_due(at("2026-11-01T05:30:00Z"), at("2026-11-01T07:00:00Z")),
            None,
            "the second 01:30 (06:30 UTC) is not another run"
        );
    }

    #[test]
    fn several_times_a_day_in_tokyo() {
        let s = Schedule {
            frequency: Frequency::Daily,
            days: vec![],
            times: vec!["09:00".into(), "13:00".into(), "18:00".into()],
            time_zone: "Asia/Tokyo".into(),
        };
        // 13:00 JST = 04:00 UTC.
        assert_eq!(
            s.latest_due(at("2026-12-04T01:00:00Z"), at("2026-12-04T05:00:00Z")),
            Some(at("2026-12-04T04:00:00Z"))
        );
    }

    #[test]
    fn validation_names_fields() {
        let s = Schedule {
            frequency: Frequency::Weekly,
            days: vec!["funday".into()],
            times: vec!["25:00".into()],
            time_zone: "Mars/Olympus".into(),
        };
        let fields: Vec<String> = s
            .validate("schedule")
            .into_iter()
            .map(|e| e.field)
            .collect();
        assert_eq!(
            fields,
            [
                "schedule.time_zone",
                "schedule.times[0]",
                "schedule.days[0]"
            ]
        );
        assert!(Schedule::default().validate("schedule").is_empty());
    }
}
