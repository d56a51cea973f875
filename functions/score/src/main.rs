use aws_lambda_events::event::sqs::SqsEvent;
use lambda_runtime::{Error, LambdaEvent, service_fn};
use shared::services::{Services, init_logging};

#[tokio::main]
async fn main() -> Result<(), Error> {
    init_logging();
    let services = Services::from_env().await?;
    let services = &services;
    lambda_runtime::run(service_fn(move |event: LambdaEvent<SqsEvent>| async move {
        Ok::<_, Error>(score::handle(services, event.payload).await)
    }))
    .await
}
