//! `local-stack serve | demo | token`: the local stack of DESIGN §10.

use std::time::Duration;

use chrono::{DateTime, Utc};
use graph_emulator::{EmulatorOptions, Fixture, SyntheticOptions, synthetic_tenant};
use local_stack::stack::{GraphSource, LocalStack, StackConfig};
use shared::graph::GraphSettings;

mod demo;

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

pub fn as_of() -> Result<Option<DateTime<Utc>>, String> {
    env("AS_OF")
        .map(|text| {
            DateTime::parse_from_rfc3339(&text)
                .map(|t| t.with_timezone(&Utc))
                .map_err(|e| format!("AS_OF '{text}' is not an RFC 3339 instant: {e}"))
        })
        .transpose()
}

/// The tenant and customer data the stack runs on: a fixture and CUSTOMER_DATA, or the
/// synthetic tenant and its customer data set.
pub struct Story {
    pub graph: GraphSource,
    pub customer_data: Option<(String, Vec<u8>)>,
    pub external: bool,
}

pub fn story(as_of: Option<DateTime<Utc>>) -> Result<Story, String> {
    let customer_file = env("CUSTOMER_DATA")
        .map(|path| {
            let bytes = std::fs::read(&path).map_err(|e| format!("CUSTOMER_DATA {path}: {e}"))?;
            let name = std::path::Path::new(&path)
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| "contacts.csv".into());
            Ok::<_, String>((name, bytes))
        })
        .transpose()?;
    if let (Some(graph), Some(login)) = (env("GRAPH_BASE_URL"), env("LOGIN_BASE_URL")) {
        let settings = GraphSettings {
            graph_base_url: graph,
            login_base_url: login,
            tenant_id: env("TENANT_ID").ok_or("TENANT_ID is required with GRAPH_BASE_URL")?,
            client_id: env("CLIENT_ID").ok_or("CLIENT_ID is required with GRAPH_BASE_URL")?,
            client_secret: env("CLIENT_SECRET").unwrap_or_default(),
        };
        return Ok(Story {
            graph: GraphSource::External(settings),
            customer_data: customer_file,
            external: true,
        });
    }
    let mut options = EmulatorOptions::default();
    if let Some(now) = as_of {
        options.now = now;
    }
    if let Some(latency) = env("EMULATOR_LATENCY_MS") {
        options.latency_ms = latency
            .parse()
            .map_err(|_| "EMULATOR_LATENCY_MS must be a number")?;
    }
    let (fixture, customer_data) = match env("TENANT_FIXTURE") {
        Some(path) => (
            Fixture::from_json_file(&path).map_err(|e| format!("TENANT_FIXTURE {path}: {e}"))?,
            customer_file,
        ),
        None => {
            let seed = env("SEED").and_then(|s| s.parse().ok()).unwrap_or(42);
            let tenant = synthetic_tenant(
                seed,
                &SyntheticOptions {
                    now: options.now,
                    ..SyntheticOptions::default()
                },
            );
            let data = customer_file
                .unwrap_or_else(|| ("contacts.csv".into(), tenant.customer_csv.into_bytes()));
            (tenant.fixture, Some(data))
        }
    };
    Ok(Story {
        graph: GraphSource::Emulator(Box::new(fixture), options),
        customer_data,
        external: false,
    })
}

async fn serve() -> Result<(), String> {
    let as_of = as_of()?;
    let story = story(as_of)?;
    let port: u16 = env("PORT")
        .map(|p| p.parse().map_err(|_| "PORT must be a number"))
        .transpose()?
        .unwrap_or(3000);
    // On the emulator, T is the synthetic tenant's "now" unless AS_OF says otherwise.
    let as_of = as_of.or(match &story.graph {
        GraphSource::Emulator(_, options) => Some(options.now),
        GraphSource::External(_) => None,
    });
    let mut config = StackConfig::new(story.graph);
    config.as_of = as_of;
    config.api_port = Some(port);
    config.tick = Some(Duration::from_secs(
        env("TICK_SECONDS")
            .and_then(|s| s.parse().ok())
            .unwrap_or(60),
    ));
    let stack = LocalStack::start(config).await?;
    println!("MOTO_URL={}", stack.moto_url);
    if let Some(emulator) = &stack.emulator {
        println!("GRAPH_EMULATOR_URL={}", emulator.url);
    }
    if let Some((name, bytes)) = story.customer_data {
        println!(
            "CUSTOMER_DATA_URI={}",
            stack.upload_customer_data(&name, bytes).await?
        );
    }
    println!("API_URL={}", stack.api_url.clone().unwrap_or_default());
    if let Some(t) = as_of {
        println!("AS_OF={}", t.to_rfc3339());
    }
    println!("ADMIN_TOKEN={}", local_stack::token::issue("admin", 12)?);
    println!("Serving; press Ctrl-C to stop.");
    tokio::signal::ctrl_c().await.map_err(|e| e.to_string())?;
    Ok(())
}

#[tokio::main]
async fn main() {
    let filter = std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into());
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
        .with_writer(std::io::stderr)
        .try_init();
    let command = std::env::args().nth(1).unwrap_or_default();
    let result = match command.as_str() {
        "serve" => serve().await,
        "demo" => demo::run().await,
        "token" => {
            let role = env("ROLE")
                .or_else(|| std::env::args().nth(2))
                .unwrap_or_else(|| "admin".into());
            local_stack::token::issue(&role, 12).map(|t| println!("{t}"))
        }
        _ => Err("usage: local-stack serve | demo | token [admin|reader]".into()),
    };
    if let Err(e) = result {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}
