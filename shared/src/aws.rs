//! Adapters of the ports to AWS: DynamoDB (table), S3 (blobs), SQS (queue), SES v2 (mailer).
//! Clients are built once per container from the environment; `AWS_ENDPOINT_URL` points them at a
//! local emulator (moto), in which case S3 uses path-style addressing.

use std::collections::HashMap;

use async_trait::async_trait;
use aws_sdk_dynamodb::types::{AttributeValue, DeleteRequest, PutRequest, WriteRequest};
use aws_sdk_s3::primitives::ByteStream;

use crate::ports::{
    Blobs, Email, Item, ItemPage, Mailer, PortError, PortResult, Precondition, Queue, Table,
};

fn io_err<E: std::error::Error>(what: &str, e: E) -> PortError {
    PortError::Io(format!("{what}: {}", aws_smithy_error_context(&e)))
}

/// The full error chain, as the SDK's own `DisplayErrorContext` renders it.
fn aws_smithy_error_context<E: std::error::Error>(e: &E) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// The SDK clients of one container.
#[derive(Clone)]
pub struct AwsClients {
    pub dynamodb: aws_sdk_dynamodb::Client,
    pub s3: aws_sdk_s3::Client,
    pub sqs: aws_sdk_sqs::Client,
    pub ses: aws_sdk_sesv2::Client,
    pub secrets: aws_sdk_secretsmanager::Client,
}

impl AwsClients {
    pub async fn from_env() -> Self {
        let config = aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await;
        Self::from_config(&config)
    }

    /// Clients for an explicit endpoint with static credentials (the local stack and tests).
    pub async fn for_endpoint(endpoint: &str, region: &str) -> Self {
        let credentials = aws_credential_types::Credentials::from_keys("testing", "testing", None);
        let config = aws_config::defaults(aws_config::BehaviorVersion::latest())
            .region(aws_config::Region::new(region.to_string()))
            .credentials_provider(credentials)
            .endpoint_url(endpoint)
            .load()
            .await;
        Self::from_config(&config)
    }

    pub fn from_config(config: &aws_config::SdkConfig) -> Self {
        let local = config.endpoint_url().is_some();
        let mut s3 = aws_sdk_s3::config::Builder::from(config);
        if local {
            s3 = s3
                .force_path_style(true)
                .request_checksum_calculation(
                    aws_sdk_s3::config::RequestChecksumCalculation::WhenRequired,
                )
                .response_checksum_validation(
                    aws_sdk_s3::config::ResponseChecksumValidation::WhenRequired,
                );
        }
        Self {
            dynamodb: aws_sdk_dynamodb::Client::new(config),
            s3: aws_sdk_s3::Client::from_conf(s3.build()),
            sqs: aws_sdk_sqs::Client::new(config),
            ses: aws_sdk_sesv2::Client::new(config),
            secrets: aws_sdk_secretsmanager::Client::new(config),
        }
    }
}

/// The state table in DynamoDB. Documents are stored as JSON text in `doc`; `version`,
/// `expires_at` (TTL) and counters are top-level numbers so conditions and `ADD` can use them.
#[derive(Clone)]
pub struct DynamoTable {
    client: aws_sdk_dynamodb::Client,
    table: String,
}

impl DynamoTable {
    pub fn new(client: aws_sdk_dynamodb::Client, table: impl Into<String>) -> Self {
        Self {
            client,
            table: table.into(),
        }
    }

    fn to_attributes(item: &Item) -> HashMap<String, AttributeValue> {
        let mut map = HashMap::from([
            ("pk".to_string(), AttributeValue::S(item.pk.clone())),
            ("sk".to_string(), AttributeValue::S(item.sk.clone())),
            ("doc".to_string(), AttributeValue::S(item.doc.to_string())),
            (
                "version".to_string(),
                AttributeValue::N(item.version.to_string()),
            ),
        ]);
        if let Some(ttl) = item.expires_at {
            map.insert("expires_at".into(), AttributeValue::N(ttl.to_string()));
        }
        map
    }

    fn from_attributes(map: &HashMap<String, AttributeValue>) -> PortResult<Item> {
        let text = |key: &str| map.get(key).and_then(|v| v.as_s().ok()).cloned();
        let number = |key: &str| {
            map.get(key)
                .and_then(|v| v.as_n().ok())
                .and_then(|n| n.parse::<i64>().ok())
        };
        let pk = text("pk").ok_or_else(|| PortError::Io("item without pk".into()))?;
        let sk = text("sk").ok_or_else(|| PortError::Io("item without sk".into()))?;
        let doc = match text("doc") {
            Some(doc) => serde_json::from_str(&doc)
                .map_err(|e| PortError::Io(format!("corrupt item {pk}/{sk}: {e}")))?,
            None => {
                // A counter item: its numbers are the document.
                let counters: serde_json::Map<String, serde_json::Value> = map
                    .iter()
                    .filter(|(k, _)| !matches!(k.as_str(), "version" | "expires_at"))
                    .filter_map(|(k, v)| {
                        v.as_n()
                            .ok()
                            .and_then(|n| n.parse::<i64>().ok())
                            .map(|n| (k.clone(), n.into()))
                    })
                    .collect();
                serde_json::Value::Object(counters)
            }
        };
        Ok(Item {
            pk,
            sk,
            doc,
            version: number("version").unwrap_or(0).max(0) as u64,
            expires_at: number("expires_at"),
        })
    }

    fn key(pk: &str, sk: &str) -> HashMap<String, AttributeValue> {
        HashMap::from([
            ("pk".to_string(), AttributeValue::S(pk.to_string())),
            ("sk".to_string(), AttributeValue::S(sk.to_string())),
        ])
    }

    async fn batch_write(&self, mut requests: Vec<WriteRequest>) -> PortResult<()> {
        while !requests.is_empty() {
            let rest = requests.split_off(requests.len().min(25));
            let mut chunk = std::mem::replace(&mut requests, rest);
            let mut attempt = 0u32;
            while !chunk.is_empty() {
                attempt += 1;
                let out = self
                    .client
                    .batch_write_item()
                    .request_items(&self.table, chunk)
                    .send()
                    .await
                    .map_err(|e| io_err("dynamodb batch write", e))?;
                chunk = out
                    .unprocessed_items
                    .and_then(|mut m| m.remove(&self.table))
                    .unwrap_or_default();
                if !chunk.is_empty() {
                    if attempt > 8 {
                        return Err(PortError::Throttled("DynamoDB".into()));
                    }
                    tokio::time::sleep(std::time::Duration::from_millis(50 << attempt)).await;
                }
            }
        }
        Ok(())
    }
}

fn condition_expression(precondition: Precondition) -> Option<(&'static str, Option<u64>)> {
    match precondition {
        Precondition::None => None,
        Precondition::Absent => Some(("attribute_not_exists(pk)", None)),
        Precondition::Present => Some(("attribute_exists(pk)", None)),
        Precondition::VersionIs(v) => {
            Some(("attribute_exists(pk) AND version = :expected", Some(v)))
        }
    }
}

#[async_trait]
impl Table for DynamoTable {
    async fn get(&self, pk: &str, sk: &str) -> PortResult<Option<Item>> {
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .set_key(Some(Self::key(pk, sk)))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| io_err("dynamodb get", e))?;
        out.item.as_ref().map(Self::from_attributes).transpose()
    }

    async fn put(&self, item: Item, precondition: Precondition) -> PortResult<()> {
        let mut request = self
            .client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(Self::to_attributes(&item)));
        if let Some((expression, expected)) = condition_expression(precondition) {
            request = request.condition_expression(expression);
            if let Some(v) = expected {
                request = request
                    .expression_attribute_values(":expected", AttributeValue::N(v.to_string()));
            }
        }
        match request.send().await {
            Ok(_) => Ok(()),
            Err(e)
                if e.as_service_error()
                    .is_some_and(|s| s.is_conditional_check_failed_exception()) =>
            {
                Err(PortError::Conflict)
            }
            Err(e) => Err(io_err("dynamodb put", e)),
        }
    }

    async fn put_many(&self, items: Vec<Item>) -> PortResult<()> {
        let requests = items
            .iter()
            .map(|item| {
                PutRequest::builder()
                    .set_item(Some(Self::to_attributes(item)))
                    .build()
                    .map(|put| WriteRequest::builder().put_request(put).build())
                    .map_err(|e| io_err("dynamodb put request", e))
            })
            .collect::<PortResult<Vec<_>>>()?;
        self.batch_write(requests).await
    }

    async fn delete(&self, pk: &str, sk: &str, precondition: Precondition) -> PortResult<()> {
        let mut request = self
            .client
            .delete_item()
            .table_name(&self.table)
            .set_key(Some(Self::key(pk, sk)));
        if let Some((expression, expected)) = condition_expression(precondition) {
            request = request.condition_expression(expression);
            if let Some(v) = expected {
                request = request
                    .expression_attribute_values(":expected", AttributeValue::N(v.to_string()));
            }
        }
        match request.send().await {
            Ok(_) => Ok(()),
            Err(e)
                if e.as_service_error()
                    .is_some_and(|s| s.is_conditional_check_failed_exception()) =>
            {
                Err(PortError::Conflict)
            }
            Err(e) => Err(io_err("dynamodb delete", e)),
        }
    }

    async fn delete_many(&self, keys: Vec<(String, String)>) -> PortResult<()> {
        let requests = keys
            .iter()
            .map(|(pk, sk)| {
                DeleteRequest::builder()
                    .set_key(Some(Self::key(pk, sk)))
                    .build()
                    .map(|delete| WriteRequest::builder().delete_request(delete).build())
                    .map_err(|e| io_err("dynamodb delete request", e))
            })
            .collect::<PortResult<Vec<_>>>()?;
        self.batch_write(requests).await
    }

    async fn query(
        &self,
        pk: &str,
        sk_prefix: &str,
        limit: Option<usize>,
        start: Option<String>,
        descending: bool,
    ) -> PortResult<ItemPage> {
        let mut items = Vec::new();
        let mut exclusive_start = start.map(|sk| Self::key(pk, &sk));
        loop {
            let remaining = limit.map(|l| l.saturating_sub(items.len()));
            let mut request = self
                .client
                .query()
                .table_name(&self.table)
                .expression_attribute_values(":pk", AttributeValue::S(pk.to_string()));
            // DynamoDB refuses an empty begins_with operand: no prefix means the whole partition.
            request = if sk_prefix.is_empty() {
                request.key_condition_expression("pk = :pk")
            } else {
                request
                    .key_condition_expression("pk = :pk AND begins_with(sk, :prefix)")
                    .expression_attribute_values(
                        ":prefix",
                        AttributeValue::S(sk_prefix.to_string()),
                    )
            };
            let out = request
                .set_limit(remaining.map(|r| r.min(1000) as i32))
                .set_exclusive_start_key(exclusive_start.take())
                .scan_index_forward(!descending)
                .consistent_read(true)
                .send()
                .await
                .map_err(|e| io_err("dynamodb query", e))?;
            for attributes in out.items() {
                items.push(Self::from_attributes(attributes)?);
            }
            let last = out.last_evaluated_key().cloned();
            let full = limit.is_some_and(|l| items.len() >= l);
            match last {
                Some(key) if full => {
                    let next = key.get("sk").and_then(|v| v.as_s().ok()).cloned();
                    return Ok(ItemPage { items, next });
                }
                Some(key) => exclusive_start = Some(key),
                None => return Ok(ItemPage { items, next: None }),
            }
        }
    }

    async fn add_counters(
        &self,
        pk: &str,
        sk: &str,
        deltas: &[(&str, i64)],
    ) -> PortResult<Vec<(String, i64)>> {
        let mut request = self
            .client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(Self::key(pk, sk)))
            .return_values(aws_sdk_dynamodb::types::ReturnValue::AllNew);
        let mut clauses = Vec::new();
        for (i, (name, delta)) in deltas.iter().enumerate() {
            clauses.push(format!("#c{i} :v{i}"));
            request = request
                .expression_attribute_names(format!("#c{i}"), *name)
                .expression_attribute_values(
                    format!(":v{i}"),
                    AttributeValue::N(delta.to_string()),
                );
        }
        let out = request
            .update_expression(format!("ADD {}", clauses.join(", ")))
            .send()
            .await
            .map_err(|e| io_err("dynamodb update", e))?;
        let attributes = out.attributes.unwrap_or_default();
        Ok(deltas
            .iter()
            .map(|(name, _)| {
                let value = attributes
                    .get(*name)
                    .and_then(|v| v.as_n().ok())
                    .and_then(|n| n.parse().ok())
                    .unwrap_or(0);
                (name.to_string(), value)
            })
            .collect())
    }
}

/// Objects in S3.
#[derive(Clone)]
pub struct S3Blobs {
    client: aws_sdk_s3::Client,
}

impl S3Blobs {
    pub fn new(client: aws_sdk_s3::Client) -> Self {
        Self { client }
    }
}

#[async_trait]
impl Blobs for S3Blobs {
    async fn get(&self, bucket: &str, key: &str) -> PortResult<Option<Vec<u8>>> {
        self.get_head(bucket, key, None).await
    }

    async fn get_head(
        &self,
        bucket: &str,
        key: &str,
        max_bytes: Option<usize>,
    ) -> PortResult<Option<Vec<u8>>> {
        let mut request = self.client.get_object().bucket(bucket).key(key);
        if let Some(max) = max_bytes {
            request = request.range(format!("bytes=0-{}", max.saturating_sub(1)));
        }
        match request.send().await {
            Ok(out) => {
                let bytes = out
                    .body
                    .collect()
                    .await
                    .map_err(|e| io_err("s3 read body", e))?;
                Ok(Some(bytes.into_bytes().to_vec()))
            }
            Err(e) if e.as_service_error().is_some_and(|s| s.is_no_such_key()) => Ok(None),
            Err(e) => {
                let code = e
                    .as_service_error()
                    .and_then(|s| aws_sdk_s3::error::ProvideErrorMetadata::code(s))
                    .unwrap_or("")
                    .to_string();
                if code == "NoSuchBucket" {
                    Err(PortError::NotFound(format!("bucket {bucket}")))
                } else if code == "AccessDenied" {
                    Err(PortError::Io(format!(
                        "access denied to s3://{bucket}/{key}"
                    )))
                } else {
                    Err(io_err("s3 get", e))
                }
            }
        }
    }

    async fn put(
        &self,
        bucket: &str,
        key: &str,
        body: Vec<u8>,
        content_type: &str,
    ) -> PortResult<()> {
        self.client
            .put_object()
            .bucket(bucket)
            .key(key)
            .content_type(content_type)
            .body(ByteStream::from(body))
            .send()
            .await
            .map_err(|e| io_err("s3 put", e))?;
        Ok(())
    }

    async fn list(&self, bucket: &str, prefix: &str) -> PortResult<Vec<String>> {
        let mut keys = Vec::new();
        let mut pages = self
            .client
            .list_objects_v2()
            .bucket(bucket)
            .prefix(prefix)
            .into_paginator()
            .send();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| io_err("s3 list", e))?;
            keys.extend(
                page.contents()
                    .iter()
                    .filter_map(|o| o.key().map(str::to_string)),
            );
        }
        Ok(keys)
    }

    async fn delete_prefix(&self, bucket: &str, prefix: &str) -> PortResult<usize> {
        let keys = self.list(bucket, prefix).await?;
        for chunk in keys.chunks(1000) {
            let objects = chunk
                .iter()
                .map(|k| {
                    aws_sdk_s3::types::ObjectIdentifier::builder()
                        .key(k)
                        .build()
                        .map_err(|e| io_err("s3 delete request", e))
                })
                .collect::<PortResult<Vec<_>>>()?;
            let delete = aws_sdk_s3::types::Delete::builder()
                .set_objects(Some(objects))
                .quiet(true)
                .build()
                .map_err(|e| io_err("s3 delete request", e))?;
            self.client
                .delete_objects()
                .bucket(bucket)
                .delete(delete)
                .send()
                .await
                .map_err(|e| io_err("s3 delete", e))?;
        }
        Ok(keys.len())
    }
}

/// Queues in SQS.
#[derive(Clone)]
pub struct SqsQueue {
    client: aws_sdk_sqs::Client,
}

impl SqsQueue {
    pub fn new(client: aws_sdk_sqs::Client) -> Self {
        Self { client }
    }
}

#[async_trait]
impl Queue for SqsQueue {
    async fn send(
        &self,
        queue_url: &str,
        body: String,
        delay_seconds: Option<i32>,
    ) -> PortResult<()> {
        self.client
            .send_message()
            .queue_url(queue_url)
            .message_body(body)
            .set_delay_seconds(delay_seconds)
            .send()
            .await
            .map_err(|e| io_err("sqs send", e))?;
        Ok(())
    }

    async fn send_many(&self, queue_url: &str, bodies: Vec<String>) -> PortResult<()> {
        for chunk in bodies.chunks(10) {
            let entries = chunk
                .iter()
                .enumerate()
                .map(|(i, body)| {
                    aws_sdk_sqs::types::SendMessageBatchRequestEntry::builder()
                        .id(i.to_string())
                        .message_body(body)
                        .build()
                        .map_err(|e| io_err("sqs batch entry", e))
                })
                .collect::<PortResult<Vec<_>>>()?;
            let out = self
                .client
                .send_message_batch()
                .queue_url(queue_url)
                .set_entries(Some(entries))
                .send()
                .await
                .map_err(|e| io_err("sqs send batch", e))?;
            if let Some(failed) = out.failed().first() {
                return Err(PortError::Io(format!(
                    "sqs refused a message: {}",
                    failed.message().unwrap_or(failed.code())
                )));
            }
        }
        Ok(())
    }
}

/// Mail through SES v2.
#[derive(Clone)]
pub struct SesMailer {
    client: aws_sdk_sesv2::Client,
}

impl SesMailer {
    pub fn new(client: aws_sdk_sesv2::Client) -> Self {
        Self { client }
    }
}

#[async_trait]
impl Mailer for SesMailer {
    async fn send(&self, email: &Email) -> PortResult<String> {
        use aws_sdk_sesv2::types::{Body, Content, Destination, EmailContent, Message};
        let content = |text: &str| {
            Content::builder()
                .data(text)
                .charset("UTF-8")
                .build()
                .map_err(|e| io_err("ses content", e))
        };
        let message = Message::builder()
            .subject(content(&email.subject)?)
            .body(
                Body::builder()
                    .text(content(&email.text)?)
                    .html(content(&email.html)?)
                    .build(),
            )
            .build();
        let out = self
            .client
            .send_email()
            .from_email_address(&email.from)
            .destination(Destination::builder().to_addresses(&email.to).build())
            .content(EmailContent::builder().simple(message).build())
            .send()
            .await
            .map_err(|e| io_err("ses send", e))?;
        Ok(out.message_id.unwrap_or_default())
    }
}

/// Reads a JSON secret (`{"client_secret": "...", ...}`) from Secrets Manager.
pub async fn read_json_secret(
    client: &aws_sdk_secretsmanager::Client,
    secret_id: &str,
) -> PortResult<HashMap<String, String>> {
    let out = client
        .get_secret_value()
        .secret_id(secret_id)
        .send()
        .await
        .map_err(|e| io_err("secrets manager", e))?;
    let text = out
        .secret_string()
        .ok_or_else(|| PortError::Io("the secret has no string value".into()))?;
    serde_json::from_str(text)
        .map_err(|e| PortError::Io(format!("the secret is not a JSON object of strings: {e}")))
}

// The local stack provisions resources with the same SDK versions.
pub use aws_sdk_dynamodb as dynamodb_sdk;
pub use aws_sdk_s3 as s3_sdk;
pub use aws_sdk_sesv2 as ses_sdk;
pub use aws_sdk_sqs as sqs_sdk;
