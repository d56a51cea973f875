//! The local API Gateway: serves HTTP, verifies dev tokens, builds the same API Gateway v2 event
//! that Lambda receives and hands it to the function template.yaml routes the request to.

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use lambda_http::{Body, Request, Response};
use shared::services::Services;

use crate::template::StackSpec;

/// Calls the HTTP handler of a function by its binary name.
pub async fn dispatch_http(services: &Services, binary: &str, request: Request) -> Response<Body> {
    match binary {
        "save-config" => save_config::handle(services, request).await,
        "query-api" => query_api::handle(services, request).await,
        "record-consent" => record_consent::handle(services, request).await,
        "start-run" => start_run::handle_http(services, request).await,
        other => shared::api::problem_response(&shared::problem::Problem::internal(format!(
            "{other} serves no HTTP routes"
        ))),
    }
}

/// The API Gateway v2 (HTTP API, payload 2.0) event of a request.
pub fn api_gateway_event(
    method: &str,
    path: &str,
    raw_query: &str,
    headers: &HashMap<String, String>,
    body: &str,
    route_key: &str,
    claims: Option<HashMap<String, String>>,
) -> serde_json::Value {
    let query: HashMap<String, String> = url::form_urlencoded::parse(raw_query.as_bytes())
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    let now = chrono::Utc::now();
    let mut context = serde_json::json!({
        "accountId": "000000000000",
        "apiId": "local",
        "domainName": "127.0.0.1",
        "domainPrefix": "local",
        "http": { "method": method, "path": path, "protocol": "HTTP/1.1", "sourceIp": "127.0.0.1",
                  "userAgent": headers.get("user-agent").cloned().unwrap_or_default() },
        "requestId": uuid::Uuid::new_v4().to_string(),
        "routeKey": route_key,
        "stage": "$default",
        "time": now.format("%d/%b/%Y:%H:%M:%S +0000").to_string(),
        "timeEpoch": now.timestamp_millis(),
    });
    if let Some(claims) = claims {
        context["authorizer"] = serde_json::json!({"jwt": {"claims": claims, "scopes": null}});
    }
    serde_json::json!({
        "version": "2.0",
        "routeKey": route_key,
        "rawPath": path,
        "rawQueryString": raw_query,
        "headers": headers,
        "queryStringParameters": if query.is_empty() { serde_json::Value::Null } else { serde_json::json!(query) },
        "requestContext": context,
        "body": if body.is_empty() { serde_json::Value::Null } else { body.into() },
        "isBase64Encoded": false,
    })
}

#[derive(Clone)]
pub struct Gateway {
    pub services: Services,
    pub spec: Arc<StackSpec>,
}

fn problem(status: u16, title: &str, detail: &str) -> axum::response::Response {
    let body = serde_json::json!({"type": "about:blank", "title": title, "status": status, "detail": detail});
    let mut response = axum::response::Response::new(axum::body::Body::from(body.to_string()));
    *response.status_mut() =
        http::StatusCode::from_u16(status).unwrap_or(http::StatusCode::BAD_GATEWAY);
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/problem+json"),
    );
    response
}

pub async fn serve_request(
    State(gateway): State<Gateway>,
    method: http::Method,
    uri: http::Uri,
    headers: http::HeaderMap,
    body: Bytes,
) -> axum::response::Response {
    let path = uri.path().to_string();
    let Some((function, route)) = gateway.spec.route(method.as_str(), &path) else {
        return problem(404, "Not found", &format!("no route {method} {path}"));
    };
    let header_map: HashMap<String, String> = headers
        .iter()
        .filter_map(|(k, v)| {
            v.to_str()
                .ok()
                .map(|v| (k.as_str().to_lowercase(), v.to_string()))
        })
        .collect();
    // API Gateway's JWT authorizer: protected routes get the claims of a valid token, or no
    // claims at all (the handler then answers 401).
    let claims = if route.public {
        None
    } else {
        header_map
            .get("authorization")
            .and_then(|h| {
                h.strip_prefix("Bearer ")
                    .or_else(|| h.strip_prefix("bearer "))
            })
            .and_then(|token| crate::token::verify(token.trim()))
    };
    let body_text = String::from_utf8_lossy(&body).into_owned();
    let event = api_gateway_event(
        method.as_str(),
        &path,
        uri.query().unwrap_or(""),
        &header_map,
        &body_text,
        &format!("{} {}", route.method, route.path),
        claims,
    );
    let request = match lambda_http::request::from_str(&event.to_string()) {
        Ok(r) => r,
        Err(e) => return problem(400, "Bad request", &e.to_string()),
    };
    let response = run_handler(gateway.services.clone(), function.binary.clone(), request).await;
    let (parts, body) = response.into_parts();
    let bytes = match body {
        Body::Text(text) => text.into_bytes(),
        Body::Binary(bytes) => bytes,
        _ => Vec::new(),
    };
    axum::response::Response::from_parts(parts, axum::body::Body::from(bytes))
}

/// Runs a handler on a blocking-pool thread of its own runtime handle: rustc cannot yet prove that
/// some handler futures are `Send` for every lifetime (a known limitation with async closures),
/// which axum requires; Lambda's runtime does not.
async fn run_handler(services: Services, binary: String, request: Request) -> Response<Body> {
    let runtime = tokio::runtime::Handle::current();
    tokio::task::spawn_blocking(move || {
        runtime.block_on(dispatch_http(&services, &binary, request))
    })
    .await
    .unwrap_or_else(|e| {
        shared::api::problem_response(&shared::problem::Problem::internal(format!(
            "handler panicked: {e}"
        )))
    })
}

/// Serves the API on `listener` until the process ends.
pub async fn serve(listener: tokio::net::TcpListener, gateway: Gateway) -> std::io::Result<()> {
    let app = axum::Router::new()
        .fallback(serve_request)
        .with_state(gateway);
    axum::serve(listener, app).await
}
