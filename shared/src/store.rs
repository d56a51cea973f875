//! Typed access to the state table: the keys of DESIGN §4 and the documents stored under them.

use serde::{Serialize, de::DeserializeOwned};

use crate::config::Enrichment;
use crate::ports::{Item, PortError, PortResult, Precondition, Table};
use crate::tables::UserEntityRow;

pub const CONFIG_SK: &str = "CONFIG";
pub const MAILBOX_PREFIX: &str = "MAILBOX#";
/// Every enrichment id is listed under this partition so that listing never scans the table.
pub const INDEX_PK: &str = "ENRICHMENTS";

pub fn enrichment_pk(id: &str) -> String {
    format!("ENR#{id}")
}

pub fn decode<T: DeserializeOwned>(item: &Item) -> PortResult<T> {
    serde_json::from_value(item.doc.clone())
        .map_err(|e| PortError::Io(format!("corrupt item {}/{}: {e}", item.pk, item.sk)))
}

pub fn encode<T: Serialize>(value: &T) -> PortResult<serde_json::Value> {
    serde_json::to_value(value).map_err(|e| PortError::Io(format!("cannot encode: {e}")))
}

pub async fn get_enrichment(table: &dyn Table, id: &str) -> PortResult<Option<Enrichment>> {
    match table.get(&enrichment_pk(id), CONFIG_SK).await? {
        Some(item) => {
            let mut enrichment: Enrichment = decode(&item)?;
            enrichment.revision = item.version;
            Ok(Some(enrichment))
        }
        None => Ok(None),
    }
}

/// Stores an enrichment whose `revision` is already the new one: on create the item must be absent,
/// on update the stored revision must be the previous one (optimistic concurrency).
pub async fn save_enrichment(table: &dyn Table, enrichment: &Enrichment) -> PortResult<()> {
    let mut item = Item::new(
        enrichment_pk(&enrichment.id),
        CONFIG_SK,
        encode(enrichment)?,
    );
    item.version = enrichment.revision;
    let precondition = if enrichment.revision <= 1 {
        Precondition::Absent
    } else {
        Precondition::VersionIs(enrichment.revision - 1)
    };
    table.put(item, precondition).await?;
    if enrichment.revision <= 1 {
        table
            .put(
                Item::new(INDEX_PK, enrichment.id.clone(), serde_json::json!({})),
                Precondition::None,
            )
            .await?;
    }
    Ok(())
}

/// Applies `change` to the stored enrichment and saves it, retrying when another writer got there
/// first. System changes (consent, runs) do not bump the user-visible `version`.
/// `change` answers false to leave the enrichment as it is.
pub async fn update_enrichment<F>(
    table: &dyn Table,
    id: &str,
    mut change: F,
) -> PortResult<Option<Enrichment>>
where
    F: FnMut(&mut Enrichment) -> bool + Send,
{
    for _ in 0..5 {
        let Some(mut enrichment) = get_enrichment(table, id).await? else {
            return Ok(None);
        };
        if !change(&mut enrichment) {
            return Ok(Some(enrichment));
        }
        enrichment.revision += 1;
        match save_enrichment(table, &enrichment).await {
            Ok(()) => return Ok(Some(enrichment)),
            Err(PortError::Conflict) => continue,
            Err(e) => return Err(e),
        }
    }
    Err(PortError::Conflict)
}

pub async fn list_enrichments(
    table: &dyn Table,
    limit: usize,
    cursor: Option<String>,
) -> PortResult<(Vec<Enrichment>, Option<String>)> {
    let page = table
        .query(INDEX_PK, "", Some(limit), cursor, false)
        .await?;
    let mut enrichments = Vec::with_capacity(page.items.len());
    for item in &page.items {
        if let Some(e) = get_enrichment(table, &item.sk).await? {
            enrichments.push(e);
        }
    }
    Ok((enrichments, page.next))
}

pub async fn all_enrichment_ids(table: &dyn Table) -> PortResult<Vec<String>> {
    let mut ids = Vec::new();
    let mut cursor = None;
    loop {
        let page = table.query(INDEX_PK, "", Some(500), cursor, false).await?;
        ids.extend(page.items.into_iter().map(|i| i.sk));
        match page.next {
            Some(next) => cursor = Some(next),
            None => return Ok(ids),
        }
    }
}

/// Replaces the stored mailbox rows of an enrichment with `rows`.
pub async fn replace_mailboxes(
    table: &dyn Table,
    enrichment_id: &str,
    rows: &[UserEntityRow],
) -> PortResult<()> {
    let pk = enrichment_pk(enrichment_id);
    let keep: std::collections::HashSet<String> = rows
        .iter()
        .map(|r| format!("{MAILBOX_PREFIX}{}", r.user_id))
        .collect();
    let existing = table.query(&pk, MAILBOX_PREFIX, None, None, false).await?;
    let stale: Vec<(String, String)> = existing
        .items
        .into_iter()
        .filter(|i| !keep.contains(&i.sk))
        .map(|i| (i.pk, i.sk))
        .collect();
    let items = rows
        .iter()
        .map(|r| {
            Ok(Item::new(
                pk.clone(),
                format!("{MAILBOX_PREFIX}{}", r.user_id),
                encode(r)?,
            ))
        })
        .collect::<PortResult<Vec<_>>>()?;
    table.put_many(items).await?;
    table.delete_many(stale).await
}

pub async fn list_mailboxes(
    table: &dyn Table,
    enrichment_id: &str,
) -> PortResult<Vec<UserEntityRow>> {
    let page = table
        .query(
            &enrichment_pk(enrichment_id),
            MAILBOX_PREFIX,
            None,
            None,
            false,
        )
        .await?;
    page.items.iter().map(decode).collect()
}

/// Deletes every item of an enrichment's partition and its index entry.
pub async fn delete_enrichment_items(table: &dyn Table, enrichment_id: &str) -> PortResult<usize> {
    let pk = enrichment_pk(enrichment_id);
    let mut deleted = 0;
    loop {
        let page = table.query(&pk, "", Some(1000), None, false).await?;
        if page.items.is_empty() {
            break;
        }
        // The config goes last so a half-finished delete can be repeated.
        let keys: Vec<(String, String)> = page
            .items
            .into_iter()
            .filter(|i| i.sk != CONFIG_SK)
            .map(|i| (i.pk, i.sk))
            .collect();
        if keys.is_empty() {
            break;
        }
        deleted += keys.len();
        table.delete_many(keys).await?;
    }
    table.delete(&pk, CONFIG_SK, Precondition::None).await?;
    table
        .delete(INDEX_PK, enrichment_id, Precondition::None)
        .await?;
    Ok(deleted + 1)
}
