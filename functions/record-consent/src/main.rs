use lambda_http::{Error, service_fn};
use shared::services::{Services, init_logging};

#[tokio::main]
async fn main() -> Result<(), Error> {
    init_logging();
    let services = Services::from_env().await?;
    let services = &services;
    lambda_http::run(service_fn(move |request| async move {
        Ok::<_, Error>(record_consent::handle(services, request).await)
    }))
    .await
}
