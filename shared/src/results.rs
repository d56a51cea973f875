//! Reading what the score job wrote: results summary, account rows (segments), customer cards,
//! measures. Query parameters are validated here so a bad one is a field error, never a 500.

use crate::ports::{PortResult, Table};
use crate::problem::{FieldError, Problem};
use crate::score::{CardView, Level};
use crate::scoring::{ACCOUNT_PREFIX, AccountItem, Measures, RESULTS_SK, Results};
use crate::store::{decode, enrichment_pk};
use crate::tables::office_row_json;

pub const DEFAULT_LIMIT: usize = 50;
pub const MAX_LIMIT: usize = 500;

/// The filters of `GET .../accounts`.
#[derive(Debug, Clone, PartialEq)]
pub struct AccountQuery {
    pub level: Level,
    pub min_score: u8,
    pub max_score: u8,
    pub limit: usize,
    pub cursor: Option<String>,
}

pub fn parse_level(value: Option<&str>, field: &str) -> Result<Level, FieldError> {
    match value {
        None => Ok(Level::Year),
        Some(v) => v
            .parse()
            .map_err(|_| FieldError::new(field, format!("'{v}' is not one of Week, Month, Year"))),
    }
}

fn parse_score(value: Option<&str>, field: &str, default: u8) -> Result<u8, FieldError> {
    match value {
        None => Ok(default),
        Some(v) => match v.parse::<u8>() {
            Ok(n) if n <= 100 => Ok(n),
            _ => Err(FieldError::new(
                field,
                "must be a whole number from 0 to 100",
            )),
        },
    }
}

impl AccountQuery {
    /// From the query string; `get` answers a parameter's value.
    pub fn parse(get: impl Fn(&str) -> Option<String>) -> Result<Self, Problem> {
        let mut errors = Vec::new();
        let level = parse_level(get("level").as_deref(), "level")
            .map_err(|e| errors.push(e))
            .unwrap_or(Level::Year);
        let min_score = parse_score(get("min_score").as_deref(), "min_score", 0)
            .map_err(|e| errors.push(e))
            .unwrap_or(0);
        let max_score = parse_score(get("max_score").as_deref(), "max_score", 100)
            .map_err(|e| errors.push(e))
            .unwrap_or(100);
        let limit = match get("limit") {
            None => DEFAULT_LIMIT,
            Some(v) => match v.parse::<usize>() {
                Ok(n) if (1..=MAX_LIMIT).contains(&n) => n,
                _ => {
                    errors.push(FieldError::new(
                        "limit",
                        format!("must be a whole number from 1 to {MAX_LIMIT}"),
                    ));
                    DEFAULT_LIMIT
                }
            },
        };
        if min_score > max_score {
            errors.push(FieldError::new(
                "min_score",
                "must not be greater than max_score",
            ));
        }
        if !errors.is_empty() {
            return Err(Problem::validation(errors));
        }
        Ok(AccountQuery {
            level,
            min_score,
            max_score,
            limit,
            cursor: get("cursor"),
        })
    }
}

pub async fn get_results(table: &dyn Table, enrichment_id: &str) -> PortResult<Option<Results>> {
    match table.get(&enrichment_pk(enrichment_id), RESULTS_SK).await? {
        Some(item) => decode(&item).map(Some),
        None => Ok(None),
    }
}

/// Office rows of one level within a score range, in AccountId order, a page at a time.
pub async fn list_accounts(
    table: &dyn Table,
    enrichment_id: &str,
    query: &AccountQuery,
) -> PortResult<(
    Vec<serde_json::Map<String, serde_json::Value>>,
    Option<String>,
)> {
    let pk = enrichment_pk(enrichment_id);
    let mut rows = Vec::new();
    let mut cursor = query.cursor.clone();
    loop {
        let page = table
            .query(
                &pk,
                ACCOUNT_PREFIX,
                Some(query.limit),
                cursor.clone(),
                false,
            )
            .await?;
        for item in &page.items {
            let account: AccountItem = decode(item)?;
            if let Some(row) = account.rows.iter().find(|r| r.level == query.level)
                && (query.min_score..=query.max_score).contains(&row.engagement_score)
            {
                rows.push(office_row_json(row));
            }
            cursor = Some(item.sk.clone());
            if rows.len() == query.limit {
                let more = page.next.is_some()
                    || item.sk != page.items.last().map(|i| i.sk.clone()).unwrap_or_default();
                return Ok((rows, if more { cursor } else { None }));
            }
        }
        if page.next.is_none() {
            return Ok((rows, None));
        }
        cursor = page.next;
    }
}

pub async fn get_card(
    table: &dyn Table,
    enrichment_id: &str,
    account_id: &str,
    period: Level,
) -> PortResult<Option<CardView>> {
    match table
        .get(
            &enrichment_pk(enrichment_id),
            &format!("{ACCOUNT_PREFIX}{account_id}"),
        )
        .await?
    {
        Some(item) => {
            let account: AccountItem = decode(&item)?;
            Ok(Some(account.card.view(period)))
        }
        None => Ok(None),
    }
}

pub async fn get_measures(
    table: &dyn Table,
    enrichment_id: &str,
    level: Level,
) -> PortResult<Option<Measures>> {
    Ok(get_results(table, enrichment_id)
        .await?
        .and_then(|r| r.measures.into_iter().find(|m| m.level == Some(level))))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query(pairs: &[(&str, &str)]) -> Result<AccountQuery, Problem> {
        let map: std::collections::HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        AccountQuery::parse(|k| map.get(k).cloned())
    }

    #[test]
    fn defaults_and_validation() {
        let q = query(&[]).expect("defaults");
        assert_eq!(
            (q.level, q.min_score, q.max_score, q.limit),
            (Level::Year, 0, 100, DEFAULT_LIMIT)
        );
        let p = query(&[("level", "Decade"), ("min_score", "101"), ("limit", "0")])
            .expect_err("invalid");
        let fields: Vec<&str> = p.errors.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(fields, ["level", "min_score", "limit"]);
        let p = query(&[("min_score", "80"), ("max_score", "20")]).expect_err("inverted");
        assert_eq!(p.errors[0].field, "min_score");
    }
}
