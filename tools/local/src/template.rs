//! Reads template.yaml so the local stack provisions and wires exactly what the template declares.

use std::path::Path;

use serde_yaml::Value;

#[derive(Debug, Clone)]
pub struct QueueSpec {
    pub logical_id: String,
    pub visibility_timeout: i64,
    /// Logical id of the dead-letter queue and the receive count that sends a message there.
    pub redrive: Option<(String, i64)>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteSpec {
    pub method: String,
    pub path: String,
    pub public: bool,
}

#[derive(Debug, Clone)]
pub struct FunctionSpec {
    pub logical_id: String,
    /// The binary (cargo package) that serves the function.
    pub binary: String,
    pub routes: Vec<RouteSpec>,
    /// (queue logical id, batch size)
    pub queues: Vec<(String, i64)>,
    pub schedule: Option<String>,
}

#[derive(Debug, Clone)]
pub struct TableSpec {
    pub logical_id: String,
    pub hash_key: String,
    pub range_key: String,
    pub ttl_attribute: Option<String>,
}

#[derive(Debug, Clone)]
pub struct StackSpec {
    pub table: TableSpec,
    pub bucket_logical_id: String,
    pub queues: Vec<QueueSpec>,
    pub functions: Vec<FunctionSpec>,
}

fn tagged_target(v: &Value) -> Option<String> {
    match v {
        Value::Tagged(t) => match &t.value {
            Value::String(s) => Some(s.split('.').next().unwrap_or(s).to_string()),
            Value::Sequence(seq) => seq.first().and_then(|x| x.as_str()).map(str::to_string),
            _ => None,
        },
        _ => None,
    }
}

fn text(v: &Value, key: &str) -> Option<String> {
    match v.get(key)? {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        other => tagged_target(other),
    }
}

fn number(v: &Value, key: &str) -> Option<i64> {
    v.get(key).and_then(|x| x.as_i64())
}

pub fn load(path: &Path) -> Result<StackSpec, String> {
    let text_content =
        std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    parse(&text_content)
}

pub fn parse(template: &str) -> Result<StackSpec, String> {
    let root: Value = serde_yaml::from_str(template).map_err(|e| format!("template.yaml: {e}"))?;
    let resources = root
        .get("Resources")
        .and_then(|r| r.as_mapping())
        .ok_or("template.yaml has no Resources")?;
    let mut table = None;
    let mut bucket = None;
    let mut queues = Vec::new();
    let mut functions = Vec::new();
    for (id, resource) in resources {
        let id = id.as_str().unwrap_or_default().to_string();
        let kind = text(resource, "Type").unwrap_or_default();
        let props = resource.get("Properties").cloned().unwrap_or(Value::Null);
        match kind.as_str() {
            "AWS::DynamoDB::Table" => {
                let keys = props
                    .get("KeySchema")
                    .and_then(|k| k.as_sequence())
                    .cloned()
                    .unwrap_or_default();
                let key_of = |kind: &str| {
                    keys.iter()
                        .find(|k| text(k, "KeyType").as_deref() == Some(kind))
                        .and_then(|k| text(k, "AttributeName"))
                };
                table = Some(TableSpec {
                    logical_id: id,
                    hash_key: key_of("HASH").ok_or("table without HASH key")?,
                    range_key: key_of("RANGE").ok_or("table without RANGE key")?,
                    ttl_attribute: props
                        .get("TimeToLiveSpecification")
                        .and_then(|t| text(t, "AttributeName")),
                });
            }
            "AWS::S3::Bucket" => bucket = Some(id),
            "AWS::SQS::Queue" => {
                let redrive = props.get("RedrivePolicy").and_then(|r| {
                    Some((
                        text(r, "deadLetterTargetArn")?,
                        number(r, "maxReceiveCount")?,
                    ))
                });
                queues.push(QueueSpec {
                    logical_id: id,
                    visibility_timeout: number(&props, "VisibilityTimeout").unwrap_or(30),
                    redrive,
                });
            }
            "AWS::Serverless::Function" => {
                let binary = resource
                    .get("Metadata")
                    .and_then(|m| m.get("BuildProperties"))
                    .and_then(|b| text(b, "Binary"))
                    .ok_or_else(|| format!("{id} names no Metadata.BuildProperties.Binary"))?;
                let mut function = FunctionSpec {
                    logical_id: id,
                    binary,
                    routes: vec![],
                    queues: vec![],
                    schedule: None,
                };
                if let Some(events) = props.get("Events").and_then(|e| e.as_mapping()) {
                    for event in events.values() {
                        let p = event.get("Properties").cloned().unwrap_or(Value::Null);
                        match text(event, "Type").as_deref() {
                            Some("HttpApi") => function.routes.push(RouteSpec {
                                method: text(&p, "Method").unwrap_or_default().to_uppercase(),
                                path: text(&p, "Path").unwrap_or_default(),
                                public: p
                                    .get("Auth")
                                    .and_then(|a| text(a, "Authorizer"))
                                    .is_some_and(|a| a == "NONE"),
                            }),
                            Some("SQS") => function.queues.push((
                                text(&p, "Queue").unwrap_or_default(),
                                number(&p, "BatchSize").unwrap_or(10),
                            )),
                            Some("Schedule" | "ScheduleV2") => {
                                function.schedule = text(&p, "ScheduleExpression");
                            }
                            _ => {}
                        }
                    }
                }
                functions.push(function);
            }
            _ => {}
        }
    }
    Ok(StackSpec {
        table: table.ok_or("template.yaml declares no DynamoDB table")?,
        bucket_logical_id: bucket.ok_or("template.yaml declares no bucket")?,
        queues,
        functions,
    })
}

impl StackSpec {
    /// The function and route serving `method path`, with `{param}` segments matching anything.
    pub fn route(&self, method: &str, path: &str) -> Option<(&FunctionSpec, &RouteSpec)> {
        let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
        self.functions.iter().find_map(|f| {
            f.routes
                .iter()
                .find(|r| {
                    let pattern: Vec<&str> = r.path.split('/').filter(|s| !s.is_empty()).collect();
                    r.method.eq_ignore_ascii_case(method)
                        && pattern.len() == segments.len()
                        && pattern
                            .iter()
                            .zip(&segments)
                            .all(|(p, s)| (p.starts_with('{') && p.ends_with('}')) || p == s)
                })
                .map(|r| (f, r))
        })
    }

    pub fn function_for_queue(&self, queue: &str) -> Option<&FunctionSpec> {
        self.functions
            .iter()
            .find(|f| f.queues.iter().any(|(q, _)| q == queue))
    }
}
