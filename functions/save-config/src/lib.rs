//! save-config: create, edit, delete, activate and deactivate enrichments, and ask for consent again.

use http::Method;
use lambda_http::{Body, Request, Response};
use shared::api::{self, authorize, json_body, path_segments};
use shared::enrichment;
use shared::problem::Problem;
use shared::services::Services;

pub async fn handle(services: &Services, request: Request) -> Response<Body> {
    api::respond(route(services, &request).await)
}

async fn route(services: &Services, request: &Request) -> Result<Response<Body>, Problem> {
    authorize(request)?;
    let segments = path_segments(request);
    let segments: Vec<&str> = segments.iter().map(String::as_str).collect();
    let method = request.method().clone();
    match (method, segments.as_slice()) {
        (Method::POST, ["enrichments"]) => {
            let created = enrichment::create(services, json_body(request)?).await?;
            let mut response = api::json_response(201, &created);
            set_location(&mut response, &created.id, created.version);
            Ok(response)
        }
        (Method::PUT, ["enrichments", id]) => {
            let if_match = request
                .headers()
                .get(http::header::IF_MATCH)
                .and_then(|v| v.to_str().ok());
            let updated = enrichment::update(services, id, if_match, json_body(request)?).await?;
            let mut response = api::json_response(200, &updated);
            set_location(&mut response, id, updated.version);
            Ok(response)
        }
        (Method::DELETE, ["enrichments", id]) => {
            enrichment::delete(services, id).await?;
            Ok(api::empty_response(204))
        }
        (Method::POST, ["enrichments", id, action @ ("activate" | "deactivate")]) => {
            let updated = enrichment::set_active(services, id, *action == "activate").await?;
            Ok(api::json_response(200, &updated))
        }
        (Method::POST, ["enrichments", id, "consent", "request"]) => {
            let updated = enrichment::request_consent(services, id).await?;
            Ok(api::json_response(202, &updated))
        }
        _ => Err(Problem::not_found("no such route")),
    }
}

fn set_location(response: &mut Response<Body>, id: &str, version: u64) {
    let headers = response.headers_mut();
    if let Ok(v) = http::HeaderValue::from_str(&format!("/enrichments/{id}")) {
        headers.insert(http::header::LOCATION, v);
    }
    if let Ok(v) = http::HeaderValue::from_str(&format!("\"{version}\"")) {
        headers.insert(http::header::ETAG, v);
    }
}
