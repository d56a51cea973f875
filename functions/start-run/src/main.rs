use lambda_runtime::{Error, LambdaEvent, service_fn};
use shared::services::{Services, init_logging};
use start_run::{Invocation, classify};

#[tokio::main]
async fn main() -> Result<(), Error> {
    init_logging();
    let services = Services::from_env().await?;
    let services = &services;
    lambda_runtime::run(service_fn(
        move |event: LambdaEvent<serde_json::Value>| async move {
            let answer = match classify(event.payload)? {
                Invocation::Http(request) => {
                    let response = start_run::handle_http(services, *request).await;
                    http_answer(response)
                }
                Invocation::Queue(sqs) => {
                    serde_json::to_value(start_run::handle_queue(services, sqs).await)?
                }
                Invocation::Tick => start_run::handle_tick(services).await?,
            };
            Ok::<_, Error>(answer)
        },
    ))
    .await
}

/// The API Gateway v2 response document for a lambda_http response.
fn http_answer(response: lambda_http::Response<lambda_http::Body>) -> serde_json::Value {
    let status = response.status().as_u16();
    let headers: serde_json::Map<String, serde_json::Value> = response
        .headers()
        .iter()
        .filter_map(|(k, v)| v.to_str().ok().map(|v| (k.to_string(), v.into())))
        .collect();
    let body = match response.into_body() {
        lambda_http::Body::Text(text) => text,
        lambda_http::Body::Binary(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
        _ => String::new(),
    };
    serde_json::json!({"statusCode": status, "headers": headers, "body": body, "isBase64Encoded": false})
}
