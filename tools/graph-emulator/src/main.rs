//! `graph-emulator` binary: serves a synthetic or fixture tenant on 127.0.0.1.

use chrono::{DateTime, Utc};
use graph_emulator::{EmulatorOptions, Fixture, SyntheticOptions, start, synthetic_tenant};
use std::io::Write;
use std::net::{Ipv4Addr, SocketAddr};

const USAGE: &str =
    "usage: graph-emulator [--port N] [--fixture tenant.json | --seed N] [--as-of RFC3339]
                      [--latency-ms N] [--write-customer-csv path] [--write-fixture path]
                      [--mailboxes N] [--accounts N] [--contacts N] [--days N]
                      [--client-id ID] [--client-secret SECRET] [--request-budget N]";

struct Args {
    port: u16,
    fixture: Option<String>,
    seed: u64,
    as_of: Option<DateTime<Utc>>,
    latency_ms: u64,
    write_csv: Option<String>,
    write_fixture: Option<String>,
    synth: SyntheticOptions,
    client_id: String,
    client_secret: String,
    budget: Option<u64>,
}

fn parse_args() -> Result<Args, String> {
    let mut a = Args {
        port: 0,
        fixture: None,
        seed: 42,
        as_of: None,
        latency_ms: 0,
        write_csv: None,
        write_fixture: None,
        synth: SyntheticOptions::default(),
        client_id: String::new(),
        client_secret: String::new(),
        budget: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        if flag == "-h" || flag == "--help" {
            return Err(String::new());
        }
        let (flag, inline) = match flag.split_once('=') {
            Some((f, v)) => (f.to_string(), Some(v.to_string())),
            None => (flag, None),
        };
        let mut value = || {
            inline
                .clone()
                .or_else(|| it.next())
                .ok_or_else(|| format!("{flag} needs a value"))
        };
        fn num<T: std::str::FromStr>(flag: &str, v: String) -> Result<T, String> {
            v.parse()
                .map_err(|_| format!("{flag}: invalid number '{v}'"))
        }
        match flag.as_str() {
            "--port" => a.port = num(&flag, value()?)?,
            "--fixture" => a.fixture = Some(value()?),
            "--seed" => a.seed = num(&flag, value()?)?,
            "--as-of" => {
                let v = value()?;
                a.as_of = Some(
                    DateTime::parse_from_rfc3339(&v)
                        .map_err(|e| format!("--as-of: {e}"))?
                        .with_timezone(&Utc),
                );
            }
            "--latency-ms" => a.latency_ms = num(&flag, value()?)?,
            "--write-customer-csv" => a.write_csv = Some(value()?),
            "--write-fixture" => a.write_fixture = Some(value()?),
            "--mailboxes" => a.synth.mailboxes = num(&flag, value()?)?,
            "--groups" => a.synth.groups = num(&flag, value()?)?,
            "--accounts" => a.synth.accounts = num(&flag, value()?)?,
            "--contacts" => a.synth.contacts = num(&flag, value()?)?,
            "--days" => a.synth.days = num(&flag, value()?)?,
            "--client-id" => a.client_id = value()?,
            "--client-secret" => a.client_secret = value()?,
            "--request-budget" => a.budget = Some(num(&flag, value()?)?),
            other => return Err(format!("unknown flag {other}")),
        }
    }
    Ok(a)
}

#[tokio::main]
async fn main() {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            if !e.is_empty() {
                eprintln!("graph-emulator: {e}");
            }
            eprintln!("{USAGE}");
            std::process::exit(2);
        }
    };
    let now = args.as_of.unwrap_or_else(Utc::now);
    let fixture = match &args.fixture {
        Some(path) => {
            if args.write_csv.is_some() {
                tracing::warn!("--write-customer-csv is ignored with --fixture");
            }
            match Fixture::from_json_file(path) {
                Ok(f) => f,
                Err(e) => {
                    eprintln!("graph-emulator: {path}: {e}");
                    std::process::exit(1);
                }
            }
        }
        None => {
            let mut opts = args.synth.clone();
            opts.now = now;
            let t0 = std::time::Instant::now();
            let tenant = synthetic_tenant(args.seed, &opts);
            tracing::info!(
                seed = args.seed,
                users = tenant.fixture.users.len(),
                messages = tenant.fixture.messages.len(),
                events = tenant.fixture.events.len(),
                ms = t0.elapsed().as_millis() as u64,
                "synthetic tenant generated"
            );
            if let Some(p) = &args.write_csv
                && let Err(e) = std::fs::write(p, &tenant.customer_csv)
            {
                eprintln!("graph-emulator: cannot write {p}: {e}");
                std::process::exit(1);
            }
            tenant.fixture
        }
    };
    if let Some(p) = &args.write_fixture
        && let Err(e) = std::fs::write(p, fixture.to_json_pretty())
    {
        eprintln!("graph-emulator: cannot write {p}: {e}");
        std::process::exit(1);
    }
    let opts = EmulatorOptions {
        now,
        latency_ms: args.latency_ms,
        request_budget_per_mailbox: args.budget,
        client_id: args.client_id,
        client_secret: args.client_secret,
        ..EmulatorOptions::default()
    };
    let tenant_id = fixture.tenant_id.clone();
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, args.port));
    let emu = match start(fixture, opts, addr).await {
        Ok(e) => e,
        Err(e) => {
            eprintln!("graph-emulator: cannot listen on {addr}: {e}");
            std::process::exit(1);
        }
    };
    tracing::info!(url = %emu.url, tenant = %tenant_id, now = %now.to_rfc3339(), "graph emulator listening");
    {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "GRAPH_EMULATOR_URL={}", emu.url);
        let _ = out.flush();
    }
    let _ = tokio::signal::ctrl_c().await;
    tracing::info!("shutting down");
    emu.shutdown();
}
