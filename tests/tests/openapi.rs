//! openapi.yaml is the API's contract: these tests check that it names exactly the routes
//! template.yaml serves, that its examples are valid, and that the real answers of the handlers
//! (a whole story on the local stack: create, edit, consent, run, results, and every kind of
//! error) validate against the schemas it gives for their status and content type.
//!
//! The schemas are checked by the small JSON Schema validator below, which knows the subset of
//! JSON Schema 2020-12 the spec uses and refuses any keyword it does not know, so nothing in the
//! spec goes unchecked by accident. Against real answers it is stricter than JSON Schema: an
//! object schema with `type: object` and `properties` but no `additionalProperties` is closed, so
//! a field a handler sends and the spec does not document fails the test.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;

use chrono::{DateTime, Utc};
use integration_tests::*;
use serde_json::{Value, json};

// ---------------------------------------------------------------------------------------------
// The spec

fn spec() -> Value {
    let path = local_stack::stack::repo_root().join("openapi.yaml");
    let text = std::fs::read_to_string(&path).expect("openapi.yaml is readable");
    // Parsed as YAML first: that refuses duplicate keys, which a JSON map would silently merge.
    serde_yaml::from_str::<serde_yaml::Value>(&text).expect("openapi.yaml is valid YAML");
    serde_yaml::from_str(&text).expect("openapi.yaml parses")
}

const METHODS: [&str; 7] = ["get", "put", "post", "delete", "patch", "head", "options"];

/// The target of a local `$ref` (`#/components/...`).
fn resolve<'a>(doc: &'a Value, reference: &str) -> &'a Value {
    let pointer = reference
        .strip_prefix('#')
        .unwrap_or_else(|| panic!("only local $refs are used: {reference}"));
    doc.pointer(pointer)
        .unwrap_or_else(|| panic!("$ref {reference} points at nothing"))
}

/// Follows `$ref`s of non-schema objects (responses, parameters, request bodies, examples).
fn deref<'a>(doc: &'a Value, mut node: &'a Value) -> &'a Value {
    while let Some(r) = node.get("$ref").and_then(Value::as_str) {
        node = resolve(doc, r);
    }
    node
}

fn operations(doc: &Value) -> BTreeSet<(String, String)> {
    let mut ops = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for method in METHODS {
            if item.get(method).is_some() {
                ops.insert((method.to_uppercase(), path.clone()));
            }
        }
    }
    ops
}

// ---------------------------------------------------------------------------------------------
// A JSON Schema validator for the subset the spec uses

/// Words that only annotate a schema.
const ANNOTATIONS: [&str; 9] = [
    "description",
    "title",
    "summary",
    "example",
    "examples",
    "default",
    "deprecated",
    "readOnly",
    "writeOnly",
];

struct Validator<'a> {
    doc: &'a Value,
    /// Treat object schemas without `additionalProperties` as closed (for real answers).
    closed: bool,
}

fn number_eq(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x.as_f64() == y.as_f64(),
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(a, b)| number_eq(a, b))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len()
                && x.iter()
                    .all(|(k, v)| y.get(k).is_some_and(|w| number_eq(v, w)))
        }
        _ => a == b,
    }
}

fn type_matches(name: &str, value: &Value) -> bool {
    match name {
        "null" => value.is_null(),
        "boolean" => value.is_boolean(),
        "string" => value.is_string(),
        "array" => value.is_array(),
        "object" => value.is_object(),
        "number" => value.is_number(),
        "integer" => {
            value.is_i64() || value.is_u64() || value.as_f64().is_some_and(|f| f.fract() == 0.0)
        }
        other => panic!("unknown type {other}"),
    }
}

fn format_ok(format: &str, s: &str) -> bool {
    match format {
        "date" => chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d").is_ok() && s.len() == 10,
        "date-time" => DateTime::parse_from_rfc3339(s).is_ok(),
        "email" => shared::config::is_email_address(s),
        "uuid" => shared::config::is_guid(s),
        other => panic!("the validator does not know format {other}; teach it"),
    }
}

/// The `pattern`s of the spec, each checked by the code that means the same (no regex crate).
fn pattern_ok(pattern: &str, s: &str) -> bool {
    match pattern {
        "^s3://[a-z0-9.-]{3,63}/.+$" => shared::config::parse_s3_uri(s).is_some(),
        "^([01][0-9]|2[0-3]):[0-5][0-9]$" => {
            s.len() == 5 && chrono::NaiveTime::parse_from_str(s, "%H:%M").is_ok()
        }
        r"^@[^@\s]+\.[^@\s]+$" => s.strip_prefix('@').is_some_and(|d| {
            !d.contains('@')
                && !d.chars().any(char::is_whitespace)
                && d.split_once('.')
                    .is_some_and(|(a, b)| !a.is_empty() && !b.is_empty())
        }),
        "^(user|group:.+)$" => {
            s == "user" || s.strip_prefix("group:").is_some_and(|g| !g.is_empty())
        }
        other => panic!("the validator does not know pattern {other}; teach it"),
    }
}

impl Validator<'_> {
    fn check(&self, schema: &Value, value: &Value) -> Vec<String> {
        let mut errors = Vec::new();
        self.validate(schema, value, "$", &mut errors);
        errors
    }

    fn validate(&self, schema: &Value, value: &Value, at: &str, errors: &mut Vec<String>) {
        let schema = match schema {
            Value::Bool(true) => return,
            Value::Bool(false) => {
                errors.push(format!("{at}: nothing is allowed here"));
                return;
            }
            Value::Object(map) => map,
            other => panic!("{at}: not a schema: {other}"),
        };
        let mut fail = |message: String| errors.push(format!("{at}: {message}"));
        let mut nested: Vec<String> = Vec::new();
        for (keyword, arg) in schema {
            match keyword.as_str() {
                k if ANNOTATIONS.contains(&k) => {}
                "$ref" => {
                    let target = resolve(self.doc, arg.as_str().expect("$ref is a string"));
                    self.validate(target, value, at, &mut nested);
                }
                "type" => {
                    let names: Vec<&str> = match arg {
                        Value::String(s) => vec![s.as_str()],
                        Value::Array(a) => a.iter().filter_map(Value::as_str).collect(),
                        other => panic!("bad type {other}"),
                    };
                    if !names.iter().any(|n| type_matches(n, value)) {
                        fail(format!("{value} is not of type {names:?}"));
                    }
                }
                "enum" => {
                    let options = arg.as_array().expect("enum is an array");
                    if !options.iter().any(|o| number_eq(o, value)) {
                        fail(format!("{value} is not one of {arg}"));
                    }
                }
                "const" => {
                    if !number_eq(arg, value) {
                        fail(format!("{value} is not {arg}"));
                    }
                }
                "format" => {
                    if let Some(s) = value.as_str()
                        && !format_ok(arg.as_str().expect("format"), s)
                    {
                        fail(format!("'{s}' is not a {arg}"));
                    }
                }
                "pattern" => {
                    if let Some(s) = value.as_str()
                        && !pattern_ok(arg.as_str().expect("pattern"), s)
                    {
                        fail(format!("'{s}' does not match {arg}"));
                    }
                }
                "minLength" | "maxLength" => {
                    if let Some(s) = value.as_str() {
                        let n = s.chars().count() as u64;
                        let limit = arg.as_u64().expect("length");
                        if (keyword == "minLength" && n < limit)
                            || (keyword == "maxLength" && n > limit)
                        {
                            fail(format!("length {n} breaks {keyword} {limit}"));
                        }
                    }
                }
                "minimum" | "maximum" | "exclusiveMinimum" | "exclusiveMaximum" => {
                    if let Some(n) = value.as_f64() {
                        let limit = arg.as_f64().expect("limit");
                        let ok = match keyword.as_str() {
                            "minimum" => n >= limit,
                            "maximum" => n <= limit,
                            "exclusiveMinimum" => n > limit,
                            _ => n < limit,
                        };
                        if !ok {
                            fail(format!("{n} breaks {keyword} {limit}"));
                        }
                    }
                }
                "minItems" | "maxItems" => {
                    if let Some(a) = value.as_array() {
                        let limit = arg.as_u64().expect("items limit") as usize;
                        if (keyword == "minItems" && a.len() < limit)
                            || (keyword == "maxItems" && a.len() > limit)
                        {
                            fail(format!("{} items break {keyword} {limit}", a.len()));
                        }
                    }
                }
                "uniqueItems" => {
                    if let Some(a) = value.as_array()
                        && arg.as_bool() == Some(true)
                    {
                        for (i, x) in a.iter().enumerate() {
                            if a[..i].iter().any(|y| number_eq(x, y)) {
                                fail(format!("item {i} is repeated"));
                            }
                        }
                    }
                }
                "items" => {
                    if let Some(a) = value.as_array() {
                        for (i, item) in a.iter().enumerate() {
                            self.validate(arg, item, &format!("{at}[{i}]"), &mut nested);
                        }
                    }
                }
                "required" => {
                    if let Some(o) = value.as_object() {
                        for name in arg.as_array().expect("required is an array") {
                            let name = name.as_str().expect("required name");
                            if !o.contains_key(name) {
                                fail(format!("the required property {name} is missing"));
                            }
                        }
                    }
                }
                "properties" => {
                    if let Some(o) = value.as_object() {
                        for (name, sub) in arg.as_object().expect("properties is an object") {
                            if let Some(v) = o.get(name) {
                                self.validate(sub, v, &format!("{at}.{name}"), &mut nested);
                            }
                        }
                    }
                }
                "additionalProperties" => {
                    if let Some(o) = value.as_object() {
                        let known = schema.get("properties").and_then(Value::as_object);
                        for (name, v) in o {
                            if known.is_none_or(|k| !k.contains_key(name)) {
                                self.validate(arg, v, &format!("{at}.{name}"), &mut nested);
                            }
                        }
                    }
                }
                "anyOf" | "oneOf" => {
                    let branches = arg.as_array().expect("anyOf/oneOf is an array");
                    let passing: Vec<Vec<String>> =
                        branches.iter().map(|b| self.sub(b, value, at)).collect();
                    let ok = passing.iter().filter(|e| e.is_empty()).count();
                    if ok == 0 || (keyword == "oneOf" && ok > 1) {
                        fail(format!("{ok} of the {keyword} branches match: {passing:?}"));
                    }
                }
                "allOf" => {
                    for branch in arg.as_array().expect("allOf is an array") {
                        self.validate(branch, value, at, &mut nested);
                    }
                }
                "not" => {
                    if self.sub(arg, value, at).is_empty() {
                        fail("matches the schema it must not".into());
                    }
                }
                other => panic!("the validator does not know the keyword {other}; teach it"),
            }
        }
        errors.append(&mut nested);
        // Closed objects: every field of a real answer must be documented.
        if self.closed
            && schema.get("type").and_then(Value::as_str) == Some("object")
            && !schema.contains_key("additionalProperties")
            && let (Some(known), Some(o)) = (
                schema.get("properties").and_then(Value::as_object),
                value.as_object(),
            )
        {
            for name in o.keys() {
                if !known.contains_key(name) {
                    errors.push(format!("{at}: the property {name} is not documented"));
                }
            }
        }
    }

    fn sub(&self, schema: &Value, value: &Value, at: &str) -> Vec<String> {
        let mut errors = Vec::new();
        self.validate(schema, value, at, &mut errors);
        errors
    }
}

#[test]
fn the_validator_catches_what_it_should() {
    assert!(
        serde_yaml::from_str::<serde_yaml::Value>("a: 1\na: 2\n").is_err(),
        "duplicate keys are refused"
    );
    let doc = spec();
    let v = Validator {
        doc: &doc,
        closed: true,
    };
    let run = resolve(&doc, "#/components/examples/SuccessfulRun/value").clone();
    let run_schema = json!({"$ref": "#/components/schemas/Run"});
    assert_eq!(v.check(&run_schema, &run), Vec::<String>::new());
    let mut broken = run.clone();
    broken["status"] = json!("done");
    broken["tasks"]["download"]["progress"]["mailboxes_done"] = json!(-1);
    broken["undocumented"] = json!(1);
    broken.as_object_mut().map(|o| o.remove("as_of"));
    let errors = v.check(&run_schema, &broken);
    assert_eq!(errors.len(), 4, "{errors:#?}");
    let request = json!({"$ref": "#/components/schemas/EnrichmentRequest"});
    let body = create_body("s3://bucket/contacts.csv");
    assert_eq!(v.check(&request, &body), Vec::<String>::new());
    for (pointer, bad) in [
        ("/consent_agreed", json!(false)),
        ("/schedule/times/0", json!("2:00")),
        ("/schedule/days/0", json!("monday")),
        ("/score/weights/email", json!(1.5)),
        ("/customer_data/uri", json!("https://bucket/contacts.csv")),
        ("/exclusions/0", json!("@gmail")),
        ("/name", json!("")),
    ] {
        let mut b = body.clone();
        *b.pointer_mut(pointer).expect("field") = bad;
        assert!(
            !v.check(&request, &b).is_empty(),
            "{pointer} must be refused"
        );
    }
    let mut daily = body.clone();
    daily["schedule"] = json!({"frequency": "daily", "days": ["mon"], "times": ["02:00"]});
    assert!(
        !v.check(&request, &daily).is_empty(),
        "a daily schedule names no days"
    );
    daily["schedule"] = json!({"frequency": "daily", "times": ["02:00", "14:30"]});
    assert_eq!(v.check(&request, &daily), Vec::<String>::new());
}

// ---------------------------------------------------------------------------------------------
// 1. Routes

#[test]
fn the_spec_and_template_yaml_serve_the_same_routes() {
    let doc = spec();
    let template =
        local_stack::template::load(&local_stack::stack::repo_root().join("template.yaml"))
            .expect("template.yaml loads");
    let mut served = BTreeMap::new();
    for function in &template.functions {
        for route in &function.routes {
            served.insert(
                (route.method.to_uppercase(), route.path.clone()),
                route.public,
            );
        }
    }
    let documented = operations(&doc);
    let served_set: BTreeSet<_> = served.keys().cloned().collect();
    let undocumented: Vec<_> = served_set.difference(&documented).collect();
    let unserved: Vec<_> = documented.difference(&served_set).collect();
    assert!(
        undocumented.is_empty(),
        "routes of template.yaml missing from openapi.yaml: {undocumented:?}"
    );
    assert!(
        unserved.is_empty(),
        "routes of openapi.yaml that template.yaml does not serve: {unserved:?}"
    );
    assert!(!served.is_empty());

    // Public routes (no authorizer) are exactly the ones the spec marks `security: []`; every
    // other operation names the roles it needs and documents 401 and 403.
    for ((method, path), public) in &served {
        let op = &doc["paths"][path][method.to_lowercase()];
        let security = op.get("security").unwrap_or(&doc["security"]);
        assert_eq!(
            security.as_array().is_some_and(Vec::is_empty),
            *public,
            "{method} {path}: security {security} vs public {public}"
        );
        if !public {
            let roles: BTreeSet<&str> = security
                .as_array()
                .expect("security list")
                .iter()
                .flat_map(|r| r["bearerAuth"].as_array().expect("bearerAuth roles"))
                .filter_map(Value::as_str)
                .collect();
            let expected: BTreeSet<&str> = if method == "GET" {
                ["Enrichment.Admin", "Enrichment.Read"].into()
            } else {
                ["Enrichment.Admin"].into()
            };
            assert_eq!(roles, expected, "{method} {path}");
            for status in ["401", "403"] {
                assert!(
                    op["responses"].get(status).is_some(),
                    "{method} {path} documents no {status}"
                );
            }
        }
        // Every path parameter of the template is declared.
        let declared: BTreeSet<String> = doc["paths"][path]
            .get("parameters")
            .into_iter()
            .chain(op.get("parameters"))
            .flat_map(|p| p.as_array().cloned().unwrap_or_default())
            .map(|p| deref(&doc, &p).clone())
            .filter(|p| p["in"] == "path")
            .filter_map(|p| p["name"].as_str().map(str::to_string))
            .collect();
        let in_path: BTreeSet<String> = path
            .split('/')
            .filter_map(|s| s.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
            .map(str::to_string)
            .collect();
        assert_eq!(declared, in_path, "{method} {path}");
    }
}

// ---------------------------------------------------------------------------------------------
// 2. Examples

struct ExampleWalk<'a> {
    doc: &'a Value,
    validator: Validator<'a>,
    checked: usize,
    used: BTreeSet<String>,
    errors: Vec<String>,
}

impl ExampleWalk<'_> {
    fn example(&mut self, schema: &Value, example: &Value, at: &str) {
        self.checked += 1;
        for e in self.validator.check(schema, example) {
            self.errors.push(format!("{at}: {e}"));
        }
    }

    /// A media type, parameter or header: `example` or `examples` against its `schema`.
    fn with_schema(&mut self, node: &Value, at: &str) {
        let schema = &node["schema"];
        if let Some(example) = node.get("example") {
            self.example(schema, example, &format!("{at}/example"));
        }
        if let Some(examples) = node.get("examples").and_then(Value::as_object) {
            for (name, example) in examples {
                if let Some(r) = example.get("$ref").and_then(Value::as_str) {
                    self.used.insert(r.to_string());
                }
                let example = deref(self.doc, example);
                let value = example
                    .get("value")
                    .unwrap_or_else(|| panic!("{at}/examples/{name} has no value"));
                self.example(schema, value, &format!("{at}/examples/{name}"));
            }
        }
    }

    fn schema(&mut self, schema: &Value, at: &str) {
        let Some(map) = schema.as_object() else {
            return;
        };
        if let Some(example) = map.get("example") {
            self.example(schema, example, &format!("{at}/example"));
        }
        if let Some(examples) = map.get("examples").and_then(Value::as_array) {
            for (i, example) in examples.iter().enumerate() {
                self.example(schema, example, &format!("{at}/examples/{i}"));
            }
        }
        for (key, sub) in map {
            match key.as_str() {
                "properties" => {
                    for (name, s) in sub.as_object().into_iter().flatten() {
                        self.schema(s, &format!("{at}/properties/{name}"));
                    }
                }
                "items" | "additionalProperties" | "not" => {
                    self.schema(sub, &format!("{at}/{key}"))
                }
                "anyOf" | "oneOf" | "allOf" => {
                    for (i, s) in sub.as_array().into_iter().flatten().enumerate() {
                        self.schema(s, &format!("{at}/{key}/{i}"));
                    }
                }
                _ => {}
            }
        }
    }

    fn walk(&mut self, node: &Value, at: &str) {
        match node {
            Value::Object(map) => {
                let has_schema = map.contains_key("schema");
                if has_schema {
                    self.with_schema(node, at);
                } else {
                    assert!(
                        !map.contains_key("example"),
                        "{at} has an example but no schema"
                    );
                }
                for (key, child) in map {
                    let here = format!("{at}/{key}");
                    match key.as_str() {
                        "schema" => self.schema(child, &here),
                        "example" | "examples" if has_schema => {}
                        // Named examples are checked where they are used.
                        "examples" if at == "/components" => {}
                        "schemas" if at == "/components" => {
                            for (name, s) in child.as_object().expect("schemas") {
                                self.schema(s, &format!("{here}/{name}"));
                            }
                        }
                        _ => self.walk(child, &here),
                    }
                }
            }
            Value::Array(items) => {
                for (i, child) in items.iter().enumerate() {
                    self.walk(child, &format!("{at}/{i}"));
                }
            }
            _ => {}
        }
    }
}

#[test]
fn every_example_validates_against_its_schema() {
    let doc = spec();
    let mut walk = ExampleWalk {
        doc: &doc,
        validator: Validator {
            doc: &doc,
            closed: true,
        },
        checked: 0,
        used: BTreeSet::new(),
        errors: Vec::new(),
    };
    walk.walk(&doc, "");
    assert!(walk.errors.is_empty(), "{:#?}", walk.errors);
    assert!(walk.checked >= 50, "only {} examples checked", walk.checked);
    let named: BTreeSet<String> = doc["components"]["examples"]
        .as_object()
        .expect("named examples")
        .keys()
        .map(|k| format!("#/components/examples/{k}"))
        .collect();
    let unused: Vec<_> = named.difference(&walk.used).collect();
    assert!(
        unused.is_empty(),
        "examples never used (so never checked): {unused:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// 3. Real answers

struct Contract {
    doc: Value,
    /// (method, path template, status) of every checked answer.
    seen: Mutex<BTreeSet<(String, String, u16)>>,
}

struct Answer {
    status: u16,
    headers: reqwest::header::HeaderMap,
    body: Value,
}

impl Contract {
    fn operation(&self, method: &str, template: &str) -> &Value {
        let op = &self.doc["paths"][template][method.to_lowercase()];
        assert!(op.is_object(), "{method} {template} is not in openapi.yaml");
        op
    }

    fn parameters(&self, method: &str, template: &str) -> Vec<Value> {
        let op = self.operation(method, template);
        self.doc["paths"][template]
            .get("parameters")
            .into_iter()
            .chain(op.get("parameters"))
            .flat_map(|p| p.as_array().cloned().unwrap_or_default())
            .map(|p| deref(&self.doc, &p).clone())
            .collect()
    }

    /// Calls the API and checks the answer against the spec: its status is documented for the
    /// operation, its content type is one the spec gives for that status, and its body validates
    /// against that schema. Query parameters must be declared; a request body that succeeded
    /// must validate against the request schema.
    #[allow(clippy::too_many_arguments)]
    async fn call(
        &self,
        t: &TestStack,
        method: &str,
        template: &str,
        path: &str,
        token: Option<&str>,
        body: Option<String>,
        headers: &[(&str, &str)],
    ) -> Answer {
        let op = self.operation(method, template);
        let validator = Validator {
            doc: &self.doc,
            closed: true,
        };
        let parameters = self.parameters(method, template);
        let mut query_values = Vec::new();
        if let Some((_, query)) = path.split_once('?') {
            for (name, value) in url::form_urlencoded::parse(query.as_bytes()) {
                let p = parameters
                    .iter()
                    .find(|p| p["in"] == "query" && p["name"] == name.as_ref())
                    .unwrap_or_else(|| {
                        panic!("{method} {template} declares no query parameter {name}")
                    });
                let typed = match p["schema"]["type"].as_str() {
                    Some("integer") => value
                        .parse::<i64>()
                        .map(Value::from)
                        .unwrap_or_else(|_| Value::from(value.as_ref())),
                    _ => Value::from(value.as_ref()),
                };
                query_values.push((name.into_owned(), p["schema"].clone(), typed));
            }
        }
        for (name, _) in headers {
            assert!(
                parameters.iter().any(|p| p["in"] == "header"
                    && p["name"]
                        .as_str()
                        .is_some_and(|n| n.eq_ignore_ascii_case(name))),
                "{method} {template} declares no header {name}"
            );
        }

        let mut request = t.http.request(
            reqwest::Method::from_bytes(method.as_bytes()).expect("method"),
            t.url(path),
        );
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body.clone() {
            request = request
                .header("content-type", "application/json")
                .body(body);
        }
        for (k, v) in headers {
            request = request.header(*k, *v);
        }
        let response = request.send().await.expect("the API answers");
        let status = response.status().as_u16();
        let response_headers = response.headers().clone();
        let text = response.text().await.unwrap_or_default();
        let what = format!("{method} {path} answered {status}");

        let documented = &op["responses"][status.to_string()];
        assert!(
            documented.is_object(),
            "{what}, which openapi.yaml does not document for {method} {template}: {text}"
        );
        let documented = deref(&self.doc, documented);
        let content_type = response_headers
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(|v| v.split(';').next().unwrap_or_default().trim().to_string());
        let parsed = match documented.get("content").and_then(Value::as_object) {
            None => {
                assert!(
                    text.is_empty(),
                    "{what} with a body the spec does not give: {text}"
                );
                Value::Null
            }
            Some(content) => {
                let content_type =
                    content_type.unwrap_or_else(|| panic!("{what} without a content type"));
                let media = content.get(&content_type).unwrap_or_else(|| {
                    panic!(
                        "{what} as {content_type}; the spec gives {:?}",
                        content.keys().collect::<Vec<_>>()
                    )
                });
                let value = if content_type.ends_with("json") {
                    serde_json::from_str(&text).unwrap_or_else(|e| {
                        panic!("{what} with a body that is not JSON ({e}): {text}")
                    })
                } else {
                    Value::String(text.clone())
                };
                let errors = validator.check(&media["schema"], &value);
                assert!(
                    errors.is_empty(),
                    "{what} with a body that does not match the spec:\n{errors:#?}\n{value:#}"
                );
                value
            }
        };
        // Documented response headers are sent on success.
        if let Some(h) = documented.get("headers").and_then(Value::as_object) {
            for name in h.keys() {
                assert!(
                    response_headers.contains_key(name.as_str()),
                    "{what} without the documented header {name}"
                );
            }
        }
        if (200..300).contains(&status)
            && let Some(body) = &body
        {
            let schema =
                &deref(&self.doc, &op["requestBody"])["content"]["application/json"]["schema"];
            let sent: Value = serde_json::from_str(body).expect("a JSON request body");
            let errors = validator.check(schema, &sent);
            assert!(
                errors.is_empty(),
                "{what} for a body the spec would refuse: {errors:#?}"
            );
        }
        // A query that succeeded is one the spec allows.
        if (200..300).contains(&status) {
            for (name, schema, value) in &query_values {
                let errors = validator.check(schema, value);
                assert!(
                    errors.is_empty(),
                    "{what} for ?{name}={value}, which the spec refuses: {errors:#?}"
                );
            }
        }
        self.seen
            .lock()
            .expect("seen")
            .insert((method.to_string(), template.to_string(), status));
        Answer {
            status,
            headers: response_headers,
            body: parsed,
        }
    }

    async fn json(
        &self,
        t: &TestStack,
        method: &str,
        template: &str,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> Answer {
        self.call(
            t,
            method,
            template,
            path,
            token,
            body.map(|b| b.to_string()),
            &[],
        )
        .await
    }
}

fn expect(answer: &Answer, status: u16) -> &Value {
    assert_eq!(answer.status, status, "{:#}", answer.body);
    &answer.body
}

/// The consent link of the newest email to the tenant admin that mentions `marker`.
async fn consent_link(t: &TestStack, marker: &str) -> String {
    let email = t
        .eventually(30, "the consent email", || async {
            t.emails_to("it.admin@contoso.com", marker)
                .await
                .into_iter()
                .last()
        })
        .await;
    link_in(&email)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_answers_match_the_spec() {
    let as_of: DateTime<Utc> = "2026-11-30T12:00:00Z".parse().expect("instant");
    let t = start_at(as_of).await;
    let api = Contract {
        doc: spec(),
        seen: Mutex::new(BTreeSet::new()),
    };
    let admin = Some(t.admin.as_str());
    let reader = Some(t.reader.as_str());
    let no_role = local_stack::token::issue("none", 1).expect("token");
    let uri = t.upload_csv("contacts.csv", CONTACTS_CSV).await;
    let name = unique("OpenAPI ");
    let mut body = create_body(&uri);
    body["name"] = json!(name);
    body["consent_recipients"] = json!(["crm.owner@contoso.com"]);

    // Who may call.
    expect(
        &api.json(&t, "GET", "/enrichments", "/enrichments", None, None)
            .await,
        401,
    );
    expect(
        &api.json(
            &t,
            "POST",
            "/enrichments",
            "/enrichments",
            Some("not-a-token"),
            Some(body.clone()),
        )
        .await,
        401,
    );
    expect(
        &api.json(
            &t,
            "POST",
            "/enrichments",
            "/enrichments",
            reader,
            Some(body.clone()),
        )
        .await,
        403,
    );
    expect(
        &api.json(
            &t,
            "GET",
            "/enrichments",
            "/enrichments",
            Some(&no_role),
            None,
        )
        .await,
        403,
    );

    // Bad bodies.
    let bad_json = api
        .call(
            &t,
            "POST",
            "/enrichments",
            "/enrichments",
            admin,
            Some("{\"name\":".into()),
            &[],
        )
        .await;
    expect(&bad_json, 400);
    let huge = format!("{{\"name\": \"{}\"}}", "x".repeat(1_100_000));
    expect(
        &api.call(
            &t,
            "POST",
            "/enrichments",
            "/enrichments",
            admin,
            Some(huge),
            &[],
        )
        .await,
        413,
    );
    let mut refused = body.clone();
    refused["consent_agreed"] = json!(false);
    refused["schedule"]["times"] = json!(["25:00"]);
    let problem = expect(
        &api.json(
            &t,
            "POST",
            "/enrichments",
            "/enrichments",
            admin,
            Some(refused),
        )
        .await,
        422,
    )
    .clone();
    assert!(
        problem["errors"].as_array().is_some_and(|e| e.len() == 2),
        "{problem}"
    );
    let mut unknown = body.clone();
    unknown["colour"] = json!("blue");
    expect(
        &api.json(
            &t,
            "POST",
            "/enrichments",
            "/enrichments",
            admin,
            Some(unknown),
        )
        .await,
        422,
    );
    let mut too_few = body.clone();
    too_few["mailboxes"] = json!({"users": ["alice@contoso.com"]});
    expect(
        &api.json(
            &t,
            "POST",
            "/enrichments",
            "/enrichments",
            admin,
            Some(too_few),
        )
        .await,
        422,
    );

    // Create, read, list, edit.
    let created = api
        .json(
            &t,
            "POST",
            "/enrichments",
            "/enrichments",
            admin,
            Some(body.clone()),
        )
        .await;
    let enrichment = expect(&created, 201).clone();
    let id = enrichment["id"].as_str().expect("id").to_string();
    assert_eq!(enrichment["status"], "pending_consent");
    assert_eq!(enrichment["mailbox_count"], 4);
    let one = format!("/enrichments/{id}");
    let missing = format!("/enrichments/{}", uuid::Uuid::new_v4());
    expect(
        &api.json(&t, "GET", "/enrichments/{id}", &one, reader, None)
            .await,
        200,
    );
    expect(
        &api.json(&t, "GET", "/enrichments/{id}", &missing, admin, None)
            .await,
        404,
    );
    expect(
        &api.json(
            &t,
            "GET",
            "/enrichments",
            "/enrichments?limit=500",
            reader,
            None,
        )
        .await,
        200,
    );
    let page = api
        .json(
            &t,
            "GET",
            "/enrichments",
            "/enrichments?limit=1",
            admin,
            None,
        )
        .await;
    if let Some(cursor) = expect(&page, 200)["next_cursor"].as_str() {
        let next = format!("/enrichments?limit=1&cursor={}", urlencode(cursor));
        expect(
            &api.json(&t, "GET", "/enrichments", &next, admin, None)
                .await,
            200,
        );
    }
    expect(
        &api.json(
            &t,
            "GET",
            "/enrichments",
            "/enrichments?limit=0",
            admin,
            None,
        )
        .await,
        422,
    );
    expect(
        &api.json(
            &t,
            "GET",
            "/enrichments/{id}/users",
            &format!("{one}/users"),
            reader,
            None,
        )
        .await,
        200,
    );
    expect(
        &api.json(
            &t,
            "GET",
            "/enrichments/{id}/users",
            &format!("{missing}/users"),
            admin,
            None,
        )
        .await,
        404,
    );

    let mut edit = body.clone();
    edit["name"] = json!(format!("{name} (edited)"));
    edit["exclusions"] = json!(["@gmail.com", "ceo@fabrikam.com"]);
    edit["schedule"] =
        json!({"frequency": "daily", "times": ["06:00", "18:30"], "time_zone": "America/New_York"});
    let edit_text = Some(edit.to_string());
    expect(
        &api.call(
            &t,
            "PUT",
            "/enrichments/{id}",
            &one,
            admin,
            edit_text.clone(),
            &[],
        )
        .await,
        428,
    );
    expect(
        &api.call(
            &t,
            "PUT",
            "/enrichments/{id}",
            &one,
            admin,
            edit_text.clone(),
            &[("If-Match", "latest")],
        )
        .await,
        400,
    );
    expect(
        &api.call(
            &t,
            "PUT",
            "/enrichments/{id}",
            &one,
            admin,
            edit_text.clone(),
            &[("If-Match", "\"999\"")],
        )
        .await,
        412,
    );
    expect(
        &api.call(
            &t,
            "PUT",
            "/enrichments/{id}",
            &missing,
            admin,
            edit_text.clone(),
            &[("If-Match", "1")],
        )
        .await,
        404,
    );
    // The version moves when the consent email is sent too: read it right before the edit.
    let current = api
        .json(&t, "GET", "/enrichments/{id}", &one, admin, None)
        .await;
    let version = expect(&current, 200)["version"].as_u64().expect("version");
    let etag = format!("\"{version}\"");
    let edited = api
        .call(
            &t,
            "PUT",
            "/enrichments/{id}",
            &one,
            admin,
            edit_text.clone(),
            &[("If-Match", &etag)],
        )
        .await;
    assert_eq!(expect(&edited, 200)["version"], version + 1);
    assert_eq!(
        edited.headers["etag"],
        format!("\"{}\"", version + 1).as_str()
    );
    expect(
        &api.call(
            &t,
            "PUT",
            "/enrichments/{id}",
            &one,
            reader,
            edit_text,
            &[("If-Match", "2")],
        )
        .await,
        403,
    );

    // Nothing runs before consent.
    let runs = format!("{one}/runs");
    expect(
        &api.json(&t, "POST", "/enrichments/{id}/runs", &runs, admin, None)
            .await,
        409,
    );
    expect(
        &api.json(
            &t,
            "POST",
            "/enrichments/{id}/runs",
            &format!("{missing}/runs"),
            admin,
            None,
        )
        .await,
        404,
    );
    for action in ["activate", "deactivate"] {
        let template = format!("/enrichments/{{id}}/{action}");
        expect(
            &api.json(
                &t,
                "POST",
                &template,
                &format!("{one}/{action}"),
                admin,
                None,
            )
            .await,
            409,
        );
        expect(
            &api.json(
                &t,
                "POST",
                &template,
                &format!("{missing}/{action}"),
                admin,
                None,
            )
            .await,
            404,
        );
    }
    for (template, suffix) in [
        ("/enrichments/{id}/results", "results"),
        ("/enrichments/{id}/measures", "measures"),
    ] {
        expect(
            &api.json(&t, "GET", template, &format!("{one}/{suffix}"), admin, None)
                .await,
            404,
        );
    }

    // A second enrichment: asked for consent again, then deleted.
    let mut other_body = body.clone();
    other_body["name"] = json!(unique("OpenAPI other "));
    let other = api
        .json(
            &t,
            "POST",
            "/enrichments",
            "/enrichments",
            admin,
            Some(other_body),
        )
        .await;
    let other_id = expect(&other, 201)["id"].as_str().expect("id").to_string();
    let other_path = format!("/enrichments/{other_id}");
    let consent_request = "/enrichments/{id}/consent/request";
    expect(
        &api.json(
            &t,
            "POST",
            consent_request,
            &format!("{other_path}/consent/request"),
            admin,
            None,
        )
        .await,
        202,
    );
    expect(
        &api.json(
            &t,
            "POST",
            consent_request,
            &format!("{missing}/consent/request"),
            admin,
            None,
        )
        .await,
        404,
    );
    expect(
        &api.json(
            &t,
            "POST",
            consent_request,
            &format!("{other_path}/consent/request"),
            reader,
            None,
        )
        .await,
        403,
    );
    expect(
        &api.json(
            &t,
            "GET",
            "/enrichments/{id}/runs",
            &format!("{other_path}/runs"),
            reader,
            None,
        )
        .await,
        200,
    );
    expect(
        &api.json(&t, "DELETE", "/enrichments/{id}", &other_path, reader, None)
            .await,
        403,
    );
    expect(
        &api.json(&t, "DELETE", "/enrichments/{id}", &other_path, admin, None)
            .await,
        204,
    );
    expect(
        &api.json(&t, "DELETE", "/enrichments/{id}", &other_path, admin, None)
            .await,
        404,
    );

    // Consent through the emailed link: the public callback answers HTML.
    let callback = "/consent/callback";
    expect(
        &api.json(
            &t,
            "GET",
            callback,
            "/consent/callback?admin_consent=True",
            None,
            None,
        )
        .await,
        400,
    );
    let link = consent_link(&t, &name).await;
    let redirect = t
        .http
        .get(&link)
        .send()
        .await
        .expect("the emulator answers");
    let location = redirect.headers()["location"]
        .to_str()
        .expect("location")
        .to_string();
    let query = location.split_once('?').map(|(_, q)| q).expect("a query");
    let callback_path = format!("{callback}?{query}");
    let granted = api
        .json(&t, "GET", callback, &callback_path, None, None)
        .await;
    assert!(
        expect(&granted, 200)
            .as_str()
            .is_some_and(|h| h.contains("Consent granted"))
    );
    expect(
        &api.json(&t, "GET", callback, &callback_path, None, None)
            .await,
        409,
    );

    // The first run (asked for by the grant) ends; its answers.
    let run = t
        .eventually(90, "the first run to end", || async {
            let (_, runs) = t
                .admin("GET", &format!("/enrichments/{id}/runs"), None)
                .await;
            let run = runs["items"].get(0)?.clone();
            let status = run["status"].as_str()?.to_string();
            (status != "processing" && status != "queued").then_some(run)
        })
        .await;
    assert_eq!(run["status"], "successful", "{run}");
    let run_id = run["id"].as_str().expect("run id").to_string();
    let listed = api
        .json(&t, "GET", "/enrichments/{id}/runs", &runs, reader, None)
        .await;
    assert_eq!(expect(&listed, 200)["items"][0]["id"], run_id.as_str());
    expect(
        &api.json(
            &t,
            "GET",
            "/enrichments/{id}/runs",
            &format!("{runs}?limit=1"),
            admin,
            None,
        )
        .await,
        200,
    );
    expect(
        &api.json(
            &t,
            "GET",
            "/enrichments/{id}/runs",
            &format!("{runs}?limit=9999"),
            admin,
            None,
        )
        .await,
        422,
    );
    let run_template = "/enrichments/{id}/runs/{runId}";
    expect(
        &api.json(
            &t,
            "GET",
            run_template,
            &format!("{runs}/{run_id}"),
            reader,
            None,
        )
        .await,
        200,
    );
    expect(
        &api.json(
            &t,
            "GET",
            run_template,
            &format!("{runs}/{}", uuid::Uuid::new_v4()),
            admin,
            None,
        )
        .await,
        404,
    );
    let cancel = "/enrichments/{id}/runs/{runId}/cancel";
    expect(
        &api.json(
            &t,
            "POST",
            cancel,
            &format!("{runs}/{run_id}/cancel"),
            admin,
            None,
        )
        .await,
        409,
    );
    expect(
        &api.json(
            &t,
            "POST",
            cancel,
            &format!("{runs}/{}/cancel", uuid::Uuid::new_v4()),
            admin,
            None,
        )
        .await,
        404,
    );
    expect(
        &api.json(
            &t,
            "POST",
            cancel,
            &format!("{runs}/{run_id}/cancel"),
            reader,
            None,
        )
        .await,
        403,
    );

    // Results, segments, customer cards, measures.
    let results = api
        .json(
            &t,
            "GET",
            "/enrichments/{id}/results",
            &format!("{one}/results"),
            reader,
            None,
        )
        .await;
    let results = expect(&results, 200).clone();
    assert_eq!(results["enriched_customers"], 2, "{results}");
    assert!(results["preview"].as_array().is_some_and(|p| !p.is_empty()));
    let accounts = "/enrichments/{id}/accounts";
    for query in [
        "",
        "?level=Year",
        "?level=Month&min_score=0&max_score=100",
        "?level=Week&limit=1",
        "?min_score=101",
    ] {
        let answer = api
            .json(
                &t,
                "GET",
                accounts,
                &format!("{one}/accounts{query}"),
                reader,
                None,
            )
            .await;
        if query.contains("101") {
            expect(&answer, 422);
        } else {
            expect(&answer, 200);
        }
    }
    let first = api
        .json(
            &t,
            "GET",
            accounts,
            &format!("{one}/accounts?limit=1"),
            admin,
            None,
        )
        .await;
    let cursor = expect(&first, 200)["next_cursor"]
        .as_str()
        .expect("two accounts make two pages of one")
        .to_string();
    let second = api
        .json(
            &t,
            "GET",
            accounts,
            &format!("{one}/accounts?limit=1&cursor={}", urlencode(&cursor)),
            admin,
            None,
        )
        .await;
    assert_eq!(expect(&second, 200)["items"][0]["AccountId"], "ACC-2");
    expect(
        &api.json(
            &t,
            "GET",
            accounts,
            &format!("{one}/accounts?min_score=80&max_score=20"),
            admin,
            None,
        )
        .await,
        422,
    );
    expect(
        &api.json(
            &t,
            "GET",
            accounts,
            &format!("{missing}/accounts"),
            admin,
            None,
        )
        .await,
        404,
    );
    let card = "/enrichments/{id}/accounts/{accountId}";
    for query in ["", "?period=Week", "?period=Month", "?period=Year"] {
        for account in ["ACC-1", "ACC-2"] {
            expect(
                &api.json(
                    &t,
                    "GET",
                    card,
                    &format!("{one}/accounts/{account}{query}"),
                    reader,
                    None,
                )
                .await,
                200,
            );
        }
    }
    expect(
        &api.json(
            &t,
            "GET",
            card,
            &format!("{one}/accounts/ACC-404"),
            admin,
            None,
        )
        .await,
        404,
    );
    expect(
        &api.json(
            &t,
            "GET",
            card,
            &format!("{one}/accounts/ACC-1?period=Decade"),
            admin,
            None,
        )
        .await,
        422,
    );
    let measures = "/enrichments/{id}/measures";
    for query in ["", "?level=Week", "?level=Month", "?level=Year"] {
        expect(
            &api.json(
                &t,
                "GET",
                measures,
                &format!("{one}/measures{query}"),
                reader,
                None,
            )
            .await,
            200,
        );
    }
    expect(
        &api.json(
            &t,
            "GET",
            measures,
            &format!("{one}/measures?level=year"),
            admin,
            None,
        )
        .await,
        422,
    );
    expect(
        &api.json(&t, "GET", "/enrichments/{id}", &one, admin, None)
            .await,
        200,
    );
    expect(
        &api.json(
            &t,
            "GET",
            "/enrichments/{id}/users",
            &format!("{one}/users"),
            admin,
            None,
        )
        .await,
        200,
    );

    // A manual run, a second one while it is active, cancelling.
    let started = api
        .json(&t, "POST", "/enrichments/{id}/runs", &runs, admin, None)
        .await;
    let started_id = expect(&started, 202)["id"]
        .as_str()
        .expect("id")
        .to_string();
    assert_eq!(started.body["trigger"], "manual");
    let again = api
        .json(&t, "POST", "/enrichments/{id}/runs", &runs, admin, None)
        .await;
    assert!(matches!(again.status, 202 | 409));
    expect(
        &api.json(&t, "POST", "/enrichments/{id}/runs", &runs, reader, None)
            .await,
        403,
    );
    let canceled = api
        .json(
            &t,
            "POST",
            cancel,
            &format!("{runs}/{started_id}/cancel"),
            admin,
            None,
        )
        .await;
    assert!(matches!(canceled.status, 200 | 409), "{:#}", canceled.body);
    if canceled.status == 200 {
        assert_eq!(canceled.body["status"], "canceled");
    }
    // Cancelling again is normally 409; a download job finishing at the same moment can still
    // write the run back as processing (a read-modify-write race), so 200 is possible too.
    let again = api
        .json(
            &t,
            "POST",
            cancel,
            &format!("{runs}/{started_id}/cancel"),
            admin,
            None,
        )
        .await;
    assert!(matches!(again.status, 200 | 409), "{:#}", again.body);
    expect(
        &api.json(
            &t,
            "GET",
            run_template,
            &format!("{runs}/{started_id}"),
            admin,
            None,
        )
        .await,
        200,
    );
    expect(
        &api.json(&t, "GET", "/enrichments/{id}/runs", &runs, admin, None)
            .await,
        200,
    );

    // Consent is granted: no new request; deactivate and activate.
    expect(
        &api.json(
            &t,
            "POST",
            consent_request,
            &format!("{one}/consent/request"),
            admin,
            None,
        )
        .await,
        409,
    );
    let deactivated = api
        .json(
            &t,
            "POST",
            "/enrichments/{id}/deactivate",
            &format!("{one}/deactivate"),
            admin,
            None,
        )
        .await;
    assert_eq!(expect(&deactivated, 200)["status"], "inactive");
    expect(
        &api.json(
            &t,
            "POST",
            "/enrichments/{id}/deactivate",
            &format!("{one}/deactivate"),
            reader,
            None,
        )
        .await,
        403,
    );
    let activated = api
        .json(
            &t,
            "POST",
            "/enrichments/{id}/activate",
            &format!("{one}/activate"),
            admin,
            None,
        )
        .await;
    assert_eq!(expect(&activated, 200)["status"], "active");
    expect(
        &api.json(
            &t,
            "POST",
            "/enrichments/{id}/activate",
            &format!("{one}/activate"),
            reader,
            None,
        )
        .await,
        403,
    );
    let detail = api
        .json(&t, "GET", "/enrichments/{id}", &one, reader, None)
        .await;
    let detail = expect(&detail, 200);
    assert_eq!(detail["consent"]["status"], "granted", "{detail}");
    assert_eq!(detail["enriched_customers"], 2);

    // Every operation was checked with a success, and every kind of error was seen.
    let seen = api.seen.lock().expect("seen").clone();
    for (method, path) in operations(&api.doc) {
        assert!(
            seen.iter()
                .any(|(m, p, s)| *m == method && *p == path && (200..300).contains(s)),
            "{method} {path} was never answered with a success"
        );
    }
    let statuses: BTreeSet<u16> = seen.iter().map(|(_, _, s)| *s).collect();
    for status in [400, 401, 403, 404, 409, 412, 413, 422, 428] {
        assert!(
            statuses.contains(&status),
            "no {status} was checked: {statuses:?}"
        );
    }
}

fn urlencode(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}
