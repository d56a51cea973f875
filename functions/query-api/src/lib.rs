//! query-api: the read routes of the API (and cancelling a run).

use http::Method;
use lambda_http::{Body, Request, Response};
use shared::api::{self, authorize, path_segments, query_param};
use shared::problem::Problem;
use shared::services::Services;
use shared::{enrichment, store};

const DEFAULT_PAGE: usize = 50;
const MAX_PAGE: usize = 500;

pub async fn handle(services: &Services, request: Request) -> Response<Body> {
    api::respond(route(services, &request).await)
}

fn page_limit(request: &Request) -> Result<usize, Problem> {
    match query_param(request, "limit") {
        None => Ok(DEFAULT_PAGE),
        Some(text) => match text.parse::<usize>() {
            Ok(n) if (1..=MAX_PAGE).contains(&n) => Ok(n),
            _ => Err(Problem::validation(vec![shared::problem::FieldError::new(
                "limit",
                format!("must be a whole number from 1 to {MAX_PAGE}"),
            )])),
        },
    }
}

async fn route(services: &Services, request: &Request) -> Result<Response<Body>, Problem> {
    authorize(request)?;
    let segments = path_segments(request);
    let segments: Vec<&str> = segments.iter().map(String::as_str).collect();
    let table = services.table.as_ref();
    match (request.method().clone(), segments.as_slice()) {
        (Method::GET, ["enrichments"]) => {
            let limit = page_limit(request)?;
            let (items, next) =
                store::list_enrichments(table, limit, query_param(request, "cursor")).await?;
            let items: Vec<_> = items.iter().map(|e| e.summary()).collect();
            Ok(api::json_response(
                200,
                &serde_json::json!({"items": items, "next_cursor": next}),
            ))
        }
        (Method::GET, ["enrichments", id]) => {
            let found = store::get_enrichment(table, id)
                .await?
                .ok_or_else(|| enrichment::not_found(id))?;
            Ok(api::json_response(200, &found))
        }
        (Method::GET, ["enrichments", id, "users"]) => {
            store::get_enrichment(table, id)
                .await?
                .ok_or_else(|| enrichment::not_found(id))?;
            let users = store::list_mailboxes(table, id).await?;
            Ok(api::json_response(
                200,
                &serde_json::json!({"items": users, "next_cursor": null}),
            ))
        }
        _ => Err(Problem::not_found("no such route")),
    }
}
