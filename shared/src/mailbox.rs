//! Resolution of the chosen users and groups into organization mailboxes (`Office_UserEntity`).

use std::collections::BTreeMap;

use futures::FutureExt;
use futures::future::{BoxFuture, join_all};

use crate::config::MailboxSelection;
use crate::ports::{Directory, DirectoryGroup, DirectoryUser, PortResult};
use crate::problem::FieldError;
use crate::tables::UserEntityRow;

/// Graph lookups run this many at a time: enough to resolve 2,500 addresses within an API call,
/// few enough to stay far from Graph's throttling.
const LOOKUP_CONCURRENCY: usize = 8;

/// The outcome of resolving a selection: the mailboxes (deduplicated by object id, in a stable
/// order) and the named users or groups that the directory does not know.
#[derive(Debug, Default)]
pub struct Resolution {
    pub mailboxes: Vec<UserEntityRow>,
    pub unknown: Vec<FieldError>,
}

type GroupLookup<'a> = (
    usize,
    &'a String,
    PortResult<Option<(DirectoryGroup, Vec<DirectoryUser>)>>,
);

async fn lookup_user<'a>(
    directory: &dyn Directory,
    i: usize,
    address: &'a String,
) -> (usize, &'a String, PortResult<Option<DirectoryUser>>) {
    (i, address, directory.user_by_address(address.trim()).await)
}

async fn lookup_group<'a>(directory: &dyn Directory, i: usize, key: &'a String) -> GroupLookup<'a> {
    let group = match directory.group(key.trim()).await {
        Ok(Some(group)) => group,
        Ok(None) => return (i, key, Ok(None)),
        Err(e) => return (i, key, Err(e)),
    };
    let members = directory.group_users(&group.id).await;
    (i, key, members.map(|m| Some((group, m))))
}

pub async fn resolve(
    directory: &dyn Directory,
    selection: &MailboxSelection,
) -> PortResult<Resolution> {
    // Boxed futures in a Vec (rather than stream combinators over closures) keep the handler's
    // future provably Send, which the Lambda runtime requires.
    let mut users = Vec::with_capacity(selection.users.len());
    let indexed: Vec<(usize, &String)> = selection.users.iter().enumerate().collect();
    for chunk in indexed.chunks(LOOKUP_CONCURRENCY) {
        let lookups: Vec<BoxFuture<'_, _>> = chunk
            .iter()
            .map(|(i, address)| lookup_user(directory, *i, address).boxed())
            .collect();
        users.extend(join_all(lookups).await);
    }
    let mut groups = Vec::with_capacity(selection.groups.len());
    let indexed: Vec<(usize, &String)> = selection.groups.iter().enumerate().collect();
    for chunk in indexed.chunks(LOOKUP_CONCURRENCY) {
        let lookups: Vec<BoxFuture<'_, _>> = chunk
            .iter()
            .map(|(i, key)| lookup_group(directory, *i, key).boxed())
            .collect();
        groups.extend(join_all(lookups).await);
    }

    let mut by_id: BTreeMap<String, UserEntityRow> = BTreeMap::new();
    let mut unknown = Vec::new();
    for (i, address, found) in users {
        match found? {
            Some(user) => {
                let email = user
                    .mail
                    .clone()
                    .unwrap_or_else(|| address.trim().to_lowercase());
                by_id.entry(user.id.clone()).or_insert(UserEntityRow {
                    user_id: user.id,
                    email: email.to_lowercase(),
                    display_name: user.display_name.unwrap_or_default(),
                    source: "user".into(),
                });
            }
            None => unknown.push(FieldError::new(
                format!("mailboxes.users[{i}]"),
                format!("'{}' is not a user of the tenant", address.trim()),
            )),
        }
    }
    for (i, key, found) in groups {
        match found? {
            Some((group, members)) => {
                let label = group.mail.clone().unwrap_or_else(|| group.id.clone());
                for user in members {
                    // Members without a mailbox address cannot be read; skip them.
                    let Some(mail) = user.mail.clone() else {
                        continue;
                    };
                    by_id.entry(user.id.clone()).or_insert(UserEntityRow {
                        user_id: user.id,
                        email: mail.to_lowercase(),
                        display_name: user.display_name.unwrap_or_default(),
                        source: format!("group:{}", label.to_lowercase()),
                    });
                }
            }
            None => unknown.push(FieldError::new(
                format!("mailboxes.groups[{i}]"),
                format!("'{}' is not a group of the tenant", key.trim()),
            )),
        }
    }
    Ok(Resolution {
        mailboxes: by_id.into_values().collect(),
        unknown,
    })
}
