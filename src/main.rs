//! The `clipserve` binary: load settings, initialise logging, bind, serve until a signal.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};

use clipserve::config::{Settings, Sources};

/// Multilingual CLIP embeddings over HTTP.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Cli {
    /// Settings file (TOML). Default: config/default.toml if it exists.
    #[arg(long, global = true, env = "CLIPSERVE_CONFIG")]
    config: Option<PathBuf>,
    /// A model folder, or a Hugging Face repository id to download.
    #[arg(long, global = true, env = "CLIPSERVE_MODEL")]
    model: Option<String>,
    /// host:port to listen on.
    #[arg(long, global = true, env = "CLIPSERVE_ADDR")]
    addr: Option<String>,
    /// Any setting as section.key=value (repeatable), e.g. --set batching.linger_ms=5.
    #[arg(long = "set", global = true, value_name = "KEY=VALUE")]
    overrides: Vec<String>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Serve the HTTP API (the default).
    Serve,
    /// Print the effective settings as TOML and exit.
    Config,
}

fn settings(cli: &Cli) -> anyhow::Result<Settings> {
    let mut overrides = Vec::new();
    for o in &cli.overrides {
        let (k, v) = o
            .split_once('=')
            .with_context(|| format!("--set {o}: expected section.key=value"))?;
        overrides.push((k.trim().to_string(), v.trim().to_string()));
    }
    if let Some(model) = &cli.model {
        overrides.push(("model.source".into(), format!("{model:?}")));
    }
    if let Some(addr) = &cli.addr {
        overrides.push(("server.addr".into(), format!("{addr:?}")));
    }
    let sources = Sources {
        file: Some(
            cli.config
                .clone()
                .unwrap_or_else(|| PathBuf::from("config/default.toml")),
        ),
        file_required: cli.config.is_some(),
        overrides,
    };
    Ok(Settings::load(&sources, std::env::vars())?)
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let settings = settings(&cli)?;
    match cli.command.unwrap_or(Command::Serve) {
        Command::Config => {
            print!("{}", toml::to_string_pretty(&settings)?);
            Ok(())
        }
        Command::Serve => {
            clipserve::telemetry::init_tracing(&settings.log);
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .context("starting the async runtime")?;
            runtime.block_on(async {
                let listener = tokio::net::TcpListener::bind(&settings.server.addr)
                    .await
                    .with_context(|| format!("binding {}", settings.server.addr))?;
                clipserve::app::run(
                    settings,
                    listener,
                    clipserve::http::server::shutdown_signal(),
                )
                .await
            })
        }
    }
}
