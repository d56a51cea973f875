//! Creates in moto the table, bucket and queues that template.yaml declares.

use std::collections::HashMap;

use shared::aws::AwsClients;
use shared::aws::dynamodb_sdk::types::{
    AttributeDefinition, BillingMode, KeySchemaElement, KeyType, ScalarAttributeType,
    TimeToLiveSpecification,
};
use shared::aws::sqs_sdk::types::QueueAttributeName;

use crate::template::StackSpec;

#[derive(Debug, Clone)]
pub struct Provisioned {
    pub table_name: String,
    pub bucket: String,
    /// Queue URL by logical id.
    pub queue_urls: HashMap<String, String>,
}

impl Provisioned {
    pub fn queue_url(&self, logical_id: &str) -> String {
        self.queue_urls.get(logical_id).cloned().unwrap_or_default()
    }
}

fn err<E: std::fmt::Display>(what: &str) -> impl FnOnce(E) -> String + '_ {
    move |e| format!("provisioning {what}: {e}")
}

/// Provisions everything under names starting with `prefix`; existing resources are reused.
pub async fn provision(
    clients: &AwsClients,
    spec: &StackSpec,
    prefix: &str,
    bucket: &str,
    sender_email: &str,
) -> Result<Provisioned, String> {
    let table_name = format!("{prefix}{}", spec.table.logical_id);
    let existing = clients
        .dynamodb
        .list_tables()
        .send()
        .await
        .map_err(err("table list"))?;
    if !existing.table_names().contains(&table_name) {
        let attribute = |name: &str| {
            AttributeDefinition::builder()
                .attribute_name(name)
                .attribute_type(ScalarAttributeType::S)
                .build()
        };
        let key = |name: &str, kind| {
            KeySchemaElement::builder()
                .attribute_name(name)
                .key_type(kind)
                .build()
        };
        clients
            .dynamodb
            .create_table()
            .table_name(&table_name)
            .billing_mode(BillingMode::PayPerRequest)
            .attribute_definitions(attribute(&spec.table.hash_key).map_err(err("table"))?)
            .attribute_definitions(attribute(&spec.table.range_key).map_err(err("table"))?)
            .key_schema(key(&spec.table.hash_key, KeyType::Hash).map_err(err("table"))?)
            .key_schema(key(&spec.table.range_key, KeyType::Range).map_err(err("table"))?)
            .send()
            .await
            .map_err(err("table"))?;
        if let Some(ttl) = &spec.table.ttl_attribute {
            clients
                .dynamodb
                .update_time_to_live()
                .table_name(&table_name)
                .time_to_live_specification(
                    TimeToLiveSpecification::builder()
                        .attribute_name(ttl)
                        .enabled(true)
                        .build()
                        .map_err(err("ttl"))?,
                )
                .send()
                .await
                .map_err(err("ttl"))?;
        }
    }

    if clients
        .s3
        .head_bucket()
        .bucket(bucket)
        .send()
        .await
        .is_err()
    {
        clients
            .s3
            .create_bucket()
            .bucket(bucket)
            .send()
            .await
            .map_err(err("bucket"))?;
    }

    // Dead-letter queues first: the others name them in their redrive policy.
    let mut queue_urls = HashMap::new();
    let mut queues = spec.queues.clone();
    queues.sort_by_key(|q| q.redrive.is_some());
    for queue in &queues {
        let name = format!("{prefix}{}", queue.logical_id);
        let mut request = clients.sqs.create_queue().queue_name(&name).attributes(
            QueueAttributeName::VisibilityTimeout,
            queue.visibility_timeout.to_string(),
        );
        if let Some((dlq, max_receive)) = &queue.redrive {
            let dlq_url = queue_urls
                .get(dlq)
                .cloned()
                .ok_or_else(|| format!("{dlq} is not a queue"))?;
            let attributes = clients
                .sqs
                .get_queue_attributes()
                .queue_url(&dlq_url)
                .attribute_names(QueueAttributeName::QueueArn)
                .send()
                .await
                .map_err(err("dead-letter queue"))?;
            let arn = attributes
                .attributes()
                .and_then(|a| a.get(&QueueAttributeName::QueueArn))
                .cloned()
                .unwrap_or_default();
            request = request.attributes(
                QueueAttributeName::RedrivePolicy,
                serde_json::json!({"deadLetterTargetArn": arn, "maxReceiveCount": max_receive})
                    .to_string(),
            );
        }
        let out = request.send().await.map_err(err("queue"))?;
        queue_urls.insert(
            queue.logical_id.clone(),
            out.queue_url().unwrap_or_default().to_string(),
        );
    }

    // SES only sends from verified identities, in moto as in AWS.
    let _ = clients
        .ses
        .create_email_identity()
        .email_identity(sender_email)
        .send()
        .await;

    Ok(Provisioned {
        table_name,
        bucket: bucket.to_string(),
        queue_urls,
    })
}
