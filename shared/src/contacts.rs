//! The customer contact data set (DESIGN §4, §7): a CSV with a header row or JSON Lines, with a mapped
//! account-id field and a mapped contact-email field. Pure parsing: the caller reads the bytes.
//!
//! Emails are trimmed and lower-cased; invalid ones and rows without an account id are skipped and
//! counted; an address listed under several accounts counts for each (and is counted once in
//! `shared_addresses`); duplicate (account, email) rows are kept once. Warnings carry counts, never an
//! address.

use std::collections::{HashMap, HashSet};

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DataFormat {
    #[serde(rename = "csv")]
    Csv,
    #[serde(rename = "jsonl")]
    JsonLines,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ContactsError {
    #[error("the data set has no field named '{0}'")]
    MissingField(String),
    #[error("the data set is empty")]
    Empty,
    #[error("CSV error at line {line}: {message}")]
    Csv { line: u64, message: String },
    #[error("JSON Lines error at line {line}: {message}")]
    Json { line: u64, message: String },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Contact {
    pub account_id: String,
    /// Trimmed, lower-cased.
    pub email: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContactSet {
    /// Distinct (account, email) pairs, in order of first appearance.
    pub contacts: Vec<Contact>,
    /// Rows skipped because the email was empty or not a valid address.
    pub invalid_emails: usize,
    /// Distinct addresses listed under two or more accounts.
    pub shared_addresses: usize,
    /// Rows skipped because the account id was empty.
    pub missing_account_ids: usize,
    /// Rows repeating an (account, email) pair already seen.
    pub duplicate_rows: usize,
    /// Data rows read.
    pub rows: usize,
    /// Human-readable, with counts; never an address.
    pub warnings: Vec<String>,
}

/// The field names of the data set: the CSV header row, or the keys of the first JSON line.
pub fn header_fields(bytes: &[u8], format: DataFormat) -> Result<Vec<String>, ContactsError> {
    match format {
        DataFormat::Csv => {
            let mut rdr = csv_reader(bytes);
            let headers = rdr.headers().map_err(csv_error)?;
            let fields: Vec<String> = headers.iter().map(|h| h.trim().to_string()).collect();
            if fields.iter().all(|f| f.is_empty()) {
                return Err(ContactsError::Empty);
            }
            Ok(fields)
        }
        DataFormat::JsonLines => {
            let text = strip_bom(bytes);
            for (i, line) in text.split(|b| *b == b'\n').enumerate() {
                if line.trim_ascii().is_empty() {
                    continue;
                }
                let obj = json_object(line, i as u64 + 1)?;
                return Ok(obj.keys().cloned().collect());
            }
            Err(ContactsError::Empty)
        }
    }
}

/// Parses the data set with the mapped fields.
pub fn parse_contacts(
    bytes: &[u8],
    format: DataFormat,
    account_id_field: &str,
    email_field: &str,
) -> Result<ContactSet, ContactsError> {
    let mut b = Builder::default();
    match format {
        DataFormat::Csv => {
            let mut rdr = csv_reader(bytes);
            let headers = rdr.headers().map_err(csv_error)?.clone();
            let find = |name: &str| {
                headers
                    .iter()
                    .position(|h| h.trim() == name.trim())
                    .ok_or_else(|| ContactsError::MissingField(name.to_string()))
            };
            let ai = find(account_id_field)?;
            let ei = find(email_field)?;
            for rec in rdr.records() {
                let rec = rec.map_err(csv_error)?;
                if rec.iter().all(|c| c.trim().is_empty()) {
                    continue; // blank line
                }
                b.row(rec.get(ai).unwrap_or(""), rec.get(ei).unwrap_or(""));
            }
        }
        DataFormat::JsonLines => {
            let text = strip_bom(bytes);
            let mut first = true;
            for (i, line) in text.split(|b| *b == b'\n').enumerate() {
                if line.trim_ascii().is_empty() {
                    continue;
                }
                let obj = json_object(line, i as u64 + 1)?;
                if first {
                    for f in [account_id_field, email_field] {
                        if !obj.contains_key(f) {
                            return Err(ContactsError::MissingField(f.to_string()));
                        }
                    }
                    first = false;
                }
                let account = json_text(obj.get(account_id_field));
                let email = json_text(obj.get(email_field));
                b.row(&account, &email);
            }
            if first {
                return Err(ContactsError::Empty);
            }
        }
    }
    Ok(b.finish())
}

/// The address check applied to the data set: one '@', non-empty local part and domain, no whitespace or
/// control characters, a domain with an inner dot.
pub fn is_valid_email(email: &str) -> bool {
    let Some((local, domain)) = email.split_once('@') else {
        return false;
    };
    !local.is_empty()
        && !domain.is_empty()
        && !domain.contains('@')
        && !email.chars().any(|c| c.is_whitespace() || c.is_control())
        && domain.contains('.')
        && !domain.starts_with('.')
        && !domain.ends_with('.')
        && !domain.contains("..")
}

/// Trims and lower-cases an address (the form contacts are hashed in).
pub fn normalize_email(email: &str) -> String {
    email.trim().to_lowercase()
}

#[derive(Default)]
struct Builder {
    set: ContactSet,
    seen: HashSet<(String, String)>,
    accounts_of: HashMap<String, u32>,
    first_account: HashMap<String, String>,
}

impl Builder {
    fn row(&mut self, account: &str, email: &str) {
        self.set.rows += 1;
        let account = account.trim();
        let email = normalize_email(email);
        if account.is_empty() {
            self.set.missing_account_ids += 1;
            return;
        }
        if !is_valid_email(&email) {
            self.set.invalid_emails += 1;
            return;
        }
        if !self.seen.insert((account.to_string(), email.clone())) {
            self.set.duplicate_rows += 1;
            return;
        }
        match self.first_account.get(&email) {
            None => {
                self.first_account
                    .insert(email.clone(), account.to_string());
            }
            Some(_) => {
                let n = self.accounts_of.entry(email.clone()).or_insert(1);
                *n += 1;
                if *n == 2 {
                    self.set.shared_addresses += 1;
                }
            }
        }
        self.set.contacts.push(Contact {
            account_id: account.to_string(),
            email,
        });
    }

    fn finish(mut self) -> ContactSet {
        let s = &mut self.set;
        if s.invalid_emails > 0 {
            s.warnings.push(format!(
                "{} row(s) skipped: empty or invalid email address",
                s.invalid_emails
            ));
        }
        if s.missing_account_ids > 0 {
            s.warnings.push(format!(
                "{} row(s) skipped: empty account id",
                s.missing_account_ids
            ));
        }
        if s.shared_addresses > 0 {
            s.warnings.push(format!(
                "{} address(es) are listed under more than one account and count for each",
                s.shared_addresses
            ));
        }
        if s.duplicate_rows > 0 {
            s.warnings
                .push(format!("{} duplicate row(s) ignored", s.duplicate_rows));
        }
        self.set
    }
}

fn strip_bom(bytes: &[u8]) -> &[u8] {
    bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes)
}

fn csv_reader(bytes: &[u8]) -> csv::Reader<&[u8]> {
    csv::ReaderBuilder::new()
        .has_headers(true)
        .flexible(true)
        .from_reader(strip_bom(bytes))
}

fn csv_error(e: csv::Error) -> ContactsError {
    let line = e.position().map(|p| p.line()).unwrap_or(0);
    let message = match e.kind() {
        csv::ErrorKind::Utf8 { .. } => "invalid UTF-8".to_string(),
        csv::ErrorKind::Io(_) => "read error".to_string(),
        _ => "malformed CSV".to_string(),
    };
    ContactsError::Csv { line, message }
}

fn json_object(
    line: &[u8],
    line_no: u64,
) -> Result<serde_json::Map<String, serde_json::Value>, ContactsError> {
    match serde_json::from_slice::<serde_json::Value>(line) {
        Ok(serde_json::Value::Object(m)) => Ok(m),
        Ok(_) => Err(ContactsError::Json {
            line: line_no,
            message: "not a JSON object".to_string(),
        }),
        // serde_json messages describe syntax, not content; keep only the category to be safe.
        Err(e) => Err(ContactsError::Json {
            line: line_no,
            message: format!("invalid JSON ({:?})", e.classify()),
        }),
    }
}

fn json_text(v: Option<&serde_json::Value>) -> String {
    match v {
        Some(serde_json::Value::String(s)) => s.clone(),
        Some(serde_json::Value::Number(n)) => n.to_string(),
        Some(serde_json::Value::Bool(b)) => b.to_string(),
        _ => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn format_serde_names() {
        assert_eq!(serde_json::to_string(&DataFormat::Csv).unwrap(), "\"csv\"");
        assert_eq!(
            serde_json::to_string(&DataFormat::JsonLines).unwrap(),
            "\"jsonl\""
        );
        assert_eq!(
            serde_json::from_str::<DataFormat>("\"jsonl\"").unwrap(),
            DataFormat::JsonLines
        );
    }

    #[test]
    fn csv_header_and_rows() {
        let data = "\u{feff}AccountId,Name,EMail\n\
                    A1,Bob, Bob@Fabrikam.com \n\
                    A1,Bob again,bob@fabrikam.com\n\
                    A2,Shared,bob@fabrikam.com\n\
                    A3,Bad,not-an-address\n\
                    A3,Bad2,a b@x.com\n\
                    A3,Bad3,x@localhost\n\
                    A3,Bad4,x@@y.com\n\
                    ,NoAccount,c@contoso.com\n\
                    A4,\"Quoted, name\",carol@northwind.example\n\
                    A5,Empty,\n\
                    \n";
        assert_eq!(
            header_fields(data.as_bytes(), DataFormat::Csv).unwrap(),
            vec!["AccountId", "Name", "EMail"]
        );
        let set = parse_contacts(data.as_bytes(), DataFormat::Csv, "AccountId", "EMail").unwrap();
        assert_eq!(
            set.contacts,
            vec![
                Contact {
                    account_id: "A1".into(),
                    email: "bob@fabrikam.com".into()
                },
                Contact {
                    account_id: "A2".into(),
                    email: "bob@fabrikam.com".into()
                },
                Contact {
                    account_id: "A4".into(),
                    email: "carol@northwind.example".into()
                },
            ]
        );
        assert_eq!(set.invalid_emails, 5);
        assert_eq!(set.missing_account_ids, 1);
        assert_eq!(set.shared_addresses, 1);
        assert_eq!(set.duplicate_rows, 1);
        assert_eq!(set.rows, 10);
        assert_eq!(set.warnings.len(), 4);
        for w in &set.warnings {
            assert!(!w.contains('@'), "warning leaks an address: {w}");
        }
    }

    #[test]
    fn csv_missing_field() {
        let data = b"AccountId,Mail\nA1,a@b.com\n";
        assert_eq!(
            parse_contacts(data, DataFormat::Csv, "AccountId", "EMail"),
            Err(ContactsError::MissingField("EMail".into()))
        );
        assert_eq!(
            parse_contacts(data, DataFormat::Csv, "Account", "Mail"),
            Err(ContactsError::MissingField("Account".into()))
        );
    }

    #[test]
    fn jsonl_rows() {
        let data = "{\"acct\": 42, \"mail\": \"Dana@Fabrikam.com\", \"x\": 1}\n\
                    \n\
                    {\"acct\": \"A2\", \"mail\": \"dana@fabrikam.com\"}\r\n\
                    {\"acct\": \"A3\"}\n\
                    {\"acct\": null, \"mail\": \"e@fabrikam.com\"}\n\
                    {\"acct\": \"A3\", \"mail\": \"bad\"}\n";
        let mut fields = header_fields(data.as_bytes(), DataFormat::JsonLines).unwrap();
        fields.sort();
        assert_eq!(fields, vec!["acct", "mail", "x"]);
        let set = parse_contacts(data.as_bytes(), DataFormat::JsonLines, "acct", "mail").unwrap();
        assert_eq!(
            set.contacts,
            vec![
                Contact {
                    account_id: "42".into(),
                    email: "dana@fabrikam.com".into()
                },
                Contact {
                    account_id: "A2".into(),
                    email: "dana@fabrikam.com".into()
                },
            ]
        );
        assert_eq!(set.invalid_emails, 2);
        assert_eq!(set.missing_account_ids, 1);
        assert_eq!(set.shared_addresses, 1);
    }

    #[test]
    fn jsonl_errors() {
        assert_eq!(
            parse_contacts(b"{\"a\":1}\n", DataFormat::JsonLines, "a", "mail"),
            Err(ContactsError::MissingField("mail".into()))
        );
        assert!(matches!(
            parse_contacts(
                b"{\"a\":\"1\",\"m\":\"x@y.z\"}\n{oops\n",
                DataFormat::JsonLines,
                "a",
                "m"
            ),
            Err(ContactsError::Json { line: 2, .. })
        ));
        assert_eq!(
            header_fields(b"\n\n", DataFormat::JsonLines),
            Err(ContactsError::Empty)
        );
        assert!(matches!(
            header_fields(b"[1,2]\n", DataFormat::JsonLines),
            Err(ContactsError::Json { line: 1, .. })
        ));
    }

    #[test]
    fn email_validation() {
        for ok in ["a@b.co", "first.last+tag@sub.example.org", "x_y@a-b.c"] {
            assert!(is_valid_email(ok), "{ok}");
        }
        for bad in [
            "",
            "a",
            "@b.com",
            "a@",
            "a@b",
            "a@@b.com",
            "a@b@c.com",
            "a b@c.com",
            "a@.com",
            "a@com.",
            "a@b..com",
        ] {
            assert!(!is_valid_email(bad), "{bad}");
        }
    }
}
