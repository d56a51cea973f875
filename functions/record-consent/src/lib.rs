//! record-consent: `GET /consent/callback`, the public admin-consent redirect target.

use lambda_http::{Body, Request, Response};
use shared::api::{self, query_param};
use shared::consent::{CallbackAnswer, CallbackQuery, record_callback};
use shared::services::Services;

pub async fn handle(services: &Services, request: Request) -> Response<Body> {
    let query = CallbackQuery {
        state: query_param(&request, "state"),
        admin_consent: query_param(&request, "admin_consent"),
        error: query_param(&request, "error"),
        error_description: query_param(&request, "error_description"),
    };
    let answer = match record_callback(services, &query).await {
        Ok(answer) => answer,
        Err(e) => {
            tracing::error!(error = %e, "recording consent failed");
            CallbackAnswer {
                status: 503,
                title: "Please try again".into(),
                message: "The answer could not be recorded right now. Open the link again in a few minutes.".into(),
            }
        }
    };
    api::html_response(answer.status, answer.html())
}
