//! Publishing a job and waiting for its result from Rust, with the client library alone (no model
//! code): `cargo run -p genq-producer --example submit_and_wait -- "The capital of France is"`,
//! with RabbitMQ, Redis and a worker running (see the README's tour).

use std::time::Duration;

use genq_producer::{Producer, ResultClient};
use genq_shared::settings::Settings;
use genq_shared::JobRequest;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let prompt = std::env::args().nth(1).unwrap_or_else(|| "The capital of France is".into());
    // Defaults < GENQ_CONFIG file < GENQ__SECTION__KEY environment variables, as every genq binary.
    let settings = Settings::load(std::env::var_os("GENQ_CONFIG").as_deref().map(std::path::Path::new), &[])?;
    let results = ResultClient::connect(&settings.redis.url, &settings.redis.key_prefix).await?;
    let producer = Producer::connect(&settings.amqp.url, &settings.producer, &settings.queue)
        .await?
        .with_results(results.clone());
    let job = JobRequest { max_new_tokens: Some(24), ..JobRequest::prompt(prompt) };
    let id = producer.submit(job).await?;
    let result = results.wait(&id, Some(Duration::from_secs(60))).await?;
    println!("{}", serde_json::to_string(&result)?);
    producer.close().await;
    Ok(())
}
