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
    /// A model folder, or a Hugging Face repository id to download [env: CLIPSERVE_MODEL].
    #[arg(long, global = true)]
    model: Option<String>,
    /// host:port to listen on [env: CLIPSERVE_ADDR]. Also after `serve`; `embed` does not
    /// listen, so it has no --addr.
    #[arg(long)]
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
    Serve {
        /// host:port to listen on [env: CLIPSERVE_ADDR].
        #[arg(long)]
        addr: Option<String>,
    },
    /// Print the effective settings as TOML and exit (the API key shows as "***").
    Config,
    /// GET a URL of this host once; exit 0 on a 200 answer, 1 otherwise. The container
    /// HEALTHCHECK (the runtime image has no curl).
    Healthcheck {
        /// Default: `http://127.0.0.1:<port of server.addr>/ready`.
        #[arg(long)]
        url: Option<String>,
    },
    /// Embed a folder of images or a file of texts into JSON Lines or .npy, in-process
    /// (--model) or through a running server (--server); re-running resumes.
    Embed(clipserve::bulk::command::EmbedArgs),
}

/// Loads the settings; the environment's `CLIPSERVE_*` variables and `RUST_LOG` are read by
/// the config loader (the shortcuts included), so that each has one meaning and one error.
fn settings(cli: &Cli) -> anyhow::Result<Settings> {
    let mut overrides = Vec::new();
    for o in &cli.overrides {
        let (k, v) = o
            .split_once('=')
            .with_context(|| format!("--set {o}: expected section.key=value"))?;
        overrides.push((k.trim().to_string(), v.trim().to_string()));
    }
    let sources = Sources {
        file: Some(
            cli.config
                .clone()
                .unwrap_or_else(|| PathBuf::from("config/default.toml")),
        ),
        file_required: cli.config.is_some(),
        overrides,
        model: cli.model.clone(),
        addr: match &cli.command {
            Some(Command::Serve { addr: Some(addr) }) => Some(addr.clone()),
            _ => cli.addr.clone(),
        },
    };
    let mut env = Vec::new();
    for (name, value) in std::env::vars_os() {
        let Some(name) = name.to_str() else { continue };
        if name.starts_with("CLIPSERVE_") || name == "RUST_LOG" {
            let value = value
                .into_string()
                .map_err(|_| anyhow::anyhow!("{name}: the value is not UTF-8"))?;
            env.push((name.to_string(), value));
        }
    }
    Ok(Settings::load(&sources, env)?)
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if let (Some(addr), Some(Command::Embed(_))) = (&cli.addr, &cli.command) {
        anyhow::bail!(
            "--addr {addr}: `clipserve embed` does not listen; to embed through a running \
             server, pass its URL with --server"
        );
    }
    let settings = settings(&cli)?;
    match cli.command.unwrap_or(Command::Serve { addr: None }) {
        Command::Embed(args) => clipserve::bulk::command::execute(args, settings),
        Command::Healthcheck { url } => {
            healthcheck(&url.unwrap_or_else(|| default_health_url(&settings.server.addr)))
        }
        Command::Config => {
            print!("{}", toml::to_string_pretty(&settings)?);
            Ok(())
        }
        Command::Serve { .. } => {
            clipserve::telemetry::init_tracing(&settings.log);
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .context("starting the async runtime")?;
            let result = runtime.block_on(async {
                let listener = tokio::net::TcpListener::bind(&settings.server.addr)
                    .await
                    .with_context(|| format!("binding {}", settings.server.addr))?;
                clipserve::app::run(
                    settings,
                    listener,
                    clipserve::http::server::shutdown_signal(),
                )
                .await
            });
            // The process ends here. Tearing the runtime down first would pull its timer from
            // under an inference worker still lingering over a batch (possible when the drain
            // hit its grace period), which panics in that thread on the way out.
            std::mem::forget(runtime);
            result
        }
    }
}

/// `/ready` on loopback at the port the server listens on.
fn default_health_url(addr: &str) -> String {
    let port = addr.rsplit_once(':').map_or("8080", |(_, port)| port);
    format!("http://127.0.0.1:{port}/ready")
}

/// One HTTP/1.0 GET with a 3 s timeout on each step; Ok only when the status is 200.
fn healthcheck(url: &str) -> anyhow::Result<()> {
    use std::io::{BufRead, BufReader, Read, Write};
    use std::net::{TcpStream, ToSocketAddrs};
    let timeout = std::time::Duration::from_secs(3);
    let rest = url
        .strip_prefix("http://")
        .with_context(|| format!("{url}: only http:// URLs are supported"))?;
    let (host, path) = rest.split_once('/').unwrap_or((rest, ""));
    let with_port = if host.contains(':') {
        host.to_string()
    } else {
        format!("{host}:80")
    };
    let addr = with_port
        .to_socket_addrs()
        .with_context(|| format!("resolving {host}"))?
        .next()
        .with_context(|| format!("{host} has no address"))?;
    let mut stream = TcpStream::connect_timeout(&addr, timeout)
        .with_context(|| format!("connecting to {addr}"))?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    write!(stream, "GET /{path} HTTP/1.0\r\nHost: {host}\r\n\r\n")?;
    let mut status = String::new();
    BufReader::new(stream.take(512)).read_line(&mut status)?;
    match status.split_whitespace().nth(1) {
        Some("200") => Ok(()),
        _ => anyhow::bail!("{url}: {}", status.trim()),
    }
}
