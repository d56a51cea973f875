//! query-api: the read routes of the API (and cancelling a run).

use http::Method;
use lambda_http::{Body, Request, Response};
use shared::api::{self, authorize, path_segments, query_param};
use shared::problem::Problem;
use shared::results::{self, AccountQuery};
use shared::services::Services;
use shared::{enrichment, run, store};

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
        (Method::GET, ["enrichments", id, "runs"]) => {
            require(services, id).await?;
            let limit = page_limit(request)?;
            let (runs, next) =
                run::list_runs(table, id, limit, query_param(request, "cursor")).await?;
            Ok(api::json_response(
                200,
                &serde_json::json!({"items": runs, "next_cursor": next}),
            ))
        }
        (Method::GET, ["enrichments", id, "runs", run_id]) => {
            require(services, id).await?;
            let found = run::get_run(table, id, run_id)
                .await?
                .ok_or_else(|| run_not_found(run_id))?;
            Ok(api::json_response(200, &found))
        }
        (Method::POST, ["enrichments", id, "runs", run_id, "cancel"]) => {
            require(services, id).await?;
            let before = run::get_run(table, id, run_id)
                .await?
                .ok_or_else(|| run_not_found(run_id))?;
            if before.status.is_final() {
                return Err(Problem::conflict(
                    format!("run {run_id} already ended ({:?})", before.status).to_lowercase(),
                ));
            }
            let canceled = run::cancel_run(services, id, run_id)
                .await?
                .ok_or_else(|| run_not_found(run_id))?;
            Ok(api::json_response(200, &canceled))
        }
        (Method::GET, ["enrichments", id, "results"]) => {
            require(services, id).await?;
            let found = results::get_results(table, id)
                .await?
                .ok_or_else(no_results)?;
            Ok(api::json_response(200, &found))
        }
        (Method::GET, ["enrichments", id, "accounts"]) => {
            require(services, id).await?;
            let query = AccountQuery::parse(|name| query_param(request, name))?;
            let (items, next) = results::list_accounts(table, id, &query).await?;
            Ok(api::json_response(
                200,
                &serde_json::json!({"items": items, "next_cursor": next}),
            ))
        }
        (Method::GET, ["enrichments", id, "accounts", account_id]) => {
            require(services, id).await?;
            let period = results::parse_level(query_param(request, "period").as_deref(), "period")
                .map_err(|e| Problem::validation(vec![e]))?;
            let card = results::get_card(table, id, account_id, period)
                .await?
                .ok_or_else(|| {
                    Problem::not_found(format!(
                        "account '{account_id}' has no engagement in the latest results"
                    ))
                })?;
            Ok(api::json_response(200, &card))
        }
        (Method::GET, ["enrichments", id, "measures"]) => {
            require(services, id).await?;
            let level = results::parse_level(query_param(request, "level").as_deref(), "level")
                .map_err(|e| Problem::validation(vec![e]))?;
            let found = results::get_measures(table, id, level)
                .await?
                .ok_or_else(no_results)?;
            Ok(api::json_response(200, &found))
        }
        _ => Err(Problem::not_found("no such route")),
    }
}

async fn require(services: &Services, id: &str) -> Result<(), Problem> {
    store::get_enrichment(services.table.as_ref(), id)
        .await?
        .map(|_| ())
        .ok_or_else(|| enrichment::not_found(id))
}

fn run_not_found(run_id: &str) -> Problem {
    Problem::not_found(format!("no run has the id '{run_id}'"))
}

fn no_results() -> Problem {
    Problem::not_found("no run of this enrichment has succeeded yet")
}
